"""Loading checkpoints: a local folder with config.json and safetensors weights -> a minivlm model.

    model = minivlm.from_pretrained("path/to/llava-v1.6-mistral-7b-hf", dtype=torch.bfloat16)

The folder is what the Hugging Face hub holds for a model (config.json, then model.safetensors or a
sharded model-0000N-of-0000M.safetensors set with its model.safetensors.index.json) or what Transformers'
`save_pretrained` writes. The steps:

1. config.json's `model_type` picks the architecture (`minivlm.models.MODEL_TYPES`); its config
   dataclass reads the rest of the file.
2. The model is built on the meta device (no memory, no random init), then given real, uninitialised
   storage in the asked dtype and device.
3. Every tensor in the files is renamed with the model's own `checkpoint_renames` table (the
   spellings found in the wild: the hub's original names, Transformers 5.x's) and copied in.
4. The key sets must match exactly. Missing tensors, unexpected tensors and shape mismatches are
   collected and raised as one error that lists them: nothing is left at its (here: uninitialised)
   starting value, nothing is silently dropped. Weights the config ties (`model.tied_weights()`, e.g.
   an lm_head that shares the embedding) follow the file: one left out shares its source, one stored
   equal to it too, one stored with other values becomes a separate weight (with a warning); see
   `load_weights`. Tensors that are not weights, such as the position ids and rotary frequencies
   older Transformers versions saved, are skipped
   (`IGNORED_KEYS`). In a model narrower than float32 (float16, bfloat16), the parts it lists in
   `keep_in_float32` (read after the cast to `dtype`: BLIP-2's Q-Former, T5's `wo` in float16) stay
   float32; a float32 or float64 model is one dtype throughout.

`dtype` is a floating-point torch.dtype or its name ("float64", "float32", "bfloat16", "float16"), or
"auto": config.json's `dtype` (older files: `torch_dtype`), else the dtype of the checkpoint's first
floating-point tensor. Broken files (a safetensors header cut short, a config.json that is not JSON)
and a device torch cannot reach fail before anything is loaded, naming the file or argument.

The same checks are available for an in-memory state dict through `load_weights(model, tensors)`.
"""
from __future__ import annotations

import json
import math
import re
import warnings
from pathlib import Path
from typing import Iterable, Mapping

import torch
from safetensors import SafetensorError, safe_open
from torch import nn

# Checkpoints larger than this show a progress bar while their tensors are copied.
PROGRESS_BAR_BYTES = 256 * 2**20

# Tensors older checkpoints stored that are not weights: buffers Transformers 4.x saved with the model
# (CLIP's position ids, Llama's rotary inverse frequencies) and minivlm computes on the fly. A model may
# name more in its own `checkpoint_ignore`.
IGNORED_KEYS = [r"(^|\.)embeddings\.position_ids$", r"\.rotary_emb\.inv_freq$"]


class CheckpointError(ValueError):
    """A checkpoint folder minivlm cannot load: a damaged file (its message names it and says what was
    expected and found), or tensors that do not fit the model (the message lists every missing,
    unexpected and misshapen one)."""


# The dtype names from_pretrained accepts, as Transformers writes them (config.json's `dtype` too).
DTYPE_NAMES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16,
               "float16": torch.float16}


# safetensors dtype names -> torch dtypes (the format: https://github.com/huggingface/safetensors).
SAFETENSORS_DTYPES = {
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
}


MAX_HEADER_BYTES = 100_000_000     # the longest header safetensors reads


def from_pretrained(path, dtype: torch.dtype | str = torch.float32, device="cpu", *, progress: bool | None = None,
                    mmap: bool = True):
    """Build the model a local checkpoint folder describes and load its weights; returns it in eval mode.

    path: a folder holding config.json and model.safetensors (or a sharded set with
    model.safetensors.index.json). dtype: the floating-point dtype of every parameter (float32 islands
    aside, see the module docstring): a torch.dtype, its name ("float64", "float32", "bfloat16",
    "float16"), or "auto": config.json's `dtype` (else `torch_dtype`), else, when the config has neither,
    the dtype of the first floating-point tensor of the checkpoint (its first file, by tensor name), as
    Transformers reads it. device: where the weights go; a CUDA device needs a torch that sees a GPU
    (checked first). progress: show a progress bar (default: only for checkpoints over 256 MiB).
    mmap: on the CPU, a tensor stored in `dtype` already becomes a view of the file mapped into memory
    (copy-on-write: writing to a weight never changes the file), read from disk when first used; so a
    large table of which a forward reads a few rows (a 250k-token embedding) never fills memory.
    mmap=False reads every tensor into memory at load time.
    A model that generates text also gets its `generation_config` (bos/eos/pad ids) from the folder's
    generation_config.json, then config.json.
    """
    from .models import model_class   # the registry imports every model file; keep `import minivlm` light
    from .models.base import GenerativeModel

    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"from_pretrained: path {str(path)!r} is not a folder; expected a local "
                                f"checkpoint folder with config.json and *.safetensors (nothing is downloaded)")
    dtype = _parse_dtype(dtype)
    device = _check_device(device, "from_pretrained")
    config = read_config(folder)
    cls = model_class(config.get("model_type"))
    model_config = cls.config_class.from_dict(config)

    files = checkpoint_files(folder)
    tensors = _SafetensorsFiles(files, mmap=mmap)
    if dtype == "auto":
        dtype = _auto_dtype(config, tensors, folder / "config.json")
    with torch.device("meta"):
        model = cls(model_config)
    if progress is None:
        progress = sum(f.stat().st_size for f in files) > PROGRESS_BAR_BYTES
    load_weights(model, tensors, dtype=dtype, device=device, progress=progress, source=str(folder))
    if isinstance(model, GenerativeModel):
        from .generation import GenerationConfig
        model.generation_config = GenerationConfig.from_pretrained(folder)
    return model.eval()


def load_weights(model: nn.Module, tensors, *, dtype: torch.dtype | None = None, device=None,
                 progress: bool = False, source: str = "state dict") -> nn.Module:
    """Copy a checkpoint's tensors into `model`, renaming keys with the model's `checkpoint_renames`.

    tensors: a mapping or an iterable of (name, tensor). The model may live on the meta device: it then
    gets real storage (dtype/device, default float32 on the CPU) first. Raises CheckpointError listing
    every missing, unexpected, duplicated or misshapen tensor; copies nothing in that case.

    Tied weights: `model.tied_weights()` maps each weight the config ties (target) to the one it shares
    (source). A source and its targets form a group; the file decides what is really shared:
    - a member absent from the file shares the group's first stored member (the source where stored);
    - a stored member equal to that one (after the cast to dtype) is tied to it: one parameter;
    - a stored member with other values keeps them as a separate parameter, and a warning names both keys.
    A group with no member in the file is missing (its source is reported). A group whose source is absent
    while its stored members differ raises CheckpointError: what the source should hold is undecidable.
    Every stored tensor is read.
    """
    from .models.base import Model
    if not isinstance(model, Model):
        raise TypeError(f"load_weights: model must be a minivlm.models.base.Model (the contract that names its "
                        f"checkpoint renames and tied weights), got {type(model).__name__}")
    device = _check_device(device, "load_weights")
    renames = model.checkpoint_renames
    ignored = re.compile("|".join(f"(?:{p})" for p in IGNORED_KEYS + list(model.checkpoint_ignore)))
    tied = model.tied_weights()
    if not isinstance(tensors, (_SafetensorsFiles, _InMemory)):
        tensors = _InMemory(tensors)

    # The model's own tensors: parameters (a shared one under each of its names) and persistent buffers.
    own = dict(model.named_parameters(remove_duplicate=False))
    own.update((name, b) for name, b in model.named_buffers(remove_duplicate=False)
               if _is_persistent(model, name))

    # Rename every checkpoint key and check names and shapes against the model before copying
    # anything, so that a bad checkpoint fails fast and whole.
    found, unexpected, misshapen, duplicated = {}, [], [], []
    file_index = tensors.index()
    for key, shape in tensors.shapes():
        if ignored.search(key):
            continue
        name = rename_key(key, renames)
        if name not in own:
            unexpected.append(key if name == key else f"{key} (as {name})")
        elif name in found:
            duplicated.append(f"{name} (from {found[name]!r} and {key!r})")
        elif shape != tuple(own[name].shape):
            misshapen.append(f"{name}: checkpoint {shape}, model {tuple(own[name].shape)}")
        else:
            found[name] = key
    groups = _tie_groups(tied)                # source -> [source, *targets]
    stored = {src: [m for m in members if m in found] for src, members in groups.items()}
    # A tie group needs one stored member: the others, source included, can share its parameter.
    missing = sorted(set(own) - set(found) - set(tied) - {src for src in groups if stored[src]})
    if missing or unexpected or misshapen or duplicated:
        raise CheckpointError(_mismatch_report(type(model).__name__, source, missing, unexpected,
                                               misshapen, duplicated))

    # Give a meta model real storage (dtype first, while that is free), then restore the ties that
    # moving parameters breaks.
    if any(t.is_meta for t in own.values()):
        dtype = dtype or torch.float32
        model.to(dtype)
        if torch.finfo(dtype).bits < 32:    # parts a model runs in float32 when it is narrower (see above)
            for name in model.keep_in_float32:
                _to_float32(model, name)
        model.to_empty(device=device or "cpu")
    elif dtype is not None or device is not None:
        model.to(device=device, dtype=dtype)
    # Each stored member of a tie group gets a parameter of its own (moving a model may or may not have
    # broken its ties), each absent one shares the first stored member's; equal ones are re-tied below.
    for src, members in groups.items():
        first = model.get_parameter(stored[src][0])
        for name in members:
            param = model.get_parameter(name)
            if name not in found:
                _set_parameter(model, name, first)
            elif name != stored[src][0] and param is first:
                _set_parameter(model, name, nn.Parameter(torch.empty_like(param), param.requires_grad))

    own = dict(model.named_parameters(remove_duplicate=False))
    own.update(model.named_buffers(remove_duplicate=False))
    from tqdm.auto import tqdm
    with torch.no_grad():
        for name, key in tqdm(found.items(), desc="loading weights", unit="tensor", disable=not progress):
            view = tensors.mapped(key, file_index.get(key, 0), own[name])
            if view is not None:
                own[name].data = view            # the same Parameter object: ties to it stay
            else:
                tensors.read_into(key, file_index.get(key, 0), own[name])   # copy_ converts the dtype
    _tie_stored_copies(model, stored, found, source)
    return model


def rename_key(key: str, renames) -> str:
    """The model's name for a checkpoint key: the first (pattern, replacement) of `renames` that matches."""
    for pattern, replacement in renames:
        new, n = re.subn(pattern, replacement, key)
        if n:
            return new
    return key


def _tie_groups(tied: dict) -> dict:
    """{target: source} -> {source: [source, *targets]}, in the order the model lists them."""
    groups = {}
    for target, src in tied.items():
        if src in tied:
            raise ValueError(f"tied_weights: {target!r} is tied to {src!r}, which is itself tied to "
                             f"{tied[src]!r}; expected every target to name the weight it shares directly")
        groups.setdefault(src, [src]).append(target)
    return groups


def _tie_stored_copies(model: nn.Module, stored: dict, found: dict, source: str):
    """After loading: tie each stored member of a tie group that equals the group's first stored one;
    warn about those that differ (they stay separate weights)."""
    for src, members in stored.items():
        first = model.get_parameter(members[0])
        for name in members[1:]:
            if torch.equal(model.get_parameter(name), first):
                _set_parameter(model, name, first)
            elif src not in found:
                raise CheckpointError(
                    f"the checkpoint {source} does not fit {type(model).__name__}: it lacks {src!r}, and the "
                    f"weights tied to it that it holds differ ({', '.join(repr(found[m]) for m in members)}), "
                    f"so what {src!r} and the tied weights it lacks should hold is undecidable")
            else:
                warnings.warn(f"{found[name]!r} would share {found[members[0]]!r} ({type(model).__name__}."
                              f"tied_weights()), but the checkpoint {source} holds different values for them: "
                              f"they are loaded as two separate weights", stacklevel=3)


def _to_float32(model: nn.Module, name: str):
    """Cast the submodule or parameter `name` of a (meta) model to float32."""
    try:
        model.get_submodule(name).float()
    except AttributeError:
        _set_parameter(model, name, nn.Parameter(model.get_parameter(name).float(), requires_grad=True))


def _is_persistent(model: nn.Module, name: str) -> bool:
    module_name, _, buffer_name = name.rpartition(".")
    module = model.get_submodule(module_name) if module_name else model
    return buffer_name not in module._non_persistent_buffers_set


def _set_parameter(model: nn.Module, name: str, param: nn.Parameter):
    module_name, _, param_name = name.rpartition(".")
    setattr(model.get_submodule(module_name) if module_name else model, param_name, param)


def read_config(folder: Path) -> dict:
    """config.json as a dict, with a clear error where it is missing or is not a JSON object."""
    file = Path(folder) / "config.json"
    if not file.is_file():
        raise FileNotFoundError(f"from_pretrained: no config.json in {str(folder)!r}")
    config = _parse_json(file.read_bytes(), str(file))
    if not isinstance(config, dict):
        raise CheckpointError(f"from_pretrained: {file} holds a JSON {type(config).__name__}, expected a JSON object")
    return config


def checkpoint_files(folder: Path) -> list[Path]:
    """The safetensors files of a checkpoint folder: the shards its index names, else model.safetensors."""
    folder = Path(folder)
    index = folder / "model.safetensors.index.json"
    if index.is_file():
        weight_map = _parse_json(index.read_bytes(), str(index))
        if not isinstance(weight_map, dict) or not isinstance(weight_map.get("weight_map"), dict):
            raise CheckpointError(f"from_pretrained: {index} has no \"weight_map\" object (tensor name -> shard file)")
        weight_map = weight_map["weight_map"]
        files = [folder / name for name in sorted(set(weight_map.values()))]
        absent = [str(p.name) for p in files if not p.is_file()]
        if absent:
            raise FileNotFoundError(f"from_pretrained: {index.name} names shards that are not in "
                                    f"{str(folder)!r}: {absent}")
        return files
    single = folder / "model.safetensors"
    if single.is_file():
        return [single]
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth", ".ckpt"))
    hint = (f" (found {others}: minivlm reads only safetensors, which need no pickle; convert them with "
            f"safetensors.torch.save_file)" if others else "")
    raise FileNotFoundError(f"from_pretrained: no model.safetensors or model.safetensors.index.json in "
                            f"{str(folder)!r}{hint}")


class _SafetensorsFiles:
    """A checkpoint's tensors, served to the model's parameters without a second copy in memory.

    A safetensors file is 8 bytes (little-endian u64: the header's length), a JSON header giving each
    tensor's dtype, shape and byte range, then the raw little-endian bytes. The safetensors library reads
    and checks the header (`safe_open`): names, dtypes, shapes, and that the tensors lie back to back in
    the order of their offsets, from the end of the header to the end of the file, so where each starts
    follows. The bytes are then served two ways, both minivlm's own because safetensors offers neither
    (measured on a 356 MiB file of 404 float32 tensors, whose header both read in 0.4 ms):
    - `mapped` (mmap=True, the tensor already in the wanted dtype, on the CPU): the parameter becomes a
      view of the whole file mapped privately into memory; pages are read from disk when first touched,
      and a write copies the page (the file never changes). safe_open's `get_tensor` also gives private,
      copy-on-write views, but each holds a storage of its own tensor only, and making them all charged
      84 MiB of pages before any was used (these views: 1 MiB).
    - `read_into`: one `readinto` of the tensor's bytes into the parameter's own memory when dtype and
      device allow, else into a buffer of that one tensor, then `copy_` (which converts the dtype). Into
      float32 parameters that peaks 1 MiB above them, in 0.15 s; `get_tensor` + `copy_` peaks 358 MiB
      above (the whole file mapped) in 0.45 s, or with safetensors 0.8's backend="pread" 65 MiB above (a
      copy of the largest tensor) in 0.94 s.
    """

    def __init__(self, files: Iterable[Path], mmap: bool = False):
        self.files = list(files)
        self.headers = [self._header(f) for f in self.files]
        self.mmap = mmap
        self._storages = {}

    @staticmethod
    def _header(file: Path) -> dict:
        """name -> (dtype, shape, where its bytes start in the file, how many bytes)."""
        try:
            with safe_open(file, framework="pt") as f:
                tensors = []
                for name in f.offset_keys():                 # in the order of their bytes in the file
                    info = f.get_slice(name)
                    tensors.append((name, info.get_dtype(), tuple(info.get_shape())))
        except SafetensorError as e:
            raise CheckpointError(_why_not_safetensors(file, e)) from None
        with open(file, "rb") as f:
            offset = 8 + int.from_bytes(f.read(8), "little")      # the first tensor starts after the header
        entries = {}
        for name, dtype_name, shape in tensors:
            if dtype_name not in SAFETENSORS_DTYPES:
                raise CheckpointError(f"from_pretrained: {file}: tensor {name!r} has dtype {dtype_name!r}, "
                                      f"which minivlm does not read (it reads {sorted(SAFETENSORS_DTYPES)})")
            dtype = SAFETENSORS_DTYPES[dtype_name]
            nbytes = math.prod(shape) * dtype.itemsize
            entries[name] = (dtype, shape, offset, nbytes)
            offset += nbytes
        return entries

    def shapes(self):
        for header in self.headers:
            for name, (_, shape, _, _) in header.items():
                yield name, shape

    def index(self) -> dict:
        """name -> which file holds it."""
        return {name: i for i, header in enumerate(self.headers) for name in header}

    def mapped(self, name: str, index: int, target: torch.Tensor):
        """The tensor as a view of its file mapped into memory (private, copy-on-write), or None where it
        cannot stand in for `target` as is (another dtype or device, or unaligned in the file)."""
        dtype, shape, offset, _ = self.headers[index][name]
        if not self.mmap or target.dtype != dtype or target.device.type != "cpu" or offset % dtype.itemsize:
            return None
        if index not in self._storages:
            file = self.files[index]
            self._storages[index] = torch.UntypedStorage.from_file(str(file), shared=False,
                                                                   nbytes=file.stat().st_size)
        strides = [1] * len(shape)
        for d in range(len(shape) - 2, -1, -1):
            strides[d] = strides[d + 1] * shape[d + 1]
        return torch.empty(0, dtype=dtype).set_(self._storages[index], offset // dtype.itemsize, shape, strides)

    def read_into(self, name: str, index: int, target: torch.Tensor):
        dtype, shape, offset, nbytes = self.headers[index][name]
        direct = target.dtype == dtype and target.device.type == "cpu" and target.is_contiguous()
        buffer = target if direct else torch.empty(shape, dtype=dtype)
        with open(self.files[index], "rb") as f:
            f.seek(offset)
            if nbytes and f.readinto(buffer.reshape(-1).view(torch.uint8).numpy()) != nbytes:
                raise ValueError(f"from_pretrained: {self.files[index]} is truncated (tensor {name!r})")
        if not direct:
            target.copy_(buffer)


class _InMemory:
    """An in-memory state dict (or an iterable of (name, tensor)) behind the same calls."""

    def __init__(self, tensors):
        self.tensors = dict(tensors.items() if isinstance(tensors, Mapping) else tensors)

    def shapes(self):
        for name, t in self.tensors.items():
            yield name, tuple(t.shape)

    def index(self) -> dict:
        return {}

    def mapped(self, name: str, index: int, target: torch.Tensor):
        return None

    def read_into(self, name: str, index: int, target: torch.Tensor):
        target.copy_(self.tensors[name])


def _auto_dtype(config: dict, tensors: "_SafetensorsFiles", file: Path) -> torch.dtype:
    """dtype="auto": config.json's `dtype` (Transformers 5.x writes it; older versions `torch_dtype`, read
    when `dtype` is absent or null), else the first floating-point tensor's dtype in the first file (by
    name; float8 is storage, not a dtype to compute in), else float32."""
    key = "dtype" if config.get("dtype") is not None else "torch_dtype"
    name = config.get(key)
    if name is not None:
        if name not in DTYPE_NAMES:
            raise CheckpointError(f"from_pretrained: dtype='auto' reads {key}={name!r} from {file}, expected one "
                                  f"of {', '.join(map(repr, DTYPE_NAMES))}; pass dtype explicitly")
        return DTYPE_NAMES[name]
    for tensor in sorted(tensors.headers[0]):
        dtype = tensors.headers[0][tensor][0]
        if dtype.is_floating_point and dtype.itemsize > 1:
            return dtype
    return torch.float32


# -- checks of the arguments and the files, and the error reports ------------------------------------


def _parse_dtype(dtype):
    """A torch.dtype from a dtype or its name; "auto" stays "auto" (resolved once the folder is read)."""
    if isinstance(dtype, str):
        if dtype != "auto" and dtype not in DTYPE_NAMES:
            raise ValueError(f"from_pretrained: dtype {dtype!r} is not a dtype name minivlm reads; expected "
                             f"one of {', '.join(map(repr, [*DTYPE_NAMES, 'auto']))} or a torch.dtype")
        return DTYPE_NAMES.get(dtype, dtype)
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"from_pretrained: dtype must be a floating-point torch.dtype or its name, got {dtype!r}")
    return dtype


def _check_device(device, caller: str):
    """`device` as a torch.device (None stays None), refused before anything is loaded where this torch
    cannot reach it."""
    if device is None:
        return None
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"{caller}: device {device!r} is not a torch device; expected a torch.device or a name "
                         f"such as 'cpu', 'cuda' or 'cuda:0'") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            why = ("this torch is a CPU-only build" if torch.version.cuda is None
                   else f"this torch (CUDA {torch.version.cuda}) sees no CUDA GPU")
            raise ValueError(f"{caller}: device={str(device)!r} asks for a CUDA GPU, but {why} (torch "
                             f"{torch.__version__}); expected device='cpu' here")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise ValueError(f"{caller}: device={str(device)!r}, but torch sees {torch.cuda.device_count()} "
                             f"CUDA GPU(s): expected an index below that")
    return device


def _parse_json(data: bytes, where: str):
    """JSON text (UTF-8) -> its value; a one-line CheckpointError naming `where` (the file) if it is not JSON."""
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError as e:
        raise CheckpointError(f"from_pretrained: {where} is not UTF-8 text (byte {e.start}: {e.reason}); "
                              f"expected JSON") from None
    except json.JSONDecodeError as e:
        near = e.doc[max(0, e.pos - 20):e.pos + 20]
        raise CheckpointError(f"from_pretrained: {where} is not valid JSON: {e.msg} at line {e.lineno} column "
                              f"{e.colno}, near {near!r} (expected one JSON object)") from None


def _why_not_safetensors(file: Path, error: SafetensorError) -> str:
    """What is wrong with a file safetensors refused, on one line naming it: the 8-byte header length, the
    header's JSON, the file's length, else safetensors' own reason."""
    with open(file, "rb") as f:
        prefix = f.read(8)
        size = int.from_bytes(prefix, "little")
        data = f.read(size) if len(prefix) == 8 and 0 < size <= MAX_HEADER_BYTES else b""
    if len(prefix) < 8 or not 0 < size <= MAX_HEADER_BYTES:
        got = f"{len(prefix)} bytes in all" if len(prefix) < 8 else f"a header length of {size} bytes"
        return (f"from_pretrained: {file} is not a safetensors file: expected 8 bytes giving a header length "
                f"of 1 byte to 100 MB, found {got}")
    if len(data) < size:
        return (f"from_pretrained: {file} is truncated inside its header: expected {size} bytes of JSON header "
                f"after the first 8, found {len(data)}")
    header = _parse_json(data, f"the header of {file}")
    if not isinstance(header, dict):
        return (f"from_pretrained: {file} is not a safetensors file: its header is a JSON "
                f"{type(header).__name__}, expected a JSON object")
    if "not fully covered" in str(error):      # a valid header, but the tensors do not end where the file does
        end = max((t["data_offsets"][1] for name, t in header.items() if name != "__metadata__"), default=0)
        found = file.stat().st_size - 8 - size
        return (f"from_pretrained: {file} is {'truncated' if found < end else 'longer than its header says'}: "
                f"expected {end} bytes of tensors after the header, found {found}")
    return f"from_pretrained: {file} is not a valid safetensors file: {error}"


def _mismatch_report(model_name, source, missing, unexpected, misshapen, duplicated, show=20) -> str:
    def section(title, items):
        if not items:
            return []
        more = [f"    ... and {len(items) - show} more"] if len(items) > show else []
        return [f"  {title} ({len(items)}):"] + [f"    {x}" for x in items[:show]] + more

    lines = [f"the checkpoint {source} does not fit {model_name}:"]
    lines += section("missing from the checkpoint", missing)
    lines += section("in the checkpoint but not in the model", unexpected)
    lines += section("shape mismatch", misshapen)
    lines += section("stored twice under different spellings", duplicated)
    return "\n".join(lines)


__all__ = ["from_pretrained", "load_weights", "CheckpointError", "checkpoint_files", "rename_key"]
