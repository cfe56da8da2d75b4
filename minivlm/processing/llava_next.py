"""LLaVA-NeXT's processor: prompts with `<image>` placeholders and images -> input_ids, attention_mask,
pixel_values and image_sizes, equal to Transformers' LlavaNextProcessor's.

    processor = LlavaNextProcessor.from_pretrained(folder)
    prompt = processor.apply_chat_template([{"role": "user", "content": [
        {"type": "image"}, {"type": "text", "text": "What is shown here?"}]}], add_generation_prompt=True)
    inputs = processor(text=prompt, images=photo, return_tensors="pt")

Each `<image>` of the text stands for one image, in order over the batch (a prompt may hold several). The
model writes one feature per image token, so each placeholder is repeated as many times as that image gives
features, from its original size (see minivlm.models.llava_next, `image_feature_count`):

    base crop:   (R / patch)^2 features, + num_additional_image_tokens (the CLS, where the checkpoint's
                 processor counts it), - 1 with vision_feature_select_strategy "default" (the CLS dropped)
    crop grid:   the anyres grid of (rows * R/patch) x (cols * R/patch) features, with the letterbox
                 padding cut off, plus one newline feature per remaining row

e.g. a 640x480 photo on llava-v1.6 (R = 336, patch 14, grid 2x2): 576 + 48 * 36 (the bars of 6 rows
above and below removed) + 36 newlines = 2340 `<image>` tokens. The expanded text is then tokenized (padding
on the tokenizer's side) and the images go through LlavaNextImageProcessor.
"""
from __future__ import annotations

from ..models.llava_next import anyres_grid_shape, unpad_bounds
from .base import Processor, check_placeholders, check_texts, flat_images
from .images import LlavaNextImageProcessor


class LlavaNextProcessor(Processor):
    image_processor_class = LlavaNextImageProcessor
    settings = {"patch_size": None,                        # the vision tower's patch side, in pixels
                "vision_feature_select_strategy": None,    # "default" drops the CLS feature, "full" keeps it
                "num_additional_image_tokens": 0,          # features per crop beyond the patches (1: the CLS)
                "image_token": "<image>"}                  # the placeholder, where the tokenizer names none

    def __init__(self, tokenizer, image_processor=None, **settings):
        super().__init__(tokenizer, image_processor, **settings)
        # The tokenizer's own image_token (tokenizer_config.json) wins over the setting, as in Transformers.
        self.image_token = tokenizer.model_specific_tokens.get("image_token", self.image_token)
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)

    def image_token_count(self, image_size) -> int:
        """How many times `<image>` stands for one image of image_size = (height, width)."""
        if not isinstance(self.patch_size, int) or self.patch_size < 1:
            raise ValueError(f"LlavaNextProcessor: patch_size must be a positive int (processor_config.json's "
                             f"patch_size, the vision tower's), got {self.patch_size!r}")
        R = self.image_processor.crop_size["height"]
        side = R // self.patch_size                                         # patches per crop side
        rows, cols = anyres_grid_shape(image_size, self.image_processor.image_grid_pinpoints, R)
        top, bottom, left, right = unpad_bounds(rows * side, cols * side, image_size)
        base = side * side + self.num_additional_image_tokens - (self.vision_feature_select_strategy == "default")
        return base + (bottom - top) * (right - left + 1)

    def __call__(self, text=None, images=None, *, padding=False, return_tensors=None, **tokenizer_kwargs) -> dict:
        """text: a prompt or a list of them, with one `<image>` per image; images: a PIL image, a list of
        them, or a list of lists (one per prompt), in the order of the placeholders. Returns input_ids and
        attention_mask (where text is given), pixel_values (B_img, Nc, 3, R, R) and image_sizes (B_img, 2)
        (where images are). padding, truncation, max_length, padding_side: as Tokenizer takes them."""
        texts = check_texts(self, text, allow_none=images is not None)
        images = flat_images(images)
        out = {}
        if images:
            out.update(self.image_processor(images))
        if texts is None:
            return out
        check_placeholders(self, texts, self.image_token, len(images))
        counts = iter([self.image_token_count(size) for size in out.get("image_sizes", [])])
        expanded = [_expand(t, self.image_token, counts) for t in texts]
        return {**self._tokenize(expanded, padding, return_tensors, **tokenizer_kwargs), **out}


def _expand(text: str, placeholder: str, counts) -> str:
    """Each placeholder in text repeated next(counts) times."""
    pieces = text.split(placeholder)
    return pieces[0] + "".join(placeholder * next(counts) + piece for piece in pieces[1:])


__all__ = ["LlavaNextProcessor"]
