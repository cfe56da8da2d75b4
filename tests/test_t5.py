"""minivlm's T5 / Flan-T5 (minivlm/models/t5.py) and encoder-decoder generation against Transformers.

Each case builds a tiny random-weight T5ForConditionalGeneration in Transformers (tests/_t5.py: d_model 64, 4
heads of 16, d_ff 128, 2 + 2 blocks, vocab 128, 32 buckets, max_distance 20), saves it with save_pretrained
and loads it with minivlm.from_pretrained. Sequences of ~40 tokens reach distances beyond max_distance, so the
log-spaced and the last buckets are used. Encoder batches are right-padded, as T5 tokenizers pad. The two
cases are Flan-T5's layout (gated-gelu, untied lm_head, no output rescale) and T5 v1.0's (relu, tied lm_head,
decoder output * d_model^-0.5).

Weights: q, k and the FFN ~ N(0, 0.1), v and o ~ N(0, 0.3), embeddings and the untied lm_head ~ N(0, 0.5),
relative biases ~ N(0, 1) (so the bias visibly moves attention), norm weights ~ 1 + N(0, 0.2). T5's q.k is
unscaled, so larger q/k weights make attention so sharp that float32 rounding is amplified past 1e-6;
these keep attention peaked yet well-conditioned, and the tied head does not just repeat the input token.

Tolerance (float32): both sides do the same float32 math in different orders (minivlm's attention kernel vs
SDPA, other matmul shapes). Each logit ends a chain of 4 blocks of dot products of <= 128 terms and softmaxes
over <= 40 keys, with float32's unit roundoff 6e-8; the measured differences are <= 8e-7 of the largest
logit, for Transformers vs minivlm and for cached vs full decoding alike. We allow 1e-5 of the largest logit
(>= 10x margin). Greedy tokens are compared exactly in float64, where minivlm and Transformers agree to
~1e-14 (T5LayerNorm's mean square is float32 on both sides, rounded identically), far below the top-2 gaps.
"""
import json

import pytest
import torch
import transformers
from safetensors.torch import load_file, save_file

import minivlm
from minivlm.loading import load_weights
from minivlm.models.t5 import T5Config, T5ForConditionalGeneration, relative_position_bucket
from _t5 import VOCAB, hf_model, right_padded
from helpers import assert_close_rel, save_and_load

RTOL32 = 1e-5     # times the largest reference value; see the module docstring
CASES = {"flan_gated_gelu_untied": ("gated-gelu", False), "t5v1_relu_tied": ("relu", True)}


@pytest.mark.parametrize("case", list(CASES))
def test_logits_match_transformers(case, tmp_path):
    hf = hf_model(*CASES[case])
    model = save_and_load(hf, tmp_path)
    assert isinstance(model, T5ForConditionalGeneration)
    assert (model.lm_head.weight is model.shared.weight) == CASES[case][1]
    ids, mask = right_padded([40, 29, 35], 40)
    dec = torch.randint(2, VOCAB, (3, 38), generator=torch.Generator().manual_seed(5))
    dec_mask = torch.ones(3, 38, dtype=torch.long)
    dec_mask[1, 30:] = 0                                    # a right-padded decoder row too
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec, decoder_attention_mask=dec_mask)
        expected_enc = hf.encoder(input_ids=ids, attention_mask=mask).last_hidden_state
        got = model(ids, mask, dec, dec_mask)
        got_enc = model.encode(ids, mask)
    real_enc, real_dec = mask.bool(), dec_mask.bool()
    assert_close_rel(got_enc[real_enc], expected_enc[real_enc], "encoder states", RTOL32)
    assert_close_rel(got.logits[real_dec], expected.logits[real_dec], "logits", RTOL32)
    # The bias matters: zeroing it moves the logits far beyond the tolerance.
    with torch.no_grad():
        model.encoder.block[0].layer[0].SelfAttention.relative_attention_bias.weight.zero_()
        moved = model(ids, mask, dec, dec_mask).logits
    assert (moved - expected.logits)[real_dec].abs().max() > 100 * RTOL32 * expected.logits.abs().max()


@pytest.mark.parametrize("case", list(CASES))
def test_loss_matches_transformers(case, tmp_path):
    hf = hf_model(*CASES[case])
    model = save_and_load(hf, tmp_path)
    ids, mask = right_padded([33, 40], 40)
    labels = torch.randint(2, VOCAB, (2, 25), generator=torch.Generator().manual_seed(3))
    labels[0, 20:] = -100                                   # ignored positions (also become pad inputs)
    with torch.no_grad():
        expected = hf(input_ids=ids, attention_mask=mask, labels=labels)
        got = model(ids, mask, labels=labels)
    assert_close_rel(got.logits, expected.logits, "logits from labels", RTOL32)
    assert abs(got.loss.item() - expected.loss.item()) <= RTOL32 * expected.loss.item()
    # labels -> decoder inputs: start token, then the labels shifted right, -100 -> pad.
    shifted = model.shift_right(labels)
    assert shifted[:, 0].eq(0).all() and torch.equal(shifted[1, 1:], labels[1, :-1])
    assert shifted[0, 21:].eq(0).all()


@pytest.mark.parametrize("case", list(CASES))
def test_greedy_generation_matches_transformers(case, tmp_path):
    hf = hf_model(*CASES[case])
    hf.save_pretrained(tmp_path)
    hf, model = hf.double(), minivlm.from_pretrained(tmp_path, dtype=torch.float64)
    ids, mask = right_padded([40, 29, 35], 40, seed=2)
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    assert got.dtype == torch.long and got.shape == (3, 13)    # decoder start + 12 new tokens
    assert torch.equal(got, expected)
    assert got[:, 0].eq(0).all()
    assert len(set(got[:, 1:].flatten().tolist())) > 3         # a real continuation, not one repeated token
    # A padded row continues exactly as it does alone.
    alone = model.generate(ids[1:2, :29], max_new_tokens=12)
    assert torch.equal(alone[0], got[1])


def test_generation_eos_finishes_rows(tmp_path):
    hf = hf_model("gated-gelu", False)
    hf.save_pretrained(tmp_path)
    hf, model = hf.double(), minivlm.from_pretrained(tmp_path, dtype=torch.float64)
    ids, mask = right_padded([40, 29, 35], 40, seed=2)
    free = model.generate(ids, attention_mask=mask, max_new_tokens=12)
    eos = int(free[0, 3])                                   # row 0 stops at its third new token
    expected = hf.generate(ids, attention_mask=mask, max_new_tokens=12, do_sample=False, eos_token_id=eos)
    got = model.generate(ids, attention_mask=mask, max_new_tokens=12, eos_token_id=eos)
    assert torch.equal(got, expected)
    assert got[0, 4:].eq(0).all()                           # finished: the pad id after eos


@pytest.mark.parametrize("case", list(CASES))
def test_cached_decoding_matches_full_recomputation(case, tmp_path):
    model = save_and_load(hf_model(*CASES[case]), tmp_path)
    ids, mask = right_padded([40, 26], 40, seed=4)
    dec = torch.randint(2, VOCAB, (2, 30), generator=torch.Generator().manual_seed(6))
    with torch.no_grad():
        enc = model.encode(ids, mask)
        full = model.decode(dec, enc, mask).logits                           # (2, 30, vocab)
        cache = model.new_cache(2, 30)
        steps = [model.decode(dec[:, :6], enc, mask, cache=cache).logits]    # a 6-token prefill, then 1 by 1
        for t in range(6, 30):
            steps.append(model.decode(dec[:, t:t + 1], enc, mask, cache=cache, logits_to_keep=1).logits)
    assert cache.length == 30 and all(kv is not None for kv in cache.cross)
    assert_close_rel(torch.cat(steps, dim=1), full, "cached decoding", RTOL32)


def test_relative_bias_gradient_matches_transformers(tmp_path):
    hf = hf_model("gated-gelu", False)
    hf.save_pretrained(tmp_path)
    hf, model = hf.double(), minivlm.from_pretrained(tmp_path, dtype=torch.float64)
    ids, mask = right_padded([40, 31], 40, seed=7)
    labels = torch.randint(2, VOCAB, (2, 30), generator=torch.Generator().manual_seed(8))
    hf(input_ids=ids, attention_mask=mask, labels=labels).loss.backward()
    model(ids, mask, labels=labels).loss.backward()
    for stack in ("encoder", "decoder"):    # the learned bias gets a gradient through the attention mask
        name = f"{stack}.block.0.layer.0.SelfAttention.relative_attention_bias.weight"
        assert model.get_parameter(name).grad.abs().max() > 0, name
    for name, p in model.named_parameters():
        # float64 on both sides: measured agreement <= 8e-15 of the largest gradient entry.
        assert_close_rel(p.grad, hf.get_parameter(name).grad, f"grad of {name}", 1e-12)


def test_float16_keeps_wo_in_float32(tmp_path):
    """Transformers keeps `wo` float32 for a float16 model only (bfloat16 and float64 stay uniform)."""
    hf = hf_model("gated-gelu", False)
    hf.save_pretrained(tmp_path)
    for dtype in (torch.bfloat16, torch.float64):
        other = minivlm.from_pretrained(tmp_path, dtype=dtype)
        assert {p.dtype for p in other.parameters()} == {dtype}
    model = minivlm.from_pretrained(tmp_path, dtype=torch.float16)
    wo = [n for n, p in model.named_parameters() if n.endswith(".wo.weight")]
    assert len(wo) == 4 and all(model.get_parameter(n).dtype == torch.float32 for n in wo)
    assert model.shared.weight.dtype == torch.float16 and model.lm_head.weight.dtype == torch.float16
    hf16 = transformers.T5ForConditionalGeneration.from_pretrained(tmp_path, dtype=torch.float16).eval()
    assert hf16.decoder.block[0].layer[2].DenseReluDense.wo.weight.dtype == torch.float32
    ids, mask = right_padded([40, 29], 40)
    dec = torch.randint(2, VOCAB, (2, 20), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        got = model(ids, mask, dec).logits
        expected = hf16(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        reference = hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
    assert got.dtype == expected.dtype == torch.float16
    # float16's unit roundoff is 4.9e-4; measured: 1.8e-3 of the largest logit between the two float16 runs,
    # 3.4e-3 from float32 (Transformers' own float16 run: 3.7e-3). Bounds 10x those.
    assert_close_rel(got.float(), expected.float(), "float16 logits", 2e-2)
    assert_close_rel(got.float(), reference, "float16 vs float32 logits", 4e-2)


def test_hub_style_checkpoint_loads(tmp_path):
    """A hub Flan-T5 folder: tie_word_embeddings false (no scale_decoder_outputs), encoder/decoder copies of
    the embedding, and the unused relative bias of the decoder's first cross-attention (older checkpoints)."""
    hf = hf_model("gated-gelu", False)
    hf.save_pretrained(tmp_path)
    tensors = load_file(tmp_path / "model.safetensors")
    tensors["encoder.embed_tokens.weight"] = tensors["shared.weight"].clone()
    tensors["decoder.embed_tokens.weight"] = tensors["shared.weight"].clone()
    tensors["decoder.block.0.layer.1.EncDecAttention.relative_attention_bias.weight"] = torch.zeros(32, 4)
    save_file(tensors, tmp_path / "model.safetensors")
    config = json.loads((tmp_path / "config.json").read_text())
    del config["scale_decoder_outputs"]
    config["tie_word_embeddings"] = False
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.warns(UserWarning, match=r"'lm_head\.weight' would share 'shared\.weight'"):
        model = minivlm.from_pretrained(tmp_path)
    assert model.config.tie_word_embeddings and not model.config.scale_decoder_outputs
    # The stored copies equal `shared`: tied to it. The stored lm_head differs: a weight of its own.
    assert model.encoder.embed_tokens.weight is model.shared.weight is model.decoder.embed_tokens.weight
    assert model.lm_head.weight is not model.shared.weight
    ids, mask = right_padded([20, 14], 20)
    dec = torch.randint(2, VOCAB, (2, 10))
    with torch.no_grad():
        assert_close_rel(model(ids, mask, dec).logits,
                         hf(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits, "hub-style logits",
                         RTOL32)
    # A tied (T5 v1.0) model also reads a file that stores lm_head.weight (= shared) explicitly.
    tied = T5ForConditionalGeneration(T5Config.from_dict({**config, "tie_word_embeddings": True}))
    load_weights(tied, {**tensors, "lm_head.weight": tensors["shared.weight"]})
    assert tied.lm_head.weight is tied.shared.weight


def test_config_defaults_match_transformers():
    ours, theirs = T5Config.from_dict({"model_type": "t5"}), transformers.T5Config()
    for name in ("vocab_size", "d_model", "d_kv", "d_ff", "num_layers", "num_decoder_layers", "num_heads",
                 "relative_attention_num_buckets", "relative_attention_max_distance", "layer_norm_epsilon",
                 "feed_forward_proj", "pad_token_id", "eos_token_id", "dense_act_fn", "is_gated_act"):
        assert getattr(ours, name) == getattr(theirs, name), name
    assert (ours.tie_word_embeddings, ours.scale_decoder_outputs) == (True, True)
    assert ours.decoder_start_token_id == 0 == ours.pad_token_id          # T5: the decoder starts from pad
    assert T5Config.from_dict({"num_layers": 3}).num_decoder_layers == 3
    for proj in ("gated-gelu", "gated-silu", "relu", "gelu"):
        ours, theirs = T5Config.from_dict({"feed_forward_proj": proj}), transformers.T5Config(feed_forward_proj=proj)
        assert (ours.dense_act_fn, ours.is_gated_act) == (theirs.dense_act_fn, theirs.is_gated_act), proj
    # What Transformers 5.x writes: tie_word_embeddings forced true, the original kept as scale_decoder_outputs.
    written = transformers.T5Config(tie_word_embeddings=False).to_dict()
    assert written["tie_word_embeddings"] is True and written["scale_decoder_outputs"] is False
    assert T5Config.from_dict(written).scale_decoder_outputs is False


@pytest.mark.parametrize("d", [
    {}, {"tie_word_embeddings": False}, {"tie_word_embeddings": True}, {"tie_word_embeddings": None},
    {"tie_word_embeddings": True, "scale_decoder_outputs": False},    # Transformers 5.x re-saving a v1.1
    {"tie_word_embeddings": False, "scale_decoder_outputs": False},   # ... one untied by hand
    {"tie_word_embeddings": False, "scale_decoder_outputs": True},
    {"scale_decoder_outputs": False},
])
def test_tie_and_scale_read_as_transformers(d):
    """The output scaling is the tie flag as given unless the file stores scale_decoder_outputs; the
    config's tie_word_embeddings is then True (the checkpoint decides what is really shared)."""
    ours, theirs = T5Config.from_dict(dict(d)), transformers.T5Config.from_dict(dict(d))
    assert (ours.tie_word_embeddings, ours.scale_decoder_outputs) == \
        (theirs.tie_word_embeddings, theirs.scale_decoder_outputs), d
    assert ours.tie_word_embeddings is True


# The layouts of T5 folders in the wild, written here: (config.json's tie_word_embeddings, its
# scale_decoder_outputs, whether lm_head.weight is stored (its own values), the embedding copies stored);
# None = the key is absent. The model is Flan-T5 shaped (gated-gelu); the layouts differ only in these.
LAYOUTS = {
    "hub_flan_t5": (False, None, True, ["encoder", "decoder"]),     # the hub's Flan-T5 / T5 v1.1
    "saved_v1_1": (True, False, False, []),                          # a v1.1 save_pretrained by Transformers 5.x
    "saved_flan_t5": (True, False, True, []),                        # Flan-T5 save_pretrained by Transformers 5.x
    "hub_t5_v1_0": (None, None, False, ["encoder", "decoder"]),     # classic T5: tied and scaled
    "saved_t5_v1_0": (True, True, False, []),
}


def write_layout(folder, out, layout, prefix="", config_of=lambda c: c):
    """Rewrite a saved T5 (untied lm_head) folder into `layout`: its config.json (the T5 config being
    config_of(the whole config)) and its tensors (the T5's under `prefix`)."""
    tie, scale, head, copies = LAYOUTS[layout]
    out.mkdir()
    config = json.loads((folder / "config.json").read_text())
    t5 = config_of(config)
    for key, value in (("tie_word_embeddings", tie), ("scale_decoder_outputs", scale)):
        t5.pop(key, None)
        if value is not None:
            t5[key] = value
    (out / "config.json").write_text(json.dumps(config))
    tensors = load_file(folder / "model.safetensors")
    assert f"{prefix}lm_head.weight" in tensors
    if not head:
        del tensors[f"{prefix}lm_head.weight"]
    for stack in copies:
        tensors[f"{prefix}{stack}.embed_tokens.weight"] = tensors[f"{prefix}shared.weight"].clone()
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    return out


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_loads_like_transformers(layout, tmp_path):
    """Each layout loads, with Transformers' output scaling and its sharing of the lm_head."""
    hf = hf_model("gated-gelu", False)
    hf.save_pretrained(tmp_path / "saved")
    folder = write_layout(tmp_path / "saved", tmp_path / layout, layout)
    model = minivlm.from_pretrained(folder)
    theirs = transformers.T5ForConditionalGeneration.from_pretrained(folder).eval()
    assert model.config.scale_decoder_outputs == theirs.config.scale_decoder_outputs
    assert (model.lm_head.weight is model.shared.weight) == (theirs.lm_head.weight is theirs.shared.weight) \
        == (not LAYOUTS[layout][2])
    assert model.encoder.embed_tokens.weight is model.shared.weight is model.decoder.embed_tokens.weight
    ids, mask = right_padded([30, 17], 30)
    dec = torch.randint(2, VOCAB, (2, 12), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, decoder_input_ids=dec).logits
        assert_close_rel(model(ids, mask, dec).logits, expected, f"{layout} logits", RTOL32)


def test_relative_position_buckets():
    rel = torch.arange(-60, 61)[None, :]                    # key - query
    enc = relative_position_bucket(rel, True, 32, 20)
    dec = relative_position_bucket(rel, False, 32, 20)
    expected_enc = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(rel, True, 32, 20)
    expected_dec = transformers.models.t5.modeling_t5.T5Attention._relative_position_bucket(rel, False, 32, 20)
    assert torch.equal(enc, expected_enc) and torch.equal(dec, expected_dec)
    # Encoder: keys before the query in buckets 0-15, after it in 16-31; beyond max_distance: the last one.
    assert (enc[0, 59], enc[0, 60], enc[0, 61], enc[0, 0], enc[0, -1]) == (1, 0, 17, 15, 31)
    assert dec[0, 60:].eq(0).all() and dec[0, 59] == 1 and dec[0, 0] == 31   # decoder: future keys share 0


@pytest.mark.parametrize("d, match", [
    ({"model_type": "llama"}, "model_type"),
    ({"d_model": 0}, "d_model"),
    ({"num_heads": 2.0}, "num_heads"),
    ({"feed_forward_proj": "fancy-gelu"}, "feed_forward_proj"),
    ({"feed_forward_proj": "gated-gelu-new"}, "feed_forward_proj"),
    ({"feed_forward_proj": "gated-mish"}, "feed_forward_proj"),
    ({"relative_attention_num_buckets": 2}, "relative_attention_num_buckets"),
    ({"relative_attention_max_distance": 8}, "relative_attention_max_distance"),
    ({"layer_norm_epsilon": -1.0}, "layer_norm_epsilon"),
    ({"tie_word_embeddings": "false"}, "tie_word_embeddings must be a bool, got 'false'"),
    ({"scale_decoder_outputs": 1}, "scale_decoder_outputs must be a bool, got 1"),
])
def test_bad_config_raises(d, match):
    with pytest.raises(ValueError, match=match):
        T5Config.from_dict(d)


def test_bad_inputs_raise():
    torch.manual_seed(0)
    model = T5ForConditionalGeneration(T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64,
                                                num_layers=1)).eval()
    ids = torch.randint(2, VOCAB, (2, 7))
    enc = model.encode(ids)
    cases = [
        (lambda: model(ids), "decoder_input_ids, or labels"),
        (lambda: model.encode(ids, inputs_embeds=torch.zeros(2, 7, 32)), "exactly one of input_ids"),
        (lambda: model.encode(ids.float()), "input_ids must be an integer"),
        (lambda: model.encode(inputs_embeds=torch.zeros(2, 7, 16)), "inputs_embeds must be"),
        (lambda: model.encode(ids, torch.ones(2, 6)), r"attention_mask must be a tensor of shape \(2, 7\)"),
        (lambda: model.encode(ids, torch.full((2, 7), 2)), "only 0 \\(pad\\) and 1"),
        (lambda: model.decode(ids, enc[:, :, :16]), "encoder_hidden_states must be"),
        (lambda: model.decode(ids, enc[:1]), "encoder_hidden_states must be"),
        (lambda: model.decode(ids, enc, torch.ones(2, 5)), "encoder_attention_mask"),
        (lambda: model.decode(ids, enc, logits_to_keep=-1), "logits_to_keep"),
        (lambda: model(ids, decoder_input_ids=ids, labels=ids[:, :3]), "labels: expected shape"),
        (lambda: model(ids, encoder_hidden_states=enc, decoder_input_ids=ids), "not both"),
        (lambda: model.decode(ids, enc, cache=model.new_cache(3, 10)), "batch size 3"),
        (lambda: model.decode(ids, enc, cache=model.new_cache(2, 4)), "max_length=4"),
        (lambda: model.generate(ids, max_new_tokens=0), "max_new_tokens"),
    ]
    for call, match in cases:
        with pytest.raises(ValueError, match=match):
            call()
    model.config.decoder_start_token_id = None
    model.generation_config = None
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model.generate(ids, max_new_tokens=2)
    with pytest.raises(ValueError, match="decoder_start_token_id"):
        model(ids, labels=ids)


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_every_layout_loads_inside_blip2(layout, tmp_path):
    """The same layouts as BLIP-2's language model (text_config, language_model.* tensors)."""
    from _blip2 import IMAGE_TOKEN, hf_config, hf_model as blip2_model, pixel_values, t5_prompts

    hf = blip2_model(hf_config("t5"))
    hf.save_pretrained(tmp_path / "saved")
    folder = write_layout(tmp_path / "saved", tmp_path / layout, layout, "language_model.",
                          lambda c: c["text_config"])
    model = minivlm.from_pretrained(folder)
    theirs = type(hf).from_pretrained(folder).eval()
    lm, their_lm = model.language_model, theirs.language_model
    assert lm.config.scale_decoder_outputs == their_lm.config.scale_decoder_outputs
    assert (lm.lm_head.weight is lm.shared.weight) == (their_lm.lm_head.weight is their_lm.shared.weight) \
        == (not LAYOUTS[layout][2])
    ids, mask = t5_prompts([5, 3])
    pv = pixel_values(2)
    dec = torch.randint(4, IMAGE_TOKEN, (2, 6), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        expected = theirs(input_ids=ids, attention_mask=mask, pixel_values=pv, decoder_input_ids=dec).logits
        got = model(ids, pixel_values=pv, attention_mask=mask, decoder_input_ids=dec).logits
    assert_close_rel(got, expected, f"BLIP-2 {layout} logits", RTOL32)
