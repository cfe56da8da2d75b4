"""Kosmos-2: a CLIP vision tower, 64 latent queries that resample it, and a sub-LN decoder that writes
captions with grounding tokens (<phrase>...</phrase><object><patch_index_XXXX>...</object>).

Papers: Peng et al. 2023, "Kosmos-2: Grounding Multimodal Large Language Models to the World"; Huang et al.
2023, "Language Is Not All You Need" (Kosmos-1: the decoder and the latent-query resampler); Wang et al.
2022, "Foundation Transformers" (Magneto: the extra sub-LayerNorms); Radford et al. 2021 (CLIP, the vision
tower, imported from clip.py). Reference implementation: Transformers'
`models/kosmos2/modeling_kosmos2.py` (Kosmos2ForConditionalGeneration), whose outputs the tests match and
whose parameter names this module mirrors (text_model.model.*, vision_model.model.*,
image_to_text_projection.*), so hub checkpoints and Transformers' save_pretrained load without renaming.

Shape letters (docs/notation.md): B prompts (and their images), T tokens in this call, S = cached + T key
positions, E the decoder's width (embed_dim), H heads of width D = E / H, F the MLP's middle width (ffn_dim),
V the vocabulary, Q the latent queries (latent_query_num), and for the vision tower E_v its width, C, R the
image's channels and side, P = (R / p)^2 its patches.

The data flow (shapes for microsoft/kosmos-2-patch14-224: 224 px in 14 px patches, E_v=1024, Q=64, E=2048):

    pixel_values (B, 3, 224, 224) --CLIP ViT-L/14--> last_hidden_state (B, 1+P, E_v) = (B, 257, 1024)
    post_layernorm over the WHOLE sequence (not only the class token), then L2-normalise each vector
    image_to_text_projection:  f = dense(features)                                   (B, 1+P, E)
        x_attn: queries = latent_query (the raw (Q, E) parameter), keys/values = cat(f, latent_query)
        (B, Q, E) image embeddings; no LayerNorm, no mask, no residual
    text decoder: token embeddings, the Q image embeddings written where image_embeds_position_mask is 1,
        THEN everything times sqrt(E) (the image embeddings are scaled too), plus sinusoidal positions
        for each of the `layers` blocks (pre-LN, with two extra "sub-LN"s):
            x = x + out_proj(inner_attn_ln(attention(self_attn_layer_norm(x))))
            x = x + fc2(ffn_layernorm(gelu(fc1(final_layer_norm(x)))))      # ffn_layernorm is over F
        logits = lm_head(layer_norm(x))                                                 (B, T, V)

Positions are fairseq's: the sinusoid table's row `pad_token_id` (1) is zero, and the real tokens of a
chunk of T new tokens after `past` cached ones read rows (cumsum(is_real) + past) * is_real + pad, where
is_real = (input_ids != pad_token_id): a prompt's first real token reads row 2, a pad the zero row. With a
cache the cumsum covers only the new tokens but `past` counts the cached pads too, so a decode step reads
row past + 2 whatever the padding: a row with 2 left pads goes ..., 9 -> 12, as in Transformers' generate
(renumbering the whole sequence, which skips the pads, would give ..., 9 -> 10). Transformers takes the pads
from input_ids, not from attention_mask, and so does this file (a token equal to pad_token_id reads the
zero row wherever it stands; the attention mask only hides keys).

What differs from Transformers (same numbers, less machinery):
- Transformers' mask is a causal part (only when T > 1) plus the padding part, both finfo.min, summed, so
  an entry can reach -inf; minivlm uses ops.causal_mask (finite min, one term) or, without padding, no mask
  tensor at all (the kernel's is_causal). Both give exactly 0 weight to hidden keys, so every real token's
  output is the same; pad positions' outputs differ and are never read.
- The sinusoid rows are computed for the positions asked for (no table buffer to grow).
- The KV cache is models/cache.py's `KVCache` (preallocated, written in place).
- generate is the shared minivlm.generation loop; it numbers positions cumsum(mask) - 1, which is not
  Kosmos-2's numbering (see above), so during generate the model drops them and numbers its own, as
  Transformers' Kosmos-2 does (its prepare_inputs_for_generation pops position_ids).
- Dropout, LayerDrop and the unused text cross-attention (add_cross_attention) are not implemented.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from .._checks import check_token_ids, has_padding, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import ModelOutput, activation, causal_lm_loss
from ._config import bools, divides, in_vocab, known_fields, positive_ints, positive_numbers, to_transformers_dict

# The settings of Transformers' Kosmos2TextConfig that minivlm does not use, at their defaults.
TEXT_DEFAULTS = dict(activation_dropout=0.0, attention_dropout=0.1, dropout=0.1, init_std=0.02, layerdrop=0.0,
                     use_cache=True)
from .clip import CLIPVisionConfig, CLIPVisionModel, CLIPVisionOutput
from .cache import KVCache, cached_tokens

# Kosmos-2's vision tower when a config omits a field: CLIP ViT-L/14 at 224 px (Transformers'
# Kosmos2VisionConfig defaults, which differ from CLIPVisionConfig's own ViT-B/32 ones).
KOSMOS2_VISION_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                               num_attention_heads=16, image_size=224, patch_size=14, hidden_act="quick_gelu")


@dataclass
class Kosmos2TextConfig:
    """The decoder's settings (config.json's "text_config"); defaults are Transformers'
    Kosmos2TextConfig, i.e. microsoft/kosmos-2-patch14-224's."""
    vocab_size: int = 65037               # V
    max_position_embeddings: int = 2048   # nominal table size; sinusoids extend to any position
    embed_dim: int = 2048                 # E, the residual stream width
    layers: int = 24                      # decoder blocks
    ffn_dim: int = 8192                   # F, the MLP's middle width (and ffn_layernorm's width)
    attention_heads: int = 32             # H; head width D = E / H
    activation_function: str = "gelu"     # the MLP activation
    layer_norm_eps: float = 1e-5          # epsilon of every LayerNorm
    scale_embedding: bool = True          # multiply the input embeddings by sqrt(E)
    tie_word_embeddings: bool = True      # lm_head shares embed_tokens' weight
    add_cross_attention: bool = False     # text cross-attention layers; unused by Kosmos-2, not supported
    pad_token_id: Optional[int] = 1       # the zero row of the position table, and the position offset
    bos_token_id: Optional[int] = 0
    eos_token_id: Union[int, list, None] = 2
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Kosmos2TextConfig":
        return _read_text_config(cls, d)

    def to_dict(self) -> dict:
        """The text_config dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "kosmos_2_text_model", TEXT_DEFAULTS)

    def validate(self):
        _validate_text_config(self)

    @property
    def head_dim(self) -> int:
        return self.embed_dim // self.attention_heads


@dataclass
class Kosmos2Config:
    """A Kosmos-2 config.json (model_type "kosmos-2"); omitted fields get Transformers' defaults."""
    vision_config: CLIPVisionConfig = field(default_factory=lambda: CLIPVisionConfig(**KOSMOS2_VISION_DEFAULTS))
    text_config: Kosmos2TextConfig = field(default_factory=Kosmos2TextConfig)
    latent_query_num: int = 64            # Q, image embeddings per image (and image positions per prompt)
    tie_word_embeddings: bool = True      # lm_head shares embed_tokens' weight (so does text_config's flag)
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Kosmos2Config":
        return _read_config(cls, d)

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "kosmos-2", {},
                                    vision_config=self.vision_config.to_dict("kosmos_2_vision_model"))

    def validate(self):
        _validate_config(self)

    @property
    def tied(self) -> bool:
        # Transformers ties the head when either the top-level or the text model's flag asks for it.
        return self.tie_word_embeddings or self.text_config.tie_word_embeddings


def sinusoidal_positions(position_ids: torch.Tensor, dim: int, padding_idx: int) -> torch.Tensor:
    """Rows `position_ids` (any shape) of the fairseq/tensor2tensor sinusoid table, (..., dim) in float32:
    row p = [sin(p f_0), ..., sin(p f_{h-1}) | cos(p f_0), ..., cos(p f_{h-1})], f_i = 10000^(-i / (h - 1)),
    h = dim // 2 (halves concatenated, not interleaved; a zero column last for odd dim); row padding_idx is 0.
    """
    half = dim // 2
    freq = torch.exp(torch.arange(half, device=position_ids.device).float() * -(math.log(10000) / (half - 1)))
    angles = position_ids[..., None].float() * freq                          # (..., h) in float32
    rows = torch.cat([angles.sin(), angles.cos()], dim=-1)                   # (..., 2h)
    if dim % 2:
        rows = F.pad(rows, (0, 1))
    return rows.masked_fill((position_ids == padding_idx)[..., None], 0.0)


class KosmosTextAttention(nn.Module):
    """Multi-head attention of the decoder blocks (causal self-attention, with `inner_attn_ln` before
    out_proj) and of the image-to-text projection (queries attending to a `context`, no sub-LN)."""

    def __init__(self, embed_dim: int, num_heads: int, *, inner_attn_ln: bool, eps: float, layer_idx: int = 0):
        super().__init__()
        self.layer_idx, self.num_heads, self.head_dim = layer_idx, num_heads, embed_dim // num_heads
        self.k_proj = nn.Linear(embed_dim, embed_dim)
        self.v_proj = nn.Linear(embed_dim, embed_dim)
        self.q_proj = nn.Linear(embed_dim, embed_dim)
        self.out_proj = nn.Linear(embed_dim, embed_dim)
        self.inner_attn_ln = nn.LayerNorm(embed_dim, eps=eps) if inner_attn_ln else None

    def _heads(self, x):
        B, T, _ = x.shape
        return x.view(B, T, self.num_heads, self.head_dim).transpose(1, 2)               # (B, H, T, D)

    def forward(self, x, context=None, *, mask=None, is_causal=False, cache: Optional[KVCache] = None):
        """x (B, T, E) are the queries; keys and values come from `context` (B, S, E), default x (and the
        cache's S = cached + T positions)."""
        B, T, E = x.shape
        kv = x if context is None else context
        q, k, v = self._heads(self.q_proj(x)), self._heads(self.k_proj(kv)), self._heads(self.v_proj(kv))
        if cache is not None:
            k, v = cache.update(self.layer_idx, k, v)                                     # (B, H, S, D)
        # softmax(q k^T / sqrt(D) + mask) v; mask is None (is_causal, or no mask at all) or (B, 1, T, S).
        y = ops.attention(q, k, v, mask, is_causal=is_causal)                             # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, E)                                            # (B, T, E)
        if self.inner_attn_ln is not None:
            y = self.inner_attn_ln(y)
        return self.out_proj(y)


class Kosmos2TextFFN(nn.Module):
    """fc2(ffn_layernorm(act(fc1(x)))): the sub-LN sits inside the MLP, over its middle width F (ffn_dim)."""

    def __init__(self, config: Kosmos2TextConfig):
        super().__init__()
        self.activation_fn = activation(config.activation_function)
        self.fc1 = nn.Linear(config.embed_dim, config.ffn_dim)
        self.fc2 = nn.Linear(config.ffn_dim, config.embed_dim)
        self.ffn_layernorm = nn.LayerNorm(config.ffn_dim, eps=config.layer_norm_eps)

    def forward(self, x):
        return self.fc2(self.ffn_layernorm(self.activation_fn(self.fc1(x))))  # (B, T, E) -> (B, T, F) -> (B, T, E)


class Kosmos2TextBlock(nn.Module):
    def __init__(self, config: Kosmos2TextConfig, layer_idx: int):
        super().__init__()
        E, eps = config.embed_dim, config.layer_norm_eps
        self.self_attn = KosmosTextAttention(E, config.attention_heads, inner_attn_ln=True, eps=eps,
                                             layer_idx=layer_idx)
        self.self_attn_layer_norm = nn.LayerNorm(E, eps=eps)
        self.ffn = Kosmos2TextFFN(config)
        self.final_layer_norm = nn.LayerNorm(E, eps=eps)

    def forward(self, x, mask=None, cache=None):
        x = x + self.self_attn(self.self_attn_layer_norm(x), mask=mask, is_causal=mask is None, cache=cache)
        return x + self.ffn(self.final_layer_norm(x))


class Kosmos2TextTransformer(nn.Module):
    """Embeddings (with the image embeddings spliced in), the blocks and the final LayerNorm."""

    def __init__(self, config: Kosmos2TextConfig):
        super().__init__()
        self.config = config
        self.embed_scale = math.sqrt(config.embed_dim) if config.scale_embedding else 1.0
        self.embed_tokens = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=config.pad_token_id)
        self.layers = nn.ModuleList(Kosmos2TextBlock(config, i) for i in range(config.layers))
        self.layer_norm = nn.LayerNorm(config.embed_dim, eps=config.layer_norm_eps)

    def positions(self, input_ids, past: int) -> torch.Tensor:
        """Rows of the sinusoid table for the new tokens, (B, T): see the module docstring."""
        pad = self.config.pad_token_id
        real = (input_ids != pad).long()
        return (real.cumsum(-1) + past) * real + pad

    def forward(self, input_ids, *, image_embeds=None, image_embeds_position_mask=None, attention_mask=None,
                position_ids=None, cache: Optional[KVCache] = None) -> torch.Tensor:
        """Final hidden states (B, T, E). image_embeds (B, Q, E) replace the token embeddings where
        image_embeds_position_mask (B, T) is 1. attention_mask: (B, S), S = cached + T; 1 = real token, 0 = pad."""
        c = self.config
        _check_text_inputs(c, input_ids, attention_mask, position_ids, cache, self.embed_tokens.weight.dtype)
        past = 0 if cache is None else cache.length
        x = self.embed_tokens(input_ids)                                                 # (B, T, E)
        if position_ids is None:
            position_ids = self.positions(input_ids, past)                               # (B, T)

        if image_embeds is not None:
            # Row by row, the Q image embeddings fill the Q marked positions in order; then scale everything.
            x = x.masked_scatter(image_embeds_position_mask.bool()[..., None], image_embeds.to(x.dtype))
        x = x * self.embed_scale + sinusoidal_positions(position_ids, c.embed_dim, c.pad_token_id).to(x.dtype)

        # One mask for all layers, and only when some token is padding.
        mask = None
        if has_padding(attention_mask):
            mask = ops.causal_mask(attention_mask, input_ids.shape[1], dtype=x.dtype)    # (B, 1, T, S)
        for layer in self.layers:
            x = layer(x, mask, cache)            # the last layer's cache write advances cache.length
        return self.layer_norm(x)


class Kosmos2TextForCausalLM(nn.Module):
    """Holds the decoder and lm_head, so that parameter names read text_model.model.* / text_model.lm_head."""

    def __init__(self, config: Kosmos2TextConfig, tied: bool):
        super().__init__()
        self.model = Kosmos2TextTransformer(config)
        self.lm_head = nn.Linear(config.embed_dim, config.vocab_size, bias=False)
        if tied:
            self.lm_head.weight = self.model.embed_tokens.weight    # one Parameter under two names


class Kosmos2VisionModel(nn.Module):
    """Holds the CLIP tower, so that parameter names read vision_model.model.* as in the checkpoints."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.model = CLIPVisionModel(config)


class Kosmos2ImageToTextProjection(nn.Module):
    """A resampler: Q learned latent queries attend to the projected image features and to themselves."""

    def __init__(self, config: Kosmos2Config):
        super().__init__()
        t = config.text_config
        self.dense = nn.Linear(config.vision_config.hidden_size, t.embed_dim)
        self.latent_query = nn.Parameter(torch.randn(config.latent_query_num, t.embed_dim))
        self.x_attn = KosmosTextAttention(t.embed_dim, t.attention_heads, inner_attn_ln=False, eps=t.layer_norm_eps)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        f = self.dense(features)                                                         # (B, 1+P, E)
        queries = self.latent_query.expand(f.shape[0], -1, -1)                           # (B, Q, E), the raw parameter
        return self.x_attn(queries, torch.cat([f, queries], dim=1))                      # (B, Q, E); no residual


@dataclass
class Kosmos2Output(ModelOutput):
    """ModelOutput plus the vision tower's output; hidden_states are the final hidden states (B, T, E) that
    lm_head reads, image_hidden_states the (B, Q, E) image embeddings (Transformers' `image_embeds`; None,
    like vision_model_output, when no image was given)."""
    vision_model_output: Optional[CLIPVisionOutput] = None


class Kosmos2ForConditionalGeneration(GenerativeModel):
    config_class = Kosmos2Config
    # Hub checkpoints (microsoft/kosmos-2-patch14-224) and Transformers (in memory and save_pretrained)
    # spell every key as this module does: text_model.model.*, text_model.lm_head.weight (absent when tied),
    # vision_model.model.*, image_to_text_projection.*. A Kosmos2Model file (no lm_head) loads too when tied.
    # The sinusoid table is a buffer Transformers never saves (persistent=False); skipped should a converted
    # file carry it anyway. (CLIP's embeddings.position_ids are skipped by the loader itself.)
    checkpoint_ignore = [r"\.embed_positions\.weights$"]
    # Kosmos-2 numbers positions from its padding and the cache (see the module docstring), not from
    # generate's cumsum(attention_mask) - 1.
    positions_from_generate = False

    def __init__(self, config: Kosmos2Config):
        super().__init__()
        self.config = config
        self.text_model = Kosmos2TextForCausalLM(config.text_config, config.tied)
        self.vision_model = Kosmos2VisionModel(config.vision_config)
        self.image_to_text_projection = Kosmos2ImageToTextProjection(config)

    def tied_weights(self) -> dict[str, str]:
        return {"text_model.lm_head.weight": "text_model.model.embed_tokens.weight"} if self.config.tied else {}

    def new_cache(self, batch_size: int, max_length: int, *, dtype=None, device=None) -> KVCache:
        """An empty KV cache of the decoder's self-attention for `batch_size` rows of up to `max_length`
        tokens (prompt + generated); dtype and device default to the embedding weight's."""
        t, weight = self.config.text_config, self.text_model.model.embed_tokens.weight
        return KVCache(t.layers, batch_size, t.attention_heads, max_length, t.head_dim,
                       dtype=dtype or weight.dtype, device=device or weight.device)

    def encode_image(self, pixel_values: torch.Tensor):
        """(image embeddings (B, Q, E), the vision tower's output) for pixel_values (B, C, R, R)."""
        vision = self.vision_model.model(pixel_values)
        # post_layernorm over the whole sequence, then unit length per vector (not the pooled class token).
        features = F.normalize(self.vision_model.model.post_layernorm(vision.last_hidden_state), dim=-1)
        return self.image_to_text_projection(features), vision                           # (B, Q, E)

    @rejects_unknown_kwargs
    def forward(self, input_ids: torch.Tensor, pixel_values: Optional[torch.Tensor] = None, attention_mask=None,
                image_embeds_position_mask=None, position_ids=None, cache: Optional[KVCache] = None, labels=None,
                logits_to_keep: int = 0, *, image_embeds: Optional[torch.Tensor] = None) -> Kosmos2Output:
        """Logits (B, T, V), or the last logits_to_keep = k > 0 positions' (B, k, V).

        input_ids (B, T): the prompt as Kosmos2Processor makes it (<s>, <image>, Q image positions,
        </image>, text); pads must be pad_token_id (they also number the positions, as in Transformers).
        pixel_values (B, C, R, R), or image_embeds (B, Q, E) computed before, give the image; its Q
        embeddings go where image_embeds_position_mask (B, T) is 1 (exactly Q per row). Image inputs are
        used when nothing is cached yet (a prefill); with a filled cache they are ignored, as in
        Transformers. None = a text-only forward. attention_mask: (B, S), S = cached + T; 1 = real, 0 = pad.
        position_ids: rows of the sinusoid table, (B, T), (1, T) or (T,); None = from the padding (see the
        module docstring). labels (B, T): `.loss`, next-token cross-entropy with
        -100 ignored. `.image_hidden_states` are the image embeddings, `.vision_model_output` the tower's.
        """
        prefill = cache is None or cache.length == 0          # image inputs are for the prefill only
        _check_inputs(self.config, input_ids, pixel_values, image_embeds, image_embeds_position_mask,
                      logits_to_keep, prefill)
        vision = None
        if pixel_values is not None:
            image_embeds, vision = self.encode_image(pixel_values)                       # (B, Q, E)
        hidden = self.text_model.model(input_ids, image_embeds=image_embeds if prefill else None,
                                       image_embeds_position_mask=image_embeds_position_mask,
                                       attention_mask=attention_mask, position_ids=position_ids, cache=cache)
        logits = self.text_model.lm_head(hidden[:, -logits_to_keep:] if logits_to_keep else hidden)
        loss = causal_lm_loss(logits, labels) if labels is not None else None
        return Kosmos2Output(logits=logits, loss=loss, hidden_states=hidden, image_hidden_states=image_embeds,
                             vision_model_output=vision)

    def generate(self, input_ids: torch.Tensor, *, pixel_values=None, image_embeds_position_mask=None,
                 attention_mask=None, **kwargs) -> torch.LongTensor:
        """Greedy search, sampling or beam search (minivlm.generation; kwargs as there): the prompt (B, T) followed by
        the new tokens. pixel_values and image_embeds_position_mask (B, T) go to the prefill only; prompts are
        left-padded with pad_token_id. Positions are numbered by the model from the padding and the cache
        length, as Transformers does (`positions_from_generate = False`)."""
        _check_generate_inputs(input_ids)
        return super().generate(input_ids, attention_mask=attention_mask, pixel_values=pixel_values,
                                image_embeds_position_mask=image_embeds_position_mask, **kwargs)


# -- reading and checking the configs ------------------------------------------------------------------

# Transformers' Kosmos2TextConfig also accepts these generic names for its own fields (attribute_map).
TEXT_ALIASES = {"hidden_size": "embed_dim", "num_hidden_layers": "layers", "num_attention_heads": "attention_heads"}


def _read_text_config(cls, d: dict) -> Kosmos2TextConfig:
    """The fields of cls in d, each also under its generic name (TEXT_ALIASES) when d lacks its own."""
    kwargs = known_fields(cls, d, aliases=TEXT_ALIASES)
    for alias, name in TEXT_ALIASES.items():
        if alias in d and name not in d:
            kwargs[name] = d[alias]
    config = cls(**kwargs)
    config.validate()
    return config


def _read_config(cls, d: dict) -> Kosmos2Config:
    """The text and vision sub-configs (the vision tower's defaults are KOSMOS2_VISION_DEFAULTS, not
    CLIPVisionConfig's) and the top-level fields of d."""
    top = known_fields(cls, d)
    for name in ("vision_config", "text_config"):
        if d.get(name) is not None and not isinstance(d[name], dict):
            raise ValueError(f"Kosmos2Config: {name} must be a dict, got {type(d[name]).__name__}")
    vision = {**KOSMOS2_VISION_DEFAULTS, **(d.get("vision_config") or {})}
    config = cls(vision_config=CLIPVisionConfig.from_dict(vision),
                 text_config=Kosmos2TextConfig.from_dict(d.get("text_config") or {}),
                 **{k: v for k, v in top.items() if k not in ("vision_config", "text_config")})
    config.validate()
    return config


def _validate_text_config(c: Kosmos2TextConfig):
    positive_ints(c, "vocab_size", "max_position_embeddings", "embed_dim", "layers", "ffn_dim", "attention_heads")
    divides(c, "attention_heads", "embed_dim")
    if c.embed_dim < 4:
        raise ValueError(f"Kosmos2TextConfig: embed_dim must be >= 4 for the sinusoidal positions "
                         f"(their frequencies divide by embed_dim // 2 - 1), got {c.embed_dim}")
    in_vocab(c, "pad_token_id")          # it numbers the positions
    bools(c, "scale_embedding", "tie_word_embeddings", "add_cross_attention")
    if c.add_cross_attention:
        raise ValueError("Kosmos2TextConfig: add_cross_attention=True is not supported (Kosmos-2 never uses "
                         "the text cross-attention layers; its checkpoints have none)")
    positive_numbers(c, "layer_norm_eps")
    activation(c.activation_function)   # raises for an activation minivlm does not implement


def _validate_config(c: Kosmos2Config):
    positive_ints(c, "latent_query_num")
    bools(c, "tie_word_embeddings")


# -- checking the inputs ---------------------------------------------------------------------------------

_NAME = "Kosmos2ForConditionalGeneration"


def _check_inputs(c: Kosmos2Config, input_ids, pixel_values, image_embeds, position_mask, logits_to_keep,
                  prefill: bool):
    """Kosmos2ForConditionalGeneration.forward's arguments (the decoder checks its own: ids, mask, positions,
    cache). The image position mask's values and counts cost one device sync, at a prefill only."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0 or \
            input_ids.is_floating_point() or input_ids.dtype == torch.bool:
        raise ValueError(f"{_NAME}: input_ids must be an integer tensor (batch, sequence), got {_describe(input_ids)}")
    if isinstance(logits_to_keep, bool) or not isinstance(logits_to_keep, int) or logits_to_keep < 0:
        raise ValueError(f"{_NAME}: logits_to_keep must be an int >= 0, got {logits_to_keep!r}")
    B, T = input_ids.shape
    Q, E = c.latent_query_num, c.text_config.embed_dim
    if pixel_values is not None and image_embeds is not None:
        raise ValueError(f"{_NAME}: pass pixel_values or image_embeds, not both")
    if pixel_values is not None and (not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or
                                     pixel_values.shape[0] != B):
        raise ValueError(f"{_NAME}: pixel_values must be (batch={B}, channels, height, width), "
                         f"got {_describe(pixel_values)}")
    if image_embeds is not None and (not isinstance(image_embeds, torch.Tensor) or
                                     tuple(image_embeds.shape) != (B, Q, E)):
        raise ValueError(f"{_NAME}: image_embeds must be (batch, latent_query_num, embed_dim) = ({B}, {Q}, {E}), "
                         f"got {_describe(image_embeds)}")
    m, has_image = position_mask, pixel_values is not None or image_embeds is not None
    if m is not None and (not isinstance(m, torch.Tensor) or tuple(m.shape) != (B, T)):
        raise ValueError(f"{_NAME}: image_embeds_position_mask must have input_ids' shape ({B}, {T}), "
                         f"got {_describe(m)}")
    if not prefill or (m is None and not has_image):      # a decode step ignores the image inputs
        return
    if m is None:
        raise ValueError(f"{_NAME}: an image was given but no image_embeds_position_mask saying where its "
                         f"{Q} embeddings go in input_ids")
    binary, *counts = torch.cat([((m == 0) | (m == 1)).all().long()[None], m.long().sum(-1)]).tolist()  # 1 sync
    if not binary:
        raise ValueError(f"{_NAME}: image_embeds_position_mask must hold only 0 and 1")
    if has_image and any(n != Q for n in counts):
        raise ValueError(f"{_NAME}: image_embeds_position_mask must mark latent_query_num={Q} positions per "
                         f"row, got {counts}")
    if not has_image and any(counts):
        raise ValueError(f"{_NAME}: image_embeds_position_mask marks image positions but no pixel_values (or "
                         f"image_embeds) were given")


def _check_generate_inputs(input_ids):
    if isinstance(input_ids, torch.Tensor) and input_ids.is_floating_point():
        raise TypeError(f"generate: input_ids is a floating-point tensor of shape {tuple(input_ids.shape)}; "
                        f"pass the image as generate(input_ids, pixel_values=...)")


def _check_text_inputs(c: Kosmos2TextConfig, input_ids, attention_mask, position_ids, cache, dtype):
    """The decoder's ids, cache, (B, S) mask and position_ids; the ranges of the ids (not in generate's
    decode steps) and of the positions (generate passes none) cost a device sync each."""
    check_token_ids("input_ids", input_ids, c.vocab_size)
    B, T = input_ids.shape
    cached_tokens(cache, B, T, dtype, attention_mask, _NAME)
    if position_ids is None:
        return
    if not isinstance(position_ids, torch.Tensor) or position_ids.shape[-1] != T or \
            position_ids.dim() not in (1, 2) or (position_ids.dim() == 2 and position_ids.shape[0] not in (1, B)):
        raise ValueError(f"{_NAME}: position_ids must be ({B}, {T}), (1, {T}) or ({T},), got {_describe(position_ids)}")
    if position_ids.is_floating_point() or position_ids.dtype == torch.bool:
        raise TypeError(f"{_NAME}: position_ids must be an integer tensor, got {position_ids.dtype}")
    low = int(position_ids.min()) if position_ids.numel() else 0
    if low < 0:
        raise ValueError(f"{_NAME}: position_ids are rows of the sinusoid table and must be >= 0, "
                         f"got a minimum of {low}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x) if x is None else f"a {type(x).__name__}"
