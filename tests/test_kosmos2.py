"""Kosmos-2 parity with Transformers on tiny random-weight checkpoints, loaded by minivlm's loader.

Each case builds a Transformers Kosmos2ForConditionalGeneration, saves it with save_pretrained, loads the
folder with minivlm.from_pretrained and compares the CLIP tower's output, the image embeddings, the logits
at the real (non-pad) positions, the loss, greedy generation (unpadded and left-padded, where Transformers'
decode positions differ from a renumbering that skips the pads), the KV cache against full recomputation,
every key spelling, the config defaults and the errors for bad inputs.

Transformers' Kosmos-2 does not run in float64, so greedy generation is compared in float32; the test then
asserts that the reference's smallest top-2 logit margin along the way is far above float32 noise, so that
equal tokens are a real check and not luck.
"""
import pytest
import torch
from safetensors.torch import load_file

import minivlm
from minivlm.loading import CheckpointError
from minivlm.models.kosmos2 import Kosmos2Config, sinusoidal_positions
from _kosmos2 import EOS, NUM_QUERIES, PAD, hf_config, hf_model, pixel_values, prompts
from helpers import (assert_close_rel, assert_kept_rows_match, assert_same_weights, check_cache_errors, save,
                     write_checkpoint)

# float32 tolerance, relative to the largest value compared. Both sides run the same float32 math, in a
# possibly different order (minivlm's attention kernel against SDPA, other GEMM blockings), so values may
# differ by a few units of roundoff (2^-24 ~ 6e-8) per operation, accumulated over 2 vision layers, the
# projection and 2 text layers of width <= 128. Measured: 0 with the compiled kernels (vision output,
# image embeddings, logits, loss), and 7.7e-7 (logits) / 2.3e-7 (image embeddings) of the largest value
# when minivlm runs its reference ops (another summation order). 1e-5 leaves a 13x margin over that,
# while a real bug (a wrong position row, mask, sub-LayerNorm or scale) moves the logits by 1e-2 or more.
F32_REL = 1e-5
# The reference's top-2 logit margin must exceed this at every greedy step (logits are ~3 here): 1e-3 is
# over 1000x the float32 error above, so a token can only differ through a real difference.
MIN_MARGIN = 1e-3


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The Transformers model (float32, eval) and the folder save_pretrained wrote."""
    hf = hf_model(hf_config())
    return hf, save(hf, tmp_path_factory.mktemp("kosmos2"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return minivlm.from_pretrained(checkpoint[1])


# -- vision tower, projection, logits, loss --------------------------------------------------------------

def test_vision_and_image_embeds_match_transformers(checkpoint, model):
    hf, _ = checkpoint
    pv = pixel_values(3)
    ids, mask, image_mask = prompts([3, 3, 3])
    with torch.no_grad():
        ref = hf(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask)
        out = model(ids, pv, mask, image_mask)
    assert_close_rel(out.vision_model_output.last_hidden_state, ref.vision_model_output.last_hidden_state,
                     "vision last_hidden_state", F32_REL)
    assert out.image_hidden_states.shape == (3, NUM_QUERIES, 64)
    assert_close_rel(out.image_hidden_states, ref.image_embeds, "image embeds", F32_REL)


def test_logits_match_transformers_right_padded(checkpoint, model):
    """A right-padded batch (pads after the text, so every row has real tokens after a pad-free prefix):
    logits at the real positions, with positions from the padding and with explicit position_ids."""
    hf, _ = checkpoint
    pv = pixel_values(3, seed=1)
    ids, mask, image_mask = prompts([5, 9, 2], seed=1, padding_side="right")
    rows = torch.arange(ids.shape[1]).expand_as(ids) + 5           # any rows of the sinusoid table
    with torch.no_grad():
        ref = hf(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask)
        ref_rows = hf(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                      position_ids=rows)
        out = model(ids, pixel_values=pv, attention_mask=mask, image_embeds_position_mask=image_mask)
        out_rows = model(ids, pixel_values=pv, attention_mask=mask, image_embeds_position_mask=image_mask,
                         position_ids=rows)
        out_embeds = model(ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                           image_embeds=out.image_hidden_states)
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL, mask)
    assert_close_rel(out_rows.logits, ref_rows.logits, "logits with position_ids", F32_REL, mask)
    assert (out_rows.logits - out.logits)[mask.bool()].abs().max() > 1e-2    # the positions do matter
    assert torch.equal(out_embeds.logits, out.logits)
    assert_kept_rows_match(
        model, model.text_model.lm_head,
        lambda: model(ids, pixel_values=pv, attention_mask=mask, image_embeds_position_mask=image_mask),
        lambda: model(ids, pixel_values=pv, attention_mask=mask, image_embeds_position_mask=image_mask,
                      logits_to_keep=1), keep=1)


def test_text_only_logits_match_transformers(checkpoint, model):
    """No image: the decoder alone (Transformers' text_model), with left padding."""
    hf, _ = checkpoint
    ids, mask, _ = prompts([4, 8], seed=2)
    with torch.no_grad():
        ref = hf.text_model(input_ids=ids, attention_mask=mask).logits
        out = model(ids, attention_mask=mask)
    assert_close_rel(out.logits, ref, "text-only logits", F32_REL, mask)
    assert not out.logits.isnan().any()      # pad rows too: a pad query that sees no key gives no NaN
    assert out.image_hidden_states is None and out.vision_model_output is None


def test_loss_matches_transformers(checkpoint, model):
    hf, _ = checkpoint
    pv = pixel_values(2, seed=3)
    ids, mask, image_mask = prompts([6, 3], seed=3, padding_side="right")
    labels = ids.masked_fill((mask == 0) | (image_mask == 1), -100)
    with torch.no_grad():
        ref = hf(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                 labels=labels).loss
        ours = model(ids, pv, mask, image_mask, labels=labels).loss
    assert_close_rel(ours, ref, "loss", F32_REL)


# -- generation and the KV cache -------------------------------------------------------------------------

def _full_mask(mask, total):
    """attention_mask extended over generated tokens (all real)."""
    return torch.cat([mask, torch.ones(mask.shape[0], total - mask.shape[1], dtype=mask.dtype)], dim=1)


@pytest.mark.parametrize("lengths", [[6, 6], [5, 9, 3]], ids=["unpadded", "left-padded"])
def test_greedy_generation_matches_transformers(checkpoint, model, lengths):
    hf, _ = checkpoint
    pv = pixel_values(len(lengths), seed=2)
    ids, mask, image_mask = prompts(lengths, seed=2)
    padded = not bool(mask.all())
    assert padded == (len(set(lengths)) > 1)
    N = 12
    with torch.no_grad():
        ref = hf.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                          max_new_tokens=N, do_sample=False, return_dict_in_generate=True, output_logits=True)
    ours = model.generate(ids, attention_mask=mask if padded else None, pixel_values=pv,
                          image_embeds_position_mask=image_mask, max_new_tokens=N)
    assert ours.shape == (len(lengths), ids.shape[1] + N)
    assert torch.equal(ours, ref.sequences), f"\nours {ours[:, ids.shape[1]:].tolist()}\nref  " \
                                             f"{ref.sequences[:, ids.shape[1]:].tolist()}"

    # The reference's choices are clear-cut: its top-2 margin over every step of every unfinished row.
    logits = torch.stack(ref.logits, dim=1)                                     # (B, N, vocab)
    new = ref.sequences[:, ids.shape[1]:]
    unfinished = torch.cat([torch.ones_like(new[:, :1]), (new[:, :-1] != EOS).long().cummin(1).values], 1).bool()
    top2 = logits.topk(2, dim=-1).values
    margin = (top2[..., 0] - top2[..., 1])[unfinished].min().item()
    assert margin > MIN_MARGIN, f"reference top-2 margin {margin:.2e} too small for a float32 comparison"
    assert len(set(new.flatten().tolist())) > 4          # not one token repeated: the test reads the positions

    if padded:
        # Renumbered decode positions (pads skipped: a row with 2 left pads goes ..., 9 -> 10, not 12) would
        # change greedy choices along the reference's path: the test tells the two numberings apart.
        full = _full_mask(mask, ref.sequences.shape[1])
        renumbered_rows = full.cumsum(-1) * full + PAD
        fim = _full_mask(image_mask, full.shape[1]) * 0
        fim[:, :ids.shape[1]] = image_mask
        with torch.no_grad():
            renumbered_logits = model(ref.sequences, pv, full, fim, position_ids=renumbered_rows).logits
        assert (renumbered_logits[:, ids.shape[1] - 1:-1].argmax(-1) != new).any()


def test_decode_positions_follow_transformers(model):
    """A cached decode step reads row past + 2 of the sinusoid table whatever the padding, as in Transformers."""
    decoder = model.text_model.model
    ids = torch.tensor([[PAD, PAD, 5, 6, 7, 8, 9, 10, 11, 12], [3, 4, 5, 6, 7, 8, 9, 10, 11, 12]])
    assert decoder.positions(ids, 0).tolist() == [[1, 1, 2, 3, 4, 5, 6, 7, 8, 9], list(range(2, 12))]
    assert decoder.positions(torch.tensor([[20], [21]]), 10).tolist() == [[12], [12]]
    assert decoder.positions(torch.tensor([[PAD], [21]]), 10).tolist() == [[PAD], [12]]


def test_kv_cache_decoding_equals_full_recomputation(model):
    """Prefill (with the image) then one token at a time through the cache, against one forward over the
    whole sequence. Transformers numbers a cached step past + 2 but a fresh forward cumsum(real) + 1,
    which differ for a left-padded row, so the full forward is given the cached path's positions (rows)."""
    pv = pixel_values(3, seed=4)
    ids, mask, image_mask = prompts([5, 9, 3], seed=4)
    B, T = ids.shape
    new = torch.randint(3, 100, (B, 6), generator=torch.Generator().manual_seed(4))
    seq = torch.cat([ids, new], dim=1)
    full_mask = _full_mask(mask, seq.shape[1])
    full_image_mask = torch.cat([image_mask, torch.zeros_like(new)], dim=1)
    decoder = model.text_model.model
    rows = torch.cat([decoder.positions(ids, 0)] + [decoder.positions(new[:, i:i + 1], T + i) for i in range(6)], 1)
    with torch.no_grad():
        full = model(seq, pv, full_mask, full_image_mask, position_ids=rows).logits
        cache = model.new_cache(B, seq.shape[1])
        steps = [model(ids, pv, mask, image_mask, cache=cache).logits]
        for i in range(6):
            steps.append(model(new[:, i:i + 1], attention_mask=full_mask[:, :T + i + 1], cache=cache).logits)
    assert cache.length == seq.shape[1]
    assert_close_rel(torch.cat(steps, dim=1), full, "cached logits", F32_REL, full_mask)

    # Without padding the two numberings agree and no mask is built (the kernel's causal band).
    ids, _, image_mask = prompts([4, 4], seed=5)
    pv = pv[:2]
    seq = torch.cat([ids, new[:2]], dim=1)
    with torch.no_grad():
        full = model(seq, pv, image_embeds_position_mask=torch.cat([image_mask, torch.zeros_like(new[:2])], 1)).logits
        cache = model.new_cache(2, seq.shape[1])
        steps = [model(ids, pv, image_embeds_position_mask=image_mask, cache=cache).logits]
        steps += [model(new[:2, i:i + 2], cache=cache).logits for i in range(0, 6, 2)]   # 2 tokens per step
    assert_close_rel(torch.cat(steps, dim=1), full, "cached logits, unpadded", F32_REL)
    check_cache_errors(model, 128)


# -- loading and config ----------------------------------------------------------------------------------

def test_every_key_spelling_loads(checkpoint, model, tmp_path):
    """What save_pretrained writes (the tied lm_head left out; the hub's spelling), Transformers' in-memory
    state dict (lm_head included), a Kosmos2Model file (no lm_head at all) plus the buffers older
    conversions may carry, and an untied checkpoint all load."""
    hf, folder = checkpoint
    written = load_file(str(folder / "model.safetensors"))
    assert "text_model.lm_head.weight" not in written
    assert {k.split(".")[0] for k in written} == {"text_model", "vision_model", "image_to_text_projection"}
    in_memory = dict(hf.state_dict())
    assert "text_model.lm_head.weight" in in_memory and set(written) < set(in_memory)
    base = {k: v for k, v in written.items()}
    base["vision_model.model.embeddings.position_ids"] = torch.arange(17)[None]
    base["text_model.model.embed_positions.weights"] = torch.zeros(66, 64)
    folders = {"in_memory": write_checkpoint(tmp_path / "in_memory", in_memory, folder),
               "with_buffers": write_checkpoint(tmp_path / "with_buffers", base, folder)}
    ids, mask, image_mask = prompts([4, 2])
    pv = pixel_values(2)
    with torch.no_grad():
        expected = model(ids, pv, mask, image_mask).logits
    for name, path in folders.items():
        other = minivlm.from_pretrained(path)
        assert other.text_model.lm_head.weight is other.text_model.model.embed_tokens.weight, name
        assert_same_weights(other, model, name)
        with torch.no_grad():
            assert_close_rel(other(ids, pv, mask, image_mask).logits, expected, name, F32_REL, mask)

    untied = hf_model(hf_config(tie=False), seed=1)
    untied_folder = save(untied, tmp_path / "untied")
    assert "text_model.lm_head.weight" in load_file(str(untied_folder / "model.safetensors"))
    ours = minivlm.from_pretrained(untied_folder)
    assert ours.text_model.lm_head.weight is not ours.text_model.model.embed_tokens.weight
    with torch.no_grad():
        ref = untied(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask)
        assert_close_rel(ours(ids, pv, mask, image_mask).logits, ref.logits, "untied logits", F32_REL, mask)

    missing = dict(written)
    del missing["image_to_text_projection.latent_query"]
    with pytest.raises(CheckpointError, match="latent_query"):
        minivlm.from_pretrained(write_checkpoint(tmp_path / "missing", missing, folder))


def test_config_reads_transformers_fields(checkpoint, model):
    from transformers import Kosmos2Config as HFConfig

    hf_defaults, ours = HFConfig(), Kosmos2Config.from_dict({})
    assert ours.latent_query_num == hf_defaults.latent_query_num == 64
    for name in ("vocab_size", "max_position_embeddings", "embed_dim", "layers", "ffn_dim", "attention_heads",
                 "activation_function", "layer_norm_eps", "scale_embedding", "pad_token_id", "bos_token_id",
                 "eos_token_id"):
        assert getattr(ours.text_config, name) == getattr(hf_defaults.text_config, name), name
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "hidden_act", "layer_norm_eps"):
        assert getattr(ours.vision_config, name) == getattr(hf_defaults.vision_config, name), name
    c = model.config
    assert (c.latent_query_num, c.text_config.embed_dim, c.text_config.layers, c.vision_config.hidden_size,
            c.vision_config.patch_size, c.tied) == (NUM_QUERIES, 64, 2, 32, 4, True)
    aliased = Kosmos2Config.from_dict({"text_config": {"hidden_size": 32, "num_hidden_layers": 3,
                                                       "num_attention_heads": 2}})
    assert (aliased.text_config.embed_dim, aliased.text_config.layers, aliased.text_config.attention_heads) == (32, 3, 2)
    with pytest.raises(ValueError, match="latent_query_num"):
        Kosmos2Config.from_dict({"latent_query_num": 0})
    with pytest.raises(ValueError, match="attention_heads"):
        Kosmos2Config.from_dict({"text_config": {"embed_dim": 64, "attention_heads": 5}})
    with pytest.raises(ValueError, match="add_cross_attention"):
        Kosmos2Config.from_dict({"text_config": {"add_cross_attention": True}})
    with pytest.raises(ValueError, match="pad_token_id"):
        Kosmos2Config.from_dict({"text_config": {"pad_token_id": None}})
    with pytest.raises(ValueError, match="activation"):
        Kosmos2Config.from_dict({"text_config": {"activation_function": "nope"}})
    with pytest.raises(ValueError, match="image_size"):
        Kosmos2Config.from_dict({"vision_config": {"image_size": [224, 224]}})


def test_sinusoid_rows():
    """[sin | cos] halves, frequencies 10000^(-i / (h - 1)), the pad row zero, odd widths zero-padded."""
    rows = sinusoidal_positions(torch.tensor([0, 1, 3]), 8, padding_idx=1)
    freq = 10000 ** (-torch.arange(4, dtype=torch.float64) / 3)
    assert torch.allclose(rows[2].double(), torch.cat([(3 * freq).sin(), (3 * freq).cos()]), atol=1e-6)
    assert torch.equal(rows[0], torch.cat([torch.zeros(4), torch.ones(4)]))
    assert not rows[1].any()
    odd = sinusoidal_positions(torch.tensor([3]), 9, padding_idx=1)
    assert odd.shape == (1, 9) and odd[0, -1] == 0 and torch.equal(odd[0, :8], rows[2])


# -- errors ----------------------------------------------------------------------------------------------

def test_bad_inputs_raise(model):
    pv = pixel_values(2)
    ids, mask, image_mask = prompts([4, 2])
    wrong_count = image_mask.clone()
    wrong_count[0, -1] = 1
    with torch.no_grad():
        with pytest.raises(ValueError, match="input_ids"):
            model(ids.float(), pv, mask, image_mask)
        with pytest.raises(ValueError, match="latent_query_num=4"):
            model(ids, pv, mask, wrong_count)
        with pytest.raises(ValueError, match="image_embeds_position_mask"):
            model(ids, pv, mask)
        with pytest.raises(ValueError, match="image_embeds_position_mask must have"):
            model(ids, pv, mask, image_mask[:, 1:])
        with pytest.raises(ValueError, match="only 0 and 1"):
            model(ids, pv, mask, image_mask * 2)
        with pytest.raises(ValueError, match="no pixel_values"):
            model(ids, attention_mask=mask, image_embeds_position_mask=image_mask)
        with pytest.raises(ValueError, match="pixel_values"):
            model(ids, pv[:1], mask, image_mask)
        with pytest.raises(ValueError, match="pixel_values"):
            model(ids, pv[:, :, :8], mask, image_mask)
        with pytest.raises(ValueError, match="not both"):
            model(ids, pv, mask, image_mask, image_embeds=torch.zeros(2, NUM_QUERIES, 64))
        with pytest.raises(ValueError, match="image_embeds must be"):
            model(ids, attention_mask=mask, image_embeds_position_mask=image_mask, image_embeds=torch.zeros(2, 3, 64))
        with pytest.raises(ValueError, match="position_ids"):
            model(ids, pv, mask, image_mask, position_ids=torch.zeros(2, 3, dtype=torch.long))
        with pytest.raises(TypeError, match="position_ids"):
            model(ids, pv, mask, image_mask, position_ids=torch.zeros(ids.shape))
        with pytest.raises(ValueError, match="logits_to_keep"):
            model(ids, pv, mask, image_mask, logits_to_keep=-1)
        with pytest.raises(ValueError, match="labels"):
            model(ids, pv, mask, image_mask, labels=ids[:, 1:])
        with pytest.raises(ValueError, match="attention_mask"):
            model(ids, pv, mask[:, 1:], image_mask)
    with pytest.raises(TypeError, match="pixel_values="):
        model.generate(pv)
    with pytest.raises(ValueError, match="left padding"):
        model.generate(ids, attention_mask=mask.flip(1), pixel_values=pv, image_embeds_position_mask=image_mask)


def test_beam_search_matches_transformers(checkpoint, model):
    """Beam search over left-padded image prompts: Kosmos-2 numbers its positions from the mask and the
    cache, both repeated per beam."""
    hf, _ = checkpoint
    pv = pixel_values(3, seed=2)
    ids, mask, image_mask = prompts([5, 9, 3], seed=2)
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8)
    with torch.no_grad():
        ref = hf.generate(pixel_values=pv, input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                          do_sample=False, **beams)
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, image_embeds_position_mask=image_mask, **beams)
    assert ours.shape[0] == 6 and torch.equal(ours, ref), f"\nours {ours}\nref  {ref}"
