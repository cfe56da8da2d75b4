"""BLIP-2: a frozen image encoder, a small querying transformer (Q-Former) and a frozen language model.

Paper: Li et al. 2023, "BLIP-2: Bootstrapping Language-Image Pre-training with Frozen Image Encoders and
Large Language Models". The image encoder is EVA-CLIP's ViT-g/14 (Fang et al. 2022, "EVA"); the Q-Former
is a BERT-base (Devlin et al. 2019) whose layers alternate self-attention over learned queries with
cross-attention to the image. Reference implementation: Transformers'
`models/blip_2/modeling_blip_2.py` (Blip2ForConditionalGeneration), whose parameter names this file
mirrors and whose outputs the tests match.

    pixels (B, 3, R, R) --EVA ViT (no pre-LN, fused qkv)--> post_layernorm --> image_embeds (B, 1+P, E_v)
    query_tokens (1, Q, E_q) --LayerNorm--> Q-Former layers:
        h = LN(h + SelfAttn(h))                            every layer
        h = LN(h + CrossAttn(h, image_embeds))             layers 0, f, 2f, ... (f = cross_attention_frequency)
        h = LN(h + FFN_query(h))                           every layer
    language_projection: (B, Q, E_q) -> (B, Q, E)
    input_ids hold Q image tokens per row; their embeddings are replaced by the projected queries
    --> OPT decoder (logits (B, T, V)) or T5 encoder input (then the T5 decoder)

E_v, E_q and E are the widths of the vision tower, the Q-Former and the language model; P = (R / p)^2
patches (the tower adds a class token); Q = num_query_tokens.

The image goes into input_ids as `num_query_tokens` placeholder tokens (`image_token_index`) whose
embeddings are overwritten in order (masked_scatter), as in Transformers: the processor puts them first,
then BOS and the prompt, and labels and attention_mask cover the image tokens too.

Half precision: in a float16 or bfloat16 model the Q-Former and the query tokens stay float32
(`keep_in_float32`); the image features are cast up into it and its output back down. A float32 or
float64 model runs in its one dtype throughout. Transformers does this in float16 only (its
`_keep_in_fp32_modules` applies to float16, not bfloat16); minivlm does it in bfloat16 too, which costs
little (the Q-Former is ~100M of BLIP-2's billions of parameters) and is closer to float32 (docs/parity.md).

The configs' reading of a config.json (`_read_blip2_config`) and their checks, and the input checks of
the entry points, are at the bottom of the file.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
from torch import nn

from .. import ops
from .._checks import check_token_ids, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import ModelOutput, activation, causal_lm_loss
from ._config import divides, known_fields, positive_ints, positive_numbers, to_transformers_dict

# The settings of Transformers' BLIP-2 configs that minivlm does not use, at their defaults.
VISION_DEFAULTS = dict(attention_dropout=0.0, initializer_range=1e-10)
QFORMER_DEFAULTS = dict(attention_probs_dropout_prob=0.1, hidden_dropout_prob=0.1, initializer_range=0.02,
                        max_position_embeddings=512, pad_token_id=0, vocab_size=30522)
TRANSFORMERS_DEFAULTS = dict(image_text_hidden_size=256, initializer_factor=1.0, initializer_range=0.02)
from .clip import CLIPMLP   # fc1 -> act -> fc2, the same MLP (and parameter names) as CLIP's

LANGUAGE_MODELS = {"opt": "decoder-only (OPT)", "t5": "encoder-decoder (T5 / Flan-T5)"}


# --------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------

@dataclass
class Blip2VisionConfig:
    """The EVA ViT's settings ("vision_config"); defaults are Transformers' (EVA-CLIP ViT-g/14)."""
    hidden_size: int = 1408          # E_v, the width of every token vector
    intermediate_size: int = 6144    # F, the middle width of each layer's MLP
    num_hidden_layers: int = 39      # encoder layers
    num_attention_heads: int = 16    # H; D = E_v / H
    image_size: int = 224            # R, the side of the square input image in pixels (or an (R, R) pair)
    patch_size: int = 14             # p, the side of one patch; P = (R / p)^2 patches
    hidden_act: str = "gelu"         # MLP activation (exact, erf GELU)
    layer_norm_eps: float = 1e-6     # epsilon of every LayerNorm
    qkv_bias: bool = True            # the fused qkv projection has a bias (EVA: q and v biases, k's is 0)
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    def __post_init__(self):
        self.validate()

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Blip2VisionConfig":
        return cls(**known_fields(cls, {} if d is None else d))

    def to_dict(self) -> dict:
        """The vision_config dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "blip_2_vision_model", VISION_DEFAULTS)

    def validate(self):
        _validate_vision_config(self)

    @property
    def num_patches(self) -> int:    # P
        return (self.image_size // self.patch_size) ** 2


@dataclass
class Blip2QFormerConfig:
    """The Q-Former's settings ("qformer_config"); defaults are Transformers' (BERT-base)."""
    hidden_size: int = 768               # E_q, the width of the queries
    num_hidden_layers: int = 12
    num_attention_heads: int = 12        # H; D = E_q / H
    intermediate_size: int = 3072        # F, the middle width of the query FFN
    hidden_act: str = "gelu"
    layer_norm_eps: float = 1e-12        # BERT's epsilon, in every (post-)LayerNorm
    cross_attention_frequency: int = 2   # layer i cross-attends to the image when i % frequency == 0
    encoder_hidden_size: int = 1408      # E_v, the image features' width (Blip2Config.from_dict sets it)
    use_qformer_text_input: bool = False  # text FFNs (for retrieval); their weights are unused here
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: Optional[dict]) -> "Blip2QFormerConfig":
        config = cls(**known_fields(cls, {} if d is None else d))
        config.validate()
        return config

    def to_dict(self) -> dict:
        """The qformer_config dict Transformers writes; from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "blip_2_qformer", QFORMER_DEFAULTS)

    def validate(self):
        _validate_qformer_config(self)


@dataclass
class Blip2Config:
    """A BLIP-2 config.json (model_type "blip-2"); omitted fields get Transformers' defaults."""
    vision_config: Blip2VisionConfig = field(default_factory=Blip2VisionConfig)
    qformer_config: Blip2QFormerConfig = field(default_factory=Blip2QFormerConfig)
    text_config: object = None               # an OPTConfig or a T5Config (by its model_type; default OPT)
    num_query_tokens: int = 32               # Q, the learned queries = image tokens per image in input_ids
    image_token_index: Optional[int] = None  # the placeholder id the queries replace (file: also image_token_id)
    # Derived as Transformers does, whatever the file says: True for a causal LM (OPT), False for T5.
    use_decoder_only_language_model: bool = True
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "Blip2Config":
        """Read a config.json dict: the three sub-configs, as Transformers reads them."""
        return _read_blip2_config(cls, d)

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes (is_encoder_decoder only around T5, where it is true);
        from_dict reads it back to an equal config."""
        self.validate()      # a default text_config is built here
        text = self.text_config.to_dict()
        text.pop("is_encoder_decoder", None)    # a T5 nested here is written without it; BLIP-2 says it
        extra = {} if self.use_decoder_only_language_model else {"is_encoder_decoder": True}
        return to_transformers_dict(self, "blip-2", TRANSFORMERS_DEFAULTS, text_config=text, **extra)

    def validate(self):
        if self.text_config is None:
            self.text_config = _text_config_class("opt")()
        _validate_blip2_config(self)

    @property
    def is_encoder_decoder(self) -> bool:
        return not self.use_decoder_only_language_model


# --------------------------------------------------------------------------------------------------
# The EVA vision tower
# --------------------------------------------------------------------------------------------------

@dataclass
class Blip2VisionOutput:
    """last_hidden_state (B, 1+P, E_v): post_layernorm of the last layer's output (the Q-Former reads it);
    pooler_output (B, E_v): post_layernorm applied once more to its class token."""
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor


class Blip2VisionEmbeddings(nn.Module):
    """Patches by a strided convolution (with a bias, unlike CLIP's), a class token, learned positions
    stored as one (1, 1+P, E_v) parameter."""

    def __init__(self, config: Blip2VisionConfig):
        super().__init__()
        E = config.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(1, 1, E))                 # random until loaded
        self.patch_embedding = nn.Conv2d(3, E, kernel_size=config.patch_size, stride=config.patch_size)
        self.position_embedding = nn.Parameter(torch.randn(1, config.num_patches + 1, E))

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        dtype = self.patch_embedding.weight.dtype
        x = self.patch_embedding(pixel_values.to(dtype))                             # (B, E_v, R/p, R/p)
        x = x.flatten(2).transpose(1, 2)                                             # (B, P, E_v)
        cls = self.class_embedding.expand(x.shape[0], 1, -1).to(dtype)               # (B, 1, E_v)
        return torch.cat([cls, x], dim=1) + self.position_embedding.to(dtype)       # (B, 1+P, E_v)


class Blip2Attention(nn.Module):
    """EVA's self-attention: one fused qkv projection, no mask.

    EVA trains a bias for q and v only; the checkpoint stores them fused as qkv.bias = cat(q_bias, 0,
    v_bias) (the zeros are k's), and, like Transformers, this module adds the stored vector as it is.
    The (3 * E_v) outputs are laid out (3, H, D): q first, then k, then v.
    """

    def __init__(self, config: Blip2VisionConfig):
        super().__init__()
        E = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = E // self.num_heads
        self.qkv = nn.Linear(E, 3 * E, bias=config.qkv_bias)
        self.projection = nn.Linear(E, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        qkv = self.qkv(x).view(B, T, 3, self.num_heads, self.head_dim).permute(2, 0, 3, 1, 4)  # (3, B, H, T, D)
        y = ops.attention(qkv[0], qkv[1], qkv[2])            # softmax(q k^T / sqrt(D)) v: (B, H, T, D)
        return self.projection(y.transpose(1, 2).reshape(B, T, E))


class Blip2EncoderLayer(nn.Module):
    """Pre-LN layer: x + attn(LN1(x)), then x + mlp(LN2(x))."""

    def __init__(self, config: Blip2VisionConfig):
        super().__init__()
        self.self_attn = Blip2Attention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        return x + self.mlp(self.layer_norm2(x))


class Blip2Encoder(nn.Module):
    """Holds the layers, so that names read encoder.layers.N.* as in checkpoints."""

    def __init__(self, config: Blip2VisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(Blip2EncoderLayer(config) for _ in range(config.num_hidden_layers))


class Blip2VisionModel(nn.Module):
    """The EVA ViT. Unlike CLIP it has no LayerNorm before the layers, and its last_hidden_state is
    already post-LayerNormed (the pooler normalises the class token a second time)."""

    def __init__(self, config: Blip2VisionConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = Blip2VisionEmbeddings(config)
        self.encoder = Blip2Encoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, pixel_values: torch.Tensor) -> Blip2VisionOutput:
        _check_pixel_values(pixel_values, self.config)
        x = self.embeddings(pixel_values)                    # (B, 1+P, E_v)
        for layer in self.encoder.layers:
            x = layer(x)
        x = self.post_layernorm(x)                           # (B, 1+P, E_v)
        return Blip2VisionOutput(last_hidden_state=x, pooler_output=self.post_layernorm(x[:, 0]))


# --------------------------------------------------------------------------------------------------
# The Q-Former
# --------------------------------------------------------------------------------------------------

class Blip2QFormerMultiHeadAttention(nn.Module):
    """Attention of the queries to themselves (self) or to the image features (cross: keys and values
    from encoder_hidden_size wide inputs). No mask: every query sees every query and every patch."""

    def __init__(self, config: Blip2QFormerConfig, is_cross_attention: bool = False):
        super().__init__()
        E = config.hidden_size
        kv_width = config.encoder_hidden_size if is_cross_attention else E
        self.num_heads = config.num_attention_heads
        self.head_dim = E // self.num_heads
        self.query = nn.Linear(E, E)
        self.key = nn.Linear(kv_width, E)
        self.value = nn.Linear(kv_width, E)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        context = x if context is None else context
        B, Q, E = x.shape
        S = context.shape[1]
        q = self.query(x).view(B, Q, self.num_heads, self.head_dim).transpose(1, 2)           # (B, H, Q, D)
        k = self.key(context).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)       # (B, H, S, D)
        v = self.value(context).view(B, S, self.num_heads, self.head_dim).transpose(1, 2)     # (B, H, S, D)
        return ops.attention(q, k, v).transpose(1, 2).reshape(B, Q, E)                        # (B, Q, E_q)


class Blip2QFormerOutput(nn.Module):
    """BERT's post-LN residual step: LayerNorm(residual + dense(x))."""

    def __init__(self, in_features: int, config: Blip2QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(in_features, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)   # sic: BERT's spelling

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(residual + self.dense(x))


class Blip2QFormerAttention(nn.Module):
    """h = LayerNorm(h + dense(attention(h[, image])))."""

    def __init__(self, config: Blip2QFormerConfig, is_cross_attention: bool = False):
        super().__init__()
        self.attention = Blip2QFormerMultiHeadAttention(config, is_cross_attention)
        self.output = Blip2QFormerOutput(config.hidden_size, config)

    def forward(self, x: torch.Tensor, context: Optional[torch.Tensor] = None) -> torch.Tensor:
        return self.output(self.attention(x, context), x)


class Blip2QFormerIntermediate(nn.Module):
    """The FFN's first half: act(dense(x)), E_q -> F."""

    def __init__(self, config: Blip2QFormerConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)
        self.act = activation(config.hidden_act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.dense(x))


class Blip2QFormerLayer(nn.Module):
    """Self-attention, cross-attention to the image (on layers 0, f, 2f, ...), the query FFN; each a
    post-LN residual step. (The text FFN `intermediate`/`output` of BLIP-2's retrieval head never runs on
    query positions and is not built.)"""

    def __init__(self, config: Blip2QFormerConfig, layer_idx: int):
        super().__init__()
        self.attention = Blip2QFormerAttention(config)
        self.has_cross_attention = layer_idx % config.cross_attention_frequency == 0
        if self.has_cross_attention:
            self.crossattention = Blip2QFormerAttention(config, is_cross_attention=True)
        self.intermediate_query = Blip2QFormerIntermediate(config)
        self.output_query = Blip2QFormerOutput(config.intermediate_size, config)

    def forward(self, h: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        h = self.attention(h)                                            # (B, Q, E_q)
        if self.has_cross_attention:
            h = self.crossattention(h, image_embeds)                     # (B, Q, E_q)
        return self.output_query(self.intermediate_query(h), h)         # (B, Q, E_q)


class Blip2QFormerEncoder(nn.Module):
    """Holds the layers, so that names read encoder.layer.N.* (BERT's singular) as in checkpoints."""

    def __init__(self, config: Blip2QFormerConfig):
        super().__init__()
        self.layer = nn.ModuleList(Blip2QFormerLayer(config, i) for i in range(config.num_hidden_layers))


class Blip2QFormerModel(nn.Module):
    """The Q-Former over query embeddings only (BLIP-2 generation never feeds it text)."""

    def __init__(self, config: Blip2QFormerConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.encoder = Blip2QFormerEncoder(config)

    def forward(self, query_embeds: torch.Tensor, image_embeds: torch.Tensor) -> torch.Tensor:
        """query_embeds (B, Q, E_q), image_embeds (B, 1+P, E_v) -> (B, Q, E_q), computed in the Q-Former's
        own dtype (float32 in a half-precision BLIP-2) and returned in it."""
        dtype = self.layernorm.weight.dtype
        h = self.layernorm(query_embeds.to(dtype))                       # (B, Q, E_q)
        image_embeds = image_embeds.to(dtype)                            # up to float32 in a 16-bit model
        for layer in self.encoder.layer:
            h = layer(h, image_embeds)
        return h


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------

@dataclass
class Blip2Output(ModelOutput):
    """ModelOutput plus what BLIP-2 computed on the way: the vision tower's output, the Q-Former's
    (B, Q, E_q) output, the projected (B, Q, E) `language_model_inputs` that replaced the image tokens."""
    vision_outputs: Optional[Blip2VisionOutput] = None
    qformer_output: Optional[torch.Tensor] = None
    language_model_inputs: Optional[torch.Tensor] = None


class Blip2ForConditionalGeneration(GenerativeModel):
    config_class = Blip2Config
    # Hub BLIP-2 checkpoints and Transformers (in memory and save_pretrained) spell every key as this
    # module does: vision_model.*, query_tokens, qformer.*, language_projection.*, language_model.* (OPT:
    # language_model.model.decoder.*, language_model.lm_head.*; T5: language_model.shared/encoder/decoder.*).
    # The language model's own renames and ignored keys apply under language_model (the properties below).
    # Text FFN weights (`intermediate`/`output`, present when use_qformer_text_input) never run in
    # generation: skipped.
    IGNORED = [r"^qformer\.encoder\.layer\.\d+\.(intermediate|output)\."]
    # These stay float32 in a model loaded in a dtype narrower than float32, float16 or bfloat16
    # (Transformers: float16 only); a float64 model keeps them float64. `keep_in_float32` adds the
    # language model's own (T5's `wo`, in float16).
    KEEP_IN_FLOAT32 = ["qformer", "query_tokens"]

    def __init__(self, config: Blip2Config):
        super().__init__()
        config.validate()
        self.config = config
        self.vision_model = Blip2VisionModel(config.vision_config)
        self.query_tokens = nn.Parameter(torch.zeros(1, config.num_query_tokens, config.qformer_config.hidden_size))
        self.qformer = Blip2QFormerModel(config.qformer_config)
        self.language_projection = nn.Linear(config.qformer_config.hidden_size, config.text_config.hidden_size)
        lm_type = "opt" if config.use_decoder_only_language_model else "t5"
        self.language_model = _language_model_class(lm_type)(config.text_config)

    @property
    def is_encoder_decoder(self) -> bool:
        """The same class is decoder-only around OPT and encoder-decoder around T5."""
        return self.config.is_encoder_decoder

    @property
    def checkpoint_renames(self) -> list:
        return [(r"^language_model\." + p.lstrip("^"), "language_model." + r)
                for p, r in self.language_model.checkpoint_renames]

    @property
    def checkpoint_ignore(self) -> list:
        return self.IGNORED + [r"^language_model\." + p.lstrip("^") for p in self.language_model.checkpoint_ignore]

    @property
    def keep_in_float32(self) -> list:
        """What the loader keeps float32 after casting the model to a dtype narrower than float32 (it
        applies the list only then): read after the cast, since T5's list depends on that dtype."""
        return self.KEEP_IN_FLOAT32 + [f"language_model.{name}"
                                       for name in self.language_model.keep_in_float32]

    def tied_weights(self) -> dict[str, str]:
        return {f"language_model.{k}": f"language_model.{v}" for k, v in self.language_model.tied_weights().items()}

    def new_cache(self, batch_size: int, max_length: int, **kwargs):
        """The language model's KV cache (the image is encoded once, at prefill)."""
        return self.language_model.new_cache(batch_size, max_length, **kwargs)

    def input_embeddings(self) -> nn.Embedding:
        return self.language_model.get_input_embeddings()

    # -- image -> language-model inputs ----------------------------------------------------------------

    def image_features(self, pixel_values: torch.Tensor):
        """pixel_values (B, 3, R, R) -> (vision output, Q-Former output (B, Q, E_q) float32 in a 16-bit
        model, language_model_inputs (B, Q, E) in the model's dtype)."""
        vision = self.vision_model(pixel_values)
        image_embeds = vision.last_hidden_state                                      # (B, 1+P, E_v)
        queries = self.query_tokens.expand(image_embeds.shape[0], -1, -1)            # (B, Q, E_q)
        qformer_output = self.qformer(queries, image_embeds)                         # (B, Q, E_q)
        projected = self.language_projection(qformer_output.to(image_embeds.dtype))  # (B, Q, E)
        return vision, qformer_output, projected

    def embed_with_image(self, input_ids, pixel_values, cached: bool = False):
        """Token embeddings (B, T, E) of input_ids with the image tokens replaced by the projected queries,
        in row-major order (masked_scatter: image 0's queries fill the first Q image tokens, ...).
        cached: the image is in the KV cache already (decoder-only decoding), so input_ids need none."""
        _check_blip2_inputs(self.config, input_ids, pixel_values, cached)
        embeds = self.input_embeddings()(input_ids)                                  # (B, T, E)
        if pixel_values is None:
            return embeds, None
        vision, qformer_output, projected = self.image_features(pixel_values)       # projected (B_img, Q, E)
        is_image = (input_ids == self.config.image_token_index)[..., None]          # (B, T, 1)
        embeds = embeds.masked_scatter(is_image, projected.to(embeds.dtype))
        return embeds, (vision, qformer_output, projected)

    # -- forward ---------------------------------------------------------------------------------------

    @rejects_unknown_kwargs
    def forward(self, input_ids, pixel_values=None, attention_mask=None, position_ids=None, cache=None,
                labels=None, logits_to_keep: int = 0, *, decoder_input_ids=None,
                decoder_attention_mask=None) -> Blip2Output:
        """Logits for input_ids (B, T) holding num_query_tokens image tokens per row (per image).

        OPT: logits (B, T, V) of the decoder over the merged embeddings; labels (B, L) with L <= T are
        compared with the last L positions (as Transformers: logits[:, -L:], then the shifted loss; the
        logits returned stay whole, where Transformers returns the slice).
        T5: input_ids go to the encoder; logits (B, T_dec, V) for decoder_input_ids (made from labels
        by shifting right when only labels are given); the loss is T5's.
        pixel_values (B, 3, R, R) may be left out only when input_ids hold no image tokens, or during
        cached decoding (the image is in the cache already).
        """
        if self.is_encoder_decoder:     # the merged embeddings are the T5 encoder's input
            embeds, extras = self.embed_with_image(input_ids, pixel_values)         # (B, T, E)
            out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask,
                                      decoder_input_ids=decoder_input_ids, decoder_attention_mask=decoder_attention_mask,
                                      labels=labels, cache=cache, logits_to_keep=logits_to_keep)
            return self._output(out.logits, out.loss, extras)

        cached = cache is not None and cache.length > 0
        embeds, extras = self.embed_with_image(input_ids, pixel_values, cached)     # (B, T, E)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=cache, logits_to_keep=logits_to_keep)
        loss = None if labels is None else _last_positions_loss(out.logits, labels)
        return self._output(out.logits, loss, extras)

    # -- T5: encoder and decoder, for minivlm.generation's encoder-decoder loop ---------------------------

    @rejects_unknown_kwargs
    def encode(self, input_ids, attention_mask=None, pixel_values=None) -> torch.Tensor:
        """T5 encoder states (B, S, E) of input_ids (B, S) with the image's queries in its image tokens."""
        embeds, _ = self.embed_with_image(input_ids, pixel_values)
        return self.language_model.encode(inputs_embeds=embeds, attention_mask=attention_mask)

    def decode(self, decoder_input_ids, encoder_hidden_states, encoder_attention_mask=None, **kwargs) -> ModelOutput:
        """The T5 decoder's logits (see T5ForConditionalGeneration.decode)."""
        return self.language_model.decode(decoder_input_ids, encoder_hidden_states, encoder_attention_mask, **kwargs)

    # -- generation ------------------------------------------------------------------------------------

    def generate(self, input_ids=None, *, pixel_values=None, attention_mask=None, **kwargs) -> torch.LongTensor:
        """Greedy search, sampling or beam search conditioned on an image (minivlm.generation; kwargs as there).

        input_ids: the prompt with num_query_tokens image tokens per row, as Transformers' Blip2Processor
        makes it; None = a caption from scratch: the image tokens then the language model's BOS, as
        Transformers' generate builds it (T5 has no BOS: the image tokens alone). pixel_values
        (B, 3, R, R) go to the prefill (T5: the encoder) only. OPT returns the prompt followed by the new
        tokens, (B, T + N); T5 the decoder tokens, (B, 1 + N), decoder_start_token_id first.
        """
        _check_generate_inputs(input_ids, pixel_values)
        if input_ids is None:
            bos = self.config.text_config.bos_token_id
            start = [self.config.image_token_index] * self.config.num_query_tokens + ([bos] if bos is not None else [])
            input_ids = torch.tensor([start], device=pixel_values.device).repeat(pixel_values.shape[0], 1)
        return super().generate(input_ids, attention_mask=attention_mask, pixel_values=pixel_values, **kwargs)

    @staticmethod
    def _output(logits, loss, extras):
        vision, qformer_output, projected = extras if extras is not None else (None, None, None)
        return Blip2Output(logits=logits, loss=loss, vision_outputs=vision, qformer_output=qformer_output,
                           language_model_inputs=projected, image_hidden_states=projected)


def _last_positions_loss(logits, labels):
    """The shifted causal-LM loss of labels (B, L) against the last L positions of logits (B, T, V), as
    Transformers' BLIP-2 computes it (labels may cover the text alone)."""
    if labels.dim() != 2 or labels.shape[0] != logits.shape[0] or labels.shape[1] > logits.shape[1]:
        raise ValueError(f"labels: expected (batch, L) with L <= {logits.shape[1]} (the last L positions), "
                         f"got {_describe(labels)}")
    return causal_lm_loss(logits[:, -labels.shape[1]:], labels)


# --------------------------------------------------------------------------------------------------
# Reading a config.json, and the checks
# --------------------------------------------------------------------------------------------------

def _read_blip2_config(cls, d: dict) -> Blip2Config:
    """Blip2Config from a config.json dict, the way Transformers reads it: each sub-config from its own
    dict (absent: the defaults); the Q-Former's encoder_hidden_size is the vision width whatever the file
    says; text_config by its model_type (absent: OPT); image_token_id is an alias of image_token_index;
    use_decoder_only_language_model follows the language model."""
    if not isinstance(d, dict):
        raise TypeError(f"Blip2Config.from_dict: expected a dict, got {type(d).__name__}")
    vision = Blip2VisionConfig.from_dict(d.get("vision_config"))
    qformer = Blip2QFormerConfig.from_dict({**(d.get("qformer_config") or {}),
                                            "encoder_hidden_size": vision.hidden_size})
    text_dict = {"model_type": "opt", **(d.get("text_config") or {})}
    text = _text_config_class(text_dict["model_type"]).from_dict(text_dict)
    image_token = d.get("image_token_index")
    if image_token is None:
        image_token = d.get("image_token_id")
    config = cls(vision_config=vision, qformer_config=qformer, text_config=text,
                 num_query_tokens=d.get("num_query_tokens", 32), image_token_index=image_token,
                 use_decoder_only_language_model=text_dict["model_type"] == "opt",
                 unread=known_fields(cls, d, aliases=("image_token_id",))["unread"])
    config.validate()
    return config


def _text_config_class(model_type: str):
    """The config class of BLIP-2's language model, imported only when used."""
    if model_type == "opt":
        from .opt import OPTConfig
        return OPTConfig
    if model_type == "t5":
        from .t5 import T5Config
        return T5Config
    raise ValueError(f"Blip2Config: text_config.model_type must be one of {sorted(LANGUAGE_MODELS)} "
                     f"({', '.join(LANGUAGE_MODELS.values())}), got {model_type!r}")


def _language_model_class(model_type: str):
    if model_type == "opt":
        from .opt import OPTForCausalLM
        return OPTForCausalLM
    from .t5 import T5ForConditionalGeneration
    return T5ForConditionalGeneration


def _validate_vision_config(c: Blip2VisionConfig):
    """The checks, after taking a square (R, R) image_size or patch_size pair (Transformers allows
    (height, width); the position table is a square grid) as R."""
    for name in ("image_size", "patch_size"):
        value = getattr(c, name)
        if isinstance(value, (list, tuple)):
            if len(value) != 2 or value[0] != value[1]:
                raise ValueError(f"Blip2VisionConfig: {name} must be an int or a square (n, n) pair, got {value!r}")
            setattr(c, name, value[0])
    positive_ints(c, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "image_size", "patch_size")
    divides(c, "num_attention_heads", "hidden_size")
    if c.patch_size > c.image_size:
        raise ValueError(f"Blip2VisionConfig: patch_size {c.patch_size} is larger than image_size {c.image_size}")
    positive_numbers(c, "layer_norm_eps")
    activation(c.hidden_act)


def _validate_qformer_config(c: Blip2QFormerConfig):
    positive_ints(c, "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                  "cross_attention_frequency", "encoder_hidden_size")
    divides(c, "num_attention_heads", "hidden_size")
    positive_numbers(c, "layer_norm_eps")
    activation(c.hidden_act)


def _validate_blip2_config(c: Blip2Config):
    owner, text = "Blip2Config", c.text_config
    positive_ints(c, "num_query_tokens")
    t = c.image_token_index
    if t is not None and (isinstance(t, bool) or not isinstance(t, int) or t < 0):
        raise ValueError(f"{owner}: image_token_index must be None or an int >= 0, got {t!r}")
    if t is not None and t >= text.vocab_size:
        raise ValueError(f"{owner}: image_token_index {t} is outside the language model's vocabulary "
                         f"(vocab_size {text.vocab_size})")
    embed_width = getattr(text, "word_embed_proj_dim", text.hidden_size)
    if embed_width != text.hidden_size:
        raise ValueError(f"{owner}: the language model's token embeddings are {embed_width} wide "
                         f"(word_embed_proj_dim) but language_projection makes hidden_size="
                         f"{text.hidden_size} wide queries; BLIP-2 needs them equal")
    if c.qformer_config.encoder_hidden_size != c.vision_config.hidden_size:
        raise ValueError(f"{owner}: qformer_config.encoder_hidden_size {c.qformer_config.encoder_hidden_size} "
                         f"must equal vision_config.hidden_size {c.vision_config.hidden_size}")


def _check_pixel_values(pixel_values, c: Blip2VisionConfig):
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4 or \
            tuple(pixel_values.shape[1:]) != (3, c.image_size, c.image_size):
        raise ValueError(f"pixel_values: expected a (batch, 3, {c.image_size}, {c.image_size}) tensor, "
                         f"got {_describe(pixel_values)}")


def _check_blip2_inputs(config: Blip2Config, input_ids, pixel_values, cached: bool):
    """input_ids (B, T): integer ids in the vocabulary, image tokens included. With pixel_values
    (B_img, 3, R, R): exactly Q image tokens per image. Without: no image token, unless cached (the image
    is in the KV cache already). Each count costs a device sync: none when cached (decode steps)."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.dtype.is_floating_point:
        raise ValueError(f"input_ids: expected an integer (batch, sequence) tensor, got {_describe(input_ids)}")
    check_token_ids("input_ids", input_ids, config.text_config.vocab_size)
    token = config.image_token_index
    if pixel_values is None:
        if not cached and token is not None and bool((input_ids == token).any()):
            raise ValueError(f"input_ids hold image tokens (id {token}) but no pixel_values were given")
        return
    if token is None:
        raise ValueError("Blip2ForConditionalGeneration: config has no image_token_index, so input_ids cannot "
                         "say where the image goes (this config predates Transformers' image tokens; set it)")
    _check_pixel_values(pixel_values, config.vision_config)
    images = pixel_values.shape[0]
    n_tokens, n_features = int((input_ids == token).sum()), images * config.num_query_tokens
    if n_tokens != n_features:
        raise ValueError(f"input_ids hold {n_tokens} image tokens (id {token}) but {images} "
                         f"image(s) give {n_features} query outputs; put num_query_tokens="
                         f"{config.num_query_tokens} image tokens in each row")


def _check_generate_inputs(input_ids, pixel_values):
    if isinstance(input_ids, torch.Tensor) and input_ids.is_floating_point():
        raise TypeError(f"generate: input_ids is a floating-point tensor of shape {tuple(input_ids.shape)}; "
                        f"pass the image as generate(pixel_values=...)")
    if input_ids is None and (not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 4):
        raise ValueError(f"generate: without input_ids, pixel_values (batch, 3, R, R) are needed, "
                         f"got {_describe(pixel_values)}")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a {x.dtype} tensor of shape {tuple(x.shape)}"
    return repr(x) if x is None else f"a {type(x).__name__}"
