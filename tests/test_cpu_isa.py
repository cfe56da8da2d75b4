"""The CPU kernels are built once per instruction set and chosen at run time: every build is there, the
choice follows the CPU or MINIVLM_CPU_ISA, a switch takes effect at once, and a bad choice is refused
by name. (Every kernel test runs on each build this CPU runs: see DEVICES in helpers.py.)"""

import glob
import os
import subprocess
import sys

import pytest
import torch

import minivlm
from helpers import CPU_ISAS, RUNNABLE_ISAS

ops = torch.ops.minivlm


def test_every_instruction_set_is_compiled():
    folder = os.path.dirname(minivlm._extension.__file__)
    built = sorted(os.path.basename(p).split(".")[0][len("_cpu_"):] for p in glob.glob(os.path.join(folder, "_cpu_*.so")))
    assert built == sorted(CPU_ISAS)


def test_the_best_runnable_set_is_chosen():
    assert RUNNABLE_ISAS[-1] == "default" and set(RUNNABLE_ISAS) <= set(CPU_ISAS)
    assert list(RUNNABLE_ISAS) == [isa for isa in CPU_ISAS if isa in RUNNABLE_ISAS]      # best first
    have = torch.backends.cpu.get_cpu_capability()        # what ATen found for its own kernels
    if have in ("AVX512", "AVX2"):
        assert have.lower() in RUNNABLE_ISAS


def run(code, **env):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                          env={**os.environ, **env})


def test_fresh_process_takes_the_best_or_the_forced_one():
    show = "import torch, minivlm; minivlm.attention; print(torch.ops.minivlm.cpu_isa())"
    assert run(show, MINIVLM_CPU_ISA="").stdout.split() == [RUNNABLE_ISAS[0]]
    for isa in RUNNABLE_ISAS:
        assert run(show, MINIVLM_CPU_ISA=isa).stdout.split() == [isa]
    bad = run(show, MINIVLM_CPU_ISA="sse9")
    assert bad.returncode != 0
    assert "MINIVLM_CPU_ISA must be one of avx512, avx2, default, got 'sse9'" in bad.stderr


def test_switching_changes_the_kernels_and_gives_the_same_numbers():
    q = torch.randn(2, 4, 70, 24)
    k, v = torch.randn(2, 2, 90, 24), torch.randn(2, 2, 90, 24)
    before = ops.cpu_isa()
    outs = {}
    try:
        for isa in RUNNABLE_ISAS:
            assert ops.set_cpu_isa(isa) in RUNNABLE_ISAS and ops.cpu_isa() == isa
            outs[isa] = minivlm.attention(q, k, v, is_causal=True)
    finally:
        ops.set_cpu_isa(before)
    exact = minivlm.reference.attention(q.double(), k.double(), v.double(), is_causal=True)
    for isa, out in outs.items():     # each is float32-accurate; they need not agree bit for bit
        assert (out.double() - exact).abs().max() < 1e-5, isa


def test_bad_choices_are_refused():
    with pytest.raises(ValueError, match=r"set_cpu_isa: isa must be one of avx512, avx2, default, got 'AVX9'"):
        ops.set_cpu_isa("AVX9")
    lacking = [isa for isa in CPU_ISAS if isa not in RUNNABLE_ISAS]
    if not lacking:
        pytest.skip("this CPU runs every build, so none can be refused for the CPU's sake")
    with pytest.raises(ValueError, match=f"asks for {lacking[0]} but this CPU lacks its instructions"):
        ops.set_cpu_isa(lacking[0])
