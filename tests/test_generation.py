"""minivlm.generation (GenerationConfig, GenerationMixin.generate) against Transformers' generate.

Greedy parity is checked in float64: both implementations then pick every token from logits that agree
to ~1e-7 (Transformers' RMSNorm and rotary angles run in float32 even for a float64 model, and minivlm
does the same), far below the gaps between the best and second-best logits of a random model, so the
token sequences must be identical. Tokens are compared exactly; there is no tolerance.
"""
import json

import pytest
import torch
import transformers
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

import minivlm
from minivlm.generation import GenerationConfig, filter_scores
from _llama import VOCAB, hf_model
from helpers import left_padded_mask

NEW = 12    # new tokens per greedy comparison (>= 10)


def load_pair(tmp_path, model_type="llama", **overrides):
    """A Transformers model and minivlm's copy of it, both in float64."""
    hf = hf_model(model_type, **overrides)
    hf.save_pretrained(tmp_path)
    return hf.double(), minivlm.from_pretrained(tmp_path, dtype=torch.float64)


CASES = {
    "llama": ("llama", dict()),
    "mistral_window": ("mistral", dict(num_key_value_heads=2, sliding_window=8)),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("padded", [False, True], ids=["single", "left_padded_batch"])
def test_greedy_matches_transformers(case, padded, tmp_path):
    model_type, overrides = CASES[case]
    hf, model = load_pair(tmp_path, model_type, eos_token_id=None, **overrides)
    if padded:   # two prompts of 20 and 13 tokens, the shorter one left-padded
        ids = torch.randint(3, VOCAB, (2, 20))
        mask = left_padded_mask([20, 13], 20)
        ids[1, :7] = 0
    else:
        ids, mask = torch.randint(3, VOCAB, (1, 20)), None
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    assert got.dtype == torch.long and got.shape == (ids.shape[0], 20 + NEW)
    assert torch.equal(got, expected)
    assert torch.equal(got[:, :20], ids)
    if padded:   # the padded row continues exactly as it does alone
        alone = model.generate(ids[1:, 7:], max_new_tokens=NEW)
        assert torch.equal(got[1, 20:], alone[0, 13:])


def test_eos_finishes_a_row_and_pads_it(tmp_path):
    hf, model = load_pair(tmp_path, "mistral", num_key_value_heads=2, sliding_window=8, eos_token_id=None)
    ids = torch.randint(3, VOCAB, (2, 20))
    mask = left_padded_mask([20, 15], 20)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    eos = int(free[0, 20 + 3])           # row 0 produces this token at step 3
    assert eos not in free[1, 20:].tolist() and eos not in free[0, 20:23].tolist(), "pick another seed"
    got = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=eos, pad_token_id=1)
    assert torch.equal(got[0, :24], free[0, :24])                 # up to and including eos
    assert (got[0, 24:] == 1).all()                               # then pad
    assert torch.equal(got[1], free[1])                           # the other row runs on
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                           eos_token_id=eos, pad_token_id=1)
    assert torch.equal(got, expected)
    # Without a pad id, finished rows get the first eos id (as Transformers does).
    got = model.generate(ids, attention_mask=mask, max_new_tokens=NEW, eos_token_id=[eos, 2])
    assert (got[0, 24:] == eos).all()
    assert torch.equal(got, hf.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                        eos_token_id=[eos, 2]))
    # Generation stops once every row has finished.
    alone = model.generate(ids[:1], max_new_tokens=NEW, eos_token_id=eos)
    assert alone.shape == (1, 24) and alone[0, -1] == eos


def test_defaults_from_generation_config_then_config_json(tmp_path):
    hf = hf_model("llama", bos_token_id=3, eos_token_id=[7, 8], pad_token_id=5)
    hf.save_pretrained(tmp_path)
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig(bos_token_id=3, eos_token_id=[7, 8],
                                                                         pad_token_id=5)
    # generation_config.json, when present, is taken alone (Transformers does not complete it from config.json).
    (tmp_path / "generation_config.json").write_text(json.dumps({"eos_token_id": 9, "max_new_tokens": 4}))
    ours = GenerationConfig.from_pretrained(tmp_path)
    theirs = transformers.LlamaForCausalLM.from_pretrained(tmp_path).generation_config
    assert ours == GenerationConfig(eos_token_id=[9], max_new_tokens=4)
    assert (ours.bos_token_id, ours.eos_token_id, ours.pad_token_id) == \
        (theirs.bos_token_id, [theirs.eos_token_id], theirs.pad_token_id)
    model = minivlm.from_pretrained(tmp_path)
    assert model.generation_config == ours
    assert model.generate(torch.randint(10, VOCAB, (1, 5))).shape == (1, 9)   # max_new_tokens from the file
    # Without it: config.json's top level, then its text_config (a composite VLM config).
    (tmp_path / "generation_config.json").unlink()
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llava_next", "pad_token_id": 6,
                                                      "text_config": {"eos_token_id": 2, "pad_token_id": 0}}))
    assert GenerationConfig.from_pretrained(tmp_path) == GenerationConfig(eos_token_id=[2], pad_token_id=6)
    assert GenerationConfig.from_pretrained(tmp_path / "nowhere") == GenerationConfig()


def test_defaults_from_model_config(tmp_path):
    hf = hf_model("llama", eos_token_id=4, pad_token_id=None)
    hf.save_pretrained(tmp_path)
    model = minivlm.from_pretrained(tmp_path)
    assert GenerationConfig.from_model_config(model.config) == GenerationConfig(bos_token_id=1, eos_token_id=[4])

    class Composite:
        pad_token_id = 6
        eos_token_id = None
        text_config = model.config
    assert GenerationConfig.from_model_config(Composite) == \
        GenerationConfig(bos_token_id=1, eos_token_id=[4], pad_token_id=6)
    # A model without generation_config falls back to its config: its eos id then ends generation.
    del model.generation_config
    ids = torch.randint(10, VOCAB, (1, 6))
    free = model.generate(ids, max_new_tokens=NEW, eos_token_id=[])
    model.config.eos_token_id = eos = int(free[0, 6 + 2])
    assert eos not in free[0, 6:8].tolist(), "pick another seed"
    assert torch.equal(model.generate(ids, max_new_tokens=NEW), free[:, :6 + 3])


def test_sampling_is_reproducible_and_top_k_1_is_greedy(tmp_path):
    _, model = load_pair(tmp_path, "mistral", num_key_value_heads=2, sliding_window=8, eos_token_id=None)
    ids = torch.randint(3, VOCAB, (2, 16))
    mask = left_padded_mask([16, 10], 16)

    def draw(seed, **kw):
        return model.generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=True,
                              generator=torch.Generator().manual_seed(seed), **kw)
    assert torch.equal(draw(0, temperature=1.5), draw(0, temperature=1.5))
    assert not torch.equal(draw(0, temperature=1.5), draw(1, temperature=1.5))   # 24 draws from ~97 tokens
    greedy = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    assert torch.equal(draw(0, top_k=1, temperature=3.0), greedy)
    assert torch.equal(draw(0, top_p=1e-9), greedy)


@pytest.mark.parametrize("temperature,top_k,top_p", [(1.0, None, None), (0.7, None, None), (1.3, 5, None),
                                                     (1.0, None, 0.8), (0.5, 20, 0.9), (2.0, 200, 0.3)])
def test_filter_matches_transformers_warpers(temperature, top_k, top_p):
    """Temperature, top-k and top-p, in this order, keep exactly the tokens Transformers keeps."""
    scores = torch.randn(4, VOCAB) * 3
    expected = scores.clone()
    if temperature != 1.0:
        expected = TemperatureLogitsWarper(temperature)(None, expected)
    if top_k is not None:
        expected = TopKLogitsWarper(top_k)(None, expected)
    if top_p is not None:
        expected = TopPLogitsWarper(top_p)(None, expected)
    got = filter_scores(scores, temperature, top_k, top_p)
    assert torch.equal(torch.isinf(got), torch.isinf(expected))
    assert torch.equal(got, expected)


@pytest.fixture(scope="module")
def small_model(tmp_path_factory):
    path = tmp_path_factory.mktemp("llama")
    hf_model("llama").save_pretrained(path)
    return minivlm.from_pretrained(path)


@pytest.mark.parametrize("kwargs,match", [
    (dict(max_new_tokens=0), "max_new_tokens"),
    (dict(max_new_tokens=2.5), "max_new_tokens"),
    (dict(temperature=0.0), "temperature"),
    (dict(temperature=-1.0), "temperature"),
    (dict(top_p=0.0), "top_p"),
    (dict(top_p=1.5), "top_p"),
    (dict(top_k=-1), "top_k"),
    (dict(attention_mask=torch.ones(2, 5, dtype=torch.long)), "attention_mask"),
    (dict(attention_mask=torch.tensor([[1, 1, 1, 1, 0]])), "left padding"),
    (dict(attention_mask=torch.tensor([[0, 2, 1, 1, 1]])), "0 \\(pad\\) and 1"),
    (dict(generator=0), "generator"),
    (dict(do_sample="yes"), "do_sample"),
    (dict(eos_token_id=-3), "eos_token_id"),
    (dict(pad_token_id=-1), "pad_token_id"),
])
def test_bad_arguments_raise(kwargs, match, small_model):
    with pytest.raises((ValueError, TypeError), match=match):
        small_model.generate(torch.randint(3, VOCAB, (1, 5)), **kwargs)


@pytest.mark.parametrize("ids,match", [(torch.randn(1, 5), "integer"), (torch.zeros(1, 0, dtype=torch.long), "sequence"),
                                       (torch.zeros(5, dtype=torch.long), "batch")])
def test_bad_input_ids_raise(ids, match, small_model):
    with pytest.raises(ValueError, match=match):
        small_model.generate(ids)


@pytest.mark.parametrize("pad_token_id,inferred", [(0, True), (None, False), (2, False)],
                         ids=["pad_0", "no_pad_id", "pad_equals_eos"])
def test_mask_inferred_from_the_pad_id_as_transformers(tmp_path, pad_token_id, inferred):
    """Without attention_mask, a pad id that occurs in the prompt and is not an eos id marks padding (as
    Transformers' generate infers it); with no pad id, or pad == eos, the prompt is taken as it is."""
    hf, model = load_pair(tmp_path, "llama", pad_token_id=pad_token_id, eos_token_id=2)
    ids = torch.randint(3, VOCAB, (2, 20))
    ids[1, :7] = 0 if pad_token_id is None else pad_token_id       # a left-padded second row
    kwargs = dict(max_new_tokens=NEW)                                # eos 2 from the config
    got = model.generate(ids, **kwargs)
    expected = hf.generate(ids, max_new_tokens=NEW, do_sample=False, pad_token_id=pad_token_id)
    masked = model.generate(ids, attention_mask=(ids != ids[1, 0]).long(), **kwargs)
    assert torch.equal(got, masked) == inferred
    if pad_token_id == 0:
        assert torch.equal(got, expected)
