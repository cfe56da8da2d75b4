"""LLaVA-NeXT (LLaVA-1.6): a CLIP vision tower, a two-layer projector and a Llama/Mistral decoder, with
"anyres" image tiling.

Papers: Liu et al., "Visual Instruction Tuning" (LLaVA, 2023) and "Improved Baselines with Visual
Instruction Tuning" (LLaVA-1.5, 2023); the LLaVA-NeXT blog post (2024) adds anyres. Reference
implementation: Transformers' `models/llava_next` (the oracle of minivlm's parity tests).

The data flow for one image (shapes for llava-v1.6-mistral-7b: crop side R = 336, patch p = 14, so a crop
is a 24 x 24 grid of P = 576 patches; vision width E_v = 1024, decoder width E = 4096):

    PIL image (h, w) --processor--> pixel_values (Nc, 3, R, R): the whole image resized (the "base")
                                     + the crops of the best grid resolution, e.g. 2x2 -> Nc = 5
    CLIP vision tower, hidden state of layer -2      (Nc, 1 + P, E_v)
    "default" strategy drops the class token         (Nc, P, E_v)
    projector: linear E_v -> E, GELU, linear E -> E   (Nc, P, E)
    pack: base (P, E) first; the crops laid out as their grid (2*24, 2*24, E), the letterbox padding
          cut off ("unpad"), an `image_newline` vector appended to each row, flattened row by row
    -> (P + h' * (w' + 1), E) image features, written at the image-token positions of input_ids
    Llama/Mistral decoder over the merged sequence -> logits (B, T, V)

input_ids come as Transformers' processor makes them: one image token per image feature (use
`image_feature_count` to know how many); the model writes the features there and expands nothing.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import nn

from .._checks import check_token_ids, rejects_unknown_kwargs
from .base import GenerativeModel
from ._common import activation
from ._config import known_fields, one_of, to_transformers_dict
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
    # (height, width) resolutions an image may be tiled at, in pixels; each a multiple of the crop side R
    image_grid_pinpoints: list = field(default_factory=lambda: [list(p) for p in DEFAULT_GRID_PINPOINTS])
    # config.json's settings minivlm does not use (dropout, init ranges, ...), written back by to_dict
    unread: dict = field(default_factory=dict, compare=False, repr=False)

    @classmethod
    def from_dict(cls, d: dict) -> "LlavaNextConfig":
        """Read a config.json dict, with Transformers' spellings and sub-config defaults."""
        config = _read_llava_next_config(cls, d)
        config.validate()
        return config

    def to_dict(self) -> dict:
        """The config.json dict Transformers writes (image_seq_length, unused here, at its default unless
        read); from_dict reads it back to an equal config."""
        return to_transformers_dict(self, "llava_next", {"image_seq_length": 576})

    def validate(self):
        _validate_llava_next_config(self)


def feature_layers(vision_feature_layer) -> list[int]:
    """vision_feature_layer as a list (an int is one layer)."""
    return [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)


class LlavaNextMultiModalProjector(nn.Module):
    """Vision features -> the decoder's embedding space: linear, activation, linear."""

    def __init__(self, config: LlavaNextConfig):
        super().__init__()
        E_v = config.vision_config.hidden_size * len(feature_layers(config.vision_feature_layer))
        E = config.text_config.hidden_size
        self.linear_1 = nn.Linear(E_v, E, bias=config.multimodal_projector_bias)
        self.act = activation(config.projector_hidden_act)
        self.linear_2 = nn.Linear(E, E, bias=config.multimodal_projector_bias)

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
        E = config.text_config.hidden_size
        self.image_newline = nn.Parameter(torch.randn(E) * E ** -0.5)
        self.language_model = LlamaForCausalLM(config.text_config)

    def tied_weights(self) -> dict[str, str]:
        return {f"language_model.{k}": f"language_model.{v}" for k, v in self.language_model.tied_weights().items()}

    def new_cache(self, batch_size: int, max_length: int, **kwargs):
        """A KV cache for generation: the decoder's (the image is encoded once, at prefill)."""
        return self.language_model.new_cache(batch_size, max_length, **kwargs)

    # -- vision -------------------------------------------------------------------------------------

    def image_features(self, pixel_values, image_sizes, vision_feature_layer=None,
                       vision_feature_select_strategy=None) -> list[torch.Tensor]:
        """One (n_i, E) tensor of packed features per image.

        pixel_values: (B, Nc, 3, R, R) as the processor gives it (images with fewer crops than Nc are
        zero-padded: only the first num_crops(image_sizes[i]) of image i are used).
        image_sizes: (B, 2) original (height, width) of each image.
        """
        cfg = self.config
        layers = feature_layers(cfg.vision_feature_layer if vision_feature_layer is None else vision_feature_layer)
        strategy = vision_feature_select_strategy or cfg.vision_feature_select_strategy
        sizes = _check_image_inputs(cfg, pixel_values, image_sizes)    # [(h, w)] as ints: one sync for a tensor
        counts = [num_crops(size, cfg.image_grid_pinpoints, cfg.vision_config.image_size) for size in sizes]
        crops = torch.cat([pv[:n] for pv, n in zip(pixel_values, counts)])        # (sum Nc, 3, R, R)

        # Run the tower only as deep as the deepest layer asked for: hidden_states[i] is layer i's output.
        L = cfg.vision_config.num_hidden_layers
        layers = [i if i >= 0 else L + 1 + i for i in layers]
        hidden = self.vision_tower(crops, output_hidden_states=True, num_layers=max(layers)).hidden_states
        selected = torch.cat([hidden[i] for i in layers], dim=-1)                   # (sum Nc, 1 + P, E_v)
        if strategy == "default":
            selected = selected[:, 1:]                                              # drop the class token
        features = self.multi_modal_projector(selected)                             # (sum Nc, P, E)
        return [self.pack(f, size, strategy) for f, size in zip(features.split(counts), sizes)]

    def pack(self, features, image_size, strategy="default"):
        """Lay out one image's (Nc, P, E) features (the base image, then its crops) as the sequence the
        decoder reads."""
        base, crops = features[0], features[1:]                                     # (P, E), (Nc - 1, P, E)
        newline = self.image_newline.to(features.dtype)
        if crops.shape[0] == 0:                                                     # one crop: no grid
            return torch.cat([base, newline[None]])
        cfg = self.config
        side = cfg.vision_config.image_size // cfg.vision_config.patch_size        # R / p patches per crop side
        rows, cols = anyres_grid_shape(image_size, cfg.image_grid_pinpoints, cfg.vision_config.image_size)
        _check_crop_grid(crops, rows, cols, side, strategy, image_size)
        E = crops.shape[-1]
        grid = crops.reshape(rows, cols, side, side, E)                             # crop row, crop col, y, x
        grid = grid.permute(0, 2, 1, 3, 4).reshape(rows * side, cols * side, E)    # (rows*side, cols*side, E)
        top, bottom, left, right = unpad_bounds(rows * side, cols * side, image_size)
        grid = grid[top:bottom, left:right]                                         # (h', w', E)
        grid = torch.cat([grid, newline.expand(grid.shape[0], 1, E)], dim=1)       # (h', w' + 1, E)
        return torch.cat([base, grid.reshape(-1, E)])                              # (P + h'(w'+1), E)

    # -- the whole model ----------------------------------------------------------------------------

    @rejects_unknown_kwargs
    def forward(self, input_ids, pixel_values=None, image_sizes=None, attention_mask=None, position_ids=None,
                cache=None, labels=None, logits_to_keep: int = 0, *, vision_feature_layer=None,
                vision_feature_select_strategy=None):
        """Logits (B, T, V) for input_ids (B, T) whose image tokens are replaced by the images'
        features; `.loss` when labels are given, `.image_hidden_states` the packed features (all images
        concatenated) when pixel_values are. The rest is as in LlamaForCausalLM.forward."""
        _check_text_inputs(self.config, input_ids, pixel_values, cache)
        embeds = self.language_model.model.embed_tokens(input_ids)                 # (B, T, E)
        image_features = None
        if pixel_values is not None:
            per_image = self.image_features(pixel_values, image_sizes, vision_feature_layer,
                                            vision_feature_select_strategy)
            image_features = torch.cat(per_image).to(embeds.dtype)                 # (sum n_i, E)
            is_image = input_ids == self.config.image_token_index                  # (B, T)
            _check_image_token_count(self.config, is_image, per_image)
            # Row-major order: the features of image 0 fill the first image tokens of the batch, and so on.
            embeds = embeds.masked_scatter(is_image[..., None], image_features)
        out = self.language_model(inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids,
                                  cache=cache, labels=labels, logits_to_keep=logits_to_keep)
        out.image_hidden_states = image_features
        return out


# ----------------------------------------------------------------------------------------------------
# Anyres geometry. Pure Python on (height, width) pairs; the image processor uses the same functions.
# ----------------------------------------------------------------------------------------------------

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


def num_crops(image_size, grid_pinpoints, crop_size: int) -> int:
    """Nc, how many of pixel_values' crops belong to an image: the base image plus one per grid tile."""
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
    P = side * side + (config.vision_feature_select_strategy == "full")           # features per crop
    _check_grid_tokens(P, side, config.vision_feature_select_strategy)
    rows, cols = anyres_grid_shape(image_size, config.image_grid_pinpoints, config.vision_config.image_size)
    top, bottom, left, right = unpad_bounds(rows * side, cols * side, image_size)
    return P + (bottom - top) * (right - left + 1)


def _size_pair(image_size) -> tuple[int, int]:
    """(height, width) as two Python ints, from a tuple, list or tensor (a tensor would make the
    comparisons above tensor-valued; reading one costs a device sync)."""
    if isinstance(image_size, torch.Tensor):
        image_size = image_size.tolist()
    h, w = (int(x) for x in image_size)
    if h <= 0 or w <= 0:
        raise ValueError(f"image_size must be a positive (height, width), got ({h}, {w})")
    return h, w


# ----------------------------------------------------------------------------------------------------
# Reading a config.json, and the checks
# ----------------------------------------------------------------------------------------------------

def _read_llava_next_config(cls, d: dict) -> LlavaNextConfig:
    """A LlavaNextConfig from a config.json dict: image_token_id (the newer spelling) for image_token_index,
    LLaVA-NeXT's own vision defaults, a "llama" decoder unless the text_config says otherwise."""
    kwargs = known_fields(cls, d, aliases=("image_token_id",))
    vision = {**LLAVA_VISION_DEFAULTS, **(kwargs.pop("vision_config", None) or {})}
    text = {"model_type": "llama", **(kwargs.pop("text_config", None) or {})}
    if "image_token_id" in d and "image_token_index" not in d:
        kwargs["image_token_index"] = d["image_token_id"]
    # Transformers ties the head by the top-level flag; the decoder we build must agree with it.
    text["tie_word_embeddings"] = kwargs.get("tie_word_embeddings", False)
    return cls(vision_config=CLIPVisionConfig.from_dict(vision), text_config=LlamaConfig.from_dict(text), **kwargs)


def _validate_llava_next_config(c: LlavaNextConfig):
    one_of(c, "vision_feature_select_strategy", ("default", "full"))
    n = c.vision_config.num_hidden_layers
    if any(not -(n + 1) <= i <= n for i in feature_layers(c.vision_feature_layer)):
        raise ValueError(f"LlavaNextConfig: vision_feature_layer {c.vision_feature_layer} is out of range "
                         f"for a vision tower with {n} layers ({n + 1} hidden states)")
    if not c.image_grid_pinpoints or any(len(p) != 2 for p in c.image_grid_pinpoints):
        raise ValueError(f"LlavaNextConfig: image_grid_pinpoints must be a non-empty list of [height, width] "
                         f"pairs, got {c.image_grid_pinpoints!r}")


def _check_text_inputs(config: LlavaNextConfig, input_ids, pixel_values, cache):
    """input_ids (B, T) with ids in the vocabulary (image tokens included); image tokens in a prompt (an
    empty cache) need pixel_values. Two device syncs at most, none in generate's decode steps."""
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise ValueError(f"input_ids: expected a (batch, sequence) tensor, got {_describe(input_ids)}")
    check_token_ids("input_ids", input_ids, config.text_config.vocab_size)
    if pixel_values is None and (cache is None or cache.length == 0) and \
            bool((input_ids == config.image_token_index).any()):
        raise ValueError(f"input_ids hold image tokens (id {config.image_token_index}) but no "
                         f"pixel_values were given")


def _check_image_inputs(config: LlavaNextConfig, pixel_values, image_sizes) -> list[tuple[int, int]]:
    """pixel_values (B, Nc, C, R, R) holding every image's crops; image_sizes one (height, width) per image.
    Returns image_sizes as Python (h, w) pairs, read once (one device sync for a tensor)."""
    v = config.vision_config
    C, R = v.num_channels, v.image_size
    if not isinstance(pixel_values, torch.Tensor) or pixel_values.dim() != 5 or \
            tuple(pixel_values.shape[2:]) != (C, R, R):
        raise ValueError(f"pixel_values: expected a (batch, crops, {C}, {R}, {R}) tensor, "
                         f"got {_describe(pixel_values)}")
    if image_sizes is None or len(image_sizes) != pixel_values.shape[0]:
        raise ValueError(f"image_sizes: expected one (height, width) per image ({pixel_values.shape[0]}), "
                         f"got {_describe(image_sizes)}")
    sizes = [_size_pair(s) for s in (image_sizes.tolist() if isinstance(image_sizes, torch.Tensor) else image_sizes)]
    counts = [num_crops(size, config.image_grid_pinpoints, R) for size in sizes]
    if max(counts) > pixel_values.shape[1]:
        raise ValueError(f"pixel_values: image_sizes need {counts} crops per image, but pixel_values holds "
                         f"only {pixel_values.shape[1]}; were they made with this config's image_grid_pinpoints?")
    return sizes


def _check_image_token_count(config: LlavaNextConfig, is_image, per_image):
    """As many image tokens in input_ids as the images give features (one device sync)."""
    n_tokens, n_features = int(is_image.sum()), sum(f.shape[0] for f in per_image)
    if n_tokens != n_features:
        raise ValueError(
            f"input_ids hold {n_tokens} image tokens (id {config.image_token_index}) but the images "
            f"give {n_features} features ({[f.shape[0] for f in per_image]} per image); "
            f"insert image_feature_count(image_size, config) image tokens per image")


def _check_grid_tokens(tokens: int, side: int, strategy: str):
    if tokens != side * side:
        raise ValueError(
            f"LLaVA-NeXT: vision_feature_select_strategy={strategy!r} gives {tokens} features per crop, which "
            f"do not tile the {side}x{side} patch grid that anyres packing lays the crops out on (\"full\" keeps "
            f"CLIP's class token; Transformers fails here too). Use 'default' with a CLIP tower.")


def _check_crop_grid(crops, rows: int, cols: int, side: int, strategy: str, image_size):
    """The (Nc - 1, P, E) crop features tile a rows x cols grid of side x side patches each."""
    _check_grid_tokens(crops.shape[1], side, strategy)
    if rows * cols != crops.shape[0]:
        raise ValueError(f"LLaVA-NeXT: image of size {tuple(_size_pair(image_size))} has {crops.shape[0]} crops "
                         f"but a {rows}x{cols} grid; image_grid_pinpoints must be multiples of the crop size")


def _describe(x) -> str:
    if isinstance(x, torch.Tensor):
        return f"a tensor of shape {tuple(x.shape)}"
    return repr(x) if x is None else f"a {type(x).__name__}"
