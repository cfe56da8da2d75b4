"""Preprocessing: what turns pictures and text into the inputs each model reads, matching Transformers'
processors value for value.

- `images.py`: the image processors (PIL images -> pixel_values): LLaVA-NeXT's anyres crops, BLIP-2's
  resize, CLIP's (Kosmos-2, AltCLIP), IDEFICS's; and IDEFICS's image attention mask.
- `tokenizer.py`: `Tokenizer`, a checkpoint's tokenizer.json run by the `tokenizers` library with the
  special tokens and pipeline Transformers reads; encode, pad, decode.
- `chat_template.py`: reading a checkpoint's chat templates and rendering them as Transformers does.
- `base.py`: `Processor`, what the model processors share (from_pretrained, apply_chat_template, decode).
- one processor per model, text and images -> the model's inputs: `LlavaNextProcessor` (llava_next.py),
  `Blip2Processor` (blip2.py), `AltCLIPProcessor` (altclip.py), `IdeficsProcessor` (idefics.py),
  `Kosmos2Processor` (kosmos2.py).
"""
from .images import (OPENAI_CLIP_MEAN, OPENAI_CLIP_STD, BlipImageProcessor, CLIPImageProcessor,
                     IdeficsImageProcessor, ImageProcessor, LlavaNextImageProcessor, idefics_image_attention_mask,
                     image_feature_count)
from .tokenizer import Tokenizer
from .base import Processor
from .altclip import AltCLIPProcessor
from .blip2 import Blip2Processor
from .kosmos2 import Kosmos2Processor
from .llava_next import LlavaNextProcessor
from .idefics import IdeficsProcessor

__all__ = ["Tokenizer", "Processor", "LlavaNextProcessor", "Blip2Processor", "Kosmos2Processor", "AltCLIPProcessor", "IdeficsProcessor", "ImageProcessor", "LlavaNextImageProcessor", "BlipImageProcessor", "CLIPImageProcessor",
           "image_feature_count", "IdeficsImageProcessor", "idefics_image_attention_mask", "OPENAI_CLIP_MEAN",
           "OPENAI_CLIP_STD"]


#: model_type (config.json) -> the processor of its checkpoints; the towers on their own read a
#: Tokenizer (the language models) or an image processor (the CLIP vision tower).
PROCESSORS = {"llava_next": LlavaNextProcessor, "blip-2": Blip2Processor, "kosmos-2": Kosmos2Processor,
              "idefics": IdeficsProcessor, "altclip": AltCLIPProcessor, "clip_vision_model": CLIPImageProcessor,
              "llama": Tokenizer, "mistral": Tokenizer, "opt": Tokenizer, "t5": Tokenizer}


def load_processor(path):
    """The processor of a local checkpoint folder, picked by its config.json's model_type (PROCESSORS):
    a model processor, a Tokenizer or an image processor. Nothing is downloaded."""
    import json
    from pathlib import Path

    config = Path(path) / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"load_processor: no config.json in {str(path)!r}: the model_type there picks "
                                f"the processor")
    model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    if model_type not in PROCESSORS:
        raise ValueError(f"load_processor: config.json has model_type {model_type!r}; minivlm has processors "
                         f"for {', '.join(PROCESSORS)}")
    return PROCESSORS[model_type].from_pretrained(path)


__all__ += ["PROCESSORS", "load_processor"]
