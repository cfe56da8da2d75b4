"""BLIP-2 parity with Transformers on tiny random-weight checkpoints, loaded by minivlm's loader.

Each case builds a Transformers Blip2ForConditionalGeneration (OPT or T5 language model), saves it with
save_pretrained, loads the folder with minivlm.from_pretrained and compares the EVA vision tower's
outputs, the Q-Former's, the logits at the real (non-pad) positions, the loss, greedy generation, the KV
cache against full recomputation, every key spelling, half precision (Q-Former kept in float32) and the
image preprocessing.
"""
import copy

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

import minivlm
from minivlm.models.blip2 import Blip2Config, Blip2ForConditionalGeneration
from minivlm.processing import BlipImageProcessor
from _blip2 import IMAGE_TOKEN, NUM_QUERIES, OPT_BOS, T5_PAD, hf_config, hf_model, opt_prompts, pixel_values, t5_prompts
from helpers import assert_close_rel, assert_same_weights, write_checkpoint

# float32 tolerance, relative to the largest value compared. Both sides run the same float32 math in a
# different order (minivlm's blocked attention kernel against SDPA, other GEMM blockings), so values
# differ by a few units of roundoff (2^-24 ~ 6e-8) per operation, accumulated over 2 vision layers, 2
# Q-Former layers and 2 (OPT) or 2 + 2 (T5) layers of width <= 128. Measured: vision tower 0 (the same
# kernel order), Q-Former output 1.2e-7, OPT logits 3.1e-7, T5 logits 8.1e-7 of the largest value; 1e-5
# leaves a >= 12x margin, while a real
# bug (a wrong mask, position, LayerNorm, cross-attention layer or qkv layout) moves values by 1e-2 or more.
F32_REL = 1e-5


def build_checkpoint(text="opt", cross_attention_frequency=2):
    """The Transformers model the checkpoints fixture (conftest.py) saves for one configuration."""
    return hf_model(hf_config(text, cross_attention_frequency))


# -- vision tower and Q-Former --------------------------------------------------------------------------

@pytest.mark.parametrize("frequency", [2, 1], ids=["cross-every-2nd-layer", "cross-every-layer"])
def test_vision_and_qformer_match_transformers(checkpoints, frequency):
    hf, folder = checkpoints("opt", frequency)
    model = minivlm.from_pretrained(folder)
    assert [layer.has_cross_attention for layer in model.qformer.encoder.layer] == \
        [i % frequency == 0 for i in range(2)]
    pv = pixel_values(3)
    with torch.no_grad():
        ref = hf.get_image_features(pv, return_dict=True)
        vision, qformer_output, projected = model.image_features(pv)
    assert_close_rel(vision.last_hidden_state, ref.vision_outputs.last_hidden_state, "vision last_hidden_state",
                     F32_REL)
    assert_close_rel(vision.pooler_output, ref.vision_outputs.pooler_output, "vision pooler_output", F32_REL)
    assert_close_rel(qformer_output, ref.qformer_outputs.last_hidden_state, "Q-Former output", F32_REL)
    assert_close_rel(projected, ref.pooler_output, "language_model_inputs", F32_REL)
    assert projected.shape == (3, NUM_QUERIES, 64)


# -- OPT ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("frequency", [2, 1], ids=["cross-every-2nd-layer", "cross-every-layer"])
def test_opt_logits_match_transformers(checkpoints, frequency):
    hf, folder = checkpoints("opt", frequency)
    model = minivlm.from_pretrained(folder)
    assert isinstance(model, Blip2ForConditionalGeneration) and not model.is_encoder_decoder
    ids, mask = opt_prompts([9, 2, 5])                                  # rows 1 and 2 are left-padded
    assert (mask == 0).any()
    pv = pixel_values(3)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pv)
        out = model(ids, pixel_values=pv, attention_mask=mask)
    assert out.logits.shape == ref.logits.shape
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL, mask)
    assert_close_rel(out.qformer_output, ref.qformer_outputs.last_hidden_state, "Q-Former output", F32_REL)
    assert_close_rel(out.vision_outputs.last_hidden_state, ref.vision_outputs.last_hidden_state, "vision", F32_REL)


def test_opt_loss_matches_transformers(checkpoints):
    """Labels covering the whole sequence give Transformers' loss. Shorter labels (B, L) are compared with
    the last L positions' logits, as Transformers slices them (its float32 path then fails on a
    non-contiguous view; the same loss is Transformers' with full-length labels that ignore the rest)."""
    hf, folder = checkpoints("opt")
    model = minivlm.from_pretrained(folder)
    ids, mask = opt_prompts([9, 3])
    pv = pixel_values(2)
    labels = ids.masked_fill((mask == 0) | (ids == IMAGE_TOKEN), -100)
    L = 7
    ignored = torch.full((2, ids.shape[1] - L + 1), -100)           # the slice's first label has no predictor
    same_loss = torch.cat([ignored, labels[:, -L + 1:]], 1)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels).loss
        ref_short = hf(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=same_loss).loss
        ours = model(ids, pixel_values=pv, attention_mask=mask, labels=labels).loss
        ours_short = model(ids, pixel_values=pv, attention_mask=mask, labels=labels[:, -L:]).loss
    assert abs(ours.item() - ref.item()) <= F32_REL * abs(ref.item())
    assert abs(ours_short.item() - ref_short.item()) <= F32_REL * abs(ref_short.item())
    assert abs(ours_short.item() - ours.item()) > 1e-3               # the slice does change the loss


def test_opt_greedy_generation_matches_transformers_float64(checkpoints):
    """In float64 the two implementations agree to ~1e-15, far below any gap between the top two
    logits, so the greedy tokens must be identical: with a left-padded prompt batch, and from the image
    alone (Transformers builds image tokens + BOS, and returns them with the new tokens)."""
    hf, folder = checkpoints("opt")
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = opt_prompts([6, 2])
    pv = pixel_values(2)                 # float32, as a processor emits: both models cast it
    hf64 = copy.deepcopy(hf).double()
    with torch.no_grad():
        ref = hf64.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, max_new_tokens=12,
                            do_sample=False)
        ref_caption = hf64.generate(pixel_values=pv, max_new_tokens=12, do_sample=False)
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=12)
    ours_caption = model.generate(pixel_values=pv, max_new_tokens=12)
    assert torch.equal(ours, ref), f"\nours {ours}\nref  {ref}"
    assert torch.equal(ours_caption, ref_caption), f"\nours {ours_caption}\nref  {ref_caption}"
    assert ours.shape[1] - ids.shape[1] >= 10 and ours_caption.shape[1] - (NUM_QUERIES + 1) >= 10
    assert ours_caption[:, :NUM_QUERIES + 1].tolist() == [[IMAGE_TOKEN] * NUM_QUERIES + [OPT_BOS]] * 2


def test_opt_kv_cache_decoding_equals_full_recomputation(checkpoints):
    """Prefill with the image, then one token at a time through the cache, against one forward over the
    whole sequence; positions come from the mask in both (OPT's own rule)."""
    _, folder = checkpoints("opt")
    model = minivlm.from_pretrained(folder)
    ids, mask = opt_prompts([8, 3])
    pv = pixel_values(2)
    extra = torch.randint(4, IMAGE_TOKEN, (2, 6))
    full_ids, full_mask = torch.cat([ids, extra], 1), torch.cat([mask, torch.ones_like(extra)], 1)
    T = ids.shape[1]
    with torch.no_grad():
        full = model(full_ids, pixel_values=pv, attention_mask=full_mask).logits
        cache = model.new_cache(2, full_ids.shape[1])
        steps = [model(ids, pixel_values=pv, attention_mask=mask, cache=cache).logits]
        for t in range(T, full_ids.shape[1]):
            steps.append(model(full_ids[:, t:t + 1], attention_mask=full_mask[:, :t + 1], cache=cache).logits)
    assert_close_rel(torch.cat(steps, 1), full, "cached logits", F32_REL, full_mask)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_keeps_qformer_float32(checkpoints, dtype):
    """Loaded in a 16-bit dtype, the Q-Former and the query tokens stay float32: its input is cast up,
    its output back down. (Transformers does this in float16 only; in bfloat16 its Q-Former runs in
    bfloat16, so minivlm is the more accurate there.) The logits are as close to the float32 truth as
    Transformers' own, loaded in that dtype by its from_pretrained: at most 1.5x its error (a different
    summation order) plus 1e-3 of the scale (16-bit rounding of logits ~3 is ~1e-2; a wrong cast, or an
    image embedding left unrounded where Transformers rounds it, does not fit in that)."""
    from transformers import Blip2ForConditionalGeneration as HFBlip2

    hf, folder = checkpoints("opt")
    model = minivlm.from_pretrained(folder, dtype=dtype)
    assert model.query_tokens.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.qformer.parameters())
    assert model.vision_model.post_layernorm.weight.dtype == dtype
    assert model.language_projection.weight.dtype == dtype
    ids, mask = opt_prompts([9, 3])
    pv = pixel_values(2)
    keep = mask.bool()
    hf16 = HFBlip2.from_pretrained(folder, dtype=dtype).eval()
    assert hf16.qformer.layernorm.weight.dtype == (torch.float32 if dtype == torch.float16 else dtype)
    with torch.no_grad():
        truth = hf(input_ids=ids, attention_mask=mask, pixel_values=pv)
        theirs = hf16(input_ids=ids, attention_mask=mask, pixel_values=pv.to(dtype))
        out = model(ids, pixel_values=pv, attention_mask=mask)
    assert out.logits.dtype == dtype and out.qformer_output.dtype == torch.float32
    assert out.language_model_inputs.dtype == dtype
    for what, ours, their, exact in [
            ("logits", out.logits[keep], theirs.logits[keep], truth.logits[keep]),
            ("Q-Former output", out.qformer_output, theirs.qformer_outputs.last_hidden_state,
             truth.qformer_outputs.last_hidden_state)]:
        ours_err = (ours.double() - exact.double()).abs().max().item()
        their_err = (their.double() - exact.double()).abs().max().item()
        assert ours_err <= 1.5 * their_err + 1e-3 * exact.abs().max().item(), (what, ours_err, their_err)
    tokens = model.generate(pixel_values=pv[:1], max_new_tokens=3, eos_token_id=[])
    assert tokens.shape == (1, NUM_QUERIES + 1 + 3)


# -- T5 (Flan-T5 style) ---------------------------------------------------------------------------------

def _decoder_inputs(batch, length, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(4, IMAGE_TOKEN, (batch, length), generator=g)
    ids[:, 0] = T5_PAD                                               # T5's decoder start
    return ids


def test_t5_logits_and_loss_match_transformers(checkpoints):
    hf, folder = checkpoints("t5")
    model = minivlm.from_pretrained(folder)
    assert model.is_encoder_decoder and model.language_model.lm_head.weight is not model.language_model.shared.weight
    ids, mask = t5_prompts([9, 2, 5])                                   # padded encoder inputs
    assert (mask == 0).any()
    pv = pixel_values(3)
    dec = _decoder_inputs(3, 6)
    labels = _decoder_inputs(3, 6, seed=1)
    labels[1, -2:] = -100
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pv, decoder_input_ids=dec)
        out = model(ids, pixel_values=pv, attention_mask=mask, decoder_input_ids=dec)
        ref_loss = hf(input_ids=ids, attention_mask=mask, pixel_values=pv, labels=labels).loss
        loss = model(ids, pixel_values=pv, attention_mask=mask, labels=labels).loss
    assert out.logits.shape == ref.logits.shape == (3, 6, 128)
    assert_close_rel(out.logits, ref.logits, "T5 logits", F32_REL)
    assert_close_rel(out.qformer_output, ref.qformer_outputs.last_hidden_state, "Q-Former output", F32_REL)
    assert abs(loss.item() - ref_loss.item()) <= F32_REL * abs(ref_loss.item())


def test_t5_greedy_generation_matches_transformers_float64(checkpoints):
    """Decoder tokens (B, 1 + N), decoder start first, as Transformers returns them. Transformers'
    generate without input_ids fails for T5 (its config has no bos_token_id); minivlm then encodes the
    image tokens alone, which is Transformers' result for those input_ids."""
    hf, folder = checkpoints("t5")
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = t5_prompts([6, 2], seed=2)
    pv = pixel_values(2, seed=1)
    image_only = torch.full((2, NUM_QUERIES), IMAGE_TOKEN)
    hf64 = copy.deepcopy(hf).double()
    with torch.no_grad():
        ref = hf64.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, max_new_tokens=12, do_sample=False)
        ref_caption = hf64.generate(pixel_values=pv, input_ids=image_only, max_new_tokens=12, do_sample=False)
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, max_new_tokens=12)
    ours_caption = model.generate(pixel_values=pv, max_new_tokens=12)
    assert torch.equal(ours, ref), f"\nours {ours}\nref  {ref}"
    assert torch.equal(ours_caption, ref_caption), f"\nours {ours_caption}\nref  {ref_caption}"
    assert ours.shape == (2, 13) and bool((ours[:, 0] == T5_PAD).all())


def test_t5_kv_cache_decoding_equals_full_recomputation(checkpoints):
    _, folder = checkpoints("t5")
    model = minivlm.from_pretrained(folder)
    ids, mask = t5_prompts([8, 3])
    pv = pixel_values(2)
    dec = _decoder_inputs(2, 7)
    with torch.no_grad():
        full = model(ids, pixel_values=pv, attention_mask=mask, decoder_input_ids=dec).logits
        states = model.encode(ids, attention_mask=mask, pixel_values=pv)
        cache = model.new_cache(2, dec.shape[1])
        steps = [model.decode(dec[:, t:t + 1], states, mask, cache=cache).logits for t in range(dec.shape[1])]
    assert_close_rel(torch.cat(steps, 1), full, "cached T5 logits", F32_REL)


def test_t5_key_spellings_load(checkpoints, tmp_path):
    """save_pretrained leaves out the encoder/decoder embed_tokens (tied to shared); Transformers' in-memory
    state dict (the hub spelling) has them. Both load to the same model."""
    hf, folder = checkpoints("t5")
    written = load_file(str(folder / "model.safetensors"))
    in_memory = dict(hf.state_dict())
    assert "language_model.encoder.embed_tokens.weight" in set(in_memory) - set(written)
    assert "language_model.lm_head.weight" in written
    ids, mask = t5_prompts([4, 2])
    pv, dec = pixel_values(2), _decoder_inputs(2, 3)
    saved, memory = (minivlm.from_pretrained(p)
                     for p in (folder, write_checkpoint(tmp_path / "in_memory", in_memory, folder)))
    assert_same_weights(memory, saved, "in_memory")
    with torch.no_grad():
        assert_close_rel(memory(ids, pixel_values=pv, attention_mask=mask, decoder_input_ids=dec).logits,
                         saved(ids, pixel_values=pv, attention_mask=mask, decoder_input_ids=dec).logits, "in_memory",
                         F32_REL)


# -- loading --------------------------------------------------------------------------------------------

def test_every_key_spelling_loads(checkpoints, tmp_path):
    """What save_pretrained writes (the tied lm_head left out), Transformers' in-memory state dict (the
    hub spelling: lm_head included), a sharded save, and a file with the Q-Former's unused text FFNs
    (use_qformer_text_input) all load to the same model."""
    hf, folder = checkpoints("opt")
    written = load_file(str(folder / "model.safetensors"))
    assert "language_model.lm_head.weight" not in written and "query_tokens" in written
    in_memory = dict(hf.state_dict())
    assert "language_model.lm_head.weight" in in_memory and set(written) < set(in_memory)
    with_text_ffn = dict(written)
    for i in range(2):
        with_text_ffn[f"qformer.encoder.layer.{i}.intermediate.dense.weight"] = torch.zeros(64, 32)
        with_text_ffn[f"qformer.encoder.layer.{i}.output.dense.weight"] = torch.zeros(32, 64)
        with_text_ffn[f"qformer.encoder.layer.{i}.output.LayerNorm.weight"] = torch.zeros(32)
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="50KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    folders = {"save_pretrained": folder, "in_memory": write_checkpoint(tmp_path / "in_memory", in_memory, folder),
               "text_ffn": write_checkpoint(tmp_path / "text_ffn", with_text_ffn, folder), "sharded": sharded}
    ids, mask = opt_prompts([4, 2])
    pv = pixel_values(2)
    models = {name: minivlm.from_pretrained(path) for name, path in folders.items()}
    with torch.no_grad():
        expected = models["save_pretrained"](ids, pixel_values=pv, attention_mask=mask).logits
        for name, model in models.items():
            assert model.language_model.lm_head.weight is model.language_model.model.decoder.embed_tokens.weight
            assert_same_weights(model, models["save_pretrained"], name)
            assert_close_rel(model(ids, pixel_values=pv, attention_mask=mask).logits, expected, name, F32_REL, mask)


def test_config_reads_transformers_fields(checkpoints):
    hf, folder = checkpoints("opt")
    d = hf.config.to_dict()
    config = Blip2Config.from_dict(d)
    assert config.image_token_index == IMAGE_TOKEN and config.num_query_tokens == NUM_QUERIES
    assert config.use_decoder_only_language_model and not config.is_encoder_decoder
    assert config.qformer_config.encoder_hidden_size == 32 and config.qformer_config.layer_norm_eps == 1e-12
    assert config.vision_config.layer_norm_eps == 1e-6 and config.vision_config.qkv_bias
    alias = {k: v for k, v in d.items() if k != "image_token_index"}
    alias["image_token_id"] = 5
    assert Blip2Config.from_dict(alias).image_token_index == 5
    defaults = Blip2Config.from_dict({"model_type": "blip-2"})         # Transformers' defaults: ViT-g, OPT
    assert (defaults.vision_config.hidden_size, defaults.vision_config.num_hidden_layers) == (1408, 39)
    assert (defaults.qformer_config.hidden_size, defaults.num_query_tokens) == (768, 32)
    assert defaults.qformer_config.encoder_hidden_size == 1408 and defaults.use_decoder_only_language_model
    with pytest.raises(ValueError, match="text_config.model_type"):
        Blip2Config.from_dict({**d, "text_config": {"model_type": "llama"}})
    with pytest.raises(ValueError, match="num_query_tokens"):
        Blip2Config.from_dict({**d, "num_query_tokens": 0})
    with pytest.raises(ValueError, match="cross_attention_frequency"):
        Blip2Config.from_dict({**d, "qformer_config": {**d["qformer_config"], "cross_attention_frequency": 0}})
    with pytest.raises(ValueError, match="image_token_index"):
        Blip2Config.from_dict({**d, "image_token_index": 128})


def test_bad_inputs_raise(checkpoints):
    _, folder = checkpoints("opt")
    model = minivlm.from_pretrained(folder)
    ids, mask = opt_prompts([4, 4])
    pv = pixel_values(2)
    short = ids.clone()
    short[0, 0] = 5                                                    # one image token short
    with pytest.raises(ValueError, match="image tokens"):
        model(short, pixel_values=pv)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids)
    with pytest.raises(ValueError, match="pixel_values"):
        model(ids, pixel_values=pv[:, :, :8])
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0], pixel_values=pv)
    with pytest.raises(ValueError, match="labels"):
        model(ids, pixel_values=pv, labels=ids[:, :1].expand(2, ids.shape[1] + 1))
    with pytest.raises(TypeError, match="pixel_values="):
        model.generate(pv)
    with pytest.raises(ValueError, match="pixel_values"):
        model.generate()


# -- preprocessing --------------------------------------------------------------------------------------

def _images():
    rng = np.random.default_rng(0)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)) for h, w in
              [(30, 50), (400, 300), (384, 384), (7, 9)]]
    images.append(Image.fromarray(rng.integers(0, 256, (40, 60, 4), dtype=np.uint8), "RGBA"))   # transparency
    images.append(Image.fromarray(rng.integers(0, 256, (41, 23), dtype=np.uint8), "L"))         # greyscale
    images.append(Image.fromarray(rng.integers(0, 256, (20, 20), dtype=np.uint8), "L").convert("P"))  # palette
    return images


@pytest.mark.parametrize("kwargs", [{}, dict(size={"height": 224, "width": 224}),
                                    dict(size={"height": 24, "width": 40}, resample=2),
                                    dict(size=32, do_normalize=False)],
                         ids=["default-384", "blip2-hub-224", "24x40-bilinear", "int-size-no-normalize"])
def test_preprocessing_matches_transformers(kwargs):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    images = _images()
    ref = BlipImageProcessorPil(**kwargs)(images, return_tensors="pt")["pixel_values"]
    ours = BlipImageProcessor(**kwargs)(images)["pixel_values"]
    assert ours.dtype == torch.float32 and ours.shape == ref.shape
    assert torch.equal(ours, ref)


def test_preprocessing_from_pretrained(tmp_path):
    from transformers.models.blip.image_processing_pil_blip import BlipImageProcessorPil

    BlipImageProcessorPil(size={"height": 20, "width": 20}).save_pretrained(tmp_path)
    processor = BlipImageProcessor.from_pretrained(tmp_path)
    assert processor.size == {"height": 20, "width": 20} and processor.resample == 3
    image = _images()[1]
    ref = BlipImageProcessorPil.from_pretrained(tmp_path)(image, return_tensors="pt")["pixel_values"]
    assert torch.equal(processor(image)["pixel_values"], ref)
    with pytest.raises(FileNotFoundError, match="preprocessor_config.json"):
        BlipImageProcessor.from_pretrained(tmp_path / "nowhere")
    with pytest.raises(ValueError, match="size"):
        BlipImageProcessor(size={"width": 3})
    with pytest.raises(TypeError, match="images"):
        processor(np.zeros((4, 4, 3), dtype=np.uint8))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_t5_half_precision_dtypes(checkpoints, dtype):
    """In a 16-bit BLIP-2 with T5, the Q-Former and query tokens stay float32 in both dtypes, and T5's FFN
    output projections `wo` stay float32 in float16 only (as Transformers keeps them); the model runs."""
    _, folder = checkpoints("t5")
    model = minivlm.from_pretrained(folder, dtype=dtype)
    assert model.query_tokens.dtype == torch.float32
    assert all(p.dtype == torch.float32 for p in model.qformer.parameters())
    wo = [m.weight.dtype for name, m in model.language_model.named_modules() if name.endswith(".wo")]
    assert wo and set(wo) == {torch.float32 if dtype == torch.float16 else dtype}
    assert model.language_model.shared.weight.dtype == dtype
    ids, mask = t5_prompts([5, 3])
    tokens = model.generate(ids, attention_mask=mask, pixel_values=pixel_values(2), max_new_tokens=3)
    assert tokens.shape == (2, 4)


@pytest.mark.parametrize("lm", ["opt", "t5"])
def test_beam_search_matches_transformers_float64(checkpoints, lm):
    """Beam search with an image prompt, around OPT (the prefill's cache repeated per beam) and around T5
    (the encoder states repeated per beam)."""
    hf, folder = checkpoints(lm)
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = opt_prompts([6, 2]) if lm == "opt" else t5_prompts([6, 2], seed=2)
    pv = pixel_values(2, seed=1)
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8, length_penalty=0.5)
    hf64 = copy.deepcopy(hf).double()
    with torch.no_grad():
        ref = hf64.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, do_sample=False, **beams)
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, **beams)
    assert ours.shape[0] == 4 and torch.equal(ours, ref), f"\nours {ours}\nref  {ref}"
