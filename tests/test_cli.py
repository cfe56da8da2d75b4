"""The command line: `minivlm demo` runs and agrees with the reference; `bench kernels/model --quick` write JSON."""

import json
import subprocess
import sys

import pytest


def run(*args):
    return subprocess.run([sys.executable, "-m", "minivlm", *args], capture_output=True, text=True, timeout=300)


def test_demo_runs_and_matches_reference():
    result = run("demo")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "all stages match the reference" in result.stdout


def test_bench_quick_writes_json(tmp_path):
    path = tmp_path / "bench.json"
    result = run("bench", "kernels", "--quick", "--json", str(path))
    assert result.returncode == 0, result.stdout + result.stderr
    data = json.loads(path.read_text())
    assert data["environment"]["extension_isa"] in ("AVX512", "AVX2", "NONE")
    assert {case["op"] for case in data["cases"]} == {"attention", "rope", "causal_mask"}


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
    assert set(data["results"]) == ({"forward"} if name == "altclip" else {"prefill", "decode / token"})
    for impl in ("minivlm", "transformers"):
        assert data["memory"][impl]["peak_kib"] >= data["memory"][impl]["after_load_kib"] > 0


def test_bench_model_needs_a_known_name():
    result = run("bench", "model", "gpt5")
    assert result.returncode != 0
    assert "NAME must be one of llava_next, blip2, blip2_t5, kosmos2, idefics, altclip, got 'gpt5'" in result.stderr
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
