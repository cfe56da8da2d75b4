"""LLaVA-NeXT image preprocessing (minivlm.processing) against Transformers 5.23's LlavaNextImageProcessorPil,
the image-token count against Transformers' LlavaNextProcessor, and CLIP / Kosmos-2 preprocessing against
CLIPImageProcessorPil.

Tolerance: none. Both sides resize with the same PIL call on the same uint8 pixels (deterministic integer
output), pad and crop by integer indexing, then apply the same IEEE-754 operations in the same order
(x * rescale_factor in float64, rounded to float32; (x - mean) / std in float32, each step correctly
rounded). The results are therefore bit-identical, and any difference, even one pixel of a resize or
padding offset, is a real disagreement, so the tests compare with torch.equal.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (CLIPImageProcessorPil, LlavaNextImageProcessorPil, LlavaNextProcessor,
                          PreTrainedTokenizerFast)

from minivlm.models.llava_next import LlavaNextConfig
from minivlm.processing import CLIPImageProcessor, LlavaNextImageProcessor, num_image_tokens

# A scaled-down processor: 32 px crops and the hub's pinpoints scaled by 32/336.
TINY = dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32},
            image_grid_pinpoints=[[32, 64], [64, 32], [64, 64], [96, 32], [32, 96]])
# The hub's llava-v1.6 processor (336 px crops, Transformers' default pinpoints).
HUB = dict(size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336})


def picture(height, width, mode="RGB", seed=0):
    """Random pixels (alpha too, so transparency matters) converted to `mode`."""
    rgba = np.random.default_rng(seed).integers(0, 256, (height, width, 4), dtype=np.uint8)
    image = Image.fromarray(rgba, "RGBA")
    return image if mode == "RGBA" else image.convert(mode)


def assert_same_as_transformers(images, **kwargs):
    expected = LlavaNextImageProcessorPil(**kwargs)(images, return_tensors="pt")
    got = LlavaNextImageProcessor(**kwargs)(images)
    assert got["pixel_values"].dtype == torch.float32
    assert got["image_sizes"].dtype == torch.long
    assert got["pixel_values"].shape == expected["pixel_values"].shape
    assert torch.equal(got["pixel_values"], expected["pixel_values"])
    assert torch.equal(got["image_sizes"], expected["image_sizes"])
    return got


@pytest.mark.parametrize("height, width, crops", [
    (40, 40, 4),    # square: 2x2 grid, resized up, no padding
    (30, 90, 3),    # wide: a 1x3 row
    (100, 20, 3),   # tall: a 3x1 column
    (5, 7, 2),      # tiny, smaller than one crop: every pinpoint keeps all 35 pixels, 32x64 wastes least
    (33, 50, 4),    # resized to 43x64 inside 64x64: letterboxed, 10 rows above and 11 below
    (64, 32, 2),    # exactly a pinpoint: no resize change, no padding
    (85, 272, 3),   # 85 * (96 / 272) rounds above 30.0: resized to 31 rows, where exact arithmetic gives 30
])
def test_sizes_match_transformers(height, width, crops):
    got = assert_same_as_transformers(picture(height, width), **TINY)
    assert got["pixel_values"].shape == (1, 1 + crops, 3, 32, 32)
    assert got["image_sizes"].tolist() == [[height, width]]


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "RGB"])
def test_modes_match_transformers(mode):
    # RGBA and LA are composited onto white; L and P are converted to RGB.
    assert_same_as_transformers(picture(45, 70, mode), **TINY)


def test_transparent_pixels_become_white():
    # A palette image whose only colour is marked transparent, and an RGBA image with alpha 0 everywhere:
    # both are composited onto white, so every pixel of the base image is white once normalized.
    palette = Image.new("P", (70, 45), 0)
    palette.info["transparency"] = 0
    clear = Image.fromarray(np.zeros((45, 70, 4), dtype=np.uint8), "RGBA")
    got = assert_same_as_transformers([palette, clear], **TINY)
    processor = LlavaNextImageProcessor(**TINY)
    white = (1.0 - torch.tensor(processor.image_mean, dtype=torch.float32)) / torch.tensor(processor.image_std,
                                                                                           dtype=torch.float32)
    assert torch.equal(got["pixel_values"][:, 0], white[None, :, None, None].expand(2, 3, 32, 32))


def test_batch_with_different_crop_counts():
    images = [picture(40, 40, seed=1), picture(30, 90, seed=2), picture(64, 32, seed=3)]
    got = assert_same_as_transformers(images, **TINY)
    assert got["pixel_values"].shape == (3, 5, 3, 32, 32)
    # 5, 4 and 3 real patches; the rest of each row of the batch is zeros.
    for b, real in enumerate([5, 4, 3]):
        assert (got["pixel_values"][b, real:] == 0).all()
        assert (got["pixel_values"][b, :real] != 0).any(dim=(1, 2, 3)).all()
    assert got["image_sizes"].tolist() == [[40, 40], [30, 90], [64, 32]]


def test_hub_sized_processor_matches_transformers():
    # (25, 75) on 336x672: 25 * (672 / 75) rounds above 224.0, so 225 rows (as (85, 272) in the tiny config).
    got = assert_same_as_transformers([picture(205, 656), picture(500, 380, seed=1), picture(25, 75, seed=2)],
                                      **HUB)
    assert got["pixel_values"].shape == (3, 5, 3, 336, 336)


@pytest.mark.parametrize("options", [
    dict(resample=2),                                                  # bilinear
    dict(size={"height": 40, "width": 40}),                            # crops resized up to 40, cropped back to 32
    dict(size={"shortest_edge": 24}),                                  # crops resized down, centre crop pads them
    dict(do_rescale=False, image_mean=[100.0, 110.0, 120.0], image_std=[50.0, 60.0, 70.0]),
    dict(do_resize=False, do_center_crop=False, do_normalize=False),
])
def test_options_match_transformers(options):
    assert_same_as_transformers([picture(45, 100), picture(60, 20, seed=1)], **{**TINY, **options})


def test_from_pretrained_reads_transformers_config(tmp_path):
    options = dict(TINY, resample=2, image_mean=[0.5, 0.4, 0.3], image_std=[0.2, 0.25, 0.3], do_center_crop=False)
    LlavaNextImageProcessorPil(**options).save_pretrained(tmp_path)
    ours = LlavaNextImageProcessor.from_pretrained(tmp_path)
    saved = json.loads((tmp_path / "preprocessor_config.json").read_text())
    for name in ("image_grid_pinpoints", "size", "crop_size", "resample", "do_center_crop", "rescale_factor"):
        assert getattr(ours, name) == saved[name], name
    assert list(ours.image_mean) == [0.5, 0.4, 0.3] and list(ours.image_std) == [0.2, 0.25, 0.3]
    image = picture(50, 70)
    assert torch.equal(ours(image)["pixel_values"],
                       LlavaNextImageProcessorPil.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"])


def test_defaults_are_transformers_defaults():
    theirs, ours = LlavaNextImageProcessorPil(), LlavaNextImageProcessor()
    assert ours.size == {"shortest_edge": theirs.size.shortest_edge}
    assert ours.crop_size == {"height": theirs.crop_size.height, "width": theirs.crop_size.width}
    for name in ("image_grid_pinpoints", "rescale_factor", "resample", "do_resize", "do_center_crop", "do_rescale",
                 "do_normalize", "do_pad", "do_convert_rgb"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert tuple(ours.image_mean) == tuple(theirs.image_mean) and tuple(ours.image_std) == tuple(theirs.image_std)
    # Older configs write sizes as ints.
    assert LlavaNextImageProcessor(size=336, crop_size=336).crop_size == {"height": 336, "width": 336}


# ---- image-token counts ----------------------------------------------------------------------------

def transformers_processor(image_processor_kwargs, patch_size):
    """LlavaNextProcessor with a three-word tokenizer in which <image> is one token (id 1)."""
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "<image>": 1, "hello": 2}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<image>"])
    # num_additional_image_tokens=1 (CLIP's class token), as the hub's llava-v1.6 processors set it.
    return LlavaNextProcessor(image_processor=LlavaNextImageProcessorPil(**image_processor_kwargs),
                              tokenizer=PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>"),
                              patch_size=patch_size, vision_feature_select_strategy="default",
                              num_additional_image_tokens=1)


def count_image_tokens(processor, image):
    return int((processor(images=image, text="hello <image>", return_tensors="pt")["input_ids"] == 1).sum())


@pytest.mark.parametrize("height, width", [(205, 656), (656, 205), (336, 336), (500, 380), (100, 1200), (20, 30)])
def test_token_count_matches_transformers_hub_config(height, width):
    # (205, 656) lands on the 336x672 pinpoint (a 24x48 feature grid) and its letterbox is exactly 15 rows
    # tall in real arithmetic, but 205 * (48 / 656) is 14.999...: the seed (Transformers 4.39) truncated to
    # 14 rows, Transformers 5.x rounds to 7 decimals first and keeps 16 (1360 tokens, not 1262).
    assert int(205 * (48 / 656)) == 14
    config = LlavaNextConfig.from_dict({"vision_config": {"image_size": 336, "patch_size": 14},
                                        "vision_feature_select_strategy": "default"})
    expected = count_image_tokens(transformers_processor(HUB, patch_size=14), picture(height, width))
    assert num_image_tokens((height, width), config) == expected
    if (height, width) == (205, 656):
        assert expected == 576 + 16 * (48 + 1)


@pytest.mark.parametrize("height, width", [(40, 40), (30, 90), (100, 20), (5, 7), (33, 50), (64, 32), (41, 131)])
def test_token_count_matches_transformers_tiny_config(height, width):
    config = LlavaNextConfig.from_dict({"vision_config": {"image_size": 32, "patch_size": 8},
                                        "image_grid_pinpoints": TINY["image_grid_pinpoints"]})
    expected = count_image_tokens(transformers_processor(TINY, patch_size=8), picture(height, width))
    assert num_image_tokens((height, width), config) == expected


# ---- bad input -------------------------------------------------------------------------------------

def test_bad_images():
    processor = LlavaNextImageProcessor(**TINY)
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL.Image.Image, got ndarray"):
        processor([picture(10, 10), np.zeros((10, 10, 3), dtype=np.uint8)])
    with pytest.raises(TypeError, match="images must be a PIL image or a non-empty list"):
        processor([])
    with pytest.raises(TypeError, match="images must be a PIL image or a non-empty list"):
        processor("cat.png")
    with pytest.raises(ValueError, match="do_convert_rgb is False, so images must be RGB, got mode 'RGBA'"):
        LlavaNextImageProcessor(**TINY, do_convert_rgb=False)(picture(10, 10, "RGBA"))
    with pytest.raises(ValueError, match=r"give \[5, 3\] crops each and do_pad is False"):
        LlavaNextImageProcessor(**TINY, do_pad=False)([picture(40, 40), picture(64, 32)])


@pytest.mark.parametrize("field, value, message", [
    ("image_grid_pinpoints", [[32, 64], [64]], "image_grid_pinpoints must be a non-empty list of"),
    ("image_grid_pinpoints", [], "image_grid_pinpoints must be a non-empty list of"),
    ("size", {"longest_edge": 32}, 'size must be a dict with "shortest_edge"'),
    ("crop_size", {"height": 32}, 'crop_size must be a dict with "height" and "width"'),
    ("image_mean", [0.5, 0.5], "image_mean must be 3 numbers"),
    ("image_std", [1.0, 0.0, 1.0], "image_std must be non-zero"),
    ("resample", 9, "resample must be a PIL resampling filter"),
])
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        LlavaNextImageProcessor(**{**TINY, field: value})


def test_from_pretrained_without_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="no preprocessor_config.json in"):
        LlavaNextImageProcessor.from_pretrained(tmp_path)


# ---- CLIP / Kosmos-2 (CLIPImageProcessor against Transformers' CLIPImageProcessorPil) ------------------

# microsoft/kosmos-2-patch14-224's settings: CLIP's processor, the image squashed to 224 x 224, crop 224.
KOSMOS2 = dict(size={"shortest_edge": 224}, use_square_size=True, crop_size={"height": 224, "width": 224})
CLIP_TINY = dict(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28})


def assert_clip_same_as_transformers(images, **kwargs):
    expected = CLIPImageProcessorPil(**kwargs)(images, return_tensors="pt")["pixel_values"]
    got = CLIPImageProcessor(**kwargs)(images)["pixel_values"]
    assert got.dtype == torch.float32 and got.shape == expected.shape
    assert torch.equal(got, expected)
    return got


@pytest.mark.parametrize("height, width", [
    (40, 40), (30, 90), (100, 20), (5, 7),   # square, wide, tall, smaller than the crop (padded black)
    (33, 50),                                # 32 * 50 / 33 = 48.48: the long side truncates to 48
    (31, 97),                                # odd leftovers: the crop's extra column goes to the right
])
def test_clip_sizes_match_transformers(height, width):
    got = assert_clip_same_as_transformers(picture(height, width), **CLIP_TINY)
    assert got.shape == (1, 3, 28, 28)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "RGB", "CMYK", "I;16"])
def test_clip_modes_match_transformers(mode):
    assert_clip_same_as_transformers(picture(45, 70, mode), **CLIP_TINY)


@pytest.mark.parametrize("options", [
    dict(resample=2),
    dict(size=32, crop_size=24),                                         # ints: shortest edge, square crop
    dict(size={"height": 20, "width": 36}, crop_size={"height": 24, "width": 24}),   # squash, then pad-crop
    dict(do_center_crop=False, size={"height": 20, "width": 36}),
    dict(do_rescale=False, image_mean=[100.0, 110.0, 120.0], image_std=[50.0, 60.0, 70.0]),
    dict(do_resize=False, do_normalize=False),
])
def test_clip_options_match_transformers(options):
    assert_clip_same_as_transformers([picture(45, 100), picture(60, 20, seed=1)], **{**CLIP_TINY, **options})


@pytest.mark.parametrize("settings", [KOSMOS2, dict(size={"height": 224, "width": 224}), {}],
                         ids=["kosmos2-use_square_size", "kosmos2-square", "clip-defaults"])
def test_clip_hub_settings_match_transformers(settings):
    images = [picture(480, 640), picture(300, 200, "RGBA", seed=1), picture(224, 224, "L", seed=2)]
    got = assert_clip_same_as_transformers(images, **settings)
    assert got.shape == (3, 3, 224, 224)
    if settings:
        # Kosmos-2 keeps the whole picture: a 480x640 image is squashed to 224x224, not cropped to its middle.
        assert CLIPImageProcessor(**settings).size == {"height": 224, "width": 224}


def test_clip_use_square_size_squares_the_given_size():
    # Transformers 5.23 squares its class default (224) whatever size says; minivlm squares the given
    # shortest edge (the option's purpose, and Transformers 4.x's behaviour). Both agree at 224 (above).
    assert CLIPImageProcessor(size={"shortest_edge": 32}, use_square_size=True).size == {"height": 32, "width": 32}


def test_clip_from_pretrained_reads_transformers_config(tmp_path):
    CLIPImageProcessorPil(**KOSMOS2).save_pretrained(tmp_path)
    ours = CLIPImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 224, "width": 224} and ours.crop_size == {"height": 224, "width": 224}
    image = picture(150, 260)
    assert torch.equal(ours(image)["pixel_values"],
                       CLIPImageProcessorPil.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"])
    # A hub-style config with use_square_size (the key Transformers 5.x drops when it saves).
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_processor_type": "CLIPImageProcessor", "size": {"shortest_edge": 224}, "use_square_size": True,
         "crop_size": {"height": 224, "width": 224}, "resample": 3, "processor_class": "Kosmos2Processor"}))
    assert torch.equal(CLIPImageProcessor.from_pretrained(tmp_path)(image)["pixel_values"],
                       CLIPImageProcessorPil.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"])


def test_clip_defaults_are_transformers_defaults():
    theirs, ours = CLIPImageProcessorPil(), CLIPImageProcessor()
    assert ours.size == {"shortest_edge": theirs.size.shortest_edge}
    assert ours.crop_size == {"height": theirs.crop_size.height, "width": theirs.crop_size.width}
    for name in ("rescale_factor", "resample", "do_resize", "do_center_crop", "do_rescale", "do_normalize",
                 "do_convert_rgb"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert tuple(ours.image_mean) == tuple(theirs.image_mean) and tuple(ours.image_std) == tuple(theirs.image_std)


def test_clip_bad_input():
    with pytest.raises(ValueError, match='size must be an int or a dict with "shortest_edge"'):
        CLIPImageProcessor(size={"longest_edge": 32})
    with pytest.raises(ValueError, match='crop_size must be an int or a dict with "height" and "width"'):
        CLIPImageProcessor(crop_size={"height": 32})
    with pytest.raises(TypeError, match=r"images\[0\] must be a PIL.Image.Image, got ndarray"):
        CLIPImageProcessor()([np.zeros((10, 10, 3), dtype=np.uint8)])
    with pytest.raises(ValueError, match="come out in different shapes"):
        CLIPImageProcessor(do_center_crop=False, size=8)([picture(10, 20), picture(20, 10)])
