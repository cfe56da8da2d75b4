"""IDEFICS: a frozen LLaMA that reads interleaved images and text through gated cross-attention layers.

Papers: Alayrac et al. 2022, "Flamingo: a Visual Language Model for Few-Shot Learning" (the Perceiver
resampler and the tanh-gated cross-attention blocks inserted between frozen decoder layers), Laurencon et
al. 2023, "OBELICS" (IDEFICS, the open reproduction), LLaMA (Touvron et al. 2023). Reference
implementation: Transformers' `models/idefics/` (modeling_idefics.py, perceiver.py, vision.py),
whose outputs the tests match and whose parameter names this module mirrors.

    pixel_values (B, Ni, 3, R, R) -> CLIP ViT, last layer WITHOUT post_layernorm  (B*Ni, 1+P, E_v)
        -> Perceiver resampler (if use_resampler)                                 (B*Ni, Q, E_v)
        = image states, flattened per sample                                      (B, Ni*Q, E_v)
    x = embed_tokens(ids)  (ids >= vocab_size read the additional table)          (B, T, E)
    for idx, layer in enumerate(decoder layers):
        if idx % cross_layer_interval == 0:    # the gated block runs BEFORE its decoder layer
            x = x + tanh(alpha_cross_attn) * gate * XAttn(rms(x), image states)   # gate: 0 for a token
            x = x + tanh(alpha_dense) * MLP(rms(x))                               # that sees no image
        x = LLaMA layer(x)                     # rotary self-attention (text only), SwiGLU MLP
    logits = cat(W norm(x), W_additional norm(x))                                 (B, T, V + extra)

Ni is the number of image slots per sample, Q the latents of the resampler (without it, the 1 + P vision
states of an image take their place).

Interleaving: image_attention_mask (B, T, Ni) says which images token t may attend to; the processor makes it
one-hot on the most recent image at or before t (all zero before the first image). A token with no visible
image gets no cross-attention output at all (Transformers computes a uniform softmax over the masked scores
and then zeroes it; minivlm's kernel returns 0 for such a row, and the gate zeroes it too).

What is imported from minivlm.models.llama (the same math): the rotary embedding (cos/sin in float32,
applied by ops.rope), the self-attention that writes the KV cache, the SwiGLU MLP, the decoder layer's
residual wiring. What differs: IdeficsRMSNorm (below: the casting order), the decoupled embedding and head.

What differs from Transformers (same numbers, less machinery):
- The images are encoded once: the cache (`ImageCache`, models/cache.py) keeps the image states, the last
  row of image_attention_mask (new tokens see what the last prompt token saw, as Transformers' generate
  extends it) and each gated layer's image keys/values, which Transformers recomputes at every decoding
  step.
- The cross-attention gets a bool mask; Transformers builds an additive 0 / finfo.min one. Its attention
  modules carry is_causal=True even for cross-attention, but Transformers always passes the image mask,
  so SDPA never applies it there: cross-attention is never causal here.
- The loss is the cross-entropy over all vocab + additional_vocab_size logits. Transformers reshapes
  the logits to (-1, vocab_size) in its loss, which is wrong (or fails) when additional_vocab_size > 0.
- interpolate_pos_encoding (ViT positions for other image sizes) is not implemented.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._checks import check_token_ids, has_padding, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import ModelOutput, RMSNorm, causal_lm_loss
from ._config import divides, known_fields, non_negative_ints, one_of, positive_ints, to_transformers_dict

# The settings of Transformers' IdeficsConfig that minivlm does not use, at their defaults.
TRANSFORMERS_DEFAULTS = dict(dropout=0.0, freeze_lm_head=False, freeze_text_layers=True,
                             freeze_text_module_exceptions=[], freeze_vision_layers=True,
                             freeze_vision_module_exceptions=[], initializer_range=0.02, use_cache=True)
from .clip import CLIPVisionConfig, CLIPVisionModel
from .cache import ImageCache, cached_tokens
from .llama import (LlamaConfig, LlamaDecoderLayer, LlamaMLP, LlamaRotaryEmbedding, check_logits_to_keep,
                    read_rope_parameters)

# Transformers' IdeficsVisionConfig defaults, in CLIPVisionConfig's names (embed_dim = hidden_size).
IDEFICS_VISION_DEFAULTS = dict(hidden_size=768, intermediate_size=5120, num_hidden_layers=32, num_attention_heads=16,
                               image_size=224, patch_size=14, hidden_act="gelu", layer_norm_eps=1e-5)
ALPHA_TYPES = ("float", "vector")
ALPHA_INITIALIZERS = ("zeros", "ones", "normal", "gaussian", "random")


@dataclass
class IdeficsPerceiverConfig:
    """perceiver_config of an IDEFICS config.json (its own use_resampler flag is ignored, as Transformers
    does: the top-level one decides)."""
    resampler_n_latents: int = 64          # Q, the latents each image is compressed to
    resampler_depth: int = 6               # attention + MLP blocks
    resampler_n_heads: int = 16            # H of the resampler's attention
    resampler_head_dim: int = 96           # D of the resampler's attention
    qk_layer_norms_perceiver: bool = False   # LayerNorm(D) on q and k
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "IdeficsPerceiverConfig":
        config = cls(**known_fields(cls, d or {}))
        positive_ints(config, "resampler_n_latents", "resampler_depth", "resampler_n_heads", "resampler_head_dim")
        return config

    def to_dict(self) -> dict:
        """The perceiver_config dict Transformers writes (its model_type is spelled so there)."""
        return to_transformers_dict(self, "idefics_perciever", {"use_resampler": False})


@dataclass
class IdeficsConfig:
    """An IDEFICS config.json; omitted fields get Transformers' IdeficsConfig defaults (idefics-9b's
    decoder). The freeze_* flags, dropout and initializer_range do not change the forward and are ignored."""
    vision_config: CLIPVisionConfig = field(default_factory=lambda: CLIPVisionConfig(**IDEFICS_VISION_DEFAULTS))
    perceiver_config: IdeficsPerceiverConfig = field(default_factory=IdeficsPerceiverConfig)
    vocab_size: int = 32000                # V, rows of the base embedding / head
    additional_vocab_size: int = 0         # extra ids V.. (e.g. <image>), their own embedding and head rows
    hidden_size: int = 4096                # E
    intermediate_size: int = 11008         # F, the SwiGLU width (decoder layers and gated blocks)
    num_hidden_layers: int = 32
    num_attention_heads: int = 32          # H; D = E // H (no GQA)
    hidden_act: str = "silu"
    rms_norm_eps: float = 1e-6
    rope_parameters: dict = field(default_factory=lambda: {"rope_type": "default", "rope_theta": 10000.0})
    max_position_embeddings: int = 2048    # only llama3 rope reads it
    cross_layer_interval: int = 1          # a gated cross-attention block before every k-th decoder layer
    qk_layer_norms: bool = False           # RMSNorm(D) on the cross-attention's q and k
    alpha_type: str = "float"              # the gates tanh(alpha): one scalar ("float") or one per channel ("vector")
    alpha_initializer: str = "zeros"       # only for a model built without a checkpoint
    alphas_initializer_range: float = 0.0  # std of the "normal" initializer
    use_resampler: bool = False            # compress each image with the Perceiver resampler
    tie_word_embeddings: bool = False      # head rows share the embedding tables
    pad_token_id: Optional[int] = 0
    bos_token_id: Optional[int] = 1
    eos_token_id: Union[int, list, None] = 2
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        _validate_idefics_config(self)
        self.decoder = self.llama_config()    # validates the activation and rope; used to build the decoder

    def llama_config(self) -> LlamaConfig:
        """The decoder's settings as a LlamaConfig (MHA, no biases), for the layers imported from llama.py."""
        return LlamaConfig(vocab_size=self.vocab_size, hidden_size=self.hidden_size,
                           intermediate_size=self.intermediate_size, num_hidden_layers=self.num_hidden_layers,
                           num_attention_heads=self.num_attention_heads, hidden_act=self.hidden_act,
                           rms_norm_eps=self.rms_norm_eps, rope_parameters=dict(self.rope_parameters),
                           max_position_embeddings=self.max_position_embeddings)

    @classmethod
    def from_dict(cls, d: dict) -> "IdeficsConfig":
        """Read a config.json dict, with IdeficsVisionConfig's names and the rotary settings in either spelling."""
        return _read_idefics_config(cls, d)

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes (the vision tower's width as embed_dim); from_dict
        reads it back to an equal config."""
        return to_transformers_dict(self, "idefics", TRANSFORMERS_DEFAULTS,
                                    vision_config=self.vision_config.to_dict("idefics_vision"))


# ----------------------------------------------------------------------------------------------------
# Decoder pieces that differ from Llama's
# ----------------------------------------------------------------------------------------------------

# IDEFICS's RMSNorm casts like T5's (models/_common.py), not like Llama's: Llama normalises a float32 copy
# and rounds it to the input dtype before scaling; IDEFICS takes only the mean square in float32 and
# multiplies x in its own dtype. Same numbers in float32 and in one shared 16-bit dtype; not in float64.
IdeficsRMSNorm = RMSNorm


class IdeficsDecoderLayer(LlamaDecoderLayer):
    """Llama's layer (rotary self-attention with the KV cache, SwiGLU MLP, pre-norm residuals) with
    IDEFICS's RMSNorm."""

    def __init__(self, config: LlamaConfig, layer_idx: int):
        super().__init__(config, layer_idx)
        self.input_layernorm = IdeficsRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_attention_layernorm = IdeficsRMSNorm(config.hidden_size, config.rms_norm_eps)


class IdeficsDecoupledEmbedding(nn.Module):
    """Ids < vocab_size read `weight`, ids >= vocab_size read `additional_embedding` (id - vocab_size)."""

    def __init__(self, vocab_size: int, additional: int, dim: int):
        super().__init__()
        self.vocab_size = vocab_size
        self.weight = nn.Parameter(torch.randn(vocab_size, dim))
        if additional > 0:
            self.additional_embedding = nn.Embedding(additional, dim)

    def forward(self, ids):
        if not hasattr(self, "additional_embedding"):
            return F.embedding(ids, self.weight)
        extra = ids >= self.vocab_size                                                # (B, T)
        base = F.embedding(ids.masked_fill(extra, 0), self.weight)                    # (B, T, E)
        added = self.additional_embedding((ids - self.vocab_size).clamp_min(0))       # (B, T, E)
        return torch.where(extra[..., None], added, base)


class IdeficsDecoupledLinear(nn.Module):
    """The head: logits over the base vocabulary, then over the additional ids, concatenated."""

    def __init__(self, dim: int, vocab_size: int, additional: int):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(vocab_size, dim))
        nn.init.normal_(self.weight, std=dim ** -0.5)
        if additional > 0:
            self.additional_fc = nn.Linear(dim, additional, bias=False)

    def forward(self, x):
        logits = F.linear(x, self.weight)                                             # (B, T, V)
        if hasattr(self, "additional_fc"):
            logits = torch.cat([logits, self.additional_fc(x)], dim=-1)               # (B, T, V + extra)
        return logits


# ----------------------------------------------------------------------------------------------------
# Gated cross-attention (text queries, image keys/values)
# ----------------------------------------------------------------------------------------------------

class IdeficsCrossAttention(nn.Module):
    """Multi-head attention from the text (queries) to the image states (keys/values of width E_v); no
    rotary, no bias, optional RMSNorm(D) on q and k after the projections."""

    def __init__(self, config: IdeficsConfig):
        super().__init__()
        E, E_v = config.hidden_size, config.vision_config.hidden_size
        self.num_heads, self.head_dim = config.num_attention_heads, E // config.num_attention_heads
        self.q_proj = nn.Linear(E, E, bias=False)
        self.k_proj = nn.Linear(E_v, E, bias=False)
        self.v_proj = nn.Linear(E_v, E, bias=False)
        self.o_proj = nn.Linear(E, E, bias=False)
        if config.qk_layer_norms:
            self.q_layer_norm = IdeficsRMSNorm(self.head_dim, config.rms_norm_eps)
            self.k_layer_norm = IdeficsRMSNorm(self.head_dim, config.rms_norm_eps)

    def image_keys_values(self, image_states):
        """image_states (B, S, E_v), S = Ni*Q -> k, v (B, H, S, D); computed once per generation."""
        B, S, _ = image_states.shape
        k = self.k_proj(image_states).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)   # (B, H, S, D)
        v = self.v_proj(image_states).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)
        if hasattr(self, "k_layer_norm"):
            k = self.k_layer_norm(k)
        return k, v

    def forward(self, x, k, v, image_mask):
        B, T, E = x.shape
        q = self.q_proj(x).view(B, T, self.num_heads, self.head_dim).transpose(1, 2)   # (B, H, T, D)
        if hasattr(self, "q_layer_norm"):
            q = self.q_layer_norm(q)
        y = ops.attention(q, k, v, image_mask)                                          # (B, H, T, D)
        return self.o_proj(y.transpose(1, 2).reshape(B, T, E))


class IdeficsGatedCrossAttentionLayer(nn.Module):
    """x + tanh(alpha_cross_attn) * gate * XAttn(rms(x)), then x + tanh(alpha_dense) * MLP(rms(x))."""

    def __init__(self, config: IdeficsConfig):
        super().__init__()
        E = config.hidden_size
        self.cross_attn = IdeficsCrossAttention(config)
        self.mlp = LlamaMLP(config.decoder)
        self.input_layernorm = IdeficsRMSNorm(E, config.rms_norm_eps)
        self.post_attention_layernorm = IdeficsRMSNorm(E, config.rms_norm_eps)
        shape = (1,) if config.alpha_type == "float" else (1, 1, E)     # the checkpoint's shapes
        init = config.alpha_initializer
        make = {"zeros": torch.zeros, "ones": torch.ones}.get(
            init, lambda *s: torch.randn(*s) * config.alphas_initializer_range)
        self.alpha_cross_attn = nn.Parameter(make(*shape))
        self.alpha_dense = nn.Parameter(make(*shape))

    def forward(self, x, k, v, image_mask, gate):
        """x (B, T, E); k, v (B, H, Ni*Q, D); image_mask (B, 1, T, Ni*Q) bool; gate (B, T) bool."""
        y = self.cross_attn(self.input_layernorm(x), k, v, image_mask)
        # Tokens that see no image get nothing. minivlm's kernel already returns 0 for a row with no visible
        # key; the explicit fill states the rule and keeps it whatever a kernel does with an empty row.
        y = y.masked_fill(~gate[..., None], 0.0)
        x = x + torch.tanh(self.alpha_cross_attn) * y
        return x + torch.tanh(self.alpha_dense) * self.mlp(self.post_attention_layernorm(x))


# ----------------------------------------------------------------------------------------------------
# Perceiver resampler (Flamingo): Q learned latents attend to [image tokens; latents]
# ----------------------------------------------------------------------------------------------------

class IdeficsPerceiverAttention(nn.Module):
    def __init__(self, dim: int, heads: int, head_dim: int, qk_layer_norms: bool):
        super().__init__()
        self.heads, self.head_dim = heads, head_dim
        self.context_layer_norm = nn.LayerNorm(dim)      # eps 1e-5 (nn.LayerNorm's), not the vision eps
        self.latents_layer_norm = nn.LayerNorm(dim)
        if qk_layer_norms:
            self.q_layer_norm = nn.LayerNorm(head_dim)
            self.k_layer_norm = nn.LayerNorm(head_dim)
        self.q_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.k_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.v_proj = nn.Linear(dim, heads * head_dim, bias=False)
        self.output_proj = nn.Linear(heads * head_dim, dim, bias=False)

    def forward(self, context, latents):
        """context (B*Ni, 1+P, E_v), latents (B*Ni, Q, E_v) -> (B*Ni, Q, E_v), each image on its own."""
        context, latents = self.context_layer_norm(context), self.latents_layer_norm(latents)
        both = torch.cat([context, latents], dim=1)                                    # (B*Ni, 1+P + Q, E_v)
        images, Q, _ = latents.shape
        H, D = self.heads, self.head_dim
        q = self.q_proj(latents).view(images, Q, H, D).transpose(1, 2)                     # (B*Ni, H, Q, D)
        k = self.k_proj(both).view(images, -1, H, D).transpose(1, 2)                       # (B*Ni, H, 1+P + Q, D)
        v = self.v_proj(both).view(images, -1, H, D).transpose(1, 2)
        if hasattr(self, "q_layer_norm"):
            q, k = self.q_layer_norm(q), self.k_layer_norm(k)
        y = ops.attention(q, k, v)                        # softmax(q k^T / sqrt(D)) v, no mask
        return self.output_proj(y.transpose(1, 2).reshape(images, Q, H * D))


class IdeficsPerceiverMLP(nn.Module):
    """c_proj(relu(fc(LayerNorm(x)))), no biases."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.ln = nn.LayerNorm(dim)
        self.fc = nn.Linear(dim, hidden, bias=False)
        self.c_proj = nn.Linear(hidden, dim, bias=False)

    def forward(self, x):
        return self.c_proj(F.relu(self.fc(self.ln(x))))


class IdeficsPerceiverResampler(nn.Module):
    def __init__(self, config: IdeficsConfig):
        super().__init__()
        p, E_v = config.perceiver_config, config.vision_config.hidden_size
        self.latents = nn.Parameter(torch.randn(p.resampler_n_latents, E_v))          # (Q, E_v)
        # blocks.i.0 = attention, blocks.i.1 = MLP, as the checkpoint names them.
        self.blocks = nn.ModuleList(
            nn.ModuleList([IdeficsPerceiverAttention(E_v, p.resampler_n_heads, p.resampler_head_dim,
                                                     p.qk_layer_norms_perceiver),
                           IdeficsPerceiverMLP(E_v, 4 * E_v)])
            for _ in range(p.resampler_depth))
        self.layer_norm = nn.LayerNorm(E_v)

    def forward(self, context):
        """context (B*Ni, 1+P, E_v) -> (B*Ni, Q, E_v)."""
        latents = self.latents.expand(context.shape[0], -1, -1)                         # (B*Ni, Q, E_v)
        for attn, mlp in self.blocks:
            latents = latents + attn(context, latents)
            latents = latents + mlp(latents)
        return self.layer_norm(latents)


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------

class IdeficsModel(nn.Module):
    def __init__(self, config: IdeficsConfig):
        super().__init__()
        self.config = config
        llama = config.decoder
        self.embed_tokens = IdeficsDecoupledEmbedding(config.vocab_size, config.additional_vocab_size,
                                                      config.hidden_size)
        self.vision_model = CLIPVisionModel(config.vision_config)
        if config.use_resampler:
            self.perceiver_resampler = IdeficsPerceiverResampler(config)
        self.layers = nn.ModuleList(IdeficsDecoderLayer(llama, i) for i in range(config.num_hidden_layers))
        self.gated_cross_attn_layers = nn.ModuleList(
            IdeficsGatedCrossAttentionLayer(config)
            for _ in range(config.num_hidden_layers // config.cross_layer_interval))
        self.norm = IdeficsRMSNorm(config.hidden_size, config.rms_norm_eps)
        self.rotary_emb = LlamaRotaryEmbedding(llama)

    def encode_images(self, pixel_values=None, image_encoder_embeddings=None):
        """Image states (B, Ni, Q, E_v) from pixel_values (B, Ni, 3, R, R) or from the vision tower's output
        (B, Ni, 1+P, E_v): the tower's last layer without post_layernorm, then the resampler if used."""
        B, Ni = _check_image_inputs(self.config.vision_config, pixel_values, image_encoder_embeddings)
        if pixel_values is not None:
            states = self.vision_model(pixel_values.flatten(0, 1)).last_hidden_state    # (B*Ni, 1+P, E_v)
        else:
            states = image_encoder_embeddings.flatten(0, 1).to(self.embed_tokens.weight.dtype)
        if self.config.use_resampler:
            states = self.perceiver_resampler(states)                                    # (B*Ni, Q, E_v)
        return states.view(B, Ni, *states.shape[1:])

    def forward(self, input_ids, *, pixel_values=None, image_encoder_embeddings=None, perceiver_embeddings=None,
                image_attention_mask=None, attention_mask=None, position_ids=None,
                cache: Optional[ImageCache] = None):
        """Final normed hidden states (B, T, E) and the image states (B, Ni, Q, E_v)."""
        _check_idefics_inputs(self.config, input_ids, pixel_values, image_encoder_embeddings, perceiver_embeddings,
                              image_attention_mask, position_ids, cache)
        B, T = input_ids.shape
        past = cached_tokens(cache, B, T, self.embed_tokens.weight.dtype, attention_mask, "IDEFICS")

        # -- the image states: given now (encoded here), or kept in the cache since the prefill
        images = None                                                                     # (B, Ni, Q, E_v)
        if perceiver_embeddings is not None:
            images = perceiver_embeddings.to(self.embed_tokens.weight.dtype)
        elif pixel_values is not None or image_encoder_embeddings is not None:
            images = self.encode_images(pixel_values, image_encoder_embeddings)
        if images is None:     # a later call: the prefill's states and each gated block's keys and values
            states, cross_kv = cache.image_states, cache.cross
        else:                  # each gated block projects them to keys and values once, below
            states, cross_kv = images.flatten(1, 2), [None] * len(self.gated_cross_attn_layers)   # (B, Ni*Q, E_v)

        # -- which images each token sees: (B, T, Ni) -> bool (B, 1, T, Ni*Q), and the gate (B, T)
        if image_attention_mask is None:
            image_attention_mask = cache.image_mask.expand(B, T, -1)   # new tokens see what the last one saw
        Ni = image_attention_mask.shape[-1]
        Q = states.shape[1] // Ni
        sees = image_attention_mask != 0                                                  # (B, T, Ni)
        gate = sees.any(-1)                                                               # (B, T)
        image_mask = sees[..., None].expand(B, T, Ni, Q).reshape(B, 1, T, Ni * Q)

        # -- text positions and the self-attention mask (as LlamaModel)
        if position_ids is None:
            if attention_mask is not None:   # Transformers: cumsum - 1, pads at 1
                position_ids = (attention_mask.long().cumsum(-1) - 1).masked_fill(attention_mask == 0, 1)[:, -T:]
            else:
                position_ids = torch.arange(past, past + T, device=input_ids.device)
        x = self.embed_tokens(input_ids)                                                  # (B, T, E)
        cos, sin = self.rotary_emb(position_ids, x.dtype)
        mask = None
        if has_padding(attention_mask):
            mask = ops.causal_mask(attention_mask, T, dtype=x.dtype)                      # (B, 1, T, past + T)

        if cache is not None:   # everything is checked: now the cache may keep this call's image side
            cache.image_states, cache.cross = states, cross_kv
            cache.image_mask = image_attention_mask[:, -1:]
        for idx, layer in enumerate(self.layers):
            if idx % self.config.cross_layer_interval == 0:
                i = idx // self.config.cross_layer_interval
                block = self.gated_cross_attn_layers[i]
                if cross_kv[i] is None:
                    cross_kv[i] = block.cross_attn.image_keys_values(states.to(x.dtype))
                x = block(x, *cross_kv[i], image_mask, gate)
            x = layer(x, cos, sin, mask, cache)    # the last layer's cache write advances cache.length
        if images is None:
            images = states.view(B, Ni, Q, -1)
        return self.norm(x), images


class IdeficsForVisionText2Text(GenerativeModel):
    """IDEFICS: logits for interleaved image-text input, the loss, and `generate`, which encodes the images
    once at the prefill and reuses them (through the cache) at every step."""
    config_class = IdeficsConfig
    # Hub checkpoints (HuggingFaceM4/idefics-9b, -80b), Transformers' save_pretrained and its in-memory
    # state dict all use this module's names (model.embed_tokens.*, model.vision_model.*,
    # model.perceiver_resampler.*, model.layers.*, model.gated_cross_attn_layers.*, model.norm, lm_head.*):
    # no renaming. The rotary cos/sin buffers some files hold are not kept (checkpoint_ignore).
    checkpoint_ignore = [r"\.rotary_emb\.(cos|sin)_cached$"]

    def __init__(self, config: IdeficsConfig):
        super().__init__()
        self.config = config
        self.model = IdeficsModel(config)
        self.lm_head = IdeficsDecoupledLinear(config.hidden_size, config.vocab_size, config.additional_vocab_size)
        if config.tie_word_embeddings:
            for name, source in self.tied_weights().items():
                _set(self, name, self.get_parameter(source))

    def tied_weights(self) -> dict:
        if not self.config.tie_word_embeddings:
            return {}
        tied = {"lm_head.weight": "model.embed_tokens.weight"}
        if self.config.additional_vocab_size:
            tied["lm_head.additional_fc.weight"] = "model.embed_tokens.additional_embedding.weight"
        return tied

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None) -> ImageCache:
        weight = self.model.embed_tokens.weight
        c = self.config
        return ImageCache(c.num_hidden_layers, batch_size, c.num_attention_heads, max_length,
                          c.hidden_size // c.num_attention_heads, dtype=dtype or weight.dtype,
                          device=device or weight.device, num_cross_layers=len(self.model.gated_cross_attn_layers))

    @rejects_unknown_kwargs
    def forward(self, input_ids, pixel_values=None, attention_mask=None, image_attention_mask=None, position_ids=None,
                cache: Optional[ImageCache] = None, labels=None, logits_to_keep: int = 0, *,
                image_encoder_embeddings=None, perceiver_embeddings=None) -> ModelOutput:
        """Logits (B, T, V + additional) for input_ids (B, T) with images pixel_values (B, Ni, 3, R, R) and
        image_attention_mask (B, T, Ni) (1 = token t sees image n). With a cache that already holds images,
        both may be omitted: new tokens see the images the last cached token saw. `.loss` when labels are
        given; `.image_hidden_states` (B, Ni, Q, E_v); `.hidden_states` the final normed states (B, T, E)."""
        check_logits_to_keep("IdeficsForVisionText2Text", logits_to_keep)
        hidden, images = self.model(input_ids, pixel_values=pixel_values,
                                    image_encoder_embeddings=image_encoder_embeddings,
                                    perceiver_embeddings=perceiver_embeddings,
                                    image_attention_mask=image_attention_mask, attention_mask=attention_mask,
                                    position_ids=position_ids, cache=cache)
        logits = self.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return ModelOutput(logits=logits, loss=loss, hidden_states=hidden, image_hidden_states=images)


def _set(model: nn.Module, name: str, param: nn.Parameter):
    module, _, attr = name.rpartition(".")
    setattr(model.get_submodule(module), attr, param)


# ----------------------------------------------------------------------------------------------------
# Reading a config.json, and the checks
# ----------------------------------------------------------------------------------------------------

def _read_idefics_config(cls, d: dict) -> IdeficsConfig:
    """An IdeficsConfig from a config.json dict: the vision config in CLIPVisionConfig's names (embed_dim is
    hidden_size) over IDEFICS's defaults, the perceiver config, the rotary settings as LlamaConfig reads them."""
    kwargs = known_fields(cls, d, aliases=("rope_theta", "rope_scaling"))
    for name in ("vision_config", "perceiver_config", "rope_parameters"):
        kwargs.pop(name, None)
    vision = dict(d.get("vision_config") or {})
    if "embed_dim" in vision:                         # IdeficsVisionConfig's name for hidden_size
        vision["hidden_size"] = vision.pop("embed_dim")
    vision.pop("model_type", None)
    rope = read_rope_parameters(d, d.get("max_position_embeddings", cls.max_position_embeddings))
    return cls(vision_config=CLIPVisionConfig.from_dict({**IDEFICS_VISION_DEFAULTS, **vision}),
               perceiver_config=IdeficsPerceiverConfig.from_dict(d.get("perceiver_config") or {}),
               rope_parameters=rope, **kwargs)


def _validate_idefics_config(c: IdeficsConfig):
    positive_ints(c, "vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "cross_layer_interval")
    non_negative_ints(c, "additional_vocab_size")
    divides(c, "num_attention_heads", "hidden_size")
    one_of(c, "alpha_type", ALPHA_TYPES)
    one_of(c, "alpha_initializer", ALPHA_INITIALIZERS)
    # Transformers builds num_hidden_layers // interval blocks but runs one before every layer
    # idx % interval == 0, so it fails (an index error) on the last layers otherwise.
    divides(c, "cross_layer_interval", "num_hidden_layers")
    c.vision_config.validate()


def _check_image_inputs(v: CLIPVisionConfig, pixel_values, image_encoder_embeddings) -> tuple[int, int]:
    """pixel_values (B, Ni >= 1, C, R, R), or else image_encoder_embeddings (B, Ni >= 1, 1+P, E_v); returns (B, Ni)."""
    if pixel_values is not None:
        shape = (v.num_channels, v.image_size, v.image_size)
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5 or \
                tuple(pixel_values.shape[2:]) != shape or pixel_values.shape[1] == 0:
            raise ValueError(f"pixel_values: expected a (batch, images >= 1, {shape[0]}, {shape[1]}, {shape[2]}) "
                             f"tensor, got {_describe(pixel_values)}")
        return tuple(pixel_values.shape[:2])
    e = image_encoder_embeddings
    if not isinstance(e, torch.Tensor) or e.dim() != 4 or e.shape[-1] != v.hidden_size or e.shape[1] == 0:
        raise ValueError(f"image_encoder_embeddings: expected a (batch, images >= 1, tokens, {v.hidden_size}) "
                         f"tensor, got {_describe(e)}")
    return tuple(e.shape[:2])


def _check_idefics_inputs(c: IdeficsConfig, input_ids, pixel_values, image_encoder_embeddings, perceiver_embeddings,
                          image_attention_mask, position_ids, cache):
    """IdeficsModel.forward's arguments: input_ids (B, T) in the base + additional vocabulary; one source of
    images, of B samples with Ni images each, or none when the cache holds the prefill's; image_attention_mask
    (B, T, Ni), which only a call with cached images may omit; position_ids (B, T), (1, T) or (T,). One device
    sync (the ids' range), none in generate's decode steps."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(f"input_ids: expected an integer (batch, sequence) tensor, got {_describe(input_ids)}")
    check_token_ids("input_ids", input_ids, c.vocab_size + c.additional_vocab_size,
                    "vocab_size + additional_vocab_size")        # <image> and co. are additional ids
    B, T = input_ids.shape
    given = [n for n, x in (("pixel_values", pixel_values), ("image_encoder_embeddings", image_encoder_embeddings),
                            ("perceiver_embeddings", perceiver_embeddings)) if x is not None]
    if len(given) > 1:
        raise ValueError(f"IDEFICS: pass one of pixel_values, image_encoder_embeddings, perceiver_embeddings; "
                         f"got {given}")
    if perceiver_embeddings is not None:
        p = perceiver_embeddings
        if not c.use_resampler:
            raise ValueError("perceiver_embeddings: this model has no resampler (use_resampler is false); "
                             "pass pixel_values or image_encoder_embeddings")
        if not isinstance(p, torch.Tensor) or p.dim() != 4 or p.shape[-1] != c.vision_config.hidden_size:
            raise ValueError(f"perceiver_embeddings: expected a (batch, images, latents, "
                             f"{c.vision_config.hidden_size}) tensor, got {_describe(p)}")
        images_batch, Ni = p.shape[:2]
    elif given:
        images_batch, Ni = _check_image_inputs(c.vision_config, pixel_values, image_encoder_embeddings)
    elif cache is None or cache.image_states is None:
        raise ValueError("IDEFICS: the first call needs pixel_values (or image_encoder_embeddings / "
                         "perceiver_embeddings) and image_attention_mask; later calls may reuse them "
                         "through the cache")
    else:
        images_batch, Ni = B, cache.image_mask.shape[-1]
    if images_batch != B:
        raise ValueError(f"{given[0]}: batch size {images_batch} differs from input_ids' {B}")
    if image_attention_mask is None:
        if given or cache is None or cache.image_mask is None:
            raise ValueError(f"image_attention_mask: required with images, a (batch, sequence, images) = "
                             f"({B}, {T}, {Ni}) tensor (1 = the token sees that image)")
    elif not isinstance(image_attention_mask, torch.Tensor) or tuple(image_attention_mask.shape) != (B, T, Ni):
        raise ValueError(f"image_attention_mask: expected (batch, sequence, images) = ({B}, {T}, {Ni}), "
                         f"got {_describe(image_attention_mask)}")
    if position_ids is not None and (position_ids.shape[-1] != T or position_ids.dim() not in (1, 2) or
                                     (position_ids.dim() == 2 and position_ids.shape[0] not in (1, B))):
        raise ValueError(f"position_ids: expected ({B}, {T}) or ({T},), got {_describe(position_ids)}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)} ({x.dtype})"
    return repr(x) if x is None else f"a {type(x).__name__}"
