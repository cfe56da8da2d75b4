"""The architectures minivlm implements, by the `model_type` their config.json names.

Each entry points at a model class in this package; `minivlm.from_pretrained` builds the one a
checkpoint asks for. The model files are imported only when used, so `import minivlm` stays light.
A model defined elsewhere (following minivlm.models.base) joins with `register_model(model_type, cls)`.
"""
from __future__ import annotations

import importlib

# model_type (config.json) -> "module:Class" inside minivlm.models
MODEL_TYPES = {
    "llava_next": "llava_next:LlavaNextForConditionalGeneration",
    "llama": "llama:LlamaForCausalLM",
    "mistral": "llama:LlamaForCausalLM",
    "clip_vision_model": "clip:CLIPVisionModel",
    "opt": "opt:OPTForCausalLM",
    "t5": "t5:T5ForConditionalGeneration",
    "blip-2": "blip2:Blip2ForConditionalGeneration",
    "kosmos-2": "kosmos2:Kosmos2ForConditionalGeneration",
    "idefics": "idefics:IdeficsForVisionText2Text",
    "altclip": "altclip:AltCLIPModel",
}


# model_type -> class, for models registered at run time
REGISTERED: dict[str, type] = {}


def register_model(model_type: str, cls: type) -> None:
    """Make from_pretrained build `cls` for checkpoints whose config.json says `model_type`. cls must
    subclass minivlm.models.base.Model (docs/adding_a_model.md)."""
    from .base import Model
    if not isinstance(model_type, str) or not model_type:
        raise TypeError(f"register_model: model_type must be a non-empty str, got {model_type!r}")
    if not (isinstance(cls, type) and issubclass(cls, Model)):
        raise TypeError(f"register_model: cls must be a subclass of minivlm.models.base.Model, got {cls!r}")
    REGISTERED[model_type] = cls


def model_class(model_type):
    """The model class for a config's `model_type`; a clear error for one minivlm does not implement."""
    if model_type in REGISTERED:
        return REGISTERED[model_type]
    if model_type not in MODEL_TYPES:
        raise ValueError(f"from_pretrained: config.json has model_type {model_type!r}; minivlm implements "
                         f"{sorted(MODEL_TYPES) + sorted(REGISTERED)}")
    module, cls = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
