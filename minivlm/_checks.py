"""Argument checks shared by the compiled ops (`minivlm.ops`) and the reference math (`minivlm.reference`),
and by the models' entry points (token ids, keyword arguments).

Both op paths promise the same contract, so they validate the same way: every malformed call raises a
TypeError (wrong kind of thing) or ValueError (right kind, wrong shape or value) whose message names the
function, the argument, what was expected and what arrived. The models keep to the same rule.
"""

import contextlib
import contextvars
import functools
import inspect

import torch

FLOAT_DTYPES = (torch.float64, torch.float32, torch.bfloat16, torch.float16)


def _tensor(fn, name, t):
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{fn}: {name} must be a torch.Tensor, got {type(t).__name__}")


def _float_dtype(fn, name, t):
    if t.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: {name} must be float64, float32, bfloat16 or float16, got {t.dtype}")


def _ndim(fn, name, t, ndims, layout):
    if t.dim() not in ndims:
        raise ValueError(f"{fn}: {name} must be {layout}, got shape {tuple(t.shape)}")


def _same_device(fn, ref_name, ref, name, t):
    if t.device != ref.device:
        raise ValueError(f"{fn}: {name} is on {t.device} but {ref_name} is on {ref.device}")


def _optional_int(fn, name, value, minimum):
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{fn}: {name} must be an int or None, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"{fn}: {name} must be >= {minimum}, got {value}")


# csrc/cuda/attention.cuh: kMaxHeadDim, the largest head the CUDA kernels hold in registers.
CUDA_MAX_HEAD_DIM = 256
# csrc/cuda/attention.cuh: kMaxGridRows. The CUDA launchers give one grid row (gridDim.y, at most 65535) to
# each (batch, query head), and check it again themselves (check_grid_rows).
CUDA_MAX_BATCH_HEADS = 65535


def check_attention(q, k, v, attn_mask, is_causal, scale, window):
    fn = "attention"
    for name, t in (("q", q), ("k", k), ("v", v)):
        _tensor(fn, name, t)
        _float_dtype(fn, name, t)
        _ndim(fn, name, t, (4,), "4-D (batch, heads, length, head_dim)")
    for name, t in (("k", k), ("v", v)):
        if t.dtype != q.dtype:
            raise TypeError(f"{fn}: {name} has dtype {t.dtype} but q has {q.dtype}; q, k and v must share one dtype")
        _same_device(fn, "q", q, name, t)
    B, H, T, D = q.shape
    if k.shape != v.shape:
        raise ValueError(f"{fn}: k and v must have the same shape, got k {tuple(k.shape)} and v {tuple(v.shape)}")
    Bk, Hkv, S, Dk = k.shape
    if Bk != B:
        raise ValueError(f"{fn}: k has batch size {Bk} but q has {B}")
    if Dk != D:
        raise ValueError(f"{fn}: k has head_dim {Dk} but q has {D}")
    if D == 0:
        raise ValueError(f"{fn}: head_dim must be >= 1, got q of shape {tuple(q.shape)}")
    if Hkv == 0 or H % Hkv != 0:
        raise ValueError(f"{fn}: k has {Hkv} heads, which does not divide q's {H} heads")
    if q.device.type == "cuda" and D > CUDA_MAX_HEAD_DIM:
        raise ValueError(f"{fn}: the CUDA kernels take head_dim up to {CUDA_MAX_HEAD_DIM} (32 lanes x 8 values "
                         f"per lane), got q of shape {tuple(q.shape)}; the CPU kernels take any head_dim")
    if q.device.type == "cuda" and B * H > CUDA_MAX_BATCH_HEADS:
        raise ValueError(f"{fn}: the CUDA kernels take batch x query heads up to {CUDA_MAX_BATCH_HEADS} (one "
                         f"grid row per (batch, head)), got {B} x {H} = {B * H}; split the batch")
    if not isinstance(is_causal, bool):
        raise TypeError(f"{fn}: is_causal must be a bool, got {type(is_causal).__name__}")
    if is_causal and T > S:
        raise ValueError(
            f"{fn}: with is_causal the queries are the last T of the S key positions, so T <= S is "
            f"required; got T={T}, S={S}")
    _optional_int(fn, "window", window, 1)
    if window is not None and not is_causal:
        raise ValueError(f"{fn}: window={window} needs is_causal=True (a sliding window is a causal band)")
    if scale is not None:
        if isinstance(scale, bool) or not isinstance(scale, (int, float)):
            raise TypeError(f"{fn}: scale must be a float or None, got {type(scale).__name__}")
        if scale != scale or scale in (float("inf"), float("-inf")):
            raise ValueError(f"{fn}: scale must be finite, got {scale}")
    if attn_mask is not None:
        _tensor(fn, "attn_mask", attn_mask)
        if attn_mask.dtype != torch.bool and attn_mask.dtype not in FLOAT_DTYPES:
            raise TypeError(
                f"{fn}: attn_mask must be bool (True = may attend) or a floating tensor added to the "
                f"scores, got {attn_mask.dtype}")
        _same_device(fn, "q", q, "attn_mask", attn_mask)
        full = (B, H, T, S)
        ok = attn_mask.dim() <= 4 and all(
            m in (1, f) for m, f in zip(reversed(attn_mask.shape), reversed(full)))
        if not ok:
            raise ValueError(
                f"{fn}: attn_mask of shape {tuple(attn_mask.shape)} does not broadcast to "
                f"(B, H, T, S) = {full}")


def check_rope(x, cos, sin):
    fn = "rope"
    _tensor(fn, "x", x)
    _float_dtype(fn, "x", x)
    _ndim(fn, "x", x, (4,), "4-D (batch, heads, length, head_dim)")
    B, H, T, D = x.shape
    if D % 2 != 0:
        raise ValueError(f"{fn}: head_dim must be even to rotate its two halves, got x of shape {tuple(x.shape)}")
    for name, t in (("cos", cos), ("sin", sin)):
        _tensor(fn, name, t)
        _float_dtype(fn, name, t)
        _same_device(fn, "x", x, name, t)
        _ndim(fn, name, t, (2, 3), "(length, head_dim) or (batch, length, head_dim)")
        want = (T, D) if t.dim() == 2 else (B, T, D)
        if tuple(t.shape) != want:
            raise ValueError(f"{fn}: {name} must have shape {want} to match x {tuple(x.shape)}, got {tuple(t.shape)}")
    if cos.shape != sin.shape:
        raise ValueError(f"{fn}: cos and sin must have the same shape, got {tuple(cos.shape)} and {tuple(sin.shape)}")


def check_causal_mask(padding_mask, q_len, dtype, window):
    fn = "causal_mask"
    _tensor(fn, "padding_mask", padding_mask)
    _ndim(fn, "padding_mask", padding_mask, (2,), "2-D (batch, key_length)")
    if padding_mask.is_floating_point() or padding_mask.is_complex():
        raise TypeError(f"{fn}: padding_mask must be bool or an integer tensor of 0/1, got {padding_mask.dtype}")
    if isinstance(q_len, bool) or not isinstance(q_len, int):
        raise TypeError(f"{fn}: q_len must be an int, got {type(q_len).__name__}")
    S = padding_mask.shape[1]
    if not 1 <= q_len <= S:
        raise ValueError(f"{fn}: q_len must satisfy 1 <= q_len <= key_length={S}, got {q_len}")
    if not isinstance(dtype, torch.dtype) or dtype not in FLOAT_DTYPES:
        raise TypeError(f"{fn}: dtype must be float64, float32, bfloat16 or float16, got {dtype}")
    _optional_int(fn, "window", window, 1)


# -- the models' entry points ------------------------------------------------------------------------------

# True inside generate's decode steps. Every input there was made by generate from inputs checked at the
# prefill: the tokens fed back were chosen from the logits (or are the pad id, checked against the logits'
# width), and an attention mask is passed only when the prompt has padding. So the models check nothing
# that costs a device sync in a step.
_DECODE_STEP = contextvars.ContextVar("minivlm_decode_step", default=False)


@contextlib.contextmanager
def decode_step():
    """generate runs each decode step in this block: check_token_ids and has_padding do not sync."""
    token = _DECODE_STEP.set(True)
    try:
        yield
    finally:
        _DECODE_STEP.reset(token)


def in_decode_step() -> bool:
    """True inside generate's decode steps (decode_step()), where inputs need no check that syncs."""
    return _DECODE_STEP.get()


def has_padding(attention_mask) -> bool:
    """Whether attention_mask ((B, S), 1 = real token, 0 = pad; or None) holds a pad. One device sync,
    except inside decode_step(), where generate passes a mask only when the prompt is padded."""
    if attention_mask is None:
        return False
    return _DECODE_STEP.get() or not bool(attention_mask.all())


def check_token_ids(name, ids, vocab_size, vocab="vocab_size"):
    """ValueError unless every id lies in [0, vocab_size), where an embedding lookup would fail with an
    IndexError (CPU) or a device-side assert (CUDA). Costs one device sync (min and max together); nothing
    for ids=None (inputs_embeds were given) or inside decode_step()."""
    if ids is None or _DECODE_STEP.get():
        return
    if not isinstance(ids, torch.Tensor) or ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
        got = ids.dtype if isinstance(ids, torch.Tensor) else type(ids).__name__
        raise TypeError(f"{name}: expected an integer tensor of token ids, got {got}")
    if ids.numel() == 0:
        return
    low, high = torch.stack(torch.aminmax(ids)).tolist()
    if low < 0 or high >= vocab_size:
        raise ValueError(f"{name}: ids must lie in [0, {vocab}={vocab_size}), got ids from {low} to {high}")


def unknown_kwargs_error(method: str, given, takes) -> TypeError:
    """The TypeError for keyword arguments in `given` that `method` (e.g. "Model.generate()") does not take:
    it names them and lists the arguments `takes`."""
    unknown = [name for name in given if name not in takes]
    what = (f"an unexpected keyword argument {unknown[0]!r}" if len(unknown) == 1 else
            "unexpected keyword arguments " + ", ".join(map(repr, unknown)))
    return TypeError(f"{method} got {what}; it takes {', '.join(takes)}")


def rejects_unknown_kwargs(method):
    """Decorates a model's forward (or encode, decode): a keyword argument it does not take raises
    unknown_kwargs_error, which lists the arguments it takes (Python's own TypeError lists none)."""
    takes = [p.name for p in list(inspect.signature(method).parameters.values())[1:]      # without self
             if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)]
    known = frozenset(takes)

    @functools.wraps(method)
    def checked(self, *args, **kwargs):
        if not known.issuperset(kwargs):
            raise unknown_kwargs_error(f"{type(self).__name__}.{method.__name__}()", kwargs, takes)
        return method(self, *args, **kwargs)
    return checked
