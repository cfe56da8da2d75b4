"""Preprocessing: what turns pictures and text into the inputs each model reads, matching Transformers'
processors value for value.

- `images.py`: the image processors (PIL images -> pixel_values): LLaVA-NeXT's anyres crops, BLIP-2's
  resize, CLIP's (Kosmos-2, AltCLIP), IDEFICS's; and IDEFICS's image attention mask.
"""
from .images import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, BlipImageProcessor, CLIPImageProcessor,
                     IdeficsImageProcessor, ImageProcessor, LlavaNextImageProcessor, idefics_image_attention_mask,
                     image_feature_count)

__all__ = ["ImageProcessor", "LlavaNextImageProcessor", "BlipImageProcessor", "CLIPImageProcessor",
           "image_feature_count", "IdeficsImageProcessor", "idefics_image_attention_mask", "OPENAI_CLIP_MEAN",
           "OPENAI_CLIP_STD"]
