"""minivlm.tinyvlm.data: the tiny VLM's pictures, captions, questions, splits and tokenizer.

The answers, captions and pixel checks are worked out here again from the scene, independently of how
data.py works them out."""
import functools
import math
import re

import numpy as np
import pytest

from minivlm.tinyvlm import data
from minivlm.tinyvlm.data import COLOURS, KINDS, QUADRANTS, make_example, split_seeds

N = 400    # examples most tests look at


@functools.cache
def examples():
    return [make_example(seed) for seed in range(N)]


def quadrant_bounds(quadrant, width, height):
    """(left, top, right, bottom) of a quadrant, in pixels."""
    right_half, lower_half = quadrant.endswith("right"), quadrant.startswith("bottom")
    left, right = (width / 2, width) if right_half else (0, width / 2)
    top, bottom = (height / 2, height) if lower_half else (0, height / 2)
    return left, top, right, bottom


def interior(shape, width, height, margin=1.0):
    """A mask of the pixels well inside a shape: within its inscribed circle, `margin` pixels from the
    edge."""
    x0, y0, x1, y1 = shape.box
    d = x1 - x0
    if shape.kind == "triangle":     # base d along the bottom, apex at the top middle, height d
        r = d / (1 + math.sqrt(5))   # the incircle radius: area / half the perimeter
        cx, cy = (x0 + x1) / 2, y1 - r
    else:
        r, cx, cy = d / 2, (x0 + x1) / 2, (y0 + y1) / 2
    ys, xs = np.mgrid[0:height, 0:width] + 0.5
    return np.hypot(xs - cx, ys - cy) <= r - margin


def near_box(shape, width, height, pad=1.0):
    """A mask of the pixels touching a shape's box grown by `pad` pixels."""
    x0, y0, x1, y1 = shape.box
    ys, xs = np.mgrid[0:height, 0:width]
    return (xs + 1 > x0 - pad) & (xs < x1 + pad) & (ys + 1 > y0 - pad) & (ys < y1 + pad)


def nearest_colour(rgb):
    return min(COLOURS, key=lambda name: np.sum((np.array(COLOURS[name]) - rgb) ** 2))


# --------------------------------------------------------------------------------------------------
# Determinism and splits
# --------------------------------------------------------------------------------------------------

def test_same_seed_gives_the_same_example():
    for seed in (0, 1, 12345, 2 * 10 ** 8 + 3):
        a, b = make_example(seed), make_example(seed)
        assert np.array_equal(np.asarray(a.image), np.asarray(b.image))
        assert a.scene == b.scene and a.caption == b.caption and a.questions == b.questions
    a, b = make_example(5, n_shapes=2, size=(40, 50)), make_example(5, n_shapes=2, size=(40, 50))
    assert np.array_equal(np.asarray(a.image), np.asarray(b.image)) and a.questions == b.questions


def test_different_seeds_differ():
    pictures = [np.asarray(make_example(seed, size=64).image).tobytes() for seed in range(50)]
    assert len(set(pictures)) == 50
    assert len({ex.caption for ex in examples()}) > N // 4


def test_splits_are_disjoint():
    n = 1000
    train, validation, heldout = (set(split_seeds(s, n)) for s in ("train", "validation", "heldout"))
    assert len(train) == len(validation) == len(heldout) == n
    assert not train & validation and not train & heldout and not validation & heldout
    # even the largest splits do not reach into the next one
    assert split_seeds("train", data.SPLIT_SIZE)[-1] < split_seeds("validation", 1)[0]
    assert split_seeds("validation", data.SPLIT_SIZE)[-1] < split_seeds("heldout", 1)[0]
    with pytest.raises(ValueError):
        split_seeds("test", 10)
    with pytest.raises(ValueError):
        split_seeds("train", data.SPLIT_SIZE + 1)


# --------------------------------------------------------------------------------------------------
# Pictures
# --------------------------------------------------------------------------------------------------

def test_shapes_count_place_and_size():
    counts = set()
    for ex in examples():
        width, height = ex.scene.size
        assert ex.image.size == (width, height) and ex.image.mode == "RGB"
        shapes = ex.scene.shapes
        counts.add(len(shapes))
        assert 1 <= len(shapes) <= 3
        assert len({s.quadrant for s in shapes}) == len(shapes)        # at most one per quadrant
        for s in shapes:
            assert s.kind in KINDS and s.colour in COLOURS and s.quadrant in QUADRANTS
            x0, y0, x1, y1 = s.box
            assert x1 - x0 == pytest.approx(y1 - y0)
            assert 0.25 <= (x1 - x0) / min(width, height) <= 0.5
            left, top, right, bottom = quadrant_bounds(s.quadrant, width, height)
            assert left <= x0 and x1 <= right and top <= y0 and y1 <= bottom
    assert counts == {1, 2, 3}


def test_n_shapes_and_size_arguments():
    for n in (1, 2, 3):
        assert all(len(make_example(seed, n_shapes=n).scene.shapes) == n for seed in range(20))
    assert make_example(3, size=32).image.size == (32, 32)
    assert make_example(3, size=(48, 36)).image.size == (48, 36)
    with pytest.raises(ValueError):
        make_example(0, n_shapes=4)


def test_varied_sizes_and_aspect_ratios():
    sizes = [ex.image.size for ex in examples()]
    square = sum(w == h for w, h in sizes) / len(sizes)
    assert 0.6 <= square <= 0.9                                          # mostly square
    assert any(w > h for w, h in sizes) and any(w < h for w, h in sizes)  # landscape and portrait
    assert len({min(w, h) for w, h in sizes}) > 40
    assert all(24 <= min(w, h) and max(w, h) <= 128 for w, h in sizes)
    assert all(3 / 4 <= w / h <= 4 / 3 for w, h in sizes)


def test_colour_names_hold_and_background_is_light():
    for ex in examples()[:200]:
        pixels = np.asarray(ex.image, dtype=float)
        width, height = ex.scene.size
        outside = np.ones((height, width), bool)
        for s in ex.scene.shapes:
            inside = interior(s, width, height)
            assert inside.sum() >= 1
            assert nearest_colour(pixels[inside].mean(axis=0)) == s.colour, (ex.caption, s)
            outside &= ~near_box(s, width, height)
        background = pixels[outside].mean(axis=0)
        assert np.all(background >= 200), background
        assert np.abs(background - ex.scene.background).max() < 3


def test_edges_are_anti_aliased():
    """Around a shape's edge some pixels are blends of the shape and the background, neither one."""
    blended_squares = []
    for ex in examples()[:150]:
        pixels = np.asarray(ex.image, dtype=float)
        width, height = ex.scene.size
        background = np.array(ex.scene.background, float)
        for s in ex.scene.shapes:
            rgb = np.array(s.rgb, float)
            near = pixels[near_box(s, width, height)]
            # where each pixel lies on the line background -> shape colour (0: background, 1: shape)
            t = (near - background) @ (rgb - background) / np.sum((rgb - background) ** 2)
            off_line = np.linalg.norm(near - background - t[:, None] * (rgb - background), axis=1)
            blends = np.sum((t > 0.2) & (t < 0.8) & (off_line < 12))
            if s.kind == "square":           # a square's edges may fall on pixel boundaries
                blended_squares.append(blends > 0)
            else:
                assert blends >= 2, (ex.caption, s)
    assert np.mean(blended_squares) > 0.8


# --------------------------------------------------------------------------------------------------
# Captions and questions
# --------------------------------------------------------------------------------------------------

def expected_caption(scene):
    order = sorted(scene.shapes, key=lambda s: ["top left", "top right", "bottom left", "bottom right"]
                   .index(s.quadrant))
    parts = [f"{'an' if s.colour == 'orange' else 'a'} {s.colour} {s.kind} in the {s.quadrant}" for s in order]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


def test_caption_lists_the_shapes_in_quadrant_order():
    for ex in examples():
        assert ex.caption == expected_caption(ex.scene)
    three = make_example(0, n_shapes=3).caption
    assert three.count(",") == 1 and three.count(" and ") == 1


def answer(question, scene):
    """The unique answer to a question about a scene, worked out from the scene alone (None where the
    answer is not unique, or the question is not understood)."""
    shapes = scene.shapes
    if m := re.fullmatch(r"what colour is the (\w+)\?", question):
        found = [s for s in shapes if s.kind == m[1]]
        return found[0].colour if len(found) == 1 else None
    if m := re.fullmatch(r"what colour is the shape in the (\w+ \w+)\?", question):
        found = [s for s in shapes if s.quadrant == m[1]]
        return found[0].colour if len(found) == 1 else None
    if m := re.fullmatch(r"what shape is in the (\w+ \w+)\?", question):
        found = [s for s in shapes if s.quadrant == m[1]]
        return found[0].kind if len(found) == 1 else None
    if m := re.fullmatch(r"what shape is (\w+)\?", question):
        found = [s for s in shapes if s.colour == m[1]]
        return found[0].kind if len(found) == 1 else None
    if question == "how many shapes are there?":
        return ["one", "two", "three"][len(shapes) - 1]
    if m := re.fullmatch(r"is there (a|an) (\w+) (\w+)\?", question):
        assert m[1] == ("an" if m[2] == "orange" else "a")
        return "yes" if any(s.colour == m[2] and s.kind == m[3] for s in shapes) else "no"
    return None


def test_every_answer_is_unique_and_correct():
    kinds = {"colour", "shape", "count", "exists"}
    forms = set()
    for ex in examples():
        assert {q.kind for q in ex.questions} == kinds
        for q in ex.questions:
            assert answer(q.question, ex.scene) == q.answer, (ex.caption, q)
            forms.add(re.sub(r"(top|bottom) (left|right)|\b(%s)\b" % "|".join(list(COLOURS) + list(KINDS)),
                             "X", q.question))
            if q.kind == "colour" and q.question.startswith("what colour is the ") and " in the " not in q.question:
                kind = q.question.removeprefix("what colour is the ").removesuffix("?")
                assert [s.kind for s in ex.scene.shapes].count(kind) == 1
    # each way of asking occurs
    assert {"what colour is the X?", "what colour is the shape in the X?", "what shape is in the X?",
            "what shape is X?", "how many shapes are there?"} <= forms


def test_yes_and_no_are_balanced():
    answers = [q.answer for ex in examples() for q in ex.questions if q.kind == "exists"]
    assert set(answers) == {"yes", "no"}
    assert 0.4 <= answers.count("yes") / len(answers) <= 0.6


# --------------------------------------------------------------------------------------------------
# The tokenizer
# --------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def tokenizer_folder(tmp_path_factory):
    return data.build_tokenizer(tmp_path_factory.mktemp("tinyvlm_tokenizer"))


def texts(n=500):
    """The captions, questions, answers and prompts of n examples."""
    out = []
    for seed in range(n):
        ex = make_example(seed) if seed >= N else examples()[seed]
        out += [ex.caption, data.prompt(data.CAPTION_QUESTION) + " " + ex.caption]
        for q in ex.questions:
            out += [q.question, q.answer, data.prompt(q.question) + " " + q.answer]
    return out


def test_vocabulary_is_enumerated_from_the_constants():
    vocab = data.vocabulary()
    assert len(vocab) == len(set(vocab))
    assert vocab[:5] == ["<pad>", "<s>", "</s>", "<unk>", "<image>"]
    assert set(COLOURS) | set(KINDS) | {"yes", "no", "one", "two", "three", "user:", "assistant:"} <= set(vocab)


def test_tokenizer_covers_every_word_and_round_trips(tokenizer_folder):
    from minivlm.processing import Tokenizer

    tok = Tokenizer.from_pretrained(tokenizer_folder)
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id, tok.unk_token_id, tok.image_token_id) == \
        (0, 1, 2, 3, 4)
    for text in texts():
        ids = tok.encode(text)
        assert ids[0] == tok.bos_token_id and tok.unk_token_id not in ids, text
        assert tok.decode(ids, skip_special_tokens=True) == text.replace("<image> ", "")
        assert tok.decode(ids) == "<s> " + text
    assert tok.encode("What colour is the Circle?") == tok.encode("what colour is the circle?")


def test_minivlm_and_transformers_give_the_same_ids(tokenizer_folder):
    from transformers import AutoTokenizer

    from minivlm.processing import Tokenizer

    ours, theirs = Tokenizer.from_pretrained(tokenizer_folder), AutoTokenizer.from_pretrained(tokenizer_folder)
    sample = texts(100)
    for text in sample:
        ids = ours.encode(text)
        assert ids == theirs.encode(text), text
        assert ours.decode(ids, skip_special_tokens=True) == theirs.decode(ids, skip_special_tokens=True)
    batch = sample[:8]
    assert ours(batch, padding=True)["input_ids"] == theirs(batch, padding=True)["input_ids"]
    assert theirs.image_token_id == ours.image_token_id == 4
    assert len(ours) == len(theirs) == len(data.vocabulary())
