"""LLaVA-NeXT parity with Transformers on tiny random-weight checkpoints, loaded by minivlm's loader.

Each case builds a Transformers model, saves it with save_pretrained, loads the folder with
minivlm.from_pretrained and compares logits at the real (non-pad) positions, the packed image features,
greedy generation, the KV cache against full recomputation, and the loader's handling of every key
spelling and of broken checkpoints.
"""
import copy
import json
import shutil

import pytest
import torch

import minivlm
from minivlm.loading import CheckpointError
from minivlm.models.llava_next import LlavaNextForConditionalGeneration
from _llava import BOS, EOS, IMAGE_TOKEN, crops_of, hf_config, hf_model, pixel_values, prompts
from helpers import assert_close_rel, assert_same_weights, write_checkpoint

# float32 tolerance, relative to the largest logit. Both sides run the same float32 math in a different
# order (minivlm's blocked online-softmax attention against SDPA, other GEMM blockings), so each dot
# product differs by a few units of roundoff (2^-24 ~ 6e-8) times the square root of its length (<= 256
# terms) and the magnitudes involved. Through 3 vision layers, the projector and 2 decoder layers this
# was measured at 5e-7 of the largest logit; 1e-5 leaves a 20x margin, while a real bug (a wrong mask,
# position, scale or row of the crop grid) moves logits by 1e-2 of their scale or more.
F32_REL = 1e-5

# Two images of different shapes (ragged crop counts) in a left-padded batch, and a longer batch with a
# single-crop image, a wide, a tall and a square one.
SIZES_PAIR = [(20, 40), (40, 18)]
SIZES_MANY = [(12, 14), (20, 40), (45, 13), (33, 31)]


def build_checkpoint(**options):
    """The Transformers model the checkpoints fixture (conftest.py) saves for one configuration."""
    return hf_model(hf_config(**options))


def hf_logits(hf, ids, mask, pv, sizes, dtype=torch.float32):
    with torch.no_grad():
        out = hf.to(dtype)(input_ids=ids, attention_mask=mask, pixel_values=pv.to(dtype),
                           image_sizes=torch.tensor(sizes))
    return out


@pytest.mark.parametrize("case", [
    dict(text="mistral", sliding_window=16, feature_layer=-2),    # GQA, the window bites (prompts >= 64)
    dict(text="mistral", sliding_window=None, feature_layer=[-2, -3]),
    dict(text="llama", feature_layer=-1),
    dict(text="llama", feature_layer=1, tie=True),
], ids=["mistral-window16-layer-2", "mistral-nowindow-layers[-2,-3]", "llama-layer-1", "llama-layer1-tied"])
def test_logits_match_transformers(checkpoints, case):
    hf, folder = checkpoints(**case)
    model = minivlm.from_pretrained(folder)
    ids, mask = prompts(SIZES_PAIR, [70, 9], hf.config)                 # row 1 is left-padded
    assert ids.shape[1] >= 64 and (mask == 0).any()
    pv = pixel_values(SIZES_PAIR)
    ref = hf_logits(hf, ids, mask, pv, SIZES_PAIR)
    with torch.no_grad():
        out = model(ids, pixel_values=pv, image_sizes=torch.tensor(SIZES_PAIR), attention_mask=mask)
    assert out.logits.shape == ref.logits.shape
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL, mask)
    assert_close_rel(out.image_hidden_states, ref.image_hidden_states, "image features", F32_REL)


def test_many_image_sizes(checkpoints):
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    model = minivlm.from_pretrained(folder)
    assert crops_of(SIZES_MANY[0]) == 1 and len({crops_of(s) for s in SIZES_MANY}) > 1
    ids, mask = prompts(SIZES_MANY, [5, 12, 3, 20], hf.config)
    pv = pixel_values(SIZES_MANY, seed=3)
    ref = hf_logits(hf, ids, mask, pv, SIZES_MANY)
    with torch.no_grad():
        out = model(ids, pixel_values=pv, image_sizes=torch.tensor(SIZES_MANY), attention_mask=mask)
    assert_close_rel(out.logits, ref.logits, "logits", F32_REL, mask)
    assert_close_rel(out.image_hidden_states, ref.image_hidden_states, "image features", F32_REL)


def test_loss_matches_transformers(checkpoints):
    hf, folder = checkpoints(text="llama", feature_layer=-1)
    model = minivlm.from_pretrained(folder)
    ids, mask = prompts(SIZES_PAIR, [10, 4], hf.config)
    labels = ids.masked_fill((mask == 0) | (ids == IMAGE_TOKEN), -100)
    pv = pixel_values(SIZES_PAIR)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=torch.tensor(SIZES_PAIR),
                 labels=labels).loss
        ours = model(ids, pixel_values=pv, image_sizes=torch.tensor(SIZES_PAIR), attention_mask=mask,
                     labels=labels).loss
    assert abs(ours.item() - ref.item()) <= F32_REL * abs(ref.item())


def test_greedy_generation_matches_transformers_float64(checkpoints):
    """In float64 the two implementations agree to ~1e-13, far below any gap between the top two
    logits, so the greedy tokens must be identical."""
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = prompts(SIZES_PAIR, [60, 7], hf.config)
    pv = pixel_values(SIZES_PAIR)          # float32, as a processor emits: both models cast it
    sizes = torch.tensor(SIZES_PAIR)
    n_new = 12
    with torch.no_grad():
        ref = hf.double().generate(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes,
                                   max_new_tokens=n_new, do_sample=False, eos_token_id=EOS, pad_token_id=0)
    hf.float()
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes, max_new_tokens=n_new)
    assert ours.dtype == torch.long
    assert torch.equal(ours, ref), f"\nours {ours[:, ids.shape[1]:]}\nref  {ref[:, ids.shape[1]:]}"
    assert ours.shape[1] - ids.shape[1] >= 10


def test_kv_cache_decoding_equals_full_recomputation(checkpoints):
    """Prefill with the image, then one token at a time through the cache, against one forward over the
    whole sequence. The window (16) is far shorter than the prompt (>= 64), so it bites in every decode
    step. Positions are given explicitly (from the mask) so that both runs number the tokens the same."""
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    model = minivlm.from_pretrained(folder)
    ids, mask = prompts(SIZES_PAIR, [66, 5], hf.config)
    pv, sizes = pixel_values(SIZES_PAIR), torch.tensor(SIZES_PAIR)
    extra = torch.randint(3, IMAGE_TOKEN, (2, 6))
    full_ids = torch.cat([ids, extra], 1)
    full_mask = torch.cat([mask, torch.ones_like(extra)], 1)
    positions = (full_mask.cumsum(-1) - 1).clamp_min(0)
    T = ids.shape[1]
    with torch.no_grad():
        full = model(full_ids, pixel_values=pv, image_sizes=sizes, attention_mask=full_mask,
                     position_ids=positions).logits
        cache = model.new_cache(2, full_ids.shape[1])
        steps = [model(ids, pixel_values=pv, image_sizes=sizes, attention_mask=mask, position_ids=positions[:, :T],
                       cache=cache).logits]
        for t in range(T, full_ids.shape[1]):
            steps.append(model(full_ids[:, t:t + 1], attention_mask=full_mask[:, :t + 1],
                               position_ids=positions[:, t:t + 1], cache=cache).logits)
    assert_close_rel(torch.cat(steps, 1), full, "cached logits", F32_REL, full_mask)


def test_full_strategy_fails_clearly_like_transformers(checkpoints):
    """"full" keeps CLIP's class token, so a crop's 17 features cannot tile its 4x4 grid: Transformers
    fails inside its packing (a shape error), minivlm says why."""
    hf, folder = checkpoints(text="llama", feature_layer=-2, strategy="full")
    model = minivlm.from_pretrained(folder)
    sizes = [(20, 40)]
    pv = pixel_values(sizes)
    ids = torch.tensor([[BOS] + [IMAGE_TOKEN] * 8 + [5]])
    with pytest.raises(RuntimeError):
        hf(input_ids=ids, pixel_values=pv, image_sizes=torch.tensor(sizes))
    with pytest.raises(ValueError, match="full"):
        model(ids, pixel_values=pv, image_sizes=torch.tensor(sizes))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_is_as_accurate_as_transformers(checkpoints, dtype):
    """Loaded in a 16-bit dtype and given float32 pixel_values as a processor emits them, minivlm runs and
    its logits are as close to the float32 truth as Transformers' own in that dtype. Tolerance: the
    16-bit error is rounding (measured 0.03 of logits ~2.5 in bfloat16, 0.005 in float16, nearly the same
    for both libraries), so minivlm's may be at most 1.5x Transformers' (a different summation order)
    plus 1e-3 of the scale; a real bug (a float32 value left in a 16-bit graph, a wrong cast) does not
    fit in that."""
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    model = minivlm.from_pretrained(folder, dtype=dtype)
    ids, mask = prompts(SIZES_PAIR, [70, 9], hf.config)
    pv, sizes = pixel_values(SIZES_PAIR), torch.tensor(SIZES_PAIR)
    keep = mask.bool()
    truth = hf_logits(hf, ids, mask, pv, SIZES_PAIR).logits[keep].double()
    theirs = hf_logits(copy.deepcopy(hf), ids, mask, pv, SIZES_PAIR, dtype=dtype).logits[keep].double()
    with torch.no_grad():
        out = model(ids, pixel_values=pv, image_sizes=sizes, attention_mask=mask).logits
    assert out.dtype == dtype
    ours_err = (out[keep].double() - truth).abs().max().item()
    their_err = (theirs - truth).abs().max().item()
    assert ours_err <= 1.5 * their_err + 1e-3 * truth.abs().max().item(), (ours_err, their_err)
    one, _ = prompts(SIZES_PAIR[1:], [3], hf.config)
    tokens = model.generate(one, pixel_values=pixel_values(SIZES_PAIR[1:]), image_sizes=sizes[1:],
                            max_new_tokens=3, eos_token_id=[])
    assert tokens.shape == (1, one.shape[1] + 3) and torch.equal(tokens[:, :one.shape[1]], one)


# -- the loader ----------------------------------------------------------------------------------------

def _spellings(hf, folder, tmp_path):
    """The same weights under every key spelling found in the wild."""
    from safetensors.torch import load_file

    written = load_file(str(folder / "model.safetensors"))        # what Transformers' save_pretrained writes
    hub = {k.replace("vision_tower.", "vision_tower.vision_model.", 1): v for k, v in written.items()}
    # Buffers Transformers 4.x saved with the weights, found in older hub files: skipped, not unexpected.
    hub["vision_tower.vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    hub["language_model.model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(8)
    in_memory = {k: v for k, v in hf.state_dict().items()}         # model.language_model.*, lm_head.*, ...
    sharded = tmp_path / "sharded"
    hf.save_pretrained(sharded, max_shard_size="100KB")
    assert (sharded / "model.safetensors.index.json").is_file()
    return {
        "save_pretrained": folder,
        "hub": write_checkpoint(tmp_path / "hub", hub, folder),
        "in_memory": write_checkpoint(tmp_path / "in_memory", in_memory, folder),
        "sharded": sharded,
    }


def test_every_key_spelling_loads(checkpoints, tmp_path):
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    assert any(k.startswith("model.vision_tower.") for k in hf.state_dict())
    ids, mask = prompts(SIZES_PAIR, [8, 3], hf.config)
    pv, sizes = pixel_values(SIZES_PAIR), torch.tensor(SIZES_PAIR)
    models = {}
    for name, path in _spellings(hf, folder, tmp_path).items():
        models[name] = minivlm.from_pretrained(path)
        assert isinstance(models[name], LlavaNextForConditionalGeneration) and not models[name].training
    with torch.no_grad():
        expected = models["save_pretrained"](ids, pixel_values=pv, image_sizes=sizes, attention_mask=mask).logits
        for name, model in models.items():
            assert_same_weights(model, models["save_pretrained"], name)
            assert_close_rel(model(ids, pixel_values=pv, image_sizes=sizes, attention_mask=mask).logits,
                             expected, name, F32_REL, mask)


def test_tied_head_absent_from_file_is_not_missing(checkpoints):
    hf, folder = checkpoints(text="llama", feature_layer=1, tie=True)
    from safetensors import safe_open
    with safe_open(str(folder / "model.safetensors"), "pt") as f:
        assert not any("lm_head" in k for k in f.keys())
    model = minivlm.from_pretrained(folder)
    assert model.language_model.lm_head.weight is model.language_model.model.embed_tokens.weight


@pytest.mark.parametrize("damage", ["missing", "misshapen", "unexpected"])
def test_broken_checkpoint_fails_with_a_list(checkpoints, tmp_path, damage):
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "model.safetensors"))
    victim = "language_model.model.layers.1.mlp.up_proj.weight"
    if damage == "missing":
        del tensors[victim]
        expect = ["missing from the checkpoint (1)", victim]
    elif damage == "misshapen":
        tensors[victim] = tensors[victim][:-1]
        expect = ["shape mismatch (1)", victim, "(127, 64)", "(128, 64)"]
    else:
        tensors["language_model.model.layers.7.extra.weight"] = torch.zeros(2)
        expect = ["in the checkpoint but not in the model (1)", "layers.7.extra.weight"]
    with pytest.raises(CheckpointError) as info:
        minivlm.from_pretrained(write_checkpoint(tmp_path / damage, tensors, folder))
    for text in expect:
        assert text in str(info.value)


def test_loading_converts_dtypes_exactly(checkpoints, tmp_path):
    """Each tensor is read into its parameter directly (same dtype) or through a buffer (another dtype):
    both give exactly the stored values, cast like Tensor.to, whatever the file's dtype."""
    hf, folder = checkpoints(text="llama", feature_layer=1)
    from safetensors.torch import load_file

    stored = load_file(str(folder / "model.safetensors"))
    bf16 = write_checkpoint(tmp_path / "bf16", {k: v.to(torch.bfloat16) for k, v in stored.items()}, folder)
    for path, file_dtype in ((folder, torch.float32), (bf16, torch.bfloat16)):
        for dtype in (torch.float32, torch.bfloat16, torch.float64):
            model = minivlm.from_pretrained(path, dtype=dtype)
            weights = dict(model.named_parameters())
            for name in ("language_model.model.layers.1.mlp.up_proj.weight",      # same names in the file
                         "vision_tower.embeddings.class_embedding"):
                assert weights[name].dtype == dtype
                assert torch.equal(weights[name], stored[name].to(file_dtype).to(dtype)), (path.name, dtype, name)


def test_mmap_serves_the_file_copy_on_write(checkpoints, tmp_path):
    """mmap=True (the default): float32 weights of a float32 file are views of the mapped file, give the same
    logits as mmap=False, and writing to one changes the model, never the file."""
    hf, folder = checkpoints(text="llama", feature_layer=1)
    work = tmp_path / "copy"
    shutil.copytree(folder, work)
    mapped, read = minivlm.from_pretrained(work), minivlm.from_pretrained(work, mmap=False)
    file_size = (work / "model.safetensors").stat().st_size
    w = mapped.language_model.model.layers[0].mlp.up_proj.weight
    assert w.untyped_storage().nbytes() == file_size                      # a view of the whole file
    assert read.language_model.model.layers[0].mlp.up_proj.weight.untyped_storage().nbytes() < file_size
    assert minivlm.from_pretrained(work, dtype=torch.bfloat16).language_model.lm_head.weight.untyped_storage().nbytes() \
        < file_size                                                       # another dtype: read and cast
    ids, mask = prompts(SIZES_PAIR, [8, 3], hf.config)
    pv, sizes = pixel_values(SIZES_PAIR), torch.tensor(SIZES_PAIR)
    with torch.no_grad():
        assert_same_weights(mapped, read, "memory-mapped vs read")
        assert_close_rel(mapped(ids, pixel_values=pv, image_sizes=sizes, attention_mask=mask).logits,
                         read(ids, pixel_values=pv, image_sizes=sizes, attention_mask=mask).logits, "logits", F32_REL,
                         mask)
        before = (work / "model.safetensors").read_bytes()
        w.mul_(2)                                                         # a write: copy-on-write
    assert (work / "model.safetensors").read_bytes() == before
    reloaded = minivlm.from_pretrained(work).language_model.model.layers[0].mlp.up_proj.weight
    assert torch.equal(reloaded * 2, w)


@pytest.mark.parametrize("damage", ["truncated", "not_safetensors"])
def test_damaged_file_fails_clearly(checkpoints, tmp_path, damage):
    _, folder = checkpoints(text="llama", feature_layer=1)
    broken = tmp_path / damage
    shutil.copytree(folder, broken)
    file = broken / "model.safetensors"
    data = file.read_bytes()
    file.write_bytes(data[:-100] if damage == "truncated" else b"PK\x03\x04 a zip file" + data)
    with pytest.raises(ValueError, match="truncated" if damage == "truncated" else "not a safetensors file"):
        minivlm.from_pretrained(broken)


def test_loader_errors_name_the_problem(tmp_path):
    with pytest.raises(FileNotFoundError, match="not a folder"):
        minivlm.from_pretrained(tmp_path / "nowhere")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "gpt_neox"}))
    with pytest.raises(ValueError, match="gpt_neox"):
        minivlm.from_pretrained(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(hf_config().to_dict()))
    with pytest.raises(FileNotFoundError, match="model.safetensors"):
        minivlm.from_pretrained(tmp_path)
    with pytest.raises(TypeError, match="dtype"):
        minivlm.from_pretrained(tmp_path, dtype=torch.int64)


def test_bad_inputs_raise(checkpoints):
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    model = minivlm.from_pretrained(folder)
    ids, mask = prompts(SIZES_PAIR, [4, 4], hf.config)
    pv, sizes = pixel_values(SIZES_PAIR), torch.tensor(SIZES_PAIR)
    short = ids.clone()
    short[0, (ids[0] == IMAGE_TOKEN).nonzero()[0]] = 5                # one image token short
    with pytest.raises(ValueError, match="image tokens"):
        model(short, pixel_values=pv, image_sizes=sizes)
    with pytest.raises(ValueError, match="no pixel_values"):
        model(ids)
    with pytest.raises(ValueError, match="pixel_values"):
        model(ids, pixel_values=pv[:, :, :, :8], image_sizes=sizes)
    with pytest.raises(ValueError, match="image_sizes"):
        model(ids, pixel_values=pv, image_sizes=sizes[:1])
    with pytest.raises(ValueError, match="input_ids"):
        model(ids[0], pixel_values=pv, image_sizes=sizes)


def test_beam_search_matches_transformers_float64(checkpoints):
    """Beam search over the image prompt: the prefill runs once per prompt and its cache rows are repeated
    for the beams; the tokens equal Transformers' (which prefills every beam)."""
    hf, folder = checkpoints(text="mistral", sliding_window=16, feature_layer=-2)
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = prompts(SIZES_PAIR, [60, 7], hf.config)
    pv, sizes = pixel_values(SIZES_PAIR), torch.tensor(SIZES_PAIR)
    beams = dict(num_beams=3, num_return_sequences=2, max_new_tokens=8, eos_token_id=EOS, pad_token_id=0)
    with torch.no_grad():
        ref = hf.double().generate(input_ids=ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes,
                                   do_sample=False, **beams)
    hf.float()
    ours = model.generate(ids, attention_mask=mask, pixel_values=pv, image_sizes=sizes, **beams)
    assert ours.shape[0] == 4 and torch.equal(ours, ref), f"\nours {ours[:, ids.shape[1]:]}\nref  {ref[:, ids.shape[1]:]}"
