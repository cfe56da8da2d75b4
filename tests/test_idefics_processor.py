"""minivlm.processing.IdeficsProcessor against Transformers' IdeficsProcessor on the same folders, which
Transformers wrote (a Llama tokenizer with IDEFICS's added tokens, IdeficsImageProcessorPil's settings):
input_ids, attention_mask and image_attention_mask equal (integers), pixel_values equal (torch.equal:
the same PIL steps in the same precision); the forms of input Transformers accepts; the errors; and the
tiny IDEFICS model reading minivlm's inputs to Transformers' logits on Transformers' inputs."""
import json

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import _idefics
import _tokenizers
from helpers import assert_same_inputs
from minivlm.processing import IdeficsImageProcessor, IdeficsProcessor

# The instruct checkpoints' tokenizers also hold <end_of_utterance>; the base ones do not.
ADDED = {"base": ["<fake_token_around_image>", "<image>"],
         "instruct": ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]}


def _image(h, w, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


def _transformers_processor(folder):
    import transformers

    return transformers.IdeficsProcessor(
        image_processor=transformers.IdeficsImageProcessorPil.from_pretrained(str(folder)),
        tokenizer=transformers.AutoTokenizer.from_pretrained(str(folder)))


def _build(root, kind):
    import transformers

    tok = _tokenizers.llama(root / "tok")
    tok.add_special_tokens({"additional_special_tokens": ADDED[kind]})
    images = transformers.IdeficsImageProcessorPil(image_size=_idefics.SIZE)
    transformers.IdeficsProcessor(image_processor=images, tokenizer=tok).save_pretrained(root / kind)
    return root / kind


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("idefics")
    return {kind: _build(root, kind) for kind in ADDED}


@pytest.fixture(scope="module")
def pairs(folders):
    """{kind: (Transformers' processor, minivlm's)} on the same folder."""
    return {kind: (_transformers_processor(f), IdeficsProcessor.from_pretrained(f)) for kind, f in folders.items()}


def _both(pair, what="", **kwargs):
    hf, mv = pair
    got = mv(**kwargs)
    assert_same_inputs(got, hf(**kwargs), what or kwargs)
    return got


A, B, C, D, E = (_image(20, 30, 1), _image(10, 10, 2, "RGBA"), _image(5, 40, 3, "L"), _image(50, 25, 4),
                 _image(16, 16, 5, "P"))


def test_the_folder_transformers_writes(folders, pairs):
    """Transformers writes the tokenizer and processor_config.json with the image settings only; minivlm
    reads the same tokenizer (left padding, the added tokens after the base vocabulary) and settings."""
    files = sorted(p.name for p in folders["instruct"].iterdir())
    assert files == ["processor_config.json", "tokenizer.json", "tokenizer_config.json"]
    config = json.loads((folders["instruct"] / "processor_config.json").read_text())
    assert set(config) == {"image_processor", "processor_class"}
    for kind, (hf, mv) in pairs.items():
        assert mv.tokenizer.padding_side == hf.tokenizer.padding_side == "left"
        assert mv.image_token_id == hf.image_token_id == hf.tokenizer.convert_tokens_to_ids("<image>")
        for token in ADDED[kind] + ["<pad>"]:
            assert mv.tokenizer.convert_tokens_to_ids(token) == hf.tokenizer.convert_tokens_to_ids(token) >= 400
        assert isinstance(mv.image_processor, IdeficsImageProcessor)
        assert mv.image_processor.size == hf.image_processor.size == {"height": 16, "width": 16}
    # Transformers 5.23 never finds <end_of_utterance> among the "trained with" tokens (see the module
    # docstring), so its default (None) is off even on the instruct tokenizer, and so is minivlm's.
    assert pairs["instruct"][0].tokenizer_was_trained_with_end_of_utterance_token is False


INTERLEAVED = [["User:", A, "what is this?", "and this", B, C, "hello </s> world", D, "x"],
               ["only text, no image at all"],
               [E],
               [A, "a photo", B, "two dogs play in the park, don't they?"]]


@pytest.mark.parametrize("eou", [None, False, True])
@pytest.mark.parametrize("eos", [False, True])
def test_interleaved_batches(pairs, eou, eos):
    """Several images per sample (consecutive ones sharing a <fake>), a sample without images, samples of
    different lengths (left padding), a </s> in the text that ends a document, text before the first image."""
    for kind in pairs:
        if eou and kind == "base":
            continue   # refused (no <end_of_utterance> token): test_bad_input
        got = _both(pairs[kind], (kind, eou, eos), text=INTERLEAVED, add_end_of_utterance_token=eou,
                    add_eos_token=eos)
        assert got["pixel_values"].shape == (4, 4, 3, 16, 16)
        assert (got["attention_mask"] == 0).any() and (got["image_attention_mask"].sum(-1) == 0).any()
        assert got["image_attention_mask"][0].any(0).all()            # each of sample 0's images is seen
        assert (got["pixel_values"][1] == 0).all() and (got["pixel_values"][2, 1:] == 0).all()
    hf, mv = pairs["instruct"]
    ids = _both(pairs["instruct"], text=[INTERLEAVED[0]], add_end_of_utterance_token=True)["input_ids"][0]
    short = {"<fake_token_around_image>": "F", "<image>": "I", "<end_of_utterance>": "E", "<s>": "S", "</s>": "/"}
    tokens = "".join(short.get(t, "") for t in mv.tokenizer.convert_ids_to_tokens(ids.tolist()))
    # <s>, A, E between the two texts, B and C sharing a <fake>, the </s> in the text, D.
    assert tokens == "SFIFEFIFIF/FIF"


def test_padding_side_truncation_and_max_length(pairs):
    pair = pairs["instruct"]
    for side in ("left", "right"):
        _both(pair, side, text=INTERLEAVED, padding_side=side)
    _both(pair, text=INTERLEAVED, padding="max_length", max_length=80)
    # Truncation that cuts <image> tokens: the images they stood for become all-zero in pixel_values.
    got = _both(pair, text=INTERLEAVED, truncation=True, max_length=12)
    assert got["input_ids"].shape[1] == 12 and (got["pixel_values"][0, 2:] == 0).all()
    assert got["pixel_values"][0, :2].abs().sum() > 0


def test_text_only(pairs):
    """No image in the batch: one all-zero image per sample and an all-False bool (B, T, 1) mask."""
    got = _both(pairs["base"], text=[["a photo of a cat"], ["two", "dogs"]])
    assert got["image_attention_mask"].dtype == torch.bool and got["image_attention_mask"].shape[-1] == 1
    assert (got["pixel_values"] == 0).all() and got["pixel_values"].shape == (2, 1, 3, 16, 16)


def test_one_sample_forms(pairs):
    """One sample given flat, a string (a sample of one text), a list of strings (one sample, not a batch)."""
    pair = pairs["instruct"]
    _both(pair, text=["User:", A, "Describe it.", D])
    # A string alone is one sample of that text. (Transformers 5.23 reads it as a sample of characters,
    # each stripped of spaces, so that "a photo" comes out as "aphoto"; its list form is what it means.)
    hf, mv = pair
    assert_same_inputs(mv(text="a photo of a cat"), hf(text=["a photo of a cat"]))
    assert not torch.equal(hf(text="a photo of a cat")["input_ids"], hf(text=["a photo of a cat"])["input_ids"])
    got = _both(pair, text=["a photo", "of a cat"], add_end_of_utterance_token=True)
    assert got["input_ids"].shape[0] == 1
    _both(pair, text=[("a tuple sample", A)])


def test_images_beside_text(pairs):
    """images= with plain prompts: a lone image before its text, a list of images after it."""
    pair = pairs["instruct"]
    _both(pair, text=["a cat", "two dogs play"], images=[A, B])
    _both(pair, text="a cat", images=A)
    got = _both(pair, text=["a cat", "two dogs play", "none"], images=[[A, B], [C], []])
    assert got["pixel_values"].shape[1] == 2
    hf, mv = pair
    assert mv.tokenizer.convert_ids_to_tokens(got["input_ids"][1].tolist())[-4:] == [
        "y", "<fake_token_around_image>", "<image>", "<fake_token_around_image>"]


def test_instruct_prompt(pairs):
    """The instruct checkpoints' format: "User:", the image, the question, <end_of_utterance>, "\\nAssistant:",
    with the <end_of_utterance> written in the text (add_end_of_utterance_token=False), and the same prompt
    with the processor adding it between each two texts that follow each other."""
    pair = pairs["instruct"]
    hf, mv = pair
    written = [["User:", A, "What is this?<end_of_utterance>", "\nAssistant: a cat.<end_of_utterance>",
                "\nUser:", B, "And this?<end_of_utterance>", "\nAssistant:"]]
    got = _both(pair, text=written, add_end_of_utterance_token=False)
    eou = mv.tokenizer.convert_tokens_to_ids("<end_of_utterance>")
    assert (got["input_ids"] == eou).sum() == 3
    assert mv.decode(got["input_ids"][0]) == hf.decode(got["input_ids"][0])
    assert mv.decode(got["input_ids"][0]).endswith("<end_of_utterance>\nAssistant:")
    added = [["User:", A, "What is this?", "\nAssistant: a cat.", "\nUser:", B, "And this?", "\nAssistant:"]]
    got_added = _both(pair, text=added, add_end_of_utterance_token=True)
    assert_same_inputs(got_added, got)    # the processor puts it where the instruct prompt writes it


def test_images_given_as_paths(pairs, tmp_path):
    """A pathlib.Path in a sample is an image, opened with PIL (strings are always text)."""
    hf, mv = pairs["base"]
    A.save(tmp_path / "a.png")
    assert_same_inputs(mv(text=[["User:", tmp_path / "a.png", "hi"]]), hf(text=[["User:", A, "hi"]]))


@settings(max_examples=25, deadline=None)
@given(st.lists(st.lists(st.one_of(st.sampled_from(["a cat", " two dogs ", "", "?", "don't", "\n", "ü"]),
                                   st.integers(0, 4)), min_size=1, max_size=6), min_size=1, max_size=3),
       st.sampled_from([None, False, True]), st.booleans(), st.sampled_from(["left", "right"]))
def test_random_layouts(pairs, layout, eou, eos, side):
    """Any sample layout of texts and images (ints: which picture), any batch of them."""
    pictures = [A, B, C, D, E]
    text = [[pictures[x] if isinstance(x, int) else x for x in sample] for sample in layout]
    _both(pairs["instruct"], text=text, add_end_of_utterance_token=eou, add_eos_token=eos, padding_side=side)


def test_save_pretrained_round_trips(pairs, tmp_path):
    hf, mv = pairs["instruct"]
    mv.save_pretrained(tmp_path)
    expected = hf(text=INTERLEAVED)
    assert_same_inputs(IdeficsProcessor.from_pretrained(tmp_path)(text=INTERLEAVED), expected)
    assert_same_inputs(_transformers_processor(tmp_path)(text=INTERLEAVED), expected)


def test_logits_equal_on_the_processors_inputs(pairs, tmp_path):
    """The tiny IDEFICS model, with the tokenizer's added tokens (pad, fake, image, end of utterance) in its
    additional vocabulary as in the hub checkpoints, reads minivlm's inputs to the logits Transformers'
    model gives on Transformers' inputs."""
    import minivlm
    from helpers import save, transformers_config
    from minivlm.tools import tiny

    hf_proc, mv_proc = pairs["instruct"]
    base = 400                                                    # the Llama tokenizer's base vocabulary
    assert min(mv_proc.tokenizer.convert_tokens_to_ids(["<pad>"] + ADDED["instruct"])) == base
    config = tiny.idefics(additional_vocab_size=len(mv_proc.tokenizer) - base) | {"vocab_size": base}
    hf = _idefics.hf_model(transformers_config(config))
    save(hf, tmp_path / "model")
    model = minivlm.from_pretrained(tmp_path / "model")
    text = [INTERLEAVED[0], INTERLEAVED[3], ["User:", C, "What?<end_of_utterance>", "\nAssistant:"]]
    with torch.no_grad():
        expected = hf(**hf_proc(text=text)).logits
        inputs = mv_proc(text=text)
        got = model(**inputs).logits
    assert (inputs["input_ids"] >= base).any()
    real = inputs["attention_mask"].bool()
    scale = expected[real].abs().max()
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * scale    # tests/test_idefics.py's F32_REL


def test_bad_input(folders, pairs, tmp_path):
    _, mv = pairs["instruct"]
    _, base = pairs["base"]
    with pytest.raises(TypeError, match=r"text\[0\]\[1\] must be a string or a PIL image, got int"):
        mv(text=[["a", 3]])
    with pytest.raises(TypeError, match=r"text\[0\]\[0\] must be a string or a PIL image, got ndarray"):
        mv(text=[[np.zeros((4, 4, 3), dtype=np.uint8)]])
    with pytest.raises(ValueError, match=r"text\[1\] is an empty sample"):
        mv(text=[["a"], []])
    with pytest.raises(TypeError, match=r"text must be a non-empty list of samples"):
        mv(text=[])
    with pytest.raises(TypeError, match=r"text must be a non-empty list of samples .* got 3"):
        mv(text=3)
    with pytest.raises(TypeError, match="text is required"):
        mv(images=[A])
    with pytest.raises(TypeError, match=r"text\[1\] must be a sample .* got str"):
        mv(text=[["a", A], "b"])
    with pytest.raises(ValueError, match="the images go either in the samples of text or in images=, not both"):
        mv(text=[["a", A]], images=[B])
    with pytest.raises(ValueError, match=r"2 text\(s\) and 1 image entries"):
        mv(text=["a", "b"], images=[A])
    with pytest.raises(TypeError, match="not a mix"):
        mv(text=["a", "b"], images=[A, [B]])
    with pytest.raises(ValueError, match=r"text holds <image>; give the PIL images instead"):
        mv(text="a <image> b", images=A)
    with pytest.raises(ValueError, match=r"text\[1\] is a URL"):
        mv(text=["a", "http://example.com/b.png"], images=[A, B])
    with pytest.raises(ValueError, match=r"text\[0\]\[1\] holds <fake_token_around_image>"):
        mv(text=[[A, "<fake_token_around_image>"]])
    with pytest.raises(ValueError, match=r"text\[0\]\[1\] is a URL .*minivlm downloads nothing"):
        mv(text=[["User:", " https://example.com/cat.jpg", "hi"]])
    with pytest.raises(ValueError, match="add_end_of_utterance_token=True, but the tokenizer has no <end_of_utterance>"):
        base(text=["a", "b"], add_end_of_utterance_token=True)
    with pytest.raises(TypeError, match="add_eos_token must be a bool, got 'yes'"):
        mv(text="a", add_eos_token="yes")
    with pytest.raises(TypeError, match="add_end_of_utterance_token must be a bool or None, got 1"):
        mv(text="a", add_end_of_utterance_token=1)
    with pytest.raises(ValueError, match="return_tensors must be 'pt'"):
        mv(text="a", return_tensors="np")
    with pytest.raises(ValueError, match=r"different lengths .* padding=False"):
        mv(text=[["a"], ["a photo of a cat"]], padding=False)
    with pytest.raises(TypeError, match=r"images\[0\]\[0\] must be a PIL image or a path, got ndarray"):
        mv(text=["a"], images=[[np.zeros((4, 4, 3))]])
    # A tokenizer without IDEFICS's tokens, or without BOS, cannot be an IDEFICS processor; without EOS it
    # cannot end the samples with it.
    from minivlm.processing import Tokenizer

    tok = Tokenizer.from_pretrained(folders["base"])
    tok.eos_token = None
    with pytest.raises(ValueError, match="add_eos_token=True, but the tokenizer has no eos_token"):
        IdeficsProcessor(tok)(text="a", add_eos_token=True)
    tok.bos_token = None
    with pytest.raises(ValueError, match="the tokenizer has no bos_token"):
        IdeficsProcessor(tok)

    _tokenizers.llama(tmp_path / "plain")
    with pytest.raises(ValueError, match="the tokenizer has no <image> token"):
        IdeficsProcessor(Tokenizer.from_pretrained(tmp_path / "plain"))
