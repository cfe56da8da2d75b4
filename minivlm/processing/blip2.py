"""BLIP-2's processor: prompts and images -> input_ids, attention_mask and pixel_values, equal to
Transformers' Blip2Processor's.

The Q-Former turns each image into num_query_tokens vectors, which the language model reads in place of
as many `<image>` tokens at the start of input_ids. So the text is tokenized first (BOS, padding and all:
OPT's tokenizer pads on the right, T5's too), then num_query_tokens image ids are put in front of every
row, with attention 1:

    "a photo of"  ->  <image> x num_query_tokens, </s>, a, photo, of      (OPT: "</s>" is its BOS)
                      <image> x num_query_tokens, a, photo, of, </s>      (Flan-T5: "</s>" ends the text)

With images and no text, only pixel_values; with text and no images (or no num_query_tokens), the text alone.
A max_length counts the image tokens: the text gets max_length - num_query_tokens. Where the tokenizer has
no `<image>` token, it is added as a special token (a new id after the vocabulary), as Transformers does.
"""
from __future__ import annotations

import torch

from .base import Processor, check_texts, flat_images
from .images import BlipImageProcessor


class Blip2Processor(Processor):
    image_processor_class = BlipImageProcessor
    settings = {"num_query_tokens": None}   # the Q-Former's query count (the model config's)

    def __init__(self, tokenizer, image_processor=None, **settings):
        super().__init__(tokenizer, image_processor, **settings)
        self.image_token = tokenizer.model_specific_tokens.get("image_token", "<image>")
        if tokenizer.backend.token_to_id(self.image_token) is None:
            from tokenizers import AddedToken
            tokenizer.backend.add_special_tokens([AddedToken(self.image_token, special=True, normalized=False)])
            tokenizer.extra_special_tokens.append(self.image_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def __call__(self, text=None, images=None, *, padding=False, return_tensors=None, max_length=None,
                 **tokenizer_kwargs) -> dict:
        """text: a prompt or a list of them (or None, for images alone); images: a PIL image or a list,
        one per prompt. Returns input_ids and attention_mask (where text is given) and pixel_values
        (B, 3, H, W) (where images are). padding, truncation, max_length, padding_side: as Tokenizer takes
        them (max_length counting the image tokens)."""
        texts = check_texts(self, text, allow_none=images is not None)
        images = flat_images(images)
        out = dict(self.image_processor(images)) if images else {}
        if texts is None:
            return out
        expand = bool(images) and self.num_query_tokens is not None
        if max_length is not None and expand:
            max_length -= self.num_query_tokens
        encoded = self._tokenize(texts, padding, None, max_length=max_length, **tokenizer_kwargs)
        if expand:
            n = self.num_query_tokens
            encoded = {"input_ids": [[self.image_token_id] * n + row for row in encoded["input_ids"]],
                       "attention_mask": [[1] * n + row for row in encoded["attention_mask"]]}
        if return_tensors == "pt":
            if len({len(row) for row in encoded["input_ids"]}) > 1:
                raise ValueError("Blip2Processor: the prompts have different lengths; return_tensors='pt' "
                                 "needs padding=True")
            encoded = {k: torch.tensor(v, dtype=torch.long) for k, v in encoded.items()}
        elif return_tensors is not None:
            raise ValueError(f"Blip2Processor: return_tensors must be None or 'pt', got {return_tensors!r}")
        return {**encoded, **out}


__all__ = ["Blip2Processor"]
