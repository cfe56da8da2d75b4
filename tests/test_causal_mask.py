"""minivlm.causal_mask against the reference and against Transformers' eager_mask, bit for bit.

The mask is exact data (0 or finfo(dtype).min), so every comparison here is torch.equal: same shape,
same dtype, same bits.
"""

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

import minivlm
from minivlm import reference
from helpers import DEVICES, DTYPES, to_device

PAD_DTYPES = (torch.bool, torch.int64, torch.int32, torch.uint8, torch.int8)


@st.composite
def mask_cases(draw, dtype):
    S = draw(st.one_of(st.just(1), st.sampled_from(range(1, 140))))
    return dict(
        dtype=dtype,
        B=draw(st.integers(1, 3)),
        S=S,
        q_len=draw(st.one_of(st.just(1), st.just(S), st.sampled_from(range(1, S + 1)))),
        window=draw(st.one_of(st.none(), st.sampled_from(range(1, S + 3)))),
        pad_dtype=draw(st.sampled_from(PAD_DTYPES)),
        padding=draw(st.sampled_from(["none", "left", "right", "random", "all"])),
        layout=draw(st.sampled_from(["contiguous", "transposed", "sliced"])),
        seed=draw(st.integers(0, 2**31 - 1)),
    )


def padding_mask(case):
    """(B, S) of 0/1 (or bool), 1 = real token, in the case's pattern and memory layout."""
    gen = torch.Generator().manual_seed(case["seed"])
    B, S = case["B"], case["S"]
    pos = torch.arange(S)[None, :]
    lengths = torch.randint(0, S + 1, (B, 1), generator=gen)
    pattern = case["padding"]
    if pattern == "none":
        pm = torch.ones(B, S, dtype=torch.bool)
    elif pattern == "left":
        pm = pos >= S - lengths
    elif pattern == "right":
        pm = pos < lengths
    elif pattern == "all":
        pm = torch.zeros(B, S, dtype=torch.bool)
    else:
        pm = torch.rand(B, S, generator=gen) < 0.7
    pm = pm.to(case["pad_dtype"])
    if case["layout"] == "transposed":
        pm = pm.t().contiguous().t()
    elif case["layout"] == "sliced":
        buf = torch.zeros(B, 2 * S, dtype=pm.dtype)
        buf[:, ::2] = pm
        buf[:, 1::2] = 1 - pm.to(torch.int64) if pm.dtype != torch.bool else ~pm   # the opposite, as bait
        pm = buf[:, ::2]
    return pm


def transformers_mask(pm, q_len, dtype, window):
    from transformers.masking_utils import causal_mask_function, eager_mask, sliding_window_causal_mask_function

    B, S = pm.shape
    fn = causal_mask_function if window is None else sliding_window_causal_mask_function(window)
    # Transformers converts the 2-D attention mask to bool before building masks.
    return eager_mask(batch_size=B, q_length=q_len, kv_length=S, q_offset=S - q_len, kv_offset=0,
                      mask_function=fn, attention_mask=pm.bool(), dtype=dtype)


def check_mask(case, device="cpu"):
    pm = padding_mask(case)
    dtype, q_len, window = case["dtype"], case["q_len"], case["window"]
    got = minivlm.causal_mask(to_device(pm, device), q_len, dtype=dtype, window=window)
    assert got.device.type == torch.device(device).type
    got = got.cpu()
    assert got.dtype == dtype and got.shape == (case["B"], 1, q_len, case["S"])
    want = reference.causal_mask(pm, q_len, dtype=dtype, window=window)
    assert torch.equal(got, want), f"differs from the reference at {(got != want).nonzero()[:5].tolist()}"
    hf = transformers_mask(pm, q_len, dtype, window)
    assert torch.equal(got, hf), f"differs from transformers' eager_mask at {(got != hf).nonzero()[:5].tolist()}"
    # Only two values ever appear.
    lo = torch.finfo(dtype).min
    assert ((got == 0) | (got == lo)).all()


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@given(data=st.data())
def test_causal_mask_matches_reference_and_transformers(dtype, device, data):
    check_mask(data.draw(mask_cases(dtype), label="case"), device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("window", [None, 1, 7, 300, 4096])
def test_causal_mask_long(dtype, window, device):
    """Lengths past every tile size: S = 700, prefill (q_len = S) and a chunk (q_len < S)."""
    for q_len in (700, 129, 1):
        case = dict(dtype=dtype, B=2, S=700, q_len=q_len, window=window, pad_dtype=torch.int64,
                    padding="left", layout="contiguous", seed=q_len)
        check_mask(case, device)


@pytest.mark.parametrize("device", DEVICES)
def test_causal_mask_by_hand(device):
    """One small case written out: sequence 0 has a padding token first, queries are the last 3 of 4."""
    pm = torch.tensor([[0, 1, 1, 1], [1, 1, 1, 1]], device=device)
    lo = torch.finfo(torch.float32).min
    got = minivlm.causal_mask(pm, 3).cpu()
    assert got.dtype == torch.float32
    visible = torch.tensor([
        [[0, 1, 0, 0], [0, 1, 1, 0], [0, 1, 1, 1]],
        [[1, 1, 0, 0], [1, 1, 1, 0], [1, 1, 1, 1]],
    ], dtype=torch.bool)[:, None]
    assert torch.equal(got, torch.where(visible, torch.tensor(0.0), torch.tensor(lo)))
    # window 2: each query sees itself and the key before it.
    got = minivlm.causal_mask(pm, 3, window=2).cpu()
    visible = torch.tensor([
        [[0, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]],
        [[1, 1, 0, 0], [0, 1, 1, 0], [0, 0, 1, 1]],
    ], dtype=torch.bool)[:, None]
    assert torch.equal(got, torch.where(visible, torch.tensor(0.0), torch.tensor(lo)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
def test_causal_mask_default_dtype_and_values(dtype, device):
    pm = torch.ones(1, 5, dtype=torch.bool, device=device)
    assert minivlm.causal_mask(pm, 5).dtype == torch.float32
    m = minivlm.causal_mask(pm, 5, dtype=dtype)
    assert m.dtype == dtype
    assert m[0, 0, 0, 1].item() == torch.finfo(dtype).min   # finfo.min, not -inf
    assert m[0, 0, 4, 0].item() == 0
