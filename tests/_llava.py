"""Tiny LLaVA-NeXT checkpoints for the tests: Transformers models of minivlm.tools.tiny.llava_next's
config with random weights, which tests save with save_pretrained so that minivlm's loader reads what a
user's folder holds; and their inputs.

The vision tower sees 16 px crops in 4 px patches (a 4x4 grid, 16 features per crop); the pinpoints
include a 1x1 grid (a single crop) and grids of up to 3 crops per side, so unpadding cuts rows or
columns. Token ids: 0 pad, 1 bos, 2 eos, 127 the image placeholder.
"""
import torch

from helpers import pad_rows, transformers_config
from minivlm.models.llava_next import image_feature_count, num_crops
from minivlm.tools import tiny

CONFIG = tiny.llava_next()
CROP = CONFIG["vision_config"]["image_size"]
PINPOINTS = CONFIG["image_grid_pinpoints"]
IMAGE_TOKEN = CONFIG["image_token_index"]
PAD, BOS, EOS = (CONFIG["text_config"][f"{t}_token_id"] for t in ("pad", "bos", "eos"))


def hf_config(*args, **options):
    """Transformers' LlavaNextConfig of tiny.llava_next(*args, **options): text "mistral" (GQA) or "llama" (MHA),
    sliding_window, feature_layer, strategy, tie."""
    return transformers_config(tiny.llava_next(*args, **options))


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
    return pad_rows(rows, PAD, pad_to)


def crops_of(size):
    """How many crops (besides the base image) an image of `size` gets."""
    return num_crops(size, PINPOINTS, CROP) - 1


__all__ = ["hf_config", "hf_model", "pixel_values", "prompts", "crops_of", "IMAGE_TOKEN", "PAD", "BOS", "EOS",
           "CROP", "PINPOINTS"]
