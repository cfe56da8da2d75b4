"""minivlm's OPT decoder (minivlm/models/opt.py) against Transformers' OPTForCausalLM.

Each case builds a tiny random-weight OPTForCausalLM in Transformers (tests/_opt.py: hidden 64, 2 layers, 4
heads, ffn 128, vocab 128, 128 positions), saves it with save_pretrained and loads it with
minivlm.from_pretrained, so the checkpoint goes through minivlm's own loader. Weights are drawn with std 0.15
(not Transformers' 0.02) and LayerNorm weights 1 + N(0, 0.2): attention is sharp and the position table
matters, so a wrong position offset, mask, LayerNorm placement or projection changes the logits by whole
units.

Tolerance (float32). Both sides do the same float32 math in possibly different orders (minivlm's attention
kernel vs Transformers' SDPA; other matmul blockings). Each logit ends a chain of two layers of dot products
of <= 128 terms, softmaxes over <= 128 keys and LayerNorms; float32's unit roundoff is 6e-8. Measured
against Transformers: 0 without padding (bit-identical here), <= 3e-7 of the largest logit (~4-5) at the
real tokens of a left-padded batch. KV-cache decoding against full recomputation (the same math with
matmuls of other shapes): <= 6e-7. We allow 1e-5 of the largest logit for both, a >= 15x margin.
"""
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file

import minivlm
from minivlm.models.cache import KVCache
from minivlm.models.opt import OPTConfig
from _opt import EOS, PAD, VOCAB, hf_model
from helpers import (assert_close_rel, assert_kept_rows_match, assert_same_weights, check_cache_errors,
                     decode_in_chunks, generate_positions, left_padded_mask, save_and_load, write_checkpoint)

RTOL32 = 1e-5                 # times the largest reference logit; see the module docstring
NEW = 12                      # tokens generated in the greedy tests


CASES = {
    "pre_ln": dict(),                                                   # opt-125m, opt-2.7b (BLIP-2)
    "post_ln_project": dict(do_layer_norm_before=False, word_embed_proj_dim=32),   # opt-350m
    "pre_ln_project": dict(word_embed_proj_dim=32),
    "post_ln": dict(do_layer_norm_before=False),
    "no_bias_no_affine_untied": dict(enable_bias=False, layer_norm_elementwise_affine=False,
                                     tie_word_embeddings=False),
    "no_final_layer_norm": dict(_remove_final_layer_norm=True),
    "gelu": dict(activation_function="gelu"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    hf = hf_model(**CASES[case])
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(0, VOCAB, (2, 48))
    with torch.no_grad():
        expected = hf(ids).logits
        out = model(ids)
    assert out.logits.shape == expected.shape == (2, 48, VOCAB)
    assert_close_rel(out.logits, expected, case, RTOL32)
    assert out.hidden_states.shape == (2, 48, model.config.word_embed_proj_dim)
    has_project = model.config.word_embed_proj_dim != 64
    assert (model.model.decoder.project_in is not None) == has_project
    assert (model.model.decoder.final_layer_norm is not None) == (hf.model.decoder.final_layer_norm is not None)


@pytest.mark.parametrize("case", ["pre_ln", "post_ln_project"])
def test_left_padded_batch(case, tmp_path):
    hf = hf_model(**CASES[case])
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(3, VOCAB, (3, 40))
    mask = left_padded_mask([40, 31, 9], 40)
    ids[mask == 0] = PAD
    real = mask.bool()
    # Positions from the mask as Transformers makes them: 0, 1, ... over the real tokens and -1 (table row
    # 1) at every pad, wherever it is. Only pad outputs can show the pads' value, hence this direct check.
    odd_mask = torch.tensor([[0, 0, 1, 1, 1], [1, 1, 1, 0, 0], [1, 0, 1, 1, 0]])
    assert model.model.decoder.positions(odd_mask, None, 3, 5, 0, "cpu").tolist() == \
        [[-1, -1, 0, 1, 2], [0, 1, 2, -1, -1], [0, -1, 1, 2, -1]]
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits                  # positions from the mask: pads at -1
        assert_close_rel(got[real], expected[real], f"{case} non-pad logits", RTOL32)
        # generate's positions (pads at 0, not -1) change nothing at the real tokens, on either side.
        pos = generate_positions(mask)
        got_pos = model(ids, attention_mask=mask, position_ids=pos).logits
        assert_close_rel(got_pos[real], expected[real], f"{case} with generate's positions", RTOL32)
        assert_close_rel(got_pos[real], hf(ids, attention_mask=mask, position_ids=pos).logits[real],
                         f"{case} same pos", RTOL32)
        # A padded row equals the same tokens alone, unpadded: positions restart at the first real token.
        alone = model(ids[2:, 31:]).logits
        assert_close_rel(got[2, 31:], alone[0], "padded row vs alone", RTOL32)


def test_loss_matches_transformers(tmp_path):
    """The logit that predicts a padded row's first real token sits at the last pad position. There a
    query sees no real key: Transformers' SDPA gives it a zero attention output, its eager path (and
    minivlm, whose finite-min mask averages over the masked keys) a uniform one, units apart. So the SDPA
    reference is compared without that label, and the eager one with it."""
    hf = hf_model(**CASES["post_ln_project"])
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(3, VOCAB, (2, 40))
    mask = left_padded_mask([40, 28], 40)
    labels = ids.masked_fill(mask == 0, -100)
    labels[0, 5:9] = -100
    inner = labels.clone()
    inner[1, 12] = -100                     # row 1's first real token
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask, labels=inner).loss
        got = model(ids, attention_mask=mask, labels=inner).loss
        # A mean of float32 cross-entropies (~5) over ~60 tokens: relative 1e-5 as for the logits.
        assert abs(got.item() - expected.item()) <= RTOL32 * abs(expected.item())
        hf.set_attn_implementation("eager")
        expected = hf(ids, attention_mask=mask, labels=labels).loss
        got = model(ids, attention_mask=mask, labels=labels).loss
        assert abs(got.item() - expected.item()) <= RTOL32 * abs(expected.item())


@pytest.mark.parametrize("case", ["pre_ln", "post_ln_project"])
@pytest.mark.parametrize("padded", [False, True], ids=["single", "left_padded_batch"])
def test_greedy_generation_matches_transformers_float64(case, padded, tmp_path):
    """In float64 the two implementations agree to ~1e-15 relative, far below any gap between the top
    two logits, so the greedy tokens must be identical."""
    hf = hf_model(**CASES[case])
    model = save_and_load(hf, tmp_path, dtype=torch.float64)
    if padded:   # prompts of 20, 13 and 6 tokens, left-padded
        ids = torch.randint(3, VOCAB, (3, 20))
        mask = left_padded_mask([20, 13, 6], 20)
        ids[mask == 0] = PAD
    else:
        ids, mask = torch.randint(3, VOCAB, (1, 20)), None
    with torch.no_grad():
        expected = hf.double().generate(ids, attention_mask=mask, max_new_tokens=NEW, do_sample=False,
                                        eos_token_id=EOS, pad_token_id=PAD)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=NEW)
    assert got.dtype == torch.long and got.shape == (ids.shape[0], 20 + NEW)   # no row stopped early
    assert torch.equal(got, expected), f"\nours {got[:, 20:]}\nref  {expected[:, 20:]}"
    if padded:   # the padded rows continue exactly as they do alone
        assert torch.equal(got[2, 20:], model.generate(ids[2:, 14:], max_new_tokens=NEW)[0, 6:])


# --------------------------------------------------------------------------------------------------
# KV cache: decoding token by token, or in chunks, equals recomputing the whole sequence
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("case", ["pre_ln", "post_ln_project"])
@pytest.mark.parametrize("chunks", [[20] + [1] * 30, [7] * 7 + [1]], ids=["token_by_token", "chunked"])
def test_cache_decoding_equals_recomputation(case, chunks, tmp_path):
    model = save_and_load(hf_model(**CASES[case]), tmp_path)
    ids = torch.randint(0, VOCAB, (2, sum(chunks)))
    with torch.no_grad():
        full = model(ids).logits
        cached = decode_in_chunks(model, ids, chunks)
    assert_close_rel(cached, full, f"{case} cache", RTOL32)


@pytest.mark.parametrize("positions", ["from_mask", "generate"])
@pytest.mark.parametrize("chunks", [[20] + [1] * 25, [9, 9, 9, 9, 9]], ids=["token_by_token", "chunked"])
def test_cache_decoding_with_left_padding(positions, chunks, tmp_path):
    hf = hf_model(**CASES["pre_ln_project"])
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(3, VOCAB, (2, 45))
    mask = left_padded_mask([45, 17], 45)
    pos = generate_positions(mask) if positions == "generate" else None
    real = mask.bool()
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=pos).logits
        expected = hf(ids, attention_mask=mask).logits
        cached = decode_in_chunks(model, ids, chunks, mask, pos)
    assert_close_rel(cached[real], full[real], "padded cache", RTOL32)
    assert_close_rel(full[real], expected[real], "padded vs Transformers", RTOL32)


def test_cache_errors(tmp_path):
    model = save_and_load(hf_model(), tmp_path)
    cache = check_cache_errors(model, VOCAB)
    assert isinstance(cache, KVCache) and cache.keys[0].shape == (2, 4, 10, 16)


# --------------------------------------------------------------------------------------------------
# Loading, config, inputs
# --------------------------------------------------------------------------------------------------

def test_tied_head_and_old_hub_key_spelling(tmp_path):
    hf = hf_model(**CASES["post_ln_project"])
    model = save_and_load(hf, tmp_path / "v5")
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    assert model.tied_weights() == {"lm_head.weight": "model.decoder.embed_tokens.weight"}
    # Old hub files were saved from OPTModel: decoder.* without model., and no lm_head.
    tensors = load_file(tmp_path / "v5" / "model.safetensors")
    assert all(k.startswith("model.decoder.") for k in tensors)
    old = write_checkpoint(tmp_path / "old", {k[len("model."):]: v for k, v in tensors.items()}, tmp_path / "v5")
    ids = torch.randint(0, VOCAB, (1, 30))
    older = minivlm.from_pretrained(old)
    assert_same_weights(older, model, "keys without the model. prefix")
    with torch.no_grad():
        assert_close_rel(older(ids).logits, model(ids).logits, "keys without the model. prefix", RTOL32)
    untied = save_and_load(hf_model(tie_word_embeddings=False), tmp_path / "untied")
    assert untied.lm_head.weight is not untied.model.decoder.embed_tokens.weight
    assert untied.tied_weights() == {}


def test_config_defaults_match_transformers():
    """Fields a config.json omits get the defaults Transformers' OPTConfig gives them."""
    for given in ({}, {"hidden_size": 256, "num_attention_heads": 8}, {"word_embed_proj_dim": 128},
                  {"do_layer_norm_before": False, "eos_token_id": [2, 3]}):
        ours, theirs = OPTConfig.from_dict({"model_type": "opt", **given}), transformers.OPTConfig(**given)
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "ffn_dim", "num_attention_heads",
                     "max_position_embeddings", "do_layer_norm_before", "word_embed_proj_dim",
                     "activation_function", "enable_bias", "layer_norm_elementwise_affine",
                     "_remove_final_layer_norm", "tie_word_embeddings", "pad_token_id", "bos_token_id",
                     "eos_token_id"):
            assert getattr(ours, name) == getattr(theirs, name), name
    # What a Transformers-written config.json holds reads back to the same values.
    theirs = transformers.OPTConfig(hidden_size=96, num_attention_heads=6, word_embed_proj_dim=48,
                                    enable_bias=False, _remove_final_layer_norm=True)
    ours = OPTConfig.from_dict(json.loads(theirs.to_json_string()))
    assert (ours.hidden_size, ours.head_dim, ours.word_embed_proj_dim, ours.enable_bias,
            ours._remove_final_layer_norm) == (96, 16, 48, False, True)


@pytest.mark.parametrize("bad,match", [
    ({"model_type": "gpt2"}, "model_type"),
    ({"hidden_size": 100, "num_attention_heads": 12}, "hidden_size=100 is not a multiple of num_attention_heads=12"),
    ({"activation_function": "swishy"}, "swishy"),
    ({"ffn_dim": 0}, "ffn_dim must be a positive int"),
    ({"word_embed_proj_dim": 12.5}, "word_embed_proj_dim"),
    ({"do_layer_norm_before": "yes"}, "do_layer_norm_before must be a bool"),
    ({"max_position_embeddings": True}, "max_position_embeddings"),
])
def test_bad_config_values_raise(bad, match):
    with pytest.raises(ValueError, match=match):
        OPTConfig.from_dict(bad)


def test_inputs_embeds_and_logits_to_keep(tmp_path):
    model = save_and_load(hf_model(**CASES["post_ln_project"]), tmp_path)
    ids = torch.randint(0, VOCAB, (2, 30))
    # inputs_embeds are token embeddings before project_in (word_embed_proj_dim wide), as BLIP-2 gives them.
    with torch.no_grad():
        embeds = model.model.decoder.embed_tokens(ids)
    assert_kept_rows_match(model, model.lm_head, lambda: model(ids),
                           lambda: model(inputs_embeds=embeds, logits_to_keep=3), keep=3)


def test_bad_inputs_raise(tmp_path):
    model = save_and_load(hf_model(**CASES["pre_ln_project"]), tmp_path)
    ids = torch.randint(0, VOCAB, (2, 10))
    embeds = model.model.decoder.embed_tokens(ids)
    with torch.no_grad():
        with pytest.raises(ValueError, match="exactly one"):
            model(ids, inputs_embeds=embeds)
        with pytest.raises(ValueError, match="exactly one"):
            model()
        with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
            model(ids.float())
        with pytest.raises(ValueError, match="input_ids must be an integer tensor"):
            model(ids[0])
        with pytest.raises(ValueError, match=r"word_embed_proj_dim=32\), got shape \(2, 10, 64\)"):
            model(inputs_embeds=torch.randn(2, 10, 64))
        with pytest.raises(ValueError, match=r"attention_mask must be .* = \(2, 10\), got \(2, 9\)"):
            model(ids, attention_mask=torch.ones(2, 9, dtype=torch.long))
        with pytest.raises(ValueError, match=r"position_ids must be \(2, 10\)"):
            model(ids, position_ids=torch.arange(9))
        with pytest.raises(TypeError, match="position_ids must be an integer tensor"):
            model(ids, position_ids=torch.arange(10.0))
        with pytest.raises(ValueError, match="max_position_embeddings=128"):
            model(ids, position_ids=torch.arange(120, 130))
        with pytest.raises(ValueError, match="max_position_embeddings=128"):
            model(torch.randint(0, VOCAB, (1, 129)))
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, logits_to_keep=-1)
    # 128 positions are exactly the table: the last one still works, and matches Transformers.
    hf = hf_model(**CASES["pre_ln_project"])
    long_ids = torch.randint(0, VOCAB, (1, 128))
    with torch.no_grad():
        assert_close_rel(model(long_ids).logits, hf(long_ids).logits, "full position table", RTOL32)
