"""The Llama / Mistral decoder: the language model of LLaVA-NeXT (Vicuna, Mistral-7B, Yi-34B), and a
standalone causal LM for `model_type` "llama" and "mistral".

Papers: LLaMA (Touvron et al. 2023: pre-RMSNorm, SwiGLU MLP, rotary positions), RoFormer (Su et al.
2021: rotary position embedding), GQA (Ainslie et al. 2023: fewer key/value heads than query heads),
Mistral 7B (Jiang et al. 2023: sliding-window attention). Reference implementation: Transformers'
modeling_llama.py / modeling_mistral.py and modeling_rope_utils.py (rope types "default", "linear",
"llama3"), whose outputs the tests match.

    x = embed_tokens(ids)                                  # (B, T, E)
    for each layer:
        x = x + o_proj(attention(rope(q), rope(k), v))     # q, k, v from input_layernorm(x)
        x = x + down_proj(silu(gate_proj(h)) * up_proj(h)) # h = post_attention_layernorm(x), (B, T, F) inside
    logits = lm_head(norm(x))                              # (B, T, V)

What differs from Transformers (same numbers, less machinery):
- Grouped-query attention is done by the kernel (`ops.attention` reads kv head h // group for query
  head h): keys and values are never copied with repeat_kv.
- The KV cache (`KVCache`, models/cache.py) is preallocated for the whole generation: each forward writes
  the new rotated keys/values in place and attends to a strided view of the filled prefix, with no
  torch.cat per step.
  A sliding-window (Mistral) layer keeps every key, not only the last window - 1 as Transformers does: the
  window mask hides the old ones, so the outputs are the same.
- Without padding no mask tensor is built at all: the kernel's is_causal (and window) does the masking.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
from torch import nn

from .. import ops
from .._checks import check_token_ids, has_padding, rejects_unknown_kwargs
from .base import GenerativeModel, Model
from ._common import ModelOutput, activation, causal_lm_loss
from ._config import divides, known_fields, non_negative_ints, one_of, positive_ints, to_transformers_dict
from .cache import KVCache, cached_tokens

ROPE_TYPES = ("default", "linear", "llama3")
# Defaults of Transformers' MistralConfig where they differ from LlamaConfig's.
MISTRAL_DEFAULTS = dict(intermediate_size=14336, num_key_value_heads=8, max_position_embeddings=4096 * 32,
                        sliding_window=4096)
# The settings of Transformers' LlamaConfig / MistralConfig that minivlm does not use, at their defaults.
TRANSFORMERS_DEFAULTS = {"llama": dict(attention_dropout=0.0, initializer_range=0.02, pretraining_tp=1, use_cache=True),
                         "mistral": dict(attention_dropout=0.0, initializer_range=0.02, use_cache=True)}


@dataclass
class LlamaConfig:
    model_type: str = "llama"              # "llama" or "mistral" (Mistral = Llama + sliding window, no biases)
    vocab_size: int = 32000                # V
    hidden_size: int = 4096                # E, the residual stream width
    intermediate_size: int = 11008         # F, the SwiGLU middle width (Mistral: 14336)
    num_hidden_layers: int = 32
    num_attention_heads: int = 32          # H, query heads
    num_key_value_heads: Optional[int] = None   # Hkv, key/value heads (GQA); None = H (Mistral: 8)
    head_dim: Optional[int] = None         # D; None = E // H
    hidden_act: str = "silu"               # the SwiGLU gate's activation
    max_position_embeddings: int = 2048    # only used as llama3 rope's default original context (Mistral: 131072)
    rms_norm_eps: float = 1e-6
    # Rotary settings as Transformers writes them; from_dict also reads top-level rope_theta/rope_scaling.
    rope_parameters: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    attention_bias: bool = False           # bias on q/k/v/o_proj (Llama only)
    mlp_bias: bool = False                 # bias on gate/up/down_proj (Llama only)
    tie_word_embeddings: bool = False      # lm_head shares embed_tokens' weight
    sliding_window: Optional[int] = None   # Mistral: a query sees the last W positions; None/0 = off (Mistral: 4096)
    bos_token_id: Optional[int] = 1
    eos_token_id: Union[int, list, None] = 2
    pad_token_id: Optional[int] = None
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        positive_ints(self, "hidden_size", "num_attention_heads")     # the defaults below divide by them
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.head_dim is None:
            self.head_dim = self.hidden_size // self.num_attention_heads
        if self.sliding_window == 0:
            self.sliding_window = None
        _validate_llama_config(self)

    @classmethod
    def from_dict(cls, d: dict) -> "LlamaConfig":
        """Read a config.json dict; omitted fields get Transformers' defaults for its model_type."""
        return cls(**read_llama_fields(cls, d))

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes (Llama has no sliding_window, Mistral no biases);
        from_dict reads it back to an equal config."""
        drop = ("sliding_window",) if self.model_type == "llama" else ("attention_bias", "mlp_bias")
        return to_transformers_dict(self, self.model_type, TRANSFORMERS_DEFAULTS[self.model_type], drop=drop)


def rope_inv_freq(config: LlamaConfig, device=None) -> torch.Tensor:
    """The rotation speed of each of the head_dim / 2 dimension pairs, (head_dim / 2,) in float32."""
    p, D = config.rope_parameters, config.head_dim
    inv_freq = 1.0 / (p["rope_theta"] ** (torch.arange(0, D, 2, device=device).float() / D))   # theta^(-2i/D)
    if p["rope_type"] == "linear":          # position interpolation: positions divided by factor
        inv_freq = inv_freq / p["factor"]
    elif p["rope_type"] == "llama3":        # Llama 3.1: slow down only the long wavelengths, blend in between
        factor, old_len = p["factor"], p["original_max_position_embeddings"]
        low_freq_wavelen = old_len / p["low_freq_factor"]
        high_freq_wavelen = old_len / p["high_freq_factor"]
        wavelen = 2 * math.pi / inv_freq
        scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
        smooth = (old_len / wavelen - p["low_freq_factor"]) / (p["high_freq_factor"] - p["low_freq_factor"])
        blended = (1 - smooth) * scaled / factor + smooth * scaled
        medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
        inv_freq = torch.where(medium, blended, scaled)
    return inv_freq


class LlamaRotaryEmbedding(nn.Module):
    """cos and sin of position * inv_freq for the given positions only. No buffers (the loader builds
    models on the meta device): inv_freq is computed on first use and kept per device."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self._inv_freq = {}

    def forward(self, position_ids: torch.Tensor, dtype: torch.dtype):
        """position_ids (T,) or (B, T) -> cos, sin (T, D) or (B, T, D) in `dtype`."""
        device = position_ids.device
        if device not in self._inv_freq:
            self._inv_freq[device] = rope_inv_freq(self.config, device)
        angles = position_ids[..., None].float() * self._inv_freq[device]     # (..., T, D/2) in float32
        angles = torch.cat((angles, angles), dim=-1)                           # (..., T, D): half-split layout
        return angles.cos().to(dtype), angles.sin().to(dtype)


class LlamaRMSNorm(nn.Module):
    def __init__(self, hidden_size: int, eps: float):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(hidden_size))
        self.eps = eps

    def forward(self, x):
        # Normalise in float32, round back to the input dtype, then scale (Transformers' order).
        x32 = x.float()
        x32 = x32 * torch.rsqrt(x32.pow(2).mean(-1, keepdim=True) + self.eps)
        return self.weight * x32.to(x.dtype)


class LlamaAttention(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.layer_idx = layer_idx
        self.num_heads, self.num_kv_heads = config.num_attention_heads, config.num_key_value_heads
        self.head_dim = config.head_dim
        self.window = config.sliding_window
        E, D, bias = config.hidden_size, config.head_dim, config.attention_bias
        self.q_proj = nn.Linear(E, self.num_heads * D, bias=bias)
        self.k_proj = nn.Linear(E, self.num_kv_heads * D, bias=bias)
        self.v_proj = nn.Linear(E, self.num_kv_heads * D, bias=bias)
        self.o_proj = nn.Linear(self.num_heads * D, E, bias=bias)

    def forward(self, x, cos, sin, mask=None, cache: Optional[KVCache] = None):
        B, T, _ = x.shape
        H, Hkv, D = self.num_heads, self.num_kv_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)                                # (B, H, T, D)
        k = self.k_proj(x).view(B, T, Hkv, D).transpose(1, 2)                              # (B, Hkv, T, D)
        v = self.v_proj(x).view(B, T, Hkv, D).transpose(1, 2)                              # (B, Hkv, T, D)
        q, k = ops.rope(q, cos, sin), ops.rope(k, cos, sin)     # rotate before caching: keys keep their position
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                                      # (B, Hkv, S, D), S = past + T
        if mask is None:   # no padding: the kernel's causal band (and window) is the whole mask
            y = ops.attention(q, k, v, is_causal=True, window=self.window)
        else:              # padding: the (B, 1, T, S) additive mask already holds causality and window
            y = ops.attention(q, k, v, mask)                                               # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, H * D))


class LlamaMLP(nn.Module):
    """SwiGLU: down(act(gate(x)) * up(x))."""

    def __init__(self, config: LlamaConfig):
        super().__init__()
        E, F, bias = config.hidden_size, config.intermediate_size, config.mlp_bias
        self.gate_proj = nn.Linear(E, F, bias=bias)
        self.up_proj = nn.Linear(E, F, bias=bias)
        self.down_proj = nn.Linear(F, E, bias=bias)
        self.act_fn = activation(config.hidden_act)

    def forward(self, x):
        return self.down_proj(self.act_fn(self.gate_proj(x)) * self.up_proj(x))


class LlamaDecoderLayer(nn.Module):
    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__()
        self.self_attn = LlamaAttention(config, layer_idx)
        self.mlp = LlamaMLP(config)
        self.input_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)

    def forward(self, x, cos, sin, mask=None, cache=None):
        x = x + self.self_attn(self.input_layernorm(x), cos, sin, mask, cache)
        return x + self.mlp(self.post_attention_layernorm(x))


class LlamaModel(Model):
    """The decoder stack without the head: embeddings (or given inputs_embeds) -> final normed states."""
    config_class = LlamaConfig

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        pad = config.pad_token_id   # as Transformers: the pad row gets no gradient
        pad = pad if isinstance(pad, int) and 0 <= pad < config.vocab_size else None
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size, padding_idx=pad)
        self.layers = nn.ModuleList(LlamaDecoderLayer(config, i) for i in range(config.num_hidden_layers))
        self.norm = LlamaRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(config)

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None) -> KVCache:
        """An empty KV cache for `batch_size` rows of up to `max_length` tokens (prompt + generated);
        dtype and device default to the embedding weight's."""
        weight = self.embed_tokens.weight
        c = self.config
        return KVCache(c.num_hidden_layers, batch_size, c.num_key_value_heads, max_length, c.head_dim,
                       dtype=dtype or weight.dtype, device=device or weight.device)

    def forward(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache: Optional[KVCache] = None) -> torch.Tensor:
        """Final normed hidden states (B, T, E). attention_mask: (B, past + T), 1 = real token, 0 = pad,
        over the cached tokens too. position_ids: (B, T) or (T,); default past, ..., past + T - 1."""
        _check_llama_inputs(self.config, input_ids, inputs_embeds, position_ids)
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds     # (B, T, E)
        B, T, _ = x.shape
        past = cached_tokens(cache, B, T, x.dtype, attention_mask, "LlamaModel")
        if position_ids is None:
            position_ids = torch.arange(past, past + T, device=x.device)                 # (T,)
        elif position_ids.dim() == 2 and position_ids.shape[0] == 1:
            position_ids = position_ids[0]                                               # one row for all
        cos, sin = self.rotary_emb(position_ids, x.dtype)                                # (T, D) or (B, T, D)

        # One mask for all layers, and only when some token is padding.
        mask = None
        if has_padding(attention_mask):
            mask = ops.causal_mask(attention_mask, T, dtype=x.dtype, window=self.config.sliding_window)

        for layer in self.layers:
            x = layer(x, cos, sin, mask, cache)    # the last layer's cache write advances cache.length
        return self.norm(x)


class LlamaForCausalLM(GenerativeModel):
    """LlamaModel + lm_head: next-token logits, loss, and `generate` (minivlm.generation)."""
    config_class = LlamaConfig
    # Hub Llama/Mistral checkpoints already use this module's names (model.*, lm_head.*): no renames.

    def architecture(self) -> str:
        """Transformers' class for the folder: MistralForCausalLM for a Mistral config."""
        return "MistralForCausalLM" if self.config.model_type == "mistral" else "LlamaForCausalLM"

    def __init__(self, config: LlamaConfig):
        super().__init__()
        self.config = config
        self.model = LlamaModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        if config.tie_word_embeddings:
            self.lm_head.weight = self.model.embed_tokens.weight      # one Parameter under two names

    def tied_weights(self) -> dict:
        return {"lm_head.weight": "model.embed_tokens.weight"} if self.config.tie_word_embeddings else {}

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None) -> KVCache:
        return self.model.new_cache(batch_size, max_length, dtype=dtype, device=device)

    @rejects_unknown_kwargs
    def forward(self, input_ids=None, *, inputs_embeds=None, attention_mask=None, position_ids=None,
                cache: Optional[KVCache] = None, labels=None, logits_to_keep: int = 0) -> ModelOutput:
        """Logits (B, T, V), or (B, k, V) for the last k positions when logits_to_keep = k > 0;
        `.loss` (shifted cross-entropy, -100 ignored) when labels (B, T) are given; `.hidden_states` the
        final normed hidden states (B, T, E)."""
        check_logits_to_keep("LlamaForCausalLM", logits_to_keep)
        hidden = self.model(input_ids, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                            position_ids=position_ids, cache=cache)                    # (B, T, E)
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden)


# ----------------------------------------------------------------------------------------------------
# Reading a config.json, and the checks
# ----------------------------------------------------------------------------------------------------

def read_llama_fields(cls, d: dict) -> dict:
    """LlamaConfig's fields from a config.json dict, as Transformers reads them: Mistral's own defaults
    and no biases, Llama without a sliding window, the rotary settings in either spelling."""
    kwargs = known_fields(cls, d, aliases=("rope_theta", "rope_scaling"))
    kwargs.pop("rope_parameters", None)
    if d.get("model_type", "llama") == "mistral":
        kwargs = {**MISTRAL_DEFAULTS, **kwargs}
        kwargs.pop("attention_bias", None)      # Transformers' Mistral has no biases, whatever the file says
        kwargs.pop("mlp_bias", None)
    else:
        kwargs.pop("sliding_window", None)      # Llama has no sliding window
    max_positions = kwargs.get("max_position_embeddings", cls.max_position_embeddings)
    return {**kwargs, "rope_parameters": read_rope_parameters(d, max_positions)}


def read_rope_parameters(d: dict, max_position_embeddings: int) -> dict:
    """The rotary settings of a config.json: Transformers writes rope_parameters {rope_type, rope_theta,
    ...}; hub configs have top-level rope_theta and rope_scaling {type or rope_type, factor, ...} (which
    wins if both). llama3 rope's original context defaults to max_position_embeddings."""
    rope = dict(d.get("rope_scaling") or d.get("rope_parameters") or {})
    rope.setdefault("rope_type", rope.pop("type", "default"))
    rope.setdefault("rope_theta", d["rope_theta"] if d.get("rope_theta") is not None else 10000.0)
    if rope["rope_type"] == "llama3":
        rope.setdefault("original_max_position_embeddings", max_position_embeddings)
    return rope


def _validate_llama_config(c: LlamaConfig):
    one_of(c, "model_type", ("llama", "mistral"))
    positive_ints(c, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_key_value_heads", "head_dim")
    divides(c, "num_key_value_heads", "num_attention_heads")
    if c.head_dim % 2:
        raise ValueError(f"LlamaConfig: head_dim must be even for rotary embeddings, got {c.head_dim}")
    if c.sliding_window is not None:
        non_negative_ints(c, "sliding_window")
    activation(c.hidden_act)   # raises for an activation minivlm does not implement
    _check_rope(c.rope_parameters)


def _check_rope(rope: dict):
    rope_type = rope.get("rope_type")
    if rope_type not in ROPE_TYPES:
        raise ValueError(f"LlamaConfig: rope_type {rope_type!r} is not supported; minivlm implements {ROPE_TYPES}")
    needed = {"default": [], "linear": ["factor"],
              "llama3": ["factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]}
    missing = [k for k in ["rope_theta"] + needed[rope_type] if rope.get(k) is None]
    if missing:
        raise ValueError(f"LlamaConfig: rope_parameters of type {rope_type!r} lack {missing}, got {rope}")
    theta = rope["rope_theta"]
    if isinstance(theta, bool) or not isinstance(theta, (int, float)) or theta <= 0:
        raise ValueError(f"LlamaConfig: rope_theta must be a positive number, got {theta!r}")
    if rope.get("partial_rotary_factor", 1.0) != 1.0:
        raise ValueError(f"LlamaConfig: partial_rotary_factor is not supported, got {rope['partial_rotary_factor']}")


def _check_llama_inputs(config: LlamaConfig, input_ids, inputs_embeds, position_ids):
    """LlamaModel.forward's arguments: one of input_ids (B, T) (ids in the vocabulary) and inputs_embeds
    (B, T, E); position_ids (B, T), (1, T) or (T,)."""
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError("LlamaModel: pass exactly one of input_ids and inputs_embeds")
    check_token_ids("input_ids", input_ids, config.vocab_size)
    given = input_ids if inputs_embeds is None else inputs_embeds
    if given.dim() != (2 if inputs_embeds is None else 3) or (inputs_embeds is not None and
                                                                given.shape[-1] != config.hidden_size):
        raise ValueError(f"LlamaModel: expected input_ids (B, T) or inputs_embeds (B, T, {config.hidden_size}), "
                         f"got {'input_ids' if inputs_embeds is None else 'inputs_embeds'} of shape "
                         f"{tuple(given.shape)}")
    B, T = given.shape[:2]
    if position_ids is not None and (position_ids.dim() not in (1, 2) or position_ids.shape[-1] != T or
                                     (position_ids.dim() == 2 and position_ids.shape[0] not in (1, B))):
        raise ValueError(f"LlamaModel: position_ids must be ({B}, {T}) or ({T},), got {tuple(position_ids.shape)}")


def check_logits_to_keep(who: str, logits_to_keep):
    """logits_to_keep is an int >= 0 (0 = the logits of every position)."""
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"{who}: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
