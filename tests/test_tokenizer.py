"""minivlm.processing.Tokenizer against Transformers' AutoTokenizer on the same folders: token ids and masks
equal (they are integers: equality is the only test), decoded text equal, on the four kinds of tokenizer
the five models use (tests/_tokenizers.py) and on folders whose tokenizer.json pipeline differs from what
the tokenizer class rebuilds (where Transformers ignores the file's normalizer and pre-tokenizer)."""
import json
import shutil

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import _tokenizers
from minivlm.processing import Tokenizer

KINDS = list(_tokenizers.BUILDERS)


def _edited(src, dst, edit, config=None):
    """A copy of a tokenizer folder with its tokenizer.json edited (and a config.json, where given)."""
    shutil.copytree(src, dst)
    spec = json.loads((dst / "tokenizer.json").read_text())
    edit(spec)
    (dst / "tokenizer.json").write_text(json.dumps(spec))
    if config is not None:
        (dst / "config.json").write_text(json.dumps(config))
    return dst


def _legacy_llama(spec):
    # What older Llama tokenizer.json files hold: a normalizer that prepends "▁" and replaces spaces, and
    # no pre-tokenizer. LlamaTokenizer rebuilds the Metaspace pipeline instead.
    spec["normalizer"] = {"type": "Sequence", "normalizers": [
        {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
    spec["pre_tokenizer"] = None


def _lowercase(spec):
    spec["normalizer"] = {"type": "Lowercase"}   # dropped by the classes that rebuild their pipeline


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """{name: folder}: the four tokenizers, then variants whose tokenizer.json pipeline the class replaces,
    and one that loads as the generic class (LLaVA-NeXT's config.json), file as it is."""
    root = tmp_path_factory.mktemp("tokenizers")
    out = {}
    for kind, build in _tokenizers.BUILDERS.items():
        build(root / kind)
        out[kind] = root / kind
        out[kind + "_lowercase"] = _edited(root / kind, root / (kind + "_lowercase"), _lowercase)
    out["llama_legacy"] = _edited(root / "llama", root / "llama_legacy", _legacy_llama)
    out["llava_next_generic"] = _edited(root / "llama", root / "llava_next_generic", _lowercase,
                                        config={"model_type": "llava_next"})
    return out


@pytest.fixture(scope="module")
def pairs(folders):
    import transformers

    return {name: (transformers.AutoTokenizer.from_pretrained(str(folder)), Tokenizer.from_pretrained(folder))
            for name, folder in folders.items()}


def test_the_class_each_folder_loads_as(pairs):
    for name, (hf, mv) in pairs.items():
        assert mv.tokenizer_class == type(hf).__name__, name
    # The variants do exercise the rebuild: the file's lowercase normalizer would change the ids.
    hf, mv = pairs["llama_lowercase"]
    assert mv.encode("Hello World") == hf.encode("Hello World")
    assert mv.backend.normalizer is None
    hf, mv = pairs["llava_next_generic"]
    assert mv.encode("Hello") == mv.encode("hello") == hf.encode("Hello")


@pytest.mark.parametrize("text", _tokenizers.TEXTS)
def test_ids_and_decoding_equal(pairs, text):
    for name, (hf, mv) in pairs.items():
        ids = hf(text)["input_ids"]
        assert mv(text)["input_ids"] == ids, name
        assert mv.encode(text, add_special_tokens=False) == hf.encode(text, add_special_tokens=False), name
        for skip in (False, True):
            assert mv.decode(ids, skip_special_tokens=skip) == hf.decode(ids, skip_special_tokens=skip), name


# Random text over an alphabet that holds what tokenizers split on and fall back for: letters with
# accents, CJK (byte fallback), emoji, digits, punctuation, runs of spaces, tabs, newlines, and the
# special tokens written out.
_PIECES = st.sampled_from(["a", "cat", "The", " ", "  ", "\t", "\n", ".", ",", "?", "'", "don't", "123", "é",
                           "ü", "日本", "🙂", "<s>", "</s>", "<pad>", "<unk>", "<mask>", "<extra_id_0>", "x"])


@settings(max_examples=40, deadline=None)
@given(st.lists(_PIECES, max_size=12).map("".join))
def test_random_text_equal(pairs, text):
    for name, (hf, mv) in pairs.items():
        ids = hf(text)["input_ids"]
        assert mv(text)["input_ids"] == ids, (name, text)
        assert mv.decode(ids, skip_special_tokens=True) == hf.decode(ids, skip_special_tokens=True), (name, text)
        assert mv.decode(ids) == hf.decode(ids), (name, text)


@pytest.mark.parametrize("side", [None, "left", "right"])
def test_padded_batches_equal(pairs, side):
    texts = ["a photo of a cat", "two", "What is in the image? Describe it in detail."]
    for name, (hf, mv) in pairs.items():
        kwargs = {} if side is None else {"padding_side": side}
        expected = hf(texts, padding=True, return_tensors="pt", **kwargs)
        got = mv(texts, padding=True, return_tensors="pt", **kwargs)
        assert torch.equal(got["input_ids"], expected["input_ids"]), name
        assert torch.equal(got["attention_mask"], expected["attention_mask"]), name
        expected = hf(texts, padding="max_length", max_length=24, truncation=True, **kwargs)
        got = mv(texts, padding="max_length", max_length=24, truncation=True, **kwargs)
        assert got == dict(expected), name
        assert mv.batch_decode(got["input_ids"], skip_special_tokens=True) == \
            hf.batch_decode(expected["input_ids"], skip_special_tokens=True), name


def test_truncation_equal(pairs):
    text = "The quick brown fox jumps over the lazy dog 123 times!"
    for name, (hf, mv) in pairs.items():
        for n in (1, 3, 8):
            assert mv(text, truncation=True, max_length=n)["input_ids"] == \
                hf(text, truncation=True, max_length=n)["input_ids"], (name, n)


def test_special_tokens_equal(pairs):
    for name, (hf, mv) in pairs.items():
        for attr in ("bos_token", "eos_token", "unk_token", "pad_token", "sep_token", "cls_token", "mask_token"):
            assert getattr(mv, attr) == getattr(hf, attr), (name, attr)
            assert getattr(mv, attr + "_id") == getattr(hf, attr + "_id"), (name, attr)
        assert mv.all_special_tokens == hf.all_special_tokens, name
        assert mv.padding_side == hf.padding_side, name
        assert len(mv) == len(hf), name
        assert mv.convert_ids_to_tokens(list(range(10))) == hf.convert_ids_to_tokens(list(range(10))), name
        assert mv.convert_tokens_to_ids(["a", "not-a-token"]) == hf.convert_tokens_to_ids(["a", "not-a-token"]), name


def test_model_specific_tokens(tmp_path):
    """tokenizer_config.json's own *_token keys (image_token, ...) become special tokens and attributes."""
    import transformers

    _tokenizers.llama(tmp_path, extra_special_tokens={"image_token": "<image>"})
    hf, mv = transformers.AutoTokenizer.from_pretrained(str(tmp_path)), Tokenizer.from_pretrained(tmp_path)
    assert mv.image_token == hf.image_token == "<image>"
    assert mv.image_token_id == hf.image_token_id
    text = "USER: <image>\nWhat is this?<image>"
    assert mv(text)["input_ids"] == hf(text)["input_ids"]
    assert mv.image_token_id in mv(text)["input_ids"]


def test_returns_lists_for_one_string(pairs):
    hf, mv = pairs["llama"]
    out = mv("a cat")
    assert isinstance(out["input_ids"], list) and out == dict(hf("a cat"))
    assert mv("a cat", return_tensors="pt")["input_ids"].shape == (1, len(out["input_ids"]))
    assert "attention_mask" not in mv("a cat", return_attention_mask=False)


# -- bad input -----------------------------------------------------------------------------------------

def test_folder_without_tokenizer(tmp_path):
    with pytest.raises(FileNotFoundError, match="has no tokenizer .expected tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


@pytest.mark.parametrize("files", [["tokenizer.model"], ["sentencepiece.bpe.model"], ["vocab.json", "merges.txt"]])
def test_folder_with_only_a_slow_tokenizer(tmp_path, files):
    for name in files:
        (tmp_path / name).write_bytes(b"x")
    with pytest.raises(FileNotFoundError, match=f"only a slow tokenizer: {files[0]}.*save_pretrained"):
        Tokenizer.from_pretrained(tmp_path)


def test_hub_id_is_refused():
    with pytest.raises(FileNotFoundError, match="looks like a hub id; minivlm downloads nothing"):
        Tokenizer.from_pretrained("llava-hf/llava-v1.6-mistral-7b-hf")


@pytest.mark.parametrize("content", ["{not json", '{"model": {"type": "Nope"}}', "[1, 2]"])
def test_tokenizer_json_that_does_not_parse(tmp_path, content):
    (tmp_path / "tokenizer.json").write_text(content)
    with pytest.raises(ValueError, match="is not a valid tokenizer.json"):
        Tokenizer.from_pretrained(tmp_path)


def test_bad_arguments(pairs):
    _, mv = pairs["llama"]
    with pytest.raises(TypeError, match="text must be a string or a non-empty list of strings"):
        mv([1, 2])
    with pytest.raises(ValueError, match="padding must be"):
        mv("a", padding="sideways")
    with pytest.raises(ValueError, match="return_tensors must be None or 'pt'"):
        mv("a", return_tensors="np")
    with pytest.raises(ValueError, match="rows have different lengths"):
        mv(["a", "a photo of a cat"], return_tensors="pt")
    with pytest.raises(ValueError, match="padding='max_length' needs max_length"):
        mv("a", padding="max_length")
    with pytest.raises(ValueError, match="max_length must be a positive int"):
        mv("a", truncation=True, max_length=0)
    with pytest.raises(TypeError, match="ids must be a list of non-negative ints"):
        mv.decode([1, -2])
    with pytest.raises(ValueError, match="rows must be 2-D"):
        mv.batch_decode(torch.zeros(3, dtype=torch.long))


# -- saving --------------------------------------------------------------------------------------------

def test_save_pretrained_round_trips(pairs, tmp_path):
    """minivlm saves what it read; both libraries read the new folder back to the same ids and text."""
    import transformers

    for name, (hf, mv) in pairs.items():
        folder = tmp_path / name
        written = mv.save_pretrained(folder)
        assert {p.name for p in written} == {"tokenizer.json", "tokenizer_config.json"}
        again, hf_again = Tokenizer.from_pretrained(folder), transformers.AutoTokenizer.from_pretrained(str(folder))
        assert type(hf_again).__name__ == again.tokenizer_class == mv.tokenizer_class, name
        for text in _tokenizers.TEXTS:
            ids = hf(text)["input_ids"]
            assert again(text)["input_ids"] == hf_again(text)["input_ids"] == ids, (name, text)
            assert again.decode(ids, skip_special_tokens=True) == hf_again.decode(ids, skip_special_tokens=True)
        assert again.all_special_tokens == hf_again.all_special_tokens == mv.all_special_tokens, name
        assert again.padding_side == hf_again.padding_side == mv.padding_side, name


def test_save_pretrained_refuses_a_file(pairs, tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(NotADirectoryError, match="is a file; expected a folder to save into"):
        pairs["llama"][1].save_pretrained(tmp_path / "file")
