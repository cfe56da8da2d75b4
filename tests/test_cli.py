"""The command line: `minivlm demo` runs and agrees with the reference; `bench kernels/model --quick` write JSON;
`--help` and `--version` answer without loading torch, while `import minivlm` keeps its library API."""

import json
import os
import re
import subprocess
import sys

import pytest

import minivlm

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Every child interpreter imports this checkout's minivlm, wherever pytest was started.
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))
# The console script's target as setup.py declares it: "minivlm=MODULE:FUNCTION".
with open(os.path.join(ROOT, "setup.py")) as f:
    SCRIPT_MODULE, SCRIPT_FUNCTION = re.search(r'"minivlm=([\w.]+):(\w+)"', f.read()).groups()


# A rate cell of the bench tables: "41.2 GFLOP/s 25%", the rate and its fraction of the ceiling.
RATE_CELL = re.compile(r"(\S+) (GFLOP/s|GB/s) (\S+)%")


def check_ceilings_and_rates(stdout, data, rates):
    """The run printed its ceilings and wrote them to the JSON, and every rate it printed and wrote is a
    positive, finite number (never a timing: those depend on the machine)."""
    assert set(data["ceilings"]) == {"matmul_float32", "copy"}, data["ceilings"]
    for name, c in data["ceilings"].items():
        assert 0 < c["rate"] < float("inf"), (name, c)
        assert re.search(rf"^ceiling {name}: [0-9.]+ {re.escape(c['unit'])}, ", stdout, re.M), stdout
    assert rates, "no rates in the JSON"
    for r in rates:
        assert 0 < r["rate"] < float("inf") and 0 < r["fraction"] < float("inf"), r
        assert r["ceiling"] in data["ceilings"], r
    cells = RATE_CELL.findall(stdout)
    assert len(cells) == len(rates), (len(cells), len(rates), stdout)
    for rate, _unit, percent in cells:
        assert 0 < float(rate) < float("inf") and 0 < float(percent) < float("inf"), (rate, percent)


def run(*args):
    return subprocess.run([sys.executable, "-m", "minivlm", *args], capture_output=True, text=True, timeout=300,
                          env=ENV)


def test_demo_runs_and_matches_reference():
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all stages match the reference" in result.stdout


def test_bench_quick_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run("bench", "kernels", "--quick", "--json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(path.read_text())
    assert data["environment"]["extension_isa"] in ("avx512", "avx2", "default")
    assert {case["op"] for case in data["cases"]} == {"attention", "rope", "causal_mask"}
    # Every implementation timed has a rate against the ceiling of its case's work, printed in its row.
    for case in data["cases"]:
        assert set(case["rates"]) == set(case["times"]), case["shape"]
        assert case["work"]["amount"] > 0
    assert "minivlm rate" in result.stdout
    check_ceilings_and_rates(result.stdout, data, [r for case in data["cases"] for r in case["rates"].values()])
    # The peak-memory probe ran in its own process and reported back.
    probes = [m for row in data["memory"] for m in row["impls"].values() if m is not None]
    assert probes and all(m["extra_kib"] >= 0 for m in probes), data["memory"]


def test_unknown_command_is_an_error():
    result = run("bench", "nothing")
    assert result.returncode != 0
    assert "nothing" in result.stderr


@pytest.mark.parametrize("name", ["llava_next", "blip2", "blip2_t5", "kosmos2", "idefics", "altclip"])
def test_bench_model_quick_writes_json(tmp_path, name):
    path = tmp_path / "model.json"
    result = run("bench", "model", name, "--quick", "--reps", "2", "--json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(path.read_text())
    # Same weights in both libraries: the float32 logits agree to float32 rounding (the parity tests).
    assert data["max_abs_logit_diff"] < 1e-4 * max(1.0, data["max_abs_logit"])
    assert set(data["results"]) == ({"forward"} if name == "altclip" else {"prefill", "decode / token", "beam x4 / token"})
    if name != "altclip":    # beam search per token, against Transformers' and against minivlm's greedy step
        beam = data["results"]["beam x4 / token"]
        assert beam["ratio"] > 0 and beam["over_greedy"]["minivlm"] > 0 and beam["result"] in ("PASS", "MISS")
    # The work counted on minivlm's model: FLOPs of the first call, weights and cache read per decode step.
    first = "forward" if name == "altclip" else "prefill"
    assert data["work"][first]["matmul_flops"] > 0 and data["work"][first]["attention_flops"] > 0
    if name != "altclip":
        assert data["work"]["decode / token"]["weight_bytes"] > 0 and data["work"]["decode / token"]["kv_bytes"] > 0
    check_ceilings_and_rates(result.stdout, data,
                             [r for what in data["results"].values() for r in what.get("rates", {}).values()])
    for impl in ("minivlm", "transformers"):
        assert data["memory"][impl]["peak_kib"] >= data["memory"][impl]["after_load_kib"] > 0


@pytest.mark.parametrize("name", ["llava_next", "blip2", "kosmos2", "idefics", "altclip"])
def test_bench_processor_quick_writes_json(tmp_path, name):
    """The processor benchmark checks both outputs equal before timing, then writes its numbers. The exit
    status says whether the speed target held: timing, so not asserted here (docs/benchmarks.md has the
    measured table)."""
    path = tmp_path / "processor.json"
    result = run("bench", "processor", name, "--quick", "--reps", "2", "--json", str(path))
    assert result.returncode in (0, 1), result.stdout + result.stderr
    data = json.loads(path.read_text())
    assert data["name"] == name and len(data["minivlm_ms"]) == len(data["transformers_ms"]) == 2
    assert data["ok"] == (result.returncode == 0) == (data["ratio"] <= data["target"])
    assert "Transformers (PIL)" in result.stdout


def test_bench_model_needs_a_known_name():
    result = run("bench", "model", "gpt5")
    assert result.returncode != 0
    assert "NAME must be one of llava_next, blip2, blip2_t5, kosmos2, idefics, altclip, got 'gpt5'" in result.stderr
    result = run("bench", "processor", "gpt5")
    assert result.returncode != 0
    assert "NAME must be one of llava_next, blip2, kosmos2, idefics, altclip, got 'gpt5'" in result.stderr
    result = run("bench", "kernels", "llava_next")
    assert result.returncode != 0
    assert "takes no NAME" in result.stderr


def test_bench_cuda_without_a_gpu_says_why():
    """Here torch sees no GPU (CI never has one): a clear exit, not a traceback. With a GPU, tools/gpu_check.sh
    runs the real table."""
    import torch
    if torch.cuda.is_available():
        pytest.skip("a GPU is visible: this test is about machines without one")
    result = run("bench", "kernels", "--device", "cuda", "--quick")
    assert result.returncode != 0
    assert "torch sees no CUDA GPU" in result.stderr and "Traceback" not in result.stderr
    result = run("bench", "model", "llava_next", "--device", "cuda")
    assert result.returncode != 0 and "--device cuda is for the kernels only" in result.stderr


# Runs the command line in a fresh interpreter as the console script (setup.py's entry point, MODULE:FUNCTION)
# or `python -m minivlm` does, then prints its exit status, its output and which heavy modules it imported.
ENTRY = """
import contextlib, importlib, io, json, runpy, sys
how, module, function, args = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
sys.argv = ["minivlm", *args]
out, code = io.StringIO(), None
with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
    try:
        if how == "script":
            main = getattr(importlib.import_module(module), function)
            sys.exit(main())
        runpy.run_module("minivlm", run_name="__main__", alter_sys=True)
    except SystemExit as e:
        code = e.code
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "transformers") or m == "minivlm._C")
print(json.dumps({"code": code, "output": out.getvalue(), "heavy": heavy}), file=sys.__stdout__)
"""


def run_entry(how, *args):
    result = subprocess.run([sys.executable, "-c", ENTRY, how, SCRIPT_MODULE, SCRIPT_FUNCTION, *args],
                            capture_output=True, text=True, timeout=60, env=ENV)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


@pytest.mark.parametrize("how", ["script", "module"])
@pytest.mark.parametrize("args", [["--help"], ["--version"], [], ["bench", "--help"], ["demo", "--help"],
                                  ["generate", "--help"], ["classify", "--help"], ["parity", "--help"],
                                  ["tiny", "--help"]],
                         ids=["help", "version", "bare", "bench-help", "demo-help", "generate-help", "classify-help",
                              "parity-help", "tiny-help"])
def test_help_and_version_load_neither_torch_nor_the_extension(how, args):
    result = run_entry(how, *args)
    assert result["heavy"] == [], f"minivlm {' '.join(args)} imported {result['heavy'][:5]}"
    if args == ["--version"]:
        assert result["code"] == 0 and result["output"] == f"minivlm {minivlm.__version__}\n"
    elif args == []:
        # No command is a usage error (status 2, as argparse's own), answered with the whole help.
        assert result["code"] == 2
        assert "usage: minivlm" in result["output"]
        for command in ("bench", "demo", "generate", "classify", "parity", "tiny"):
            assert command in result["output"], command
    else:
        assert result["code"] == 0 and "usage: minivlm" in result["output"]


def test_version_is_the_installed_distributions():
    """One version: what `pip` installed (setup.py) is what minivlm.__version__ and --version say."""
    from importlib import metadata

    try:
        installed = metadata.version("minivlm")
    except metadata.PackageNotFoundError:
        pytest.skip("minivlm is not installed here, only imported from the checkout")
    assert installed == minivlm.__version__
    assert run("--version").stdout == f"minivlm {installed}\n"


LIBRARY = """
import sys
import minivlm
assert "torch" not in sys.modules, "import minivlm alone loaded torch"
assert set(minivlm.__all__) <= set(dir(minivlm)), dir(minivlm)
attention = minivlm.attention           # the first use loads torch and the extension
assert "minivlm._C" in sys.modules
from minivlm import causal_mask, from_pretrained, ops, reference, reference_enabled, rope, use_reference
assert ops is sys.modules["minivlm.ops"] and reference is sys.modules["minivlm.reference"]
assert (attention, rope, causal_mask, use_reference, reference_enabled) == (
    ops.attention, ops.rope, ops.causal_mask, ops.use_reference, ops.reference_enabled)
assert from_pretrained is sys.modules["minivlm.loading"].from_pretrained
try:
    minivlm.no_such_name
except AttributeError as e:
    assert "no_such_name" in str(e)
else:
    raise AssertionError("minivlm.no_such_name did not raise AttributeError")
"""

TORCH_FIRST = """
import sys
import torch, minivlm
# With torch already imported, import minivlm loads the extension at once.
assert "minivlm._C" in sys.modules
torch.ops.minivlm.attention.default, torch.ops.minivlm.cpu_isa()
assert set(minivlm.__all__) <= set(vars(minivlm))
"""


@pytest.mark.parametrize("code", [LIBRARY, TORCH_FIRST], ids=["minivlm-alone", "torch-first"])
def test_import_minivlm_keeps_its_api(code):
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stderr


# The library (the top of minivlm/) never imports its tools (minivlm.tools), and the tools import
# Transformers only when a benchmark runs.
LAYOUT = """
import importlib, os, pkgutil, sys
import torch, minivlm

def import_all(package, skip=()):   # import every Python module below package but those in skip: their names
    names = []
    for m in pkgutil.iter_modules(package.__path__, package.__name__ + "."):
        source = os.path.join(m.module_finder.path, m.name.rsplit(".", 1)[1] + ".py")
        if m.name not in skip and (m.ispkg or os.path.isfile(source)):   # not the compiled libraries
            names.append(m.name)
            module = importlib.import_module(m.name)
            names += import_all(module) if m.ispkg else []
    return names

import_all(minivlm, skip=("minivlm.__main__", "minivlm.tools"))
assert not [m for m in sys.modules if m.startswith("minivlm.tools")], "the library imported minivlm.tools"
import minivlm.tools
tools = import_all(minivlm.tools)
assert {"minivlm.tools.cli", "minivlm.tools.demo", "minivlm.tools.bench.kernels"} <= set(tools), tools
assert not [m for m in sys.modules if m.split(".")[0] == "transformers"], "importing the tools loaded Transformers"
"""


def test_the_library_never_imports_its_tools():
    result = subprocess.run([sys.executable, "-c", LAYOUT], capture_output=True, text=True, timeout=120, env=ENV)
    assert result.returncode == 0, result.stderr
