"""minivlm.processing.Kosmos2Processor against Transformers' Kosmos2Processor on the same folders, which
Transformers' Kosmos2Processor wrote (an XLM-R tokenizer with Kosmos-2's tag and patch tokens added,
CLIPImageProcessorPil settings, num_patch_index_tokens): input_ids, attention_mask and
image_embeds_position_mask equal (integers), pixel_values torch.equal; the layout of one prompt spelled
out; boxes (hypothesis over prompts and boxes); padding on both sides; post-processing; saving; the tiny
model's logits on minivlm's inputs against Transformers' on its own; and the errors for bad input.
"""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import _kosmos2
import _tokenizers
from helpers import assert_close_rel, assert_same_inputs, save, transformers_config
from minivlm.processing import CLIPImageProcessor, Kosmos2Processor, Tokenizer

CROP = _kosmos2.IMAGE          # the tiny model's image side (16 px)
N = _kosmos2.NUM_QUERIES       # its latent queries: the image tokens per prompt
# float32 logits against Transformers', relative to the largest: tests/test_kosmos2.py's bound (measured 0
# with the compiled kernels, under 1e-6 with the reference ops; a wrong position or mask moves them by 1e-2)
F32_REL = 1e-5


def _image(h, w, seed=0):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


IMAGES = [_image(30, 40, 1), _image(64, 20, 2), _image(16, 16, 3)]


def _folder(root, *, num_patch_index_tokens=1024, padding_side=None, model_type=None):
    """The folder Transformers' Kosmos2Processor save_pretrained writes (config.json beside it where a
    model_type is given, as in a checkpoint folder: it decides the tokenizer class)."""
    import transformers

    options = {} if padding_side is None else {"padding_side": padding_side}
    tok = _tokenizers.xlm_roberta(root / "tok", **options)
    images = transformers.CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": CROP, "width": CROP})
    processor = transformers.Kosmos2Processor(image_processor=images, tokenizer=tok,
                                              num_patch_index_tokens=num_patch_index_tokens)
    folder = root / "kosmos2"
    processor.save_pretrained(folder)
    if model_type:
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


def _both(folder):
    import transformers

    return transformers.Kosmos2Processor.from_pretrained(str(folder), backend="pil"), Kosmos2Processor.from_pretrained(folder)


# right: the XLM-R tokenizer class; left: a kosmos-2 folder (the tokenizer.json as it is) padding on the left
@pytest.fixture(scope="module", params=[("right", None), ("left", "kosmos-2")], ids=["right", "left"])
def kosmos2(request, tmp_path_factory):
    side, model_type = request.param
    folder = _folder(tmp_path_factory.mktemp("kosmos2"), padding_side=side, model_type=model_type)
    return (*_both(folder), folder)


def _check(hf, mv, what="", **kwargs):
    got = mv(**kwargs)
    assert_same_inputs(got, hf(**kwargs), what or kwargs)
    return got


# -- the folder --------------------------------------------------------------------------------------------

def test_the_folder_and_the_added_tokens(kosmos2):
    hf, mv, folder = kosmos2
    assert sorted(p.name for p in folder.iterdir() if p.name != "config.json") == \
        ["processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folder / "processor_config.json").read_text())
    assert config["num_patch_index_tokens"] == mv.num_patch_index_tokens == 1024 and mv.num_patches_per_side == 32
    assert mv.tokenizer.tokenizer_class == type(hf.tokenizer).__name__
    assert mv.tokenizer.padding_side == hf.tokenizer.padding_side
    assert mv.tokenizer.get_vocab() == hf.tokenizer.get_vocab() and len(mv.tokenizer) == len(hf.tokenizer)
    for token in ("<image>", "</image>", "<grounding>", "<phrase>", "<patch_index_0000>", "<patch_index_1023>"):
        assert mv.tokenizer.convert_tokens_to_ids(token) == hf.tokenizer.convert_tokens_to_ids(token) > 3, token
    assert mv.image_processor.crop_size == {"height": CROP, "width": CROP}


def test_tokens_are_added_to_a_plain_tokenizer(tmp_path):
    """Built from an XLM-R folder without Kosmos-2's tokens, both processors add them with the same ids."""
    import transformers

    _tokenizers.xlm_roberta(tmp_path)
    hf = transformers.Kosmos2Processor(image_processor=transformers.CLIPImageProcessorPil(),
                                       tokenizer=transformers.AutoTokenizer.from_pretrained(str(tmp_path)),
                                       num_patch_index_tokens=9)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.backend.token_to_id("<grounding>") is None
    mv = Kosmos2Processor(tok, CLIPImageProcessor(), num_patch_index_tokens=9)
    assert mv.tokenizer.get_vocab() == hf.tokenizer.get_vocab()
    assert mv.num_patches_per_side == 3
    text = "<grounding><phrase> a cat</phrase> on <phrase>a sofa</phrase>"
    _check(hf, mv, text=text, images=IMAGES[0], bboxes=[(0.0, 0.0, 0.5, 0.5), (4, 8)])


# -- the layout ---------------------------------------------------------------------------------------------

def test_the_layout_of_one_prompt(kosmos2):
    """<s> <image> [the image positions: ids first_image_token_id, +1, ...] </image> text; the position mask
    1 exactly there."""
    hf, mv, _ = kosmos2
    tok = mv.tokenizer
    boi, eoi = tok.convert_tokens_to_ids("<image>"), tok.convert_tokens_to_ids("</image>")
    text_ids = tok("<grounding>An image of", add_special_tokens=False)["input_ids"]
    got = _check(hf, mv, text="<grounding>An image of", images=IMAGES[0], num_image_tokens=N)
    first = tok.unk_token_id + 1
    assert got["input_ids"] == [tok.bos_token_id, boi, *range(first, first + N), eoi] + text_ids
    assert got["image_embeds_position_mask"] == [0, 0] + [1] * N + [0] * (1 + len(text_ids))
    assert got["attention_mask"] == [1] * len(got["input_ids"])
    assert got["pixel_values"].shape == (1, 3, CROP, CROP)
    # the same as tensors; other image id ranges, token counts and special-token settings
    for kwargs in ({}, {"first_image_token_id": 50}, {"num_image_tokens": 7}, {"add_eos_token": True},
                   {"add_special_tokens": False}, {"add_special_tokens": False, "add_eos_token": True}):
        for tensors in (None, "pt"):
            got = _check(hf, mv, text="  a photo of  ", images=IMAGES[1], return_tensors=tensors,
                         **{"num_image_tokens": N, **kwargs})
            if tensors == "pt":
                mask = got["image_embeds_position_mask"].bool()
                first = kwargs.get("first_image_token_id", tok.unk_token_id + 1)
                count = kwargs.get("num_image_tokens", N)
                assert got["input_ids"][mask].tolist() == list(range(first, first + count)), kwargs


@pytest.mark.parametrize("padding", [False, True, "longest", ("max_length", 40)])
def test_batches(kosmos2, padding):
    """Prompts of different lengths, with images (always padded to the longest row, or to max_length), and
    without (padded as the tokenizer pads), on the tokenizer's side."""
    hf, mv, _ = kosmos2
    kwargs = {"padding": padding} if not isinstance(padding, tuple) else {"padding": padding[0],
                                                                           "max_length": padding[1]}
    prompts = ["<grounding>An image of", "a longer prompt, with more words", "x"]
    got = _check(hf, mv, text=prompts, images=IMAGES, num_image_tokens=N, return_tensors="pt", **kwargs)
    pads = got["attention_mask"] == 0
    assert pads.any() and (got["input_ids"][pads] == mv.tokenizer.pad_token_id).all()
    assert not (got["image_embeds_position_mask"].bool() & pads).any()
    real_first = got["attention_mask"][:, 0].bool()
    assert real_first.all() == (mv.tokenizer.padding_side == "right")
    _check(hf, mv, text=prompts, images=IMAGES, num_image_tokens=N, **kwargs)   # lists
    if padding:
        _check(hf, mv, text=prompts, return_tensors="pt", **kwargs)
    _check(hf, mv, text=prompts, **kwargs)


@pytest.mark.parametrize("padding", [False, True, "max_length"])
def test_truncation(kosmos2, padding):
    """truncation=True cuts the prompts to max_length (the image tokens are kept before the text)."""
    hf, mv, _ = kosmos2
    prompts = ["<grounding>An image of", "a longer prompt, with more words", "x"]
    got = _check(hf, mv, text=prompts, images=IMAGES, num_image_tokens=N, return_tensors="pt", truncation=True,
                 padding=padding, max_length=12)
    assert got["input_ids"].shape[1] == 12 and got["image_embeds_position_mask"].sum() == 3 * N
    _check(hf, mv, text=prompts, truncation=True, padding=padding or True, max_length=5, return_tensors="pt")


def test_one_prompt_is_not_padded_with_an_image(kosmos2):
    hf, mv, _ = kosmos2
    got = _check(hf, mv, text="a cat", images=IMAGES[0], padding="max_length", max_length=30, num_image_tokens=N)
    assert len(got["input_ids"]) < 30
    _check(hf, mv, text="a cat", padding="max_length", max_length=30)     # without one it is
    _check(hf, mv, text=["a cat"], images=[IMAGES[0]], padding="max_length", max_length=30, num_image_tokens=N)


def test_text_alone_and_images_alone(kosmos2):
    hf, mv, _ = kosmos2
    got = _check(hf, mv, text="<grounding><phrase>a dog</phrase> runs", bboxes=[(0.25, 0.25, 0.75, 1.0)])
    assert "image_embeds_position_mask" not in got
    _check(hf, mv, text=["two", "three words here"], padding=True, return_tensors="pt")
    _check(hf, mv, images=IMAGES, return_tensors="pt")
    _check(hf, mv, images=IMAGES[2])


# -- boxes -------------------------------------------------------------------------------------------------

def test_boxes_are_written_after_their_phrases(kosmos2):
    hf, mv, _ = kosmos2
    text = "<grounding><phrase>a cat</phrase> and<phrase> two dogs</phrase> on<phrase> a sofa</phrase>"
    boxes = [(0.0, 0.5, 0.5, 1.0), [(0.0, 0.0, 0.25, 0.25), (40, 1000)], None]
    got = _check(hf, mv, text=text, images=IMAGES[0], bboxes=boxes, num_image_tokens=N)
    written = mv.decode(got["input_ids"])
    assert written.endswith("<grounding><phrase> a cat</phrase><object><patch_index_0512><patch_index_1007>"
                            "</object> and<phrase> two dogs</phrase><object><patch_index_0000><patch_index_0231>"
                            "</delimiter_of_multi_objects/><patch_index_0040><patch_index_1000></object> on"
                            "<phrase> a sofa</phrase>")
    assert written == hf.decode(got["input_ids"])
    # per prompt in a batch; an empty list of boxes for a phrase and an empty bboxes list write nothing
    _check(hf, mv, text=[text, "<phrase>x</phrase> y", "no phrase"], images=IMAGES, num_image_tokens=N,
           bboxes=[boxes, [[]], []], padding=True, return_tensors="pt")
    _check(hf, mv, text=[text, "<phrase>x</phrase>"], bboxes=[None, [(1, 2)]], padding=True)


_WORDS = st.sampled_from(["a cat", "two dogs", " the sofa ", "ünïcödé", "red", "x"])
_COORD = st.floats(0, 1, allow_nan=False)


@st.composite
def _box(draw):
    if draw(st.booleans()):
        return tuple(draw(st.integers(0, 1023)) for _ in range(2))
    x0, x1 = sorted(draw(st.tuples(_COORD, _COORD).filter(lambda p: p[0] != p[1])))
    y0, y1 = sorted(draw(st.tuples(_COORD, _COORD).filter(lambda p: p[0] != p[1])))
    return (x0, y0, x1, y1)


_ENTRY = st.one_of(st.none(), _box(), st.lists(_box(), max_size=3))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.tuples(_WORDS, _WORDS, _ENTRY), max_size=3), min_size=1, max_size=3),
       st.booleans(), st.booleans())
def test_random_prompts_and_boxes(kosmos2, prompts, grounding, with_images):
    hf, mv, _ = kosmos2
    texts = [("<grounding>" if grounding else "") + "".join(f"{before}<phrase>{p}</phrase>" for before, p, _ in parts)
             for parts in prompts]
    bboxes = [[entry for _, _, entry in parts] for parts in prompts]
    images = IMAGES[:len(texts)] if with_images else None
    _check(hf, mv, text=texts, images=images, bboxes=bboxes, num_image_tokens=N, padding=True, return_tensors="pt")
    _check(hf, mv, text=texts[0], images=images and images[0], bboxes=bboxes[0], num_image_tokens=N)


def test_a_smaller_grid(tmp_path):
    """num_patch_index_tokens from processor_config.json: 16 patch tokens, a 4 x 4 grid for the boxes; the
    generated boxes are read back on the same grid."""
    hf, mv = _both(_folder(tmp_path, num_patch_index_tokens=16))
    assert mv.num_patch_index_tokens == 16 and mv.num_patches_per_side == 4
    assert mv.tokenizer.get_vocab() == hf.tokenizer.get_vocab()
    got = _check(hf, mv, text="<phrase>a cat</phrase>", images=IMAGES[0], num_image_tokens=N,
                 bboxes=[(0.25, 0.5, 0.75, 1.0)])
    text = mv.decode(got["input_ids"])
    assert text.endswith("<phrase> a cat</phrase><object><patch_index_0009><patch_index_0014></object>")
    assert mv.post_process_generation(text) == ("a cat", [("a cat", (0, 5), [(0.375, 0.625, 0.625, 0.875)])])


# -- generated text ------------------------------------------------------------------------------------------

def test_post_process_generation(kosmos2):
    hf, mv, _ = kosmos2
    generated = ("<image>" * 5 + "</image><grounding> An image of<phrase> a snowman</phrase><object>"
                 "<patch_index_0044><patch_index_0863></object> warming himself by<phrase> a fire</phrase>"
                 "<object><patch_index_0005><patch_index_0911></object>.")
    assert mv.post_process_generation(generated) == hf.post_process_generation(generated)
    assert mv.post_process_generation(generated, cleanup_and_extract=False) == \
        hf.post_process_generation(generated, cleanup_and_extract=False)
    rows = mv(text=["<grounding><phrase>a cat</phrase>", "An image of"], images=IMAGES[:2], num_image_tokens=N,
              bboxes=[[(0.0, 0.0, 0.5, 0.5)], None], return_tensors="pt")["input_ids"]
    for skip in (True, False):
        assert mv.post_process_image_text_to_text(rows, skip_special_tokens=skip) == \
            hf.post_process_image_text_to_text(rows, skip_special_tokens=skip)


# -- saving --------------------------------------------------------------------------------------------------

def test_save_pretrained_round_trips(kosmos2, tmp_path):
    import transformers

    hf, mv, _ = kosmos2
    mv.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "processor_config.json").read_text())
    assert config["processor_class"] == "Kosmos2Processor" and config["num_patch_index_tokens"] == 1024
    kwargs = dict(text=["<grounding><phrase>a cat</phrase>", "An image of"], images=IMAGES[:2], num_image_tokens=N,
                  bboxes=[[(0.0, 0.0, 0.5, 0.5)], None], return_tensors="pt")
    expected = hf(**kwargs)
    assert_same_inputs(Kosmos2Processor.from_pretrained(tmp_path)(**kwargs), expected)
    assert_same_inputs(dict(transformers.Kosmos2Processor.from_pretrained(str(tmp_path), backend="pil")(**kwargs)), expected)


# -- the model on the processor's inputs ------------------------------------------------------------------------

def test_logits_equal_on_the_processors_inputs(kosmos2, tmp_path):
    """The tiny Kosmos-2 (its vocabulary the tokenizer's) reads minivlm's inputs to Transformers' logits on
    Transformers' inputs (tests/test_kosmos2.py's float32 tolerance)."""
    import minivlm
    from minivlm.tools import tiny

    hf_proc, mv_proc, _ = kosmos2
    config = tiny.kosmos2()
    config["text_config"]["vocab_size"] = len(mv_proc.tokenizer)
    hf = _kosmos2.hf_model(transformers_config(config))
    model = minivlm.from_pretrained(save(hf, tmp_path / "model"))
    kwargs = dict(text=["<grounding><phrase> a cat</phrase> sits on<phrase> a sofa</phrase>", "An image of"],
                  images=IMAGES[:2], bboxes=[[(0.0, 0.5, 0.5, 1.0), None], None], num_image_tokens=N,
                  padding=True, return_tensors="pt")
    with torch.no_grad():
        expected = hf(**hf_proc(**kwargs)).logits
        inputs = mv_proc(**kwargs)
        got = model(**inputs).logits
    assert (inputs["attention_mask"] == 0).any()
    assert_close_rel(got, expected, "logits", F32_REL, inputs["attention_mask"])


# -- bad input ---------------------------------------------------------------------------------------------------

def test_bad_input(kosmos2):
    _, mv, _ = kosmos2
    one = dict(images=IMAGES[0], num_image_tokens=N)
    cases = [
        (ValueError, "give text, images or both", {}),
        (ValueError, r"2 prompt\(s\) and 1 image\(s\) were given; Kosmos-2 reads one image per prompt",
         dict(text=["a", "b"], images=[IMAGES[0]])),
        (ValueError, r"1 prompt\(s\) and 2 image\(s\)", dict(text="a", images=IMAGES[:2])),
        (TypeError, "text must be a string or a non-empty list of strings", dict(text=3)),
        (TypeError, "text must be a string or a non-empty list of strings", dict(text=["a", None])),
        (TypeError, r"images\[0\] must be a PIL.Image.Image, got ndarray", dict(text="a", images=np.zeros((4, 4, 3)))),
        (ValueError, r"bboxes\[0\] must be a tuple \(x0, y0, x1, y1\).*got \(0.1, 0.2, 0.3\)",
         dict(text="<phrase>a</phrase>", bboxes=[(0.1, 0.2, 0.3)])),
        (ValueError, r"bboxes\[0\]\[0\] must be a tuple .*a list holds several boxes of one phrase.*got 0.1",
         dict(text="<phrase>a</phrase>", bboxes=[[0.1, 0.2, 0.3, 0.4]])),
        (ValueError, r"bboxes\[0\]\[1\] must be a tuple", dict(text="<phrase>a</phrase>",
                                                               bboxes=[[(0.1, 0.2, 0.3, 0.4), None]])),
        (ValueError, r"bboxes\[0\] = \(0.1, 0.2, 1.5, 0.4\) must have 0 <= x0 < x1 <= 1",
         dict(text="<phrase>a</phrase>", bboxes=[(0.1, 0.2, 1.5, 0.4)])),
        (ValueError, r"must have 0 <= x0 < x1 <= 1", dict(text="<phrase>a</phrase>", bboxes=[(-0.1, 0.2, 0.5, 0.4)])),
        (ValueError, r"must have 0 <= x0 < x1 <= 1 and 0 <= y0 < y1 <= 1",
         dict(text="<phrase>a</phrase>", bboxes=[(0.1, 0.5, 0.3, 0.4)])),
        (ValueError, r"must be a tuple", dict(text="<phrase>a</phrase>", bboxes=[(0.1, "0.2", 0.3, 0.4)])),
        (ValueError, r"bboxes\[0\] = \(0, 1024\) as patch indices must be two ints in \[0, 1024\)",
         dict(text="<phrase>a</phrase>", bboxes=[(0, 1024)])),
        (ValueError, r"as patch indices must be two ints", dict(text="<phrase>a</phrase>", bboxes=[(0.5, 0.7)])),
        (ValueError, r"as patch indices must be two ints", dict(text="<phrase>a</phrase>", bboxes=[(True, 3)])),
        (TypeError, r"bboxes must be None or a list with one entry per <phrase>",
         dict(text="<phrase>a</phrase>", bboxes=(0.1, 0.2, 0.3, 0.4))),
        (TypeError, r"bboxes\[1\] must be None or a list", dict(text=["a", "b"], bboxes=[None, (1, 2)])),
        (TypeError, r"bboxes must be a list with one entry per prompt", dict(text=["a"], bboxes=((1, 2),))),
        (ValueError, r"2 prompt\(s\) and 1 bboxes entries", dict(text=["a", "b"], bboxes=[None])),
        (ValueError, r"prompt 0 holds 2 <phrase>...</phrase> pair\(s\) and its bboxes list has 1 entries",
         dict(text="<phrase>a</phrase> <phrase>b</phrase>", bboxes=[(1, 2)])),
        (ValueError, r"prompt 1 holds 0 <phrase>", dict(text=["a", "b"], bboxes=[None, [(1, 2)]])),
        (ValueError, "bboxes belong to the phrases of a text; no text was given", dict(images=IMAGES[0], bboxes=[])),
        (ValueError, "num_image_tokens must be a positive int .*got 0", dict(text="a", images=IMAGES[0],
                                                                             num_image_tokens=0)),
        (ValueError, "num_image_tokens must be a positive int .*got '4'", dict(text="a", num_image_tokens="4")),
        (ValueError, "first_image_token_id must be None or a non-negative int, got -1",
         dict(text="a", first_image_token_id=-1, **one)),
        (ValueError, "padding must be False, True, 'longest' or 'max_length', got 'yes'",
         dict(text="a", padding="yes")),
        (ValueError, "padding='max_length' needs max_length", dict(text=["a"], padding="max_length", **one)),
        (TypeError, "add_eos_token must be a bool, got 'yes'", dict(text="a", add_eos_token="yes")),
        (TypeError, "add_special_tokens must be a bool, got 1", dict(text="a", add_special_tokens=1)),
        (TypeError, "truncation must be a bool, got 'longest_first'", dict(text="a", truncation="longest_first")),
        (ValueError, "return_tensors must be None or 'pt', got 'np'", dict(text="a", return_tensors="np")),
        (ValueError, r"prompt 0 is 5 tokens long after truncation, which cuts into its 4 image tokens",
         dict(text="a", truncation=True, max_length=5, **one)),
        (ValueError, r"a prompt is \d+ tokens long, more than max_length=12; pass truncation=True",
         dict(text=["a long prompt of several words", "b"], images=IMAGES[:2], padding="max_length",
              max_length=12, num_image_tokens=N)),
        (ValueError, r"a prompt is \d+ tokens long, more than max_length=3",
         dict(text="a long prompt of several words", max_length=3)),
        (ValueError, r"the rows have different lengths .* needs padding=True",
         dict(text=["a", "two words"], return_tensors="pt")),
    ]
    for error, message, kwargs in cases:
        with pytest.raises(error, match=message):
            mv(**kwargs)


def test_bad_settings(kosmos2):
    _, mv, _ = kosmos2
    with pytest.raises(ValueError, match="num_patch_index_tokens must be a positive int .*got 0"):
        Kosmos2Processor(mv.tokenizer, mv.image_processor, num_patch_index_tokens=0)
    with pytest.raises(TypeError, match=r"unknown settings \['num_image_token'\]"):
        Kosmos2Processor(mv.tokenizer, mv.image_processor, num_image_token=64)
    with pytest.raises(ValueError, match="images were given and the processor has no image processor"):
        Kosmos2Processor(mv.tokenizer)(text="a", images=IMAGES[0])


def test_a_tokenizer_without_bos_or_unk(kosmos2):
    """The BOS starts every prompt and the image ids default to the one after <unk>: without them, say so."""
    _, mv, _ = kosmos2
    bare = Kosmos2Processor(Tokenizer(mv.tokenizer.backend, special_tokens={"pad_token": "<pad>"}), mv.image_processor)
    with pytest.raises(ValueError, match="the tokenizer has no bos_token to start the prompt with"):
        bare(text="a")
    with pytest.raises(ValueError, match="the tokenizer has no unk_token, .*pass first_image_token_id"):
        bare(text="a", images=IMAGES[0], add_special_tokens=False, num_image_tokens=N)
    got = bare(text="a", images=IMAGES[0], add_special_tokens=False, num_image_tokens=N, first_image_token_id=9)
    assert got["input_ids"][1:1 + N] == list(range(9, 9 + N))
