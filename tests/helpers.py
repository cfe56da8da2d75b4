"""What the tests share: the devices and dtypes the kernel tests run on, error bounds, comparisons of a
model's outputs with Transformers', inputs, and checkpoint folders. Every test file imports from here
(`from helpers import ...`); conftest.py holds only pytest's hooks and fixtures.

The tiny configurations live in the package, in minivlm/tools/tiny.py; tests/_<model>.py build tiny
random-weight Transformers models from them (their weights drawn so that every parameter matters) and
the inputs a processor would give those models.
"""

import json
import platform
import shutil

import pytest
import torch
from safetensors.torch import save_file

import minivlm
from minivlm._extension import load_extension

load_extension("the tests")   # the ops and their kernels, and the instruction sets of the CPU kernels (below)

# -- devices and dtypes of the kernel tests ------------------------------------------------------------

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


# -- error bounds of the kernel tests ------------------------------------------------------------------

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


# -- a model's outputs against Transformers' -----------------------------------------------------------

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


def decode_in_chunks(model, ids, chunks, mask=None, positions=None):
    """Logits of a decoder's ids (B, T), computed chunk by chunk (`chunks`: their sizes) through one cache.
    mask and positions, when given, are those of the whole sequence; with a mask and no positions the
    model derives each chunk's positions from the mask over the cached tokens too."""
    B, T = ids.shape
    cache = model.new_cache(B, T + 3)
    out, start = [], 0
    for size in chunks:
        end = start + size
        out.append(model(ids[:, start:end], cache=cache,
                         attention_mask=None if mask is None else mask[:, :end],
                         position_ids=None if positions is None else positions[:, start:end]).logits)
        start = end
    assert start == T and cache.length == T
    return torch.cat(out, dim=1)


# -- inputs --------------------------------------------------------------------------------------------

def left_padded_mask(lengths, T):
    """(B, T) int64 attention mask: row b has lengths[b] real tokens at the end, padding before them."""
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, T - n:] = 1
    return mask


def generate_positions(mask):
    """The position_ids generate passes (minivlm's and Transformers'): cumsum(mask) - 1, pads at 0."""
    return (mask.cumsum(-1) - 1).masked_fill(mask == 0, 0)


def pad_rows(rows, pad_id, length=None, side="left"):
    """Token rows (lists of ids) as a batch: input_ids (B, T) padded with pad_id on the given side to the
    longest row (or to `length`), and the attention mask (1 at the rows' own tokens)."""
    T = max(max(len(r) for r in rows), length or 0)
    ids = torch.full((len(rows), T), pad_id, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, row in enumerate(rows):
        start = T - len(row) if side == "left" else 0
        ids[i, start:start + len(row)] = torch.tensor(row)
        mask[i, start:start + len(row)] = 1
    return ids, mask


# -- checkpoint folders --------------------------------------------------------------------------------

def transformers_config(d):
    """The Transformers config a config.json dict (a minivlm.tools.tiny one) describes."""
    from transformers import AutoConfig

    return AutoConfig.for_model(**d)


def save(model, folder, **kwargs):
    """A Transformers model saved as a user's checkpoint folder (save_pretrained); returns the folder."""
    model.save_pretrained(folder, **kwargs)
    return folder


def save_and_load(hf, folder, dtype=torch.float32):
    """A Transformers model saved to `folder` and loaded from there by minivlm.from_pretrained."""
    return minivlm.from_pretrained(save(hf, folder), dtype=dtype)


def write_checkpoint(folder, tensors, config_folder):
    """A new checkpoint folder: `tensors` in model.safetensors, config_folder's config.json."""
    folder.mkdir()
    shutil.copy(config_folder / "config.json", folder / "config.json")
    save_file({k: v.clone().contiguous() for k, v in tensors.items()}, str(folder / "model.safetensors"))
    return folder


def edit_config(folder, edit):
    """Rewrite folder's config.json as edit(config) leaves the dict it is given."""
    config = json.loads((folder / "config.json").read_text())
    edit(config)
    (folder / "config.json").write_text(json.dumps(config))


def assert_same_inputs(got: dict, expected, what=""):
    """A processor's outputs equal Transformers' processor's: the same keys, tensors of the same dtype and
    values (torch.equal: ids and masks are integers, pixels come from the same PIL steps), lists equal.
    Without return_tensors Transformers gives pixel arrays where minivlm gives tensors: compared as values."""
    import numpy as np

    assert set(got) == set(expected.keys()), (what, sorted(got), sorted(expected.keys()))
    for k in expected.keys():
        e = expected[k]
        if isinstance(e, list) and e and isinstance(e[0], np.ndarray):
            e = torch.from_numpy(np.stack(e))
        if isinstance(e, torch.Tensor):
            assert got[k].dtype == e.dtype and got[k].shape == e.shape and torch.equal(got[k], e), (what, k)
        else:
            assert got[k] == e, (what, k)
