"""The benchmarks' ceilings and work counts (minivlm.tools.bench.ceiling): exact counts on small shapes, and
ceilings that come out as positive, finite rates. No timing is asserted."""

import math

import pytest
import torch
from torch import nn

from minivlm import ops
from minivlm.tools.bench import ceiling
from minivlm.tools.bench.ceiling import (Work, WorkCounter, attention_bytes, attention_flops, causal_mask_bytes,
                                         matmul_flops, mean_segment, rope_bytes)


def test_matmul_flops():
    assert matmul_flops(2, 3, 4) == 2 * 2 * 3 * 4 == 48
    assert matmul_flops(2, 3, 4, batch=5) == 240


def test_attention_flops():
    # q k^T and p v: 2 * B*H*T*S*D each.
    assert attention_flops(1, 2, 4, 4, 8, causal=False) == 4 * 1 * 2 * 4 * 4 * 8 == 1024
    assert attention_flops(1, 2, 4, 4, 8, causal=True) == 512                     # square and causal: half
    assert attention_flops(1, 2, 4, 4, 8, causal=False, backward=True) == 2560    # backward: 2.5x
    assert attention_flops(1, 2, 4, 4, 8, causal=True, backward=True) == 1280
    # One query at the end of 5 keys sees them all: causal or not, every pair counts.
    assert attention_flops(3, 2, 1, 5, 8, causal=True) == attention_flops(3, 2, 1, 5, 8, causal=False) == 960


def test_attention_bytes():
    # q (1, 4, 1, 8) read and the output written: 2 * 32 elements; k and v (1, 2, 3, 8): 2 * 48.
    assert attention_bytes(1, 4, 2, 1, 3, 8, itemsize=4) == (2 * 32 + 2 * 48) * 4 == 640
    assert attention_bytes(1, 4, 2, 1, 3, 8, itemsize=2) == 320


def test_rope_and_causal_mask_bytes():
    # x (1, 2, 3, 4): 24 elements read and 24 written; cos and sin (3, 4): 12 each.
    assert rope_bytes(1, 2, 3, 4, itemsize=4) == (48 + 24) * 4 == 288
    # The (2, 3) bool padding mask read (6 bytes), the (2, 1, 3, 3) float32 mask written (72 bytes).
    assert causal_mask_bytes(2, 3, 3, itemsize=4) == 78


def test_work_rate_and_fraction():
    flops, moved = Work(3e9, "FLOP"), Work(2e9, "B")
    assert flops.ceiling == "matmul_float32" and moved.ceiling == "copy"
    assert Work(1, "FLOP", torch.bfloat16).ceiling == "matmul_bfloat16"
    assert flops.rate(1.5) == pytest.approx(2.0) and flops.rate_unit() == "GFLOP/s"
    ceilings = {"matmul_float32": ceiling.Ceiling("matmul_float32", 8.0, "GFLOP/s", ""),
                "copy": ceiling.Ceiling("copy", 4.0, "GB/s", "")}
    r = ceiling.fraction(flops, 1.5, ceilings)
    assert r["rate"] == pytest.approx(2.0) and r["fraction"] == pytest.approx(0.25) and r["unit"] == "GFLOP/s"
    r = ceiling.fraction(moved, 0.25, ceilings)                   # 8 GB/s against a 4 GB/s copy: above 1
    assert r["fraction"] == pytest.approx(2.0) and r["ceiling"] == "copy"
    assert ceiling.fmt_fraction(r) == "8 GB/s 200%"
    assert ceiling.fmt_fraction({"rate": 1.234, "unit": "GB/s", "fraction": 0.0123}) == "1.23 GB/s 1.2%"
    assert ceiling.fmt_fraction(None) == "-"


def test_ceilings_are_positive_rates():
    c = ceiling.matmul_ceiling(torch.float32, n=128, repeats=1)
    assert c.name == "matmul_float32" and c.unit == "GFLOP/s" and 0 < c.rate < math.inf
    c = ceiling.copy_ceiling(nbytes=4 << 20, repeats=1)
    assert c.name == "copy" and c.unit == "GB/s" and 0 < c.rate < math.inf
    assert "4 MiB" in c.how
    llc = ceiling.last_level_cache_bytes()
    assert llc is None or llc > 0
    assert (256 << 20) <= ceiling.copy_buffer_bytes(torch.device("cpu")) <= (1 << 30)


class Tiny(nn.Module):
    """An embedding, a linear layer and a head tied to the embedding, a convolution, and attention."""

    def __init__(self):
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.proj = nn.Linear(4, 8)
        self.head = nn.Linear(4, 10, bias=False)
        self.head.weight = self.embed.weight                # one Parameter under two names
        self.conv = nn.Conv2d(3, 4, kernel_size=2, stride=2)

    def forward(self, ids, image):
        x = self.embed(ids)                                  # (1, 2, 4): 2 rows of 4 looked up
        h = self.proj(x)                                     # (1, 2, 8)
        q = h.view(1, 2, 2, 4).transpose(1, 2)               # (B=1, H=2, T=2, D=4)
        k = h[:, :, :4].reshape(1, 1, 2, 4)                  # (B=1, Hkv=1, S=2, D=4)
        y = ops.attention(q, k, k, is_causal=True)
        return self.head(x), self.conv(image), y


# What Tiny's forward must count, by hand:
#   proj: 2 rows x 4 inputs x 8 outputs x 2          = 128    head: 2 rows x 4 x 10 x 2 = 160
#   conv: output (1, 4, 2, 2) = 16 elements x (3 channels x 2 x 2 kernel = 12) x 2    = 384
#   attention: 4 * B*H*T*S*D = 4*1*2*2*2*4 = 128, causal and square: 64
#   weights read: proj 8*4 + 8 = 40 floats, the tied embedding/head 10*4 = 40 (read whole by the head;
#   the embedding's 2 looked-up rows, 8 floats, add to it), conv 4*3*2*2 + 4 = 52: 140 floats = 560 bytes
#   keys and values: k (1, 1, 2, 4) read as both k and v: 2 * 8 floats = 64 bytes
TINY = {"matmul_flops": 128 + 160 + 384, "attention_flops": 64, "weight_bytes": 560, "kv_bytes": 64}


@pytest.mark.parametrize("mode", [torch.inference_mode, torch.enable_grad], ids=["inference", "grad"])
def test_work_counter_counts_a_tiny_model(mode):
    """Exact counts, whether the ops arrive whole (inference: linear, conv2d) or in parts (addmm, mm)."""
    torch.manual_seed(0)
    model = Tiny()
    ids, image = torch.tensor([[1, 2]]), torch.randn(1, 3, 4, 4)
    with mode(), WorkCounter(model) as counter:
        model(ids, image)
    s = counter.segments[0]
    assert {name: getattr(s, name) for name in TINY} == TINY
    assert s.flops == 736 and s.bytes == 624
    assert s.to_json()["flops"] == 736


def test_work_counter_finds_parameters_that_share_one_buffer():
    """Parameters that are views of one flat buffer (as the memory-mapped loader makes them) are found by
    address, each counted once however many views of it an op is given."""
    flat = torch.randn(8 * 4 + 4 * 8)
    a, b = nn.Linear(4, 8, bias=False), nn.Linear(8, 4, bias=False)
    a.weight = nn.Parameter(flat[:32].view(8, 4))
    b.weight = nn.Parameter(flat[32:].view(4, 8))
    model = nn.Sequential(a, b)
    with torch.inference_mode(), WorkCounter(model) as counter:
        model(torch.randn(3, 4))
        b(a(torch.randn(1, 4)))                             # the same weights again: not counted twice
        counter.new_segment()
        a(torch.randn(1, 4))
    first, second = counter.segments
    assert first.weight_bytes == 64 * 4 and second.weight_bytes == 32 * 4
    assert first.matmul_flops == 2 * 4 * 64 and second.matmul_flops == 2 * 32
    mean = mean_segment(counter.segments)
    assert mean.weight_bytes == 48 * 4 and mean.matmul_flops == (512 + 64) / 2
