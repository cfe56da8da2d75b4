# %% [markdown]
# # Tutorial 1: from naive attention to the online softmax that minivlm's kernel runs
#
# Run it:  `python tutorials/01_online_softmax.py`
#
# It builds attention three ways on one small example and shows they agree:
#
# 1. the textbook formula, with the whole (L x L) score matrix;
# 2. the online softmax of FlashAttention in plain Python, one block of keys at a time, which is what
#    csrc/cpu/attention_forward.cpp does in C++ (read docs/kernels.md beside it);
# 3. minivlm.attention, the compiled kernel.

# %%
import torch

import minivlm

torch.manual_seed(0)
B, H, L, D = 1, 2, 10, 8
q, k, v = (torch.randn(B, H, L, D, dtype=torch.float64) for _ in range(3))
scale = D ** -0.5

# %% [markdown]
# ## 1. The textbook formula
#
# Scores for every (query, key) pair, a causal mask, softmax, weighted sum.

# %%
scores = scale * q @ k.transpose(-1, -2)                         # (B, H, L, L)
future = torch.ones(L, L, dtype=torch.bool).triu(1)              # key j > query i
scores = scores.masked_fill(future, float("-inf"))
naive = torch.softmax(scores, dim=-1) @ v                        # (B, H, L, D)

# %% [markdown]
# ## 2. The online softmax
#
# Walk over blocks of Bc keys, keeping per query row only a running max m, a running sum l and an
# unnormalised output O. When a block raises the max, rescale what came before.

# %%
Bc = 3
m = torch.full((B, H, L, 1), float("-inf"), dtype=torch.float64)
l = torch.zeros(B, H, L, 1, dtype=torch.float64)
O = torch.zeros(B, H, L, D, dtype=torch.float64)
for start in range(0, L, Bc):
    kj, vj = k[:, :, start:start + Bc], v[:, :, start:start + Bc]
    S = scale * q @ kj.transpose(-1, -2)                         # (B, H, L, Bc): one block of scores
    S = S.masked_fill(future[:, start:start + Bc], float("-inf"))
    m_new = torch.maximum(m, S.amax(-1, keepdim=True))
    # Rows that have seen only masked keys so far keep m_new = -inf; shift them by 0 to avoid inf - inf.
    shift = torch.where(m_new == float("-inf"), torch.zeros_like(m_new), m_new)
    P = torch.exp(S - shift)
    alpha = torch.exp(m - shift)                                 # how much the old max overestimated
    l = alpha * l + P.sum(-1, keepdim=True)
    O = alpha * O + P @ vj
    m = m_new
online = O / l
print("online softmax vs naive:   max |diff| =", (online - naive).abs().max().item())

# %% [markdown]
# ## 3. The compiled kernel
#
# The same causal band, given by is_causal instead of a mask tensor.

# %%
kernel = minivlm.attention(q, k, v, is_causal=True)
print("minivlm.attention vs naive: max |diff| =", (kernel - naive).abs().max().item())

assert torch.allclose(online, naive, atol=1e-12) and torch.allclose(kernel, naive, atol=1e-12)
