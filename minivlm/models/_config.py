"""What every config dataclass does the same way: read the fields of a config.json dict, check them, and
write them back in Transformers' layout (`to_transformers_dict`).

Each check raises a ValueError that names the config class, the field, what it must be and what it is,
e.g. `LlamaConfig: hidden_size must be a positive int, got 0`.
"""
from __future__ import annotations

import copy
from dataclasses import fields, is_dataclass

# Entries of a config.json that no config keeps in `unread`: what save_pretrained writes anew (the class,
# the dtype, the version) or what only names where the file came from.
NOT_KEPT = ("model_type", "architectures", "dtype", "torch_dtype", "transformers_version", "_name_or_path",
            "_commit_hash")


def known_fields(cls, d: dict, aliases=()) -> dict:
    """The entries of d that are fields of the dataclass cls (config.json holds many others). A cls with an
    `unread` field also gets the others there (minus NOT_KEPT and `aliases`, other spellings of its fields
    that its reader takes), so that saving writes back the settings minivlm does not use."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}.from_dict: expected a dict, got {type(d).__name__}")
    names = {f.name for f in fields(cls)} - {"unread"}
    kwargs = {k: v for k, v in d.items() if k in names}
    if "unread" in {f.name for f in fields(cls)}:
        skip = names | set(NOT_KEPT) | set(aliases)
        kwargs["unread"] = {k: copy.deepcopy(v) for k, v in d.items() if k not in skip}
    return kwargs


def to_transformers_dict(config, model_type: str, defaults: dict, *, drop=(), rename=None, **nested) -> dict:
    """A config dataclass as Transformers' config.json writes it, keys sorted: `defaults` (the settings
    Transformers' config class has and minivlm does not use, at Transformers' defaults), then the entries
    the config read but does not use (`unread`: a checkpoint's own values for them), then its own fields
    (minus `drop`, with the names `rename` maps), sub-configs as their to_dict() (or as given in `nested`)."""
    own = {}
    for f in fields(config):
        if f.name == "unread" or f.name in drop:
            continue
        value = nested[f.name] if f.name in nested else getattr(config, f.name)
        own[(rename or {}).get(f.name, f.name)] = value.to_dict() if is_dataclass(value) else copy.deepcopy(value)
    names = {f.name for f in fields(config)}
    own.update((k, copy.deepcopy(v)) for k, v in nested.items() if k not in names)     # derived settings
    out = {**copy.deepcopy(defaults), **copy.deepcopy(getattr(config, "unread", {})), **own, "model_type": model_type}
    return dict(sorted(out.items()))


def invalid(config, name, expected) -> ValueError:
    """The ValueError for a field of config (a dataclass, or any object with attributes) that is not what
    it must be: `<Class>: <name> must be <expected>, got <value>`."""
    return ValueError(f"{type(config).__name__}: {name} must be {expected}, got {getattr(config, name)!r}")


def positive_ints(config, *names):
    """Each field named is an int >= 1 (not a bool)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise invalid(config, name, "a positive int")


def positive_numbers(config, *names):
    """Each field named is a finite int or float > 0 (not a bool)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0 < value < float("inf"):
            raise invalid(config, name, "a positive number")


def bools(config, *names):
    """Each field named is True or False."""
    for name in names:
        if not isinstance(getattr(config, name), bool):
            raise invalid(config, name, "a bool")


def divides(config, divisor: str, name: str):
    """Field `divisor` divides field `name` (e.g. num_attention_heads divides hidden_size)."""
    if getattr(config, name) % getattr(config, divisor):
        raise ValueError(f"{type(config).__name__}: {name}={getattr(config, name)} is not a multiple of "
                         f"{divisor}={getattr(config, divisor)}")


def one_of(config, name: str, choices):
    """Field `name` is one of `choices`."""
    if getattr(config, name) not in choices:
        raise invalid(config, name, f"one of {list(choices)}")


def in_vocab(config, *names, vocab: str = "vocab_size"):
    """Each field named is a token id: an int in [0, field `vocab`) (not a bool), e.g. a pad_token_id that
    numbers positions or indexes the embedding table."""
    for name in names:
        value, size = getattr(config, name), getattr(config, vocab)
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value < size:
            raise invalid(config, name, f"an int in [0, {vocab}={size})")


def non_negative_ints(config, *names):
    """Each field named is an int >= 0 (not a bool)."""
    for name in names:
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise invalid(config, name, "an int >= 0")
