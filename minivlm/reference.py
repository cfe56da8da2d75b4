"""The naive PyTorch math behind minivlm's three kernels. Read this file first.

Each function here has exactly the contract of its compiled twin in `minivlm.ops` (same arguments, same
checks, same result up to rounding), but is written for clarity, not speed: attention builds the whole
(T x S) score matrix, rope concatenates the rotated halves, causal_mask compares index grids. The tests
hold the compiled kernels to these functions, and `minivlm.use_reference()` (or MINIVLM_REFERENCE=1) runs
every model on them instead of the kernels, so a debugger can step through the math.
"""

import torch

from ._checks import check_attention, check_causal_mask, check_rope


def accumulation_dtype(dtype: torch.dtype) -> torch.dtype:
    """The dtype the math runs in: float64 for float64 input, float32 for everything else."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def visible_band(T: int, S: int, is_causal: bool, window, device) -> torch.Tensor:
    """(T, S) bool: may query i see key j, judging by position alone?

    The queries are the LAST T of the S positions (bottom-right alignment, the KV-cache convention):
    query i sits at absolute position p = i + (S - T). Causal: j <= p. Window w: also j > p - w, so a
    query sees at most w keys, ending at itself.
    """
    i = torch.arange(T, device=device)[:, None]
    j = torch.arange(S, device=device)[None, :]
    p = i + (S - T)
    visible = torch.ones(T, S, dtype=torch.bool, device=device)
    if is_causal:
        visible &= j <= p
    if window is not None:
        visible &= j > p - window
    return visible


def attention(q, k, v, attn_mask=None, *, is_causal=False, scale=None, window=None):
    """softmax(scale * q k^T + mask) v, with rows that see no key giving 0.

    q: (B, H, T, D); k, v: (B, Hkv, S, D) with Hkv dividing H; attn_mask: bool (True = may attend)
    or float (added to the scores), broadcastable to (B, H, T, S). Returns (B, H, T, D) in q's dtype.
    """
    check_attention(q, k, v, attn_mask, is_causal, scale, window)
    B, H, T, D = q.shape
    Hkv, S = k.shape[1], k.shape[2]
    if scale is None:
        scale = D ** -0.5
    acc = accumulation_dtype(q.dtype)

    # Grouped-query attention: query head h reads key/value head h // (H // Hkv). The reference simply
    # copies each k/v head H // Hkv times; the kernel does the same by index arithmetic.
    group = H // Hkv
    k = k.to(acc).repeat_interleave(group, dim=1)                  # (B, H, S, D)
    v = v.to(acc).repeat_interleave(group, dim=1)                  # (B, H, S, D)

    scores = scale * (q.to(acc) @ k.transpose(-1, -2))            # (B, H, T, S)

    visible = visible_band(T, S, is_causal, window, q.device)      # (T, S)
    if attn_mask is not None and attn_mask.dtype == torch.bool:
        visible = visible & attn_mask                               # broadcasts to (B, H, T, S)
    elif attn_mask is not None:
        scores = scores + attn_mask.to(acc)                         # -inf entries mask, finite ones bias
    scores = scores.masked_fill(~visible, float("-inf"))

    # A numerically safe softmax. Subtracting the row max changes nothing mathematically (softmax is
    # shift invariant) but keeps exp() from overflowing. A row with no visible key has max -inf: shift
    # it by 0 instead, so every exp() is exp(-inf) = 0, the row sum is 0, and the row comes out as 0.
    row_max = scores.detach().amax(dim=-1, keepdim=True)
    row_max = torch.where(row_max == float("-inf"), torch.zeros_like(row_max), row_max)
    p = torch.exp(scores - row_max)
    row_sum = p.sum(dim=-1, keepdim=True)
    p = p / torch.where(row_sum == 0, torch.ones_like(row_sum), row_sum)
    return (p @ v).to(q.dtype)                                       # (B, H, T, D)


def rotate_half(x):
    """(x1, x2) -> (-x2, x1) on the two halves of the last dimension (the layout Llama uses)."""
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def rope(x, cos, sin):
    """Rotary position embedding: x * cos + rotate_half(x) * sin.

    x: (B, H, T, D); cos, sin: (T, D) or (B, T, D), the same for every head. Computed in float32 (float64
    for float64 x) and rounded once to x's dtype.
    """
    check_rope(x, cos, sin)
    acc = accumulation_dtype(x.dtype)
    if cos.dim() == 3:                       # (B, T, D) -> (B, 1, T, D): broadcast over heads
        cos, sin = cos[:, None], sin[:, None]
    xa = x.to(acc)
    return (xa * cos.to(acc) + rotate_half(xa) * sin.to(acc)).to(x.dtype)


def causal_mask(padding_mask, q_len, *, dtype=torch.float32, window=None):
    """The additive mask of a causal decoder: (B, 1, q_len, S), 0 = may attend, finfo(dtype).min = not.

    padding_mask: (B, S), nonzero (True) for real tokens. The queries are the last q_len positions.
    A key is visible when it is a real token, not in the future, and (with a window) among the last
    `window` positions up to the query.
    """
    check_causal_mask(padding_mask, q_len, dtype, window)
    S = padding_mask.shape[1]
    visible = visible_band(q_len, S, True, window, padding_mask.device)    # (q_len, S)
    visible = visible[None, None] & (padding_mask != 0)[:, None, None, :]  # (B, 1, q_len, S)
    zero = torch.zeros((), dtype=dtype, device=padding_mask.device)
    return torch.where(visible, zero, torch.finfo(dtype).min)
