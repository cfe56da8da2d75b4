"""minivlm's three kernels: attention, rotary embedding and the causal mask.

Each public function checks its arguments, then calls a custom op, torch.ops.minivlm.<name>. This module
defines the ops' schemas (torch.library), their fake (meta) kernels that let torch.compile trace them, and
the autograd formulas that tie each forward op to its backward op; the compiled extension `minivlm._C`
(C++ and CUDA in csrc/) only implements them, per device. The math each op computes is spelled out in
`minivlm.reference`.

Inside `with minivlm.use_reference():` (or with MINIVLM_REFERENCE=1 in the environment) the public
functions hand their arguments to the reference math instead (which checks them itself), so a reader can
step through a whole model in a debugger. That needs no compiler: without a built `minivlm._C` everything imports and runs on the reference, and only a
call that needs a kernel fails, with an error that says how to build it.
"""

import contextlib
import os
import threading

import torch

from . import _extension, reference
from ._checks import check_attention, check_causal_mask, check_rope

_state = threading.local()


def reference_enabled() -> bool:
    """True where the public ops run minivlm.reference instead of the compiled kernels."""
    flag = getattr(_state, "reference", None)
    if flag is None:
        return os.environ.get("MINIVLM_REFERENCE", "0") not in ("", "0", "false", "False")
    return flag


@contextlib.contextmanager
def use_reference(enabled: bool = True):
    """Run every minivlm op on the naive reference math (True) or the compiled kernels (False) inside."""
    previous = getattr(_state, "reference", None)
    _state.reference = enabled
    try:
        yield
    finally:
        _state.reference = previous


# --------------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------------

def attention(q, k, v, attn_mask=None, *, is_causal=False, scale=None, window=None):
    """softmax(scale * q k^T + mask) v over the visible keys; see `minivlm.reference.attention`.

    q: (B, H, T, D); k, v: (B, Hkv, S, D) with Hkv dividing H (grouped-query attention).
    attn_mask: None, bool (True = may attend) or float (added to the scores), broadcastable to
    (B, H, T, S). is_causal: query i is at position i + S - T and sees keys up to it. window: with
    is_causal, each query sees at most `window` keys ending at itself. scale defaults to D ** -0.5.
    Returns (B, H, T, D) in q's dtype; a query with no visible key gives 0.
    """
    if reference_enabled():   # the reference checks its arguments itself
        return reference.attention(q, k, v, attn_mask, is_causal=is_causal, scale=scale, window=window)
    check_attention(q, k, v, attn_mask, is_causal, scale, window)
    _extension.require("minivlm.attention")
    if scale is None:
        scale = q.shape[-1] ** -0.5
    out, _stats = torch.ops.minivlm.attention(q, k, v, attn_mask, is_causal, float(scale), window)
    return out


def rope(x, cos, sin):
    """Rotary embedding x * cos + rotate_half(x) * sin; see `minivlm.reference.rope`.

    x: (B, H, T, D) with D even; cos, sin: (T, D) or (B, T, D), shared by all heads.
    """
    if reference_enabled():
        return reference.rope(x, cos, sin)
    check_rope(x, cos, sin)
    _extension.require("minivlm.rope")
    return torch.ops.minivlm.rope(x, cos, sin)


def causal_mask(padding_mask, q_len, *, dtype=torch.float32, window=None):
    """The additive (B, 1, q_len, S) mask of a causal decoder; see `minivlm.reference.causal_mask`."""
    if reference_enabled():
        return reference.causal_mask(padding_mask, q_len, dtype=dtype, window=window)
    check_causal_mask(padding_mask, q_len, dtype, window)
    _extension.require("minivlm.causal_mask")
    return torch.ops.minivlm.causal_mask(padding_mask, q_len, dtype, window)


# --------------------------------------------------------------------------------------------------
# Schemas: the ops' signatures, defined here rather than in C++ so that they (and the fake kernels and
# autograd formulas below, registered against them) exist with or without the compiled extension. The
# extension adds the kernels (TORCH_LIBRARY_IMPL in csrc/) and, in csrc/ops.cpp, the ops that only the
# build has: cpu_isa, set_cpu_isa and cpu_isas.
# --------------------------------------------------------------------------------------------------

_library = torch.library.Library("minivlm", "DEF")    # kept alive: deleting it would remove the ops
# attention returns (out, stats): stats is (2, B, H, T) in float32 (float64 for float64 input), stats[0]
# the row maximum m of the scores (-inf for a row that sees no key) and stats[1] log of the softmax
# denominator, so the log-sum-exp is m + log(l). The backward recomputes the probabilities from them.
_library.define("attention(Tensor q, Tensor k, Tensor v, Tensor? attn_mask, bool is_causal, float scale, "
                "int? window) -> (Tensor, Tensor)")
# Returns (dq, dk, dv, dscores). dscores = dL/d(scores) on the full (B, H, T, S) grid, in the
# accumulation dtype, when mask_grad is true (attention's autograd below sums it down to the mask's
# shape); empty otherwise.
_library.define("attention_backward(Tensor grad_out, Tensor q, Tensor k, Tensor v, Tensor? attn_mask, "
                "Tensor out, Tensor stats, bool is_causal, float scale, int? window, bool mask_grad) "
                "-> (Tensor, Tensor, Tensor, Tensor)")
_library.define("rope(Tensor x, Tensor cos, Tensor sin) -> Tensor")
# The gradient of rope with respect to x (rope is linear in x, so it needs only cos and sin).
_library.define("rope_backward(Tensor grad, Tensor cos, Tensor sin) -> Tensor")
_library.define("causal_mask(Tensor padding_mask, int q_len, ScalarType dtype, int? window) -> Tensor")

_extension.load()   # the kernels, where minivlm._C is built


# --------------------------------------------------------------------------------------------------
# Fake kernels: output shapes and dtypes only, for torch.compile and meta tensors
# --------------------------------------------------------------------------------------------------

@torch.library.register_fake("minivlm::attention")
def _attention_fake(q, k, v, attn_mask, is_causal, scale, window):
    B, H, T, D = q.shape
    out = q.new_empty((B, H, T, D))
    stats = q.new_empty((2, B, H, T), dtype=reference.accumulation_dtype(q.dtype))  # row max, log(sum)
    return out, stats


@torch.library.register_fake("minivlm::attention_backward")
def _attention_backward_fake(grad_out, q, k, v, attn_mask, out, stats, is_causal, scale, window, mask_grad):
    B, H, T, _ = q.shape
    S = k.shape[2]
    shape = (B, H, T, S) if mask_grad else (0,)
    dmask = q.new_empty(shape, dtype=reference.accumulation_dtype(q.dtype))
    # The kernels return fresh contiguous tensors, whatever the inputs' strides.
    return q.new_empty(q.shape), k.new_empty(k.shape), v.new_empty(v.shape), dmask


@torch.library.register_fake("minivlm::rope")
def _rope_fake(x, cos, sin):
    return x.new_empty(x.shape)  # contiguous, like the kernel's output


@torch.library.register_fake("minivlm::rope_backward")
def _rope_backward_fake(grad, cos, sin):
    return grad.new_empty(grad.shape)


@torch.library.register_fake("minivlm::causal_mask")
def _causal_mask_fake(padding_mask, q_len, dtype, window):
    B = padding_mask.shape[0]
    return padding_mask.new_empty((B, 1, q_len, padding_mask.shape[1]), dtype=dtype)


# --------------------------------------------------------------------------------------------------
# Autograd
# --------------------------------------------------------------------------------------------------

def _attention_setup(ctx, inputs, output):
    q, k, v, attn_mask, is_causal, scale, window = inputs
    out, stats = output
    ctx.save_for_backward(q, k, v, attn_mask, out, stats)
    ctx.is_causal, ctx.scale, ctx.window = is_causal, scale, window


def _attention_backward(ctx, grad_out, _grad_stats):
    q, k, v, attn_mask, out, stats = ctx.saved_tensors
    mask_grad = attn_mask is not None and ctx.needs_input_grad[3]
    dq, dk, dv, dmask = torch.ops.minivlm.attention_backward(
        grad_out, q, k, v, attn_mask, out, stats, ctx.is_causal, ctx.scale, ctx.window, mask_grad)
    if mask_grad:
        # The kernel returns dL/dscores for the full (B, H, T, S) grid; a broadcast mask receives
        # the sum over the dimensions it was broadcast along.
        dmask = dmask.sum_to_size(attn_mask.shape).to(attn_mask.dtype)
    else:
        dmask = None
    return dq, dk, dv, dmask, None, None, None


torch.library.register_autograd("minivlm::attention", _attention_backward, setup_context=_attention_setup)


def _rope_setup(ctx, inputs, output):
    x, cos, sin = inputs
    ctx.save_for_backward(x if (ctx.needs_input_grad[1] or ctx.needs_input_grad[2]) else None, cos, sin)


def _rope_backward(ctx, grad):
    x, cos, sin = ctx.saved_tensors
    dx = torch.ops.minivlm.rope_backward(grad, cos, sin) if ctx.needs_input_grad[0] else None
    dcos = dsin = None
    if ctx.needs_input_grad[1] or ctx.needs_input_grad[2]:
        # Rarely needed (cos and sin are usually constants): plain torch math, summed over the heads.
        acc = reference.accumulation_dtype(x.dtype)
        g, xa = grad.to(acc), x.to(acc)
        shape = cos.shape if cos.dim() == 3 else (1,) + tuple(cos.shape)
        if ctx.needs_input_grad[1]:
            dcos = (g * xa).sum(dim=1).sum_to_size(shape).reshape(cos.shape).to(cos.dtype)
        if ctx.needs_input_grad[2]:
            dsin = (g * reference.rotate_half(xa)).sum(dim=1).sum_to_size(shape).reshape(sin.shape).to(sin.dtype)
    return dx, dcos, dsin


torch.library.register_autograd("minivlm::rope", _rope_backward, setup_context=_rope_setup)
