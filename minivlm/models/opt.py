"""The OPT decoder: the language model of BLIP-2 (Salesforce/blip2-opt-*), and a standalone causal LM for
`model_type` "opt" (facebook/opt-125m ... opt-66b).

Papers: OPT (Zhang et al. 2022, "OPT: Open Pre-trained Transformer Language Models"), a GPT-3-style
decoder (Brown et al. 2020) with learned absolute positions. Reference implementation: Transformers'
`models/opt/modeling_opt.py` (OPTForCausalLM), whose outputs the tests match and whose parameter names
this module mirrors (model.decoder.*, lm_head.weight).

    x = project_in(embed_tokens(ids)) + embed_positions(pos + 2)       # (B, T, E)
    for each layer (pre-LN, do_layer_norm_before=True; opt-350m is post-LN):
        x = x + out_proj(attention(q * D^-0.5, k, v))                  # q, k, v from self_attn_layer_norm(x)
        x = x + fc2(relu(fc1(final_layer_norm(x))))                    # E -> F -> E
    logits = lm_head(project_out(final_layer_norm(x)))                 # (B, T, V), lm_head tied

E is the residual width (hidden_size), E_w the token embeddings' (word_embed_proj_dim: E but for
opt-350m, whose project_in / project_out map 512 to 1024 and back), H heads of width D = E / H.

Positions. The table has max_position_embeddings + 2 rows; position p reads row p + 2 (fairseq kept rows
0 and 1 for its padding index; OPT inherited the offset). Without explicit position_ids a position comes
from the attention mask: cumsum(mask) * mask - 1, so each row's first real token is at 0 and every pad at
-1 (row 1); with a cache only the new tokens' positions are kept. minivlm's generate passes
cumsum(mask) - 1 with pads at 0 instead (as Transformers' generate does): pads are masked out, so the
real tokens' outputs are the same either way.

What differs from Transformers (same numbers, less machinery):
- The query is scaled by D^-0.5 before attention and the kernel runs with scale 1.0, in Transformers'
  order: (q * s) k^T and (q k^T) * s round differently unless s is a power of two (OPT-2.7b has D = 80).
- The KV cache is models/cache.py's `KVCache` (preallocated, written in place; OPT has as many kv as q
  heads).
- Without padding no mask tensor is built: the kernel's is_causal does the masking.
- Dropout, LayerDrop and head masks are training/analysis features Transformers has; minivlm does not.

The config's checks and the input checks are at the bottom of the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from .. import ops
from .._checks import check_token_ids, has_padding, in_decode_step, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import ModelOutput, activation, causal_lm_loss
from ._config import bools, divides, known_fields, positive_ints, to_transformers_dict
from .cache import KVCache, cached_tokens

POSITION_OFFSET = 2   # position p reads row p + 2 of embed_positions (rows 0 and 1: fairseq's padding legacy)


# The settings of Transformers' OPTConfig that minivlm does not use, at their defaults.
TRANSFORMERS_DEFAULTS = dict(attention_dropout=0.0, dropout=0.1, init_std=0.02, layerdrop=0.0, use_cache=True)


@dataclass
class OPTConfig:
    """An OPT config.json; defaults are Transformers' OPTConfig (facebook/opt-125m's sizes)."""
    model_type: str = "opt"
    vocab_size: int = 50272                # V
    hidden_size: int = 768                 # E, the residual stream width
    num_hidden_layers: int = 12
    ffn_dim: int = 3072                    # F, the MLP's middle width (fc1 output)
    num_attention_heads: int = 12          # H; D = E / H
    max_position_embeddings: int = 2048    # learned position table size (+ 2 offset rows)
    do_layer_norm_before: bool = True      # pre-LN (all OPTs but opt-350m, which is post-LN)
    word_embed_proj_dim: Optional[int] = None   # E_w, the token embedding width; None = E (opt-350m: 512,
    #                                             with project_in / project_out Linear maps to and from E)
    activation_function: str = "relu"      # the MLP activation
    enable_bias: bool = True               # bias on q/k/v/out_proj and fc1/fc2
    layer_norm_elementwise_affine: bool = True   # LayerNorms have weight and bias
    _remove_final_layer_norm: bool = False # True: no final LayerNorm (some early fine-tuned checkpoints)
    tie_word_embeddings: bool = True       # lm_head shares embed_tokens' weight
    pad_token_id: Optional[int] = 1
    bos_token_id: Optional[int] = 2
    eos_token_id: Union[int, list, None] = 2
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.word_embed_proj_dim is None:
            self.word_embed_proj_dim = self.hidden_size
        _validate_opt_config(self)

    @property
    def head_dim(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, d: dict) -> "OPTConfig":
        """Read a config.json dict (or BLIP-2's text_config); omitted fields get Transformers' defaults."""
        return cls(**known_fields(cls, d))

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "opt", TRANSFORMERS_DEFAULTS)


class OPTAttention(nn.Module):
    def __init__(self, config: OPTConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.head_dim = config.num_attention_heads, config.head_dim
        self.scaling = self.head_dim ** -0.5
        E, bias = config.hidden_size, config.enable_bias
        self.k_proj = nn.Linear(E, E, bias=bias)
        self.v_proj = nn.Linear(E, E, bias=bias)
        self.q_proj = nn.Linear(E, E, bias=bias)
        self.out_proj = nn.Linear(E, E, bias=bias)

    def forward(self, x, mask=None, cache: Optional[KVCache] = None):
        B, T, E = x.shape
        # Scale q before the dot products, as OPT (and Transformers) do; the kernel then uses scale 1.0.
        q = (self.q_proj(x) * self.scaling).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)  # (B, H, T, D)
        k = self.k_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)                  # (B, H, T, D)
        v = self.v_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)                  # (B, H, T, D)
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                    # (B, H, S, D), S = cached + T
        if mask is None:   # no padding: the kernel's causal band is the whole mask
            y = ops.attention(q, k, v, is_causal=True, scale=1.0)
        else:              # padding: the (B, 1, T, S) additive mask holds causality too
            y = ops.attention(q, k, v, mask, scale=1.0)                                 # (B, H, T, D)
        return self.out_proj(y.transpose(1, 2).reshape(B, T, E))


class OPTDecoderLayer(nn.Module):
    def __init__(self, config: OPTConfig, layer_idx: int):
        super().__init__()
        E, affine = config.hidden_size, config.layer_norm_elementwise_affine
        self.pre_ln = config.do_layer_norm_before
        self.self_attn = OPTAttention(config, layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(E, elementwise_affine=affine)
        self.fc1 = nn.Linear(E, config.ffn_dim, bias=config.enable_bias)
        self.fc2 = nn.Linear(config.ffn_dim, E, bias=config.enable_bias)
        self.final_layer_norm = nn.LayerNorm(E, elementwise_affine=affine)
        self.activation_fn = activation(config.activation_function)

    def forward(self, x, mask=None, cache=None):
        if self.pre_ln:    # x + f(LN(x))
            x = x + self.self_attn(self.self_attn_layer_norm(x), mask, cache)
            return x + self.fc2(self.activation_fn(self.fc1(self.final_layer_norm(x))))
        # post-LN (opt-350m): LN(x + f(x))
        x = self.self_attn_layer_norm(x + self.self_attn(x, mask, cache))
        return self.final_layer_norm(x + self.fc2(self.activation_fn(self.fc1(x))))


class OPTDecoder(nn.Module):
    """Token + position embeddings, the layers, the final LayerNorm and project_out: the states lm_head reads."""

    def __init__(self, config: OPTConfig):
        super().__init__()
        self.config = config
        E, E_w = config.hidden_size, config.word_embed_proj_dim
        pad = config.pad_token_id   # as Transformers: the pad row gets no gradient
        pad = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, E_w, padding_idx=pad)
        self.embed_positions = nn.Embedding(config.max_position_embeddings + POSITION_OFFSET, E)
        # Only when the token embeddings differ in width from the residual stream (opt-350m: 512 vs 1024).
        self.project_in = nn.Linear(E_w, E, bias=False) if E_w != E else None
        self.project_out = nn.Linear(E, E_w, bias=False) if E_w != E else None
        self.layers = nn.ModuleList(OPTDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        has_final_ln = config.do_layer_norm_before and not config._remove_final_layer_norm
        self.final_layer_norm = (nn.LayerNorm(E, elementwise_affine=config.layer_norm_elementwise_affine)
                                 if has_final_ln else None)

    def positions(self, attention_mask, position_ids, B, T, past, device) -> torch.Tensor:
        """Positions of the T new tokens: (B, T), (1, T) or (T,), -1 for a pad (row 1 of the table)."""
        name, max_pos = type(self).__name__, self.config.max_position_embeddings
        if position_ids is not None:
            _check_position_ids(name, position_ids, B, T, past, max_pos)
            return position_ids
        if attention_mask is None:
            position_ids = torch.arange(past, past + T, device=device)                    # (T,)
        else:
            m = attention_mask.long()
            position_ids = (m.cumsum(-1) * m - 1)[:, past:]                                 # (B, T); pads -1
        if past + T > max_pos:    # below, no position can exceed past + T - 1: nothing to check
            _check_position_range(name, position_ids, max_pos)
        return position_ids

    def forward(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache: Optional[KVCache] = None) -> torch.Tensor:
        """Final hidden states (B, T, E_w). attention_mask: (B, S), S = cached + T, 1 = real token, 0 = pad,
        over the cached tokens too. inputs_embeds (B, T, E_w) are token embeddings (before project_in)."""
        _check_opt_inputs(type(self).__name__, self.config, input_ids, inputs_embeds)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds   # (B, T, E_w)
        B, T, _ = x.shape
        past = cached_tokens(cache, B, T, x.dtype, attention_mask, type(self).__name__)
        position_ids = self.positions(attention_mask, position_ids, B, T, past, x.device)

        if self.project_in is not None:
            x = self.project_in(x)                                                         # (B, T, E)
        x = x + self.embed_positions(position_ids + POSITION_OFFSET)                       # (B, T, E)

        # One mask for all layers, and only when some token is padding.
        mask = None
        if has_padding(attention_mask):
            mask = ops.causal_mask(attention_mask, T, dtype=x.dtype)                       # (B, 1, T, S)
        for layer in self.layers:
            x = layer(x, mask, cache)            # the last layer's cache write advances cache.length
        if self.final_layer_norm is not None:
            x = self.final_layer_norm(x)
        if self.project_out is not None:
            x = self.project_out(x)                                                        # (B, T, E_w)
        return x


class OPTModel(nn.Module):
    """Holds the decoder, so that parameter names read model.decoder.* as in the checkpoints."""

    def __init__(self, config: OPTConfig):
        super().__init__()
        self.decoder = OPTDecoder(config)

    def forward(self, *args, **kwargs) -> torch.Tensor:
        return self.decoder(*args, **kwargs)


class OPTForCausalLM(GenerativeModel):
    """OPT decoder + lm_head: next-token logits, loss, and `generate` (minivlm.generation)."""
    config_class = OPTConfig
    # Transformers writes model.decoder.* (this module's names) and lm_head.weight (dropped when tied);
    # some older hub files were saved from OPTModel and name the decoder decoder.*.
    checkpoint_renames = [(r"^decoder\.", "model.decoder.")]

    def __init__(self, config: OPTConfig):
        super().__init__()
        self.config = config
        self.model = OPTModel(config)
        self.lm_head = nn.Linear(config.word_embed_proj_dim, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.decoder.embed_tokens.weight     # one Parameter under two names

    def tied_weights(self) -> dict:
        return {"lm_head.weight": "model.decoder.embed_tokens.weight"} if self.config.tie_word_embeddings else {}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.decoder.embed_tokens

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_length` tokens (prompt + generated);
        dtype and device default to the embedding weight's."""
        c, weight = self.config, self.model.decoder.embed_tokens.weight
        return KVCache(c.num_hidden_layers, batch_size, c.num_attention_heads, max_length, c.head_dim,
                       dtype=dtype or weight.dtype, device=device or weight.device)

    @rejects_unknown_kwargs
    def forward(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache: Optional[KVCache] = None, labels=None, logits_to_keep: int = 0) -> ModelOutput:
        """Logits (B, T, V), or (B, k, V) for the last k positions when logits_to_keep = k > 0; `.loss`
        (shifted cross-entropy, -100 ignored) when labels (B, T) are given; `.hidden_states` the final
        hidden states (B, T, E_w) that lm_head reads."""
        _check_logits_to_keep(type(self).__name__, logits_to_keep)
        hidden = self.model(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=position_ids, cache=cache)                    # (B, T, E_w)
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------

def _validate_opt_config(c: OPTConfig):
    if c.model_type != "opt":
        raise ValueError(f"OPTConfig: model_type must be 'opt', got {c.model_type!r}")
    positive_ints(c, "vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
                  "max_position_embeddings", "word_embed_proj_dim")
    bools(c, "do_layer_norm_before", "enable_bias", "layer_norm_elementwise_affine", "_remove_final_layer_norm",
          "tie_word_embeddings")
    divides(c, "num_attention_heads", "hidden_size")
    activation(c.activation_function)   # raises for an activation minivlm does not implement


def _check_opt_inputs(name, c: OPTConfig, input_ids, inputs_embeds):
    """Exactly one of input_ids (B, T) (integer ids in the vocabulary) and inputs_embeds (B, T, E_w)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"{name}: pass exactly one of input_ids and inputs_embeds")
    if input_ids is not None and (not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or
                                  input_ids.is_floating_point() or input_ids.dtype == torch.bool):
        got = (f"shape {tuple(input_ids.shape)}, {input_ids.dtype}" if isinstance(input_ids, torch.Tensor)
               else type(input_ids).__name__)
        raise ValueError(f"{name}: input_ids must be an integer tensor (batch, sequence), got {got}")
    check_token_ids("input_ids", input_ids, c.vocab_size)
    if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[-1] != c.word_embed_proj_dim):
        raise ValueError(f"{name}: expected inputs_embeds (B, T, word_embed_proj_dim={c.word_embed_proj_dim}), "
                         f"got shape {tuple(inputs_embeds.shape)}")


def _check_position_ids(name, position_ids, B, T, past, max_pos):
    """Given positions: (B, T), (1, T) or (T,) integers inside the table. Their values cost a device sync,
    spent on every call from the user; in generate's decode steps only once S = past + T exceeds the
    table (generate's positions are cumsum(mask) - 1, at most S - 1)."""
    if position_ids.shape[-1] != T or position_ids.dim() not in (1, 2) or \
            (position_ids.dim() == 2 and position_ids.shape[0] not in (1, B)):
        raise ValueError(f"{name}: position_ids must be ({B}, {T}), (1, {T}) or ({T},), got "
                         f"{tuple(position_ids.shape)}")
    if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise TypeError(f"{name}: position_ids must be an integer tensor, got {position_ids.dtype}")
    if not in_decode_step() or past + T > max_pos:
        _check_position_range(name, position_ids, max_pos)


def _check_position_range(name, position_ids, max_pos):
    """Every position in [0, max_position_embeddings), or -1 for a pad: one device sync."""
    low, high = torch.stack(position_ids.aminmax()).tolist()
    if low < -1 or high >= max_pos:
        raise ValueError(f"{name}: positions must lie in [0, max_position_embeddings={max_pos}) (or -1 for a "
                         f"pad), got positions {low}..{high}; the sequence is too long for the position table")


def _check_logits_to_keep(name, logits_to_keep):
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"{name}: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
