"""Tiny BLIP-2 checkpoints for the tests: random weights, built and saved by Transformers, so that
minivlm's loader reads what a user's folder holds.

Vision: 16 px images in 4 px patches (16 patches + the class token), width 32, 2 layers, 4 heads.
Q-Former: width 32, 2 layers, 4 heads, 4 queries, cross-attention every 2nd layer (or every layer).
Language model: OPT or T5 of width 64 and a 128-token vocabulary; 127 is the image placeholder.
Token ids: OPT 1 pad, 2 bos/eos (OPT's own defaults); T5 0 pad (and decoder start), 1 eos.
"""
import torch

from conftest import save  # noqa: F401  (the tests import it from here)

IMAGE = 16
IMAGE_TOKEN = 127
NUM_QUERIES = 4
OPT_PAD, OPT_BOS, OPT_EOS = 1, 2, 2
T5_PAD, T5_EOS = 0, 1


def hf_config(text="opt", cross_attention_frequency=2):
    """A Transformers Blip2Config of tiny proportions with an OPT or a T5 (gated-GELU, Flan-T5 style) LM."""
    from transformers import Blip2Config, OPTConfig, T5Config

    vision = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  image_size=IMAGE, patch_size=4)
    qformer = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                   cross_attention_frequency=cross_attention_frequency)
    if text == "opt":
        text_config = OPTConfig(hidden_size=64, ffn_dim=128, num_hidden_layers=2, num_attention_heads=4,
                                vocab_size=128, word_embed_proj_dim=64, max_position_embeddings=128,
                                pad_token_id=OPT_PAD, bos_token_id=OPT_BOS, eos_token_id=OPT_EOS)
    else:
        text_config = T5Config(d_model=64, d_ff=128, d_kv=16, num_layers=2, num_heads=4, vocab_size=128,
                               feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                               relative_attention_num_buckets=8, relative_attention_max_distance=16,
                               pad_token_id=T5_PAD, eos_token_id=T5_EOS, decoder_start_token_id=T5_PAD)
    return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=text_config.to_dict(),
                       num_query_tokens=NUM_QUERIES, image_token_index=IMAGE_TOKEN)


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
    return _left_pad(rows, OPT_PAD)


def t5_prompts(text_lengths, seed=0):
    """Encoder input_ids and attention_mask for T5: the image tokens, the prompt, EOS; left-padded."""
    g = torch.Generator().manual_seed(seed)
    rows = [[IMAGE_TOKEN] * NUM_QUERIES + torch.randint(4, IMAGE_TOKEN, (n,), generator=g).tolist() + [T5_EOS]
            for n in text_lengths]
    return _left_pad(rows, T5_PAD)


def _left_pad(rows, pad):
    T = max(len(r) for r in rows)
    ids = torch.full((len(rows), T), pad, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


__all__ = ["hf_config", "hf_model", "save", "pixel_values", "opt_prompts", "t5_prompts", "IMAGE", "IMAGE_TOKEN",
           "NUM_QUERIES", "OPT_PAD", "OPT_BOS", "OPT_EOS", "T5_PAD", "T5_EOS"]
