"""Kosmos-2 grounding post-processing (minivlm.grounding) against Transformers'
Kosmos2Processor.post_process_generation, and draw_boxes.

The reference is a real Kosmos2Processor built offline (a two-word tokenizer and CLIPImageProcessorPil:
post_process_generation reads neither). Results are compared with ==: strings, integer spans and box
coordinates computed by the same float operations, so they must agree exactly.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import CLIPImageProcessorPil, Kosmos2Processor, PreTrainedTokenizerFast
from transformers.models.kosmos2 import processing_kosmos2 as hf

from minivlm.grounding import (BOX_COLOURS, Entity, box_to_patch_indices, clean_text_and_extract_entities,
                               draw_boxes, patch_indices_to_box, post_process_generation)


@pytest.fixture(scope="module")
def processor():
    tokenizer = Tokenizer(models.WordLevel({"<unk>": 0, "hello": 1}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return Kosmos2Processor(CLIPImageProcessorPil(),
                            PreTrainedTokenizerFast(tokenizer_object=tokenizer, unk_token="<unk>"))


def box(a, b):
    return f"<patch_index_{a:04d}><patch_index_{b:04d}>"


D = "</delimiter_of_multi_objects/>"
SNOWMAN = (f"<grounding> An image of<phrase> a snowman</phrase><object>{box(44, 863)}</object> warming himself "
           f"by<phrase> a fire</phrase><object>{box(5, 911)}</object>.")

CASES = {
    "docstring example": SNOWMAN,
    "with the image prompt": "<image>" + "<image>" * 4 + "</image>" + SNOWMAN,
    "two </image>": f"<image></image> old<phrase> x</phrase><object>{box(1, 2)}</object></image> kept",
    "one box": f"<grounding><phrase> a cat</phrase><object>{box(0, 1023)}</object>",
    "several boxes per phrase": f"<grounding> Two<phrase> dogs</phrase><object>{box(33, 200)}{D}{box(600, 990)}"
                                f"{D}{box(5, 5)}</object> play.",
    "several phrases": f"<phrase>A</phrase><object>{box(0, 33)}</object> and<phrase> B</phrase><object>"
                       f"{box(64, 130)}</object> and<phrase> C </phrase><object>{box(99, 99)}</object>!",
    "same row, column, cell": f"<phrase>r</phrase><object>{box(3, 9)}</object><phrase>c</phrase><object>"
                              f"{box(3, 259)}</object><phrase>p</phrase><object>{box(77, 77)}</object>",
    "reversed and out-of-grid indices": f"<phrase>x</phrase><object>{box(900, 10)}{D}{box(1500, 99999)}</object>",
    "short and long index numbers": "<phrase>x</phrase><object><patch_index_7><patch_index_00000123></object>",
    "phrase without object": "<grounding> A<phrase> dog</phrase> runs.",
    "phrase then space then object": f"A<phrase> dog</phrase> <object>{box(1, 40)}</object> runs.",
    "object without phrase": f"<grounding> It is<object>{box(44, 863)}</object> here.",
    "object without phrase, two boxes": f"Here<object>{box(44, 863)}{D}{box(1, 2)}</object> and there.",
    "object at the very start": f"<object>{box(44, 863)}</object>   caption",
    "nested phrases": f"<phrase>outer<phrase> inner</phrase><object>{box(1, 100)}</object> rest</phrase>.",
    "phrase nested in object": f"<object><phrase>x</phrase>{box(1, 100)}</object>",
    "object missing its end": f"<phrase>a</phrase><object>{box(1, 100)} tail",
    "object with one index": "<phrase>a</phrase><object><patch_index_0001></object> b",
    "object with three indices": "<phrase>a</phrase><object><patch_index_0001><patch_index_0002>"
                                 "<patch_index_0003></object>",
    "index without digits": "<phrase>a</phrase><object><patch_index_><patch_index_0002></object>",
    "trailing delimiter": f"<phrase>a</phrase><object>{box(1, 2)}{D}</object> b",
    "empty object": "<phrase>a</phrase><object></object> b",
    "empty phrase": f"<phrase></phrase><object>{box(1, 2)}</object> b",
    "phrase of spaces": f"x<phrase>   </phrase><object>{box(1, 2)}</object> b",
    "unclosed phrase": f"<phrase>a<object>{box(1, 2)}</object> b",
    "stray angle brackets": f"1 < 2 and<phrase> 3 > 2</phrase><object>{box(1, 66)}</object> ok",
    "lone < before a tag": f"a < b<phrase> c</phrase><object>{box(1, 66)}</object> d <",
    "tag split by a newline": f"a <b\nc> d<phrase> e</phrase><object>{box(2, 70)}</object>",
    "newline inside phrase": f"a<phrase> big\ndog</phrase><object>{box(2, 70)}</object>\n",
    "unknown tags": f"<s>hi</s><unk><phrase> x</phrase><object>{box(2, 70)}</object></doc>",
    "unicode text": f"<grounding> Ein Bild von<phrase> einer Kätze 🐈</phrase><object>{box(10, 300)}</object>"
                    f" und<phrase> 一只狗</phrase><object>{box(400, 800)}</object>。",
    "combining characters": f"cafe\u0301<phrase> ne\u0301e</phrase><object>{box(1, 99)}</object>",
    "unicode digits in an index": "<phrase>x</phrase><object><patch_index_\u0664\u0664>"
                                  "<patch_index_\u0668\u0666\u0663></object>",
    "leading spaces": f"    <grounding>   <phrase>  spaced  </phrase><object>{box(1, 99)}</object>  end  ",
    "unicode leading whitespace": f"\u00a0\u3000<phrase>\u2003x</phrase><object>{box(1, 99)}</object>\t",
    "text before <grounding>": f"Describe this: <grounding> An image of<phrase> a cat</phrase><object>"
                               f"{box(1, 99)}</object>.",
    "empty string": "",
    "only spaces": "   ",
    "only tags": "<grounding></image><phrase></phrase>",
    "plain text": "A photo of a cat.",
}


@pytest.mark.parametrize("text", CASES.values(), ids=CASES.keys())
def test_post_process_matches_transformers(processor, text):
    expected = processor.post_process_generation(text)
    got = post_process_generation(text)
    assert got == expected
    caption, entities = got
    assert isinstance(caption, str) and all(isinstance(e, Entity) for e in entities)
    assert processor.post_process_generation(text, cleanup_and_extract=False) == \
        post_process_generation(text, cleanup_and_extract=False)


def test_cases_cover_what_they_claim(processor):
    # A few cases pinned by value, so that the case list above keeps testing what its names say.
    caption, entities = post_process_generation(CASES["several boxes per phrase"])
    assert caption == "Two dogs play." and entities[0][:2] == ("dogs", (4, 8)) and len(entities[0].boxes) == 3
    _, entities = post_process_generation(CASES["object without phrase, two boxes"])
    assert [(e.phrase, e.span) for e in entities] == [("<patch_index_44><patch_index_863>", (4, 4)),
                                                     ("<patch_index_1><patch_index_2>", (4, 4))]
    assert post_process_generation(CASES["phrase without object"]) == ("A dog runs.", [])
    assert post_process_generation(CASES["object at the very start"])[1][0].span == (-3, -3)   # a quirk, kept
    assert post_process_generation(CASES["unicode digits in an index"])[1][0].phrase == "x"
    caption, entities = post_process_generation(CASES["text before <grounding>"])
    assert caption == "Describe this:  An image of a cat." and caption[entities[0].span[0]:][:5] == "a cat"
    assert post_process_generation(CASES["two </image>"], cleanup_and_extract=False) == " kept"
    assert post_process_generation("") == ("", [])


# Pieces that make grounded text, well and badly formed, for a property test over random strings.
PIECES = ["<phrase>", "</phrase>", "<object>", "</object>", D, "<grounding>", "</image>", "<patch_index_0001>",
          "<patch_index_1023>", "<patch_index_05>", "<patch_index_>", box(35, 600), box(7, 7), " a", " dog ",
          "é", "猫", " ", "  ", "\n", "<", ">", "x", ".", "<s>", "\u3000"]


@settings(max_examples=400)
@given(st.lists(st.sampled_from(PIECES), max_size=24))
def test_random_strings_match_transformers(processor, pieces):
    text = "".join(pieces)
    assert post_process_generation(text) == processor.post_process_generation(text)


@pytest.mark.parametrize("n", [32, 7, 1, 10])
def test_other_grids_match_transformers(n):
    # The module-level function takes the grid size; 7 and 10 are not powers of 2, so the box coordinates
    # are rounded and the float operations must be the same ones.
    text = (f"a<phrase> b</phrase><object>{box(3, 45)}{D}{box(0, 48)}{D}{box(8, 8)}</object>"
            f"c<object>{box(2, 16)}</object>")
    assert clean_text_and_extract_entities(text, n) == hf.clean_text_and_extract_entities_with_bboxes(text, n)


@pytest.mark.parametrize("n", [32, 7, 3])
def test_patch_indices_to_box_matches_transformers_on_every_pair(n):
    for a in range(n * n):
        for b in range(n * n):
            assert patch_indices_to_box(a, b, n) == hf.patch_index_to_coordinate(a, b, n), (a, b)


def test_box_to_patch_indices_matches_transformers():
    rng = np.random.default_rng(0)
    for n in (32, 7):
        for _ in range(300):
            x0, x1 = sorted(rng.uniform(0, 1, 2))
            y0, y1 = sorted(rng.uniform(0, 1, 2))
            b = (float(x0), float(y0), float(x1), float(y1))
            assert box_to_patch_indices(b, n) == hf.coordinate_to_patch_index(b, n), b
    # Whole-cell boxes round-trip through the patch tokens.
    for first, last in [(0, 1023), (44, 863), (5, 5), (3, 9), (3, 259)]:
        assert box_to_patch_indices(patch_indices_to_box(first, last)) == (first, last)


def test_bad_input():
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        post_process_generation(b"<phrase>")
    with pytest.raises(ValueError, match="num_patches_per_side must be a positive int, got 0"):
        clean_text_and_extract_entities("x", 0)
    with pytest.raises(ValueError, match=r"box must have x1 > x0 and y1 > y0, got \(0.5, 0.1, 0.5, 0.2\)"):
        box_to_patch_indices((0.5, 0.1, 0.5, 0.2))
    with pytest.raises(ValueError, match=r"box must be \(x0, y0, x1, y1\)"):
        box_to_patch_indices((0.5, 0.1))


# ---- draw_boxes ------------------------------------------------------------------------------------

GREY = (128, 128, 128)


def pixel(image, x, y):
    return image.getpixel((x, y))


def near_white(region):
    """Whether some pixel is near white (the text is antialiased); no box colour or GREY has all channels > 200."""
    assert all(min(c) <= 200 for c in BOX_COLOURS + [GREY])
    return bool((region > 200).all(axis=-1).any())


def test_draw_boxes_puts_outlines_and_labels_where_expected():
    image = Image.new("RGB", (100, 80), GREY)
    entities = [("a cat", (0, 5), [(0.2, 0.25, 0.7, 0.75)]),          # pixels x 20..69, y 20..59
                ("two", (0, 3), [(0.0, 0.0, 0.3, 0.1), (0.8, 0.5, 1.0, 1.0)])]   # x 0..29, y 0..7; x 80..99, y 40..79
    out = draw_boxes(image, entities, line_width=2)
    first, second = BOX_COLOURS[0], BOX_COLOURS[1]
    assert out.size == image.size and out.mode == "RGB"
    assert all(pixel(image, x, y) == GREY for x in range(100) for y in range(80))   # input untouched

    # First box: both pixels of each edge's width, well away from its label (above the top-left corner).
    for y in (30, 45, 59):
        assert pixel(out, 20, y) == pixel(out, 21, y) == first
        assert pixel(out, 68, y) == pixel(out, 69, y) == first
    for x in (30, 50, 69):
        assert pixel(out, x, 58) == pixel(out, x, 59) == first
    assert pixel(out, 65, 20) == pixel(out, 65, 21) == first
    # Just inside and just outside the outline: untouched.
    for x, y in [(22, 45), (67, 45), (45, 57), (45, 40), (19, 45), (70, 45), (45, 60), (65, 19)]:
        assert pixel(out, x, y) == GREY, (x, y)
    # Its label sits on the row above the box, starting at its left edge: box colour with white text.
    assert pixel(out, 20, 19) == first
    assert near_white(np.asarray(out)[:20, 20:60]), "no white label text"

    # Second entity: both boxes in the second colour. The first box has no room above, so its label is
    # drawn inside; the second box's edges are clamped to the image.
    assert pixel(out, 29, 5) == second and pixel(out, 25, 7) == second   # right, bottom edges
    assert pixel(out, 80, 60) == pixel(out, 99, 60) == pixel(out, 90, 79) == second
    assert pixel(out, 90, 60) == GREY
    assert near_white(np.asarray(out)[:8, :30]), "no label inside the first box"


def test_draw_boxes_from_generated_text():
    caption, entities = post_process_generation(SNOWMAN)
    image = Image.new("L", (64, 64), 200)
    out = draw_boxes(image, entities)
    assert out.mode == "RGB" and image.mode == "L"
    # snowman: (0.390625, 0.046875, 0.984375, 0.828125) -> x 25..62, y 3..52; line width 1 on 64 px.
    assert pixel(out, 62, 30) == BOX_COLOURS[0] and pixel(out, 40, 52) == BOX_COLOURS[0]
    # fire: (0.171875, 0.015625, 0.484375, 0.890625) -> x 11..30, y 1..56
    assert pixel(out, 11, 40) == BOX_COLOURS[1] and pixel(out, 20, 56) == BOX_COLOURS[1]
    assert pixel(out, 5, 60) == (200, 200, 200)


def test_draw_boxes_odd_labels_and_bad_input():
    image = Image.new("RGB", (40, 40), GREY)
    out = draw_boxes(image, [("猫 🐈 ünïcode", (0, 1), [(0.5, 0.5, 1.0, 1.0)]),
                             ("", (0, 0), [(0.1, 0.1, 0.2, 0.2)])])
    assert pixel(out, 39, 30) == BOX_COLOURS[0]
    assert draw_boxes(image, []).tobytes() == image.tobytes()
    with pytest.raises(TypeError, match="image must be a PIL.Image.Image, got ndarray"):
        draw_boxes(np.zeros((4, 4, 3)), [])
    with pytest.raises(ValueError, match=r"entities\[0\] must be \(phrase, span, boxes\)"):
        draw_boxes(image, [("x", [(0, 0, 1, 1)])])
    with pytest.raises(ValueError, match=r"entities\[0\] box 1 must be 4 numbers"):
        draw_boxes(image, [("x", (0, 1), [(0, 0, 1, 1), (0, 0, 1)])])
    with pytest.raises(ValueError, match="line_width must be a positive int, got 0"):
        draw_boxes(image, [], line_width=0)
