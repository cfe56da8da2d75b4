"""Saving a model: a minivlm model -> a checkpoint folder that Transformers and minivlm.from_pretrained load.

    model.save_pretrained("my-folder")                        # or minivlm.saving.save_pretrained(model, ...)
    model.save_pretrained("my-folder", max_shard_size="2GB")  # several files and an index above 2 GB

The folder holds what Transformers' `save_pretrained` writes (loading.py reads the same layout):
- config.json: `model.config.to_dict()` (Transformers' spelling: `model_type`, the nested sub-configs, the
  settings minivlm does not use as the checkpoint had them or at Transformers' defaults), plus
  `architectures` (the Transformers class that loads the folder) and `dtype` (of the first floating-point
  weight outside the float32 islands). JSON with sorted keys and an indent of 2.
- the weights as safetensors with metadata {"format": "pt"}, under the names Transformers uses
  (`model.save_renames` maps the few that differ). A weight the config ties to another
  (`model.tied_weights()`) and that still shares its parameter is stored once, under its source's name;
  one that was loaded with values of its own is stored too. Every tensor keeps its dtype: the float32
  parts of a half-precision model (`keep_in_float32`) stay float32 in the file. Persistent buffers are
  stored beside the parameters.
- sharding as in Transformers (huggingface_hub's rule): the tensors, in the model's order, fill a shard
  until the next would take it past `max_shard_size`; a tensor larger than that gets a shard of its own.
  One shard is `model.safetensors`; several are `model-0000k-of-0000n.safetensors` with
  `model.safetensors.index.json` ({"metadata": {"total_parameters", "total_size"}, "weight_map"}).
  Weight files of an earlier save in the folder that this one does not write are removed.
- generation_config.json for a model that generates: `model.generation_config` (else the one its config
  gives), written by `GenerationConfig.to_dict`.

Bad arguments fail before anything is written, naming the argument: a path that is a file, a
max_shard_size that is not a size ("5GB", "500MB", or a positive int of bytes), a model with weights on the
meta device.
"""
from __future__ import annotations

import json
import re
from pathlib import Path

import torch
from safetensors.torch import save_file

# Transformers' default: 50 GB per shard, so all but the largest models are one file.
DEFAULT_MAX_SHARD_SIZE = "50GB"
# Size units, powers of 10 as in huggingface_hub (a "GB" is 10^9 bytes).
SIZE_UNITS = {"KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12}

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"
SHARD_FILE = re.compile(r"model-\d{5}-of-\d{5}\.safetensors")


def save_pretrained(model, path, *, max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE) -> Path:
    """Write `model` to the folder `path` (created if needed) as Transformers' save_pretrained does; see
    the module docstring. Returns the folder."""
    from .models.base import GenerativeModel, Model
    if not isinstance(model, Model):
        raise TypeError(f"save_pretrained: model must be a minivlm.models.base.Model, got {type(model).__name__}")
    limit = parse_size(max_shard_size)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise NotADirectoryError(f"save_pretrained: path {str(path)!r} is a file; expected a folder to write "
                                 f"the checkpoint into (it is created if missing)")
    meta = [name for name, t in model.state_dict().items() if t.is_meta]
    if meta:
        raise ValueError(f"save_pretrained: the model has weights on the meta device (no values), e.g. "
                         f"{meta[0]!r}; expected a model with real weights (loaded or initialised)")
    tensors = state_dict_to_save(model)
    config = model.config.to_dict()
    config["architectures"] = [model.architecture()]
    config["dtype"] = _dtype_name(model)

    folder.mkdir(parents=True, exist_ok=True)
    shards = split_into_shards(tensors, limit)
    names = [SINGLE_FILE] if len(shards) == 1 else \
        [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))]
    for old in folder.iterdir():          # weight files of an earlier save that this one does not write
        stale = old.name in (SINGLE_FILE, INDEX_FILE) or SHARD_FILE.fullmatch(old.name)
        if stale and old.name not in names and old.is_file():
            old.unlink()
    for name, shard in zip(names, shards):
        save_file({k: tensors[k] for k in shard}, str(folder / name), metadata={"format": "pt"})
    if len(shards) > 1:
        index = {"metadata": {"total_parameters": sum(p.numel() for p in model.parameters()),
                              "total_size": sum(_nbytes(t) for t in tensors.values())},
                 "weight_map": {k: name for name, shard in zip(names, shards) for k in shard}}
        _write_json(folder / INDEX_FILE, index)
    _write_json(folder / "config.json", config)
    if isinstance(model, GenerativeModel):
        from .generation import GenerationConfig
        generation = model.generation_config or GenerationConfig.from_model_config(model.config)
        _write_json(folder / "generation_config.json", generation.to_dict())
    return folder


def state_dict_to_save(model) -> dict:
    """{Transformers' name: tensor (CPU, contiguous, its own dtype)} for every parameter and persistent
    buffer, in the model's order; a tied weight that shares its source's parameter is left out (the source
    is stored), as is any second name of one parameter."""
    from .loading import rename_key
    tied = model.tied_weights()
    everything = model.state_dict(keep_vars=True)      # parameters and persistent buffers, every name
    seen, out = {}, {}
    for name, t in everything.items():
        source = tied.get(name)
        if source is not None and everything.get(source) is t:
            continue                       # shares its source's parameter: stored once, as the source
        if id(t) in seen:
            continue                       # one parameter under a second name
        seen[id(t)] = name
        out[rename_key(name, model.save_renames)] = t.detach().cpu().contiguous()
    return out


def split_into_shards(tensors: dict, limit: int) -> list[list[str]]:
    """The tensor names of each shard, in order: a shard takes tensors until the next would take it past
    `limit` bytes; a tensor larger than `limit` is a shard of its own (huggingface_hub's rule)."""
    shards, current, size = [], [], 0
    for name, t in tensors.items():
        n = _nbytes(t)
        if n > limit:
            shards.append([name])
            continue
        if current and size + n > limit:
            shards.append(current)
            current, size = [], 0
        current.append(name)
        size += n
    if current or not shards:
        shards.append(current)
    return shards


def parse_size(size) -> int:
    """max_shard_size in bytes: a positive int, or a string of a number and a unit KB, MB, GB or TB
    (powers of 10; any case), e.g. "5GB", "0.5 MB"."""
    if isinstance(size, int) and not isinstance(size, bool):
        if size < 1:
            raise ValueError(f"save_pretrained: max_shard_size must be a positive number of bytes, got {size}")
        return size
    if not isinstance(size, str):
        raise TypeError(f"save_pretrained: max_shard_size must be an int (bytes) or a size such as '5GB', "
                        f"got {type(size).__name__} {size!r}")
    match = re.fullmatch(r"\s*(\d+(?:\.\d*)?|\.\d+)\s*([KMGT]B)\s*", size, flags=re.IGNORECASE)
    value = int(float(match.group(1)) * SIZE_UNITS[match.group(2).upper()]) if match else 0
    if value < 1:
        raise ValueError(f"save_pretrained: max_shard_size must be a size such as '5GB' or '500MB' (units "
                         f"{', '.join(SIZE_UNITS)}) or a positive int of bytes, got {size!r}")
    return value


def _nbytes(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


def _dtype_name(model) -> str:
    """config.json's `dtype`: that of the first floating-point parameter outside the float32 islands, so
    that from_pretrained(dtype="auto") gives the model back. (Transformers takes the first floating-point
    parameter, island or not: a half-precision BLIP-2 says "float32", from its query tokens.)"""
    islands = tuple(model.keep_in_float32)
    dtypes = [p.dtype for name, p in model.named_parameters() if p.is_floating_point()
              and not any(name == i or name.startswith(i + ".") for i in islands)]
    dtypes = dtypes or [p.dtype for p in model.parameters() if p.is_floating_point()] or [torch.float32]
    return str(dtypes[0]).removeprefix("torch.")


def _write_json(file: Path, value: dict):
    file.write_text(json.dumps(value, indent=2, sort_keys=True) + "\n", encoding="utf-8")


__all__ = ["save_pretrained", "parse_size", "split_into_shards", "state_dict_to_save", "DEFAULT_MAX_SHARD_SIZE"]
