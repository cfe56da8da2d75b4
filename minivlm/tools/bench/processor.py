"""`minivlm bench processor NAME`: one processor call, minivlm's against Transformers' PIL processor, on the
same folder and the same inputs, side by side in one process.

The case is what a user does first: one photo of 1024x768 and a one-line prompt (with the model's image
placeholder where it has one), returning PyTorch tensors. The folder is written by Transformers' processor
with the hub checkpoint's image settings (LLaVA-NeXT: 336 px crops on llava-v1.6's grid; BLIP-2, Kosmos-2,
IDEFICS and AltCLIP: 224 px) and a small tokenizer trained on the spot (minivlm.tools.tiny_tokenizers): the
image work, which is most of the time, is the real one. The photo is smooth (gradients and discs), as a
photo is, so resampling does the same work a real picture asks of it. Both outputs are checked equal
before anything is timed.

Target: minivlm's time at most 1.0x Transformers' (the median of the per-repetition ratios).
"""
from __future__ import annotations

import json
import statistics
import tempfile
from typing import Optional

import torch

from .. import tiny_tokenizers
from .kernels import environment, fmt_timing, paired_ratios, print_table, time_side_by_side

TARGET = 1.0
PROCESSORS = ("llava_next", "blip2", "kosmos2", "idefics", "altclip")
PHOTO = (1024, 768)            # (width, height)
LLAVA_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def photo(width: int = PHOTO[0], height: int = PHOTO[1]):
    """A smooth RGB picture: two gradients and a few discs."""
    import numpy as np
    from PIL import Image, ImageDraw

    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([255 * x / width, 255 * y / height, 128 + 127 * np.sin(x / 50.0) * np.cos(y / 70.0)], -1)
    image = Image.fromarray(pixels.astype(np.uint8))
    draw = ImageDraw.Draw(image)
    for i in range(5):
        r = 40 + 30 * i
        draw.ellipse((100 + 150 * i, 120 + 80 * i, 100 + 150 * i + r, 120 + 80 * i + r), fill=(200, 40 * i, 90))
    return image


def build(name: str, folder: str):
    """Write the processor folder with Transformers' processor; returns (minivlm processor, Transformers
    processor, call keyword arguments for both)."""
    import transformers

    from ... import processing

    if name == "llava_next":
        tok = tiny_tokenizers.llama(f"{folder}/tok")
        tok.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
        images = transformers.LlavaNextImageProcessorPil(
            size={"shortest_edge": 336}, crop_size={"height": 336, "width": 336}, image_grid_pinpoints=LLAVA_PINPOINTS)
        transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok, patch_size=14,
                                        vision_feature_select_strategy="default",
                                        num_additional_image_tokens=1).save_pretrained(folder)
        ours, theirs = processing.LlavaNextProcessor, transformers.LlavaNextProcessor
        kwargs = dict(text="[INST] <image>\nWhat is shown in this image? [/INST]", images=photo())
    elif name == "blip2":
        tok = tiny_tokenizers.opt(f"{folder}/tok")
        images = transformers.BlipImageProcessorPil(size={"height": 224, "width": 224})
        transformers.Blip2Processor(image_processor=images, tokenizer=tok, num_query_tokens=32).save_pretrained(folder)
        ours, theirs = processing.Blip2Processor, transformers.Blip2Processor
        kwargs = dict(text="Question: what is shown in this image? Answer:", images=photo())
    elif name == "altclip":
        tok = tiny_tokenizers.xlm_roberta(f"{folder}/tok")
        images = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224})
        transformers.AltCLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
        ours, theirs = processing.AltCLIPProcessor, transformers.AltCLIPProcessor
        kwargs = dict(text=["a photo of a cat", "a photo of a dog"], images=photo(), padding=True)
    elif name == "kosmos2":
        tok = tiny_tokenizers.xlm_roberta(f"{folder}/tok")
        images = transformers.CLIPImageProcessorPil(size={"shortest_edge": 224}, crop_size={"height": 224, "width": 224},
                                                    use_square_size=True)
        transformers.Kosmos2Processor(image_processor=images, tokenizer=tok).save_pretrained(folder)
        ours, theirs = processing.Kosmos2Processor, transformers.Kosmos2Processor
        kwargs = dict(text="<grounding>An image of", images=photo())
    elif name == "idefics":
        tok = tiny_tokenizers.llama(f"{folder}/tok")
        tok.add_tokens([transformers.AddedToken(t, special=True, normalized=False)
                        for t in ("<fake_token_around_image>", "<image>", "<end_of_utterance>")], special_tokens=True)
        images = transformers.IdeficsImageProcessorPil(image_size=224)
        transformers.IdeficsProcessor(image_processor=images, tokenizer=tok).save_pretrained(folder)
        ours, theirs = processing.IdeficsProcessor, transformers.IdeficsProcessor
        kwargs = dict(text=[["User:", photo(), "What is shown in this image?<end_of_utterance>\nAssistant:"]])
    else:
        raise ValueError(f"minivlm bench processor: NAME must be one of {', '.join(PROCESSORS)}, got {name!r}")
    return ours.from_pretrained(folder), theirs.from_pretrained(folder, backend="pil"), kwargs


def _check_equal(ours: dict, theirs) -> None:
    for key in theirs.keys():
        a, b = ours[key], theirs[key]
        if not (a.shape == b.shape and torch.equal(a, b.to(a.dtype))):
            raise AssertionError(f"minivlm bench processor: {key} differs from Transformers'; not timing")


def run(name: str, json_path: Optional[str] = None, quick: bool = False, threads: Optional[int] = None,
        reps: Optional[int] = None) -> int:
    """Print the table; returns 0 when the target holds, 1 otherwise."""
    if threads is not None:
        torch.set_num_threads(threads)
    reps = reps or (3 if quick else 15)
    with tempfile.TemporaryDirectory() as folder:
        ours, theirs, kwargs = build(name, folder)
        fns = {"minivlm": lambda: ours(**kwargs, return_tensors="pt"),
               "transformers": lambda: theirs(**kwargs, return_tensors="pt")}
        _check_equal(fns["minivlm"](), fns["transformers"]())
        timings = time_side_by_side(fns, reps=reps, warmup=1 if quick else 2, min_sample_s=0.02)
    ratio = statistics.median(paired_ratios(timings["minivlm"], timings["transformers"]))
    ok = ratio <= TARGET
    print(f"minivlm bench processor {name}: one {PHOTO[0]}x{PHOTO[1]} photo and a one-line prompt, "
          f"{reps} repetitions, times in ms (median [min-max])")
    print_table([("minivlm", "Transformers (PIL)", "ratio", f"target <= {TARGET}"),
                 (fmt_timing(timings["minivlm"]), fmt_timing(timings["transformers"]), f"{ratio:.2f}x",
                  "ok" if ok else "MISSED")], [24, 24, 8])
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"name": name, "environment": environment(), "photo": PHOTO, "reps": reps,
                       "minivlm_ms": timings["minivlm"].samples, "transformers_ms": timings["transformers"].samples,
                       "ratio": ratio, "target": TARGET, "ok": ok}, f, indent=2)
    return 0 if ok else 1
