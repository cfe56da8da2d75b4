"""`minivlm demo`: a tour in a few seconds, one stage at a time.

Each stage runs one piece of minivlm on a small random example, compares it with the naive math of
`minivlm.reference`, and prints one line: the largest absolute difference, whether it is within the
stage's tolerance, and how long the compiled and the reference version take.

A stage is a function that takes no argument and returns a `StageResult`; `STAGES` lists them in the
order they run, so adding a stage (a model, say) is one function and one line in that list.
"""

import statistics
import sys
import time
from dataclasses import dataclass
from typing import Callable, Optional

import torch

from . import ops, reference


@dataclass
class StageResult:
    """What a stage reports: a one-line description, its accuracy and its timing."""

    name: str
    detail: str
    max_abs_diff: float
    tolerance: float
    ms: float                      # minivlm
    reference_ms: Optional[float] = None

    @property
    def ok(self) -> bool:
        return self.max_abs_diff <= self.tolerance


def median_ms(fn: Callable, reps: int = 5) -> float:
    """Median wall time of fn() in milliseconds, after one warm-up call."""
    fn()
    times = []
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        times.append(1e3 * (time.perf_counter() - start))
    return statistics.median(times)


def max_abs_diff(a, b) -> float:
    """max |a - b| over a tensor or over matching tuples of tensors."""
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    return max((x.detach() - y.detach()).abs().max().item() for x, y in zip(a, b))


def left_padding(B: int, L: int) -> torch.Tensor:
    """(B, L) bool: sequence b has 3 * b padding tokens on the left (True = real token)."""
    return torch.arange(L)[None, :] >= 3 * torch.arange(B)[:, None]


# --------------------------------------------------------------------------------------------------
# Stages
# --------------------------------------------------------------------------------------------------

def stage_attention() -> StageResult:
    """Grouped-query causal attention (8 query heads share 2 key/value heads) over a left-padded batch.

    The padding mask comes from ops.causal_mask; the forward output and the gradients of q, k and v are
    compared with the reference.
    """
    B, Hq, Hkv, L, D = 2, 8, 2, 128, 64
    gen = torch.Generator().manual_seed(0)
    q = torch.randn(B, Hq, L, D, generator=gen, requires_grad=True)
    k = torch.randn(B, Hkv, L, D, generator=gen, requires_grad=True)
    v = torch.randn(B, Hkv, L, D, generator=gen, requires_grad=True)
    mask = ops.causal_mask(left_padding(B, L), L)                    # (B, 1, L, L), 0 or finfo.min

    def run(fn):
        out = fn(q, k, v, mask, is_causal=True)
        return out, torch.autograd.grad(out.square().sum(), (q, k, v))

    out, grads = run(ops.attention)
    ref_out, ref_grads = run(reference.attention)
    with torch.no_grad():
        ms = median_ms(lambda: ops.attention(q, k, v, mask, is_causal=True))
        ref_ms = median_ms(lambda: reference.attention(q, k, v, mask, is_causal=True))
    out_diff, grad_diff = max_abs_diff(out, ref_out), max_abs_diff(grads, ref_grads)
    return StageResult(
        "attention", f"GQA {Hq}q/{Hkv}kv heads, causal + padding mask, B{B} L{L} D{D} "
                     f"(max|diff| forward {out_diff:.1e}, gradients {grad_diff:.1e})",
        max(out_diff, grad_diff), 1e-4, ms, ref_ms)


def stage_rope() -> StageResult:
    """Rotary position embedding of a (B, H, L, D) tensor with Llama's cos/sin tables."""
    B, H, L, D = 2, 8, 256, 64
    x = torch.randn(B, H, L, D, generator=torch.Generator().manual_seed(1))
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    angles = torch.outer(torch.arange(L, dtype=torch.float32), inv_freq).repeat(1, 2)   # (L, D)
    cos, sin = angles.cos(), angles.sin()
    diff = max_abs_diff(ops.rope(x, cos, sin), reference.rope(x, cos, sin))
    return StageResult("rope", f"B{B} H{H} L{L} D{D}", diff, 1e-5,
                       median_ms(lambda: ops.rope(x, cos, sin)), median_ms(lambda: reference.rope(x, cos, sin)))


def stage_causal_mask() -> StageResult:
    """The additive causal + padding mask, plain and with a sliding window; it must match exactly."""
    B, q_len, Lk, window = 4, 96, 128, 32
    padding = left_padding(B, Lk)
    diff = max(max_abs_diff(ops.causal_mask(padding, q_len), reference.causal_mask(padding, q_len)),
               max_abs_diff(ops.causal_mask(padding, q_len, window=window),
                            reference.causal_mask(padding, q_len, window=window)))
    return StageResult("causal_mask", f"B{B} q_len{q_len} Lk{Lk}, plain and window {window}", diff, 0.0,
                       median_ms(lambda: ops.causal_mask(padding, q_len)),
                       median_ms(lambda: reference.causal_mask(padding, q_len)))


#: The demo's stages, in order. Add a stage by writing a function that returns a StageResult and
#: listing it here.
STAGES = [
    stage_attention,
    stage_rope,
    stage_causal_mask,
]


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------

def format_result(r: StageResult) -> str:
    verdict = "ok" if r.ok else f"MISMATCH (tolerance {r.tolerance:g})"
    timing = f"{r.ms:.3f} ms" + ("" if r.reference_ms is None else f" (reference {r.reference_ms:.3f} ms)")
    return f"{r.name:<12} {r.detail}\n{'':<12} max|minivlm - reference| = {r.max_abs_diff:.2e} {verdict}; {timing}"


def run(threads: Optional[int] = None, stages=None) -> int:
    """Run the stages and print a line for each; returns 0 if every stage matched its reference, else 1."""
    if threads is not None:
        torch.set_num_threads(threads)
    print(f"minivlm demo: torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"kernels compiled for {torch.ops.minivlm.cpu_isa()}")
    failed = 0
    for stage in STAGES if stages is None else stages:
        result = stage()
        print(format_result(result))
        sys.stdout.flush()
        failed += not result.ok
    print("all stages match the reference" if not failed else f"{failed} stage(s) differ from the reference")
    return 1 if failed else 0
