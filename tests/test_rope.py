"""minivlm.rope (the compiled kernel) against the reference math, forward and backward.

rope is elementwise: out = x * cos + rotate_half(x) * sin, computed in float32 (float64 for float64 x)
and rounded once to x's dtype. With the exact answer taken as the reference in float64 on the same
(rounded) inputs, the kernel's error is bounded elementwise by
  u(x.dtype) * |exact|                        the final rounding to x's dtype, and
  5 * u(acc) * (|x||cos| + |rotate_half(x)||sin|)   cos/sin converted to the accumulation dtype, two
                                              products and one sum, each rounded once (4 roundings; an FMA
                                              only removes some), plus the slack of rounding twice.
The same bound holds for the gradient in x (rope is linear in x: dx = g*cos - rotate_half(g*sin)). The
gradients in cos and sin are sums over heads (and over the batch for (L, D) tables) of n products; a sum
of n terms rounded in turn costs at most (n + 1) * u(acc) of the sum of their absolute values.
"""


import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import minivlm
from minivlm import reference
from helpers import DEVICES, DTYPES, acc_dtype, assert_within, randn, rounding_error, to_device, unit_roundoff


def rotary_tables(L, D, dtype, batch=None, offset=0, base=10000.0):
    """The half-split (Llama / Transformers) rotary tables: angle(pos, i) = pos * base^(-2i/D), the
    D/2 frequencies repeated for both halves. (L, D), or (batch, L, D) with per-sequence offsets."""
    inv_freq = base ** (-torch.arange(0, D, 2, dtype=torch.float64) / D)
    if batch is None:
        pos = torch.arange(L, dtype=torch.float64)[:, None] + offset
    else:
        pos = torch.arange(L, dtype=torch.float64)[None, :, None] + torch.arange(batch)[:, None, None] * 3 + offset
    ang = pos * inv_freq
    ang = torch.cat((ang, ang), dim=-1)
    return ang.cos().to(dtype), ang.sin().to(dtype)


@st.composite
def rope_cases(draw, dtype):
    D = draw(st.sampled_from([2, 4, 6, 8, 10, 16, 34, 64, 80, 128]))
    L = draw(st.one_of(st.just(1), st.sampled_from(range(1, 90))))
    return dict(
        dtype=dtype, B=draw(st.integers(1, 2)), H=draw(st.integers(1, 4)), L=L, D=D,
        batched=draw(st.booleans()),                       # cos/sin (B, L, D) rather than (L, D)
        cos_dtype=draw(st.sampled_from(DTYPES)),           # the tables may come in another dtype
        real_tables=draw(st.booleans()),                   # true rotary angles, or arbitrary values
        x_layout=draw(st.sampled_from(["contiguous", "transposed", "sliced", "expanded"])),
        cos_layout=draw(st.sampled_from(["contiguous", "sliced", "expanded"])),
        table_grad=draw(st.booleans()),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def build(case):
    gen = torch.Generator().manual_seed(case["seed"])
    B, H, L, D = case["B"], case["H"], case["L"], case["D"]
    x = randn((B, H, L, D), case["dtype"], gen, case["x_layout"])
    cdt = case["cos_dtype"]
    shape = (B, L, D) if case["batched"] else (L, D)
    if case["real_tables"]:
        cos, sin = rotary_tables(L, D, cdt, batch=B if case["batched"] else None, offset=5)
    else:
        cos, sin = randn(shape, cdt, gen), randn(shape, cdt, gen)
    layout = case["cos_layout"]
    if layout == "sliced":
        cos, sin = (torch.stack((t, torch.full_like(t, float("nan"))), dim=-1)[..., 0] for t in (cos, sin))
    elif layout == "expanded":
        # Stride 0 in the first dimension: every sequence of the batch (or, for an (L, D) table, every
        # position) shares one row.
        cos, sin = cos[:1].expand(shape), sin[:1].expand(shape)
    return x, cos, sin


def rope_bound(x, cos, sin, exact, out_dtype, acc, transpose=False):
    """The module docstring's bound for rope(x) (or, with transpose, for its gradient
    g * cos - rotate_half(g * sin), whose second term rotates after the product)."""
    xa = x.detach().double().abs()
    ca, sa = cos.detach().double().abs(), sin.detach().double().abs()
    if ca.dim() == 3:
        ca, sa = ca[:, None], sa[:, None]
    if transpose:
        mag = xa * ca + reference.rotate_half(xa * sa).abs()
    else:
        mag = xa * ca + reference.rotate_half(xa).abs() * sa
    return rounding_error(out_dtype, exact) + 5 * unit_roundoff(acc) * mag


def check_rope(case, device="cpu"):
    """The kernel runs on `device` (inputs in the same memory layouts); the reference on the CPU."""
    x, cos, sin = build(case)
    dtype = case["dtype"]
    acc = acc_dtype(dtype)
    tg = case["table_grad"]
    xx = to_device(x, device).detach().requires_grad_()
    cc, ss = (to_device(t, device).detach().requires_grad_(tg) for t in (cos, sin))
    out = minivlm.rope(xx, cc, ss)
    assert out.device == xx.device
    assert out.dtype == dtype and out.shape == x.shape

    x64 = x.detach().double().requires_grad_()
    c64, s64 = cos.detach().double().requires_grad_(tg), sin.detach().double().requires_grad_(tg)
    exact = reference.rope(x64, c64, s64)
    assert_within(out, exact, rope_bound(x, cos, sin, exact, dtype, acc), f"rope output ({dtype})")

    g = randn(out.shape, dtype, torch.Generator().manual_seed(case["seed"] + 1))
    out.backward(g.to(device))
    exact.backward(g.double())
    assert xx.grad.dtype == dtype and xx.grad.shape == x.shape
    # dx = g * cos - rotate_half(g * sin): the same bound with g in place of x and the rotation after
    # the product.
    bound = rope_bound(g, cos, sin, x64.grad, dtype, acc, transpose=True)
    assert_within(xx.grad, x64.grad, bound, f"rope dx ({dtype})")
    if tg:
        B, H = case["B"], case["H"]
        n = H * (1 if case["batched"] else B)              # terms summed into each table entry
        for name, t, t64, other in (("cos", cc, c64, x64), ("sin", ss, s64, reference.rotate_half(x64))):
            assert t.grad is not None and t.grad.dtype == t.dtype and t.grad.shape == t.shape, name
            prod = (g.double().abs() * other.detach().abs()).sum(1)         # (B, L, D)
            mag = prod if case["batched"] else prod.sum(0)
            bound = rounding_error(t.dtype, t64.grad) + (n + 2) * unit_roundoff(acc) * mag
            assert_within(t.grad, t64.grad, bound, f"rope d{name} ({dtype}, tables {t.dtype})")
    else:
        assert cc.grad is None and ss.grad is None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_rope_matches_reference(dtype, device, data):
    check_rope(data.draw(rope_cases(dtype), label="case"), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_long_sequence(dtype, device):
    """A long sequence and a large head: L = 1000, D = 256, many heads, transposed x."""
    case = dict(dtype=dtype, B=2, H=8, L=1000, D=256, batched=True, cos_dtype=dtype, real_tables=True,
                x_layout="transposed", cos_layout="contiguous", table_grad=False, seed=3)
    check_rope(case, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_rope_matches_transformers_llama(dtype, device):
    """Our rotary layout is Transformers' half-split rotate_half (Llama): same result as its
    apply_rotary_pos_emb on (B, L, D) tables."""
    from transformers.models.llama.modeling_llama import apply_rotary_pos_emb

    B, H, L, D = 2, 3, 17, 32
    q = torch.randn(B, H, L, D).to(dtype)
    k = torch.randn(B, 1, L, D).to(dtype)
    cos, sin = rotary_tables(L, D, torch.float64, batch=B)
    cos, sin = cos.to(dtype), sin.to(dtype)
    q_hf, k_hf = apply_rotary_pos_emb(q.double(), k.double(), cos.double(), sin.double())
    for x, want in ((q, q_hf), (k, k_hf)):
        got = minivlm.rope(x.to(device), cos.to(device), sin.to(device))
        assert_within(got, want, rope_bound(x, cos, sin, want, dtype, acc_dtype(dtype)), "rope vs transformers")


@pytest.mark.parametrize("device", DEVICES)
def test_rope_rotates_pairs(device):
    """The rotation pairs dimension i with i + D/2: at angle pi/2 (cos 0, sin 1) the halves swap with a
    sign, (x1, x2) -> (-x2, x1); at angle 0 nothing moves."""
    D = 6
    x = torch.arange(1, D + 1, dtype=torch.float32).reshape(1, 1, 1, D).repeat(1, 2, 2, 1)
    cos = torch.tensor([[1.0] * D, [0.0] * D])
    sin = torch.tensor([[0.0] * D, [1.0] * D])
    out = minivlm.rope(x.to(device), cos.to(device), sin.to(device)).cpu()
    assert torch.equal(out[:, :, 0], x[:, :, 0])
    assert torch.equal(out[0, 0, 1], torch.tensor([-4.0, -5.0, -6.0, 1.0, 2.0, 3.0]))


@pytest.mark.parametrize("device", DEVICES)
def test_rope_table_gradients_through_broadcast(device):
    """Gradients of (L, D) tables sum over batch and heads; of (B, L, D) tables, over heads only."""
    x = torch.randn(2, 3, 4, 8, dtype=torch.float64)
    for shape in ((4, 8), (2, 4, 8)):
        cos = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        sin = torch.randn(shape, dtype=torch.float64, device=device, requires_grad=True)
        minivlm.rope(x.to(device), cos, sin).sum().backward()
        if len(shape) == 2:
            want_cos = x.sum((0, 1))
            want_sin = reference.rotate_half(x).sum((0, 1))
        else:
            want_cos = x.sum(1)
            want_sin = reference.rotate_half(x).sum(1)
        torch.testing.assert_close(cos.grad.cpu(), want_cos, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(sin.grad.cpu(), want_sin, rtol=1e-12, atol=1e-12)
