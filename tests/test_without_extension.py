"""minivlm where its compiled extension was never built: everything imports, every model runs on the
reference math, and a kernel call raises one error that says how to build the extension.

Each test runs a fresh Python on a copy of the package without its compiled libraries (*.so). That Python
starts with -S and finds torch through PYTHONPATH, so no .pth file runs: an editable install's finder
(setuptools puts one in site-packages) would otherwise find another checkout's minivlm._C.
"""

import json
import os
import shutil
import site
import subprocess
import sys

import pytest
import torch

from _llava import hf_config, hf_model, pixel_values, prompts
from helpers import assert_close_rel, save
from test_llava_next import F32_REL

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Every fresh process first proves that it runs the copy and that no minivlm._C can be found.
PRELUDE = r"""
import importlib.util, json, os, sys
import minivlm
assert os.path.dirname(os.path.abspath(minivlm.__file__)) == os.path.join(sys.argv[1], "minivlm"), minivlm.__file__
assert importlib.util.find_spec("minivlm._C") is None, "a built minivlm._C can be found"
"""


@pytest.fixture(scope="module")
def unbuilt(tmp_path_factory):
    """A folder holding a copy of the minivlm package with no compiled library in it."""
    folder = tmp_path_factory.mktemp("unbuilt")
    shutil.copytree(os.path.join(ROOT, "minivlm"), folder / "minivlm",
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "__pycache__"))
    assert not list((folder / "minivlm").glob("*.so"))
    return folder


def run_unbuilt(folder, code, *args):
    """Run PRELUDE + code in a fresh Python that sees the copy in `folder`; returns its last stdout line
    read as JSON."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(folder), *site.getsitepackages()]))
    env.pop("MINIVLM_REFERENCE", None)
    proc = subprocess.run([sys.executable, "-S", "-c", PRELUDE + code, str(folder), *map(str, args)], env=env,
                          cwd=folder, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_import_minivlm_and_use_reference(unbuilt):
    """The brief's own line, `import minivlm; minivlm.use_reference()`, before torch is imported."""
    result = run_unbuilt(unbuilt, """
minivlm.use_reference()
with minivlm.use_reference():
    assert minivlm.reference_enabled()
print(json.dumps({"C": "minivlm._C" in sys.modules}))
""")
    assert result == {"C": False}


def test_every_module_imports_and_the_ops_exist(unbuilt):
    """Every module of the package imports (torch first, so `import minivlm` loads its names at once); the
    ops are defined, and their fake kernels give the output shapes on meta tensors."""
    result = run_unbuilt(unbuilt, """
import importlib, pkgutil
import torch
names = [m.name for m in pkgutil.walk_packages(minivlm.__path__, "minivlm.") if m.name != "minivlm.__main__"]
for name in names:
    importlib.import_module(name)
q = torch.empty(2, 4, 3, 8, device="meta")
k = torch.empty(2, 2, 5, 8, device="meta")
out, stats = torch.ops.minivlm.attention(q, k, k, None, True, 0.5, None)
mask = torch.ops.minivlm.causal_mask(torch.ones(2, 5, dtype=torch.long, device="meta"), 3, torch.float16, None)
print(json.dumps({"modules": len(names), "C": "minivlm._C" in sys.modules, "out": list(out.shape),
                  "stats": [list(stats.shape), str(stats.dtype)], "mask": [list(mask.shape), str(mask.dtype)]}))
""")
    assert result["modules"] >= 20 and not result["C"]
    assert result["out"] == [2, 4, 3, 8] and result["stats"] == [[2, 2, 4, 3], "torch.float32"]
    assert result["mask"] == [[2, 1, 3, 5], "torch.float16"]


def test_a_kernel_call_says_how_to_build(unbuilt):
    """Outside reference mode each op raises one ImportError (nothing chained) naming the op, the missing
    extension, the build command and the way around it; bad arguments still fail their own checks first."""
    result = run_unbuilt(unbuilt, """
import torch
x, cos = torch.randn(1, 2, 5, 8), torch.randn(5, 8)
calls = {
    "attention": lambda: minivlm.attention(x, x, x, is_causal=True),
    "rope": lambda: minivlm.rope(x, cos, cos),
    "causal_mask": lambda: minivlm.causal_mask(torch.ones(1, 5, dtype=torch.long), 5),
}
errors = {}
for name, call in calls.items():
    try:
        call()
    except ImportError as e:
        errors[name] = [str(e), e.__cause__ is None and e.__context__ is None]
try:
    minivlm.rope(torch.randn(1, 2, 5, 7), torch.randn(5, 7), torch.randn(5, 7))
except ValueError as e:
    bad = str(e)
with minivlm.use_reference():
    ok = [tuple(minivlm.rope(x, cos, cos).shape)]
print(json.dumps({"errors": errors, "bad": bad, "ok": ok}))
""")
    assert result["errors"]["rope"] == [
        "minivlm.rope needs the compiled kernels, but minivlm's extension minivlm._C is not built. Build it from "
        "the repository root (with torch installed) with\n"
        "    pip install --no-build-isolation -e .\n"
        "or run on the reference math instead: `with minivlm.use_reference():` or MINIVLM_REFERENCE=1.", True]
    for name in ("attention", "causal_mask"):
        message, alone = result["errors"][name]
        assert message == result["errors"]["rope"][0].replace("minivlm.rope", f"minivlm.{name}") and alone
    assert result["bad"].startswith("rope: head_dim must be even")
    assert result["ok"] == [[1, 2, 5, 8]]


def test_llava_next_runs_on_the_reference(unbuilt, tmp_path):
    """A tiny LLaVA-NeXT saved by Transformers, loaded with minivlm.from_pretrained and run on the reference
    math without the extension, gives Transformers' logits (to test_llava_next.py's float32 tolerance, which
    holds the compiled kernels to the same); outside reference mode the same forward stops with the error."""
    hf = hf_model(hf_config(text="mistral", sliding_window=16))
    folder = save(hf, tmp_path / "llava")
    sizes = [(20, 40), (40, 18)]
    ids, mask = prompts(sizes, [70, 9], hf.config)            # row 1 is left-padded; the window bites
    pv = pixel_values(sizes)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=torch.tensor(sizes)).logits
    torch.save({"input_ids": ids, "attention_mask": mask, "pixel_values": pv, "image_sizes": torch.tensor(sizes)},
               tmp_path / "inputs.pt")
    result = run_unbuilt(unbuilt, """
import torch
folder, inputs, out = sys.argv[2:5]
model = minivlm.from_pretrained(folder)
inputs = torch.load(inputs)
with torch.no_grad(), minivlm.use_reference():
    torch.save(model(**inputs).logits, out)
try:
    with torch.no_grad():
        model(**inputs)
except ImportError as e:
    error = str(e)
print(json.dumps({"error": error, "C": "minivlm._C" in sys.modules}))
""", folder, tmp_path / "inputs.pt", tmp_path / "logits.pt")
    assert not result["C"]
    assert result["error"].startswith("minivlm.") and "pip install --no-build-isolation -e ." in result["error"]
    assert_close_rel(torch.load(tmp_path / "logits.pt"), expected, "logits on the reference math", F32_REL, mask)
