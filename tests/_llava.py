"""Tiny LLaVA-NeXT checkpoints for the tests: random weights, built and saved by Transformers, so that
minivlm's loader reads what a user's folder holds.

The vision tower sees 16 px crops in 4 px patches (a 4x4 grid, 16 features per crop); the pinpoints
include a 1x1 grid (a single crop) and grids of up to 3 crops per side, so unpadding cuts rows or
columns. Token ids: 0 pad, 1 bos, 2 eos, 127 the image placeholder.
"""
import torch

from conftest import save  # noqa: F401  (the tests import it from here)

from minivlm.models.llava_next import image_feature_count, num_crops

CROP = 16
PINPOINTS = [[16, 16], [16, 32], [32, 16], [32, 32], [16, 48], [48, 16], [48, 48]]
IMAGE_TOKEN = 127
PAD, BOS, EOS = 0, 1, 2


def hf_config(text="mistral", sliding_window=16, feature_layer=-2, strategy="default", tie=False):
    """A Transformers LlavaNextConfig of tiny proportions; text is "llama" (MHA) or "mistral" (GQA)."""
    from transformers import CLIPVisionConfig, LlamaConfig, LlavaNextConfig, MistralConfig

    vision = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4,
                              image_size=CROP, patch_size=4, projection_dim=16)
    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
                  vocab_size=128, max_position_embeddings=512, pad_token_id=PAD, bos_token_id=BOS,
                  eos_token_id=EOS)
    if text == "llama":
        text_config = LlamaConfig(num_key_value_heads=4, **common)
    else:
        text_config = MistralConfig(num_key_value_heads=2, sliding_window=sliding_window, **common)
    return LlavaNextConfig(vision_config=vision.to_dict(), text_config=text_config.to_dict(),
                           image_grid_pinpoints=PINPOINTS, image_token_index=IMAGE_TOKEN,
                           vision_feature_layer=feature_layer, vision_feature_select_strategy=strategy,
                           tie_word_embeddings=tie)


def hf_model(config, seed=0):
    """A Transformers LlavaNextForConditionalGeneration with random weights (image_newline included)."""
    from transformers import LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(config).eval()
    with torch.no_grad():   # larger than the default init, so that every layer changes the numbers
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    return model


def pixel_values(image_sizes, seed=0):
    """Random crops for images of the given (height, width): (B, P_max, 3, 16, 16), zero beyond an
    image's own crop count, as the processor pads a batch."""
    g = torch.Generator().manual_seed(seed)
    counts = [num_crops(s, PINPOINTS, CROP) for s in image_sizes]
    pv = torch.zeros(len(image_sizes), max(counts), 3, CROP, CROP)
    for i, n in enumerate(counts):
        pv[i, :n] = torch.randn(n, 3, CROP, CROP, generator=g)
    return pv


def prompts(image_sizes, text_lengths, config, pad_to=None, seed=0):
    """input_ids and attention_mask for one image per row: bos, a few text tokens, the image tokens, more
    text; left-padded to a common length (or to pad_to)."""
    from minivlm.models.llava_next import LlavaNextConfig

    cfg = LlavaNextConfig.from_dict(config.to_dict())
    g = torch.Generator().manual_seed(seed)
    rows = []
    for size, n_text in zip(image_sizes, text_lengths):
        text = torch.randint(3, IMAGE_TOKEN, (n_text,), generator=g).tolist()
        cut = min(3, n_text)
        rows.append([BOS] + text[:cut] + [IMAGE_TOKEN] * image_feature_count(size, cfg) + text[cut:])
    T = max(max(len(r) for r in rows), pad_to or 0)
    ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, T - len(r):] = torch.tensor(r)
        mask[i, T - len(r):] = 1
    return ids, mask


def crops_of(size):
    """How many crops (besides the base image) an image of `size` gets."""
    return num_crops(size, PINPOINTS, CROP) - 1


__all__ = ["hf_config", "hf_model", "save", "pixel_values", "prompts", "crops_of", "IMAGE_TOKEN", "PAD", "BOS",
           "EOS", "CROP", "PINPOINTS"]
