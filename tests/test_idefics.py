"""IDEFICS parity with Transformers on tiny random-weight checkpoints, loaded by minivlm's loader.

Each case builds a Transformers IdeficsForVisionText2Text (alphas away from zero, so every gated block
contributes), saves it with save_pretrained, loads the folder with minivlm.from_pretrained and compares
logits at the real (non-pad) positions of interleaved prompts (several images per row, text before the
first image, the additional-vocabulary <fake>/<image> ids), the image states, the loss, greedy generation
in float64, the KV cache against full recomputation, and the errors for bad inputs.
"""
import pytest
import torch
import torch.nn.functional as F

import minivlm
from minivlm.models.idefics import IdeficsConfig, IdeficsForVisionText2Text, IdeficsRMSNorm
from minivlm.models.llama import LlamaRMSNorm
from _idefics import BOS, EOS, EXTRA, FAKE, IMAGE, VOCAB, hf_config, hf_model, pixel_values, prompts
from helpers import assert_close_rel

# float32 tolerance, relative to the largest logit. Both sides run the same float32 math in a different
# order (minivlm's blocked attention kernel against SDPA and an einsum softmax in the resampler, other GEMM
# blockings), so each dot product differs by a few units of roundoff (2^-24 ~ 6e-8) times the square root of
# its length (<= 128 terms) and the magnitudes involved. Through 2 vision layers, the resampler, 2 gated
# blocks and 4 decoder layers this was measured at <= 1e-6 of the largest logit; 1e-5 leaves a 10x margin,
# while a real bug (a wrong image mask, gate, position, norm or alpha) moves logits by 1e-2 of their scale
# or more (test_gated_blocks_and_image_mask_matter checks that the tested paths do move them).
F32_REL = 1e-5

# Row 0: text, two images with text between and after; row 1 (left-padded): one image. Row 2 of the longer
# batch sees three images; row 3 has a long text before its only image.
LAYOUT = [[3, "img", 5, "img", 2], [2, "img", 4]]
LAYOUT_MANY = [[3, "img", 5, "img", 2], [2, "img", 4], [1, "img", 2, "img", 1, "img", 3], [9, "img", 1]]

CASES = {
    "resampler-qknorm-vector": dict(use_resampler=True, qk_layer_norms=True, alpha_type="vector", qk_perceiver=True),
    "resampler-float": dict(use_resampler=True, qk_layer_norms=False, alpha_type="float", qk_perceiver=False),
    "noresampler-qknorm-float": dict(use_resampler=False, qk_layer_norms=True, alpha_type="float"),
    "noresampler-vector-tied": dict(use_resampler=False, qk_layer_norms=False, alpha_type="vector", tie=True),
}


def build_checkpoint(**options):
    """The Transformers model the checkpoints fixture (conftest.py) saves for one configuration."""
    return hf_model(hf_config(**options))


def run_hf(hf, ids, mask, image_mask, pv, **kwargs):
    with torch.no_grad():
        return hf(input_ids=ids, attention_mask=mask, pixel_values=pv, image_attention_mask=image_mask, **kwargs)


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_logits_match_transformers(checkpoints, case):
    hf, folder = checkpoints(**case)
    model = minivlm.from_pretrained(folder)
    assert isinstance(model, IdeficsForVisionText2Text)
    ids, mask, image_mask = prompts(LAYOUT)
    assert (mask == 0).any() and (ids >= VOCAB).any() and image_mask.shape[-1] == 2
    assert not image_mask[0, :4].any()                        # text before the first image sees none
    pv = pixel_values(2, 2)
    ref = run_hf(hf, ids, mask, image_mask, pv)
    with torch.no_grad():
        out = model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask)
    assert out.logits.shape == ref.logits.shape == (2, ids.shape[1], VOCAB + EXTRA)
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL, mask)
    assert_close_rel(out.image_hidden_states, ref.image_hidden_states, "image states", F32_REL)
    if case.get("tie"):
        assert model.lm_head.weight is model.model.embed_tokens.weight
        assert model.lm_head.additional_fc.weight is model.model.embed_tokens.additional_embedding.weight


def test_many_images_and_rows(checkpoints):
    hf, folder = checkpoints(**CASES["resampler-qknorm-vector"])
    model = minivlm.from_pretrained(folder)
    ids, mask, image_mask = prompts(LAYOUT_MANY, seed=1)
    assert image_mask.shape[-1] == 3
    pv = pixel_values(4, 3, seed=2)
    ref = run_hf(hf, ids, mask, image_mask, pv)
    with torch.no_grad():
        out = model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask)
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL, mask)
    # Without padding (a single row) no self-attention mask is built: the kernel's causal band is used.
    one = slice(0, 1)
    ref = run_hf(hf, ids[one, -18:], None, image_mask[one, -18:], pv[one])
    with torch.no_grad():
        out = model(ids[one, -18:], pixel_values=pv[one], image_attention_mask=image_mask[one, -18:])
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL)


def test_gated_blocks_and_image_mask_matter(checkpoints):
    """The paths the parity tests compare are live: zero alphas move the logits; an image moves only the
    tokens that see it (one-hot on the most recent image), so the text before the first image is blind."""
    _, folder = checkpoints(**CASES["resampler-qknorm-vector"])
    model = minivlm.from_pretrained(folder)
    ids, mask, image_mask = prompts(LAYOUT)
    pv = pixel_values(2, 2)
    with torch.no_grad():
        base = model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask).logits
        pv2 = pv.clone()
        pv2[0, 1] += 1.0                                                     # row 0's second image
        moved = model(ids, pixel_values=pv2, attention_mask=mask, image_attention_mask=image_mask).logits
        for block in model.model.gated_cross_attn_layers:
            block.alpha_cross_attn.zero_()
        no_xattn = model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask).logits
    scale = base.abs().max().item()
    keep = mask.bool()
    assert (no_xattn - base)[keep].abs().max() > 1e-2 * scale
    second = int(image_mask[0, :, 1].nonzero()[0])                          # the second <image> token of row 0
    assert ids[0, second] == IMAGE
    assert (moved[0, :second] - base[0, :second]).abs().max() <= 1e-6 * scale   # blind to image 1
    assert (moved[0, second:] - base[0, second:]).abs().max() > 1e-3 * scale
    assert torch.equal(moved[1], base[1])
    first = int(image_mask[0, :, 0].nonzero()[0])                           # before it: no image at all
    assert (no_xattn[0, :first] - base[0, :first]).abs().max() <= 1e-6 * scale


def test_image_states_can_be_passed_instead_of_pixels(checkpoints):
    for case in ("resampler-float", "noresampler-qknorm-float"):
        _, folder = checkpoints(**CASES[case])
        model = minivlm.from_pretrained(folder)
        ids, mask, image_mask = prompts(LAYOUT)
        pv = pixel_values(2, 2)
        with torch.no_grad():
            out = model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask)
            name = "perceiver_embeddings" if model.config.use_resampler else "image_encoder_embeddings"
            again = model(ids, attention_mask=mask, image_attention_mask=image_mask,
                          **{name: out.image_hidden_states})
        assert torch.equal(again.logits, out.logits), case


def test_loss(checkpoints):
    """Without additional ids the loss equals Transformers'. With them Transformers fails (its loss
    reshapes the vocab + extra logits to (-1, vocab_size)); minivlm's is the cross-entropy over all of them."""
    ids, mask, image_mask = prompts(LAYOUT)
    pv = pixel_values(2, 2)
    # Position t predicts labels[t + 1]: bos gets no label, so no logit at a pad position enters the loss.
    labels = ids.masked_fill((mask == 0) | (ids == BOS), -100)
    hf, folder = checkpoints(**CASES["resampler-float"], additional_vocab_size=0)
    model = minivlm.from_pretrained(folder)
    ids0 = ids.masked_fill(ids >= VOCAB, 5)                                # no additional vocabulary here
    ref = run_hf(hf, ids0, mask, image_mask, pv, labels=labels.masked_fill(labels >= VOCAB, 5)).loss
    with torch.no_grad():
        ours = model(ids0, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask,
                     labels=labels.masked_fill(labels >= VOCAB, 5)).loss
    assert abs(ours.item() - ref.item()) <= F32_REL * abs(ref.item())

    hf, folder = checkpoints(**CASES["resampler-float"])
    model = minivlm.from_pretrained(folder)
    with pytest.raises(RuntimeError):
        run_hf(hf, ids, mask, image_mask, pv, labels=labels)
    logits = run_hf(hf, ids, mask, image_mask, pv).logits
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, VOCAB + EXTRA), labels[:, 1:].reshape(-1))
    with torch.no_grad():
        ours = model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask, labels=labels).loss
    assert abs(ours.item() - expected.item()) <= F32_REL * abs(expected.item())


@pytest.mark.parametrize("case", ["resampler-qknorm-vector", "noresampler-qknorm-float"])
def test_greedy_generation_matches_transformers_float64(checkpoints, case):
    """In float64 the two implementations agree to ~1e-13, far below any gap between the top two logits,
    so the greedy tokens must be identical. Transformers extends image_attention_mask with its last row
    for new tokens; minivlm keeps that row (and the image states) in the cache."""
    hf, folder = checkpoints(**CASES[case])
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask, image_mask = prompts(LAYOUT)
    pv = pixel_values(2, 2)                  # float32, as a processor emits: both models cast it
    n_new = 12
    with torch.no_grad():
        ref = hf.double().generate(input_ids=ids, attention_mask=mask, pixel_values=pv,
                                   image_attention_mask=image_mask, max_new_tokens=n_new, do_sample=False,
                                   eos_token_id=EOS, pad_token_id=0)
    hf.float()
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, image_attention_mask=image_mask,
                          max_new_tokens=n_new)
    assert ours.dtype == torch.long
    assert torch.equal(ours, ref), f"\nours {ours[:, ids.shape[1]:]}\nref  {ref[:, ids.shape[1]:]}"
    assert ours.shape[1] - ids.shape[1] >= 10


def test_kv_cache_decoding_equals_full_recomputation(checkpoints):
    """Prefill with the images, then one token at a time through the cache with neither images nor
    image_attention_mask (the cache keeps them; new tokens see what the last prompt token saw), against
    one forward over the whole sequence with the mask's last row repeated."""
    _, folder = checkpoints(**CASES["resampler-qknorm-vector"])
    model = minivlm.from_pretrained(folder)
    ids, mask, image_mask = prompts(LAYOUT)
    pv = pixel_values(2, 2)
    extra = torch.tensor([[7, FAKE, 9, 11, IMAGE, 3], [FAKE, 5, 6, 8, 10, 12]])   # ids beyond the base vocab too
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    full_image_mask = torch.cat([image_mask, image_mask[:, -1:].expand(-1, extra.shape[1], -1)], 1)
    positions = (full_mask.cumsum(-1) - 1).clamp_min(0)
    T = ids.shape[1]
    with torch.no_grad():
        full = model(full_ids, pixel_values=pv, attention_mask=full_mask, image_attention_mask=full_image_mask,
                     position_ids=positions).logits
        cache = model.new_cache(2, full_ids.shape[1])
        steps = [model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask,
                       position_ids=positions[:, :T], cache=cache).logits]
        for t in range(T, full_ids.shape[1]):
            steps.append(model(full_ids[:, t:t + 1], attention_mask=full_mask[:, :t + 1],
                               position_ids=positions[:, t:t + 1], cache=cache).logits)
    assert cache.length == full_ids.shape[1]
    assert_close_rel(torch.cat(steps, 1), full, "cached logits", F32_REL, full_mask)


def test_rms_norm_casting_matches_transformers():
    """IdeficsRMSNorm equals Transformers' bit for bit in float64 and bfloat16; in float64 it differs from
    LlamaRMSNorm (which normalises a float32 copy), which is why IDEFICS has its own."""
    from transformers.models.idefics.modeling_idefics import IdeficsRMSNorm as HFRMSNorm

    x = torch.randn(3, 5, 16, dtype=torch.float64) * 3
    w = 1 + 0.3 * torch.randn(16, dtype=torch.float64)
    for dtype in (torch.float64, torch.bfloat16, torch.float32):
        ours, theirs, llama = IdeficsRMSNorm(16, 1e-6), HFRMSNorm(16, 1e-6), LlamaRMSNorm(16, 1e-6)
        for norm in (ours, theirs, llama):
            norm.weight.data = w.clone()
            norm.to(dtype)
        with torch.no_grad():
            assert torch.equal(ours(x.to(dtype)), theirs(x.to(dtype))), dtype
            if dtype == torch.float64:
                assert not torch.equal(ours(x), llama(x))


def test_config_defaults_match_transformers():
    from transformers import IdeficsConfig as HFConfig

    hf = HFConfig()
    ours = IdeficsConfig.from_dict({"model_type": "idefics"})
    for name in ("vocab_size", "additional_vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers",
                 "num_attention_heads", "rms_norm_eps", "cross_layer_interval", "qk_layer_norms", "alpha_type",
                 "use_resampler", "tie_word_embeddings", "pad_token_id", "bos_token_id", "eos_token_id"):
        assert getattr(ours, name) == getattr(hf, name), name
    assert ours.rope_parameters["rope_theta"] == hf.rope_parameters["rope_theta"] == 10000.0
    v, hv = ours.vision_config, hf.vision_config
    assert (v.hidden_size, v.intermediate_size, v.num_hidden_layers, v.num_attention_heads, v.image_size,
            v.patch_size, v.hidden_act, v.layer_norm_eps) == \
        (hv.embed_dim, hv.intermediate_size, hv.num_hidden_layers, hv.num_attention_heads, hv.image_size,
         hv.patch_size, hv.hidden_act, hv.layer_norm_eps)
    p, hp = ours.perceiver_config, hf.perceiver_config
    assert (p.resampler_n_latents, p.resampler_depth, p.resampler_n_heads, p.resampler_head_dim,
            p.qk_layer_norms_perceiver) == (hp.resampler_n_latents, hp.resampler_depth, hp.resampler_n_heads,
                                            hp.resampler_head_dim, hp.qk_layer_norms_perceiver)
    # A hub-style file (idefics-9b): rope_theta at the top level, the freeze flags (ignored).
    hub = IdeficsConfig.from_dict({"rope_theta": 5e5, "freeze_text_layers": True, "use_resampler": True,
                                   "vision_config": {"embed_dim": 1280, "num_attention_heads": 16}})
    assert hub.rope_parameters == {"rope_type": "default", "rope_theta": 5e5}
    assert hub.vision_config.hidden_size == 1280 and hub.use_resampler


@pytest.mark.parametrize("bad, match", [
    (dict(cross_layer_interval=3), "cross_layer_interval"),
    (dict(alpha_type="matrix"), "alpha_type"),
    (dict(alpha_initializer="xavier"), "alpha_initializer"),
    (dict(additional_vocab_size=-1), "additional_vocab_size"),
    (dict(num_attention_heads=3), "num_attention_heads"),
    (dict(vision_config={"patch_size": 0}), "patch_size"),
    (dict(rope_parameters={"rope_type": "yarn", "rope_theta": 1e4}), "rope_type"),
])
def test_bad_config_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        IdeficsConfig.from_dict({"num_hidden_layers": 4, **bad})


def test_bad_inputs_raise(checkpoints):
    _, folder = checkpoints(**CASES["noresampler-qknorm-float"])
    model = minivlm.from_pretrained(folder)
    ids, mask, image_mask = prompts(LAYOUT)
    pv = pixel_values(2, 2)
    states = torch.zeros(2, 2, 17, 32)
    cases = [
        (dict(input_ids=ids, pixel_values=pv), "image_attention_mask"),                       # no mask
        (dict(input_ids=ids, image_attention_mask=image_mask), "pixel_values"),                # no images
        (dict(input_ids=ids, pixel_values=pv, image_attention_mask=image_mask[:, :, :1]), "image_attention_mask"),
        (dict(input_ids=ids, pixel_values=pv[0], image_attention_mask=image_mask), "pixel_values"),   # 4-D
        (dict(input_ids=ids, pixel_values=pv[:1], image_attention_mask=image_mask), "batch size"),
        (dict(input_ids=ids, pixel_values=pv, image_encoder_embeddings=states, image_attention_mask=image_mask),
         "one of"),
        (dict(input_ids=ids, perceiver_embeddings=states, image_attention_mask=image_mask), "use_resampler"),
        (dict(input_ids=ids.masked_fill(ids == IMAGE, VOCAB + EXTRA), pixel_values=pv,
              image_attention_mask=image_mask), "input_ids"),                                  # id beyond the table
        (dict(input_ids=ids.float(), pixel_values=pv, image_attention_mask=image_mask), "input_ids"),
        (dict(input_ids=ids, pixel_values=pv, image_attention_mask=image_mask, attention_mask=mask[:, 1:]),
         "attention_mask"),
        (dict(input_ids=ids, pixel_values=pv, image_attention_mask=image_mask, logits_to_keep=-1), "logits_to_keep"),
    ]
    with torch.no_grad():
        for kwargs, match in cases:
            with pytest.raises(ValueError, match=match):
                model(**kwargs)
        # The cache: a refused call stores nothing; a cache without images needs them.
        cache = model.new_cache(2, ids.shape[1] + 2)
        with pytest.raises(ValueError, match="pixel_values"):
            model(ids[:, -1:], cache=cache)
        model(ids, pixel_values=pv, attention_mask=mask, image_attention_mask=image_mask, cache=cache)
        with pytest.raises(ValueError, match="max_length"):
            model(ids[:, -3:], cache=cache)
        with pytest.raises(ValueError, match="batch size 2"):
            model(ids[:1, -1:], cache=cache)
        assert cache.length == ids.shape[1]
        out = model(torch.full((2, 1), BOS), cache=cache, logits_to_keep=1)
        assert out.logits.shape == (2, 1, VOCAB + EXTRA) and cache.length == ids.shape[1] + 1


def test_beam_search_matches_transformers_float64(checkpoints):
    """Beam search: the image states and the image mask row in the cache are repeated for the beams."""
    hf, folder = checkpoints(**CASES["resampler-qknorm-vector"])
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask, image_mask = prompts(LAYOUT)
    pv = pixel_values(2, 2)
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8, eos_token_id=EOS, pad_token_id=0)
    with torch.no_grad():
        ref = hf.double().generate(input_ids=ids, attention_mask=mask, pixel_values=pv,
                                   image_attention_mask=image_mask, do_sample=False, **beams)
    hf.float()
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, image_attention_mask=image_mask, **beams)
    assert ours.shape[0] == 4 and torch.equal(ours, ref), f"\nours {ours[:, ids.shape[1]:]}\nref  {ref[:, ids.shape[1]:]}"
