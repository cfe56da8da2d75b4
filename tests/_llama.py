"""Tiny Llama and Mistral decoders for the tests: Transformers LlamaForCausalLM / MistralForCausalLM of
minivlm.tools.tiny.llama's config (width 64, 2 layers, 4 heads, MLP 96, a 97-token vocabulary) with random
weights. Drawn with std 0.15 (not Transformers' 0.02) so that attention is sharp: scores spread over several
units, so a wrong position, mask or window changes the logits far beyond the tests' tolerances.
"""
import torch

from helpers import transformers_config
from minivlm.tools import tiny

VOCAB = tiny.llama()["vocab_size"]


def randomize(model, std=0.15, seed=1):
    """Every weight ~ N(0, std), norm weights ~ 1 + N(0, 0.2): random but well-conditioned."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            r = torch.randn(p.shape, generator=g, dtype=torch.float64).to(p.dtype)
            p.copy_(1 + 0.2 * r if "norm" in name else std * r)
    return model.eval()


def hf_model(model_type="llama", **fields):
    """A tiny Transformers Llama or Mistral causal LM with random weights; fields: tiny.llama's."""
    import transformers

    config = transformers_config(tiny.llama(model_type, **fields))
    if model_type == "llama":
        return randomize(transformers.LlamaForCausalLM(config))
    return randomize(transformers.MistralForCausalLM(config))
