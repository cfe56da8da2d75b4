"""The command line: `minivlm demo` runs and agrees with the reference; `bench kernels --quick` writes JSON."""

import json
import subprocess
import sys


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
