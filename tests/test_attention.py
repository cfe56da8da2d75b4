"""minivlm.attention (the compiled kernel) against the reference math, forward and backward.

How the comparison works. Every input is drawn in float64 and rounded to the dtype under test; those
rounded values are the exact inputs. The "exact" answer is `minivlm.reference.attention` run in float64
on them (float64 rounding, ~1e-16, is far below every tolerance here). The kernel's error is then bounded
elementwise by three terms, each from the numerics of the contract:

1. Output rounding: the kernel computes in float32 (float64 for float64) and rounds its result once to
   the input dtype, which costs at most the unit roundoff u of that dtype relative to the value:
   2^-8 for bfloat16 (8 significant bits), 2^-11 for float16, 2^-24 for float32, 2^-53 for float64.

2. Accumulation error, measured against a condition scale. Softmax attention has no cancellation in the
   forward: out = P v is a convex combination, so |error| <~ c * (P |v|) with c a few accumulation-dtype
   epsilons times the depth of the sums (D terms in a score, S in a row). We take c = 2e-5 for float32
   accumulation (eps32 = 1.2e-7, D + S <= ~1000 terms summed pairwise or in blocks gives ~1e-6; 2e-5
   leaves a 10x margin) and 1e-11 for float64 (same reasoning with eps64 = 2.2e-16). The backward does
   cancel (dS = P * (dP - rowsum(dO * O))), so its bounds use the absolute-value sums of the same
   products: A = P * (|dO| |V|^T + rowsum(|dO| * |O|)), dq <- scale * A |K|, dk <- scale * A^T |Q|,
   dv <- P^T |dO|, dmask <- A. For bfloat16/float16 the backward also receives O rounded to the input
   dtype (that is what autograd saves), so rowsum(dO * O) carries a relative error u: c grows by u.

3. The input's own conditioning: a score like s + (-65504) (a float16 finfo.min mask entry) cannot be
   represented in float32 to better than 2^-24 * 65504 ~ 4e-3. The reference run in the accumulation
   dtype makes exactly these roundings, so 4 * max|reference_in_acc_dtype - exact| is allowed on top.

Rows that see no key (all False / -inf / outside the causal band) must be exactly 0, with exactly 0
gradient, and nothing may be NaN anywhere.
"""


import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import minivlm
from minivlm import reference
from helpers import DEVICES, DTYPES, acc_dtype, assert_within, randn, rounding_error, to_device, unit_roundoff

HEAD_DIMS = (1, 3, 8, 16, 40, 64, 80, 128)
# c in bound term 2 (see the module docstring).
ACC_ERR = {torch.float64: 1e-11, torch.float32: 2e-5}
COND_FACTOR = 4.0


def acc_err(dtype):
    return ACC_ERR[acc_dtype(dtype)]


# --------------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------------

@st.composite
def attention_cases(draw, dtype, max_lq=100, max_lk=150, long=False):
    """A dict describing one attention call; the tensors are built from it by `build`. `long` draws
    several key blocks (S > 256) with fewer heads and smaller head dims."""
    B = draw(st.integers(1, 2))
    Hkv = draw(st.integers(1, 2 if long else 3))
    group = draw(st.integers(1, 4))          # 1 = MHA; Hkv = 1 with group > 1 = MQA; else GQA
    D = draw(st.sampled_from(HEAD_DIMS[:5] if long else HEAD_DIMS))
    # Lengths around the kernel's tiles (64 query rows, 256 keys) are drawn on purpose, the rest at random.
    # (sampled_from over a range draws lengths uniformly; st.integers would favour tiny ones.)
    if long:
        S = draw(st.one_of(st.sampled_from([256, 257, 511, 512, 513]), st.sampled_from(range(257, max_lk + 1))))
    else:
        S = draw(st.one_of(st.sampled_from([1, 2, 63, 64, 65, 127, 129]), st.sampled_from(range(1, max_lk + 1))))
    is_causal = draw(st.booleans())
    if is_causal:
        T = draw(st.one_of(st.just(1), st.just(min(S, max_lq)), st.sampled_from(range(1, min(S, max_lq) + 1))))
        window = draw(st.one_of(st.none(), st.sampled_from(range(1, S + 3))))
    else:
        T = draw(st.one_of(st.just(1), st.sampled_from([63, 64, 65]), st.sampled_from(range(1, max_lq + 1))))
        window = None
    H = Hkv * group
    mask_kind = draw(st.sampled_from(["none", "bool", "float"]))
    case = dict(dtype=dtype, B=B, Hkv=Hkv, H=H, T=T, S=S, D=D, is_causal=is_causal, window=window,
                mask_kind=mask_kind, seed=draw(st.integers(0, 2**31 - 1)))
    case["scale"] = draw(st.one_of(st.none(), st.none(), st.sampled_from([0.0, 0.3, 1.0, -0.7, 2])))
    layouts = ["contiguous", "transposed", "sliced"]
    case["q_layout"] = draw(st.sampled_from(layouts))
    case["kv_layout"] = draw(st.sampled_from(layouts + (["expanded"] if Hkv > 1 else [])))
    if mask_kind != "none":
        full = (B, H, T, S)
        keep = [draw(st.booleans()) for _ in range(4)]
        shape = [f if kp else 1 for f, kp in zip(full, keep)]
        lead_ones = 0
        while lead_ones < 4 and shape[lead_ones] == 1:
            lead_ones += 1
        shape = shape[draw(st.integers(0, lead_ones)):]      # drop some leading 1s: (S,), (T, S), ...
        case["mask_shape"] = tuple(shape)
        case["mask_layout"] = draw(st.sampled_from(["contiguous", "expanded", "strided"]))
        case["kill_rows"] = draw(st.booleans())              # force rows that see no key
        if mask_kind == "bool":
            case["mask_p"] = draw(st.sampled_from([0.0, 0.1, 0.5, 0.9]))   # fraction of False
        else:
            case["mask_dtype"] = draw(st.sampled_from([dtype, torch.float32]))
            case["mask_grad"] = draw(st.booleans())
            case["p_inf"] = draw(st.sampled_from([0.0, 0.2, 0.6]))
            case["p_min"] = draw(st.sampled_from([0.0, 0.2, 0.6]))
    return case


def _layout_mask(m, layout, full):
    """Give a mask the memory layout the case asks for (values unchanged)."""
    if layout == "expanded":
        return m.expand(full)                                     # stride 0 on every broadcast dim
    if layout == "strided" and m.dim() >= 1:
        # Every other element of a buffer whose skipped elements are bait (NaN, or the opposite bool):
        # a kernel that ignores the mask's strides reads them.
        buf = torch.empty(m.shape[:-1] + (2 * m.shape[-1],), dtype=m.dtype)
        buf[..., 0::2] = ~m if m.dtype == torch.bool else float("nan")
        buf[..., 1::2] = m
        return buf[..., 1::2]
    return m


def build(case):
    """(q, k, v, attn_mask) for a case, in its dtypes and layouts."""
    gen = torch.Generator().manual_seed(case["seed"])
    dtype, B, H, Hkv, T, S, D = (case[n] for n in ("dtype", "B", "H", "Hkv", "T", "S", "D"))
    q = randn((B, H, T, D), dtype, gen, case["q_layout"])
    k = randn((B, Hkv, S, D), dtype, gen, case["kv_layout"])
    v = randn((B, Hkv, S, D), dtype, gen, case["kv_layout"])
    mask = None
    kind = case["mask_kind"]
    if kind != "none":
        shape = case["mask_shape"]
        u = torch.rand(shape, generator=gen, dtype=torch.float64)
        if kind == "bool":
            mask = u >= case["mask_p"]                            # True = may attend
        else:
            mdt = case["mask_dtype"]
            mask = 2 * torch.randn(shape, generator=gen, dtype=torch.float64)
            u2 = torch.rand(shape, generator=gen, dtype=torch.float64)
            mask = torch.where(u2 < case["p_min"], torch.finfo(mdt).min, mask)
            mask = torch.where(u < case["p_inf"], float("-inf"), mask)
            mask = mask.to(mdt)
        if case["kill_rows"] and mask.dim() >= 2:
            rows = torch.rand(mask.shape[-2], generator=gen) < 0.3
            mask[..., rows, :] = False if kind == "bool" else float("-inf")
        mask = _layout_mask(mask, case["mask_layout"], (B, H, T, S))
    return q, k, v, mask


def call(fn, q, k, v, mask, case):
    return fn(q, k, v, mask, is_causal=case["is_causal"], scale=case["scale"], window=case["window"])


def band(T, S, is_causal, window):
    """Which (query, key) pairs the causal band allows, written out here independently of the library:
    query i sits at absolute position i + S - T; causal hides later keys, a window also hides keys
    `window` or more positions back."""
    pos = torch.arange(T).unsqueeze(1) + (S - T)
    key = torch.arange(S).unsqueeze(0)
    distance = pos - key                                   # how far back key j is from query i
    allowed = torch.ones(T, S, dtype=torch.bool)
    if is_causal:
        allowed = allowed & (distance >= 0)
    if window is not None:
        allowed = allowed & (distance < window)
    return allowed


def exact_probs(q, k, mask, case):
    """float64 probabilities P (B, H, T, S), visibility and scores, computed by the test itself."""
    group = case["H"] // case["Hkv"]
    scale = case["scale"] if case["scale"] is not None else case["D"] ** -0.5
    kr = k.detach().double().repeat_interleave(group, dim=1)
    s = scale * (q.detach().double() @ kr.transpose(-1, -2))
    vis = band(case["T"], case["S"], case["is_causal"], case["window"]).expand(s.shape)
    if mask is not None and mask.dtype == torch.bool:
        vis = vis & mask
    elif mask is not None:
        s = s + mask.detach().double()
        vis = vis & (s != float("-inf"))
    s = s.masked_fill(~vis, float("-inf"))
    m = s.amax(-1, keepdim=True)
    m = torch.where(torch.isinf(m), torch.zeros_like(m), m)
    p = torch.exp(s - m)
    p = p / p.sum(-1, keepdim=True).clamp_min(1e-300)
    return p, vis, s


def leaf(t, dtype=None, grad=True):
    t = t.detach()
    if dtype is not None:
        t = t.to(dtype)
    return t.requires_grad_(grad)


def run_reference(q, k, v, mask, case, dtype, go=None):
    """reference.attention on the inputs converted to `dtype` (exactly, for the float64 run), with grads."""
    qq, kk, vv = (leaf(t, dtype) for t in (q, k, v))
    mm = None
    if mask is not None:
        mm = mask.detach() if mask.dtype == torch.bool else leaf(mask, dtype, case.get("mask_grad", False))
    out = call(reference.attention, qq, kk, vv, mm, case)
    grads = None
    if go is not None:
        out.backward(go.to(dtype))
        grads = dict(q=qq.grad, k=kk.grad, v=vv.grad, mask=mm.grad if mm is not None and mm.requires_grad else None)
    return out.detach(), grads


# --------------------------------------------------------------------------------------------------
# The checks, shared by the property tests and the fixed large-shape tests
# --------------------------------------------------------------------------------------------------

def check_forward(case, device="cpu"):
    """The kernel runs on `device` (on copies with the same memory layouts); every reference and bound is
    computed on the CPU."""
    q, k, v, mask = build(case)
    dtype = case["dtype"]
    qd, kd, vd, md = (to_device(t, device) for t in (q, k, v, mask))
    out = call(minivlm.attention, qd, kd, vd, md, case).cpu()
    assert out.dtype == dtype
    assert out.shape == (case["B"], case["H"], case["T"], case["D"])

    exact, _ = run_reference(q, k, v, mask, case, torch.float64)
    in_acc = exact if dtype == torch.float64 else run_reference(q, k, v, mask, case, acc_dtype(dtype))[0]
    p, vis, s = exact_probs(q, k, mask, case)
    group = case["H"] // case["Hkv"]
    v_abs = v.detach().double().abs().repeat_interleave(group, dim=1)
    cond = (in_acc.double() - exact).abs().max()
    bound = rounding_error(dtype, exact) + acc_err(dtype) * (p @ v_abs) + COND_FACTOR * cond
    assert_within(out, exact, bound, f"attention output ({dtype})")

    dead = ~vis.any(-1)                                             # (B, H, T): rows that see no key
    assert (out[dead] == 0).all(), f"a query row that sees no key must output exactly 0 ({int(dead.sum())} such rows)"

    # The raw op also returns stats (2, B, H, T) in the accumulation dtype: stats[0] the row maximum m
    # of the scores (-inf for a dead row), stats[1] = log(l), l = sum_j exp(s_ij - m).
    scale = case["scale"] if case["scale"] is not None else case["D"] ** -0.5
    out2, stats = torch.ops.minivlm.attention(qd, kd, vd, md, case["is_causal"], float(scale), case["window"])
    out2, stats = out2.cpu(), stats.cpu()
    assert torch.equal(out2, out), "the public op and torch.ops.minivlm.attention disagree"
    assert stats.dtype == acc_dtype(dtype) and stats.shape == (2, case["B"], case["H"], case["T"])
    assert (stats[0][dead] == float("-inf")).all(), "the row maximum of a row that sees no key must be -inf"
    live = ~dead
    exact_m = s.amax(-1)
    exact_logl = torch.logsumexp(s - torch.where(dead, 0.0, exact_m)[..., None], dim=-1)
    # Each score s_j carries a rounding error ~eps_acc * |s_j| (a finfo.min bias included). m is one of
    # the scores; log(l) moves by the P-weighted error of s_j - m. Same c as above.
    mag_m = exact_m.abs()
    weighted = torch.where(vis, p * s.abs(), torch.zeros_like(s)).sum(-1)
    assert_within(stats[0][live], exact_m[live], acc_err(dtype) * (1 + mag_m[live]), "attention stats[0] (row max)")
    assert_within(stats[1][live], exact_logl[live], acc_err(dtype) * (1 + weighted + mag_m)[live],
                  "attention stats[1] (log of the softmax denominator)")


def check_backward(case, device="cpu"):
    q, k, v, mask = build(case)
    dtype = case["dtype"]
    mask_grad = mask is not None and mask.dtype != torch.bool and case.get("mask_grad", False)
    qq, kk, vv = (leaf(to_device(t, device)) for t in (q, k, v))
    mm = leaf(to_device(mask, device), grad=mask_grad) if mask is not None else None
    out = call(minivlm.attention, qq, kk, vv, mm, case)
    gen = torch.Generator().manual_seed(case["seed"] + 1)
    go = randn(out.shape, dtype, gen)
    out.backward(go.to(device))
    got = {name: (t.grad.cpu() if t is not None and t.grad is not None else None)
           for name, t in dict(q=qq, k=kk, v=vv, mask=mm).items()}

    _, exact = run_reference(q, k, v, mask, case, torch.float64, go)
    in_acc = exact if dtype == torch.float64 else run_reference(q, k, v, mask, case, acc_dtype(dtype), go)[1]
    out_exact, _ = run_reference(q, k, v, mask, case, torch.float64)

    # Condition scales of the backward (module docstring, term 2).
    p, vis, _ = exact_probs(q, k, mask, case)
    group = case["H"] // case["Hkv"]
    B, H, Hkv, T, S, D = (case[n] for n in ("B", "H", "Hkv", "T", "S", "D"))
    scale = abs(case["scale"] if case["scale"] is not None else D ** -0.5)
    qa = q.detach().double().abs()
    ka = k.detach().double().abs().repeat_interleave(group, dim=1)
    va = v.detach().double().abs().repeat_interleave(group, dim=1)
    ga = go.double().abs()
    a = p * (ga @ va.transpose(-1, -2) + (ga * out_exact.abs()).sum(-1, keepdim=True))
    scales = dict(
        q=scale * (a @ ka),
        k=(scale * (a.transpose(-1, -2) @ qa)).reshape(B, Hkv, group, S, D).sum(2),
        v=(p.transpose(-1, -2) @ ga).reshape(B, Hkv, group, S, D).sum(2),
    )
    if mask_grad:
        scales["mask"] = a.sum_to_size(mask.shape)
    # c for the backward: accumulation error plus, below float32, u of the saved, rounded output O.
    c = acc_err(dtype) + (unit_roundoff(dtype) if dtype in (torch.bfloat16, torch.float16) else 0.0)

    for name in ("q", "k", "v") + (("mask",) if mask_grad else ()):
        g = got[name]
        assert g is not None, f"no gradient reached {name}"
        want_dtype = mask.dtype if name == "mask" else dtype
        assert g.dtype == want_dtype, f"grad of {name} has dtype {g.dtype}, expected {want_dtype}"
        cond = (in_acc[name].double() - exact[name]).abs().max()
        bound = rounding_error(want_dtype, exact[name]) + c * scales[name] + COND_FACTOR * cond
        assert_within(g, exact[name], bound, f"d{name} ({dtype})")
    if mask is not None and not mask_grad:
        assert got["mask"] is None

    dead = ~vis.any(-1)
    assert (got["q"][dead] == 0).all(), "a query row that sees no key must get exactly 0 gradient"
    for name, g in got.items():
        if g is not None:
            assert torch.isfinite(g).all(), f"d{name} is not finite"


# --------------------------------------------------------------------------------------------------
# Property tests
# --------------------------------------------------------------------------------------------------

# One property per dtype, so that each dtype gets the profile's full number of examples.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_forward_matches_reference(dtype, device, data):
    case = data.draw(attention_cases(dtype), label="case")
    check_forward(case, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_backward_matches_reference(dtype, device, data):
    case = data.draw(attention_cases(dtype, max_lq=80, max_lk=130), label="case")
    check_backward(case, device)


# Several key blocks: fewer examples (each is larger), forward and backward in one go.
@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@settings(max_examples=max(5, settings().max_examples // 6))
@given(data=st.data())
def test_long_sequences_match_reference(dtype, device, data):
    case = data.draw(attention_cases(dtype, max_lq=140, max_lk=700, long=True), label="case")
    check_forward(case, device)
    check_backward(case, device)


# Shapes that cross the kernel's tiles: more than 64 query rows and more than 256 keys, with ragged
# last tiles (T = 130 = 2*64 + 2, S = 300, 513 = 2*256 + 1), long decode rows, and masks.
LARGE = [
    dict(B=1, Hkv=1, H=2, T=130, S=300, D=64, is_causal=True, window=None, mask_kind="none"),
    dict(B=1, Hkv=2, H=4, T=70, S=513, D=40, is_causal=False, window=None, mask_kind="float",
         mask_shape=(1, 1, 70, 513), mask_layout="contiguous", kill_rows=True, mask_dtype=None, mask_grad=True, p_inf=0.2, p_min=0.2),
    dict(B=2, Hkv=1, H=1, T=257, S=257, D=16, is_causal=True, window=100, mask_kind="bool",
         mask_shape=(2, 1, 1, 257), mask_layout="contiguous", kill_rows=False, mask_p=0.1),
    dict(B=1, Hkv=1, H=3, T=1, S=600, D=128, is_causal=True, window=None, mask_kind="none"),
    dict(B=1, Hkv=3, H=3, T=100, S=40, D=8, is_causal=False, window=None, mask_kind="bool",
         mask_shape=(100, 40), mask_layout="strided", kill_rows=True, mask_p=0.5),
    # Decoding with a group of 4 query heads per kv head, a window reaching back over a block boundary.
    dict(B=2, Hkv=2, H=8, T=1, S=700, D=64, is_causal=True, window=300, mask_kind="bool",
         mask_shape=(2, 1, 1, 700), mask_layout="contiguous", kill_rows=False, mask_p=0.1),
    # A narrow window far from the start: whole key blocks before the band must be skipped, not read.
    dict(B=1, Hkv=1, H=2, T=200, S=1000, D=32, is_causal=True, window=50, mask_kind="float",
         mask_shape=(1, 2, 1, 1000), mask_layout="expanded", kill_rows=False, mask_dtype=None,
         mask_grad=True, p_inf=0.1, p_min=0.1),
]


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("index", range(len(LARGE)))
def test_large_shapes_cross_tiles(index, dtype, device):
    case = dict(LARGE[index], dtype=dtype, scale=None, seed=1234 + index,
                q_layout="transposed" if index % 2 else "contiguous", kv_layout="contiguous")
    if case.get("mask_dtype", "x") is None:
        case["mask_dtype"] = dtype
    check_forward(case, device)
    check_backward(case, device)


# --------------------------------------------------------------------------------------------------
# Deterministic tests of the contract, independent of the reference
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_output_dtype_and_shape(dtype, device):
    q = torch.randn(2, 6, 5, 24).to(device, dtype)
    k = torch.randn(2, 2, 9, 24).to(device, dtype)
    v = torch.randn(2, 2, 9, 24).to(device, dtype)
    out = minivlm.attention(q, k, v)
    assert out.dtype == dtype and out.shape == (2, 6, 5, 24) and out.device == q.device
    out = minivlm.attention(q, k, v, torch.zeros(9, dtype=torch.float32, device=device), is_causal=True, window=3)
    assert out.dtype == dtype and out.shape == (2, 6, 5, 24)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_finfo_min_row_is_not_masked(dtype, device):
    """finfo(dtype).min is a finite bias, not a mask: a row whose every key has it is a uniform average
    (as in Transformers' eager attention); only -inf (or False) masks."""
    B, H, T, S, D = 1, 2, 4, 7, 16
    q = torch.zeros(B, H, T, D, dtype=dtype)           # all scores 0, so the biases alone decide
    k = torch.randn(B, H, S, D).to(dtype)
    v = torch.randn(B, H, S, D).to(dtype)
    lo = torch.finfo(dtype).min
    mask = torch.zeros(T, S, dtype=dtype)
    mask[0] = lo                                          # every key at finfo.min: uniform over all 7
    mask[1, :3] = lo                                      # 3 keys at finfo.min: uniform over the other 4
    mask[2] = float("-inf")                               # truly masked: 0
    mask[3, 1:] = float("-inf")
    mask[3, 0] = lo                                       # one finite key, however negative: all weight
    qq, kk, vv, mm = (t.detach().to(device).requires_grad_() for t in (q, k, v, mask))
    out = minivlm.attention(qq, kk, vv, mm)
    g = torch.randn(out.shape).to(dtype)
    out.backward(g.to(device))
    out = out.detach().cpu()
    grads = {name: t.grad.cpu() for name, t in zip("qkvm", (qq, kk, vv, mm))}
    u = unit_roundoff(dtype) * 4 + 1e-6
    v64 = v.double()
    torch.testing.assert_close(out[:, :, 0].double(), v64.mean(2), rtol=u, atol=u)
    torch.testing.assert_close(out[:, :, 1].double(), v64[:, :, 3:].mean(2), rtol=u, atol=u)
    assert (out[:, :, 2] == 0).all()
    torch.testing.assert_close(out[:, :, 3].double(), v64[:, :, 0], rtol=u, atol=u)
    assert (grads["q"][:, :, 2] == 0).all() and (grads["m"][2] == 0).all()
    # The gradients too treat finfo.min as a finite bias: the uniform rows' probabilities are 1/7 and 1/4
    # in the backward as well (recomputing them from a log-sum-exp m + log(l) rounded into one number
    # would lose log(l) next to finfo.min and give 1 for each key).
    leaves64 = [t.double().requires_grad_() for t in (q, k, v, mask)]
    reference.attention(*leaves64).backward(g.double())
    for name, grad, t64 in zip(("q", "k", "v", "mask"), grads.values(), leaves64):
        assert torch.isfinite(grad).all(), name
        tol = 4 * unit_roundoff(dtype) + 1e-5
        torch.testing.assert_close(grad.double(), t64.grad, rtol=tol, atol=tol * t64.grad.abs().max().item(),
                                   msg=lambda m, name=name: f"d{name}: {m}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_left_padded_causal_mask_rows_stay_finite(dtype, device):
    """The Transformers pattern: left padding through causal_mask, in the model's dtype. A padded query's
    row is finfo.min everywhere: finite, so it is a softmax over all keys (as in Transformers' eager
    attention), never NaN and never the 0 of a truly masked row."""
    pad = torch.tensor([[0, 0, 1, 1, 1, 1], [1, 1, 1, 1, 1, 1]])
    q = torch.randn(2, 4, 6, 8).to(dtype)
    k = torch.randn(2, 2, 6, 8).to(dtype)
    v = torch.randn(2, 2, 6, 8).to(dtype)
    mask = minivlm.causal_mask(pad.to(device), 6, dtype=dtype).cpu()
    out = minivlm.attention(q.to(device), k.to(device), v.to(device), mask.to(device)).cpu()
    assert torch.isfinite(out).all()
    exact = reference.attention(q.double(), k.double(), v.double(), mask.double())
    acc = acc_dtype(dtype)
    in_acc = reference.attention(q.to(acc), k.to(acc), v.to(acc), mask.to(acc))
    # Bound as in the module docstring: output rounding, float32 accumulation, and the rounding of
    # s + finfo.min in the accumulation dtype (large for float16's -65504), measured on the reference.
    cond = (in_acc.double() - exact).abs().max()
    tol = rounding_error(dtype, exact) + ACC_ERR[acc] * 2 + COND_FACTOR * cond
    assert_within(out, exact, tol, "attention with a left-padded causal_mask")
    row = out[0, :, 0].double()                         # sequence 0, query 0: a padding token
    assert (row != 0).any()
    if torch.finfo(dtype).min * torch.finfo(acc).eps < -1e6:
        # finfo.min swamps every score in the accumulation dtype: all 6 keys weigh the same.
        want = v[0].double().mean(1).repeat_interleave(2, dim=0)
        torch.testing.assert_close(row, want, rtol=unit_roundoff(dtype) * 4, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_gqa_head_mapping(dtype, device):
    """Query head h reads key/value head h // (H // Hkv): make each kv head's values the constant h."""
    B, H, Hkv, L, D = 2, 6, 2, 5, 8
    q = torch.randn(B, H, L, D).to(dtype)
    k = torch.randn(B, Hkv, L, D).to(dtype)
    v = torch.arange(Hkv, dtype=dtype).reshape(1, Hkv, 1, 1).expand(B, Hkv, L, D).contiguous()
    out = minivlm.attention(q.to(device), k.to(device), v.to(device), is_causal=True).cpu()
    want = (torch.arange(H) // (H // Hkv)).to(torch.float64).reshape(1, H, 1, 1).expand(B, H, L, D)
    torch.testing.assert_close(out.double(), want, rtol=0, atol=unit_roundoff(dtype) * 4)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("window", [None, 1, 3, 50])
@pytest.mark.parametrize("T,S", [(1, 1), (1, 9), (4, 9), (9, 9), (70, 300)])
def test_causal_band_alignment(T, S, window, device):
    """Bottom-right alignment: with q = 0 every visible key weighs the same, and v_j = j makes the output
    the mean visible key position, i.e. query i (at position p = i + S - T) averages the keys
    max(0, p - window + 1) .. p."""
    D = 4
    q = torch.zeros(1, 1, T, D, dtype=torch.float64)
    k = torch.randn(1, 1, S, D, dtype=torch.float64)
    v = torch.arange(S, dtype=torch.float64).reshape(1, 1, S, 1).expand(1, 1, S, D)
    out = minivlm.attention(q.to(device), k.to(device), v.to(device), is_causal=True, window=window).cpu()
    for i in range(T):
        p = i + S - T
        lo = 0 if window is None else max(0, p - window + 1)
        assert out[0, 0, i, 0].item() == pytest.approx((lo + p) / 2, rel=1e-12, abs=1e-12), i


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_scale_argument(dtype, device):
    B, H, T, S, D = 1, 2, 5, 11, 16
    q = torch.randn(B, H, T, D).to(dtype)
    k = torch.randn(B, H, S, D).to(dtype)
    v = torch.randn(B, H, S, D).to(dtype)
    tol = unit_roundoff(dtype) * 4 + 2e-5

    def attention(*args, **kwargs):
        return minivlm.attention(*(t.to(device) for t in args), **kwargs).cpu()

    for scale in (0.05, 0.25, 1, 3.0, -0.5):
        out = attention(q, k, v, scale=scale)
        exact = reference.attention(q.double(), k.double(), v.double(), scale=float(scale))
        torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol * 2, msg=f"scale={scale}")
    # The default is D ** -0.5, and scale=0 makes every visible key weigh the same.
    torch.testing.assert_close(attention(q, k, v), attention(q, k, v, scale=D ** -0.5))
    out0 = attention(q, k, v, scale=0.0, is_causal=True)
    for i in range(T):
        want = v[:, :, : i + S - T + 1].double().mean(2)
        torch.testing.assert_close(out0[:, :, i].double(), want, rtol=tol, atol=tol)
    # A different scale must give a different result (the argument is not ignored).
    assert not torch.allclose(attention(q, k, v, scale=3.0).double(), attention(q, k, v).double(), atol=1e-2)


@pytest.mark.parametrize("device", DEVICES)
def test_no_nan_when_everything_is_masked(device):
    q = torch.randn(2, 4, 3, 8, device=device, requires_grad=True)
    k = torch.randn(2, 2, 5, 8, device=device, requires_grad=True)
    v = torch.randn(2, 2, 5, 8, device=device, requires_grad=True)
    for mask in (torch.zeros(5, dtype=torch.bool, device=device),
                 torch.full((2, 1, 3, 5), float("-inf"), device=device, requires_grad=True)):
        out = minivlm.attention(q, k, v, mask)
        assert (out == 0).all()
        out.backward(torch.randn_like(out))
        for t in (q, k, v) + ((mask,) if mask.requires_grad else ()):
            assert torch.isfinite(t.grad).all() and (t.grad == 0).all()
            t.grad = None


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=str)
def test_odd_head_dims_and_single_key(dtype, device):
    """The smallest shapes: one key, head_dim 1 and other odd sizes, T = S = 1."""
    for D in (1, 3, 5, 7, 33, 65, 127):
        for T, S in ((1, 1), (3, 1), (1, 2)):
            q = torch.randn(1, 1, T, D).to(dtype)
            k = torch.randn(1, 1, S, D).to(dtype)
            v = torch.randn(1, 1, S, D).to(dtype)
            out = minivlm.attention(q.to(device), k.to(device), v.to(device)).cpu()
            exact = reference.attention(q.double(), k.double(), v.double())
            tol = unit_roundoff(dtype) * 2 + 2e-5
            torch.testing.assert_close(out.double(), exact, rtol=tol, atol=tol, msg=f"D={D} T={T} S={S}")
