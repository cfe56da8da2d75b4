"""What every config dataclass does the same way: read the fields of a config.json dict, and check them.

Each check raises a ValueError that names the config class, the field, what it must be and what it is,
e.g. `LlamaConfig: hidden_size must be a positive int, got 0`.
"""
from __future__ import annotations

from dataclasses import fields


def known_fields(cls, d: dict) -> dict:
    """The entries of d that are fields of the dataclass cls (config.json holds many others)."""
    if not isinstance(d, dict):
        raise TypeError(f"{cls.__name__}.from_dict: expected a dict, got {type(d).__name__}")
    names = {f.name for f in fields(cls)}
    return {k: v for k, v in d.items() if k in names}


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
