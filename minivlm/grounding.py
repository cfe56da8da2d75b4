"""Kosmos-2 grounding: from generated text with location tokens to a clean caption, phrases and boxes.

Kosmos-2 (Peng et al. 2023, "Kosmos-2: Grounding Multimodal Large Language Models to the World") links a
phrase of its caption to image regions the way Markdown links text to a URL. The image is cut into a
32 x 32 grid of cells, numbered row by row from 0 (top left) to 1023 (bottom right), each with its own
token `<patch_index_XXXX>`. A box is two such tokens: the cell of its top-left corner and the cell of its
bottom-right corner. With the `<grounding>` prompt the model writes, for example (one line):

    <grounding> An image of<phrase> a snowman</phrase><object><patch_index_0044><patch_index_0863></object>
    warming himself by<phrase> a fire</phrase><object><patch_index_0005><patch_index_0911></object>.

which `post_process_generation` turns into

    "An image of a snowman warming himself by a fire."
    [Entity("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
     Entity("a fire", (41, 47), [(0.171875, 0.015625, 0.484375, 0.890625)])]

i.e. each phrase, the (start, end) slice of the caption it occupies, and its boxes as (x0, y0, x1, y1)
fractions of the image width and height. One phrase may own several boxes, separated by
`</delimiter_of_multi_objects/>` inside one `<object>...</object>`.

The rules, exactly those of Transformers' `Kosmos2Processor.post_process_generation`
(models/kosmos2/processing_kosmos2.py), which the tests compare with on crafted strings:

- Everything up to the last `</image>` is dropped (the image placeholders of the prompt).
- The caption is the text with every tag removed (a tag: `<`, the fewest characters up to `>`, no
  newline inside), then stripped of surrounding whitespace. Text before `<grounding>` stays.
- An entity is an `<object>` holding one or more well-formed boxes. A `<phrase>...</phrase>` (non-empty, no
  `<` inside) written immediately before it names it; an object without one yields one entity per box,
  named after its patch tokens (`"<patch_index_44><patch_index_863>"`), with an empty span where the
  `<object>` tag stood. Malformed objects and phrases without an object give no entity.
- Spans count characters of the cleaned caption, and exclude the phrase's own leading and trailing spaces.
  A position is measured by cleaning the text before it on its own (so a stray `<` can shift it as it
  shifts Transformers'), and a span can come out empty or negative where the text is odd
  (an object before the caption's leading spaces, a phrase of spaces).
- Box corners: a box within one row or one column of cells covers those cells whole; otherwise it runs
  from the centre of its top-left cell to the centre of its bottom-right cell (the Kosmos-2 demo's rule).
  Patch indices are not checked against the grid, as in Transformers, and their digits are any Unicode
  decimal digits (as Transformers' regex accepts them).

`draw_boxes(image, entities)` draws the boxes and their phrases on a copy of the image, for the demo.
"""
from __future__ import annotations

import math
import re
from typing import NamedTuple

from PIL import Image, ImageDraw, ImageFont

NUM_PATCHES_PER_SIDE = 32          # Kosmos-2's grid: 32 x 32 cells, 1024 <patch_index_XXXX> tokens
END_OF_IMAGE = "</image>"          # closes the image placeholders of the prompt
MULTI_OBJECT_DELIMITER = "</delimiter_of_multi_objects/>"   # separates the boxes of one phrase

# Any tag: '<', then the fewest characters (no newline: `.`) up to the first '>'.
_TAG = re.compile(r"<.*?>")
_BOX = r"<patch_index_(\d+)><patch_index_(\d+)>"
_BOX_UNCAPTURED = r"<patch_index_\d+><patch_index_\d+>"
# An optional phrase right before an object of one or more boxes joined by the delimiter.
_GROUNDED_OBJECT = re.compile(
    r"(?:<phrase>(?P<phrase>[^<]+)</phrase>)?"
    r"<object>(?P<boxes>(?:" + _BOX_UNCAPTURED + re.escape(MULTI_OBJECT_DELIMITER) + r")*"
    + _BOX_UNCAPTURED + r")</object>")

# Box outline colours of draw_boxes, one per entity in turn (the tab10 palette).
BOX_COLOURS = [(31, 119, 180), (255, 127, 14), (44, 160, 44), (214, 39, 40), (148, 103, 189),
               (140, 86, 75), (227, 119, 194), (127, 127, 127), (188, 189, 34), (23, 190, 207)]


class Entity(NamedTuple):
    """One grounded phrase. A plain tuple too: equal to Transformers' (phrase, span, boxes) entries."""
    phrase: str                         # the phrase, stripped (or "<patch_index_A><patch_index_B>")
    span: tuple[int, int]               # (start, end) characters of the phrase in the clean caption
    boxes: list[tuple[float, float, float, float]]   # (x0, y0, x1, y1) as fractions of width, height


def post_process_generation(text: str, cleanup_and_extract: bool = True,
                            num_patches_per_side: int = NUM_PATCHES_PER_SIDE):
    """Decoded Kosmos-2 output -> (caption, [Entity]), or with cleanup_and_extract=False just the text after
    the last `</image>`, tags and all (what Transformers' post_process_image_text_to_text returns)."""
    if not isinstance(text, str):
        raise TypeError(f"post_process_generation: text must be a str, got {type(text).__name__}")
    text = text.split(END_OF_IMAGE)[-1]
    if not cleanup_and_extract:
        return text
    return clean_text_and_extract_entities(text, num_patches_per_side)


def clean_text_and_extract_entities(text: str, num_patches_per_side: int = NUM_PATCHES_PER_SIDE):
    """Text with grounding tags -> (caption without tags, [Entity]) by the rules in the module docstring."""
    if not isinstance(text, str):
        raise TypeError(f"clean_text_and_extract_entities: text must be a str, got {type(text).__name__}")
    _check_grid(num_patches_per_side)
    untagged = _TAG.sub("", text)
    leading = len(untagged) - len(untagged.lstrip())     # the caption loses these, so every span shifts

    entities = []
    for match in _GROUNDED_OBJECT.finditer(text):
        pairs = [(int(first), int(last)) for first, last in re.findall(_BOX, match["boxes"])]
        if match["phrase"] is not None:
            found = [(match["phrase"], *match.span("phrase"), pairs)]
        else:   # no phrase: one entity per box, named by its tokens, at the <object> tag
            start = match.start()
            found = [(f"<patch_index_{a}><patch_index_{b}>", start, start, [(a, b)]) for a, b in pairs]
        for name, start, end, boxes in found:
            # Positions in the caption: the tag-free length of the text before them, less the stripped
            # leading whitespace; the span then skips the phrase's own outer spaces.
            start = len(_TAG.sub("", text[:start])) - leading + (len(name) - len(name.lstrip()))
            end = len(_TAG.sub("", text[:end])) - leading - (len(name) - len(name.rstrip()))
            entities.append(Entity(name.strip(), (start, end),
                                   [patch_indices_to_box(a, b, num_patches_per_side) for a, b in boxes]))
    return untagged.strip(), entities


def patch_indices_to_box(first: int, last: int, num_patches_per_side: int = NUM_PATCHES_PER_SIDE):
    """The cells of a box's top-left and bottom-right corners -> (x0, y0, x1, y1) in [0, 1]."""
    _check_grid(num_patches_per_side)
    cell = 1.0 / num_patches_per_side
    y0, x0 = divmod(first, num_patches_per_side)          # row, column of the first cell
    y1, x1 = divmod(last, num_patches_per_side)
    if x0 == x1 or y0 == y1:      # one cell, one row or one column: cover the cells whole
        return x0 * cell, y0 * cell, x1 * cell + cell, y1 * cell + cell
    # otherwise from the centre of the first cell to the centre of the last
    return x0 * cell + cell / 2, y0 * cell + cell / 2, x1 * cell + cell / 2, y1 * cell + cell / 2


def box_to_patch_indices(box, num_patches_per_side: int = NUM_PATCHES_PER_SIDE) -> tuple[int, int]:
    """(x0, y0, x1, y1) in [0, 1] -> the indices of the cells holding its top-left and bottom-right corners
    (the tokens a grounded prompt writes); the inverse of patch_indices_to_box for boxes of whole cells."""
    _check_grid(num_patches_per_side)
    if not (isinstance(box, (list, tuple)) and len(box) == 4):
        raise ValueError(f"box_to_patch_indices: box must be (x0, y0, x1, y1), got {box!r}")
    x0, y0, x1, y1 = box
    if not (x1 > x0 and y1 > y0):
        raise ValueError(f"box_to_patch_indices: box must have x1 > x0 and y1 > y0, got {box!r}")
    n = num_patches_per_side
    # The corner cells: the one x0 falls in, and the last one x1 reaches into (an edge on a cell border
    # belongs to the cell before it).
    first = math.floor(y0 * n) * n + math.floor(x0 * n)
    last = math.ceil(y1 * n - 1) * n + math.ceil(x1 * n - 1)
    return first, last


def _check_grid(n):
    if not (isinstance(n, int) and not isinstance(n, bool) and n > 0):
        raise ValueError(f"num_patches_per_side must be a positive int, got {n!r}")


# --------------------------------------------------------------------------------------------------
# Drawing
# --------------------------------------------------------------------------------------------------

def draw_boxes(image: Image.Image, entities, line_width: int | None = None) -> Image.Image:
    """An RGB copy of `image` with each entity's boxes outlined in its own colour (BOX_COLOURS in turn),
    and its phrase written on a label of that colour above each box's top-left corner (inside the box
    when there is no room above). entities: post_process_generation's list (or (phrase, span, boxes)
    tuples). line_width: outline width in pixels, by default about 1/150 of the image's shorter side."""
    if not isinstance(image, Image.Image):
        raise TypeError(f"draw_boxes: image must be a PIL.Image.Image, got {type(image).__name__}")
    if not isinstance(entities, (list, tuple)):
        raise TypeError(f"draw_boxes: entities must be a list of (phrase, span, boxes), got "
                        f"{type(entities).__name__}")
    W, H = image.size
    if line_width is None:
        line_width = max(1, round(min(W, H) / 150))
    if not (isinstance(line_width, int) and line_width > 0):
        raise ValueError(f"draw_boxes: line_width must be a positive int, got {line_width!r}")

    canvas = image.convert("RGB")          # always a new image: the caller's stays as it was
    draw = ImageDraw.Draw(canvas)
    font = ImageFont.load_default()
    for i, entity in enumerate(entities):
        if not (isinstance(entity, (list, tuple)) and len(entity) == 3):
            raise ValueError(f"draw_boxes: entities[{i}] must be (phrase, span, boxes), got {entity!r:.80}")
        phrase, _, boxes = entity
        colour = BOX_COLOURS[i % len(BOX_COLOURS)]
        for j, box in enumerate(boxes):
            if not (isinstance(box, (list, tuple)) and len(box) == 4
                    and all(isinstance(v, (int, float)) for v in box)):
                raise ValueError(f"draw_boxes: entities[{i}] box {j} must be 4 numbers (x0, y0, x1, y1) in "
                                 f"[0, 1], got {box!r}")
            # Fractions -> the pixels the box covers (inclusive ends), kept inside the image.
            left, top = math.floor(box[0] * W), math.floor(box[1] * H)
            right, bottom = math.ceil(box[2] * W) - 1, math.ceil(box[3] * H) - 1
            left, right = min(max(left, 0), W - 1), min(max(right, 0), W - 1)
            top, bottom = min(max(top, 0), H - 1), min(max(bottom, 0), H - 1)
            if right < left or bottom < top:
                continue                                   # an inverted box has no area to draw
            draw.rectangle((left, top, right, bottom), outline=colour, width=line_width)
            _draw_label(draw, font, str(phrase), left, top, colour)
    return canvas


def _draw_label(draw, font, label, left, top, colour):
    """The label: white text on a filled rectangle of the box's colour, above the box if it fits."""
    try:
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
    except UnicodeEncodeError:            # Pillow's bitmap fallback font knows Latin-1 only
        label = label.encode("latin-1", "replace").decode("latin-1")
        x0, y0, x1, y1 = draw.textbbox((0, 0), label, font=font)
    pad = 1
    height = y1 + 2 * pad                  # text from y=0 to y1 (y0 is the font's top bearing)
    y = top - height if top - height >= 0 else top
    draw.rectangle((left, y, left + x1 - x0 + 2 * pad, y + height - 1), fill=colour)
    draw.text((left + pad - x0, y + pad), label, fill=(255, 255, 255), font=font)


__all__ = ["Entity", "post_process_generation", "clean_text_and_extract_entities", "patch_indices_to_box",
           "box_to_patch_indices", "draw_boxes", "NUM_PATCHES_PER_SIDE", "BOX_COLOURS"]
