"""from_pretrained's arguments and damaged folders: dtype names and "auto" (read as Transformers reads
them), CUDA asked for where torch has none, a safetensors file cut inside its header, a config.json or
index that is not JSON. Each bad case raises one error, on one line, that names the file or argument,
what was expected and what was found, before anything is loaded.

The checkpoint is a tiny BLIP-2 with OPT (tests/_blip2.py), saved by Transformers: it has float32
islands (the Q-Former), so the dtype tests also see where they apply.
"""
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file

import minivlm
from minivlm.loading import CheckpointError, load_weights
from minivlm.models.blip2 import Blip2Config, Blip2ForConditionalGeneration
from _blip2 import hf_config, hf_model
from helpers import edit_config, save

NAMES = {"float64": torch.float64, "float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    return save(hf_model(hf_config("opt")), tmp_path_factory.mktemp("blip2"))


def copy_of(folder, tmp_path, name="copy"):
    target = tmp_path / name
    shutil.copytree(folder, target)
    return target


def raises_one_line(exc, call, *parts):
    """call() raises `exc` with a one-line message that contains every one of `parts`."""
    with pytest.raises(exc) as info:
        call()
    message = str(info.value)
    assert "\n" not in message, message
    for part in parts:
        assert str(part) in message, f"{part!r} not in {message!r}"
    return message


# -- dtype --------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", list(NAMES))
def test_dtype_names_give_the_torch_dtype_model(folder, name):
    """Each name loads the model its torch.dtype loads: the same dtypes (float32 islands only below
    float32) and the same weights."""
    by_name = minivlm.from_pretrained(folder, dtype=name)
    by_dtype = minivlm.from_pretrained(folder, dtype=NAMES[name])
    dtype = NAMES[name]
    island = torch.float32 if dtype in (torch.float16, torch.bfloat16) else dtype
    assert by_name.language_projection.weight.dtype == dtype
    assert by_name.query_tokens.dtype == island
    assert {p.dtype for p in by_name.qformer.parameters()} == {island}
    a, b = by_name.state_dict(), by_dtype.state_dict()
    assert a.keys() == b.keys() and all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


def _auto_cases(folder, tmp_path):
    """Folders whose config.json says (or does not say) a dtype, with weights stored in float32 or
    bfloat16; each with the dtype both loaders must pick."""
    def variant(name, edit, weights=None):
        target = copy_of(folder, tmp_path, name)
        edit_config(target, edit)
        if weights is not None:
            file = target / "model.safetensors"
            save_file({k: v.to(weights) for k, v in load_file(str(file)).items()}, str(file),
                      metadata={"format": "pt"})
        return target

    def drop(config):
        config.pop("dtype", None)

    return [
        (variant("dtype", lambda c: c.update(dtype="bfloat16")), torch.bfloat16),
        (variant("torch_dtype", lambda c: (drop(c), c.update(torch_dtype="float16"))), torch.float16),
        (variant("both", lambda c: c.update(dtype="float64", torch_dtype="float16")), torch.float64),
        (variant("null", lambda c: c.update(dtype=None, torch_dtype="bfloat16")), torch.bfloat16),
        (variant("none_f32", drop), torch.float32),
        (variant("none_bf16", drop, weights=torch.bfloat16), torch.bfloat16),
    ]


def test_auto_reads_the_config_as_transformers_does(folder, tmp_path):
    """dtype="auto": config.json's `dtype`, else its `torch_dtype` (a null counts as absent), else the
    dtype the checkpoint's weights are stored in. Transformers picks the same for each folder."""
    from transformers import Blip2ForConditionalGeneration as HFBlip2

    for target, expected in _auto_cases(folder, tmp_path):
        ours = minivlm.from_pretrained(target, dtype="auto")
        theirs = HFBlip2.from_pretrained(target, dtype="auto")
        assert ours.language_projection.weight.dtype == expected, target.name
        assert theirs.language_projection.weight.dtype == expected, target.name


def test_auto_rejects_a_config_dtype_it_cannot_compute_in(folder, tmp_path):
    target = copy_of(folder, tmp_path)
    edit_config(target, lambda c: c.update(dtype="int8"))
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target, dtype="auto"),
                    target / "config.json", "dtype='int8'", "'bfloat16'", "pass dtype explicitly")
    assert minivlm.from_pretrained(target, dtype="float32").language_projection.weight.dtype == torch.float32


@pytest.mark.parametrize("bad", ["fp16", "half", "torch.float16", "Float32", "int8", ""])
def test_unknown_dtype_names_are_refused_by_name(folder, bad):
    raises_one_line(ValueError, lambda: minivlm.from_pretrained(folder, dtype=bad),
                    f"dtype {bad!r}", "'float64', 'float32', 'bfloat16', 'float16', 'auto'")


@pytest.mark.parametrize("bad", [torch.int64, torch.bool, 16, None])
def test_non_float_dtypes_are_refused(folder, bad):
    raises_one_line(TypeError, lambda: minivlm.from_pretrained(folder, dtype=bad), "dtype", repr(bad))


# -- device -------------------------------------------------------------------------------------------

@pytest.mark.skipif(torch.cuda.is_available(), reason="torch sees a CUDA GPU here")
def test_cuda_without_cuda_fails_before_loading(folder, tmp_path):
    """device="cuda" on a torch without CUDA: a ValueError naming the argument, raised before the folder
    is read (a folder without weights would fail otherwise), for load_weights too."""
    empty = tmp_path / "no_weights"
    empty.mkdir()
    shutil.copy(folder / "config.json", empty)
    for path in (folder, empty):
        for device in ("cuda", "cuda:0", torch.device("cuda", 1)):
            raises_one_line(ValueError, lambda: minivlm.from_pretrained(path, device=device),
                            f"device={str(torch.device(device))!r}", "CUDA", "expected device='cpu'")
    if torch.version.cuda is None:
        raises_one_line(ValueError, lambda: minivlm.from_pretrained(folder, device="cuda"), "CPU-only build")
    with torch.device("meta"):
        model = Blip2ForConditionalGeneration(Blip2Config.from_dict(hf_config("opt").to_dict()))
    raises_one_line(ValueError, lambda: load_weights(model, {}, device="cuda"), "load_weights", "CUDA")


def test_cuda_errors_say_why(folder, monkeypatch):
    """A CUDA build that sees no GPU, and a GPU index beyond those torch sees (simulated)."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.version, "cuda", "12.8")
    raises_one_line(ValueError, lambda: minivlm.from_pretrained(folder, device="cuda"),
                    "device='cuda'", "CUDA 12.8", "sees no CUDA GPU")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    raises_one_line(ValueError, lambda: minivlm.from_pretrained(folder, device="cuda:3"),
                    "device='cuda:3'", "1 CUDA GPU", "index below")


@pytest.mark.parametrize("bad", ["gpu", "cuda:x", 3.5])
def test_unknown_devices_are_refused(folder, bad):
    raises_one_line(ValueError, lambda: minivlm.from_pretrained(folder, device=bad), f"device {bad!r}")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU visible to torch")
def test_cuda_loads_where_torch_sees_a_gpu(folder):
    model = minivlm.from_pretrained(folder, device="cuda")
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    cpu = minivlm.from_pretrained(folder)
    assert all(torch.equal(p.cpu(), q) for p, q in zip(model.parameters(), cpu.parameters()))


# -- damaged files ------------------------------------------------------------------------------------

@pytest.mark.parametrize("keep", [8, 20, "half", "all_but_one"])
def test_safetensors_cut_inside_its_header(folder, tmp_path, keep):
    target = copy_of(folder, tmp_path)
    file = target / "model.safetensors"
    data = file.read_bytes()
    size = int.from_bytes(data[:8], "little")
    n = {"half": 8 + size // 2, "all_but_one": 8 + size - 1}.get(keep, keep)
    file.write_bytes(data[:n])
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), file, "truncated inside its header",
                    f"expected {size} bytes", f"found {n - 8}")


def test_safetensors_too_short_or_not_json(folder, tmp_path):
    target = copy_of(folder, tmp_path)
    file = target / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:5])
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), file, "not a safetensors file",
                    "expected 8 bytes", "found 5 bytes")
    file.write_bytes(data[:8] + b"{" + data[8:8 + 20].replace(b'"', b"'") + data[8 + 21:])
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), f"the header of {file}",
                    "not valid JSON", "line 1", "expected one JSON object")
    header = b"[1, 2]"
    file.write_bytes(len(header).to_bytes(8, "little") + header)
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), file, "JSON list",
                    "expected a JSON object")


@pytest.mark.parametrize("text,found", [
    ('{"model_type": "blip-2", "num_query_tokens": 4,', "Expecting property name"),
    ('{"model_type": "blip-2"\n "num_query_tokens": 4}', "line 2"),
    ("", "Expecting value"),
])
def test_malformed_config_json(folder, tmp_path, text, found):
    target = copy_of(folder, tmp_path)
    (target / "config.json").write_text(text)
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), target / "config.json",
                    "not valid JSON", found, "expected one JSON object")


def test_config_json_not_an_object_or_not_utf8(folder, tmp_path):
    target = copy_of(folder, tmp_path)
    (target / "config.json").write_text("[1, 2]")
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), target / "config.json",
                    "holds a JSON list", "expected a JSON object")
    (target / "config.json").write_bytes(b'{"model_type": "\xff"}')
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), target / "config.json",
                    "not UTF-8", "expected JSON")


def test_malformed_shard_index(folder, tmp_path):
    target = copy_of(folder, tmp_path)
    index = target / "model.safetensors.index.json"
    index.write_text('{"weight_map": {"a": "model.safetensors"')
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), index, "not valid JSON")
    index.write_text('{"metadata": {}}')
    raises_one_line(CheckpointError, lambda: minivlm.from_pretrained(target), index, '"weight_map"')
