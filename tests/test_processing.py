"""LLaVA-NeXT image preprocessing (minivlm.processing) against Transformers' LlavaNextImageProcessorPil,
the image-token count against Transformers' LlavaNextProcessor, CLIP / Kosmos-2 preprocessing against
CLIPImageProcessorPil, IDEFICS's against IdeficsImageProcessorPil and IdeficsProcessor; every processor's
from_pretrained on the folders Transformers' processors save, and the refusal of images wider than 8 bits.

Tolerance: none. Both sides resize with the same PIL call on the same uint8 pixels (deterministic integer
output), pad and crop by integer indexing, then apply the same IEEE-754 operations in the same order
(x * rescale_factor in float64, rounded to float32; (x - mean) / std in float32, each step correctly
rounded). The results are therefore bit-identical, and any difference, even one pixel of a resize or
padding offset, is a real disagreement, so the tests compare with torch.equal.
"""
import json
import re

import numpy as np
import pytest
import torch
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (CLIPImageProcessorPil, LlavaNextImageProcessorPil, LlavaNextProcessor,
                          PreTrainedTokenizerFast)

from minivlm.models.llava_next import LlavaNextConfig
from minivlm.processing import CLIPImageProcessor, LlavaNextImageProcessor, image_feature_count

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


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "P", "RGB", "CMYK", "1"])
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
    # tall in real arithmetic, but 205 * (48 / 656) is 14.999...: truncating it would give
    # 14 rows; Transformers rounds to 7 decimals first and keeps 16 (1360 tokens, not 1262).
    assert int(205 * (48 / 656)) == 14
    config = LlavaNextConfig.from_dict({"vision_config": {"image_size": 336, "patch_size": 14},
                                        "vision_feature_select_strategy": "default"})
    expected = count_image_tokens(transformers_processor(HUB, patch_size=14), picture(height, width))
    assert image_feature_count((height, width), config) == expected
    if (height, width) == (205, 656):
        assert expected == 576 + 16 * (48 + 1)


@pytest.mark.parametrize("height, width", [(40, 40), (30, 90), (100, 20), (5, 7), (33, 50), (64, 32), (41, 131)])
def test_token_count_matches_transformers_tiny_config(height, width):
    config = LlavaNextConfig.from_dict({"vision_config": {"image_size": 32, "patch_size": 8},
                                        "image_grid_pinpoints": TINY["image_grid_pinpoints"]})
    expected = count_image_tokens(transformers_processor(TINY, patch_size=8), picture(height, width))
    assert image_feature_count((height, width), config) == expected


# ---- bad input -------------------------------------------------------------------------------------

def test_bad_images():
    processor = LlavaNextImageProcessor(**TINY)
    with pytest.raises(TypeError, match=r"images\[1\] must be a PIL.Image.Image, got ndarray"):
        processor([picture(10, 10), np.zeros((10, 10, 3), dtype=np.uint8)])
    with pytest.raises(TypeError, match="images must be a PIL image or a non-empty list of them, got 3"):
        processor(3)
    with pytest.raises(TypeError, match="images must be a PIL image or a non-empty list"):
        processor([])
    with pytest.raises(FileNotFoundError, match=r"images\[0\] is 'cat.png', which is not a file"):
        processor("cat.png")     # a path is opened; this one does not exist
    with pytest.raises(ValueError, match="do_convert_rgb is False, so images must be RGB, got mode 'RGBA'"):
        LlavaNextImageProcessor(**TINY, do_convert_rgb=False)(picture(10, 10, "RGBA"))
    with pytest.raises(ValueError, match=r"give \[5, 3\] crops each and do_pad is False"):
        LlavaNextImageProcessor(**TINY, do_pad=False)([picture(40, 40), picture(64, 32)])


@pytest.mark.parametrize("field, value, message", [
    ("image_grid_pinpoints", [[32, 64], [64]], "image_grid_pinpoints must be a non-empty list of"),
    ("image_grid_pinpoints", [], "image_grid_pinpoints must be a non-empty list of"),
    ("size", {"longest_edge": 32}, 'size must be an int or a dict with "shortest_edge"'),
    ("crop_size", {"height": 32}, 'crop_size must be an int or a dict with "height" and "width"'),
    ("image_mean", [0.5, 0.5], "image_mean must be 3 numbers"),
    ("image_std", [1.0, 0.0, 1.0], "image_std must be non-zero"),
    ("resample", 9, "resample must be a PIL resampling filter"),
])
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        LlavaNextImageProcessor(**{**TINY, field: value})


# ---- CLIP / Kosmos-2 (CLIPImageProcessor against Transformers' CLIPImageProcessorPil) ------------------

# microsoft/kosmos-2-patch14-224's settings: CLIP's processor, the image squashed to 224 x 224, crop 224.
KOSMOS2 = dict(size={"shortest_edge": 224}, use_square_size=True, crop_size={"height": 224, "width": 224})
CLIP_TINY = dict(size={"shortest_edge": 32}, crop_size={"height": 28, "width": 28})
# The PIL modes of 8 bits per channel (or fewer) that convert to RGB as they are; the wider ones (I;16, I, F,
# ...) are refused (test_wide_modes_are_refused below).
NARROW_MODES = ["RGBA", "LA", "L", "P", "RGB", "CMYK", "1", "PA", "YCbCr", "RGBX", "RGBa", "HSV", "LAB"]


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


@pytest.mark.parametrize("mode", NARROW_MODES)
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
    # Transformers squares its class default (224) whatever size says; minivlm squares the given
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


# ---- IDEFICS (IdeficsImageProcessor against IdeficsImageProcessorPil and IdeficsProcessor) ----------------
# The same bit-exactness argument as above: the same PIL resize, then the same float64 rescale and float32
# normalize; the batching and the image mask are integer bookkeeping. So torch.equal throughout.

from transformers import IdeficsImageProcessorPil, IdeficsProcessor  # noqa: E402
from transformers.models.idefics import processing_idefics  # noqa: E402

from minivlm.processing import IdeficsImageProcessor, idefics_image_attention_mask  # noqa: E402

# The ids of a tiny IDEFICS tokenizer: LLaMA's <s> = 1 and </s> = 2, the two extra tokens, two words, a pad.
IDEFICS_VOCAB = {"<unk>": 0, "<s>": 1, "</s>": 2, "<fake_token_around_image>": 3, "<image>": 4, "hello": 5,
                 "world": 6, "<pad>": 7}


def idefics_transformers_processor(padding_side="right", **image_processor_kwargs):
    """IdeficsProcessor with a word-level tokenizer that knows IDEFICS's special tokens."""
    tokenizer = Tokenizer(models.WordLevel(IDEFICS_VOCAB, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer.add_special_tokens(["<s>", "</s>", "<fake_token_around_image>", "<image>", "<pad>"])
    fast = PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>", bos_token="<s>", eos_token="</s>",
                                   pad_token="<pad>", padding_side=padding_side,
                                   additional_special_tokens=["<fake_token_around_image>", "<image>"])
    return IdeficsProcessor(image_processor=IdeficsImageProcessorPil(**image_processor_kwargs), tokenizer=fast)


def assert_idefics_same_as_transformers(images, **kwargs):
    """One sample holding `images`: Transformers' flat (N, 3, H, W) stack against ours (1, N, 3, H, W)."""
    expected = IdeficsImageProcessorPil(**kwargs)(images, return_tensors="pt")
    got = IdeficsImageProcessor(**kwargs)([images])["pixel_values"]
    assert got.dtype == torch.float32 and got.shape == (1,) + tuple(expected.shape)
    assert torch.equal(got[0], expected)
    return got


@pytest.mark.parametrize("height, width", [(40, 40), (30, 90), (100, 20), (5, 7), (16, 16), (33, 50)])
def test_idefics_sizes_match_transformers(height, width):
    # Up- and down-sizing, squashing wide and tall pictures, and a picture already at the target size.
    got = assert_idefics_same_as_transformers([picture(height, width)], image_size=16)
    assert got.shape == (1, 1, 3, 16, 16)


@pytest.mark.parametrize("mode", NARROW_MODES)
def test_idefics_modes_match_transformers(mode):
    assert_idefics_same_as_transformers([picture(45, 70, mode), picture(20, 10, mode, seed=1)], image_size=16)


@pytest.mark.parametrize("options", [
    dict(image_size=16, resample=2),                                                    # bilinear
    dict(size={"height": 20, "width": 36}),                                             # not square
    dict(size=24),                                                                      # an int: a square
    dict(image_size=16, do_rescale=False, image_mean=[100.0, 110.0, 120.0], image_std=[50.0, 60.0, 70.0]),
    dict(image_size=16, do_normalize=False),
])
def test_idefics_options_match_transformers(options):
    assert_idefics_same_as_transformers([picture(45, 100), picture(60, 20, seed=1)], **options)


def test_idefics_without_resize_matches_transformers():
    assert_idefics_same_as_transformers([picture(12, 18), picture(12, 18, "RGBA", seed=1)], do_resize=False)
    with pytest.raises(ValueError, match=r"come out in different shapes .* \(do_resize is False\)"):
        IdeficsImageProcessor(do_resize=False)([[picture(12, 18)], [picture(18, 12)]])


def test_idefics_hub_size_matches_transformers():
    # idefics-9b's preprocessor_config.json: image_size 224 and CLIP's mean and std (the defaults).
    assert_idefics_same_as_transformers([picture(480, 640), picture(300, 200, "RGBA", seed=1),
                                         picture(224, 224, "L", seed=2)], image_size=224)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_idefics_interleaved_batch_matches_transformers_processor(padding_side):
    # Four samples with 2, 0, 1 and 3 images; text before the first image, between images, after an end of
    # document (</s>) and after the last image. Transformers' processor pads the images of each sample to the
    # batch's largest count with all-zero images and builds the one-hot image_attention_mask from the ids.
    processor = idefics_transformers_processor(padding_side, image_size=16)
    a, b, c = picture(20, 30, seed=1), picture(10, 10, "RGBA", seed=2), picture(5, 40, "L", seed=3)
    d, e, f = picture(50, 25, seed=4), picture(16, 16, "P", seed=5), picture(70, 30, seed=6)
    prompts = [["hello", a, "world", b, "hello </s> world"],
               ["hello world"],
               [c, "hello"],
               ["world", d, e, "hello world </s> hello", f, "world"]]
    expected = processor(text=prompts, return_tensors="pt")
    got = IdeficsImageProcessor(image_size=16)([[a, b], [], [c], [d, e, f]])["pixel_values"]
    assert got.shape == expected["pixel_values"].shape == (4, 3, 3, 16, 16)
    assert torch.equal(got, expected["pixel_values"])
    assert (got[0, 2:] == 0).all() and (got[1] == 0).all() and (got[2, 1:] == 0).all()

    mask = idefics_image_attention_mask(expected["input_ids"], image_token_id=IDEFICS_VOCAB["<image>"],
                                        eos_token_id=IDEFICS_VOCAB["</s>"], num_images=got.shape[1])
    assert mask.dtype == expected["image_attention_mask"].dtype == torch.int64
    assert torch.equal(mask, expected["image_attention_mask"])
    # The test means something: some tokens see no image, and every image is seen by some token.
    assert (mask.sum(-1) == 0).any() and (mask.sum(-1) <= 1).all()
    assert mask[0, :, :2].any(0).all() and mask[3].any(0).all()


def test_idefics_batch_without_images_matches_transformers_processor():
    # Text only: Transformers still gives one all-zero image per sample and an all-zero (B, T, 1) mask.
    expected = idefics_transformers_processor(image_size=16)(text=[["hello world"], ["world"]], return_tensors="pt")
    got = IdeficsImageProcessor(image_size=16)([[], []])["pixel_values"]
    assert got.shape == expected["pixel_values"].shape == (2, 1, 3, 16, 16)
    assert torch.equal(got, expected["pixel_values"])
    mask = idefics_image_attention_mask(expected["input_ids"], image_token_id=4, eos_token_id=2, num_images=1)
    assert mask.shape == expected["image_attention_mask"].shape
    assert torch.equal(mask.bool(), expected["image_attention_mask"])


def test_idefics_image_attention_mask_by_hand():
    #          <s> hi  <f> <img> <f>  hi </s> hi  <f> <img> <f> <img>  hi
    ids = torch.tensor([[1, 5, 3, 4, 3, 5, 2, 5, 3, 4, 3, 4, 5]])
    seen = [-1, -1, -1, 0, 0, 0, 0, -1, -1, 1, 1, 2, 2]         # which image each token sees (-1: none)
    for num_images, eos in [(3, 2), (2, 2), (3, None)]:
        mask = idefics_image_attention_mask(ids, image_token_id=4, eos_token_id=eos, num_images=num_images)
        expected = torch.zeros(1, 13, num_images, dtype=torch.long)
        for t, j in enumerate(seen):
            if eos is None and t in (7, 8):
                j = 0                                           # without document ends, image 0 stays visible
            if 0 <= j < num_images:                             # the third image has no slot when num_images is 2
                expected[0, t, j] = 1
        assert torch.equal(mask, expected), (num_images, eos)


def test_idefics_image_attention_mask_matches_transformers_on_random_ids():
    # Transformers' own functions (a per-token Python loop) on random ids rich in <image> and </s>.
    class Ids:
        eos_token_id = 2

        @staticmethod
        def convert_tokens_to_ids(token):
            assert token == "<image>"
            return 4

    generator = torch.Generator().manual_seed(0)
    for num_images in (1, 2, 3, 5):
        ids = torch.randint(0, 8, (6, 40), generator=generator)
        counts, _ = processing_idefics.image_attention_mask_for_packed_input_ids(ids, Ids, "pt")
        expected = processing_idefics.incremental_to_binary_attention_mask(counts, "pt", num_classes=num_images)
        got = idefics_image_attention_mask(ids, image_token_id=4, eos_token_id=2, num_images=num_images)
        assert torch.equal(got, expected), num_images


def test_idefics_from_pretrained_reads_transformers_and_hub_configs(tmp_path):
    IdeficsImageProcessorPil(image_size=24, resample=2, image_mean=[0.5, 0.4, 0.3]).save_pretrained(tmp_path)
    ours = IdeficsImageProcessor.from_pretrained(tmp_path)
    assert ours.size == {"height": 24, "width": 24} and ours.image_size == 24 and ours.resample == 2
    images = [picture(50, 70), picture(30, 20, "RGBA", seed=1)]
    theirs = IdeficsImageProcessorPil.from_pretrained(tmp_path)
    assert torch.equal(ours([images])["pixel_values"][0], theirs(images, return_tensors="pt"))
    # The hub's file (idefics-9b): image_size only, which both read as a 24 x 24 square (here 20).
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(
        {"image_mean": [0.48145466, 0.4578275, 0.40821073], "image_num_channels": 3,
         "image_processor_type": "IdeficsImageProcessor", "image_size": 20,
         "image_std": [0.26862954, 0.26130258, 0.27577711]}))
    ours, theirs = IdeficsImageProcessor.from_pretrained(tmp_path), IdeficsImageProcessorPil.from_pretrained(tmp_path)
    assert ours.size == {"height": 20, "width": 20}
    assert torch.equal(ours([images])["pixel_values"][0], theirs(images, return_tensors="pt"))


def test_idefics_defaults_are_transformers_defaults():
    theirs, ours = IdeficsImageProcessorPil(), IdeficsImageProcessor()
    assert ours.size == {"height": theirs.size.height, "width": theirs.size.width} == {"height": 224, "width": 224}
    for name in ("image_size", "image_num_channels", "rescale_factor", "resample", "do_resize", "do_rescale",
                 "do_normalize", "do_convert_rgb"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert tuple(ours.image_mean) == tuple(theirs.image_mean) and tuple(ours.image_std) == tuple(theirs.image_std)
    # image_size overrides size, as in Transformers.
    assert IdeficsImageProcessor(image_size=32, size={"height": 8, "width": 8}).size == {"height": 32, "width": 32}
    assert IdeficsImageProcessorPil(image_size=32, size={"height": 8, "width": 8}).size.height == 32


def test_idefics_input_forms():
    processor = IdeficsImageProcessor(image_size=8)
    a, b = picture(10, 12), picture(12, 10, seed=1)
    nested = processor([[a], [b]])["pixel_values"]
    assert nested.shape == (2, 1, 3, 8, 8)
    assert torch.equal(processor([a, b])["pixel_values"], nested)        # a bare image is a one-image sample
    assert torch.equal(processor(a)["pixel_values"], nested[:1])         # one image alone: one sample


def test_idefics_bad_input():
    processor = IdeficsImageProcessor(image_size=8)
    with pytest.raises(TypeError, match="images must be a non-empty list with one entry per sample"):
        processor([])
    with pytest.raises(TypeError, match="images must be a non-empty list with one entry per sample"):
        processor("cat.png")
    with pytest.raises(TypeError, match=r"images\[1\] must be a list of PIL images or a PIL image, got int"):
        processor([[picture(10, 10)], 3])
    with pytest.raises(FileNotFoundError, match=r"images\[1\]\[0\] is 'cat.png', which is not a file"):
        processor([[picture(10, 10)], "cat.png"])     # a path is opened; this one does not exist
    with pytest.raises(TypeError, match=r"images\[0\]\[1\] must be a PIL.Image.Image, got ndarray"):
        processor([[picture(10, 10), np.zeros((10, 10, 3), dtype=np.uint8)]])
    with pytest.raises(ValueError, match="do_convert_rgb is False, so images must be RGB, got mode 'L'"):
        IdeficsImageProcessor(do_convert_rgb=False)([[picture(10, 10, "L")]])
    with pytest.raises(ValueError, match="image_size must be a positive int, got 0"):
        IdeficsImageProcessor(image_size=0)
    with pytest.raises(ValueError, match='size must be an int or a dict with "height" and "width"'):
        IdeficsImageProcessor(size={"shortest_edge": 224})
    with pytest.raises(ValueError, match="image_num_channels must be 3"):
        IdeficsImageProcessor(image_num_channels=1)
    with pytest.raises(TypeError, match=r"input_ids must be a \(B, T\) tensor, got \(5,\)"):
        idefics_image_attention_mask(torch.zeros(5, dtype=torch.long), image_token_id=4, eos_token_id=2,
                                     num_images=1)
    with pytest.raises(ValueError, match="num_images must be a positive int, got 0"):
        idefics_image_attention_mask(torch.zeros(1, 5, dtype=torch.long), image_token_id=4, eos_token_id=2,
                                     num_images=0)


# ---- reading saved folders: preprocessor_config.json and processor_config.json ----------------------------
# Transformers' processor save_pretrained writes the image settings into processor_config.json (under
# "image_processor") and no preprocessor_config.json; the hub's folders and an image processor's own save
# have preprocessor_config.json. Each case: minivlm's class and a Transformers processor with non-default
# image settings (resample=2 everywhere: bilinear, where every default is bicubic).

from transformers import (AltCLIPProcessor, AutoProcessor, Blip2Processor, BlipImageProcessorPil,  # noqa: E402
                          Kosmos2Processor)

from minivlm.processing import BlipImageProcessor  # noqa: E402


def word_tokenizer():
    """A word-level tokenizer over IDEFICS_VOCAB: enough for any of the processors to save and load."""
    return idefics_transformers_processor().tokenizer


SAVED_PROCESSORS = {
    "llava_next": (LlavaNextImageProcessor, lambda: transformers_processor(
        dict(TINY, resample=2, image_mean=[0.5, 0.4, 0.3]), patch_size=8)),
    "blip2": (BlipImageProcessor, lambda: Blip2Processor(
        image_processor=BlipImageProcessorPil(size={"height": 20, "width": 24}, resample=2),
        tokenizer=word_tokenizer(), num_query_tokens=4)),
    "kosmos2": (CLIPImageProcessor, lambda: Kosmos2Processor(
        image_processor=CLIPImageProcessorPil(**KOSMOS2, resample=2), tokenizer=word_tokenizer())),
    "altclip": (CLIPImageProcessor, lambda: AltCLIPProcessor(
        image_processor=CLIPImageProcessorPil(**CLIP_TINY, resample=2), tokenizer=word_tokenizer())),
    "idefics": (IdeficsImageProcessor, lambda: idefics_transformers_processor(image_size=24, resample=2)),
}


def assert_same_pixels(ours, theirs):
    """minivlm's processor and Transformers' image processor give the same pixel_values for two pictures."""
    images = [picture(50, 70), picture(30, 20, "RGBA", seed=1)]
    if isinstance(ours, IdeficsImageProcessor):
        got, expected = ours([images])["pixel_values"][0], theirs(images, return_tensors="pt")
    else:
        got, expected = ours(images)["pixel_values"], theirs(images, return_tensors="pt")["pixel_values"]
    assert got.shape == expected.shape and torch.equal(got, expected)


@pytest.mark.parametrize("family", SAVED_PROCESSORS)
def test_from_pretrained_reads_transformers_processor_folders(family, tmp_path):
    ours_class, transformers_processor_with = SAVED_PROCESSORS[family]
    transformers_processor_with().save_pretrained(tmp_path)
    assert (tmp_path / "processor_config.json").is_file() and not (tmp_path / "preprocessor_config.json").exists()
    ours = ours_class.from_pretrained(tmp_path)
    assert ours.resample == 2
    assert_same_pixels(ours, AutoProcessor.from_pretrained(tmp_path, backend="pil").image_processor)


@pytest.mark.parametrize("family", SAVED_PROCESSORS)
def test_from_pretrained_prefers_processor_config_as_transformers_does(family, tmp_path):
    ours_class, transformers_processor_with = SAVED_PROCESSORS[family]
    transformers_processor_with().save_pretrained(tmp_path)
    processor_file, image_file = tmp_path / "processor_config.json", tmp_path / "preprocessor_config.json"
    saved = json.loads(processor_file.read_text())

    # Both files, disagreeing: processor_config.json's settings win, whole (resample, absent there, is the
    # class default 3, not preprocessor_config.json's 0); Transformers reads the same.
    image_file.write_text(json.dumps(dict(saved["image_processor"], resample=0, do_normalize=False)))
    del saved["image_processor"]["resample"]
    processor_file.write_text(json.dumps(saved))
    ours = ours_class.from_pretrained(tmp_path)
    assert ours.resample == 3 and ours.do_normalize
    assert_same_pixels(ours, AutoProcessor.from_pretrained(tmp_path, backend="pil").image_processor)

    # A processor_config.json without image settings (older Transformers): preprocessor_config.json's are read.
    del saved["image_processor"]
    processor_file.write_text(json.dumps(saved))
    ours = ours_class.from_pretrained(tmp_path)
    assert ours.resample == 0 and not ours.do_normalize
    assert_same_pixels(ours, AutoProcessor.from_pretrained(tmp_path, backend="pil").image_processor)


@pytest.mark.parametrize("ours_class", [LlavaNextImageProcessor, BlipImageProcessor, CLIPImageProcessor,
                                        IdeficsImageProcessor])
def test_from_pretrained_without_settings(ours_class, tmp_path):
    def message(folder):
        return re.escape(f"{ours_class.__name__}.from_pretrained: no image settings in '{folder}': expected "
                         f'preprocessor_config.json, or processor_config.json with an "image_processor" object')

    with pytest.raises(FileNotFoundError, match=message(tmp_path)):
        ours_class.from_pretrained(tmp_path)                                  # an empty folder
    with pytest.raises(FileNotFoundError, match=message(tmp_path / "nowhere")):
        ours_class.from_pretrained(tmp_path / "nowhere")                      # no folder at all
    (tmp_path / "processor_config.json").write_text(json.dumps({"processor_class": "LlavaNextProcessor"}))
    with pytest.raises(FileNotFoundError, match=message(tmp_path)):
        ours_class.from_pretrained(tmp_path)                                  # processor settings only
    (tmp_path / "processor_config.json").write_text(json.dumps({"image_processor": [224]}))
    with pytest.raises(ValueError, match=r'"image_processor" in .*processor_config.json is a list, expected a JSON'):
        ours_class.from_pretrained(tmp_path)
    (tmp_path / "processor_config.json").write_text("[]")
    with pytest.raises(ValueError, match=r"processor_config.json holds a list, expected a JSON object"):
        ours_class.from_pretrained(tmp_path)


# ---- images of more than 8 bits per channel --------------------------------------------------------------

WIDE_MODES = ["I;16", "I;16L", "I;16B", "I;16N", "I", "F"]
# Each processor with a batch whose second image is `wide`, and where the error points.
REFUSING = {
    "llava_next": (LlavaNextImageProcessor(**TINY), lambda ok, wide: [ok, wide], "images[1]"),
    "blip2": (BlipImageProcessor(size=16), lambda ok, wide: [ok, wide], "images[1]"),
    "clip": (CLIPImageProcessor(**CLIP_TINY), lambda ok, wide: [ok, wide], "images[1]"),
    "idefics": (IdeficsImageProcessor(image_size=16), lambda ok, wide: [[ok], [ok, wide]], "images[1][1]"),
}


def wide_picture(mode, height=20, width=30):
    """A grey picture in `mode` (16-bit values v * 257, 32-bit ints likewise, floats v / 255) and the 8-bit
    mode L picture of the same v."""
    v = np.random.default_rng(0).integers(0, 256, (height, width), dtype=np.uint8)
    if mode == "F":
        image = Image.fromarray((v / 255).astype(np.float32))
    elif mode == "I":
        image = Image.fromarray(v.astype(np.int32) * 257)
    else:
        order = {"I;16B": ">", "I;16N": "="}.get(mode, "<")
        image = Image.frombytes(mode, (width, height), (v.astype(np.uint16) * 257).astype(order + "u2").tobytes())
    assert image.mode == mode
    return image, Image.fromarray(v)


@pytest.mark.parametrize("mode", WIDE_MODES)
@pytest.mark.parametrize("family", REFUSING)
def test_wide_modes_are_refused(family, mode):
    processor, batch, where = REFUSING[family]
    with pytest.raises(ValueError) as error:
        processor(batch(picture(20, 30), wide_picture(mode)[0]))
    message = str(error.value)
    assert message.startswith(f"{type(processor).__name__}: {where} has PIL mode {mode!r} (")
    assert "expected 8 bits per channel" in message and "\n" not in message


@pytest.mark.parametrize("mode", WIDE_MODES)
def test_wide_mode_hint_converts(mode):
    image, eight_bit = wide_picture(mode)
    # Why they are refused: PIL's RGB conversion clips (16-bit values to almost white, floats to black).
    clipped = np.asarray(image.convert("RGB"))[..., 0]
    assert (clipped <= 1).all() if mode == "F" else (clipped == 255).mean() > 0.99
    # The error's own hint turns the picture into its 8-bit version, which every processor then reads.
    processor = CLIPImageProcessor(**CLIP_TINY)
    with pytest.raises(ValueError) as error:
        processor(image)
    message = str(error.value)
    fixed = eval(message[message.index("Image.fromarray("):], {"np": np, "Image": Image, "image": image})
    assert fixed.mode == "L" and np.array_equal(np.asarray(fixed), np.asarray(eight_bit))
    assert torch.equal(processor(fixed)["pixel_values"], processor(eight_bit)["pixel_values"])
