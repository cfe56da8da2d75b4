"""Autograd and torch.library plumbing: gradcheck in float64, opcheck on every op, torch.compile.

gradcheck compares the analytic gradients (the compiled backward kernels wired up in minivlm/ops.py)
with finite differences of the forward, so it checks the gradient math independently of the reference.
opcheck checks what gradcheck does not: schemas (no undeclared mutation or aliasing), the fake kernels
(shapes, dtypes and strides match the real ones), the autograd registration and AOT tracing.
"""

import pytest
import torch
from torch.autograd import gradcheck

import minivlm
from helpers import DEVICES, seed_torch


def f64(*shape, grad=True, device="cpu"):
    return torch.randn(*shape, dtype=torch.float64).to(device).requires_grad_(grad)


# --------------------------------------------------------------------------------------------------
# gradcheck
# --------------------------------------------------------------------------------------------------

def _float_mask(shape, p_inf=0.2, grad=True, device="cpu"):
    """Random biases with some -inf entries, never a whole row of -inf (gradcheck's finite differences
    see a dead row correctly, but we test those separately with exact zeros)."""
    m = torch.randn(shape, dtype=torch.float64)
    m = torch.where(torch.rand(shape) < p_inf, float("-inf"), m)
    m[..., 0] = torch.randn(m[..., 0].shape, dtype=torch.float64)   # key 0 always finite
    return m.to(device).requires_grad_(grad)


ATTENTION_GRADCHECK = {
    "plain": dict(shape=(1, 2, 2, 3, 5, 4)),
    "lq_gt_lk": dict(shape=(2, 2, 1, 6, 3, 3)),
    "gqa_causal_window": dict(shape=(1, 4, 2, 3, 7, 4), is_causal=True, window=3),
    "mqa_causal": dict(shape=(2, 3, 1, 2, 5, 2), is_causal=True),
    "float_mask_full_grad": dict(shape=(1, 2, 2, 3, 5, 4), mask=(1, 2, 3, 5)),
    "float_mask_broadcast_rows_grad": dict(shape=(2, 4, 2, 3, 5, 4), mask=(1, 1, 3, 5), is_causal=True),
    "float_mask_keys_grad": dict(shape=(2, 2, 1, 3, 5, 4), mask=(5,)),
    "float_mask_heads_grad": dict(shape=(2, 4, 2, 2, 4, 3), mask=(2, 4, 1, 1)),
    "bool_mask_dead_row": dict(shape=(1, 2, 1, 3, 4, 4), bool_mask=True),
    "scale": dict(shape=(1, 1, 1, 4, 4, 5), scale=0.9, is_causal=True, window=2),
}


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("name", list(ATTENTION_GRADCHECK))
def test_attention_gradcheck(name, device):
    spec = ATTENTION_GRADCHECK[name]
    B, H, Hkv, T, S, D = spec["shape"]
    q, k, v = (f64(*shape, device=device) for shape in ((B, H, T, D), (B, Hkv, S, D), (B, Hkv, S, D)))
    inputs = [q, k, v]
    if "mask" in spec:
        inputs.append(_float_mask(spec["mask"], device=device))
    elif spec.get("bool_mask"):
        m = torch.rand(B, 1, T, S) < 0.6
        m[:, :, 1] = False                                        # query 1 sees nothing
        inputs.append(m.to(device))
    kwargs = dict(is_causal=spec.get("is_causal", False), window=spec.get("window"), scale=spec.get("scale"))

    def fn(*args):
        return minivlm.attention(*args, **kwargs)

    assert gradcheck(fn, tuple(inputs), eps=1e-6, atol=1e-7, rtol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_attention_gradcheck_transposed_inputs(device):
    q = torch.randn(1, 5, 3, 4, dtype=torch.float64, device=device).transpose(1, 2).requires_grad_()
    k = torch.randn(1, 6, 1, 4, dtype=torch.float64, device=device).transpose(1, 2).requires_grad_()
    v = torch.randn(1, 1, 6, 8, dtype=torch.float64, device=device)[..., ::2].requires_grad_()
    assert gradcheck(lambda q, k, v: minivlm.attention(q, k, v, is_causal=True), (q, k, v))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("batched", [False, True])
def test_rope_gradcheck(batched, device):
    B, H, L, D = 2, 3, 4, 6
    x = f64(B, H, L, D, device=device)
    shape = (B, L, D) if batched else (L, D)
    cos, sin = f64(*shape, device=device), f64(*shape, device=device)
    assert gradcheck(minivlm.rope, (x, cos, sin))
    # x alone (cos/sin constants, the usual case, which takes only the compiled backward).
    assert gradcheck(lambda x: minivlm.rope(x, cos.detach(), sin.detach()), (x,))


# --------------------------------------------------------------------------------------------------
# opcheck
# --------------------------------------------------------------------------------------------------

def _attention_samples(dtype, grad, device="cpu"):
    seed_torch(0)
    q = torch.randn(2, 4, 5, 8, dtype=dtype, device=device, requires_grad=grad)
    k = torch.randn(2, 2, 7, 8, dtype=dtype, device=device, requires_grad=grad)
    v = torch.randn(2, 2, 7, 8, dtype=dtype, device=device, requires_grad=grad)
    fmask = torch.randn(1, 4, 5, 7, dtype=dtype, device=device)
    fmask[..., 3] = float("-inf")
    bmask = torch.rand(2, 1, 1, 7, device=device) < 0.7
    return [
        (q, k, v, None, False, 0.35, None),
        (q, k, v, None, True, 0.5, 3),
        (q, k, v, fmask.requires_grad_(grad), False, 0.35, None),
        (q, k, v, bmask, True, 1.0, None),
    ]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
@pytest.mark.parametrize("grad", [False, True], ids=["nograd", "grad"])
def test_opcheck_attention(dtype, grad, device):
    for args in _attention_samples(dtype, grad, device):
        torch.library.opcheck(torch.ops.minivlm.attention.default, args)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_attention_backward(dtype, device):
    for args in _attention_samples(dtype, False, device):
        q, k, v, mask, is_causal, scale, window = args
        out, stats = torch.ops.minivlm.attention(*args)
        go = torch.randn_like(out)
        for mask_grad in ([False, True] if mask is not None and mask.dtype != torch.bool else [False]):
            torch.library.opcheck(torch.ops.minivlm.attention_backward.default,
                                  (go, q, k, v, mask, out, stats, is_causal, scale, window, mask_grad))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=str)
def test_opcheck_rope(dtype, device):
    x = torch.randn(2, 3, 5, 8, dtype=dtype, device=device, requires_grad=True)
    for shape in ((5, 8), (2, 5, 8)):
        cos, sin = torch.randn(shape, dtype=dtype, device=device), torch.randn(shape, dtype=dtype, device=device)
        torch.library.opcheck(torch.ops.minivlm.rope.default, (x, cos, sin))
        torch.library.opcheck(torch.ops.minivlm.rope.default, (x.detach(), cos, sin))
        torch.library.opcheck(torch.ops.minivlm.rope_backward.default, (torch.randn_like(x.detach()), cos, sin))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64, torch.bfloat16], ids=str)
def test_opcheck_causal_mask(dtype, device):
    for pm in (torch.tensor([[0, 1, 1, 1, 1], [1, 1, 1, 1, 0]], device=device),
               torch.ones(1, 5, dtype=torch.bool, device=device)):
        for q_len, window in ((5, None), (2, None), (3, 2)):
            torch.library.opcheck(torch.ops.minivlm.causal_mask.default, (pm, q_len, dtype, window))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("op", ["attention", "attention_backward", "rope", "rope_backward"])
def test_opcheck_non_contiguous_inputs(op, device):
    """The fake kernels promise output layouts (empty_like of the input for rope and for the attention
    gradients); the real kernels must produce the same shapes, dtypes and strides for strided inputs
    (q and x transposed views, v with stride 2 in its last dimension)."""
    q = torch.randn(1, 5, 4, 8, device=device).transpose(1, 2)
    k = torch.randn(1, 7, 2, 8, device=device).transpose(1, 2)
    v = torch.randn(1, 2, 7, 16, device=device)[..., ::2]
    cos, sin = torch.randn(5, 8, device=device), torch.randn(5, 8, device=device)
    if op == "attention":
        args = (q.requires_grad_(), k.requires_grad_(), v.requires_grad_(), None, True, 0.3, None)
    elif op == "attention_backward":
        out, stats = torch.ops.minivlm.attention(q, k, v, None, True, 0.3, None)
        args = (torch.randn_like(out), q, k, v, None, out, stats, True, 0.3, None, False)
    elif op == "rope":
        args = (q.requires_grad_(), cos, sin)
    else:
        args = (q, cos, sin)
    torch.library.opcheck(getattr(torch.ops.minivlm, op).default, args)


# --------------------------------------------------------------------------------------------------
# torch.compile through all three ops
# --------------------------------------------------------------------------------------------------

def _decoder_attention(q, k, v, cos, sin, padding_mask):
    mask = minivlm.causal_mask(padding_mask, q.shape[2], dtype=q.dtype)
    q = minivlm.rope(q, cos[-q.shape[2]:], sin[-q.shape[2]:])
    k = minivlm.rope(k, cos, sin)
    return minivlm.attention(q, k, v, mask)


@pytest.mark.parametrize("device", DEVICES)
def test_torch_compile_fullgraph_matches_eager(device):
    torch._dynamo.reset()
    B, H, Hkv, T, S, D = 2, 4, 2, 3, 6, 8
    gen = seed_torch(0)
    base = [torch.randn(B, H, T, D, generator=gen), torch.randn(B, Hkv, S, D, generator=gen),
            torch.randn(B, Hkv, S, D, generator=gen)]
    base = [t.to(device) for t in base]
    ang = torch.arange(S)[:, None] * torch.tensor([1.0, 0.1, 0.01, 0.001]).repeat(2)
    cos, sin = ang.cos().to(device), ang.sin().to(device)
    pm = torch.tensor([[0, 1, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]], device=device)

    results = []
    for fn in (_decoder_attention, torch.compile(_decoder_attention, fullgraph=True)):
        inputs = [t.clone().requires_grad_() for t in base]
        out = fn(*inputs, cos, sin, pm)
        out.sum().backward()
        results.append([out.detach()] + [t.grad for t in inputs])
    for name, eager, compiled in zip(("out", "dq", "dk", "dv"), *results):
        torch.testing.assert_close(compiled, eager, rtol=1e-5, atol=1e-5, msg=name)
    assert results[0][0].abs().sum() > 0
