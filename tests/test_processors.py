"""The LLaVA-NeXT, BLIP-2 and AltCLIP processors (minivlm.processing) against Transformers' on the same
folders, which Transformers' processors wrote (tokenizer, image settings, processor settings): token ids
and masks equal (integers), pixel values equal (torch.equal: the same PIL steps in the same precision), and
the model run on minivlm's inputs giving Transformers' logits on its own."""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import _blip2
import _llava
import _tokenizers
from helpers import assert_same_inputs, transformers_config
from minivlm.processing import AltCLIPProcessor, Blip2Processor, LlavaNextProcessor


def _image(h, w, seed=0, mode="RGB"):
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).convert(mode)


# -- LLaVA-NeXT ----------------------------------------------------------------------------------------

def _llava_folder(root, *, strategy="default", extra=1, model_type=None, padding_side=None):
    import json

    import transformers

    options = {} if padding_side is None else {"padding_side": padding_side}
    tok = _tokenizers.llama(root / "tok", **options)
    tok.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    images = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": _llava.CROP}, crop_size={"height": _llava.CROP, "width": _llava.CROP},
        image_grid_pinpoints=_llava.PINPOINTS)
    processor = transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok,
                                                patch_size=_llava.CONFIG["vision_config"]["patch_size"],
                                                vision_feature_select_strategy=strategy,
                                                num_additional_image_tokens=extra)
    folder = root / "llava"
    processor.save_pretrained(folder)
    if model_type:   # a config.json beside it, as in a checkpoint folder (it decides the tokenizer class)
        (folder / "config.json").write_text(json.dumps({"model_type": model_type}))
    return folder


@pytest.fixture(scope="module")
def llava(tmp_path_factory):
    import transformers

    folder = _llava_folder(tmp_path_factory.mktemp("llava"), model_type="llava_next")
    return transformers.LlavaNextProcessor.from_pretrained(str(folder), backend="pil"), LlavaNextProcessor.from_pretrained(folder)


_SIZES = [(16, 16), (20, 50), (50, 20), (33, 33), (7, 90), (64, 48)]


def test_llava_next_one_image(llava):
    hf, mv = llava
    for i, (h, w) in enumerate(_SIZES):
        image = _image(h, w, seed=i)
        prompt = "USER: <image>\nWhat is shown here? ASSISTANT:"
        assert_same_inputs(mv(text=prompt, images=image, return_tensors="pt"),
                     hf(text=prompt, images=image, return_tensors="pt"), (h, w))


@pytest.mark.parametrize("side", [None, "left", "right"])
def test_llava_next_batches_of_prompts_with_several_images(llava, side):
    hf, mv = llava
    prompts = ["<image> <image> compare the two", "a photo: <image>", "no image here, only text"]
    images = [_image(20, 50, 1), _image(64, 48, 2), _image(33, 33, 3)]
    kwargs = {} if side is None else {"padding_side": side}
    assert_same_inputs(mv(text=prompts, images=images, padding=True, return_tensors="pt", **kwargs),
                 hf(text=prompts, images=images, padding=True, return_tensors="pt", **kwargs), side)
    # the images may also come as one list per prompt
    per_prompt = [images[:2], images[2:], []]
    assert_same_inputs(mv(text=prompts, images=per_prompt, padding=True, return_tensors="pt"),
                 hf(text=prompts, images=images, padding=True, return_tensors="pt"))


@settings(max_examples=15, deadline=None)
@given(st.lists(st.tuples(st.integers(4, 80), st.integers(4, 80)), min_size=1, max_size=3),
       st.lists(st.sampled_from(["a cat", "What?", " ", "two dogs, one ball"]), min_size=1, max_size=3))
def test_llava_next_random_sizes_and_prompts(llava, sizes, words):
    hf, mv = llava
    images = [_image(h, w, seed=h * 100 + w) for h, w in sizes]
    prompt = " ".join(f"{words[i % len(words)]} <image>" for i in range(len(images)))
    assert_same_inputs(mv(text=[prompt, words[0]], images=images, padding=True, return_tensors="pt"),
                 hf(text=[prompt, words[0]], images=images, padding=True, return_tensors="pt"))


@pytest.mark.parametrize("strategy, extra", [("default", 0), ("full", 0), ("full", 1)])
def test_llava_next_token_count_settings(tmp_path, strategy, extra):
    import transformers

    folder = _llava_folder(tmp_path, strategy=strategy, extra=extra)
    hf, mv = transformers.LlavaNextProcessor.from_pretrained(str(folder), backend="pil"), LlavaNextProcessor.from_pretrained(folder)
    assert mv.tokenizer.tokenizer_class == type(hf.tokenizer).__name__ == "LlamaTokenizer"
    image = _image(20, 50)
    assert_same_inputs(mv(text="<image> hi", images=image, return_tensors="pt"),
                 hf(text="<image> hi", images=image, return_tensors="pt"))


def test_llava_next_logits_equal_on_the_processors_inputs(tmp_path, llava):
    """The tiny model reads minivlm's inputs to Transformers' logits on Transformers' inputs."""
    import minivlm
    from helpers import save

    hf_proc, mv_proc = llava
    config = _llava.CONFIG | {"image_token_index": mv_proc.image_token_id}
    config["text_config"] = config["text_config"] | {"vocab_size": len(mv_proc.tokenizer),
                                                     "pad_token_id": mv_proc.tokenizer.pad_token_id}
    hf = _llava.hf_model(transformers_config(config))
    save(hf, tmp_path / "model")
    model = minivlm.from_pretrained(tmp_path / "model")
    prompts = ["USER: <image>\nWhat is it? ASSISTANT:", "<image> a photo"]
    images = [_image(20, 50, 1), _image(33, 33, 2)]
    expected = hf(**hf_proc(text=prompts, images=images, padding=True, return_tensors="pt")).logits
    inputs = mv_proc(text=prompts, images=images, padding=True, return_tensors="pt")
    got = model(**inputs).logits
    real = inputs["attention_mask"].bool()
    # float32 on both sides through the same math in a different order: 1e-5 of the logits' scale
    # (F32_REL of tests/test_llava_next.py) covers the float32 rounding of a 2-layer model.
    scale = expected[real].abs().max()
    assert (got[real] - expected[real]).abs().max() <= 1e-5 * scale, float((got[real] - expected[real]).abs().max() / scale)


def test_llava_next_bad_input(llava):
    _, mv = llava
    with pytest.raises(ValueError, match=r"holds 2 <image> placeholder\(s\) and 1 image\(s\)"):
        mv(text="<image> <image>", images=_image(16, 16))
    with pytest.raises(ValueError, match=r"holds 0 <image> placeholder\(s\) and 1 image"):
        mv(text="no placeholder", images=_image(16, 16))
    with pytest.raises(TypeError, match="text must be a string or a non-empty list of strings"):
        mv(text=[3], images=_image(16, 16))
    with pytest.raises(TypeError, match="must be a PIL.Image.Image"):
        mv(text="<image>", images=np.zeros((4, 4, 3)))


# -- BLIP-2 ----------------------------------------------------------------------------------------

@pytest.fixture(scope="module", params=["opt", "t5"])
def blip2(request, tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("blip2")
    tok = _tokenizers.BUILDERS[request.param](root / "tok")
    images = transformers.BlipImageProcessorPil(size={"height": _blip2.IMAGE, "width": _blip2.IMAGE})
    transformers.Blip2Processor(image_processor=images, tokenizer=tok,
                                num_query_tokens=_blip2.NUM_QUERIES).save_pretrained(root / "p")
    return (request.param, transformers.Blip2Processor.from_pretrained(str(root / "p"), backend="pil"),
            Blip2Processor.from_pretrained(root / "p"))


def test_blip2_query_token_expansion(blip2):
    kind, hf, mv = blip2
    assert mv.image_token_id == hf.tokenizer.convert_tokens_to_ids("<image>")
    images = [_image(30, 40, 1), _image(64, 20, 2)]
    prompts = ["Question: what is this? Answer:", "a photo of"]
    for kwargs in ({}, {"padding": True}, {"padding": True, "padding_side": "left"},
                   {"padding": "max_length", "max_length": 20, "truncation": True}):
        tensors = {"return_tensors": "pt"} if kwargs else {}
        assert_same_inputs(mv(text=prompts, images=images, **kwargs, **tensors),
                     hf(text=prompts, images=images, **kwargs, **tensors), (kind, kwargs))
    # without a prompt (captioning), without images, one prompt as a string
    assert_same_inputs(mv(images=images, return_tensors="pt"), hf(images=images, return_tensors="pt"), kind)
    assert_same_inputs(mv(text=prompts, padding=True, return_tensors="pt"),
                 hf(text=prompts, padding=True, return_tensors="pt"), kind)
    assert_same_inputs(mv(text="a photo of", images=images[0]), hf(text="a photo of", images=images[0]), kind)


def test_blip2_adds_the_image_token_where_the_tokenizer_has_none(blip2, tmp_path):
    """A tokenizer without <image> gets it as a new special token, with the id Transformers gives it."""
    import transformers

    from minivlm.processing import BlipImageProcessor, Tokenizer

    kind, _, _ = blip2
    _tokenizers.BUILDERS[kind](tmp_path)
    hf = transformers.Blip2Processor(image_processor=transformers.BlipImageProcessorPil(),
                                     tokenizer=transformers.AutoTokenizer.from_pretrained(str(tmp_path)),
                                     num_query_tokens=3)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.backend.token_to_id("<image>") is None
    mv = Blip2Processor(tok, BlipImageProcessor(), num_query_tokens=3)
    image = _image(8, 8)
    assert_same_inputs(mv(text="a photo", images=image), hf(text="a photo", images=image))
    ids = mv(text="a photo", images=image)["input_ids"][0]
    assert mv.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True)


def test_blip2_bad_input(blip2):
    _, _, mv = blip2
    with pytest.raises(TypeError, match="text must be a string or a non-empty list of strings"):
        mv()
    with pytest.raises(ValueError, match="return_tensors='pt' needs padding=True"):
        mv(text=["a", "a photo of a cat"], images=[_image(8, 8), _image(8, 8)], return_tensors="pt")


# -- AltCLIP ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def altclip(tmp_path_factory):
    import transformers

    root = tmp_path_factory.mktemp("altclip")
    tok = _tokenizers.xlm_roberta(root / "tok")
    images = transformers.CLIPImageProcessorPil(size={"shortest_edge": 24}, crop_size={"height": 16, "width": 16})
    transformers.AltCLIPProcessor(image_processor=images, tokenizer=tok).save_pretrained(root / "p")
    return transformers.AltCLIPProcessor.from_pretrained(str(root / "p"), backend="pil"), AltCLIPProcessor.from_pretrained(root / "p")


def test_altclip_labels_and_images(altclip):
    hf, mv = altclip
    labels = ["a photo of a cat", "a photo of two dogs", "ünïcödé"]
    images = [_image(30, 40, 1), _image(64, 20, 2)]
    assert_same_inputs(mv(text=labels, images=images, padding=True, return_tensors="pt"),
                 hf(text=labels, images=images, padding=True, return_tensors="pt"))
    assert_same_inputs(mv(text=labels, padding=True, return_tensors="pt"), hf(text=labels, padding=True, return_tensors="pt"))
    assert_same_inputs(mv(images=images), hf(images=images, return_tensors="pt"))
    with pytest.raises(ValueError, match="give text, images or both"):
        mv()


# -- saving ----------------------------------------------------------------------------------------

def test_save_pretrained_round_trips(llava, blip2, altclip, tmp_path):
    """minivlm saves each processor; Transformers' processor and minivlm's read the folder back, and both
    give the inputs the original Transformers processor gives."""
    import json

    import transformers

    images = [_image(20, 50, 1), _image(33, 33, 2)]
    cases = [("llava", llava, transformers.LlavaNextProcessor, LlavaNextProcessor,
              dict(text=["<image> a", "b <image>"], images=images, padding=True)),
             ("blip2", blip2[1:], transformers.Blip2Processor, Blip2Processor,
              dict(text=["a photo of", "two"], images=images, padding=True)),
             ("altclip", altclip, transformers.AltCLIPProcessor, AltCLIPProcessor,
              dict(text=["a photo of", "two"], images=images, padding=True))]
    for name, (hf, mv), hf_class, mv_class, kwargs in cases:
        folder = tmp_path / name
        mv.save_pretrained(folder)
        config = json.loads((folder / "processor_config.json").read_text())
        assert config["processor_class"] == hf_class.__name__
        assert config["image_processor"]["image_processor_type"] == type(mv.image_processor).__name__
        expected = hf(**kwargs, return_tensors="pt")
        assert_same_inputs(mv_class.from_pretrained(folder)(**kwargs, return_tensors="pt"), expected, name)
        assert_same_inputs(dict(hf_class.from_pretrained(str(folder), backend="pil")(**kwargs, return_tensors="pt")), expected, name)


def test_images_given_as_paths(llava, tmp_path):
    """A path is opened with PIL (the same pixels as the opened image); a file that is not an image, or no
    file at all, is an error naming the path."""
    hf, mv = llava
    image = _image(20, 50, 1)
    image.save(tmp_path / "photo.png")
    assert_same_inputs(mv(text="<image> a", images=str(tmp_path / "photo.png"), return_tensors="pt"),
                 hf(text="<image> a", images=image, return_tensors="pt"))
    (tmp_path / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    with pytest.raises(ValueError, match=r"images\[0\] '.*broken.jpg' cannot be decoded as an image"):
        mv(text="<image>", images=tmp_path / "broken.jpg")
    with pytest.raises(FileNotFoundError, match=r"images\[0\] is '.*absent.png', which is not a file"):
        mv(text="<image>", images=str(tmp_path / "absent.png"))


def test_a_prompt_longer_than_the_positions(tmp_path):
    """A tokenizer with a model_max_length refuses a longer prompt, unless asked to truncate."""
    from minivlm.processing import Tokenizer

    _tokenizers.xlm_roberta(tmp_path, model_max_length=8)
    tok = Tokenizer.from_pretrained(tmp_path)
    assert tok.model_max_length == 8
    with pytest.raises(ValueError, match=r"a prompt is \d+ tokens long, more than the model's 8 positions"):
        tok("a photo of a cat sitting on a red sofa")
    assert len(tok("a photo of a cat sitting on a red sofa", truncation=True)["input_ids"]) == 8
