"""The contract every minivlm model follows: what `minivlm.from_pretrained` (minivlm/loading.py),
`save_pretrained` (minivlm/saving.py) and `generate` (minivlm/generation/) rely on, and nothing more. docs/adding_a_model.md walks through it.

A model is an `nn.Module` subclass of `Model` (a tower or encoder: built and loaded) or of
`GenerativeModel` (a model with a language head: also generates text). Each says, as class attributes:

    config_class        the config dataclass; `config_class.from_dict(config.json as a dict)` makes the
                        config, and `Model(config)` builds the modules (on the meta device while loading,
                        so __init__ should only build: the loader fills every parameter from the file)
    checkpoint_renames  [(pattern, replacement)]: re.sub'ed, in order, on each checkpoint key whose
                        spelling differs from the module's parameter name
    checkpoint_ignore   [pattern]: checkpoint keys the model does not keep (e.g. buffers Transformers saves)
    keep_in_float32     names of submodules or parameters kept in float32 when the model is loaded in
                        float16 or bfloat16 (a value the model computes in float32, as Transformers does)
    save_renames        [(pattern, replacement)]: re.sub'ed (the first that matches) on each parameter name
                        to give the name Transformers' save_pretrained writes, where the two differ

and, as methods, `tied_weights() -> {target: source}`: parameters the config ties (the target is the
source's parameter under a second name, e.g. lm_head.weight and the token embedding), and
`architecture() -> str`, the Transformers class config.json names (default: the class's own name). A
composite model (BLIP-2 around OPT or T5) may make any of these a property computed from its parts.
Saving also needs `self.config.to_dict()`: config.json's dict in Transformers' spelling.

A `GenerativeModel` adds, for `generate`:

    is_encoder_decoder          False: generate calls forward on the prompt, then on each new token.
                                True: generate calls `encode` once and `decode` per new token.
    positions_from_generate     True: a padded prompt gets position_ids = cumsum(attention_mask) - 1 from
                                generate. False: the model numbers positions itself from attention_mask
                                and the cache, and generate passes none (Kosmos-2).
    new_cache(batch_size, max_length, *, dtype=None, device=None)
                                an empty cache (minivlm.models.cache) for batch_size rows of up to
                                max_length tokens, prompt and new tokens together.

Decoder-only: `forward(input_ids, *, attention_mask=None, position_ids=None, cache=None,
logits_to_keep=0, **model_inputs)` returns a ModelOutput whose `.logits` are (B, T, V), or the last
logits_to_keep positions' (B, logits_to_keep, V). The prefill call gets the caller's model_inputs
(pixel_values, image_sizes, ...); the steps get only the new token, the mask, the positions and the cache.
Encoder-decoder: `encode(input_ids, attention_mask=None, **model_inputs) -> (B, S, E)` and
`decode(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, *, cache, logits_to_keep)`
returning a ModelOutput.
"""
from __future__ import annotations

from typing import ClassVar

from torch import nn

from ..generation import GenerationMixin


class Model(nn.Module):
    """A model the loader can build from a config.json and fill from safetensors (see the module
    docstring for each attribute)."""
    config_class: ClassVar[type]
    checkpoint_renames: ClassVar[list] = []
    checkpoint_ignore: ClassVar[list] = []
    keep_in_float32: ClassVar[list] = []
    save_renames: ClassVar[list] = []

    def tied_weights(self) -> dict[str, str]:
        """{target parameter name: source parameter name} for the weights the config ties; none here."""
        return {}

    def architecture(self) -> str:
        """The Transformers class that loads this model's folder (config.json's `architectures`)."""
        return type(self).__name__

    def save_pretrained(self, path, *, max_shard_size="50GB"):
        """Write the model to the folder `path` as Transformers' save_pretrained does: config.json, the
        weights as safetensors (one file, or shards of at most max_shard_size with an index), and
        generation_config.json for a model that generates. See minivlm/saving.py."""
        from ..saving import save_pretrained
        return save_pretrained(self, path, max_shard_size=max_shard_size)


class GenerativeModel(Model, GenerationMixin):
    """A Model with a language-modelling head, for `generate` (see the module docstring)."""
    is_encoder_decoder: ClassVar[bool] = False
    positions_from_generate: ClassVar[bool] = True

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None):
        raise NotImplementedError(f"{type(self).__name__} must define new_cache(batch_size, max_length, "
                                  f"*, dtype=None, device=None) to generate")
