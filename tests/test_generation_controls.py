"""generate's controls against Transformers' generate, on tiny float64 checkpoints (a Llama decoder and
a T5 encoder-decoder): beam search, sampling, the penalties, the length settings, generation_config.json,
stop strings, streamers, and the dict output with scores and token log-probabilities.

Tokens are compared exactly. Both libraries pick tokens from float32 scores computed from float64 logits
that agree to ~1e-13, so every choice is the same unless two candidates tie to float32 rounding, which
random weights make vanishingly unlikely. Sampled tokens are compared after the same torch.manual_seed:
both draw with torch.multinomial from torch's global generator, one call per step on the same rows.
Scores: float32 values computed from the same float64 logits round alike, but a log_softmax over a
different reduction order may differ by a few float32 ulps; SCORE_ATOL (1e-5, ~100 ulps of the log-probs'
magnitude, which stays below 20 here) bounds that.
"""
import json
import threading

import pytest
import torch
import transformers
from transformers.generation.stopping_criteria import StopStringCriteria

import minivlm
from minivlm.generation import GenerationConfig, StopStrings, TextIteratorStreamer, TextStreamer
from minivlm.processing import Tokenizer
from minivlm.tools import tiny_tokenizers
import _llama
import _t5
from helpers import left_padded_mask

SCORE_ATOL = 1e-5
NEW = 10


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    folder = tmp_path_factory.mktemp("llama")
    hf = _llama.hf_model("llama", eos_token_id=None)
    hf.save_pretrained(folder)
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(3, _llama.VOCAB, (2, 12), generator=g)
    mask = left_padded_mask([12, 8], 12)
    ids[1, :4] = 0
    free = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    eos = int(free[0, 12 + 2])          # a token the first row makes at step 2: beams meet it
    assert eos not in free[0, 12:14].tolist(), "pick another seed"
    return hf.double(), model, ids, mask, eos


@pytest.fixture(scope="module")
def t5(tmp_path_factory):
    folder = tmp_path_factory.mktemp("t5")
    hf = _t5.hf_model()
    hf.save_pretrained(folder)
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = _t5.right_padded([9, 5], 9)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[])
    return hf.double(), model, ids, mask, int(free[0, 4])


def both(hf, model, ids, mask, seed=5, **kw):
    """Transformers' and minivlm's GenerateOutput for the same settings (the same seed before each)."""
    theirs = {k: v for k, v in kw.items() if k != "do_sample"}
    torch.manual_seed(seed)
    ref = hf.generate(ids, attention_mask=mask, do_sample=kw.get("do_sample", False), return_dict_in_generate=True,
                      output_scores=True, output_logits=True, **theirs)
    torch.manual_seed(seed)
    out = model.generate(ids, attention_mask=mask, return_dict_in_generate=True, output_scores=True,
                         output_logits=True, **kw)
    return ref, out


def assert_same_output(hf, ref, out):
    assert torch.equal(out.sequences, ref.sequences), f"\nours {out.sequences}\nref  {ref.sequences}"
    assert len(out.scores) == len(ref.scores) and len(out.logits) == len(ref.logits)
    for ours, theirs in zip(out.scores + out.logits, ref.scores + ref.logits):
        assert torch.equal(torch.isinf(ours), torch.isinf(theirs))
        finite = torch.isfinite(theirs)
        assert torch.allclose(ours[finite], theirs[finite], rtol=0, atol=SCORE_ATOL)
    beams = getattr(ref, "beam_indices", None)
    expected = hf.compute_transition_scores(ref.sequences, ref.scores, beams, normalize_logits=beams is None)
    assert out.logprobs.shape == expected.shape
    assert torch.allclose(out.logprobs, expected.float(), rtol=0, atol=SCORE_ATOL)
    if beams is not None:
        assert torch.equal(out.beam_indices, beams.long())
        assert torch.allclose(out.sequences_scores, ref.sequences_scores, rtol=0, atol=SCORE_ATOL)


LLAMA_CASES = {
    "beams4": dict(num_beams=4),
    "beams4_eos": dict(num_beams=4, eos=True),
    "beams3_two_eos_return2_never": dict(num_beams=3, eos=[5], num_return_sequences=2, length_penalty=0.0,
                                         early_stopping="never"),
    "beams4_early_lp2": dict(num_beams=4, eos=True, early_stopping=True, length_penalty=2.0),
    "beams2_no_repeat_2": dict(num_beams=2, no_repeat_ngram_size=2),
    "beam_sample": dict(num_beams=3, do_sample=True, eos=True),
    "repetition_penalty": dict(repetition_penalty=1.7),
    "no_repeat_3": dict(no_repeat_ngram_size=3, eos=True),
    "min_new_tokens": dict(min_new_tokens=6, eos=True),
    "min_length": dict(min_length=18, eos=True),
    "sample_default_top_k": dict(do_sample=True),
    "sample_filters_return3": dict(do_sample=True, num_return_sequences=3, temperature=0.8, top_p=0.9,
                                   repetition_penalty=1.2),
    "sample_top_k_off": dict(do_sample=True, top_k=0, temperature=1.5),
}


@pytest.mark.parametrize("case", list(LLAMA_CASES))
def test_decoder_only_matches_transformers(case, llama):
    hf, model, ids, mask, eos = llama
    kw = dict(LLAMA_CASES[case])
    extra = kw.pop("eos", None)
    if extra:
        kw["eos_token_id"] = [eos] + (extra if isinstance(extra, list) else [])
    ref, out = both(hf, model, ids, mask, max_new_tokens=NEW, pad_token_id=0, **kw)
    assert_same_output(hf, ref, out)


@pytest.mark.parametrize("kw", [dict(max_length=18), dict()], ids=["max_length", "default_20_new"])
def test_length_settings_match_transformers(kw, llama):
    """max_length counts the prompt; with no length set, 20 new tokens."""
    hf, model, ids, mask, _ = llama
    ref, out = both(hf, model, ids, mask, pad_token_id=0, **kw)
    assert_same_output(hf, ref, out)
    assert out.sequences.shape[1] == kw.get("max_length", ids.shape[1] + 20)
    with pytest.raises(ValueError, match="max_length is 12"):
        model.generate(ids, attention_mask=mask, max_length=12)


T5_CASES = {
    "beams4": dict(num_beams=4),
    "beams3_return3_lp": dict(num_beams=3, num_return_sequences=3, length_penalty=0.5),
    "penalties": dict(repetition_penalty=1.3, no_repeat_ngram_size=2),
    "sample": dict(do_sample=True, top_k=5),
}


@pytest.mark.parametrize("case", list(T5_CASES))
def test_encoder_decoder_matches_transformers(case, t5):
    hf, model, ids, mask, eos = t5
    ref, out = both(hf, model, ids, mask, max_new_tokens=NEW, eos_token_id=eos, **T5_CASES[case])
    assert_same_output(hf, ref, out)


def test_generation_config_file_is_honoured(tmp_path, llama):
    """Settings in generation_config.json apply as they do in Transformers; absent ones take 5.23's
    defaults; a setting minivlm does not implement is refused by name."""
    hf, _, ids, mask, eos = llama
    hf.float().save_pretrained(tmp_path)
    hf.double()
    settings = dict(num_beams=3, length_penalty=0.5, no_repeat_ngram_size=3, eos_token_id=eos, pad_token_id=0,
                    max_new_tokens=8, repetition_penalty=1.1)
    (tmp_path / "generation_config.json").write_text(json.dumps(settings))
    model = minivlm.from_pretrained(tmp_path, dtype=torch.float64)
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path, dtype=torch.float64)
    assert torch.equal(model.generate(ids, attention_mask=mask), theirs.generate(ids, attention_mask=mask))
    assert model.generate(ids, attention_mask=mask, num_beams=1, max_new_tokens=3).shape == (2, 15)
    merged = GenerationConfig().merged()
    assert (merged.top_k, merged.top_p, merged.temperature, merged.num_beams, merged.max_length) == (50, 1.0, 1.0, 1, None)

    settings.update(forced_eos_token_id=eos, suppress_tokens=[3])
    (tmp_path / "generation_config.json").write_text(json.dumps(settings))
    model = minivlm.from_pretrained(tmp_path, dtype=torch.float64)        # loading works; generate refuses
    with pytest.raises(ValueError, match="forced_eos_token_id"):
        model.generate(ids, attention_mask=mask)
    model.generation_config.unsupported.update(forced_eos_token_id=None, suppress_tokens=None)
    assert model.generate(ids, attention_mask=mask).shape[0] == 2
    assert model.generation_config.to_dict()["num_beams"] == 3


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(bad_words_ids=[[3]]), ValueError, "bad_words_ids.*does not implement"),
    (dict(typical_p=0.5), ValueError, "typical_p"),
    (dict(output_attentions=True), ValueError, "output_attentions"),
    (dict(assistant_model=1), TypeError, "assistant_model"),
    (dict(num_beams=0), ValueError, "num_beams"),
    (dict(num_return_sequences=2), ValueError, "num_return_sequences"),
    (dict(num_beams=2, num_return_sequences=3), ValueError, "num_return_sequences"),
    (dict(early_stopping="sometimes"), ValueError, "early_stopping"),
    (dict(length_penalty=float("nan")), ValueError, "length_penalty"),
    (dict(repetition_penalty=0.0), ValueError, "repetition_penalty"),
    (dict(no_repeat_ngram_size=-1), ValueError, "no_repeat_ngram_size"),
    (dict(min_new_tokens=-2), ValueError, "min_new_tokens"),
    (dict(stop_strings="x"), ValueError, "tokenizer"),
    (dict(stop_strings=[""]), ValueError, "stop_strings"),
    (dict(output_scores="yes"), TypeError, "output_scores"),
    (dict(generation_config={"num_beams": 2}), TypeError, "generation_config"),
    (dict(streamer=object(), num_beams=2), ValueError, "streamer"),
])
def test_bad_settings_raise(kwargs, error, match, llama):
    _, model, ids, mask, _ = llama
    with pytest.raises(error, match=match):
        model.generate(ids[:1], max_new_tokens=2, **kwargs)


@pytest.fixture(scope="module", params=["llama", "opt"])
def tokenized(request, tmp_path_factory):
    """A Transformers tokenizer, minivlm's reading of its folder, and a Llama whose vocabulary covers it."""
    folder = tmp_path_factory.mktemp(request.param)
    hf_tok = getattr(tiny_tokenizers, request.param)(folder)
    hf = _llama.hf_model("llama", vocab_size=len(hf_tok), eos_token_id=None)
    hf.save_pretrained(folder)
    return hf_tok, Tokenizer.from_pretrained(folder), hf.double(), minivlm.from_pretrained(folder, dtype=torch.float64)


def test_stop_strings_match_transformers_criteria(tokenized):
    """On random token sequences and stop strings cut from their own text, minivlm's StopStrings stops the
    same rows at the same steps as Transformers' StopStringCriteria."""
    hf_tok, tok, _, _ = tokenized
    g = torch.Generator().manual_seed(0)
    texts = tiny_tokenizers.CORPUS[:7]
    stops = ["cat", "a ", " o", "s?", "é", "ASSISTANT:", "\n", "on a", "t s"]
    theirs, ours = StopStringCriteria(hf_tok, stops), StopStrings(stops, tok)
    seqs = [torch.tensor([hf_tok(t, add_special_tokens=False)["input_ids"]]) for t in texts]
    seqs += [torch.randint(0, len(hf_tok), (4, 12), generator=g)]
    hits = 0
    for seq in seqs:
        for k in range(1, seq.shape[1] + 1):
            expected = theirs(seq[:, :k], None)
            assert torch.equal(ours(seq[:, :k]), expected), (hf_tok.convert_ids_to_tokens(seq[0, :k]), k)
            hits += int(expected.sum())
    assert hits >= 10


def test_generation_with_stop_strings_matches_transformers(tokenized):
    hf_tok, tok, hf, model = tokenized
    ids = torch.tensor([hf_tok("a photo of", add_special_tokens=False)["input_ids"]] * 2)
    ids[1, 0] = 5
    free = model.generate(ids, max_new_tokens=12)
    new = free[0, ids.shape[1]:].tolist()
    # The stop string: the text two steps write, from step 3 on (whole characters only).
    at, stop = next((k, t.strip()[:3]) for k in range(3, 9) for t in [tok.decode(new[k:k + 2])]
                    if t.strip() and "\ufffd" not in t)
    for eos in ([], [2]):
        expected = hf.generate(ids, max_new_tokens=12, do_sample=False, stop_strings=[stop], tokenizer=hf_tok,
                               eos_token_id=eos or None, pad_token_id=1)
        got = model.generate(ids, max_new_tokens=12, stop_strings=stop, tokenizer=tok, eos_token_id=eos,
                             pad_token_id=1)
        assert torch.equal(got, expected)
        row = got[0, ids.shape[1]:].tolist()
        ends = next(k for k in range(1, len(row) + 1) if stop in tok.decode(row[:k]))
        assert ends <= at + 2                              # the first row met its stop string
        if eos:                                            # and stopped there: pads after it
            assert set(row[ends:]) <= {1}


def test_streamers_yield_the_text_as_it_comes(tokenized):
    hf_tok, tok, _, model = tokenized
    ids = torch.tensor([hf_tok("a photo of", add_special_tokens=False)["input_ids"]])
    tokens = model.generate(ids, max_new_tokens=12)
    pieces = []
    got = model.generate(ids, max_new_tokens=12, streamer=TextStreamer(tok, skip_prompt=True, on_text=pieces.append))
    assert torch.equal(got, tokens)
    assert "".join(pieces) == tok.decode(tokens[0, ids.shape[1]:].tolist())
    assert len(pieces) >= 2                                  # released as it came, not all at the end
    streamer = TextIteratorStreamer(tok, timeout=60)
    worker = threading.Thread(target=model.generate, args=(ids,), kwargs=dict(max_new_tokens=12, streamer=streamer))
    worker.start()
    text = "".join(streamer)
    worker.join()
    assert text == tok.decode(tokens[0].tolist())
    with pytest.raises(ValueError, match="one sequence"):
        model.generate(ids.repeat(2, 1), max_new_tokens=2, streamer=TextStreamer(tok))
