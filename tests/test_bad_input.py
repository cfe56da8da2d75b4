"""Malformed calls raise TypeError (wrong kind of thing) or ValueError (wrong shape or value), and the
message names the function and the argument. The same holds on every path: the compiled ops, the public
ops inside use_reference(), and minivlm.reference called directly."""

import contextlib

import pytest
import torch

import minivlm
from minivlm import reference
from helpers import CUDA_DEVICES


def t(*shape, dtype=torch.float32):
    return torch.randn(*shape).to(dtype) if dtype.is_floating_point else torch.ones(*shape, dtype=dtype)


Q, K, V = t(2, 4, 3, 8), t(2, 2, 5, 8), t(2, 2, 5, 8)

# (id, function name, arguments, keyword arguments, exception, regex the message must match)
ATTENTION = [
    ("q_not_tensor", (Q.tolist(), K, V), {}, TypeError, r"^attention: q must be a torch\.Tensor, got list"),
    ("k_not_tensor", (Q, K.numpy(), V), {}, TypeError, r"^attention: k must be a torch\.Tensor, got ndarray"),
    ("v_not_tensor", (Q, K, None), {}, TypeError, r"^attention: v must be a torch\.Tensor"),
    ("q_int", (t(2, 4, 3, 8, dtype=torch.int64), K, V), {}, TypeError, r"^attention: q must be float64.*got torch\.int64"),
    ("k_int", (Q, t(2, 2, 5, 8, dtype=torch.int32), V), {}, TypeError, r"^attention: k must be float64.*int32"),
    ("v_bool", (Q, K, t(2, 2, 5, 8, dtype=torch.bool)), {}, TypeError, r"^attention: v must be float64.*bool"),
    ("q_3d", (t(4, 3, 8), K, V), {}, ValueError, r"^attention: q must be 4-D.*got shape \(4, 3, 8\)"),
    ("k_5d", (Q, t(1, 2, 2, 5, 8), V), {}, ValueError, r"^attention: k must be 4-D"),
    ("v_2d", (Q, K, t(5, 8)), {}, ValueError, r"^attention: v must be 4-D"),
    ("k_dtype_mismatch", (Q, K.double(), V), {}, TypeError, r"^attention: k has dtype torch\.float64 but q has torch\.float32"),
    ("v_dtype_mismatch", (Q, K, V.bfloat16()), {}, TypeError, r"^attention: v has dtype torch\.bfloat16"),
    ("kv_shape_mismatch", (Q, K, t(2, 2, 6, 8)), {}, ValueError, r"^attention: k and v must have the same shape"),
    ("batch_mismatch", (Q, t(3, 2, 5, 8), t(3, 2, 5, 8)), {}, ValueError, r"^attention: k has batch size 3 but q has 2"),
    ("head_dim_mismatch", (Q, t(2, 2, 5, 4), t(2, 2, 5, 4)), {}, ValueError, r"^attention: k has head_dim 4 but q has 8"),
    ("head_dim_zero", (t(2, 4, 3, 0), t(2, 2, 5, 0), t(2, 2, 5, 0)), {}, ValueError, r"^attention: head_dim must be >= 1"),
    ("heads_not_divisible", (Q, t(2, 3, 5, 8), t(2, 3, 5, 8)), {}, ValueError,
     r"^attention: k has 3 heads, which does not divide q's 4 heads"),
    ("more_kv_heads", (t(2, 2, 3, 8), t(2, 4, 5, 8), t(2, 4, 5, 8)), {}, ValueError, r"^attention: k has 4 heads"),
    ("causal_lq_gt_lk", (t(2, 4, 6, 8), K, V), dict(is_causal=True), ValueError,
     r"^attention: with is_causal .*T <= S.*T=6, S=5"),
    ("is_causal_int", (Q, K, V), dict(is_causal=1), TypeError, r"^attention: is_causal must be a bool, got int"),
    ("window_without_causal", (Q, K, V), dict(window=3), ValueError, r"^attention: window=3 needs is_causal=True"),
    ("window_zero", (Q, K, V), dict(is_causal=True, window=0), ValueError, r"^attention: window must be >= 1, got 0"),
    ("window_negative", (Q, K, V), dict(is_causal=True, window=-2), ValueError, r"^attention: window must be >= 1"),
    ("window_float", (Q, K, V), dict(is_causal=True, window=2.0), TypeError, r"^attention: window must be an int or None, got float"),
    ("window_bool", (Q, K, V), dict(is_causal=True, window=True), TypeError, r"^attention: window must be an int"),
    ("scale_str", (Q, K, V), dict(scale="0.5"), TypeError, r"^attention: scale must be a float or None, got str"),
    ("scale_tensor", (Q, K, V), dict(scale=torch.tensor(0.5)), TypeError, r"^attention: scale must be a float"),
    ("scale_nan", (Q, K, V), dict(scale=float("nan")), ValueError, r"^attention: scale must be finite"),
    ("scale_inf", (Q, K, V), dict(scale=float("inf")), ValueError, r"^attention: scale must be finite"),
    ("mask_not_tensor", (Q, K, V, [[True] * 5] * 3), {}, TypeError, r"^attention: attn_mask must be a torch\.Tensor, got list"),
    ("mask_int", (Q, K, V, torch.ones(3, 5, dtype=torch.int64)), {}, TypeError,
     r"^attention: attn_mask must be bool .* got torch\.int64"),
    ("mask_uint8", (Q, K, V, torch.ones(3, 5, dtype=torch.uint8)), {}, TypeError, r"^attention: attn_mask must be bool"),
    ("mask_wrong_keys", (Q, K, V, torch.zeros(3, 6)), {}, ValueError,
     r"^attention: attn_mask of shape \(3, 6\) does not broadcast to \(B, H, T, S\) = \(2, 4, 3, 5\)"),
    ("mask_wrong_queries", (Q, K, V, torch.zeros(1, 1, 2, 5, dtype=torch.bool)), {}, ValueError, r"^attention: attn_mask of shape"),
    ("mask_kv_heads_not_q_heads", (Q, K, V, torch.zeros(2, 2, 3, 5)), {}, ValueError, r"^attention: attn_mask of shape \(2, 2, 3, 5\)"),
    ("mask_wrong_batch", (Q, K, V, torch.zeros(3, 1, 1, 5)), {}, ValueError, r"^attention: attn_mask of shape"),
    ("mask_5d", (Q, K, V, torch.zeros(1, 2, 4, 3, 5)), {}, ValueError, r"^attention: attn_mask of shape \(1, 2, 4, 3, 5\)"),
]

X = t(2, 3, 5, 8)
COS, SIN = t(5, 8), t(5, 8)
ROPE = [
    ("x_not_tensor", (X.tolist(), COS, SIN), {}, TypeError, r"^rope: x must be a torch\.Tensor, got list"),
    ("x_int", (t(2, 3, 5, 8, dtype=torch.int64), COS, SIN), {}, TypeError, r"^rope: x must be float64.*int64"),
    ("x_3d", (t(3, 5, 8), COS, SIN), {}, ValueError, r"^rope: x must be 4-D.*\(3, 5, 8\)"),
    ("x_odd_head_dim", (t(2, 3, 5, 7), t(5, 7), t(5, 7)), {}, ValueError, r"^rope: head_dim must be even.*\(2, 3, 5, 7\)"),
    ("cos_not_tensor", (X, 0.5, SIN), {}, TypeError, r"^rope: cos must be a torch\.Tensor, got float"),
    ("sin_not_tensor", (X, COS, None), {}, TypeError, r"^rope: sin must be a torch\.Tensor, got NoneType"),
    ("cos_int", (X, t(5, 8, dtype=torch.int64), SIN), {}, TypeError, r"^rope: cos must be float64"),
    ("sin_bool", (X, COS, t(5, 8, dtype=torch.bool)), {}, TypeError, r"^rope: sin must be float64"),
    ("cos_1d", (X, t(8), SIN), {}, ValueError, r"^rope: cos must be \(length, head_dim\) or \(batch, length, head_dim\)"),
    ("cos_4d", (X, t(2, 1, 5, 8), SIN), {}, ValueError, r"^rope: cos must be \(length, head_dim\)"),
    ("cos_wrong_length", (X, t(6, 8), SIN), {}, ValueError, r"^rope: cos must have shape \(5, 8\) to match x \(2, 3, 5, 8\), got \(6, 8\)"),
    ("sin_wrong_head_dim", (X, COS, t(5, 4)), {}, ValueError, r"^rope: sin must have shape \(5, 8\)"),
    ("cos_wrong_batch", (X, t(3, 5, 8), t(3, 5, 8)), {}, ValueError, r"^rope: cos must have shape \(2, 5, 8\)"),
    ("cos_sin_differ", (X, COS, t(2, 5, 8)), {}, ValueError, r"^rope: cos and sin must have the same shape"),
]

PM = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]])
CAUSAL_MASK = [
    ("padding_not_tensor", ([[1, 1, 1]], 2), {}, TypeError, r"^causal_mask: padding_mask must be a torch\.Tensor, got list"),
    ("padding_1d", (torch.ones(4, dtype=torch.bool), 2), {}, ValueError, r"^causal_mask: padding_mask must be 2-D.*\(4,\)"),
    ("padding_3d", (torch.ones(1, 2, 4, dtype=torch.bool), 2), {}, ValueError, r"^causal_mask: padding_mask must be 2-D"),
    ("padding_float", (PM.float(), 2), {}, TypeError, r"^causal_mask: padding_mask must be bool or an integer tensor.*float32"),
    ("padding_half", (PM.half(), 2), {}, TypeError, r"^causal_mask: padding_mask must be bool or an integer"),
    ("q_len_zero", (PM, 0), {}, ValueError, r"^causal_mask: q_len must satisfy 1 <= q_len <= key_length=4, got 0"),
    ("q_len_too_long", (PM, 5), {}, ValueError, r"^causal_mask: q_len must satisfy .* got 5"),
    ("q_len_negative", (PM, -1), {}, ValueError, r"^causal_mask: q_len must satisfy"),
    ("q_len_float", (PM, 2.0), {}, TypeError, r"^causal_mask: q_len must be an int, got float"),
    ("q_len_bool", (PM, True), {}, TypeError, r"^causal_mask: q_len must be an int, got bool"),
    ("q_len_tensor", (PM, torch.tensor(2)), {}, TypeError, r"^causal_mask: q_len must be an int, got Tensor"),
    ("dtype_int", (PM, 2), dict(dtype=torch.int64), TypeError, r"^causal_mask: dtype must be float64, float32, bfloat16 or float16, got torch\.int64"),
    ("dtype_str", (PM, 2), dict(dtype="float32"), TypeError, r"^causal_mask: dtype must be"),
    ("window_zero", (PM, 2), dict(window=0), ValueError, r"^causal_mask: window must be >= 1, got 0"),
    ("window_str", (PM, 2), dict(window="3"), TypeError, r"^causal_mask: window must be an int or None, got str"),
]

CASES = ([("attention",) + c for c in ATTENTION] + [("rope",) + c for c in ROPE]
         + [("causal_mask",) + c for c in CAUSAL_MASK])


@pytest.mark.parametrize("path", ["kernel", "use_reference", "reference"])
@pytest.mark.parametrize("fn,name,args,kwargs,exc,regex", CASES, ids=[f"{c[0]}-{c[1]}" for c in CASES])
def test_bad_input_raises(path, fn, name, args, kwargs, exc, regex):
    func = getattr(reference if path == "reference" else minivlm, fn)
    ctx = minivlm.use_reference() if path == "use_reference" else contextlib.nullcontext()
    with ctx, pytest.raises(exc, match=regex):
        func(*args, **kwargs)


@pytest.mark.parametrize("path", ["kernel", "use_reference", "reference"])
def test_good_input_is_accepted(path):
    """The edges of what is allowed: the bad cases above fail for their own reason, not because the
    base arguments were wrong."""
    mod = reference if path == "reference" else minivlm
    ctx = minivlm.use_reference() if path == "use_reference" else contextlib.nullcontext()
    with ctx:
        assert mod.attention(Q, K, V).shape == Q.shape
        assert mod.attention(Q, K, V, torch.zeros(5), is_causal=True, window=1, scale=2).shape == Q.shape
        assert mod.attention(Q, K, V, torch.ones(2, 4, 3, 5, dtype=torch.bool)).shape == Q.shape
        assert mod.attention(t(2, 4, 5, 8), K, V, is_causal=True).shape == (2, 4, 5, 8)   # T == S
        assert mod.attention(t(2, 4, 6, 8), K, V).shape == (2, 4, 6, 8)                   # T > S, not causal
        assert mod.rope(X, COS, SIN).shape == X.shape
        assert mod.rope(X, t(2, 5, 8), t(2, 5, 8)).shape == X.shape
        assert mod.causal_mask(PM, 4).shape == (2, 1, 4, 4)
        assert mod.causal_mask(PM.bool(), 1, dtype=torch.bfloat16, window=1).shape == (2, 1, 1, 4)
        assert mod.causal_mask(PM.to(torch.uint8), 2, window=100).shape == (2, 1, 2, 4)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_inputs_on_two_devices_raise(device):
    """A tensor on the GPU next to one on the CPU: a ValueError naming both devices, before any kernel."""
    on = torch.device(device)
    with pytest.raises(ValueError, match=r"^attention: k is on cpu but q is on cuda"):
        minivlm.attention(Q.to(on), K, V.to(on))
    with pytest.raises(ValueError, match=r"^attention: attn_mask is on cpu but q is on cuda"):
        minivlm.attention(Q.to(on), K.to(on), V.to(on), torch.ones(3, 5, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"^rope: cos is on cpu but x is on cuda"):
        minivlm.rope(X.to(on), COS, SIN.to(on))


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_head_dim_beyond_the_cuda_kernels_raises(device):
    q = torch.randn(1, 2, 3, 264, device=device)
    with pytest.raises(ValueError, match=r"^attention: the CUDA kernels take head_dim up to 256"):
        minivlm.attention(q, q, q)


@pytest.mark.parametrize("device", CUDA_DEVICES)
def test_batch_times_heads_beyond_the_cuda_grid_raises(device):
    q = torch.randn(4097, 16, 1, 8, device=device)
    with pytest.raises(ValueError, match=r"^attention: the CUDA kernels take batch x query heads up to 65535"):
        minivlm.attention(q, q, q)
