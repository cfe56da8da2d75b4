"""Text generation for every model in minivlm, as Transformers 5.23's generate does it.

- config.py     GenerationConfig: the settings, read from generation_config.json, with 5.23's defaults
- logits.py     what is done to the scores before a token is picked (penalties, n-grams, top-k, top-p)
- stopping.py   stop strings
- streamers.py  TextStreamer, TextIteratorStreamer: the text as it is generated
- search.py     GenerationMixin.generate: greedy search, sampling and beam search over a KV cache
"""
from .config import DEFAULTS, UNSUPPORTED, GenerationConfig
from .logits import filter_scores
from .search import GenerateOutput, GenerationMixin, generate_arguments, infer_attention_mask
from .stopping import StopStrings
from .streamers import TextIteratorStreamer, TextStreamer

__all__ = ["DEFAULTS", "UNSUPPORTED", "GenerateOutput", "GenerationConfig", "GenerationMixin", "StopStrings",
           "TextIteratorStreamer", "TextStreamer", "filter_scores", "generate_arguments", "infer_attention_mask"]
