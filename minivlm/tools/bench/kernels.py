"""`minivlm bench kernels`: how fast are minivlm's three kernels, next to what they replace?

Every kernel is timed side by side with its naive twin in `minivlm.reference` and, where PyTorch or
Transformers has one, with the library version a model would otherwise call:

    attention    vs reference.attention and torch.nn.functional.scaled_dot_product_attention (SDPA)
    rope         vs reference.rope, which is the eager Transformers formula x*cos + rotate_half(x)*sin
    causal_mask  vs reference.causal_mask, a bare torch.full of the same size, and
                 transformers.masking_utils.eager_mask (when Transformers is installed)

How the timing works (see `time_side_by_side`): each implementation is first warmed up, then the
implementations take turns, A, B, C, A, B, C, ..., for a number of repetitions. Taking turns means a slow
moment of the machine (another process, a frequency change) hits all of them alike, so the ratio of two
implementations within one repetition is steadier than either time. The table shows the median time with
its spread (min-max over the repetitions) and the median of the per-repetition ratios.

A backward time is the time of the backward pass alone: the forward output is computed once, outside
the timer, and each repetition calls torch.autograd.grad(out, inputs, grad_out, retain_graph=True).

Beside the times, each implementation's rate against this machine's ceiling (`minivlm.tools.bench.ceiling`,
measured at the start of the run in this process): attention prefill and backward in GFLOP/s against the
float32 matmul ceiling (sgemm), decode attention, rope and the causal mask in GB/s against the copy
ceiling, each from the work the op must do at least (the counting functions in ceiling.py).

Peak memory of one attention forward is measured in a fresh process per implementation
(`minivlm.tools.bench.memory`), because a process's peak resident size only ever grows.
"""

import dataclasses
import gc
import json
import math
import resource
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.nn.functional as F

import minivlm
from minivlm import ops, reference
from minivlm._extension import load_extension

from .ceiling import (Work, attention_bytes, attention_flops, causal_mask_bytes, ceiling_lines, fmt_fraction,
                      fraction, measure_ceilings, rope_bytes)
from .memory import child_main, current_rss_kib, finish_probe, peak_rss_kib, start_probe

#: The reference is skipped where its (B, H, T, S) float32 score matrix would exceed this.
REFERENCE_LIMIT_BYTES = 1 << 30
MIB = 1 << 20


# --------------------------------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------------------------------

@dataclass
class Timing:
    """The per-repetition times (ms) of one implementation on one case, and its page faults per call.

    The page faults (minor faults: the kernel handing the process a fresh zeroed page on first touch) are
    kept because for the memory-bound ops they are most of the time: a new 128 MiB output is 32768 pages.
    """

    samples: list
    page_faults: list = field(default_factory=list)

    @property
    def median(self) -> float:
        return statistics.median(self.samples)

    @property
    def low(self) -> float:
        return min(self.samples)

    @property
    def high(self) -> float:
        return max(self.samples)

    def quartiles(self):
        """(q1, q3) of the samples: the inter-quartile range, a spread less sensitive to one outlier."""
        if len(self.samples) < 2:
            return self.median, self.median
        q = statistics.quantiles(self.samples, n=4, method="inclusive")
        return q[0], q[2]

    def to_json(self) -> dict:
        q1, q3 = self.quartiles()
        faults = statistics.median(self.page_faults) if self.page_faults else None
        return {"median_ms": self.median, "min_ms": self.low, "max_ms": self.high,
                "q1_ms": q1, "q3_ms": q3, "samples_ms": list(self.samples), "page_faults_per_call": faults}


def _minor_faults() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt


def _time_call(fn: Callable, number: int):
    """(seconds, minor page faults) per call of fn, averaged over `number` back-to-back calls."""
    faults = _minor_faults()
    start = time.perf_counter()
    for _ in range(number):
        fn()
    seconds = time.perf_counter() - start
    return seconds / number, (_minor_faults() - faults) / number


def time_side_by_side(fns: dict, reps: int, warmup: int, min_sample_s: float) -> dict:
    """Time each callable in `fns` (name -> fn), taking turns within every repetition.

    Warm-up also calibrates: an implementation so fast that one call takes less than `min_sample_s` is
    called `number` times in a row per sample, and the sample is the average, so that timer resolution
    and Python overhead do not dominate. Returns name -> Timing in milliseconds.
    """
    number = {}
    for name, fn in fns.items():
        seconds = min(_time_call(fn, 1)[0] for _ in range(max(1, warmup)))
        number[name] = max(1, math.ceil(min_sample_s / max(seconds, 1e-9)))
    timings = {name: Timing([]) for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():                      # A, B, C, A, B, C, ...
            seconds, faults = _time_call(fn, number[name])
            timings[name].samples.append(1e3 * seconds)
            timings[name].page_faults.append(faults)
    return timings


def paired_ratios(numerator: Timing, denominator: Timing) -> list:
    """The ratio of two implementations' times within each repetition (they ran back to back)."""
    return [a / b for a, b in zip(numerator.samples, denominator.samples)]


# --------------------------------------------------------------------------------------------------
# What is compared: cases and targets
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Comparison:
    """minivlm against a baseline, with an optional target.

    speedup=False: the value is time(impl) / time(baseline), and the target is value <= limit.
    speedup=True:  the value is time(baseline) / time(impl), and the target is value >= limit.
    """

    impl: str
    baseline: str
    limit: Optional[float] = None
    speedup: bool = False

    @property
    def label(self) -> str:
        return f"{self.baseline}/{self.impl}" if self.speedup else f"{self.impl}/{self.baseline}"

    @property
    def target(self) -> str:
        if self.limit is None:
            return "-"
        return f">= {self.limit:g}x" if self.speedup else f"<= {self.limit:g}x"

    def evaluate(self, timings: dict) -> dict:
        """The median and spread of the per-repetition ratio, and PASS/MISS (or "skipped")."""
        if self.impl not in timings or self.baseline not in timings:
            return {"ratio": self.label, "value": None, "min": None, "max": None, "target": self.target,
                    "result": None if self.limit is None else "skipped"}
        a, b = timings[self.impl], timings[self.baseline]
        ratios = paired_ratios(b, a) if self.speedup else paired_ratios(a, b)
        value = statistics.median(ratios)
        if self.limit is None:
            result = None
        else:
            ok = value >= self.limit if self.speedup else value <= self.limit
            result = "PASS" if ok else "MISS"
        return {"ratio": self.label, "value": value, "min": min(ratios), "max": max(ratios),
                "target": self.target, "result": result}


@dataclass
class Case:
    """One row of the table: an op on one shape, forward or backward.

    `build` makes the inputs and returns (impls, check): impls maps a name to a no-argument callable (an
    implementation left out, such as a reference too big to run, shows as "-"); check is
    (max |minivlm - other|, other's name) or None.
    Building happens only when the case runs, so big inputs live only as long as their row.
    `work` is what one call must do at least, the measure of each implementation's rate.
    """

    op: str
    label: str
    direction: str
    build: Callable
    work: Work
    comparisons: list = field(default_factory=list)


# --------------------------------------------------------------------------------------------------
# Attention
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttentionShape:
    """q (B, H, T, D), k and v (B, Hkv, S, D), float32."""

    kind: str          # "prefill" or "decode"
    B: int
    H: int
    Hkv: int
    T: int
    S: int
    D: int
    causal: bool
    backward: bool = True

    def describe(self) -> str:
        heads = f"H{self.H}" if self.H == self.Hkv else f"H{self.H} Hkv{self.Hkv}"
        length = f"T{self.T}" if self.T == self.S else f"T{self.T} S{self.S}"
        mode = "causal" if self.causal else "non-causal"
        return f"{self.kind} {mode} B{self.B} {heads} {length} D{self.D}"

    def score_bytes(self) -> int:
        """Bytes of one float32 (B, H, T, S) matrix: what the reference materialises, several times."""
        return 4 * self.B * self.H * self.T * self.S

    def output_bytes(self) -> int:
        """Bytes of one float32 (B, H, T, D) tensor: the O(T*D) a fused kernel needs."""
        return 4 * self.B * self.H * self.T * self.D

    def work(self, backward: bool = False) -> Work:
        """Prefill: the FLOPs of attention's matrix products (the backward's too); decode: the bytes it must
        move, nearly all of them the keys and values read."""
        if self.kind == "decode":
            return Work(attention_bytes(self.B, self.H, self.Hkv, self.T, self.S, self.D, itemsize=4), "B")
        return Work(attention_flops(self.B, self.H, self.T, self.S, self.D, self.causal, backward), "FLOP")

    def tiny(self) -> "AttentionShape":
        """The same heads and head size at length 64 (at most), for warming an implementation up."""
        lq = min(self.T, 64)
        return dataclasses.replace(self, T=lq, S=min(self.S, 64 if self.T == self.S else 128))


def attention_inputs(shape: AttentionShape, requires_grad: bool = False, seed: int = 0):
    """Random q, k, v for `shape` (the same numbers for every call with the same seed)."""
    gen = torch.Generator().manual_seed(seed)
    q = torch.randn(shape.B, shape.H, shape.T, shape.D, generator=gen)
    k = torch.randn(shape.B, shape.Hkv, shape.S, shape.D, generator=gen)
    v = torch.randn(shape.B, shape.Hkv, shape.S, shape.D, generator=gen)
    return tuple(t.requires_grad_(requires_grad) for t in (q, k, v))


def attention_function(impl: str, shape: AttentionShape) -> Callable:
    """fn(q, k, v) -> out for implementation `impl` ("minivlm", "reference" or "sdpa") on `shape`."""
    causal, gqa = shape.causal, shape.H != shape.Hkv
    if impl == "minivlm":
        return lambda q, k, v: ops.attention(q, k, v, is_causal=causal)
    if impl == "reference":
        return lambda q, k, v: reference.attention(q, k, v, is_causal=causal)
    if impl == "sdpa":
        return lambda q, k, v: F.scaled_dot_product_attention(q, k, v, is_causal=causal, enable_gqa=gqa)
    raise ValueError(f"unknown attention implementation {impl!r}")


def attention_impl_names(shape: AttentionShape) -> list:
    """The implementations run on `shape`: the reference only where its score matrix fits."""
    names = ["minivlm", "reference", "sdpa"]
    if shape.score_bytes() > REFERENCE_LIMIT_BYTES:
        names.remove("reference")
    return names


def _max_diff(a, b) -> float:
    """max |a - b| over a tensor or over matching tuples of tensors."""
    if isinstance(a, torch.Tensor):
        a, b = (a,), (b,)
    return max((x.detach().double() - y.detach().double()).abs().max().item() for x, y in zip(a, b))


def _check_against(results: dict, order=("reference", "sdpa", "eager_mask")):
    """(max |minivlm - X|, X) for the first available X in `order`."""
    for other in order:
        if other in results:
            return _max_diff(results["minivlm"], results[other]), other
    return None


def attention_forward_case(shape: AttentionShape, comparisons: list) -> Case:
    def build():
        q, k, v = attention_inputs(shape)
        fns = {name: attention_function(name, shape) for name in attention_impl_names(shape)}
        with torch.no_grad():
            outputs = {name: fn(q, k, v) for name, fn in fns.items()}
        impls = {name: (lambda fn=fn: fn(q, k, v)) for name, fn in fns.items()}
        return impls, _check_against(outputs)
    return Case("attention", shape.describe(), "fwd", build, shape.work(), comparisons)


def attention_backward_case(shape: AttentionShape, comparisons: list) -> Case:
    def build():
        grad_out = torch.randn(shape.B, shape.H, shape.T, shape.D, generator=torch.Generator().manual_seed(1))
        impls, grads = {}, {}
        for name in attention_impl_names(shape):
            inputs = attention_inputs(shape, requires_grad=True)
            out = attention_function(name, shape)(*inputs)            # forward once, outside the timer
            grads[name] = torch.autograd.grad(out, inputs, grad_out, retain_graph=True)
            impls[name] = lambda out=out, inputs=inputs: torch.autograd.grad(
                out, inputs, grad_out, retain_graph=True)
        return impls, _check_against(grads)
    return Case("attention", shape.describe(), "bwd", build, shape.work(backward=True), comparisons)


# --------------------------------------------------------------------------------------------------
# Rope
# --------------------------------------------------------------------------------------------------

def rope_inputs(B, H, L, D, requires_grad=False):
    """x (B, H, L, D) and the Llama cos, sin tables (L, D) for base 10000."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(B, H, L, D, generator=gen).requires_grad_(requires_grad)
    inv_freq = 1.0 / (10000 ** (torch.arange(0, D, 2, dtype=torch.float32) / D))
    angles = torch.outer(torch.arange(L, dtype=torch.float32), inv_freq)
    angles = torch.cat((angles, angles), dim=-1)                       # (L, D), halves repeated
    return x, angles.cos(), angles.sin()


ROPE_IMPLS = {"minivlm": ops.rope, "reference": reference.rope}


def rope_forward_case(dims, comparisons) -> Case:
    def build():
        x, cos, sin = rope_inputs(*dims)
        outputs = {name: fn(x, cos, sin) for name, fn in ROPE_IMPLS.items()}
        impls = {name: (lambda fn=fn: fn(x, cos, sin)) for name, fn in ROPE_IMPLS.items()}
        return impls, _check_against(outputs)
    return Case("rope", "B{} H{} T{} D{}".format(*dims), "fwd", build, Work(rope_bytes(*dims, 4), "B"), comparisons)


def rope_backward_case(dims, comparisons) -> Case:
    def build():
        grad_out = torch.randn(*dims, generator=torch.Generator().manual_seed(1))
        impls, grads = {}, {}
        for name, fn in ROPE_IMPLS.items():
            x, cos, sin = rope_inputs(*dims, requires_grad=True)
            out = fn(x, cos, sin)
            grads[name] = torch.autograd.grad(out, x, grad_out, retain_graph=True)
            impls[name] = lambda out=out, x=x: torch.autograd.grad(out, x, grad_out, retain_graph=True)
        return impls, _check_against(grads)
    return Case("rope", "B{} H{} T{} D{}".format(*dims), "bwd", build, Work(rope_bytes(*dims, 4), "B"), comparisons)


# --------------------------------------------------------------------------------------------------
# Causal mask
# --------------------------------------------------------------------------------------------------

def left_padded_mask(B: int, L: int) -> torch.Tensor:
    """(B, L) bool padding mask, sequence b left-padded by b * L // (4 * B) tokens (True = real token)."""
    pad = torch.arange(B)[:, None] * (L // (4 * B))
    return torch.arange(L)[None, :] >= pad


def _eager_mask_function() -> Optional[Callable]:
    """transformers.masking_utils.eager_mask, or None where Transformers is not installed."""
    try:
        from transformers.masking_utils import eager_mask
    except Exception:  # ImportError, or a Transformers too old or broken to import
        return None
    return eager_mask


def causal_mask_case(B: int, L: int, comparisons: list) -> Case:
    def build():
        padding = left_padded_mask(B, L)
        lowest = torch.finfo(torch.float32).min
        fns = {
            "minivlm": lambda: ops.causal_mask(padding, L),
            "reference": lambda: reference.causal_mask(padding, L),
            "torch.full": lambda: torch.full((B, 1, L, L), lowest),
        }
        eager_mask = _eager_mask_function()
        if eager_mask is not None:
            fns["eager_mask"] = lambda: eager_mask(batch_size=B, q_length=L, kv_length=L, attention_mask=padding)
        check = _max_diff(fns["minivlm"](), fns["reference"]()), "reference"
        return fns, check
    return Case("causal_mask", f"B{B} T{L}", "fwd", build, Work(causal_mask_bytes(B, L, L, 4), "B"), comparisons)


# --------------------------------------------------------------------------------------------------
# The benchmark suites
# --------------------------------------------------------------------------------------------------

PREFILL_FWD = 1.25     # attention forward at most 1.25x SDPA's time
DECODE_FWD = 1.1       # the decode step at most 1.1x SDPA's
BACKWARD = 2.0         # attention backward at most 2x SDPA's
ROPE_SPEEDUP = 4.0     # rope at least 4x faster than the reference (eager Transformers) formula
MASK_VS_FULL = 1.3     # causal_mask at most 1.3x a bare torch.full of the same size
MASK_VS_EAGER = 1.0    # and faster than Transformers' eager_mask


def _vs_sdpa(limit):
    return [Comparison("minivlm", "sdpa", limit), Comparison("minivlm", "reference")]


@dataclass
class Suite:
    """The shapes of one run: the full benchmark or the few-second --quick smoke test."""

    attention: list        # AttentionShape
    rope: tuple            # (B, H, L, D)
    mask: tuple            # (B, L)
    memory: list           # AttentionShape, each probed in its own process
    memory_impls: tuple    # which implementations the memory probes run
    reps: int
    warmup: int
    min_sample_s: float


def full_suite() -> Suite:
    prefill_causal = AttentionShape("prefill", 1, 8, 8, 2048, 2048, 64, causal=True)
    long = AttentionShape("prefill", 1, 8, 8, 8192, 8192, 64, causal=True, backward=False)
    return Suite(
        attention=[
            prefill_causal,
            AttentionShape("prefill", 1, 8, 8, 2048, 2048, 64, causal=False),
            AttentionShape("prefill", 1, 32, 32, 1024, 1024, 128, causal=True),
            AttentionShape("decode", 1, 32, 8, 1, 4096, 128, causal=False, backward=False),
            long,
        ],
        rope=(1, 32, 2048, 128),
        mask=(8, 2048),
        memory=[prefill_causal, long],
        memory_impls=("minivlm", "reference", "sdpa"),
        reps=7, warmup=1, min_sample_s=0.02,
    )


def quick_suite() -> Suite:
    prefill_causal = AttentionShape("prefill", 1, 2, 2, 256, 256, 64, causal=True)
    long = AttentionShape("prefill", 1, 2, 2, 1024, 1024, 64, causal=True, backward=False)
    return Suite(
        attention=[
            prefill_causal,
            AttentionShape("prefill", 1, 2, 2, 256, 256, 64, causal=False),
            AttentionShape("prefill", 1, 4, 4, 128, 128, 128, causal=True),
            AttentionShape("decode", 1, 8, 2, 1, 512, 128, causal=False, backward=False),
            long,
        ],
        rope=(1, 4, 256, 128),
        mask=(2, 256),
        memory=[prefill_causal],
        memory_impls=("minivlm",),   # a fresh process costs seconds (importing torch): just one
        reps=5, warmup=1, min_sample_s=0.002,
    )


def build_cases(suite: Suite) -> list:
    """The table's rows, in order, each with the targets it is held to."""
    cases = []
    for shape in suite.attention:
        limit = DECODE_FWD if shape.kind == "decode" else PREFILL_FWD
        cases.append(attention_forward_case(shape, _vs_sdpa(limit)))
        if shape.backward:
            cases.append(attention_backward_case(shape, _vs_sdpa(BACKWARD)))
    cases.append(rope_forward_case(suite.rope, [Comparison("minivlm", "reference", ROPE_SPEEDUP, speedup=True)]))
    cases.append(rope_backward_case(suite.rope, [Comparison("minivlm", "reference", speedup=True)]))
    cases.append(causal_mask_case(*suite.mask, [
        Comparison("minivlm", "torch.full", MASK_VS_FULL),
        Comparison("minivlm", "eager_mask", MASK_VS_EAGER),
        Comparison("minivlm", "reference"),
    ]))
    return cases


def run_case(case: Case, suite: Suite, ceilings: dict) -> dict:
    """Build one case's inputs, time its implementations side by side, evaluate its targets, and rate each
    implementation's median time against the ceiling of the case's work."""
    gc.collect()
    impls, check = case.build()
    skipped = [name for name in SECTION_IMPLS[case.op] if name not in impls]
    timings = time_side_by_side(impls, suite.reps, suite.warmup, suite.min_sample_s)
    comparisons = [c.evaluate(timings) for c in case.comparisons]
    del impls
    gc.collect()
    return {
        "op": case.op, "shape": case.label, "direction": case.direction,
        "times": timings, "skipped": skipped,
        "max_abs_diff": None if check is None else check[0],
        "diff_against": None if check is None else check[1],
        "comparisons": comparisons,
        "work": case.work.to_json(),
        "rates": {name: fraction(case.work, 1e-3 * t.median, ceilings) for name, t in timings.items()},
    }


# --------------------------------------------------------------------------------------------------
# Memory
# --------------------------------------------------------------------------------------------------

def measure_memory(shapes: list, impls: tuple, threads: int) -> list:
    """Peak extra memory of one forward per shape and implementation, each in a fresh process.

    The probes run concurrently (each process counts only its own memory); a row per shape.
    """
    probes = {}
    for shape in shapes:
        for impl in (name for name in attention_impl_names(shape) if name in impls):
            spec = {"impl": impl, "shape": dataclasses.asdict(shape), "threads": threads}
            probes[shape, impl] = start_probe("minivlm.tools.bench.kernels", spec)
    rows = []
    for shape in shapes:
        rows.append({
            "shape": shape.describe(),
            "O(T*D)_mib": shape.output_bytes() / MIB,
            "O(T*S)_mib": shape.score_bytes() / MIB,
            "impls": {impl: finish_probe(probes[shape, impl]) if (shape, impl) in probes else None
                      for impl in ("minivlm", "reference", "sdpa")},
        })
    return rows


def memory_probe(spec: dict) -> dict:
    """In the child: run one forward of spec["impl"] on spec["shape"] and report the peak's rise (the steps
    are in minivlm.tools.bench.memory)."""
    torch.set_num_threads(spec["threads"])
    shape = AttentionShape(**spec["shape"])
    fn = attention_function(spec["impl"], shape)
    with torch.no_grad():
        fn(*attention_inputs(shape.tiny()))              # 1. warm up
        q, k, v = attention_inputs(shape)                # 2. inputs
        baseline = current_rss_kib()                     # 3. baseline
        peak_before = peak_rss_kib()
        out = fn(q, k, v)                                # 4. one forward
        peak_after = peak_rss_kib()
    del out
    return {"extra_kib": max(0, peak_after - baseline), "baseline_kib": baseline,
            "peak_before_kib": peak_before, "peak_after_kib": peak_after, "peak_rose": peak_after > peak_before}


# --------------------------------------------------------------------------------------------------
# Printing
# --------------------------------------------------------------------------------------------------

SECTION_IMPLS = {
    "attention": ["minivlm", "reference", "sdpa"],
    "rope": ["minivlm", "reference"],
    "causal_mask": ["minivlm", "reference", "torch.full", "eager_mask"],
}
SECTION_TITLES = {
    "attention": "attention, float32 (sdpa = torch.nn.functional.scaled_dot_product_attention)",
    "rope": "rope, float32 (reference = the eager Transformers x*cos + rotate_half(x)*sin)",
    "causal_mask": "causal_mask -> (B, 1, L, L) float32, left-padded batch "
                   "(torch.full = the bare allocation + fill; eager_mask = transformers.masking_utils)",
}


def fmt_ms(ms: float) -> str:
    """A time in ms with about three significant digits."""
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 10:
        return f"{ms:.1f}"
    if ms >= 1:
        return f"{ms:.2f}"
    return f"{ms:.3f}"


def fmt_timing(t: Optional[Timing]) -> str:
    """'median [min-max]', or '-' for a skipped implementation."""
    if t is None:
        return "-"
    return f"{fmt_ms(t.median)} [{fmt_ms(t.low)}-{fmt_ms(t.high)}]"


def fmt_ratio(c: dict) -> str:
    if c["value"] is None:
        return f"{c['ratio']} -"
    return f"{c['ratio']} {c['value']:.2f}x [{c['min']:.2f}-{c['max']:.2f}]"


def print_table(rows: list, widths: list) -> None:
    """Left-aligned columns; the last column is not padded."""
    for row in rows:
        cells = [str(c).ljust(w) for c, w in zip(row[:-1], widths)] + [str(row[-1])]
        print("  ".join(cells).rstrip())


def print_section(op: str, results: list) -> None:
    """One table per op: a line per case (and one per further comparison), times in ms, then each
    implementation's rate and its fraction of the ceiling."""
    impls = SECTION_IMPLS[op]
    header = (["shape", "dir"] + [f"{name} ms" for name in impls] + [f"{name} rate" for name in impls]
              + ["max|diff|", "ratio [min-max]", "target", ""])
    rows = [header]
    for r in results:
        times = [fmt_timing(r["times"].get(name)) for name in impls]
        rates = [fmt_fraction(r["rates"].get(name)) for name in impls]
        diff = "-" if r["max_abs_diff"] is None else f"{r['max_abs_diff']:.1e}"
        comps = r["comparisons"] or [None]
        for i, c in enumerate(comps):
            lead = ([r["shape"], r["direction"]] + times + rates + [diff]) if i == 0 else [""] * (2 * len(impls) + 3)
            tail = ["-", "", ""] if c is None else [fmt_ratio(c), c["target"], c["result"] or ""]
            rows.append(lead + tail)
    widths = [max(len(str(row[i])) for row in rows) for i in range(len(header))]
    print(f"\n{SECTION_TITLES[op]}; median [min-max] of the repetitions; rate = the work / the median time, "
          f"% = of the ceiling")
    print_table(rows, widths)
    print_page_faults(results)


def print_page_faults(results: list, threshold: int = 1024) -> None:
    """A footnote for the rows where fresh memory (minor page faults) is a large part of the time."""
    for r in results:
        faults = {name: statistics.median(t.page_faults) for name, t in r["times"].items()}
        if max(faults.values()) >= threshold:
            counts = ", ".join(f"{name} {n:.0f}" for name, n in faults.items())
            print(f"  page faults per call, {r['shape']} {r['direction']}: {counts}")


def print_memory(rows: list) -> None:
    print("\npeak extra memory of one attention forward, MiB: the rise of the peak RSS (VmHWM, else ru_maxrss)")
    print("above the inputs, each implementation in a fresh process (see minivlm.tools.bench.memory);")
    print("O(T*D) = one (B,H,T,D) float32 tensor, O(T*S) = one (B,H,T,S) float32 score matrix (here S = T)")
    header = ["shape", "O(T*D)", "O(T*S)", "minivlm", "reference", "sdpa"]
    table = [header]
    for r in rows:
        cells = [r["shape"], f"{r['O(T*D)_mib']:.1f}", f"{r['O(T*S)_mib']:.0f}"]
        for impl in header[3:]:
            m = r["impls"][impl]
            if m is None:
                cells.append("-")
            elif "error" in m:
                cells.append("error: " + m["error"][:40])
            else:
                # If the forward never rose above the process's earlier peak, the rise is only a bound.
                bound = "" if m["peak_rose"] else "<= "
                cells.append(f"{bound}{m['extra_kib'] / 1024:.1f}")
        table.append(cells)
    widths = [max(len(row[i]) for row in table) for i in range(len(header))]
    print_table(table, widths)


def print_targets(results: list) -> None:
    """The PASS/MISS summary of every comparison that has a target."""
    checked = [(r, c) for r in results for c in r["comparisons"] if c["result"] in ("PASS", "MISS")]
    passed = sum(c["result"] == "PASS" for _, c in checked)
    skipped = sum(c["result"] == "skipped" for r in results for c in r["comparisons"])
    print(f"\ntargets: {passed}/{len(checked)} PASS" + (f" ({skipped} skipped: a side was not run)" if skipped else ""))
    for r, c in checked:
        if c["result"] == "MISS":
            print(f"  MISS {r['op']} {r['direction']} {r['shape']}: "
                  f"{c['ratio']} = {c['value']:.2f}x, target {c['target']}")


# --------------------------------------------------------------------------------------------------
# Header and entry point
# --------------------------------------------------------------------------------------------------

def environment() -> dict:
    """What the numbers depend on: versions, threads and the extension's vector instruction set."""
    load_extension("minivlm bench")   # the kernels are what is timed
    try:
        import transformers
        transformers_version = transformers.__version__
    except Exception:
        transformers_version = None
    return {
        "minivlm": minivlm.__version__,
        "torch": torch.__version__,
        "transformers": transformers_version,
        "threads": torch.get_num_threads(),
        "extension_isa": torch.ops.minivlm.cpu_isa(),
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
    }


def rope_isa_timing(dims) -> float:
    """Median ms of ops.rope on `dims`: a one-line proof that the compiled vector path runs."""
    x, cos, sin = rope_inputs(*dims)
    ops.rope(x, cos, sin)
    return 1e3 * statistics.median(_time_call(lambda: ops.rope(x, cos, sin), 3)[0] for _ in range(5))


def print_header(env: dict, rope_dims, rope_ms: float, suite: Suite, quick: bool, ceilings: dict) -> None:
    print(f"minivlm {env['minivlm']} kernel benchmark{' (--quick: small shapes)' if quick else ''}")
    print(f"torch {env['torch']}, transformers {env['transformers'] or '-'}, threads {env['threads']}")
    print(f"extension vector ISA: {env['extension_isa']} (torch's CPU capability: {env['cpu_capability']})")
    print("ops.rope B{} H{} T{} D{} float32 on the {} path: {} ms".format(
        *rope_dims, env["extension_isa"], fmt_ms(rope_ms)))
    print(f"{suite.reps} repetitions after {suite.warmup} warm-up, implementations alternating within each")
    for line in ceiling_lines(ceilings):
        print(line)
    print("rates: attention prefill and backward in GFLOP/s of its matrix products (causal: half; backward: 2.5x "
          "the forward) against matmul_float32; decode attention, rope and causal_mask in GB/s of the bytes "
          "they must read and write against copy")
    if quick:
        print("the targets are set for the full shapes; on --quick's small ones PASS/MISS mean little")


def to_json(env, rope_ms, suite, results, memory, ceilings) -> dict:
    cases = []
    for r in results:
        cases.append({**r, "times": {name: t.to_json() for name, t in r["times"].items()}})
    return {"environment": env, "rope_isa_ms": rope_ms, "reps": suite.reps, "warmup": suite.warmup,
            "ceilings": {name: c.to_json() for name, c in ceilings.items()}, "cases": cases, "memory": memory}


def run(json_path: Optional[str] = None, quick: bool = False, threads: Optional[int] = None,
        reps: Optional[int] = None) -> int:
    """`minivlm bench kernels`: time all cases, print the tables, optionally write JSON. Returns 0."""
    if threads is not None:
        torch.set_num_threads(threads)
    suite = quick_suite() if quick else full_suite()
    if reps is not None:
        suite.reps = reps
    env = environment()
    ceilings = measure_ceilings(dtypes=(torch.float32,))     # every case runs in float32
    rope_ms = rope_isa_timing(suite.rope)
    print_header(env, suite.rope, rope_ms, suite, quick, ceilings)

    cases, results = build_cases(suite), []
    for op in SECTION_IMPLS:
        section = [run_case(case, suite, ceilings) for case in cases if case.op == op]
        print_section(op, section)
        sys.stdout.flush()
        results += section

    memory = measure_memory(suite.memory, suite.memory_impls, env["threads"])
    print_memory(memory)
    print_targets(results)

    if json_path:
        with open(json_path, "w") as f:
            json.dump(to_json(env, rope_ms, suite, results, memory, ceilings), f, indent=2)
        print(f"\nwrote {json_path}")
    return 0


if __name__ == "__main__":     # a memory probe's child process (see measure_memory)
    sys.exit(child_main(memory_probe))
