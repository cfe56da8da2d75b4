"""LLaVA-NeXT (LLaVA-1.6): a CLIP vision tower, a two-layer projector and a Llama/Mistral decoder, with
"anyres" image tiling.

Papers: Liu et al., "Visual Instruction Tuning" (LLaVA, 2023) and "Improved Baselines with Visual
Instruction Tuning" (LLaVA-1.5, 2023); the LLaVA-NeXT blog post (2024) adds anyres. Reference
implementation: Transformers' `models/llava_next` (the oracle of minivlm's parity tests).

The data flow for one image (shapes for llava-v1.6-mistral-7b: crop S=336, patch 14, side 24, C=4096):

    PIL image (h, w) --processor--> pixel_values (P, 3, 336, 336): the whole image resized (the "base")
                                     + the crops of the best grid resolution, e.g. 2x2 -> P = 5
    CLIP vision tower, hidden state of layer -2      (P, 577, 1024)
    "default" strategy drops the class token         (P, 576, 1024)
    projector: linear 1024 -> C, GELU, linear C -> C  (P, 576, C)
    pack: base (576, C) first; the crops laid out as their grid (2*24, 2*24, C), the letterbox padding
          cut off ("unpad"), an `image_newline` vector appended to each row, flattened row by row
    -> (576 + h' * (w' + 1), C) image features, written at the image-token positions of input_ids
    Llama/Mistral decoder over the merged sequence -> logits (B, T, vocab)

input_ids come as Transformers' processor makes them: one image token per image feature (use
`image_feature_count` to know how many); the model writes the features there and expands nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Optional

import torch
from torch import nn

from .._checks import check_token_ids, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import activation
from .clip import CLIPVisionConfig, CLIPVisionModel
from .llama import LlamaConfig, LlamaForCausalLM

# LLaVA-NeXT's vision tower when a config omits a field: CLIP ViT-L/14 at 336 px (Transformers' defaults
# for LlavaNextConfig.vision_config, which differ from CLIPVisionConfig's own ViT-B/32 defaults).
LLAVA_VISION_DEFAULTS = dict(hidden_size=1024, intermediate_size=4096, num_hidden_layers=24,
                             num_attention_heads=16, image_size=336, patch_size=14)
DEFAULT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


@dataclass
class LlavaNextConfig:
    vision_config: CLIPVisionConfig = field(default_factory=lambda: CLIPVisionConfig(**LLAVA_VISION_DEFAULTS))
    text_config: LlamaConfig = field(default_factory=LlamaConfig)
    image_token_index: int = 32000                       # the placeholder id image features replace
    projector_hidden_act: str = "gelu"                   # activation between the projector's two linears
    vision_feature_select_strategy: str = "default"      # "default" drops CLIP's class token, "full" keeps it
    vision_feature_layer: int | list = -2                # hidden state(s) of the tower to use; a list concatenates
    multimodal_projector_bias: bool = True               # the projector's linears have biases
    tie_word_embeddings: bool = False                    # lm_head shares the input embedding
    image_grid_pinpoints: list = field(default_factory=lambda: [list(p) for p in DEFAULT_GRID_PINPOINTS])

    @classmethod
    def from_dict(cls, d: dict) -> "LlavaNextConfig":
        known = {f.name for f in fields(cls)} - {"vision_config", "text_config"}
        kwargs = {k: v for k, v in d.items() if k in known}
        if "image_token_id" in d and "image_token_index" not in d:     # the newer spelling
            kwargs["image_token_index"] = d["image_token_id"]
        vision = {**LLAVA_VISION_DEFAULTS, **(d.get("vision_config") or {})}
        text = {"model_type": "llama", **(d.get("text_config") or {})}
        # Transformers ties the head by the top-level flag; the decoder we build must agree with it.
        text["tie_word_embeddings"] = kwargs.get("tie_word_embeddings", False)
        config = cls(vision_config=CLIPVisionConfig.from_dict(vision),
                     text_config=LlamaConfig.from_dict(text), **kwargs)
        config.validate()
        return config

    def validate(self):
        if self.vision_feature_select_strategy not in ("default", "full"):
            raise ValueError(f"LlavaNextConfig: vision_feature_select_strategy must be 'default' or 'full', "
                             f"got {self.vision_feature_select_strategy!r}")
        layers = feature_layers(self.vision_feature_layer)
        n = self.vision_config.num_hidden_layers
        if any(not -(n + 1) <= i <= n for i in layers):
            raise ValueError(f"LlavaNextConfig: vision_feature_layer {self.vision_feature_layer} is out of range "
                             f"for a vision tower with {n} layers ({n + 1} hidden states)")
        if not self.image_grid_pinpoints or any(len(p) != 2 for p in self.image_grid_pinpoints):
            raise ValueError(f"LlavaNextConfig: image_grid_pinpoints must be a non-empty list of [height, width] "
                             f"pairs, got {self.image_grid_pinpoints!r}")


def feature_layers(vision_feature_layer) -> list[int]:
    """vision_feature_layer as a list (an int is one layer)."""
    return [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)


# ----------------------------------------------------------------------------------------------------
# Anyres geometry. Pure Python on (height, width) pairs; the image processor uses the same functions.
# ----------------------------------------------------------------------------------------------------

def _size_pair(image_size) -> tuple[int, int]:
    """(height, width) as two Python ints, from a tuple, list or tensor (a tensor would make the
    comparisons below tensor-valued)."""
    if isinstance(image_size, torch.Tensor):
        image_size = image_size.tolist()
    h, w = (int(x) for x in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be a positive (height, width), got ({h}, {w})")
    return h, w


def select_best_resolution(image_size, grid_pinpoints) -> tuple[int, int]:
    """The (height, width) among grid_pinpoints that keeps the most of the image's pixels when the image
    is scaled to fit inside it (keeping its aspect ratio); ties go to the one that wastes the least area.
    """
    h, w = _size_pair(image_size)
    best, best_kept, best_waste = None, -1, math.inf
    for ph, pw in grid_pinpoints:
        scale = min(pw / w, ph / h)
        kept = min(int(w * scale) * int(h * scale), w * h)    # upscaling adds no information
        waste = ph * pw - kept
        if kept > best_kept or (kept == best_kept and waste < best_waste):
            best, best_kept, best_waste = (ph, pw), kept, waste
    return best


def anyres_grid_shape(image_size, grid_pinpoints, crop_size: int) -> tuple[int, int]:
    """(rows, cols) of crops for an image: its best resolution in units of the crop size. (Transformers'
    docstring calls this "(width, height)"; the values are (height, width).)"""
    ph, pw = select_best_resolution(image_size, grid_pinpoints)
    return ph // crop_size, pw // crop_size


def num_patches(image_size, grid_pinpoints, crop_size: int) -> int:
    """How many of pixel_values' patches belong to an image: the base image plus one per crop."""
    ph, pw = select_best_resolution(image_size, grid_pinpoints)
    return math.ceil(ph / crop_size) * math.ceil(pw / crop_size) + 1


def unpad_bounds(grid_h: int, grid_w: int, image_size) -> tuple[int, int, int, int]:
    """(top, bottom, left, right) of the part of a (grid_h, grid_w) feature grid the image covers.

    The processor scaled the image to fit the grid resolution and letterboxed it: centred, with padding on
    two opposite sides. This cuts that padding off again, in feature units. As in Transformers, the
    scaled side is rounded to 7 decimals before truncating (an image of 205x656 on a 24x48 grid covers
    205 * (48 / 656) = 14.999999999999998 rows in floating point; rounded, 15, so 16 rows are kept, not 14),
    and `pad` is removed from both sides, so an odd leftover keeps one row more.
    """
    h, w = _size_pair(image_size)
    if w / h > grid_w / grid_h:                       # wider than the grid: bars above and below
        kept_h = int(round(h * (grid_w / w), 7))
        pad = (grid_h - kept_h) // 2
        return pad, grid_h - pad, 0, grid_w
    kept_w = int(round(w * (grid_h / h), 7))          # taller (or the same shape): bars left and right
    pad = (grid_w - kept_w) // 2
    return 0, grid_h, pad, grid_w - pad


def image_feature_count(image_size, config: LlavaNextConfig) -> int:
    """How many image tokens input_ids must hold for one image of image_size = (height, width): the base
    image's features plus the unpadded crop grid with one newline per row."""
    side = config.vision_config.image_size // config.vision_config.patch_size    # patches per crop side
    tokens_per_crop = side * side + (config.vision_feature_select_strategy == "full")
    _check_grid_tokens(tokens_per_crop, side, config.vision_feature_select_strategy)
    rows, cols = anyres_grid_shape(image_size, config.image_grid_pinpoints, config.vision_config.image_size)
    top, bottom, left, right = unpad_bounds(rows * side, cols * side, image_size)
    return tokens_per_crop + (bottom - top) * (right - left + 1)


def _check_grid_tokens(tokens: int, side: int, strategy: str):
    if tokens != side * side:
        raise ValueError(
            f"LLaVA-NeXT: vision_feature_select_strategy={strategy!r} gives {tokens} features per crop, which "
            f"do not tile the {side}x{side} patch grid that anyres packing lays the crops out on (\"full\" keeps "
            f"CLIP's class token; Transformers fails here too). Use 'default' with a CLIP tower.")


# ----------------------------------------------------------------------------------------------------
# The model
# ----------------------------------------------------------------------------------------------------

class LlavaNextMultiModalProjector(nn.Module):
    """Vision features -> the decoder's embedding space: linear, activation, linear."""

    def __init__(self, config: LlavaNextConfig):
        super().__init__()
        vision_dim = config.vision_config.hidden_size * len(feature_layers(config.vision_feature_layer))
        text_dim = config.text_config.hidden_size
        self.linear_1 = nn.Linear(vision_dim, text_dim, bias=config.multimodal_projector_bias)
        self.act = activation(config.projector_hidden_act)
        self.linear_2 = nn.Linear(text_dim, text_dim, bias=config.multimodal_projector_bias)

    def forward(self, x):
        return self.linear_2(self.act(self.linear_1(x)))


class LlavaNextForConditionalGeneration(GenerativeModel):
    config_class = LlavaNextConfig
    # Every spelling of the keys found in the wild -> this module's names (the first match wins):
    checkpoint_renames = [
        (r"^vision_tower\.vision_model\.", "vision_tower."),           # hub checkpoints (llava-hf/*)
        (r"^model\.vision_tower\.(vision_model\.)?", "vision_tower."),  # Transformers in memory
        (r"^model\.language_model\.", "language_model.model."),
        (r"^lm_head\.", "language_model.lm_head."),
        (r"^model\.multi_modal_projector\.", "multi_modal_projector."),
        (r"^model\.image_newline$", "image_newline"),
    ]   # Transformers' save_pretrained writes vision_tower.*, language_model.model.*, ...: kept as is

    def __init__(self, config: LlavaNextConfig):
        super().__init__()
        self.config = config
        self.vision_tower = CLIPVisionModel(config.vision_config)
        self.multi_modal_projector = LlavaNextMultiModalProjector(config)
        # A learned vector appended after each row of the crop grid, so the decoder sees the 2D layout.
        # (Random at first, as in Transformers, so a model built from a config alone computes numbers;
        # from_pretrained overwrites it with the checkpoint's.)
        C = config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.randn(C) * C ** -0.5)
        self.language_model = LlamaForCausalLM(config.text_config)

    def tied_weights(self) -> dict[str, str]:
        return {f"language_model.{k}": f"language_model.{v}" for k, v in self.language_model.tied_weights().items()}

    def new_cache(self, batch_size: int, max_length: int, **kwargs):
        """A KV cache for generation: the decoder's (the image is encoded once, at prefill)."""
        return self.language_model.new_cache(batch_size, max_length, **kwargs)

    # -- vision -------------------------------------------------------------------------------------

    def image_features(self, pixel_values, image_sizes, vision_feature_layer=None,
                       vision_feature_select_strategy=None) -> list[torch.Tensor]:
        """One (n_i, C) tensor of packed features per image.

        pixel_values: (B, P, 3, S, S) as the processor gives it (images with fewer crops than P are
        zero-padded: only the first num_patches(image_sizes[i]) patches of image i are used).
        image_sizes: (B, 2) original (height, width) of each image.
        """
        cfg = self.config
        layers = feature_layers(cfg.vision_feature_layer if vision_feature_layer is None else vision_feature_layer)
        strategy = vision_feature_select_strategy or cfg.vision_feature_select_strategy
        S = cfg.vision_config.image_size
        if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5 or \
                tuple(pixel_values.shape[2:]) != (cfg.vision_config.num_channels, S, S):
            raise ValueError(f"pixel_values: expected a (batch, patches, {cfg.vision_config.num_channels}, {S}, {S}) "
                             f"tensor, got {_describe(pixel_values)}")
        if image_sizes is None or len(image_sizes) != pixel_values.shape[0]:
            raise ValueError(f"image_sizes: expected one (height, width) per image ({pixel_values.shape[0]}), "
                             f"got {_describe(image_sizes)}")
        counts = [num_patches(size, cfg.image_grid_pinpoints, S) for size in image_sizes]
        if max(counts) > pixel_values.shape[1]:
            raise ValueError(f"pixel_values: image_sizes need {counts} patches per image, but pixel_values holds "
                             f"only {pixel_values.shape[1]}; were they made with this config's image_grid_pinpoints?")
        crops = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])        # (sum n, 3, S, S)

        # Run the tower only as deep as the deepest layer asked for: hidden_states[i] is layer i's output.
        L = cfg.vision_config.num_hidden_layers
        layers = [i if i >= 0 else L + 1 + i for i in layers]
        hidden = self.vision_tower(crops, output_hidden_states=True, num_layers=max(layers)).hidden_states
        selected = torch.cat([hidden[i] for i in layers], dim=-1)                   # (N, 1 + side^2, D)
        if strategy == "default":
            selected = selected[:, 1:]                                              # drop the class token
        features = self.multi_modal_projector(selected)                             # (N, tokens, C)
        return [self.pack(f, size, strategy) for f, size in zip(features.split(counts), image_sizes)]

    def pack(self, features, image_size, strategy="default"):
        """Lay out one image's (1 + crops, tokens, C) features as the sequence the decoder reads."""
        base, crops = features[0], features[1:]                                     # (tokens, C), (n, tokens, C)
        newline = self.image_newline.to(features.dtype)
        if crops.shape[0] == 0:                                                     # one patch: no grid
            return torch.cat([base, newline[None]])
        cfg = self.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size
        _check_grid_tokens(crops.shape[1], side, strategy)
        rows, cols = anyres_grid_shape(image_size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        if rows * cols != crops.shape[0]:
            raise ValueError(f"LLaVA-NeXT: image of size {tuple(_size_pair(image_size))} has {crops.shape[0]} crops "
                             f"but a {rows}x{cols} grid; image_grid_pinpoints must be multiples of the crop size")
        C = crops.shape[-1]
        grid = crops.reshape(rows, cols, side, side, C)                             # crop row, crop col, y, x
        grid = grid.permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, C)    # (H', W', C) as an image
        top, bottom, left, right = unpad_bounds(rows * side, cols * side, image_size)
        grid = grid[top:bottom, left:right]                                         # (h', w', C)
        grid = torch.cat([grid, newline.expand(grid.shape[0], 1, C)], dim=1)       # (h', w' + 1, C)
        return torch.cat([base, grid.reshape(-1, C)])                              # (tokens + h'(w'+1), C)

    # -- the whole model ----------------------------------------------------------------------------

    @rejects_unknown_kwargs
    def forward(self, input_ids, pixel_values=None, image_sizes=None, attention_mask=None, position_ids=None,
                cache=None, labels=None, logits_to_keep: int = 0, *, vision_feature_layer=None,
                vision_feature_select_strategy=None):
        """Logits (B, T, vocab) for input_ids (B, T) whose image tokens are replaced by the images'
        features; `.loss` when labels are given, `.image_hidden_states` the packed features (all images
        concatenated) when pixel_values are. The rest is as in LlamaForCausalLM.forward."""
        if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
            raise ValueError(f"input_ids: expected a (batch, sequence) tensor, got {_describe(input_ids)}")
        check_token_ids("input_ids", input_ids, self.config.text_config.vocab_size)   # image tokens included
        embeds = self.language_model.model.embed_tokens(input_ids)                 # (B, T, C)
        is_image = input_ids == self.config.image_token_index                      # (B, T)
        image_features = None
        if pixel_values is not None:
            per_image = self.image_features(pixel_values, image_sizes, vision_feature_layer,
                                            vision_feature_select_strategy)
            image_features = torch.cat(per_image).to(embeds.dtype)                 # (sum n_i, C)
            n_tokens = int(is_image.sum())
            if n_tokens != image_features.shape[0]:
                raise ValueError(
                    f"input_ids hold {n_tokens} image tokens (id {self.config.image_token_index}) but the images "
                    f"give {image_features.shape[0]} features ({[f.shape[0] for f in per_image]} per image); "
                    f"insert image_feature_count(image_size, config) image tokens per image")
            # Row-major order: the features of image 0 fill the first image tokens of the batch, and so on.
            embeds = embeds.masked_scatter(is_image[..., None], image_features)
        elif (cache is None or cache.length == 0) and bool(is_image.any()):
            raise ValueError(f"input_ids hold image tokens (id {self.config.image_token_index}) but no "
                             f"pixel_values were given")
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=cache, labels=labels, logits_to_keep=logits_to_keep)
        out.image_hidden_states = image_features
        return out


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return repr(x) if x is None else f"a {type(x).__name__}"
