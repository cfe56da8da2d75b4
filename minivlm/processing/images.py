"""Image preprocessing: PIL images -> the pixel_values each model reads, matching Transformers' processors.

- `LlavaNextImageProcessor`: pixel_values (B, Nc, 3, R, R) and image_sizes (B, 2), "anyres" crops.
- `BlipImageProcessor` (BLIP-2): pixel_values (B, 3, H, W), one resize to a fixed square.
- `CLIPImageProcessor` (CLIP, Kosmos-2): pixel_values (B, 3, H, W), resize, centre crop.
- `IdeficsImageProcessor` (IDEFICS): pixel_values (B, N, 3, H, W), N images per interleaved sample
  (zero-padded), resize to a fixed square; `idefics_image_attention_mask` gives which image each token sees.
All build on `ImageProcessor` (reading preprocessor_config.json or processor_config.json, RGB conversion,
resize, rescale and normalize in Transformers' order and precision). Images of more than 8 bits per channel
(PIL modes I;16, I, F, ...) are refused: PIL's RGB conversion clips them rather than scaling them.

LLaVA-NeXT follows the "anyres" scheme of the LLaVA-NeXT blog post (Liu et al., 2024) as Transformers'
`LlavaNextImageProcessorPil` (models/llava_next/image_processing_pil_llava_next.py) implements it, step
for step and in the same order, so that the values agree with it (the tests check this). For each image:

    convert to RGB (transparency composited onto white)
    best = select_best_resolution((h, w), image_grid_pinpoints)    e.g. (672, 672) for a square photo
    resize to fit inside best, keeping the aspect ratio (PIL, `resample`, sides rounded up)
    pad to best with black, centred (an odd leftover goes to the bottom / right)
    cut into crops of crop_size R, row by row                     (best_h / R) * (best_w / R) crops
    base = the whole image squashed to size x size (no aspect ratio kept), put in front of the crops
    each of the Nc = 1 + crops images: resize (shortest edge to `size`), centre crop to crop_size,
    x * rescale_factor (in float64, stored as float32), (x - image_mean) / image_std (float32)

Images with fewer crops than the batch's largest count are padded with all-zero crops; the model reads
only the first `num_crops(image_size)` of each. image_sizes holds each original (height, width).
How many image tokens an image needs in input_ids: `image_feature_count(image_size, config)`, from
minivlm.models.llava_next and importable from here.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Optional

import numpy as np
import torch
from PIL import Image

from ..models._config import invalid, positive_ints
from ..models.llava_next import image_feature_count, select_best_resolution

OPENAI_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

# PIL modes with more than 8 bits per channel, which every processor refuses (PIL clips them to 8 bits).
_WIDE_MODES = {"I;16": "16-bit integers", "I;16L": "16-bit integers", "I;16B": "16-bit integers",
               "I;16N": "16-bit integers", "I": "32-bit integers", "F": "32-bit floats"}


class ImageProcessor:
    """What every minivlm image processor shares (each is a dataclass of its preprocessor_config.json
    fields: image_mean, image_std, rescale_factor, do_rescale, do_normalize, do_convert_rgb, resample, size,
    ...): reading the settings, checking the images, RGB conversion, resizing, rescale and normalize."""

    @classmethod
    def from_pretrained(cls, path):
        """Read the image settings of a local folder (unknown keys and nulls are ignored), from one of two files:

        - processor_config.json, its "image_processor" object: what Transformers' processor
          save_pretrained (AutoProcessor, LlavaNextProcessor, ...) writes, without a preprocessor_config.json;
        - preprocessor_config.json: the hub's file, and what an image processor's own save_pretrained writes.

        Where both hold settings, processor_config.json wins and preprocessor_config.json is not read at all
        (no merging), as Transformers' from_pretrained does; a processor_config.json without an
        "image_processor" object (older Transformers) leaves the settings to preprocessor_config.json."""
        settings = _read_settings(path, f"{cls.__name__}.from_pretrained")
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in settings.items() if k in names and v is not None})

    def to_dict(self) -> dict:
        """The settings as preprocessor_config.json (or processor_config.json's "image_processor") holds
        them, with the class name Transformers reads them by."""
        from dataclasses import asdict

        settings = {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items() if v is not None}
        return dict(sorted({**settings, "image_processor_type": type(self).__name__}.items()))

    def _to_rgb(self, image: Image.Image) -> Image.Image:
        """RGB as Transformers converts (the images were checked: with do_convert_rgb False they are RGB)."""
        if not self.do_convert_rgb:
            return image
        if "A" in image.getbands() or image.info.get("transparency") is not None:
            # Transparent pixels become white (not the black a plain convert("RGB") would leave).
            white = Image.new("RGBA", image.size, (255, 255, 255, 255))
            return Image.alpha_composite(white, image.convert("RGBA")).convert("RGB")
        return image.convert("RGB")

    def _resize(self, x: np.ndarray, height: int, width: int) -> np.ndarray:
        """Resize an (h, w, 3) uint8 array with PIL's `resample` filter (an unchanged size is a copy)."""
        return np.asarray(Image.fromarray(x).resize((width, height), Image.Resampling(self.resample)))

    def _resized_shape(self, h: int, w: int) -> tuple[int, int]:
        """Where `size` sends an (h, w) image: (height, width) as given, or the shortest edge to
        size["shortest_edge"] with the long edge scaled and truncated."""
        if "height" in self.size and "width" in self.size:
            return self.size["height"], self.size["width"]
        short = self.size["shortest_edge"]
        if w <= h:
            return int(short * h / w), short
        return short, int(short * w / h)

    def _rescale_normalize(self, x: np.ndarray) -> np.ndarray:
        """(h, w, 3) uint8 -> (3, h, w) float32: x * rescale_factor (in float64, stored as float32, as
        Transformers), then (x - image_mean) / image_std in float32."""
        if self.do_rescale:
            x = (x.astype(np.float64) * self.rescale_factor).astype(np.float32)
        x = x.astype(np.float32)
        if self.do_normalize:
            x = (x - np.array(self.image_mean, dtype=np.float32)) / np.array(self.image_std, dtype=np.float32)
        return np.ascontiguousarray(x.transpose(2, 0, 1))

    def _finish(self, x: np.ndarray) -> np.ndarray:
        """The generic steps on one (h, w, 3) uint8 image: resize (per `size`), centre crop (where the
        processor has do_center_crop), rescale, normalize -> (3, H, W) float32."""
        if self.do_resize:
            x = self._resize(x, *self._resized_shape(x.shape[0], x.shape[1]))
        if getattr(self, "do_center_crop", False):
            x = _center_crop(x, self.crop_size["height"], self.crop_size["width"])
        return self._rescale_normalize(x)

    def __call__(self, images) -> dict:
        """images: one PIL image or a list of them. Returns {"pixel_values": float32 (B, 3, H, W)}."""
        images = _check_images(self, images)
        arrays = [self._finish(np.asarray(self._to_rgb(image))) for image in images]   # each (3, H, W)
        _check_one_shape(self, {a.shape for a in arrays},
                         f"size {self.size} keeps aspect ratios and nothing crops them to one size")
        return {"pixel_values": torch.from_numpy(np.stack(arrays))}   # (B, 3, H, W)


@dataclass
class LlavaNextImageProcessor(ImageProcessor):
    """The fields of a LLaVA-NeXT preprocessor_config.json; defaults are Transformers' class
    defaults (hub checkpoints set size and crop_size to 336)."""
    # (height, width) resolutions an image may be tiled at; each a multiple of the crop size
    image_grid_pinpoints: list = field(default_factory=lambda: [[336, 672], [672, 336], [672, 672],
                                                                [1008, 336], [336, 1008]])
    size: dict = field(default_factory=lambda: {"shortest_edge": 224})         # resize target of each crop
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})  # side R of the crops
    image_mean: tuple = OPENAI_CLIP_MEAN     # per-channel mean subtracted after rescaling
    image_std: tuple = OPENAI_CLIP_STD       # per-channel std divided by after subtracting the mean
    rescale_factor: float = 1 / 255          # uint8 -> [0, 1]
    do_resize: bool = True                   # resize each crop to `size` (a no-op when it is already R)
    do_center_crop: bool = True              # centre crop each crop to crop_size (a no-op likewise)
    do_rescale: bool = True                  # multiply by rescale_factor
    do_normalize: bool = True                # subtract image_mean, divide by image_std
    do_pad: bool = True                      # pad ragged crop counts of a batch with zero crops
    do_convert_rgb: bool = True              # convert every image to RGB first
    resample: int = 3                        # PIL filter: 3 = BICUBIC (0 nearest, 2 bilinear, 1 lanczos)

    def __post_init__(self):
        # Older configs give sizes as an int (Transformers reads size=n as a shortest edge).
        self.size, self.crop_size = _as_size(self.size, square=False), _as_size(self.crop_size, square=True)
        _check_settings(self, crop=True, pinpoints=True)

    # -- the pipeline ------------------------------------------------------------------------------

    def __call__(self, images) -> dict:
        """images: one PIL image or a list of them. Returns {"pixel_values": float32 (B, Nc, 3, R, R),
        "image_sizes": int64 (B, 2) as (height, width)}."""
        images = _check_images(self, images)
        rgb = [self._to_rgb(image) for image in images]
        per_image = [self._crops(image) for image in rgb]                 # each (Nc_i, 3, R, R) float32
        counts = [crops.shape[0] for crops in per_image]
        _check_crop_counts(self, counts)
        Nc = max(counts)
        pixel_values = np.zeros((len(per_image), Nc) + per_image[0].shape[1:], dtype=np.float32)
        for b, crops in enumerate(per_image):
            pixel_values[b, :len(crops)] = crops                           # zero crops after the real ones
        image_sizes = [(image.height, image.width) for image in rgb]
        return {"pixel_values": torch.from_numpy(pixel_values),            # (B, Nc, 3, R, R)
                "image_sizes": torch.tensor(image_sizes, dtype=torch.long)}  # (B, 2)

    def _crops(self, image: Image.Image) -> np.ndarray:
        """One RGB image -> (Nc, 3, R, R) float32: the base image, then the crops row by row."""
        h, w = image.height, image.width
        best_h, best_w = select_best_resolution((h, w), self.image_grid_pinpoints)

        # Fit inside (best_h, best_w): the side that limits the scale fills it, the other rounds up.
        # h * (best_w / w), not h * best_w / w: the rounded scale can push an exact integer over (a
        # 85x272 image in 32x96 is 31 rows tall, not 30), and the pixels follow Transformers' rounding.
        scale_h, scale_w = best_h / h, best_w / w
        if scale_w < scale_h:
            new_h, new_w = min(math.ceil(h * scale_w), best_h), best_w
        else:
            new_h, new_w = best_h, min(math.ceil(w * scale_h), best_w)
        fitted = self._resize(np.asarray(image), new_h, new_w)            # (new_h, new_w, 3) uint8

        # Letterbox on black, centred: the smaller half of the padding on the top / left.
        top, left = (best_h - new_h) // 2, (best_w - new_w) // 2
        canvas = np.zeros((best_h, best_w, 3), dtype=np.uint8)             # (best_h, best_w, 3)
        canvas[top:top + new_h, left:left + new_w] = fitted

        R = self.crop_size["height"]                                       # side of the crops
        crops = [canvas[i:i + R, j:j + R] for i in range(0, best_h, R) for j in range(0, best_w, R)]

        # The base image: the whole picture squashed to a square, whatever its aspect ratio.
        side_h, side_w = ((self.size["height"], self.size["width"]) if "height" in self.size
                          else (self.size["shortest_edge"], self.size["shortest_edge"]))
        base = self._resize(np.asarray(image), side_h, side_w)

        return np.stack([self._finish(x) for x in [base] + crops])        # (Nc, 3, R, R)


def _center_crop(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Centre crop an (h, w, C) array to (height, width); an image smaller than that is first placed on a
    black canvas, at the centre rounded towards the bottom-right (as Transformers does)."""
    h, w = x.shape[:2]
    if h < height or w < width:
        H, W = max(h, height), max(w, width)
        canvas = np.zeros((H, W) + x.shape[2:], dtype=x.dtype)
        top, left = math.ceil((H - h) / 2), math.ceil((W - w) / 2)
        canvas[top:top + h, left:left + w] = x
        x, h, w = canvas, H, W
    top, left = (h - height) // 2, (w - width) // 2
    return x[top:top + height, left:left + width]


def _as_size(value, square: bool):
    """A size given as an int, as Transformers reads it: {"height": n, "width": n} (square) or
    {"shortest_edge": n}; any other value as it is."""
    if isinstance(value, int) and not isinstance(value, bool):
        return {"height": value, "width": value} if square else {"shortest_edge": value}
    return value


# --------------------------------------------------------------------------------------------------
# BLIP / BLIP-2
# --------------------------------------------------------------------------------------------------

@dataclass
class BlipImageProcessor(ImageProcessor):
    """BLIP and BLIP-2's image preprocessing: PIL images -> pixel_values (B, 3, H, W) float32.

    Matches Transformers' `BlipImageProcessorPil` (models/blip/image_processing_pil_blip.py), whose
    steps are the generic ones of its PIL backend, in this order:

        convert to RGB (transparency composited onto white)
        resize to size["height"] x size["width"] (the aspect ratio is not kept), PIL `resample` (bicubic)
          (or, with size {"shortest_edge": s}: the short side to s, the long side scaled and truncated)
        centre crop to crop_size (off by default)
        x * rescale_factor (in float64, stored as float32), (x - image_mean) / image_std (float32)

    Defaults are Transformers' class defaults (384 x 384); BLIP-2 hub checkpoints set size to 224 in their
    preprocessor_config.json.
    """
    size: dict = field(default_factory=lambda: {"height": 384, "width": 384})   # resize target
    crop_size: Optional[dict] = None         # centre crop target {"height", "width"}, with do_center_crop
    image_mean: tuple = OPENAI_CLIP_MEAN     # per-channel mean subtracted after rescaling
    image_std: tuple = OPENAI_CLIP_STD       # per-channel std divided by after subtracting the mean
    rescale_factor: float = 1 / 255          # uint8 -> [0, 1]
    do_resize: bool = True
    do_center_crop: bool = False
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True              # convert every image to RGB first
    resample: int = 3                        # PIL filter: 3 = BICUBIC (0 nearest, 2 bilinear, 1 lanczos)

    def __post_init__(self):
        # An int size is a square (Transformers' default_to_square for BLIP).
        self.size, self.crop_size = _as_size(self.size, square=True), _as_size(self.crop_size, square=True)
        _check_settings(self, crop=self.do_center_crop)


# --------------------------------------------------------------------------------------------------
# CLIP (and Kosmos-2, which uses CLIP's processor)
# --------------------------------------------------------------------------------------------------

@dataclass
class CLIPImageProcessor(ImageProcessor):
    """CLIP's image preprocessing: PIL images -> pixel_values (B, 3, H, W) float32.

    Matches Transformers' `CLIPImageProcessorPil` (models/clip/image_processing_pil_clip.py), the
    generic steps of its PIL backend in this order:

        convert to RGB (transparency composited onto white)
        resize the shortest edge to size["shortest_edge"], the long edge scaled and truncated
          (int(s * long / short)), PIL `resample` (bicubic); or to size["height"] x size["width"]
        centre crop to crop_size (an image smaller than it is padded with black first)
        x * rescale_factor (in float64, stored as float32), (x - image_mean) / image_std (float32)

    Defaults are Transformers' class defaults (224, OpenAI CLIP mean/std). Kosmos-2 checkpoints
    (microsoft/kosmos-2-patch14-224) use this processor with a 224 x 224 crop and squash the image to a
    224 x 224 square first instead of keeping its aspect ratio (`use_square_size`, or size {"height": 224,
    "width": 224}): the whole picture reaches the model, as the grounding boxes' coordinates assume.
    `use_square_size` squares size["shortest_edge"]; Transformers squares its class default (224)
    whatever size says, which is the same for the checkpoints.
    """
    size: dict = field(default_factory=lambda: {"shortest_edge": 224})          # resize target
    crop_size: dict = field(default_factory=lambda: {"height": 224, "width": 224})  # centre crop target
    image_mean: tuple = OPENAI_CLIP_MEAN     # per-channel mean subtracted after rescaling
    image_std: tuple = OPENAI_CLIP_STD       # per-channel std divided by after subtracting the mean
    rescale_factor: float = 1 / 255          # uint8 -> [0, 1]
    do_resize: bool = True
    do_center_crop: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True              # convert every image to RGB first
    resample: int = 3                        # PIL filter: 3 = BICUBIC (0 nearest, 2 bilinear, 1 lanczos)
    use_square_size: bool = False            # Kosmos-2: resize to shortest_edge x shortest_edge (no aspect ratio)

    def __post_init__(self):
        # An int size is a shortest edge for CLIP (Transformers' default_to_square=False); an int crop a square.
        self.size, self.crop_size = _as_size(self.size, square=False), _as_size(self.crop_size, square=True)
        if self.use_square_size and isinstance(self.size, dict) and _positive_int(self.size.get("shortest_edge")):
            self.size = {"height": self.size["shortest_edge"], "width": self.size["shortest_edge"]}
        _check_settings(self, crop=self.do_center_crop)


# --------------------------------------------------------------------------------------------------
# IDEFICS
# --------------------------------------------------------------------------------------------------

@dataclass
class IdeficsImageProcessor(ImageProcessor):
    """IDEFICS's image preprocessing: the images of B interleaved samples -> pixel_values (B, N, 3, H, W).

    Each image goes through the steps of Transformers' `IdeficsImageProcessorPil`
    (models/idefics/image_processing_pil_idefics.py; the generic steps of its PIL backend), in this order:

        convert to RGB (transparency composited onto white)
        resize to image_size x image_size (the aspect ratio is not kept), PIL `resample` (bicubic)
        x * rescale_factor (in float64, stored as float32), (x - image_mean) / image_std (float32)

    Transformers' image processor returns the images of all samples as one flat stack; the batching is done
    by `IdeficsProcessor` (models/idefics/processing_idefics.py), and is done here the same way: sample b's
    N_b images fill pixel_values[b, :N_b] in order, and the rest of the row is all-zero images, with
    N = max(1, max N_b) (a batch without any image still has one all-zero slot per sample). The zero images
    are harmless because `image_attention_mask` never points at them (`idefics_image_attention_mask`).

    Hub checkpoints (HuggingFaceM4/idefics-9b, -80b and their -instruct versions) write only `image_size`
    (224) in preprocessor_config.json; `image_size`, when given, overrides `size`, as in Transformers.
    The mean and std default to OpenAI CLIP's, which IDEFICS uses.
    """
    image_size: Optional[int] = None         # the hub's key: resize to image_size x image_size (overrides size)
    size: dict = field(default_factory=lambda: {"height": 224, "width": 224})   # resize target
    image_mean: tuple = OPENAI_CLIP_MEAN     # per-channel mean subtracted after rescaling
    image_std: tuple = OPENAI_CLIP_STD       # per-channel std divided by after subtracting the mean
    rescale_factor: float = 1 / 255          # uint8 -> [0, 1]
    do_resize: bool = True
    do_rescale: bool = True
    do_normalize: bool = True
    do_convert_rgb: bool = True              # convert every image to RGB first
    resample: int = 3                        # PIL filter: 3 = BICUBIC (0 nearest, 2 bilinear, 1 lanczos)
    image_num_channels: int = 3              # channels of the all-zero padding images (RGB: only 3 is valid)

    def __post_init__(self):
        if self.image_size is not None:
            positive_ints(self, "image_size")
            self.size = {"height": self.image_size, "width": self.image_size}
        self.size = _as_size(self.size, square=True)
        _check_settings(self, shortest_edge=False, channels=True)
        self.image_size = self.size["height"]    # as Transformers: image_size is size's height afterwards

    def __call__(self, images) -> dict:
        """images: a list with one entry per sample, each a list of that sample's PIL images in the order
        they appear in its text (possibly empty), or a single PIL image (a sample with one image); one PIL
        image alone is one sample with one image. Returns {"pixel_values": float32 (B, N, 3, H, W)}."""
        samples = _check_samples(self, images)
        arrays = [[self._finish(np.asarray(self._to_rgb(image))) for image in sample] for sample in samples]
        shapes = {a.shape for sample in arrays for a in sample}
        _check_one_shape(self, shapes, "do_resize is False")
        shape = shapes.pop() if shapes else (3, self.size["height"], self.size["width"])
        N = max(1, max(len(sample) for sample in arrays))
        pixel_values = np.zeros((len(arrays), N) + shape, dtype=np.float32)    # (B, N, 3, H, W)
        for b, sample in enumerate(arrays):
            if sample:
                pixel_values[b, :len(sample)] = np.stack(sample)                 # all-zero images after them
        return {"pixel_values": torch.from_numpy(pixel_values)}


def idefics_image_attention_mask(input_ids: torch.Tensor, *, image_token_id: int, eos_token_id: Optional[int],
                                 num_images: int) -> torch.Tensor:
    """Which image each text token may attend to, as Transformers' `IdeficsProcessor` builds it.

    input_ids: (B, T) ids holding one `image_token_id` ("<image>") per image, in order. Returns int64
    (B, T, num_images), one-hot: token t of sample b sees image j when the most recent `<image>` at or
    before t is sample b's j-th (counting from 0). A row is all zeros (the token sees no image, and the
    model zeroes its cross-attention output) when
      - no `<image>` comes at or before t (text before the first image, left padding),
      - an `eos_token_id` ("</s>", the end of a document) came after the most recent `<image>` and before t
        (the eos token itself still sees the image), or
      - the most recent image's index is >= num_images (an image without a slot in pixel_values).
    Pass the tokenizer's eos id to match Transformers (LLaMA's "</s>" is 2), or None for no document ends;
    num_images is pixel_values.shape[1].
    """
    _check_mask_arguments(input_ids, num_images)
    B, T = input_ids.shape
    position = torch.arange(T, device=input_ids.device).expand(B, T)       # (B, T)
    is_image = input_ids == image_token_id
    image_index = is_image.long().cumsum(-1) - 1                           # (B, T): -1 before the first image
    last_image = torch.where(is_image, position, -1).cummax(-1).values     # position of the latest <image> <= t
    if eos_token_id is None:
        ended = torch.zeros_like(is_image)
    else:
        last_eos = torch.where(input_ids == eos_token_id, position, -1).cummax(-1).values
        last_eos_before = torch.cat([last_eos.new_full((B, 1), -1), last_eos[:, :-1]], dim=1)  # latest eos < t
        ended = last_eos_before > last_image                               # the document ended after the image
    sees = (image_index >= 0) & (image_index < num_images) & ~ended        # (B, T)
    one_hot = torch.nn.functional.one_hot(image_index.clamp(0, num_images - 1), num_images)  # (B, T, N)
    return one_hot * sees.unsqueeze(-1)


# --------------------------------------------------------------------------------------------------
# Reading the settings, and the checks
# --------------------------------------------------------------------------------------------------

def _read_settings(path, name: str) -> dict:
    """The image settings of a folder, as ImageProcessor.from_pretrained describes: processor_config.json's
    "image_processor" object, else preprocessor_config.json; a FileNotFoundError where neither holds them."""
    folder, settings = Path(path), None
    if (folder / "processor_config.json").is_file():
        settings = _read_json_object(folder / "processor_config.json", name).get("image_processor")
        if settings is not None and not isinstance(settings, dict):
            raise ValueError(f'{name}: "image_processor" in {folder / "processor_config.json"} is a '
                             f"{type(settings).__name__}, expected a JSON object")
    if settings is None and (folder / "preprocessor_config.json").is_file():
        settings = _read_json_object(folder / "preprocessor_config.json", name)
    if settings is None:
        raise FileNotFoundError(f"{name}: no image settings in {str(path)!r}: expected preprocessor_config.json, "
                                f'or processor_config.json with an "image_processor" object')
    return settings


def _read_json_object(file: Path, name: str) -> dict:
    with open(file) as f:
        d = json.load(f)
    if not isinstance(d, dict):
        raise ValueError(f"{name}: {file} holds a {type(d).__name__}, expected a JSON object")
    return d


def _positive_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool) and x > 0


def _is_size(value, shortest_edge: bool) -> bool:
    """value is {"height": h, "width": w} (or, where allowed, {"shortest_edge": s}) of positive ints."""
    return isinstance(value, dict) and ((shortest_edge and _positive_int(value.get("shortest_edge"))) or (
        _positive_int(value.get("height")) and _positive_int(value.get("width"))))


def _check_settings(p, *, shortest_edge=True, crop=False, pinpoints=False, channels=False):
    """A processor's settings: size ({"shortest_edge"} or {"height", "width"}, or only the latter), and where
    the processor reads them crop_size, image_grid_pinpoints and image_num_channels; then the rescale and
    normalize settings every processor shares. A ValueError names the field, what it must be and what it is."""
    pins = getattr(p, "image_grid_pinpoints", None)
    if pinpoints and not (isinstance(pins, (list, tuple)) and pins and all(
            isinstance(pin, (list, tuple)) and len(pin) == 2 and all(_positive_int(x) for x in pin) for pin in pins)):
        raise invalid(p, "image_grid_pinpoints", "a non-empty list of [height, width] pairs of positive ints")
    if not _is_size(p.size, shortest_edge):
        raise invalid(p, "size", ('an int or a dict with "shortest_edge", or "height" and "width" (positive ints)'
                               if shortest_edge else 'an int or a dict with "height" and "width" (positive ints)'))
    if crop and not _is_size(p.crop_size, shortest_edge=False):
        raise invalid(p, "crop_size", 'an int or a dict with "height" and "width" (positive ints)')
    if channels and p.image_num_channels != 3:
        raise invalid(p, "image_num_channels", "3 (the images are RGB)")
    for name in ("image_mean", "image_std"):
        value = getattr(p, name)
        if not isinstance(value, (list, tuple)) or len(value) != 3:
            raise invalid(p, name, "3 numbers, one per RGB channel")
    if any(s == 0 for s in p.image_std):
        raise invalid(p, "image_std", "non-zero")
    if not isinstance(p.rescale_factor, (int, float)) or isinstance(p.rescale_factor, bool):
        raise invalid(p, "rescale_factor", "a number")
    if p.resample not in {int(r) for r in Image.Resampling}:
        raise invalid(p, "resample", f"a PIL resampling filter, one of {sorted(int(r) for r in Image.Resampling)}")


def open_image(image, where: str = "image", caller: str = "minivlm"):
    """A PIL image as it is; a path (str or os.PathLike) opened and decoded with PIL. A missing file is a
    FileNotFoundError, a file PIL cannot decode a ValueError, each naming the path."""
    import os

    if not isinstance(image, (str, os.PathLike)):
        return image
    if not os.path.isfile(image):
        raise FileNotFoundError(f"{caller}: {where} is {str(image)!r}, which is not a file")
    try:
        with Image.open(image) as opened:
            opened.load()
            return opened.copy()
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as error:
        raise ValueError(f"{caller}: {where} {str(image)!r} cannot be decoded as an image "
                         f"({type(error).__name__}: {error})") from error


def _check_images(p, images) -> list:
    """One PIL image (or image path) or a non-empty list of them -> a list of PIL images; a TypeError naming
    what arrived otherwise."""
    import os

    if isinstance(images, (Image.Image, str, os.PathLike)):
        images = [images]
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(f"{type(p).__name__}: images must be a PIL image or a non-empty list of them, "
                        f"got {images!r:.80}")
    images = [open_image(image, f"images[{i}]", type(p).__name__) for i, image in enumerate(images)]
    for i, image in enumerate(images):
        _check_image(p, image, f"images[{i}]")
    _check_rgb(p, images)
    return images


def _check_samples(p, images) -> list:
    """IDEFICS's images, normalised to a list of B lists of PIL images (paths opened); a TypeError naming
    what arrived otherwise."""
    import os

    if isinstance(images, Image.Image):
        images = [[images]]
    if not isinstance(images, (list, tuple)) or not images:
        raise TypeError(f"IdeficsImageProcessor: images must be a non-empty list with one entry per sample "
                        f"(a list of PIL images, or one PIL image), got {images!r:.80}")
    samples = []
    for b, sample in enumerate(images):
        sample = [sample] if isinstance(sample, (Image.Image, str, os.PathLike)) else sample
        if not isinstance(sample, (list, tuple)):
            raise TypeError(f"IdeficsImageProcessor: images[{b}] must be a list of PIL images or a PIL image, "
                            f"got {type(sample).__name__}")
        sample = [open_image(image, f"images[{b}][{i}]", type(p).__name__) for i, image in enumerate(sample)]
        for i, image in enumerate(sample):
            _check_image(p, image, f"images[{b}][{i}]")
        samples.append(list(sample))
    _check_rgb(p, [image for sample in samples for image in sample])
    return samples


def _check_image(p, image, where: str):
    """A PIL image of 8 bits per channel or fewer. The wider modes are refused: PIL's RGB conversion clips
    their values to 0..255 instead of scaling them (16-bit pictures come out almost white, floats in [0, 1]
    black)."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"{type(p).__name__}: {where} must be a PIL.Image.Image, got {type(image).__name__}")
    if image.mode in _WIDE_MODES:
        values, scale = ("values in [0, 1]", "* 255") if image.mode == "F" else ("16-bit values", "/ 257")
        raise ValueError(f"{type(p).__name__}: {where} has PIL mode {image.mode!r} "
                         f"({_WIDE_MODES[image.mode]}), which PIL's RGB conversion clips to 0..255 instead of "
                         f"scaling; expected 8 bits per channel (L, RGB, RGBA, P, ...): scale it yourself, e.g. "
                         f"for {values} Image.fromarray((np.asarray(image) {scale}).round().astype(np.uint8))")


def _check_rgb(p, images):
    """With do_convert_rgb False every image must be RGB already."""
    for image in images:
        if not p.do_convert_rgb and image.mode != "RGB":
            raise ValueError(f"{type(p).__name__}: do_convert_rgb is False, so images must be RGB, "
                             f"got mode {image.mode!r}")


def _check_one_shape(p, shapes: set, why: str):
    """The processed images have one shape, so that they stack into one batch."""
    if len(shapes) > 1:
        raise ValueError(f"{type(p).__name__}: the images come out in different shapes {sorted(shapes)} "
                         f"({why}), so they cannot be stacked into one batch")


def _check_crop_counts(p, counts: list):
    """Without do_pad every image must give the same number of crops."""
    if not p.do_pad and len(set(counts)) > 1:
        raise ValueError(f"LlavaNextImageProcessor: the images give {counts} crops each and do_pad is "
                         f"False, so they cannot be stacked into one batch")


def _check_mask_arguments(input_ids, num_images):
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2:
        raise TypeError(f"idefics_image_attention_mask: input_ids must be a (B, T) tensor, got "
                        f"{tuple(input_ids.shape) if isinstance(input_ids, torch.Tensor) else type(input_ids).__name__}")
    if not _positive_int(num_images):
        raise ValueError(f"idefics_image_attention_mask: num_images must be a positive int, got {num_images!r}")


__all__ = ["ImageProcessor", "LlavaNextImageProcessor", "BlipImageProcessor", "CLIPImageProcessor",
           "image_feature_count", "IdeficsImageProcessor", "idefics_image_attention_mask", "OPENAI_CLIP_MEAN",
           "OPENAI_CLIP_STD"]
