"""AltCLIP's processor: texts (labels, captions) and images -> input_ids, attention_mask and pixel_values,
equal to Transformers' AltCLIPProcessor's: the XLM-R tokenizer ("<s> ... </s>", padded on the right) and
CLIP's image preprocessing, side by side (no placeholders: the two towers read their inputs apart).

    processor = AltCLIPProcessor.from_pretrained(folder)
    inputs = processor(text=["a photo of a cat", "a photo of a dog"], images=photo, padding=True,
                       return_tensors="pt")
    probs = model(**inputs).logits_per_image.softmax(-1)
"""
from __future__ import annotations

from .base import Processor, check_texts, flat_images
from .images import CLIPImageProcessor


class AltCLIPProcessor(Processor):
    image_processor_class = CLIPImageProcessor

    def __call__(self, text=None, images=None, *, padding=False, return_tensors=None, **tokenizer_kwargs) -> dict:
        """text: a string or a list of them; images: a PIL image or a list of them; either may be None."""
        if text is None and images is None:
            raise ValueError("AltCLIPProcessor: give text, images or both")
        texts = check_texts(self, text, allow_none=True)
        out = {} if texts is None else self._tokenize(texts, padding, return_tensors, **tokenizer_kwargs)
        images = flat_images(images)
        if images:
            out.update(self.image_processor(images))
        return out


__all__ = ["AltCLIPProcessor"]
