"""Tiny BLIP-2 checkpoints for the tests: Transformers models of minivlm.tools.tiny.blip2's config with
random weights, which tests save with save_pretrained so that minivlm's loader reads what a user's folder
holds; and their inputs.

Vision: 16 px images in 4 px patches (16 patches + the class token), width 32, 2 layers, 4 heads.
Q-Former: width 32, 2 layers, 4 heads, 4 queries, cross-attention every 2nd layer (or every layer).
Language model: OPT or T5 of width 64 and a 128-token vocabulary; 127 is the image placeholder.
Token ids: OPT 1 pad, 2 bos/eos (OPT's own defaults); T5 0 pad (and decoder start), 1 eos.
"""
import torch

from helpers import pad_rows, transformers_config
from minivlm.tools import tiny

OPT, T5 = tiny.blip2("opt"), tiny.blip2("t5")
IMAGE = OPT["vision_config"]["image_size"]
IMAGE_TOKEN = OPT["image_token_index"]
NUM_QUERIES = OPT["num_query_tokens"]
OPT_PAD, OPT_BOS, OPT_EOS = (OPT["text_config"][f"{t}_token_id"] for t in ("pad", "bos", "eos"))
T5_PAD, T5_EOS = T5["text_config"]["pad_token_id"], T5["text_config"]["eos_token_id"]


def hf_config(*args, **options):
    """Transformers' Blip2Config of tiny.blip2(*args, **options): text "opt" or "t5" (gated-GELU, Flan-T5
    style), cross_attention_frequency, tie."""
    return transformers_config(tiny.blip2(*args, **options))


def hf_model(config, seed=0):
    """A Transformers Blip2ForConditionalGeneration with every parameter random (query tokens, biases,
    LayerNorm scales and shifts included; Transformers initialises several of them to 0 or 1, which
    would hide a parameter that is read wrongly)."""
    from transformers import Blip2ForConditionalGeneration

    torch.manual_seed(seed)
    model = Blip2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("LayerNorm.weight") or "layer_norm" in name or "layernorm" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.normal_(0, 0.08)
            else:
                p.normal_(0, 0.05)
        lm = model.language_model
        if hasattr(lm, "shared"):
            # Flan-T5 (tie_word_embeddings false, as here) has its own lm_head, and hub BLIP-2 Flan-T5 files
            # store it. Transformers builds every T5 with lm_head tied to `shared` (its config forces
            # the tie and keeps the original flag as scale_decoder_outputs): untie it, as the hub's weights are.
            lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.shared.weight) * 0.08)
    return model


def pixel_values(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=g)


def opt_prompts(text_lengths, seed=0):
    """input_ids and attention_mask as Transformers' Blip2Processor lays them out for OPT: the image
    tokens, BOS, the prompt; left-padded with OPT's pad id."""
    g = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN] * NUM_QUERIES + [OPT_BOS] + torch.randint(4, IMAGE_TOKEN, (n,), generator=g).tolist()
            for n in text_lengths]
    return pad_rows(rows, OPT_PAD)


def t5_prompts(text_lengths, seed=0):
    """Encoder input_ids and attention_mask for T5: the image tokens, the prompt, EOS; left-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN] * NUM_QUERIES + torch.randint(4, IMAGE_TOKEN, (n,), generator=g).tolist() + [T5_EOS]
            for n in text_lengths]
    return pad_rows(rows, T5_PAD)


__all__ = ["hf_config", "hf_model", "pixel_values", "opt_prompts", "t5_prompts", "IMAGE", "IMAGE_TOKEN",
           "NUM_QUERIES", "OPT_PAD", "OPT_BOS", "OPT_EOS", "T5_PAD", "T5_EOS"]
