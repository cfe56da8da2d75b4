"""Tiny T5 encoder-decoders for the tests: Transformers T5ForConditionalGeneration of
minivlm.tools.tiny.t5's config (d_model 64, 4 heads of 16, d_ff 128, 2 + 2 blocks, vocab 128, 32 buckets,
max_distance 20) with random weights; and right-padded encoder inputs, as T5 tokenizers pad.

Weights: q, k and the FFN ~ N(0, 0.1), v and o ~ N(0, 0.3), embeddings and the untied lm_head ~ N(0, 0.5),
relative biases ~ N(0, 1) (so the bias visibly moves attention), norm weights ~ 1 + N(0, 0.2). T5's q.k is
unscaled, so larger q/k weights make attention so sharp that float32 rounding is amplified past 1e-6;
these keep attention peaked yet well-conditioned, and the tied head does not just repeat the input token.
"""
import torch

from helpers import transformers_config
from minivlm.tools import tiny

VOCAB = tiny.t5()["vocab_size"]


def hf_model(feed_forward_proj="gated-gelu", tie=False, seed=1):
    """A tiny Transformers T5 with random weights; tie=False gets its own lm_head (Transformers ties
    lm_head to shared whatever the config says and unties only a loaded checkpoint whose two differ)."""
    import transformers

    model = transformers.T5ForConditionalGeneration(transformers_config(tiny.t5(feed_forward_proj, tie)))
    if not tie:
        model.lm_head.weight = torch.nn.Parameter(torch.empty(VOCAB, 64))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).float()
            if "layer_norm" in name:
                p.copy_(1 + 0.2 * r)
            elif "relative_attention_bias" in name:
                p.copy_(r)
            elif "shared" in name or "lm_head" in name:
                p.copy_(0.5 * r)
            elif name.endswith((".q.weight", ".k.weight")) or "DenseReluDense" in name:
                p.copy_(0.1 * r)
            else:                                           # v, o
                p.copy_(0.3 * r)
    return model.eval()


def right_padded(lengths, T, seed=0):
    """Encoder ids (B, T) from 2..VOCAB-1, right-padded with 0 to the given lengths, and their mask."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, VOCAB, (len(lengths), T), generator=g)
    mask = torch.zeros(len(lengths), T, dtype=torch.long)
    for row, n in enumerate(lengths):
        mask[row, :n] = 1
    return ids.masked_fill(mask == 0, 0), mask
