"""The architectures minivlm implements, by the `model_type` their config.json names.

Each entry points at a model class in this package; `minivlm.from_pretrained` builds the one a
checkpoint asks for. The model files are imported only when used, so `import minivlm` stays light.
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


def model_class(model_type):
    """The model class for a config's `model_type`; a clear error for one minivlm does not implement."""
    if model_type not in MODEL_TYPES:
        raise ValueError(f"from_pretrained: config.json has model_type {model_type!r}; minivlm implements "
                         f"{sorted(MODEL_TYPES)}")
    module, cls = MODEL_TYPES[model_type].split(":")
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
