"""The tiny VLM's data: pictures of coloured shapes, their captions and questions, drawn on the fly.

Nothing is downloaded: every example comes from a seed (numpy + PIL only, no torch).

    ex = make_example(7)
    ex.image                # a PIL picture: one to three shapes on a light background
    ex.caption              # "a red circle in the top left and a blue square in the bottom right"
    ex.questions            # [Question("colour", "what colour is the circle?", "red"), ...]
    for seed in split_seeds("train", 1000): ...
    build_tokenizer("tiny-tokenizer")     # tokenizer.json + tokenizer_config.json for every word used here

A picture. One to three solid shapes (circle, square, triangle) in six colours, at most one per quadrant
(top left, top right, bottom left, bottom right), each 25-45% of the picture's shorter side, with mild
jitter of place, size and shade, a little pixel noise, on a near-white background. Shapes are drawn at 4x
and shrunk with a BOX filter (each pixel the average of 4x4 samples), so edges are anti-aliased as a paint
program draws them. Most pictures are square; a quarter have an aspect ratio between 3:4 and 4:3 (about
1.1 or more, so clearly not square); each side is 24 to 128 pixels.

The text. Everything is lowercase (the tokenizer lowercases what it reads too). The caption names the
shapes in the fixed quadrant order. Questions are asked only where the answer is unique; each has a kind
("colour", "shape", "count", "exists") so accuracy can be reported per type; every example has one "yes"
and one "no" existence question.

The prompt format the tiny VLM is trained with (`prompt`): one user turn holding the image, then the answer.

    <s> user: <image> what colour is the circle? assistant: red </s>
    <s> user: <image> what is in the picture? assistant: a red circle in the top left </s>

The tokenizer adds "<s>" in front (add_special_tokens=True); the trainer appends "</s>" after the answer.
"<image>" is a special token (id 4), which the model replaces with the picture's features.

Splits by seed: train from 0, validation from 10**8, held-out from 2 * 10**8, so no picture is in two splits.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

import numpy as np
from PIL import Image, ImageDraw

# --------------------------------------------------------------------------------------------------
# What a picture can hold
# --------------------------------------------------------------------------------------------------

KINDS = ("circle", "square", "triangle")

#: Each colour's base shade (sRGB). A shape's shade is jittered mildly around it.
COLOURS = {
    "red": (220, 30, 30),
    "green": (40, 170, 60),
    "blue": (40, 80, 220),
    "yellow": (240, 215, 40),
    "purple": (130, 50, 170),
    "orange": (245, 140, 20),
}

#: The four places, in the fixed order captions list them.
QUADRANTS = ("top left", "top right", "bottom left", "bottom right")

COUNT_WORDS = ("one", "two", "three")

SHAPE_FRACTION = (0.25, 0.45)    # a shape's side, as a fraction of the picture's shorter side
SIDE_RANGE = (24, 128)           # the sides of a drawn picture, in pixels
SQUARE_PROBABILITY = 0.75        # the share of square pictures
ASPECT_RANGE = (3 / 4, 4 / 3)    # width / height of the other pictures
SUPERSAMPLE = 4                  # shapes are drawn at 4x, then shrunk (anti-aliasing)
SHADE_JITTER = 12                # a shape's shade: base +- this per channel, times a brightness factor
BRIGHTNESS_RANGE = (0.92, 1.05)
BACKGROUND_RANGE = (215, 250)    # the background's grey level; each channel then tinted +- 5
NOISE_STD = 2.0                  # pixel noise (standard deviation, in 0-255 levels)

#: Where each split's seeds start; a split holds at most SPLIT_SIZE seeds.
SPLIT_OFFSETS = {"train": 0, "validation": 10 ** 8, "heldout": 2 * 10 ** 8}
SPLIT_SIZE = 10 ** 8

# --------------------------------------------------------------------------------------------------
# The text: prompt, captions and question templates (the tokenizer's vocabulary comes from these)
# --------------------------------------------------------------------------------------------------

USER, ASSISTANT, IMAGE = "user:", "assistant:", "<image>"
PAD, BOS, EOS, UNK = "<pad>", "<s>", "</s>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK, IMAGE)    # ids 0, 1, 2, 3, 4

#: The question that asks for the caption.
CAPTION_QUESTION = "what is in the picture?"

# Question templates; {kind}, {colour} and {place} are filled from KINDS, COLOURS and QUADRANTS.
COLOUR_BY_KIND = "what colour is the {kind}?"
COLOUR_BY_PLACE = "what colour is the shape in the {place}?"
SHAPE_BY_PLACE = "what shape is in the {place}?"
SHAPE_BY_COLOUR = "what shape is {colour}?"
COUNT = "how many shapes are there?"
EXISTS = "is there {a} {colour} {kind}?"
CAPTION_PART = "{a} {colour} {kind} in the {place}"
TEMPLATES = (CAPTION_QUESTION, COLOUR_BY_KIND, COLOUR_BY_PLACE, SHAPE_BY_PLACE, SHAPE_BY_COLOUR, COUNT,
             EXISTS, CAPTION_PART, "{part}, {part} and {part}")

ANSWER_WORDS = ("yes", "no") + COUNT_WORDS
ARTICLES = ("a", "an")


def article(colour: str) -> str:
    """"an" before a colour that starts with a vowel ("an orange circle"), else "a"."""
    return "an" if colour[0] in "aeiou" else "a"


# --------------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------------

@dataclass
class Shape:
    """One shape: its kind ("circle"), colour name ("red"), quadrant ("top left"), and bounding box
    (x0, y0, x1, y1) in pixels of the picture (x1 - x0 == y1 - y0, multiples of 1/4). `rgb` is the
    jittered shade it was painted with."""
    kind: str
    colour: str
    quadrant: str
    box: tuple
    rgb: tuple = (0, 0, 0)


@dataclass
class Scene:
    """What a picture shows: its size (width, height), background RGB, and shapes in quadrant order."""
    size: tuple
    background: tuple
    shapes: list = field(default_factory=list)


@dataclass
class Question:
    """A question about a picture with its one-word answer; kind is "colour", "shape", "count" or "exists"."""
    kind: str
    question: str
    answer: str


@dataclass
class Example:
    """One example: the picture, the scene it shows, its caption and its questions."""
    image: Image.Image
    scene: Scene
    caption: str
    questions: list


def make_example(seed: int, n_shapes: Optional[int] = None,
                 size: Union[int, tuple, None] = None) -> Example:
    """The example of one seed: the same seed always gives the same pixels and text.

    n_shapes: 1, 2 or 3 (None: drawn uniformly). size: an int (a square picture), a (width, height) pair,
    or None (drawn: mostly square, sides 24-128 px, a quarter 3:4 to 4:3)."""
    if n_shapes is not None and n_shapes not in (1, 2, 3):
        raise ValueError(f"make_example: n_shapes must be 1, 2, 3 or None, got {n_shapes!r}")
    rng = np.random.default_rng(seed)
    scene = draw_scene(rng, n_shapes, size)
    image = render(scene, rng)
    return Example(image=image, scene=scene, caption=caption(scene), questions=questions(scene, rng))


def split_seeds(split: str, n: int) -> range:
    """The first n seeds of a split ("train", "validation" or "heldout"); the splits never overlap."""
    if split not in SPLIT_OFFSETS:
        raise ValueError(f"split_seeds: split must be one of {sorted(SPLIT_OFFSETS)}, got {split!r}")
    if not 0 <= n <= SPLIT_SIZE:
        raise ValueError(f"split_seeds: n must be between 0 and {SPLIT_SIZE}, got {n!r}")
    start = SPLIT_OFFSETS[split]
    return range(start, start + n)


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def draw_scene(rng: np.random.Generator, n_shapes: Optional[int] = None,
               size: Union[int, tuple, None] = None) -> Scene:
    """Choose the picture's size, background and shapes (nothing is painted yet)."""
    width, height = _picture_size(rng, size)
    grey = rng.uniform(*BACKGROUND_RANGE)
    background = tuple(int(round(grey + t)) for t in rng.uniform(-5, 5, size=3))

    n = int(rng.integers(1, 4)) if n_shapes is None else n_shapes
    places = sorted(rng.choice(4, size=n, replace=False))       # quadrant indices, in caption order
    shapes = []
    for q in places:
        kind = KINDS[rng.integers(len(KINDS))]
        colour = list(COLOURS)[rng.integers(len(COLOURS))]
        shapes.append(Shape(kind, colour, QUADRANTS[q], _place(rng, q, width, height), _shade(rng, colour)))
    return Scene(size=(width, height), background=background, shapes=shapes)


def _picture_size(rng: np.random.Generator, size) -> tuple:
    """(width, height): the given size, or a drawn one."""
    if size is not None:
        width, height = (size, size) if isinstance(size, int) else size
        if min(width, height) < 16:
            raise ValueError(f"make_example: pictures need at least 16 pixels a side, got {size!r}")
        return int(width), int(height)
    if rng.random() < SQUARE_PROBABILITY:
        side = int(rng.integers(SIDE_RANGE[0], SIDE_RANGE[1] + 1))
        return side, side
    # not square: the long side, then the short one (rounded up, so the ratio stays within 4:3)
    long_side = int(rng.integers(int(np.ceil(SIDE_RANGE[0] * ASPECT_RANGE[1])), SIDE_RANGE[1] + 1))
    ratio = rng.uniform(1.1, ASPECT_RANGE[1])       # long side / short side: clearly not square
    short_side = int(np.ceil(long_side / ratio))
    return (long_side, short_side) if rng.random() < 0.5 else (short_side, long_side)


def _place(rng: np.random.Generator, quadrant: int, width: int, height: int) -> tuple:
    """A shape's box inside its quadrant, in picture pixels. Worked out on the 4x canvas in whole
    samples, so the box is exactly what is drawn there."""
    s = SUPERSAMPLE
    short = s * min(width, height)
    side = int(rng.integers(int(np.ceil(SHAPE_FRACTION[0] * short)), int(SHAPE_FRACTION[1] * short) + 1))
    mid_x, mid_y = s * width // 2, s * height // 2         # where the quadrants meet, on the 4x canvas
    right_half, lower_half = quadrant % 2 == 1, quadrant >= 2
    left, right = (mid_x, s * width) if right_half else (0, mid_x)
    top, bottom = (mid_y, s * height) if lower_half else (0, mid_y)
    x0 = left + int(rng.integers(0, right - left - side + 1))
    y0 = top + int(rng.integers(0, bottom - top - side + 1))
    return (x0 / s, y0 / s, (x0 + side) / s, (y0 + side) / s)


def _shade(rng: np.random.Generator, colour: str) -> tuple:
    """A mild variation of a colour's base shade: brighter or darker a little, each channel nudged."""
    base = np.array(COLOURS[colour], dtype=float)
    shade = base * rng.uniform(*BRIGHTNESS_RANGE) + rng.uniform(-SHADE_JITTER, SHADE_JITTER, size=3)
    return tuple(int(v) for v in np.clip(np.round(shade), 0, 255))


def render(scene: Scene, rng: np.random.Generator) -> Image.Image:
    """Paint a scene: shapes at 4x, shrink with a BOX filter (anti-aliased edges), add pixel noise."""
    s = SUPERSAMPLE
    width, height = scene.size
    canvas = Image.new("RGB", (s * width, s * height), scene.background)
    draw = ImageDraw.Draw(canvas)
    for shape in scene.shapes:
        # the box on the 4x canvas; PIL's boxes include their last sample, hence the - 1
        x0, y0, x1, y1 = (int(round(v * s)) for v in shape.box)
        if shape.kind == "circle":
            draw.ellipse([x0, y0, x1 - 1, y1 - 1], fill=shape.rgb)
        elif shape.kind == "square":
            draw.rectangle([x0, y0, x1 - 1, y1 - 1], fill=shape.rgb)
        else:   # a triangle pointing up: base along the bottom, apex at the top middle
            draw.polygon([(x0, y1 - 1), (x1 - 1, y1 - 1), ((x0 + x1 - 1) / 2, y0)], fill=shape.rgb)
    image = canvas.resize((width, height), Image.Resampling.BOX)
    pixels = np.asarray(image, dtype=float) + rng.normal(0.0, NOISE_STD, size=(height, width, 3))
    return Image.fromarray(np.clip(np.round(pixels), 0, 255).astype(np.uint8))


# --------------------------------------------------------------------------------------------------
# Captions and questions
# --------------------------------------------------------------------------------------------------

def caption(scene: Scene) -> str:
    """"a red circle in the top left, a green triangle in the top right and an orange square in the
    bottom right": the shapes in quadrant order."""
    parts = [CAPTION_PART.format(a=article(s.colour), colour=s.colour, kind=s.kind, place=s.quadrant)
             for s in _in_order(scene)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]


def questions(scene: Scene, rng: np.random.Generator) -> list:
    """The questions about a scene whose answers are unique: per shape one about its colour and one
    about its kind, one count, and two existence questions (one "yes", one "no")."""
    shapes = _in_order(scene)
    kinds = [s.kind for s in shapes]
    colours = [s.colour for s in shapes]
    asked = []
    for s in shapes:   # its colour: by kind where that kind is unique (half the time), else by place
        if kinds.count(s.kind) == 1 and rng.random() < 0.5:
            asked.append(Question("colour", COLOUR_BY_KIND.format(kind=s.kind), s.colour))
        else:
            asked.append(Question("colour", COLOUR_BY_PLACE.format(place=s.quadrant), s.colour))
    for s in shapes:   # its kind: by colour where that colour is unique (half the time), else by place
        if colours.count(s.colour) == 1 and rng.random() < 0.5:
            asked.append(Question("shape", SHAPE_BY_COLOUR.format(colour=s.colour), s.kind))
        else:
            asked.append(Question("shape", SHAPE_BY_PLACE.format(place=s.quadrant), s.kind))
    asked.append(Question("count", COUNT, COUNT_WORDS[len(shapes) - 1]))

    present = [(s.colour, s.kind) for s in shapes]
    absent = [(c, k) for c in COLOURS for k in KINDS if (c, k) not in present]
    colour, kind = present[rng.integers(len(present))]
    asked.append(Question("exists", EXISTS.format(a=article(colour), colour=colour, kind=kind), "yes"))
    colour, kind = absent[rng.integers(len(absent))]
    asked.append(Question("exists", EXISTS.format(a=article(colour), colour=colour, kind=kind), "no"))
    return asked


def prompt(question: str) -> str:
    """The text the model reads before its answer: "user: <image> {question} assistant:"."""
    return f"{USER} {IMAGE} {question} {ASSISTANT}"


def _in_order(scene: Scene) -> list:
    return sorted(scene.shapes, key=lambda s: QUADRANTS.index(s.quadrant))


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------

MODEL_MAX_LENGTH = 128


def vocabulary() -> list:
    """Every token the text can use, in id order: the special tokens (ids 0-4), the prompt's words, then
    the words of the templates, the colours, kinds, places and answers. Enumerated from the constants
    above, not learned from samples."""
    words = [USER, ASSISTANT, "?", ","]
    for template in TEMPLATES:
        for word in template.replace("?", " ").replace(",", " ").split():
            if not word.startswith("{"):
                words.append(word)
    words += list(ARTICLES) + list(COLOURS) + list(KINDS) + " ".join(QUADRANTS).split() + list(ANSWER_WORDS)
    return list(SPECIAL_TOKENS) + [w for w in dict.fromkeys(words) if w not in SPECIAL_TOKENS]


def make_tokenizer():
    """The word-level tokenizer (a tokenizers.Tokenizer): lowercase, split on whitespace and split off
    "?" and ",", one id per word, "<s>" put in front; decoding joins the words with spaces and puts "?"
    and "," back against the word before, so decode(encode(text)) == text."""
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors

    vocab = {word: i for i, word in enumerate(vocabulary())}
    tokenizer = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.WhitespaceSplit(),
        pre_tokenizers.Split(Regex(r"[?,]"), behavior="isolated"),
    ])
    # WordPiece's decoder joins tokens with spaces, and its cleanup turns " ?" into "?" and " ," into ","
    tokenizer.decoder = decoders.WordPiece(prefix="##", cleanup=True)
    tokenizer.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A $B", special_tokens=[(BOS, vocab[BOS])])
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS])
    return tokenizer


def build_tokenizer(folder) -> Path:
    """Write tokenizer.json and tokenizer_config.json into folder (made where missing), loadable by
    minivlm.processing.Tokenizer.from_pretrained and transformers.AutoTokenizer.from_pretrained alike.
    Returns the folder."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    make_tokenizer().save(str(folder / "tokenizer.json"))
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",   # the generic class: tokenizer.json as it is
        "bos_token": BOS, "eos_token": EOS, "pad_token": PAD, "unk_token": UNK,
        "extra_special_tokens": {"image_token": IMAGE},  # tok.image_token, tok.image_token_id
        "model_max_length": MODEL_MAX_LENGTH,
        "padding_side": "right",
        "clean_up_tokenization_spaces": False,
    }
    with open(folder / "tokenizer_config.json", "w", encoding="utf-8") as f:
        json.dump(config, f, indent=2)
        f.write("\n")
    return folder


__all__ = ["KINDS", "COLOURS", "QUADRANTS", "COUNT_WORDS", "SPLIT_OFFSETS", "CAPTION_QUESTION", "SPECIAL_TOKENS",
           "Shape", "Scene", "Question", "Example", "make_example", "split_seeds", "draw_scene", "render",
           "caption", "questions", "prompt", "article", "vocabulary", "make_tokenizer", "build_tokenizer"]
