"""minivlm's Llama/Mistral decoder (minivlm/models/llama.py) against Transformers.

Each case builds a tiny random-weight LlamaForCausalLM / MistralForCausalLM in Transformers (tests/_llama.py),
saves it with save_pretrained and loads it with minivlm.from_pretrained, so the checkpoint goes through
minivlm's own loader. The weights are drawn with std 0.15 (not Transformers' 0.02) so that attention is sharp:
scores spread over several units, so a wrong position, mask or window changes the logits far beyond tolerance.

Tolerance (float32). Both implementations do the same float32 math in different orders (minivlm's
attention kernel vs Transformers' SDPA; other summation orders in the matmuls). Each logit ends a chain of
two layers of dot products of <= 96 terms, a softmax over <= 80 keys and RMSNorms; float32's unit
roundoff is 6e-8, and the observed differences are ~1e-6 of the largest logit (~5). We allow 1e-5 of
the largest logit, a 10x margin. KV-cache decoding against full recomputation is held to the same bound
(the same math with matmuls of other shapes).
"""
import pytest
import torch
import transformers

import minivlm
from minivlm.models.cache import KVCache
from minivlm.models.llama import LlamaConfig, rope_inv_freq
from _llama import VOCAB, hf_model
from helpers import (assert_close_rel, assert_kept_rows_match, assert_same_weights, check_cache_errors,
                     decode_in_chunks, edit_config, generate_positions, left_padded_mask, save_and_load)

RTOL32 = 1e-5    # times the largest reference logit; see the module docstring


CASES = {
    "llama_mha_untied": ("llama", dict()),
    "llama_mha_tied_bias": ("llama", dict(tie_word_embeddings=True, attention_bias=True, mlp_bias=True)),
    "mistral_gqa_no_window": ("mistral", dict(num_key_value_heads=2, sliding_window=None)),
    "mistral_gqa_window": ("mistral", dict(num_key_value_heads=2, sliding_window=8)),
    "mistral_mqa_window16": ("mistral", dict(num_key_value_heads=1, sliding_window=16)),
}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    model_type, overrides = CASES[case]
    hf = hf_model(model_type, **overrides)
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(0, VOCAB, (2, 72))          # >= 64 tokens: a window of 8 or 16 bites
    with torch.no_grad():
        expected = hf(ids).logits
        out = model(ids)
    assert out.logits.shape == expected.shape
    assert_close_rel(out.logits, expected, case, RTOL32)
    assert out.hidden_states.shape == (2, 72, 64)


@pytest.mark.parametrize("model_type,overrides", [("llama", {}), ("mistral", dict(num_key_value_heads=2, sliding_window=8))])
def test_left_padded_batch(model_type, overrides, tmp_path):
    hf = hf_model(model_type, **overrides)
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(0, VOCAB, (3, 70))
    mask = left_padded_mask([70, 64, 41], 70)
    with torch.no_grad():
        expected = hf(ids, attention_mask=mask).logits
        got = model(ids, attention_mask=mask).logits
        # A row without padding is not changed by its neighbours' padding.
        alone = model(ids[:1]).logits
    real = mask.bool()
    assert_close_rel(got[real], expected[real], "non-pad logits", RTOL32)
    assert_close_rel(got[0], alone[0], "unpadded row in a padded batch", RTOL32)


def test_tied_and_untied_head(tmp_path):
    tied = save_and_load(hf_model("llama", tie_word_embeddings=True), tmp_path / "tied")
    assert tied.lm_head.weight is tied.model.embed_tokens.weight
    assert tied.tied_weights() == {"lm_head.weight": "model.embed_tokens.weight"}
    untied = save_and_load(hf_model("llama"), tmp_path / "untied")
    assert untied.lm_head.weight is not untied.model.embed_tokens.weight
    assert not torch.equal(untied.lm_head.weight, untied.model.embed_tokens.weight)
    assert untied.tied_weights() == {}


def test_loss_matches_transformers(tmp_path):
    hf = hf_model("mistral", num_key_value_heads=2, sliding_window=8)
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(0, VOCAB, (2, 66))
    labels = ids.clone()
    labels[0, :10] = -100
    labels[1, 30:40] = -100
    with torch.no_grad():
        expected = hf(ids, labels=labels).loss
        got = model(ids, labels=labels).loss
    # A mean of float32 cross-entropies (~5) over 110 tokens: relative 1e-5 as for the logits.
    assert abs(got.item() - expected.item()) <= RTOL32 * abs(expected.item())


def _hub_spelling(scaling_key):
    """config.json as hub checkpoints write it: top-level rope_theta, rope_scaling with type/rope_type."""
    def edit(config):
        rope = config.pop("rope_parameters")
        config["rope_theta"] = rope.pop("rope_theta")
        rope_type = rope.pop("rope_type")
        config["rope_scaling"] = None if rope_type == "default" else {scaling_key: rope_type, **rope}
    return edit


@pytest.mark.parametrize("rope,scaling_key", [
    ({"rope_type": "default", "rope_theta": 500.0}, "type"),
    ({"rope_type": "linear", "rope_theta": 500.0, "factor": 2.5}, "type"),
    ({"rope_type": "linear", "rope_theta": 500.0, "factor": 2.5}, "rope_type"),
])
def test_rope_spellings_give_the_same_model(rope, scaling_key, tmp_path):
    hf = hf_model("llama", rope_parameters=dict(rope))
    hf.save_pretrained(tmp_path / "v5")
    hf.save_pretrained(tmp_path / "hub")
    edit_config(tmp_path / "hub", _hub_spelling(scaling_key))
    v5, hub = minivlm.from_pretrained(tmp_path / "v5"), minivlm.from_pretrained(tmp_path / "hub")
    assert v5.config == hub.config
    assert v5.config.rope_parameters == rope
    ids = torch.randint(0, VOCAB, (1, 40))
    assert_same_weights(hub, v5, "hub spelling")
    with torch.no_grad():
        assert_close_rel(hub(ids).logits, v5(ids).logits, "hub spelling", RTOL32)
    # Transformers reads the hub spelling to the same model.
    hf_hub = transformers.LlamaForCausalLM.from_pretrained(tmp_path / "hub").eval()
    with torch.no_grad():
        assert_close_rel(hub(ids).logits, hf_hub(ids).logits, "hub spelling vs Transformers", RTOL32)


@pytest.mark.parametrize("rope", [
    {"rope_type": "default", "rope_theta": 500000.0},
    {"rope_type": "linear", "rope_theta": 10000.0, "factor": 4.0},
    # head_dim 16, theta 1e4: wavelengths 6.3, 20, 63, 199, ... With an original context of 64 and
    # factors 1 / 4 they fall in all three llama3 bands (kept < 16 <= blended <= 64 < slowed down).
    {"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
     "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
])
def test_rope_types_match_transformers(rope, tmp_path):
    hf = hf_model("llama", num_key_value_heads=2, rope_parameters=dict(rope))
    model = save_and_load(hf, tmp_path)
    # The rotation speeds are the same float32 numbers, bit for bit.
    assert torch.equal(rope_inv_freq(model.config), hf.model.rotary_emb.inv_freq)
    ids = torch.randint(0, VOCAB, (2, 90))
    with torch.no_grad():
        assert_close_rel(model(ids).logits, hf(ids).logits, rope["rope_type"], RTOL32)


@pytest.mark.parametrize("rope_type", ["dynamic", "yarn", "longrope", "made_up"])
@pytest.mark.parametrize("key", ["rope_scaling", "rope_parameters"])
def test_unsupported_rope_type_raises(rope_type, key):
    with pytest.raises(ValueError, match=rope_type):
        LlamaConfig.from_dict({"model_type": "llama", key: {"rope_type": rope_type, "factor": 2.0}})


def test_rope_params_missing_or_bad_raise():
    with pytest.raises(ValueError, match="factor"):
        LlamaConfig.from_dict({"rope_scaling": {"type": "linear"}})
    with pytest.raises(ValueError, match="low_freq_factor"):
        LlamaConfig.from_dict({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}})
    with pytest.raises(ValueError, match="rope_theta"):
        LlamaConfig.from_dict({"rope_theta": -1.0})


@pytest.mark.parametrize("model_type", ["llama", "mistral"])
def test_config_defaults_match_transformers(model_type):
    """Fields a config.json omits get the defaults Transformers' LlamaConfig / MistralConfig give them."""
    hf_cls = transformers.LlamaConfig if model_type == "llama" else transformers.MistralConfig
    for given in ({}, {"hidden_size": 256, "num_attention_heads": 8}):
        ours, theirs = LlamaConfig.from_dict({"model_type": model_type, **given}), hf_cls(**given)
        for name in ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim", "hidden_act", "max_position_embeddings", "rms_norm_eps",
                     "rope_parameters", "tie_word_embeddings", "bos_token_id", "eos_token_id", "pad_token_id"):
            assert getattr(ours, name) == getattr(theirs, name), name
        assert ours.sliding_window == getattr(theirs, "sliding_window", None)
        assert (ours.attention_bias, ours.mlp_bias) == ((theirs.attention_bias, theirs.mlp_bias)
                                                        if model_type == "llama" else (False, False))
    assert LlamaConfig.from_dict({"model_type": "mistral", "sliding_window": None}).sliding_window is None
    assert LlamaConfig.from_dict({"model_type": "mistral", "sliding_window": 0}).sliding_window is None
    assert LlamaConfig.from_dict({"model_type": "llama", "sliding_window": 16}).sliding_window is None


def test_bad_config_values_raise():
    with pytest.raises(ValueError, match="model_type"):
        LlamaConfig(model_type="gpt2")
    with pytest.raises(ValueError, match="num_key_value_heads"):
        LlamaConfig.from_dict({"num_attention_heads": 32, "num_key_value_heads": 5})
    with pytest.raises(ValueError, match="hidden_act"):
        LlamaConfig.from_dict({"hidden_act": "swishy"})
    with pytest.raises(ValueError, match="head_dim"):
        LlamaConfig.from_dict({"head_dim": 7})
    for name in ("num_attention_heads", "hidden_size"):     # not a ZeroDivisionError deriving head_dim
        with pytest.raises(ValueError, match=f"{name} must be a positive int, got 0"):
            LlamaConfig.from_dict({name: 0})


# --------------------------------------------------------------------------------------------------
# KV cache: decoding token by token, or in chunks, equals recomputing the whole sequence
# --------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model_type,overrides", [
    ("llama", dict(num_key_value_heads=2)),
    ("mistral", dict(num_key_value_heads=2, sliding_window=8)),      # the window bites in decode too
])
@pytest.mark.parametrize("chunks", [[20] + [1] * 50, [7] * 10], ids=["token_by_token", "chunked_prefill"])
def test_cache_decoding_equals_recomputation(model_type, overrides, chunks, tmp_path):
    model = save_and_load(hf_model(model_type, **overrides), tmp_path)
    T = sum(chunks)
    ids = torch.randint(0, VOCAB, (2, T))
    with torch.no_grad():
        full = model(ids).logits
        cached = decode_in_chunks(model, ids, chunks)
    assert_close_rel(cached, full, f"{model_type} cache", RTOL32)


@pytest.mark.parametrize("model_type,overrides", [("llama", {}), ("mistral", dict(num_key_value_heads=2, sliding_window=8))])
def test_cache_decoding_with_left_padding(model_type, overrides, tmp_path):
    hf = hf_model(model_type, **overrides)
    model = save_and_load(hf, tmp_path)
    ids = torch.randint(0, VOCAB, (2, 60))
    mask = left_padded_mask([60, 35], 60)
    positions = generate_positions(mask)
    with torch.no_grad():
        full = model(ids, attention_mask=mask, position_ids=positions).logits
        expected = hf(ids, attention_mask=mask, position_ids=positions).logits
        cached = decode_in_chunks(model, ids, [30] + [1] * 30, mask, positions)
    real = mask.bool()
    assert_close_rel(cached[real], full[real], "padded cache", RTOL32)
    assert_close_rel(full[real], expected[real], "padded with generate's positions vs Transformers", RTOL32)


def test_cache_errors(tmp_path):
    model = save_and_load(hf_model("llama"), tmp_path)
    cache = check_cache_errors(model, VOCAB)
    assert isinstance(cache, KVCache) and cache.keys[0].shape == (2, 4, 10, 16)


def test_inputs_embeds_and_logits_to_keep(tmp_path):
    model = save_and_load(hf_model("mistral", num_key_value_heads=2, sliding_window=8), tmp_path)
    ids = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        embeds = model.model.embed_tokens(ids)
    assert_kept_rows_match(model, model.lm_head, lambda: model(ids),
                           lambda: model(inputs_embeds=embeds, logits_to_keep=3), keep=3)
    with pytest.raises(ValueError, match="exactly one"):
        model(ids, inputs_embeds=model.model.embed_tokens(ids))
