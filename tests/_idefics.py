"""Tiny IDEFICS checkpoints for the tests: Transformers models of minivlm.tools.tiny.idefics's config with
random weights, which tests save with save_pretrained so that minivlm's loader reads what a user's folder
holds; and their inputs.

Vision tower: 16 px images in 4 px patches (17 tokens per image), hidden 32, 2 layers. Decoder: hidden 64,
4 layers, 4 heads, a gated cross-attention block before layers 0 and 2, vocab 128 + 2 additional ids
(128 = <fake_token_around_image>, 129 = <image>, as in idefics-9b's tokenizer they follow the base
vocabulary). Resampler: 4 latents, depth 1. Token ids: 0 pad, 1 bos, 2 eos.
"""
import torch

from helpers import transformers_config
from minivlm.tools import tiny

CONFIG = tiny.idefics()
VOCAB, EXTRA = CONFIG["vocab_size"], CONFIG["additional_vocab_size"]
FAKE, IMAGE = VOCAB, VOCAB + 1
PAD, BOS, EOS = (CONFIG[f"{t}_token_id"] for t in ("pad", "bos", "eos"))
SIZE = CONFIG["vision_config"]["image_size"]


def hf_config(*args, **options):
    """Transformers' IdeficsConfig of tiny.idefics(*args, **options): use_resampler, qk_layer_norms,
    alpha_type, qk_perceiver, tie, additional_vocab_size."""
    return transformers_config(tiny.idefics(*args, **options))


def hf_model(config, seed=0):
    """A Transformers IdeficsForVisionText2Text with random weights. The gates' alphas are drawn in
    [0.3, 1.2] with random signs (per channel for vector alphas), so every gated block changes the numbers
    and no tanh saturates to the same value; norm weights are drawn around 1 so that they matter too."""
    from transformers import IdeficsForVisionText2Text

    torch.manual_seed(seed)
    model = IdeficsForVisionText2Text(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "alpha" in name:
                sign = torch.where(torch.rand(p.shape) < 0.5, -1.0, 1.0)
                p.copy_(sign * (0.3 + 0.9 * torch.rand(p.shape)))
            elif p.dim() >= 2:
                p.normal_(0, 0.08)
            elif name.endswith("weight"):
                p.copy_(1 + 0.2 * torch.randn(p.shape))
            else:
                p.normal_(0, 0.05)
    return model


def pixel_values(batch, images, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, images, 3, SIZE, SIZE, generator=g)


def prompts(layouts, pad_to=None, seed=0):
    """Interleaved prompts, left-padded: each layout is a list of text-run lengths and "img" markers, e.g.
    [3, "img", 5, "img", 2] is bos, 3 text tokens, <fake><image><fake>, 5 text tokens, ... Returns input_ids,
    attention_mask and image_attention_mask (B, T, N_max), one-hot on the latest image at or before each
    token (the <image> token itself included), as Transformers' IdeficsProcessor builds it."""
    g = torch.Generator().manual_seed(seed)
    rows, seen = [], []
    for layout in layouts:
        ids, img = [BOS], [-1]
        for part in layout:
            if part == "img":
                ids += [FAKE, IMAGE, FAKE]
                n = max(img) + 1
                img += [img[-1], n, n]
            else:
                ids += torch.randint(3, VOCAB, (part,), generator=g).tolist()
                img += [img[-1]] * part
        rows.append(ids)
        seen.append(img)
    T = max(max(len(r) for r in rows), pad_to or 0)
    N = max(1, max(max(s) + 1 for s in seen))
    input_ids = torch.full((len(rows), T), PAD, dtype=torch.long)
    mask = torch.zeros(len(rows), T, dtype=torch.long)
    image_mask = torch.zeros(len(rows), T, N, dtype=torch.long)
    for b, (r, s) in enumerate(zip(rows, seen)):
        start = T - len(r)
        input_ids[b, start:] = torch.tensor(r)
        mask[b, start:] = 1
        for t, n in enumerate(s):
            if n >= 0:
                image_mask[b, start + t, n] = 1
    return input_ids, mask, image_mask


__all__ = ["hf_config", "hf_model", "pixel_values", "prompts", "VOCAB", "EXTRA", "FAKE", "IMAGE", "PAD", "BOS",
           "EOS", "SIZE"]
