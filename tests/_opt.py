"""Tiny OPT decoders for the tests: Transformers OPTForCausalLM of minivlm.tools.tiny.opt's config (hidden 64,
2 layers, 4 heads, FFN 128, vocab 128, 128 positions) with random weights. Weights are drawn with std 0.15
(not Transformers' 0.02) and LayerNorm weights 1 + N(0, 0.2): attention is sharp and the position table
matters, so a wrong position offset, mask, LayerNorm placement or projection changes the logits by whole
units.
"""
import torch

from helpers import transformers_config
from minivlm.tools import tiny

VOCAB = tiny.opt()["vocab_size"]
PAD, BOS, EOS = 1, 2, 2       # OPT's own ids (its config's defaults)


def hf_model(seed=1, **fields):
    """A tiny Transformers OPTForCausalLM with random weights, in eval mode; fields: tiny.opt's."""
    import transformers

    model = transformers.OPTForCausalLM(transformers_config(tiny.opt(**fields)))
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.copy_(1 + 0.2 * r if "layer_norm" in name and name.endswith("weight") else 0.15 * r)
    return model.eval()
