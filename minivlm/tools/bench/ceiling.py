"""How far a benchmark is from the machine's limit: the ceilings, and the work each op or model does.

A benchmark time says how long a call took. The work the call must do, divided by that time, is a rate;
the rate divided by the best this machine reaches on such work is a fraction of the ceiling:

    compute-bound work (attention prefill and backward, a model's prefill): FLOP/s against the matmul
        ceiling, the rate of a large torch.mm in the same dtype;
    memory-bound work (decode attention, rope, the causal mask, a model's decode step): bytes/s against
        the copy ceiling, the rate of a large tensor copy_, bytes read plus bytes written.

Both ceilings are measured once per benchmark run, in its process and with its thread count
(`measure_ceilings`), so a fraction compares two numbers taken under the same conditions. They are what
PyTorch reaches on this machine (its BLAS, its copy loop), not the datasheet's peak: a kernel as good as
torch.mm would sit at 1.0, and so the fraction says how much room is left for code, not for hardware.

The work of one call is the least the op must do (the functions below, each saying what it counts): the
multiply-adds of its matrix products, or the bytes it must read and write at least once. The copy ceiling
is a DRAM ceiling: an op whose working set fits in the last-level cache, or that mostly reads on a
machine that reads faster than it copies, can exceed 1.0 against it.

For a whole model, `WorkCounter` watches one untimed call and adds up the FLOPs of every matrix product,
convolution and attention it runs, and the bytes of the weights and keys/values it reads.
"""
from __future__ import annotations

import bisect
import glob
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

GIGA = 1e9


# --------------------------------------------------------------------------------------------------
# What one call must do
# --------------------------------------------------------------------------------------------------

def matmul_flops(m: int, k: int, n: int, batch: int = 1) -> int:
    """FLOPs of batch products (m, k) @ (k, n): one multiply and one add per term, 2 * batch * m * k * n."""
    return 2 * batch * m * k * n


def attention_flops(B: int, H: int, T: int, S: int, D: int, causal: bool, backward: bool = False) -> int:
    """FLOPs of attention's two matrix products for q (B, H, T, D) against S keys, FlashAttention's
    convention.

    Forward: q k^T and p v, each 2 * B * H * T * S * D, so 4 * B * H * T * S * D (the softmax's
    exponentials are not counted). Causal and square (T == S): half of that, for the pairs at or below
    the diagonal (T * (T + 1) / 2 of T * T, counted as half); with T < S the queries are the last T positions and see (nearly) every key, so every pair
    is counted. Backward: 2.5x the forward (five products of that size instead of two: the scores
    recomputed, dv, dp, dq and dk).
    """
    flops = 4 * B * H * T * S * D
    if causal and T == S:
        flops //= 2
    return flops * 5 // 2 if backward else flops


def attention_bytes(B: int, H: int, Hkv: int, T: int, S: int, D: int, itemsize: int) -> int:
    """Bytes attention must move at least: q (B, H, T, D) read, k and v read once (each (B, Hkv, S, D):
    grouped-query heads share them), the output (B, H, T, D) written. The measure of a decode step, where
    T = 1 and reading k and v is nearly all of it."""
    return (2 * B * H * T * D + 2 * B * Hkv * S * D) * itemsize


def rope_bytes(B: int, H: int, T: int, D: int, itemsize: int) -> int:
    """Bytes rope must move at least: x (B, H, T, D) read and the output written, the (T, D) cos and sin
    tables read once. The backward moves as much (the gradient read, dx written, cos and sin read)."""
    return (2 * B * H * T * D + 2 * T * D) * itemsize


def causal_mask_bytes(B: int, T: int, S: int, itemsize: int) -> int:
    """Bytes the causal mask must move at least: the (B, S) bool padding mask read, the (B, 1, T, S)
    mask written."""
    return B * S + B * T * S * itemsize


@dataclass(frozen=True)
class Work:
    """The work of one call: `amount` FLOPs (unit "FLOP": rated against the matmul ceiling of `dtype`) or
    bytes (unit "B": rated against the copy ceiling)."""

    amount: float
    unit: str
    dtype: torch.dtype = torch.float32

    @property
    def ceiling(self) -> str:
        """The name of the ceiling this work is measured against (a key of `measure_ceilings`' result)."""
        return matmul_name(self.dtype) if self.unit == "FLOP" else "copy"

    def rate(self, seconds: float) -> float:
        """GFLOP/s or GB/s of a call that took `seconds`."""
        return self.amount / seconds / GIGA

    def rate_unit(self) -> str:
        return "GFLOP/s" if self.unit == "FLOP" else "GB/s"

    def to_json(self) -> dict:
        return {"amount": self.amount, "unit": self.unit, "dtype": str(self.dtype).replace("torch.", ""),
                "ceiling": self.ceiling}


# --------------------------------------------------------------------------------------------------
# The ceilings
# --------------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Ceiling:
    """The best rate (GFLOP/s or GB/s) of one reference operation, and how it was measured."""

    name: str
    rate: float
    unit: str
    how: str

    def to_json(self) -> dict:
        return {"rate": self.rate, "unit": self.unit, "how": self.how}


def matmul_name(dtype: torch.dtype) -> str:
    """The ceiling's name for a dtype: "matmul_float32" (sgemm), "matmul_bfloat16", ..."""
    return "matmul_" + str(dtype).replace("torch.", "")


def _best_seconds(fn: Callable, repeats: int, device: torch.device) -> float:
    """The shortest of `repeats` timed calls of fn, after one untimed call (warm-up, first touch). On a
    GPU each call ends with a synchronize, whose microseconds are small against the ceilings' milliseconds."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    fn()
    sync()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        sync()
        best = min(best, time.perf_counter() - start)
    return best


def matmul_ceiling(dtype: torch.dtype = torch.float32, device="cpu", n: Optional[int] = None,
                   repeats: int = 3) -> Ceiling:
    """GFLOP/s of an (n, n) @ (n, n) torch.mm in `dtype`, the best of `repeats` calls.

    n = 2048 on the CPU (17 GFLOP: about 0.1 s at 150 GFLOP/s, large enough for the BLAS to reach its
    steady rate), 8192 on a GPU. The output is preallocated, so no call pays for fresh memory.
    """
    device = torch.device(device)
    n = n or (8192 if device.type == "cuda" else 2048)
    gen = torch.Generator(device=device).manual_seed(0)
    a = torch.randn(n, n, generator=gen, device=device).to(dtype)
    b = torch.randn(n, n, generator=gen, device=device).to(dtype)
    out = torch.empty(n, n, dtype=dtype, device=device)
    seconds = _best_seconds(lambda: torch.mm(a, b, out=out), repeats, device)
    name = "sgemm" if dtype == torch.float32 else f"{str(dtype).replace('torch.', '')} gemm"
    return Ceiling(matmul_name(dtype), matmul_flops(n, n, n) / seconds / GIGA, "GFLOP/s",
                   f"{name}: torch.mm ({n}, {n}) @ ({n}, {n}), best of {repeats}")


def last_level_cache_bytes() -> Optional[int]:
    """The size of the CPU's largest cache as Linux reports it (/sys/devices/system/cpu/cpu0/cache), or
    None where it cannot be read."""
    sizes = []
    for path in glob.glob("/sys/devices/system/cpu/cpu0/cache/index*/size"):
        try:
            with open(path) as f:
                text = f.read().strip()                     # "491520K", "32M"
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            sizes.append(int(digits) * scale)
    return max(sizes) if sizes else None


def copy_buffer_bytes(device: torch.device) -> int:
    """The size of each of copy_ceiling's two buffers: on the CPU at least 256 MiB and at least the
    last-level cache (so source and destination together are twice the cache), at most 1 GiB; on a GPU
    1 GiB."""
    if device.type == "cuda":
        return 1 << 30
    llc = last_level_cache_bytes() or 0
    return min(max(256 << 20, llc), 1 << 30)


def copy_ceiling(device="cpu", nbytes: Optional[int] = None, repeats: int = 4) -> Ceiling:
    """GB/s of dst.copy_(src) between two float32 tensors of `nbytes` each (default
    `copy_buffer_bytes`), counting the bytes read and the bytes written (2 * nbytes per copy), the best of
    `repeats` copies. Both buffers are touched before the timing, so no copy pays for page faults."""
    device = torch.device(device)
    nbytes = nbytes or copy_buffer_bytes(device)
    src = torch.ones(nbytes // 4, device=device)
    dst = torch.empty_like(src)
    seconds = _best_seconds(lambda: dst.copy_(src), repeats, device)
    return Ceiling("copy", 2 * src.nbytes / seconds / GIGA, "GB/s",
                   f"copy_ of {src.nbytes >> 20} MiB, read + written, best of {repeats}")


def measure_ceilings(dtypes=(torch.float32,), device="cpu") -> dict:
    """The ceilings of one benchmark run, name -> Ceiling: a matmul ceiling per dtype the run uses and
    the copy ceiling. About a second on the project's 2-core machine."""
    ceilings = {matmul_name(dtype): matmul_ceiling(dtype, device) for dtype in dtypes}
    ceilings["copy"] = copy_ceiling(device)
    return ceilings


def ceiling_lines(ceilings: dict) -> list:
    """One printable line per ceiling."""
    llc = last_level_cache_bytes()
    lines = []
    for c in ceilings.values():
        note = f" (last-level cache {llc >> 20} MiB)" if c.name == "copy" and llc else ""
        lines.append(f"ceiling {c.name}: {c.rate:.1f} {c.unit}, {c.how}{note}")
    return lines


def fraction(work: Work, seconds: float, ceilings: dict) -> dict:
    """The rate of a call of `work` that took `seconds`, and its fraction of the matching ceiling."""
    rate = work.rate(seconds)
    return {"rate": rate, "unit": work.rate_unit(), "ceiling": work.ceiling,
            "fraction": rate / ceilings[work.ceiling].rate}


def fmt_percent(value: float) -> str:
    """A fraction as a percentage with two significant digits or more: 250%, 25%, 2.5%, 0.25%."""
    percent = 100 * value
    return (f"{percent:.0f}" if percent >= 10 else f"{percent:.2g}") + "%"


def fmt_fraction(r: Optional[dict]) -> str:
    """'41.2 GFLOP/s 25%' (the rate and its fraction of the ceiling), or '-'."""
    if r is None:
        return "-"
    return f"{r['rate']:.3g} {r['unit']} {fmt_percent(r['fraction'])}"


# --------------------------------------------------------------------------------------------------
# The work of a whole model: counted op by op during one call
# --------------------------------------------------------------------------------------------------

aten = torch.ops.aten

# The ops that multiply matrices, each with the argument whose last dimension is the length of the sum
# behind every output element: FLOPs = 2 * output elements * that length. With grad mode off
# (inference_mode, no_grad) the composite ops (linear, matmul, conv2d) arrive whole; with it on, their
# parts (addmm, mm, bmm, convolution).
_PRODUCTS = {
    aten.linear: 1,          # x (..., k) @ weight^T, the weight (n, k)
    aten.matmul: 0,
    aten.mm: 0,
    aten.addmm: 1,           # bias + a @ b
    aten.bmm: 0,
    aten.baddbmm: 1,
    aten.mv: 0,
    aten.addmv: 1,
}
# Convolutions: FLOPs = 2 * output elements * (input channels per group * kernel size), the size of one
# output channel's weight (Cin/groups, *kernel).
_CONVOLUTIONS = (aten.conv1d, aten.conv2d, aten.conv3d, aten.convolution, aten._convolution)


@dataclass
class Segment:
    """The work counted over one stretch of a call (see WorkCounter.new_segment).

    matmul_flops: every matrix product and convolution (see _PRODUCTS, _CONVOLUTIONS).
    attention_flops: attention_flops() of every minivlm attention call (a sliding window is not
        taken off: none of the benchmarked configs has one).
    kv_bytes: the keys and values every minivlm attention call reads (in a decode step: the KV cache).
    weight_bytes: every parameter some op reads, whole, counted once per segment; an embedding table
        only by the rows looked up.
    """

    matmul_flops: int = 0
    attention_flops: int = 0
    kv_bytes: int = 0
    weight_bytes: int = 0
    params_read: set = field(default_factory=set, repr=False)

    @property
    def flops(self) -> int:
        return self.matmul_flops + self.attention_flops

    @property
    def bytes(self) -> int:
        return self.weight_bytes + self.kv_bytes

    def to_json(self) -> dict:
        return {"flops": self.flops, "matmul_flops": self.matmul_flops, "attention_flops": self.attention_flops,
                "bytes": self.bytes, "weight_bytes": self.weight_bytes, "kv_bytes": self.kv_bytes}


def mean_segment(segments: list) -> Segment:
    """The mean work of `segments` (such as the steps of a decode), field by field."""
    counts = ("matmul_flops", "attention_flops", "kv_bytes", "weight_bytes")
    return Segment(**{name: sum(getattr(s, name) for s in segments) / len(segments) for name in counts})


class WorkCounter(TorchDispatchMode):
    """While active (`with WorkCounter(model) as counter:`), adds up the work of every op that runs.

    Every op passes through __torch_dispatch__ with its arguments: a matrix product or convolution adds
    its FLOPs, minivlm's attention op its FLOPs and the bytes of its keys and values, and an argument
    that is (a view of) one of the model's parameters marks that parameter as read. Parameters are found
    by address, not by tensor identity, because the loader's parameters may be views of one memory-mapped
    file, and an op may get a transposed or sliced view of a weight.

    The counts go to the current segment; `new_segment()` starts the next one (a hook on the module a
    decoder runs once per token gives one segment per step). Counting costs a Python call per op, so it
    runs on an untimed call.
    """

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        unique = {(p.data_ptr(), p.nbytes) for p in model.parameters() if p.nbytes}
        self._spans = sorted(unique)                    # (start address, nbytes), by address
        self._starts = [start for start, _ in self._spans]
        self.segments = [Segment()]

    def new_segment(self) -> None:
        self.segments.append(Segment())

    def _param_index(self, t: torch.Tensor) -> Optional[int]:
        """The index of the parameter whose memory holds t's first element, or None."""
        if t.device.type == "meta" or not t.numel():
            return None
        address = t.data_ptr()
        i = bisect.bisect_right(self._starts, address) - 1
        if i >= 0 and address < self._starts[i] + self._spans[i][1]:
            return i
        return None

    def _read(self, s: Segment, tensors) -> None:
        """Mark the parameters among `tensors` as read in segment s (each once)."""
        for t in tensors:
            i = self._param_index(t) if isinstance(t, torch.Tensor) else None
            if i is not None and i not in s.params_read:
                s.params_read.add(i)
                s.weight_bytes += self._spans[i][1]

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        s, op = self.segments[-1], func.overloadpacket
        if op in _PRODUCTS:
            s.matmul_flops += 2 * out.numel() * args[_PRODUCTS[op]].shape[-1]
        elif op in _CONVOLUTIONS:
            s.matmul_flops += 2 * out.numel() * args[1][0].numel()
        elif func.name() == "minivlm::attention":
            q, k, v, is_causal = args[0], args[1], args[2], args[4]
            B, H, T, D = q.shape
            s.attention_flops += attention_flops(B, H, T, k.shape[2], D, bool(is_causal))
            s.kv_bytes += k.numel() * k.element_size() + v.numel() * v.element_size()
        if op is aten.embedding:                        # (weight, indices, ...): only the rows looked up
            weight, indices = args[0], args[1]
            s.weight_bytes += indices.numel() * weight.shape[-1] * weight.element_size()
            args = args[1:]
        self._read(s, tree_flatten((args, kwargs))[0])
        return out
