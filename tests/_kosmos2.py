"""Tiny Kosmos-2 checkpoints for the tests: Transformers models of minivlm.tools.tiny.kosmos2's config
with random weights, which tests save with save_pretrained so that minivlm's loader reads what a user's
folder holds; and their inputs.

Vision: 16 px images in 4 px patches (16 patches + the class token), width 32, 2 layers, 4 heads.
Projection: 4 latent queries. Text: width 64, 2 layers, 4 heads, FFN 128, a 128-token vocabulary.
Token ids: 0 <s>, 1 pad, 2 </s> (Kosmos-2's own); 126 <image>, 127 </image>; the 4 image positions hold
ids 100..103, as Kosmos2Processor writes consecutive ids from its first_image_token_id there.
"""
import torch

from helpers import pad_rows, transformers_config
from minivlm.tools import tiny

CONFIG = tiny.kosmos2()
IMAGE = CONFIG["vision_config"]["image_size"]
NUM_QUERIES = CONFIG["latent_query_num"]
BOS, PAD, EOS = (CONFIG["text_config"][f"{t}_token_id"] for t in ("bos", "pad", "eos"))
BOI, EOI = 126, 127
FIRST_IMAGE_ID = 100
TEXT_IDS = (3, 100)     # prompt text is drawn from [3, 100): never pad, eos or an image/marker id


def hf_config(*args, **options):
    """Transformers' Kosmos2Config of tiny.kosmos2(*args, **options) (tie)."""
    return transformers_config(tiny.kosmos2(*args, **options))


def hf_model(config, seed=0):
    """A Transformers Kosmos2ForConditionalGeneration with every parameter random (latent queries, biases,
    LayerNorm scales and shifts included; Transformers initialises several of them to 0 or 1, which would
    hide a parameter that is read wrongly)."""
    from transformers import Kosmos2ForConditionalGeneration

    torch.manual_seed(seed)
    model = Kosmos2ForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name or "_ln" in name:        # every LayerNorm: scale near 1, shift near 0
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif name.endswith("latent_query"):
                p.normal_(0, 1.0)
            elif name.endswith("embed_tokens.weight"):
                p.normal_(0, 0.1)
            elif "text_model" in name and p.dim() >= 2:
                # Strong blocks, so that the tied head does not just echo the input token (its embedding
                # times sqrt(64) would dominate the residual stream and greedy decoding would repeat it).
                p.normal_(0, 0.3)
            elif p.dim() >= 2:
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.05)
    return model


def pixel_values(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=g)


def prompts(text_lengths, seed=0, padding_side="left"):
    """input_ids, attention_mask and image_embeds_position_mask as Kosmos2Processor lays them out: <s>,
    <image>, the image positions, </image>, the text; padded with pad on the given side (the masks with 0)."""
    g = torch.Generator().manual_seed(seed)
    image = [BOS, BOI] + list(range(FIRST_IMAGE_ID, FIRST_IMAGE_ID + NUM_QUERIES)) + [EOI]
    rows = [image + torch.randint(*TEXT_IDS, (n,), generator=g).tolist() for n in text_lengths]
    ids, mask = pad_rows(rows, PAD, side=padding_side)
    image_mask = torch.zeros_like(mask)
    for i, row in enumerate(rows):
        start = ids.shape[1] - len(row) if padding_side == "left" else 0
        image_mask[i, start + 2:start + 2 + NUM_QUERIES] = 1
    return ids, mask, image_mask
