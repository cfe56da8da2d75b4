"""`minivlm bench kernels --device cuda`: the CUDA kernels on a GPU, next to PyTorch and the reference.

The same idea as the CPU table (minivlm.tools.bench.kernels), with GPU timing:

    attention    vs torch's SDPA with the flash backend (FlashAttention-2 inside PyTorch) and the reference
    decode       one query row per sequence against a long KV cache (GQA) vs SDPA (its own choice of backend)
    rope         vs reference.rope (the eager Transformers formula)
    causal_mask  vs reference.causal_mask and a bare torch.full of the same size
    copy         a device-to-device copy: the bandwidth ceiling of the memory-bound kernels

Timing: CUDA events around each call on the current stream, after warm-up; the implementations take turns
within every repetition, and the table gives the median (and min-max) over the repetitions. Next to the
time: TFLOP/s for attention (the matrix products' flops: 4·B·H·T·S·D forward, half that when causal,
2.5x the forward for the backward, FlashAttention-2's convention) and GB/s for the memory-bound ops (bytes
that must be read and written at least once); the counting functions are in minivlm.tools.bench.ceiling.
Each rate is also given as a fraction of the device's ceiling: TFLOP/s of the matmul ceiling of the
case's dtype (a large torch.mm, measured at the start of the run), GB/s of the copy row's bandwidth (the
copy runs first).

Targets (on an H100-class GPU): attention forward bf16 at least 50% of SDPA's throughput; decode
and rope at least 70% of the bandwidth the device-to-device copy reaches in the same run.
"""
from __future__ import annotations

import json
import statistics
from dataclasses import dataclass
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from minivlm import ops, reference

from .ceiling import (attention_bytes, attention_flops, causal_mask_bytes, ceiling_lines, fmt_percent, matmul_ceiling,
                      rope_bytes)

ATTN_VS_SDPA = 0.5       # attention forward throughput at least 50% of SDPA's (flash backend)
BANDWIDTH_FRACTION = 0.7  # decode and rope reach at least 70% of the device-to-device copy's bandwidth
REFERENCE_LIMIT_BYTES = 2 << 30   # the reference is skipped where its float32 score matrix is larger
OPS = ("attention", "attention_backward", "rope", "rope_backward", "causal_mask")


def check_device() -> None:
    """A GPU visible to torch, and an extension built with its CUDA kernels; else a clear exit."""
    if not torch.cuda.is_available():
        raise SystemExit("minivlm bench kernels --device cuda: torch sees no CUDA GPU "
                         f"(torch {torch.__version__}, torch.version.cuda = {torch.version.cuda})")
    from minivlm._extension import load_extension

    load_extension("minivlm bench kernels --device cuda")
    missing = [op for op in OPS if not torch._C._dispatch_has_kernel_for_dispatch_key(f"minivlm::{op}", "CUDA")]
    if missing:
        raise SystemExit(f"minivlm bench kernels --device cuda: the extension has no CUDA kernel for {missing}; "
                         f"rebuild it with a CUDA toolkit: MINIVLM_CUDA=1 pip install --no-build-isolation -e .")


def time_cuda(fns: dict, reps: int, warmup: int) -> dict:
    """name -> list of milliseconds, one per repetition; the callables take turns within each one."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    torch.cuda.synchronize()
    times = {name: [] for name in fns}
    for _ in range(reps):
        for name, fn in fns.items():
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[name].append(start.elapsed_time(end))
    return times


@dataclass
class GpuCase:
    name: str
    fns: dict                     # implementation -> callable
    work: float                   # flops (unit "TFLOP/s") or bytes (unit "GB/s") of one call
    unit: str
    check: Optional[Callable] = None   # returns max |minivlm - other| over the outputs, or None
    dtype: Optional[torch.dtype] = None   # for a TFLOP/s case: whose matmul ceiling it is rated against


def _rand(*shape, dtype, device, requires_grad=False):
    return torch.randn(*shape, dtype=dtype, device=device).requires_grad_(requires_grad)


def attention_cases(dtype, device, B, H, L, D, causal: bool, backward: bool) -> list:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    q, k, v = (_rand(B, H, L, D, dtype=dtype, device=device, requires_grad=backward) for _ in range(3))
    flops = attention_flops(B, H, L, L, D, causal)

    def sdpa():
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            return F.scaled_dot_product_attention(q, k, v, is_causal=causal)

    fwd = {"minivlm": lambda: ops.attention(q, k, v, is_causal=causal), "sdpa": sdpa}
    if B * H * L * L * 4 <= REFERENCE_LIMIT_BYTES:
        fwd["reference"] = lambda: reference.attention(q, k, v, is_causal=causal)
    label = f"attention {'causal' if causal else 'full'} {str(dtype)[6:]} B{B} H{H} T{L} D{D}"
    cases = [GpuCase(label + " fwd", fwd, flops, "TFLOP/s",
                     lambda: (ops.attention(q, k, v, is_causal=causal) - sdpa()).abs().max().item(), dtype)]
    if backward:
        go = torch.randn_like(q)
        outs = {name: fn() for name, fn in fwd.items() if name != "reference"}
        bwd = {name: (lambda out=out: torch.autograd.grad(out, (q, k, v), go, retain_graph=True))
               for name, out in outs.items()}
        cases.append(GpuCase(label + " bwd", bwd, attention_flops(B, H, L, L, D, causal, backward=True), "TFLOP/s",
                             dtype=dtype))
    return cases


def decode_case(dtype, device, B, H, Hkv, S, D) -> GpuCase:
    q = _rand(B, H, 1, D, dtype=dtype, device=device)
    k, v = (_rand(B, Hkv, S, D, dtype=dtype, device=device) for _ in range(2))
    nbytes = attention_bytes(B, H, Hkv, 1, S, D, k.element_size())
    fns = {"minivlm": lambda: ops.attention(q, k, v),
           "sdpa": lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True)}
    return GpuCase(f"decode {str(dtype)[6:]} B{B} H{H} Hkv{Hkv} T1 S{S} D{D} fwd", fns, nbytes, "GB/s",
                   lambda: (fns["minivlm"]() - fns["sdpa"]()).abs().max().item())


def rope_case(dtype, device, B, H, L, D) -> GpuCase:
    x = _rand(B, H, L, D, dtype=dtype, device=device)
    angles = torch.arange(L, device=device, dtype=torch.float32)[:, None] * torch.rand(D // 2, device=device)
    angles = torch.cat((angles, angles), -1)
    cos, sin = angles.cos().to(dtype), angles.sin().to(dtype)
    nbytes = rope_bytes(B, H, L, D, x.element_size())
    fns = {"minivlm": lambda: ops.rope(x, cos, sin), "reference": lambda: reference.rope(x, cos, sin)}
    return GpuCase(f"rope {str(dtype)[6:]} B{B} H{H} T{L} D{D} fwd", fns, nbytes, "GB/s",
                   lambda: (fns["minivlm"]() - fns["reference"]()).abs().max().item())


def causal_mask_case(device, B, L) -> GpuCase:
    lengths = torch.randint(L // 2, L + 1, (B,), device=device)
    pad = torch.arange(L, device=device)[None] >= (L - lengths)[:, None]     # left padding
    nbytes = causal_mask_bytes(B, L, L, itemsize=4)
    fns = {"minivlm": lambda: ops.causal_mask(pad, L),
           "reference": lambda: reference.causal_mask(pad, L),
           "torch.full": lambda: torch.full((B, 1, L, L), float("-inf"), device=device)}
    return GpuCase(f"causal_mask B{B} T{L} float32", fns, nbytes, "GB/s",
                   lambda: (fns["minivlm"]() != fns["reference"]()).sum().item())


def copy_case(device, mib: int) -> GpuCase:
    src = torch.empty(mib << 20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    return GpuCase(f"device-to-device copy {mib} MiB", {"copy": lambda: dst.copy_(src)}, 2 * src.numel(), "GB/s")


def suite(device, quick: bool) -> list:
    """The cases in order; the copy first, since the memory-bound cases are rated against its bandwidth."""
    bf16 = torch.bfloat16
    if quick:
        return [copy_case(device, 64), *attention_cases(bf16, device, 1, 4, 512, 64, causal=True, backward=True),
                decode_case(bf16, device, 2, 8, 2, 1024, 64), rope_case(bf16, device, 1, 8, 512, 64),
                causal_mask_case(device, 2, 512)]
    return [copy_case(device, 1024),
            *attention_cases(bf16, device, 4, 16, 4096, 128, causal=True, backward=True),
            *attention_cases(bf16, device, 4, 16, 4096, 128, causal=False, backward=False),
            *attention_cases(torch.float16, device, 4, 16, 4096, 128, causal=True, backward=False),
            *attention_cases(torch.float32, device, 1, 16, 2048, 64, causal=True, backward=False),
            decode_case(bf16, device, 8, 32, 8, 8192, 128),
            rope_case(bf16, device, 8, 32, 4096, 128),
            causal_mask_case(device, 8, 4096)]


def run(json_path: Optional[str] = None, quick: bool = False, reps: Optional[int] = None) -> int:
    check_device()
    device = torch.device("cuda", torch.cuda.current_device())
    reps = reps or (5 if quick else 30)
    props = torch.cuda.get_device_properties(device)
    print(f"minivlm bench kernels --device cuda: {props.name}, {props.total_memory / 2**30:.0f} GiB, "
          f"torch {torch.__version__} (CUDA {torch.version.cuda}); median [min-max] of {reps} repetitions, "
          f"CUDA events, implementations alternating")
    cases = suite(device, quick)
    ceilings = {case.dtype: matmul_ceiling(case.dtype, device) for case in cases if case.unit == "TFLOP/s"}
    for line in ceiling_lines({c.name: c for c in ceilings.values()}):
        print(line)
    print("each rate's % is of its ceiling: TFLOP/s of its dtype's matmul, GB/s of the device-to-device copy")
    results, copy = [], None
    for case in cases:
        diff = case.check() if case.check else None
        times = time_cuda(case.fns, reps, warmup=3)
        row = {"case": case.name, "unit": case.unit, "max_diff": diff, "impls": {}}
        for impl, ms in times.items():
            med = statistics.median(ms)
            rate = case.work / (med * 1e-3) / (1e12 if case.unit == "TFLOP/s" else 1e9)
            copy = rate if impl == "copy" else copy
            ceiling = 1e-3 * ceilings[case.dtype].rate if case.unit == "TFLOP/s" else copy   # TFLOP/s or GB/s
            row["impls"][impl] = {"ms": med, "min": min(ms), "max": max(ms), "rate": rate,
                                  "fraction": rate / ceiling}
        results.append(row)
        cells = "  ".join(f"{impl} {r['ms']:.3g} ms [{r['min']:.3g}-{r['max']:.3g}] {r['rate']:.1f} {case.unit} "
                          f"{fmt_percent(r['fraction'])}" for impl, r in row["impls"].items())
        print(f"{case.name:<52} {cells}" + (f"  max|diff| {diff:.1e}" if diff is not None else ""))
    targets = check_targets(results)
    print("\ntargets:")
    for t in targets:
        print(f"  {t['what']}: {t['value']:.2f} (target {t['target']}) {t['result']}")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"device": props.name, "torch": torch.__version__, "cuda": torch.version.cuda, "reps": reps,
                       "ceilings": {c.name: c.to_json() for c in ceilings.values()}, "results": results,
                       "targets": targets}, f, indent=2)
        print(f"wrote {json_path}")
    return 0


def check_targets(results: list) -> list:
    out = []
    copy = next(r["impls"]["copy"]["rate"] for r in results if r["case"].startswith("device-to-device"))
    for r in results:
        impls = r["impls"]
        if r["case"].startswith("attention causal bfloat16") and r["case"].endswith("fwd"):
            value = impls["minivlm"]["rate"] / impls["sdpa"]["rate"]
            out.append({"what": f"{r['case']}: throughput / SDPA flash", "value": value, "target": f">= {ATTN_VS_SDPA}",
                        "result": "PASS" if value >= ATTN_VS_SDPA else "MISS"})
        if r["case"].startswith(("decode", "rope")):
            value = impls["minivlm"]["rate"] / copy
            out.append({"what": f"{r['case']}: bandwidth / copy's", "value": value,
                        "target": f">= {BANDWIDTH_FRACTION}", "result": "PASS" if value >= BANDWIDTH_FRACTION else "MISS"})
    return out
