"""T5 / Flan-T5: an encoder-decoder transformer with relative position biases; BLIP-2's Flan-T5 language
model, and a standalone model for `model_type` "t5".

Papers: T5 (Raffel et al. 2020, "Exploring the Limits of Transfer Learning with a Unified Text-to-Text
Transformer": pre-norm blocks with a scale-only RMS norm, bucketed relative position biases, no attention
scaling), GLU variants (Shazeer 2020: the gated-GELU feed-forward of T5 v1.1), Flan-T5 (Chung et al. 2022,
"Scaling Instruction-Finetuned Language Models": T5 v1.1 weights, instruction-tuned). Reference
implementation: Transformers' modeling_t5.py (T5ForConditionalGeneration), whose outputs the tests match.

    x = encoder.embed_tokens(input_ids)        # encoder, (B, S, E); the table is `shared`'s when tied
    for each encoder block:
        x = x + o(attention(q, k, v, mask = relative_bias + padding))      # q, k, v from layer_norm(x)
        x = x + wo(act(wi_0(h)) * wi_1(h))     # h = layer_norm(x); "relu" (T5 v1.0): wo(relu(wi(h)))
    enc = final_layer_norm(x)
    y = decoder.embed_tokens(decoder_input_ids)                    # decoder, (B, T, E)
    for each decoder block: causal self-attention (relative bias + causality), cross-attention to enc
        (padding mask only, no position bias), feed-forward; all pre-norm with residuals
    logits = lm_head(final_layer_norm(y) [* E^-0.5 when scale_decoder_outputs])       # (B, T, V)

E = d_model, H = num_heads heads of width D = d_kv (E need not be H * D), F = d_ff.

Details that matter for parity:
- Attention scores are q.k with scale 1.0: T5's initialisation folds the d^-0.5 into q.
- The relative position bias is an embedding of (num_buckets, H) owned by the first block of each stack
  and shared by all its blocks. It is added to the scores through the attention mask: one additive float
  mask per stack = bias where a key is visible, finfo.min where it is not (padding; future keys in the
  decoder). The mask is a function of the bias, so the bias's gradient flows through the kernel's mask
  gradient.
- T5LayerNorm takes the mean square in float32 even for a float64 model (as Transformers), so float64
  parity needs the same rounding.
- `wo` (the FFN's output projection) stays float32 in a float16 model (`keep_in_float32`, Transformers'
  `_keep_in_fp32_modules = ["wo"]`, which Transformers applies to float16 only); its input is cast up, and its
  float32 output promotes the residual stream to float32, exactly as in Transformers.
- Two settings that older configs folded into one: `scale_decoder_outputs` (T5 v1.0 scales the decoder
  output by E^-0.5; T5 v1.1 and Flan-T5 do not) and the tie of `shared`, both stacks' `embed_tokens` and
  `lm_head` (claimed by every config; the checkpoint decides what is really shared: a Flan-T5 file stores
  its own lm_head). See `T5Config`.

What differs from Transformers (same numbers, less machinery): no dropout (inference and fine-tuning with
dropout off); the decoder cache (`CrossAttentionCache`, models/cache.py) is minivlm's preallocated `KVCache`
for self-attention plus the cross-attention keys/values, computed from the encoder states on the first
decode call and reused (one cache belongs to one encoder output).

The config's checks and the input checks are at the bottom of the file.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._checks import check_token_ids, in_decode_step, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import ModelOutput, RMSNorm, activation
from ._config import bools, known_fields, positive_ints, positive_numbers, to_transformers_dict

# The settings of Transformers' T5Config that minivlm does not use, at their defaults.
TRANSFORMERS_DEFAULTS = dict(classifier_dropout=0.0, dropout_rate=0.1, initializer_factor=1.0, is_decoder=False,
                             is_encoder_decoder=True, use_cache=True)
from .cache import CrossAttentionCache, cached_tokens


@dataclass
class T5Config:
    """A T5 config.json; defaults are Transformers' T5Config (t5-small's sizes)."""
    model_type: str = "t5"
    vocab_size: int = 32128                 # V
    d_model: int = 512                      # E, the residual stream width
    d_kv: int = 64                          # D, the head width (E need not be H * D)
    d_ff: int = 2048                        # F, the feed-forward middle width
    num_layers: int = 6                     # encoder blocks
    num_decoder_layers: Optional[int] = None    # decoder blocks; None = num_layers
    num_heads: int = 8                      # H
    relative_attention_num_buckets: int = 32    # relative position buckets (half per direction in the encoder)
    relative_attention_max_distance: int = 128  # distances from here on share the last bucket
    layer_norm_epsilon: float = 1e-6
    feed_forward_proj: str = "relu"         # "relu" (T5 v1.0) or "gated-gelu" (T5 v1.1, Flan-T5), or [gated-]ACT
    # The decoder output is scaled by E^-0.5 before lm_head (T5 v1.0); None = tie_word_embeddings as
    # given, since configs without this field used that flag for it (false: T5 v1.1, Flan-T5).
    scale_decoder_outputs: Optional[bool] = None
    # `shared`, encoder/decoder `embed_tokens` and `lm_head` are one table. Always True once the config is
    # built, as in Transformers: the checkpoint decides what is really shared (a weight it stores
    # with other values stays separate, minivlm.loading). Set it to False afterwards for four tables.
    tie_word_embeddings: bool = True
    pad_token_id: Optional[int] = 0
    eos_token_id: Union[int, list, None] = 1
    bos_token_id: Optional[int] = None
    decoder_start_token_id: Optional[int] = None    # first decoder input; None = pad_token_id (T5's convention)
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        if self.num_decoder_layers is None:
            self.num_decoder_layers = self.num_layers
        if self.decoder_start_token_id is None:
            self.decoder_start_token_id = self.pad_token_id
        _validate_t5_config(self)
        if self.scale_decoder_outputs is None:
            self.scale_decoder_outputs = self.tie_word_embeddings
        self.tie_word_embeddings = True

    @property
    def is_gated_act(self) -> bool:
        """wo(act(wi_0 x) * wi_1 x) instead of wo(act(wi x))."""
        return self.feed_forward_proj.startswith("gated-")

    @property
    def dense_act_fn(self) -> str:
        """The FFN activation's name; "gated-gelu" means the tanh GELU ("gelu_new"), as in Transformers."""
        return "gelu_new" if self.feed_forward_proj == "gated-gelu" else self.feed_forward_proj.split("-")[-1]

    @property
    def hidden_size(self) -> int:   # the name composite models (BLIP-2) look for
        return self.d_model

    @classmethod
    def from_dict(cls, d: dict) -> "T5Config":
        """Read a config.json dict; omitted fields get Transformers' T5Config defaults.

        Every layout in the wild reads: hub configs carry only tie_word_embeddings (false for T5 v1.1 and
        Flan-T5, hence no output scaling; absent or true for T5 v1.0); Transformers writes
        scale_decoder_outputs, which then wins, beside a tie_word_embeddings that is usually true.
        """
        kwargs = known_fields(cls, d)
        for name in ("model_type", "tie_word_embeddings", "scale_decoder_outputs", "feed_forward_proj",
                     "layer_norm_epsilon"):
            if kwargs.get(name) is None:        # null in the file: the default, as Transformers
                kwargs.pop(name, None)
        return cls(**kwargs)

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes: scale_decoder_outputs beside tie_word_embeddings (true
        once built), the derived dense_act_fn and is_gated_act, no bos_token_id when there is none;
        from_dict reads it back to an equal config."""
        drop = ("bos_token_id",) if self.bos_token_id is None else ()
        return to_transformers_dict(self, "t5", TRANSFORMERS_DEFAULTS, drop=drop, dense_act_fn=self.dense_act_fn,
                                    is_gated_act=self.is_gated_act)


def relative_position_bucket(relative_position: torch.Tensor, bidirectional: bool, num_buckets: int,
                             max_distance: int) -> torch.Tensor:
    """Bucket ids in [0, num_buckets) for relative positions (key position - query position).

    Bidirectional (encoder): half of the buckets for keys before the query, half for keys after it.
    Causal (decoder): only keys at or before the query get distinct buckets (later ones are masked anyway).
    Within a direction, the first half of its buckets are exact distances 0, 1, ..., the rest cover
    distances up to max_distance on a log scale, and everything further shares the last bucket.
    """
    if bidirectional:
        num_buckets //= 2
        offset = (relative_position > 0).long() * num_buckets          # keys after the query: upper half
        distance = relative_position.abs()
    else:
        offset = 0
        distance = (-relative_position).clamp(min=0)
    max_exact = num_buckets // 2
    # log bucket of a far distance (computed in float32 with Transformers' operation order, so the
    # truncation to an int lands identically); the clamp keeps log() away from 0 on unused near entries.
    far = distance.clamp(min=max_exact).float()
    log_bucket = max_exact + (torch.log(far / max_exact) / math.log(max_distance / max_exact)
                              * (num_buckets - max_exact)).long()
    log_bucket = log_bucket.clamp(max=num_buckets - 1)
    return offset + torch.where(distance < max_exact, distance, log_bucket)


# T5's layer norm: scale only, the mean square in float32 (shared with IDEFICS: models/_common.py).
T5LayerNorm = RMSNorm


class T5Attention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool = False):
        super().__init__()
        self.num_heads, self.d_kv = config.num_heads, config.d_kv
        inner = config.num_heads * config.d_kv
        self.q = nn.Linear(config.d_model, inner, bias=False)
        self.k = nn.Linear(config.d_model, inner, bias=False)
        self.v = nn.Linear(config.d_model, inner, bias=False)
        self.o = nn.Linear(inner, config.d_model, bias=False)
        if has_relative_attention_bias:
            self.relative_attention_bias = nn.Embedding(config.relative_attention_num_buckets, config.num_heads)
            self.num_buckets = config.relative_attention_num_buckets
            self.max_distance = config.relative_attention_max_distance

    def position_bias(self, q_len: int, k_len: int, past: int, bidirectional: bool) -> torch.Tensor:
        """The learned bias (1, H, T, S) of the T = q_len queries at positions past, ..., past + T - 1 over
        the S = k_len keys."""
        device = self.relative_attention_bias.weight.device
        query_position = torch.arange(past, past + q_len, device=device)[:, None]
        key_position = torch.arange(k_len, device=device)[None, :]
        buckets = relative_position_bucket(key_position - query_position, bidirectional, self.num_buckets,
                                           self.max_distance)                        # (T, S)
        return self.relative_attention_bias(buckets).permute(2, 0, 1)[None]          # (1, H, T, S)

    def _split_heads(self, x):
        B, L, _ = x.shape
        return x.view(B, L, self.num_heads, self.d_kv).transpose(1, 2)               # (B, H, L, D)

    def forward(self, x, mask=None, *, source=None, cache: Optional[CrossAttentionCache] = None,
                layer_idx: int = 0):
        """x (B, T, E) -> (B, T, E): self-attention when source is None, else cross-attention to source
        (B, S, E). mask: additive float or bool, broadcastable to (B, H, T, S)."""
        B, T, _ = x.shape
        q = self._split_heads(self.q(x))                                             # (B, H, T, D)
        if source is None:
            k, v = self._split_heads(self.k(x)), self._split_heads(self.v(x))        # (B, H, T, D)
            if cache is not None:
                k, v = cache.update(layer_idx, k, v)                                 # (B, H, S, D), S = past + T
        else:
            kv = cache.cross[layer_idx] if cache is not None else None
            if kv is None:
                kv = self._split_heads(self.k(source)), self._split_heads(self.v(source))   # (B, H, S, D)
                if cache is not None:
                    cache.cross[layer_idx] = kv
            k, v = kv
        y = ops.attention(q, k, v, mask, scale=1.0)                                  # (B, H, T, D)
        return self.o(y.transpose(1, 2).reshape(B, T, self.num_heads * self.d_kv))


class T5DenseReluDense(nn.Module):
    """The feed-forward: wo(act(wi x)), or gated wo(act(wi_0 x) * wi_1 x). (Transformers names the module
    DenseReluDense whatever the activation.)"""

    def __init__(self, config: T5Config):
        super().__init__()
        self.gated = config.is_gated_act
        if self.gated:
            self.wi_0 = nn.Linear(config.d_model, config.d_ff, bias=False)
            self.wi_1 = nn.Linear(config.d_model, config.d_ff, bias=False)
        else:
            self.wi = nn.Linear(config.d_model, config.d_ff, bias=False)
        self.wo = nn.Linear(config.d_ff, config.d_model, bias=False)
        self.act = activation(config.dense_act_fn)

    def forward(self, x):
        h = self.act(self.wi_0(x)) * self.wi_1(x) if self.gated else self.act(self.wi(x))   # (B, T, F)
        return self.wo(h.to(self.wo.weight.dtype))      # wo may be float32 in a float16 model


# The three sublayers, each pre-norm with a residual; the names (SelfAttention, EncDecAttention,
# DenseReluDense, layer_norm) are the checkpoint's.
class T5LayerSelfAttention(nn.Module):
    def __init__(self, config: T5Config, has_relative_attention_bias: bool):
        super().__init__()
        self.SelfAttention = T5Attention(config, has_relative_attention_bias)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x, mask, cache=None, layer_idx=0):
        return x + self.SelfAttention(self.layer_norm(x), mask, cache=cache, layer_idx=layer_idx)


class T5LayerCrossAttention(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.EncDecAttention = T5Attention(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x, source, mask, cache=None, layer_idx=0):
        return x + self.EncDecAttention(self.layer_norm(x), mask, source=source, cache=cache, layer_idx=layer_idx)


class T5LayerFF(nn.Module):
    def __init__(self, config: T5Config):
        super().__init__()
        self.DenseReluDense = T5DenseReluDense(config)
        self.layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, x):
        return x + self.DenseReluDense(self.layer_norm(x))


class T5Block(nn.Module):
    """layer[0] self-attention, (decoder only) layer[1] cross-attention, layer[-1] feed-forward."""

    def __init__(self, config: T5Config, is_decoder: bool, has_relative_attention_bias: bool):
        super().__init__()
        self.layer = nn.ModuleList([T5LayerSelfAttention(config, has_relative_attention_bias)])
        if is_decoder:
            self.layer.append(T5LayerCrossAttention(config))
        self.layer.append(T5LayerFF(config))

    def forward(self, x, self_mask, source=None, cross_mask=None, cache=None, layer_idx=0):
        x = self.layer[0](x, self_mask, cache, layer_idx)
        if source is not None:
            x = self.layer[1](x, source, cross_mask, cache, layer_idx)
        return self.layer[-1](x)


class T5Stack(nn.Module):
    """The encoder (bidirectional) or the decoder (causal, with cross-attention): embeddings -> final
    normed states (B, T, E)."""

    def __init__(self, config: T5Config, is_decoder: bool):
        super().__init__()
        self.is_decoder = is_decoder
        self.embed_tokens = nn.Embedding(config.vocab_size, config.d_model)   # its weight: usually `shared`'s
        n = config.num_decoder_layers if is_decoder else config.num_layers
        self.block = nn.ModuleList(T5Block(config, is_decoder, has_relative_attention_bias=i == 0) for i in range(n))
        self.final_layer_norm = T5LayerNorm(config.d_model, config.layer_norm_epsilon)

    def forward(self, input_ids=None, inputs_embeds=None, attention_mask=None, encoder_hidden_states=None,
                encoder_attention_mask=None, cache: Optional[CrossAttentionCache] = None) -> torch.Tensor:
        """attention_mask: None (no padding) or (B, S) 1/0 over the stack's own tokens, S = past + T;
        encoder_attention_mask: None or (B, S_enc) over the encoder states (decoder only)."""
        x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds  # (B, T, E)
        B, T, _ = x.shape
        past = cached_tokens(cache, B, T, x.dtype)
        S = past + T

        # One additive mask for every self-attention layer: the first block's relative bias where a key is
        # visible, finfo.min where it is not (Transformers replaces masked entries the same way).
        bias = self.block[0].layer[0].SelfAttention.position_bias(T, S, past, bidirectional=not self.is_decoder)
        visible = None                                                               # (B or 1, 1, T, S) bool
        if self.is_decoder:   # query i (at position past + i) sees keys up to itself
            visible = (torch.arange(S, device=x.device) <= torch.arange(past, S, device=x.device)[:, None])[None, None]
        if attention_mask is not None:
            keys = attention_mask[:, None, None, :].bool()
            visible = keys if visible is None else visible & keys
        self_mask = bias if visible is None else torch.where(visible, bias, torch.finfo(bias.dtype).min)

        cross_mask = None     # cross-attention has no position bias: only the encoder's padding
        if encoder_attention_mask is not None:
            cross_mask = encoder_attention_mask[:, None, None, :].bool()             # (B, 1, 1, S_enc)
        for i, block in enumerate(self.block):     # the last block's cache write advances cache.length
            x = block(x, self_mask, encoder_hidden_states, cross_mask, cache, i)
        return self.final_layer_norm(x)


class T5ForConditionalGeneration(GenerativeModel):
    """Encoder + decoder + lm_head: `encode`, `decode`, a forward with the T5 loss, and `generate`
    (minivlm.generation's encoder-decoder loop: returns the decoder tokens (B, 1 + N))."""
    config_class = T5Config
    is_encoder_decoder = True
    # Hub checkpoints and Transformers use this module's names. Older ones also hold a relative bias
    # for the decoder's first cross-attention that T5 never uses (Transformers ignores it too).
    checkpoint_ignore = [r"^decoder\.block\.0\.layer\.1\.EncDecAttention\.relative_attention_bias\.weight$"]

    def __init__(self, config: T5Config):
        super().__init__()
        self.config = config
        self.shared = nn.Embedding(config.vocab_size, config.d_model)
        self.encoder = T5Stack(config, is_decoder=False)
        self.decoder = T5Stack(config, is_decoder=True)
        self.lm_head = nn.Linear(config.d_model, config.vocab_size, bias=False)
        if config.tie_word_embeddings:                      # one Parameter under four names
            self.encoder.embed_tokens.weight = self.decoder.embed_tokens.weight = self.shared.weight
            self.lm_head.weight = self.shared.weight

    @property
    def keep_in_float32(self) -> list:
        """Every FFN output projection `wo` when the model is float16, as Transformers
        (`_keep_in_fp32_modules = ["wo"]`, applied for float16 only: bfloat16, float32 and float64 models keep
        one dtype). The loader reads this after casting the (meta) model to the requested dtype."""
        if self.shared.weight.dtype != torch.float16:
            return []
        return [name for name, _ in self.named_modules() if name.endswith(".wo")]

    def tied_weights(self) -> dict:
        """The weights the config ties to `shared` (all three, or none when tie_word_embeddings was set to
        False); the loader keeps one separate where the checkpoint stores it with other values."""
        if not self.config.tie_word_embeddings:
            return {}
        return {name: "shared.weight" for name in
                ("encoder.embed_tokens.weight", "decoder.embed_tokens.weight", "lm_head.weight")}

    def get_input_embeddings(self) -> nn.Embedding:
        return self.shared

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None) -> CrossAttentionCache:
        """An empty decoder cache for `batch_size` rows of up to `max_length` decoder tokens; dtype and
        device default to the embedding weight's."""
        weight, c = self.shared.weight, self.config
        return CrossAttentionCache(c.num_decoder_layers, batch_size, c.num_heads, max_length, c.d_kv,
                                   dtype=dtype or weight.dtype, device=device or weight.device)

    @rejects_unknown_kwargs
    def encode(self, input_ids=None, attention_mask=None, inputs_embeds=None) -> torch.Tensor:
        """The encoder states (B, S, E) of input_ids (B, S) or inputs_embeds (B, S, E). attention_mask:
        (B, S), 1 = real token, 0 = pad (T5 tokenizers pad on the right; any side works)."""
        mask = _check_encode_inputs(self.config, input_ids, attention_mask, inputs_embeds)   # None: no pad
        return self.encoder(input_ids, inputs_embeds, attention_mask=mask)

    @rejects_unknown_kwargs
    def decode(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask=None,
               decoder_attention_mask=None, cache: Optional[CrossAttentionCache] = None,
               logits_to_keep: int = 0) -> ModelOutput:
        """Logits (B, T, V) for decoder_input_ids (B, T) attending to encoder_hidden_states (B, S, E);
        (B, k, V) for the last k positions when logits_to_keep = k > 0. encoder_attention_mask: (B, S);
        decoder_attention_mask: (B, cached + T), 1 = real token (default: all real). cache: from
        `new_cache`, extended by T tokens. `.hidden_states`: the decoder's final normed states (B, T, E)."""
        enc_mask, dec_mask = _check_decode_inputs(self.config, decoder_input_ids, encoder_hidden_states,
                                                  encoder_attention_mask, decoder_attention_mask, cache, logits_to_keep)
        hidden = self.decoder(decoder_input_ids, attention_mask=dec_mask, encoder_hidden_states=encoder_hidden_states,
                              encoder_attention_mask=enc_mask, cache=cache)         # (B, T, E)
        h = hidden[:, -logits_to_keep:] if logits_to_keep else hidden
        if self.config.scale_decoder_outputs:   # T5 v1.0: the head sees E^-0.5 scaled states
            h = h * self.config.d_model ** -0.5
        return ModelOutput(logits=self.lm_head(h), hidden_states=hidden)

    @rejects_unknown_kwargs
    def forward(self, input_ids=None, attention_mask=None, decoder_input_ids=None, decoder_attention_mask=None,
                labels=None, inputs_embeds=None, encoder_hidden_states=None,
                cache: Optional[CrossAttentionCache] = None, logits_to_keep: int = 0) -> ModelOutput:
        """Encode (unless encoder_hidden_states (B, S, E) are given), then decode. With labels (B, T) and
        no decoder_input_ids, the decoder inputs are the labels shifted right behind
        decoder_start_token_id (-100 -> pad). `.loss`: mean cross-entropy of the logits against the labels
        (not shifted: the decoder inputs already are), -100 ignored; in the logits' dtype as Transformers,
        but float32 for 16-bit logits."""
        _check_forward_inputs(input_ids, inputs_embeds, encoder_hidden_states, decoder_input_ids, labels)
        if encoder_hidden_states is None:   # the mask goes on to decode only when it has a pad
            attention_mask = _check_encode_inputs(self.config, input_ids, attention_mask, inputs_embeds)
            encoder_hidden_states = self.encoder(input_ids, inputs_embeds, attention_mask=attention_mask)  # (B, S, E)
        if decoder_input_ids is None:
            decoder_input_ids = self.shift_right(labels)
        out = self.decode(decoder_input_ids, encoder_hidden_states, attention_mask, decoder_attention_mask,
                          cache=cache, logits_to_keep=logits_to_keep)
        if labels is not None:
            out.loss = _seq2seq_loss(out.logits, labels)
        return out

    def shift_right(self, labels: torch.Tensor) -> torch.Tensor:
        """Decoder inputs for labels (B, T): decoder_start_token_id, then labels[:, :-1], with -100 -> pad."""
        _check_shift_right(self.config, labels)
        shifted = torch.full_like(labels, self.config.decoder_start_token_id)
        shifted[:, 1:] = labels[:, :-1]
        return shifted.masked_fill(shifted == -100, self.config.pad_token_id)


def _seq2seq_loss(logits, labels):
    """Mean cross-entropy of logits (B, T, V) against labels (B, T), -100 ignored; float32 for 16-bit logits."""
    if labels.shape != logits.shape[:-1]:
        raise ValueError(f"labels: expected shape {tuple(logits.shape[:-1])} (the logits' batch and "
                         f"length), got {tuple(labels.shape)}")
    logits = logits.float() if logits.dtype in (torch.float16, torch.bfloat16) else logits
    return F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1).to(logits.device),
                           ignore_index=-100)


# --------------------------------------------------------------------------------------------------
# The checks
# --------------------------------------------------------------------------------------------------

def _validate_t5_config(c: T5Config):
    if c.model_type != "t5":
        raise ValueError(f"T5Config: model_type must be 't5', got {c.model_type!r}")
    positive_ints(c, "vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                  "relative_attention_num_buckets", "relative_attention_max_distance")
    if c.relative_attention_num_buckets < 4:   # the encoder's exact half must hold distance 0
        raise ValueError(f"T5Config: relative_attention_num_buckets must be >= 4, "
                         f"got {c.relative_attention_num_buckets}")
    if c.relative_attention_max_distance <= c.relative_attention_num_buckets // 2:
        raise ValueError(f"T5Config: relative_attention_max_distance must exceed the exact-distance buckets "
                         f"(relative_attention_num_buckets // 2 = {c.relative_attention_num_buckets // 2}), "
                         f"got {c.relative_attention_max_distance}")
    positive_numbers(c, "layer_norm_epsilon")
    parts = c.feed_forward_proj.split("-") if isinstance(c.feed_forward_proj, str) else []
    if not 1 <= len(parts) <= 2 or (len(parts) == 2 and parts[0] != "gated"):
        raise ValueError(f"T5Config: feed_forward_proj must be 'ACT' or 'gated-ACT' (e.g. 'relu', "
                         f"'gated-gelu'), got {c.feed_forward_proj!r}")
    try:
        activation(c.dense_act_fn)
    except ValueError as e:
        raise ValueError(f"T5Config: feed_forward_proj {c.feed_forward_proj!r}: {e}") from None
    bools(c, "tie_word_embeddings")
    if c.scale_decoder_outputs is not None:
        bools(c, "scale_decoder_outputs")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x) if x is None else f"a {type(x).__name__}"


def _check_stack_inputs(fn, input_ids, inputs_embeds, config, ids_name="input_ids"):
    """The (B, T) ids (in the vocabulary) or (B, T, E) embeddings a stack gets (exactly one of them);
    returns the one given."""
    width = config.d_model
    if (input_ids is None) == (inputs_embeds is None):
        raise ValueError(f"{fn}: pass exactly one of {ids_name} and inputs_embeds")
    if input_ids is not None:
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0 or \
                input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
            raise ValueError(f"{fn}: {ids_name} must be an integer (batch, length >= 1) tensor, got "
                             f"{_describe(input_ids)}")
        check_token_ids(ids_name, input_ids, config.vocab_size)
        return input_ids
    if not isinstance(inputs_embeds, torch.Tensor) or inputs_embeds.dim() != 3 or inputs_embeds.shape[1] == 0 \
            or inputs_embeds.shape[2] != width or not inputs_embeds.is_floating_point():
        raise ValueError(f"{fn}: inputs_embeds must be a float (batch, length >= 1, {width}) tensor, got "
                         f"{_describe(inputs_embeds)}")
    return inputs_embeds


def _padding(fn, name, mask, shape):
    """A 1/0 padding mask of the given (B, L) shape, or None where there is none or it has no pad. Its
    values cost one device sync, not spent in generate's decode steps (generate checked the mask at the
    prefill and passes it only when it has a pad): the mask then goes on as it is."""
    if mask is None:
        return None
    if not isinstance(mask, torch.Tensor) or tuple(mask.shape) != tuple(shape):
        raise ValueError(f"{fn}: {name} must be a tensor of shape {tuple(shape)} (batch, length), "
                         f"got {_describe(mask)}")
    if in_decode_step():
        return mask
    binary, no_pad = torch.stack([((mask == 0) | (mask == 1)).all(), mask.all()]).tolist()
    if not binary:
        raise ValueError(f"{fn}: {name} must hold only 0 (pad) and 1 (real token)")
    return None if no_pad else mask


def _check_encode_inputs(config, input_ids, attention_mask, inputs_embeds):
    """The encoder's inputs; returns attention_mask, or None where it has no pad."""
    x = _check_stack_inputs("encode", input_ids, inputs_embeds, config)
    return _padding("encode", "attention_mask", attention_mask, x.shape[:2])


def _check_decode_inputs(config, decoder_input_ids, encoder_hidden_states, encoder_attention_mask,
                         decoder_attention_mask, cache, logits_to_keep):
    """The decoder's inputs; returns the encoder and decoder padding masks, each None where it has no pad."""
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"T5ForConditionalGeneration: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
    y = _check_stack_inputs("decode", decoder_input_ids, None, config, ids_name="decoder_input_ids")
    B, T = y.shape[:2]
    if not isinstance(encoder_hidden_states, torch.Tensor) or encoder_hidden_states.dim() != 3 or \
            encoder_hidden_states.shape[0] != B or encoder_hidden_states.shape[2] != config.d_model:
        raise ValueError(f"decode: encoder_hidden_states must be ({B}, S, {config.d_model}), got "
                         f"{_describe(encoder_hidden_states)}")
    past = cache.length if cache is not None else 0
    enc_mask = _padding("decode", "encoder_attention_mask", encoder_attention_mask,
                        encoder_hidden_states.shape[:2])
    dec_mask = _padding("decode", "decoder_attention_mask", decoder_attention_mask, (B, past + T))
    return enc_mask, dec_mask


def _check_forward_inputs(input_ids, inputs_embeds, encoder_hidden_states, decoder_input_ids, labels):
    if encoder_hidden_states is not None and (input_ids is not None or inputs_embeds is not None):
        raise ValueError("forward: pass encoder inputs (input_ids / inputs_embeds) or encoder_hidden_states, "
                         "not both")
    if decoder_input_ids is None and labels is None:
        raise ValueError("forward: T5 needs decoder_input_ids, or labels to make them from")


def _check_shift_right(config, labels):
    start, pad = config.decoder_start_token_id, config.pad_token_id
    if start is None or pad is None:
        raise ValueError(f"forward: making decoder inputs from labels needs decoder_start_token_id and "
                         f"pad_token_id in the config, got {start} and {pad}")
    if not isinstance(labels, torch.Tensor) or labels.dim() != 2 or labels.dtype.is_floating_point:
        raise ValueError(f"labels: expected an integer (batch, length) tensor, got {_describe(labels)}")
