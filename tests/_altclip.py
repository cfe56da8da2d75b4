"""Tiny AltCLIP checkpoints for the tests: Transformers models of minivlm.tools.tiny.altclip's config with
random weights, which tests save with save_pretrained so that minivlm's loader reads what a user's folder
holds; their inputs; and a tiny word-level tokenizer.json built offline.

Vision: 16 px images in 4 px patches (16 patches + the class token), width 32, 2 layers, 4 heads.
Text: XLM-R of width 32, 2 layers, 4 heads, MLP 64, a 128-token vocabulary, 64 positions, project_dim 24
(unlike the width, so that a swapped projection cannot pass). Shared embedding width 16.
Token ids are XLM-R's: 0 <s>, 1 <pad>, 2 </s>; prompt text is drawn from [3, 128).
"""
import torch

from helpers import pad_rows, transformers_config
from minivlm.tools import tiny

CONFIG = tiny.altclip()
IMAGE = CONFIG["vision_config"]["image_size"]
BOS, PAD, EOS = (CONFIG["text_config"][f"{t}_token_id"] for t in ("bos", "pad", "eos"))
VOCAB = CONFIG["text_config"]["vocab_size"]
WORDS = ["a", "photo", "of", "cat", "dog", "bird", "car", "tree", "boat", "house", "red", "small"]


def hf_config(*args, **options):
    """Transformers' AltCLIPConfig of tiny.altclip(*args, **options)."""
    return transformers_config(tiny.altclip(*args, **options))


def hf_model(config, seed=0):
    """A Transformers AltCLIPModel with every parameter random (LayerNorm scales and shifts, biases, the
    pad rows of the embeddings and logit_scale included: Transformers initialises several of them to
    0 or 1, which would hide a parameter that is read wrongly)."""
    from transformers import AltCLIPModel

    torch.manual_seed(seed)
    model = AltCLIPModel(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name == "logit_scale":
                p.fill_(3.0)                           # exp(3) ~ 20: logits spread over a few units
            elif "norm" in name.lower() or "pre_LN" in name:
                p.copy_(1 + 0.1 * torch.randn_like(p) if name.endswith("weight") else 0.1 * torch.randn_like(p))
            elif p.dim() >= 2:
                p.normal_(0, 0.1)
            else:
                p.normal_(0, 0.05)
    return model


def pixel_values(batch, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(batch, 3, IMAGE, IMAGE, generator=g)


def texts(lengths, seed=0, padding_side="right"):
    """input_ids and attention_mask for rows <s> text </s> of the given text lengths, padded with <pad>
    (mask 0) on the given side to the longest row."""
    g = torch.Generator().manual_seed(seed)
    rows = [[BOS] + torch.randint(3, VOCAB, (n,), generator=g).tolist() + [EOS] for n in lengths]
    return pad_rows(rows, PAD, side=padding_side)


def build_tokenizer(path):
    """A word-level tokenizer.json with XLM-R's special tokens and template (<s> $A </s>), no padding set."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    vocab = {"<s>": BOS, "<pad>": PAD, "</s>": EOS, "<unk>": 3}
    vocab.update({w: 4 + i for i, w in enumerate(WORDS)})
    tokenizer = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", special_tokens=[("<s>", BOS), ("</s>", EOS)])
    tokenizer.save(str(path))
    return path


__all__ = ["hf_config", "hf_model", "pixel_values", "texts", "build_tokenizer", "IMAGE", "BOS", "PAD",
           "EOS", "VOCAB", "WORDS"]
