"""Shared test setup: hypothesis profiles, seeding and the numerics helpers every kernel test uses.

Hypothesis profiles (choose with MINIVLM_HYPOTHESIS_PROFILE):
  ci  (default) derandomized, so CI runs the same examples every time; few enough to stay quick on 2 cores.
  dev           1000 examples per property, for a long local hunt after changing a kernel.
A failing example prints its reproduction blob (print_blob) so it can be replayed with @reproduce_failure.
"""

import os
import platform
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

from minivlm._extension import load_extension

load_extension("the tests")   # the ops and their kernels, and the instruction sets of the CPU kernels (below)

# Run against this checkout even where the package is not installed in editable mode.
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

settings.register_profile(
    "ci",
    derandomize=True,
    max_examples=60,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.register_profile(
    "dev",
    max_examples=1000,
    deadline=None,
    print_blob=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
settings.load_profile(os.environ.get("MINIVLM_HYPOTHESIS_PROFILE", "ci"))

DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)

# The CPU kernels come in one build per instruction set (avx512, avx2, default), chosen at run time; the
# kernel tests run each one this CPU can run. A build the CPU cannot run is skipped, by name.
CPU_ISAS = ("avx512", "avx2", "default") if platform.machine() in ("x86_64", "AMD64") else ("default",)
RUNNABLE_ISAS = tuple(torch.ops.minivlm.cpu_isas())


class Cpu(str):
    """The device "cpu" (it is that string) with the instruction set whose kernels the test runs."""

    def __new__(cls, isa):
        self = super().__new__(cls, "cpu")
        self.isa = isa
        return self


# The devices every kernel test runs on: the CPU with each ISA; CUDA whenever torch sees a GPU (skipped,
# with the reason, elsewhere). A GPU with an extension built without CUDA kernels fails the CUDA tests:
# the kernels are then missing, which is what the tests are for.
DEVICES = tuple(
    pytest.param(Cpu(isa), id=f"cpu-{isa}",
                 marks=pytest.mark.skipif(isa not in RUNNABLE_ISAS,
                                          reason=f"this CPU lacks the {isa} instructions: its kernels are compiled "
                                                 f"but cannot run here"))
    for isa in CPU_ISAS
)
CUDA_DEVICES = (
    pytest.param("cuda", marks=pytest.mark.skipif(not torch.cuda.is_available(),
                                                  reason="no CUDA GPU visible to torch: the CUDA kernels are "
                                                         "only compiled here (tools/cuda_build_check.sh)")),
)
DEVICES += CUDA_DEVICES


def pytest_report_header(config):
    lacking = [isa for isa in CPU_ISAS if isa not in RUNNABLE_ISAS]
    return (f"minivlm CPU kernels: compiled for {', '.join(CPU_ISAS)}; tested here: {', '.join(RUNNABLE_ISAS)}"
            + (f"; not run (this CPU lacks them): {', '.join(lacking)}" if lacking else ""))


def to_device(t, device):
    """`t` on `device` with exactly its memory layout: the same strides, stride-0 (expanded) dimensions
    and gaps between elements (whatever the gaps hold on the CPU, NaN bait included, they hold there
    too), so that a strided view reaches the GPU kernels as a strided view. None stays None."""
    if t is None or torch.device(device) == t.device:
        return t
    span = 1 + sum((n - 1) * st for n, st in zip(t.shape, t.stride())) if t.numel() else 0
    flat = torch.as_strided(t.detach(), (span,), (1,), t.storage_offset())   # the memory the view covers
    out = flat.to(device).as_strided(t.shape, t.stride(), 0)
    return out.requires_grad_(t.requires_grad) if t.is_leaf else out


def seed_torch(seed: int = 0) -> torch.Generator:
    """Seed torch's global generator and return a private generator with the same seed."""
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


@pytest.fixture(autouse=True)
def _seeded(request, monkeypatch):
    """Every test starts from the same global torch seed, so a failure reproduces on its own, and runs
    the compiled kernels even where MINIVLM_REFERENCE is set in the environment (the tests compare the
    kernels with the reference; test_reference_switch.py sets it where it means to). A test on a
    Cpu(isa) device runs that instruction set's kernels, and the ones before it are restored after."""
    monkeypatch.delenv("MINIVLM_REFERENCE", raising=False)
    seed_torch(0)
    device = getattr(request.node, "callspec", None) and request.node.callspec.params.get("device")
    if isinstance(device, Cpu):
        previous = torch.ops.minivlm.set_cpu_isa(device.isa)
        yield
        torch.ops.minivlm.set_cpu_isa(previous)
    else:
        yield


def acc_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the kernels compute in: float64 for float64, float32 for the rest."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def unit_roundoff(dtype: torch.dtype) -> float:
    """Largest relative error of rounding a real to `dtype` (half its machine epsilon): 2^-53, 2^-24,
    2^-8 for bfloat16 (8 significant bits), 2^-11 for float16 (11 significant bits)."""
    return torch.finfo(dtype).eps / 2


def rounding_error(dtype: torch.dtype, exact: torch.Tensor) -> torch.Tensor:
    """Largest error of rounding the float64 values `exact` once to `dtype`: u * |x| for normal numbers,
    and half the subnormal spacing (u * smallest_normal) below them (matters for float16: 3e-8)."""
    return unit_roundoff(dtype) * (exact.detach().double().abs() + torch.finfo(dtype).smallest_normal)


def randn(shape, dtype, gen, layout="contiguous"):
    """A standard-normal tensor of `shape` in `dtype`, laid out in memory as `layout` says.

    contiguous: plain row-major.  transposed: a (B, L, H, D) buffer viewed as (B, H, L, D) (the layout a
    linear projection followed by .view().transpose(1, 2) produces).  sliced: every other element of a
    last dimension twice as long (stride 2 on the innermost dimension).  expanded: dimension 1 has stride 0
    (one head repeated).  Values are drawn in float64 and rounded to `dtype`, and those rounded values are
    what every implementation sees.
    """
    shape = tuple(shape)
    if layout == "contiguous":
        return torch.randn(shape, generator=gen, dtype=torch.float64).to(dtype)
    if layout == "transposed":
        assert len(shape) == 4
        b, h, l, d = shape
        return torch.randn((b, l, h, d), generator=gen, dtype=torch.float64).to(dtype).transpose(1, 2)
    if layout == "sliced":
        buf = torch.randn(shape[:-1] + (2 * shape[-1],), generator=gen, dtype=torch.float64).to(dtype)
        return buf[..., ::2]
    if layout == "expanded":
        assert len(shape) >= 2
        base = torch.randn(shape[:1] + (1,) + shape[2:], generator=gen, dtype=torch.float64).to(dtype)
        return base.expand(shape)
    raise ValueError(layout)


def assert_within(actual, exact, bound, what):
    """Assert |actual - exact| <= bound elementwise (in float64), NaN-free, with a readable report."""
    a = actual.detach().to("cpu", torch.float64)
    e = exact.detach().to("cpu", torch.float64)
    assert a.shape == e.shape, f"{what}: shape {tuple(a.shape)} != expected {tuple(e.shape)}"
    assert not torch.isnan(a).any(), f"{what}: contains NaN"
    both_inf = torch.isinf(a) & torch.isinf(e) & (torch.sign(a) == torch.sign(e))
    err = torch.where(both_inf, torch.zeros_like(a), (a - e).abs())
    bound = torch.broadcast_to(bound.detach().to("cpu", torch.float64), err.shape)
    bad = ~(err <= bound)
    if bad.any():
        idx = tuple(int(i) for i in bad.nonzero()[0])
        ratio = (err / bound.clamp_min(1e-300)).max().item()
        raise AssertionError(
            f"{what}: {int(bad.sum())}/{err.numel()} elements out of tolerance; max error "
            f"{err.max().item():.3e}, max error/bound {ratio:.3g}; first at {idx}: got {a[idx].item()!r}, "
            f"expected {e[idx].item()!r}, bound {bound[idx].item():.3e}")


def assert_close_rel(actual, expected, what, rtol, mask=None):
    """|actual - expected| <= rtol * max|expected|, NaN-free: a model's outputs against Transformers', at a
    tolerance relative to the outputs' scale (each test file justifies its rtol). mask (B, T): compare only
    the positions where it is 1 (real tokens, not padding)."""
    if mask is not None:
        keep = mask.bool()
        actual, expected = actual[keep], expected[keep]
    assert actual.shape == expected.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    assert not torch.isnan(actual).any(), f"{what}: NaN"
    bound = rtol * expected.abs().max().item()
    err = (actual.double() - expected.double()).abs().max().item()
    assert err <= bound, f"{what}: max error {err:.3e} > bound {bound:.3e} ({rtol:g} x the largest value)"


def check_cache_errors(model, vocab):
    """A decoder's KV cache (max_length 10, batch 2) refuses what does not fit, names why, and stores
    nothing for a refused call."""
    cache = model.new_cache(2, 10)
    with torch.no_grad():
        model(torch.randint(0, vocab, (2, 8)), cache=cache)
        with pytest.raises(ValueError, match="max_length=10"):
            model(torch.randint(0, vocab, (2, 3)), cache=cache)
        with pytest.raises(ValueError, match="batch size 2"):
            model(torch.randint(0, vocab, (3, 1)), cache=cache)
        with pytest.raises(ValueError, match="attention_mask"):
            model(torch.randint(0, vocab, (2, 1)), cache=cache, attention_mask=torch.ones(2, 1))
        with pytest.raises(ValueError, match="float64"):
            model(torch.randint(0, vocab, (2, 1)), cache=model.new_cache(2, 4, dtype=torch.float64))
    assert cache.length == 8      # failed calls store nothing
    return cache


def save(model, folder, **kwargs):
    """A Transformers model saved as a user's checkpoint folder (save_pretrained); returns the folder."""
    model.save_pretrained(folder, **kwargs)
    return folder


def left_padded_mask(lengths, T):
    """(B, T) int64 attention mask: row b has lengths[b] real tokens at the end, padding before them."""
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, T - n:] = 1
    return mask


def assert_kept_rows_match(model, head, run_full, run_kept, keep):
    """Logits from a forward with logits_to_keep=keep against the last `keep` positions of a full forward.

    Both runs compute the same hidden states; only the head's matrix product differs: BLAS multiplies
    `keep` rows with another kernel (another blocking of the K-sum) than a full sequence, so the two
    results may differ in the last bits (5e-7 apart on an AVX2 machine). Each float32 evaluation of a
    K-term dot product lies within gamma_K * sum_i |x_i w_i| of the exact value (Higham's bound, gamma_K ~
    K * u, u = 2^-24; K + 1 terms with the bias), whatever the summation order, so two evaluations lie
    within twice that of each other: the bound below, computed elementwise from the head's own input and
    weight. The check also runs against the slice shifted by one position and must fail there: a kept
    row taken from the wrong position is caught.
    """
    captured = {}

    def capture(module, args, output):      # returns None: the head's output stays as it is
        captured["x"] = args[0].detach()

    hook = head.register_forward_hook(capture)
    try:
        with torch.no_grad():
            full = run_full().logits
    finally:
        hook.remove()
    with torch.no_grad():
        kept = run_kept().logits
    x, w = captured["x"][:, -keep:].double(), head.weight.detach().double()
    K = w.shape[1] + (head.bias is not None)
    gamma = K * unit_roundoff(head.weight.dtype) / (1 - K * unit_roundoff(head.weight.dtype))
    bias = head.bias.detach().double().abs() if head.bias is not None else 0
    bound = 2 * gamma * (x.abs() @ w.abs().T + bias)
    assert kept.shape == full[:, -keep:].shape, f"logits_to_keep={keep}: shape {tuple(kept.shape)}"
    assert_within(kept, full[:, -keep:], bound, f"logits_to_keep={keep}")
    with pytest.raises(AssertionError, match="out of tolerance"):
        assert_within(kept, full[:, -keep - 1:-1], bound, "the slice one position earlier")


def assert_same_weights(got, expected, what):
    """Two loads of one checkpoint hold the same tensors, bit for bit: the same names, dtypes and values.

    This, not bitwise-equal logits, is what a loading test asserts: two models with equal weights may still
    give logits that differ in the last bits, since BLAS can choose another kernel for tensors at another
    memory alignment (a memory-mapped file's tensors are not 64-byte aligned); their logits are compared
    with the float32 tolerance of the parity tests.
    """
    a, b = got.state_dict(), expected.state_dict()
    assert a.keys() == b.keys(), f"{what}: keys differ: {sorted(set(a) ^ set(b))[:10]}"
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), f"{what}: {name} differs"
