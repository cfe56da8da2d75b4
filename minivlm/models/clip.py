"""The CLIP vision encoder: a ViT that turns an image into one vector per patch plus a class token.

Follows Radford et al. 2021, "Learning Transferable Visual Models From Natural Language Supervision"
(CLIP), itself the ViT of Dosovitskiy et al. 2020 with one extra LayerNorm before the encoder, and
Transformers' `models/clip/modeling_clip.py` (CLIPVisionModel), whose parameter names this module
mirrors so that its checkpoints load by a near-identity copy.

    pixels (B, C, R, R) --patch conv--> (B, P, E) --prepend class token, add positions--> (B, 1+P, E)
    --pre_layrnorm--> num_hidden_layers pre-LN encoder layers --> last_hidden_state (B, 1+P, E)
    pooler_output = post_layernorm(last_hidden_state[:, 0])

Shape letters (docs/notation.md): B images, C channels, R the image side, p the patch side, P = (R / p)^2
patches, E the hidden width, H heads of width D = E / H, F the MLP's middle width.

LLaVA-NeXT reads the second-to-last layer's hidden states (no post-LayerNorm); Kosmos-2, AltCLIP and
IDEFICS (with hidden_act "gelu") import this same tower.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import torch
import torch.nn as nn

from .. import ops
from .._checks import rejects_unknown_kwargs
from .base import Model
from ._common import activation
from ._config import divides, known_fields, positive_ints, positive_numbers, to_transformers_dict

# The settings of Transformers' vision configs that minivlm does not use, at their defaults, by the
# model_type a vision tower is saved as (CLIP's own, or as a part of AltCLIP, Kosmos-2, IDEFICS).
_UNUSED = dict(attention_dropout=0.0, initializer_factor=1.0, initializer_range=0.02)
TRANSFORMERS_DEFAULTS = {"clip_vision_model": dict(_UNUSED, projection_dim=512),
                         "altclip_vision_model": dict(_UNUSED, projection_dim=512),
                         "kosmos_2_vision_model": _UNUSED, "idefics_vision": _UNUSED}


@dataclass
class CLIPVisionConfig:
    """The vision half of a CLIP config.json (model_type "clip_vision_model"); defaults are
    Transformers', i.e. openai/clip-vit-base-patch32."""
    hidden_size: int = 768            # E, the width of every token vector
    intermediate_size: int = 3072     # F, the middle width of each layer's MLP
    num_hidden_layers: int = 12       # encoder layers
    num_attention_heads: int = 12     # H; head width D = E / H
    num_channels: int = 3             # C, input image channels (RGB)
    image_size: int = 224             # R, side of the square input image, in pixels
    patch_size: int = 32              # p, side of one patch; P = (R / p)^2 patches per image
    hidden_act: str = "quick_gelu"    # MLP activation: quick_gelu for OpenAI CLIP, gelu for IDEFICS's tower
    layer_norm_eps: float = 1e-5      # epsilon of every LayerNorm
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "CLIPVisionConfig":
        """Read a vision config dict (as found under "vision_config" in a VLM's config.json) or a whole
        CLIP config.json; see _read_config."""
        return _read_config(cls, d)

    def to_dict(self, model_type: str = "clip_vision_model") -> dict:
        """The config.json dict Transformers writes for this tower as `model_type` (a key of
        TRANSFORMERS_DEFAULTS; IDEFICS names hidden_size embed_dim); from_dict reads it back."""
        if model_type not in TRANSFORMERS_DEFAULTS:
            raise ValueError(f"CLIPVisionConfig.to_dict: model_type must be one of {sorted(TRANSFORMERS_DEFAULTS)}, "
                             f"got {model_type!r}")
        rename = {"hidden_size": "embed_dim"} if model_type == "idefics_vision" else None
        return to_transformers_dict(self, model_type, TRANSFORMERS_DEFAULTS[model_type], rename=rename)

    def validate(self):
        _validate_config(self)

    @property
    def num_patches(self) -> int:
        """P, the patches of one image."""
        return (self.image_size // self.patch_size) ** 2


@dataclass
class CLIPVisionOutput:
    """last_hidden_state (B, 1+P, E): output of the last layer run; pooler_output (B, E): post_layernorm
    of its class token; hidden_states: None, or a tuple of (B, 1+P, E), [0] the pre-LayerNormed
    embeddings and [i] the output of layer i."""
    last_hidden_state: torch.Tensor
    pooler_output: torch.Tensor
    hidden_states: Optional[tuple] = None


class CLIPVisionEmbeddings(nn.Module):
    """Patches by a strided convolution, a learned class token in front, learned absolute positions."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        E = config.hidden_size
        self.class_embedding = nn.Parameter(torch.randn(E))    # random until loaded, never garbage
        self.patch_embedding = nn.Conv2d(config.num_channels, E, kernel_size=config.patch_size,
                                         stride=config.patch_size, bias=False)
        self.position_embedding = nn.Embedding(config.num_patches + 1, E)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        B = pixel_values.shape[0]
        x = self.patch_embedding(pixel_values.to(self.patch_embedding.weight.dtype))  # (B, E, R/p, R/p)
        x = x.flatten(2).transpose(1, 2)                                             # (B, P, E)
        cls = self.class_embedding.expand(B, 1, -1)                                   # (B, 1, E)
        x = torch.cat([cls, x], dim=1)                                                # (B, 1+P, E)
        # Position ids are 0..P in order, so looking them up is reading the whole table row by row.
        return x + self.position_embedding.weight                                     # (B, 1+P, E)


class CLIPAttention(nn.Module):
    """Bidirectional multi-head self-attention (every patch sees every patch, no mask)."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        E = config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_dim = E // self.num_heads
        self.q_proj = nn.Linear(E, E)
        self.k_proj = nn.Linear(E, E)
        self.v_proj = nn.Linear(E, E)
        self.out_proj = nn.Linear(E, E)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, T, E = x.shape
        H, D = self.num_heads, self.head_dim
        q = self.q_proj(x).view(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        k = self.k_proj(x).view(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        v = self.v_proj(x).view(B, T, H, D).transpose(1, 2)        # (B, H, T, D)
        # softmax(q k^T / sqrt(D)) v; the naive math is minivlm.reference.attention.
        y = ops.attention(q, k, v)                                 # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, E)                     # (B, T, E)
        return self.out_proj(y)


class CLIPMLP(nn.Module):
    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.act = activation(config.hidden_act)
        self.fc1 = nn.Linear(config.hidden_size, config.intermediate_size)
        self.fc2 = nn.Linear(config.intermediate_size, config.hidden_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))  # (B, T, E) -> (B, T, F) -> (B, T, E)


class CLIPEncoderLayer(nn.Module):
    """Pre-LN transformer layer: x + attn(LN1(x)), then x + mlp(LN2(x))."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.self_attn = CLIPAttention(config)
        self.layer_norm1 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.mlp = CLIPMLP(config)
        self.layer_norm2 = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.self_attn(self.layer_norm1(x))
        x = x + self.mlp(self.layer_norm2(x))
        return x


class CLIPEncoder(nn.Module):
    """Only a holder of the layers, so that parameter names read encoder.layers.N.* as in checkpoints."""

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        self.layers = nn.ModuleList(CLIPEncoderLayer(config) for _ in range(config.num_hidden_layers))


class CLIPVisionModel(Model):
    """The CLIP vision tower; parameter names are those Transformers' save_pretrained writes."""

    config_class = CLIPVisionConfig
    # Standalone CLIP vision checkpoints from the hub (and older Transformers releases) nest everything
    # under "vision_model."; Transformers' save_pretrained and LLaVA-NeXT's own files do not.
    checkpoint_renames = [(r"^vision_model\.", "")]

    def __init__(self, config: CLIPVisionConfig):
        super().__init__()
        config.validate()
        self.config = config
        self.embeddings = CLIPVisionEmbeddings(config)
        self.pre_layrnorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)  # sic: CLIP's spelling
        self.encoder = CLIPEncoder(config)
        self.post_layernorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)

    @rejects_unknown_kwargs
    def forward(self, pixel_values: torch.Tensor, *, output_hidden_states: bool = False,
                num_layers: Optional[int] = None) -> CLIPVisionOutput:
        """Encode pixel_values (B, C, R, R), cast to the weights' dtype.

        num_layers=n runs only the first n encoder layers (default: all). Then last_hidden_state is the
        output of layer n (not of the last layer), pooler_output is post_layernorm of that output's class
        token, and hidden_states has n + 1 entries; they equal the first n + 1 entries of a full run.
        """
        _check_inputs(self.config, pixel_values, num_layers)
        x = self.pre_layrnorm(self.embeddings(pixel_values))  # (B, 1+P, E)
        hidden_states = [x]
        for layer in self.encoder.layers[:num_layers]:        # all of them for num_layers=None
            x = layer(x)                                      # (B, 1+P, E)
            hidden_states.append(x)
        pooled = self.post_layernorm(x[:, 0])                 # (B, E): the class token
        return CLIPVisionOutput(last_hidden_state=x, pooler_output=pooled,
                                hidden_states=tuple(hidden_states) if output_hidden_states else None)


# -- reading and checking the config, checking the inputs ----------------------------------------------

def _read_config(cls, d: dict) -> CLIPVisionConfig:
    """A vision config dict, or a whole CLIP config.json (model_type "clip", or any dict with a
    "vision_config"), whose "vision_config" is taken. Unknown keys are ignored, missing ones get the
    dataclass's defaults."""
    if isinstance(d, dict) and (d.get("model_type") == "clip" or "vision_config" in d):
        d = d.get("vision_config") or {}
    config = cls(**known_fields(cls, d))
    config.validate()
    return config


def _validate_config(c: CLIPVisionConfig):
    positive_ints(c, "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                  "num_channels", "image_size", "patch_size")
    divides(c, "num_attention_heads", "hidden_size")
    if c.patch_size > c.image_size:
        raise ValueError(f"CLIPVisionConfig: patch_size {c.patch_size} is larger than image_size {c.image_size}")
    positive_numbers(c, "layer_norm_eps")
    activation(c.hidden_act)  # raises ValueError naming hidden_act if unsupported


def _check_inputs(c: CLIPVisionConfig, pixel_values, num_layers):
    """pixel_values is a (B, C, R, R) tensor; num_layers None or an int in [0, num_hidden_layers]."""
    if not isinstance(pixel_values, torch.Tensor):
        raise TypeError(f"CLIPVisionModel: pixel_values must be a torch.Tensor, got {type(pixel_values).__name__}")
    expected = (c.num_channels, c.image_size, c.image_size)
    if pixel_values.dim() != 4 or tuple(pixel_values.shape[1:]) != expected:
        raise ValueError(f"CLIPVisionModel: pixel_values must have shape (batch, {expected[0]}, {expected[1]}, "
                         f"{expected[2]}), got {tuple(pixel_values.shape)}")
    n = num_layers
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or not 0 <= n <= c.num_hidden_layers):
        raise ValueError(f"CLIPVisionModel: num_layers must be an int in [0, {c.num_hidden_layers}] or None, "
                         f"got {num_layers!r}")
