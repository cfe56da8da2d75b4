"""AltCLIP parity with Transformers on tiny random-weight checkpoints, loaded by minivlm's loader.

Each case builds a Transformers AltCLIPModel, saves it with save_pretrained, loads the folder with
minivlm.from_pretrained and compares the contrastive outputs (both logits, both embeddings), the towers'
outputs, the loss and the zero-shot ranking; then the loader's key spellings, the label tokenizer and the
errors for bad input.
"""
import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import CLIPImageProcessorPil

import minivlm
from minivlm.loading import CheckpointError
from minivlm.models.altclip import AltCLIPConfig, AltCLIPModel, tokenize_labels
from minivlm.models.xlm_roberta import position_ids_from_input_ids
from minivlm.processing import CLIPImageProcessor
from _altclip import BOS, EOS, IMAGE, PAD, VOCAB, WORDS, build_tokenizer, hf_config, hf_model, pixel_values, texts
from helpers import assert_close_rel, assert_same_weights, save, write_checkpoint

# float32 tolerance, relative to the largest value of each compared output. Both sides run the same
# float32 math in a different order (minivlm's blocked attention kernel against SDPA, other GEMM
# blockings), each dot product differing by a few units of roundoff (2^-24 ~ 6e-8) times the square root
# of its length (<= 64 terms). Through 2 post-LN text layers, 2 vision layers, the projections and the
# normalisation this was measured at 0 to 8e-8 of the largest value; 1e-5 leaves a margin over 100x, while a
# real bug (a position off by one, a pad key seen, a missing LayerNorm or a swapped projection) moves the
# outputs by 1e-2 of their scale or more.
F32_REL = 1e-5
# float64: the same argument with roundoff 2^-53 ~ 1e-16; measured below 1e-15.
F64_REL = 1e-12

OUTPUTS = ("logits_per_image", "logits_per_text", "text_embeds", "image_embeds")


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """The Transformers model and its save_pretrained folder, built once for the file."""
    hf = hf_model(hf_config())
    return hf, save(hf, tmp_path_factory.mktemp("altclip"))


@pytest.fixture(scope="module")
def model(checkpoint):
    return minivlm.from_pretrained(checkpoint[1])


def compare_all(ours, ref, mask, rel):
    for name in OUTPUTS:
        assert_close_rel(getattr(ours, name), getattr(ref, name), name, rel)
    keep = mask.bool()   # the projected text states at real tokens only (a pad's own output is never read)
    assert_close_rel(ours.text_model_output.last_hidden_state[keep], ref.text_model_output.last_hidden_state[keep],
                     "text_model_output.last_hidden_state", rel)
    assert_close_rel(ours.vision_model_output.pooler_output, ref.vision_model_output.pooler_output,
                     "vision_model_output.pooler_output", rel)


@pytest.mark.parametrize("padding_side", ["right", "left"])
def test_outputs_match_transformers(checkpoint, model, padding_side):
    """3 texts of different lengths (padded) against 2 images: the logits are not square, so a transposed
    result cannot pass."""
    hf, _ = checkpoint
    ids, mask = texts([9, 3, 20], padding_side=padding_side)
    assert (mask == 0).any()
    pv = pixel_values(2)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pv, attention_mask=mask)
        ours = model(ids, pv, attention_mask=mask)
    assert ours.logits_per_image.shape == (2, 3) and ours.text_embeds.shape == (3, 16)
    compare_all(ours, ref, mask, F32_REL)
    assert torch.allclose(ours.text_embeds.norm(dim=-1), torch.ones(3))
    assert ours.loss is None


def test_outputs_match_transformers_float64(tmp_path):
    hf = hf_model(hf_config()).double()
    folder = save(hf, tmp_path / "f64")
    model = minivlm.from_pretrained(folder, dtype=torch.float64)
    ids, mask = texts([5, 14, 1], padding_side="right", seed=1)
    pv = pixel_values(3, seed=1)                 # float32, as a processor emits: both models cast it
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pv, attention_mask=mask)
        ours = model(ids, pv, attention_mask=mask)
    assert ours.logits_per_text.dtype == torch.float64
    compare_all(ours, ref, mask, F64_REL)


def test_padding_changes_nothing_for_real_tokens(model):
    """A text's embedding does not depend on how much padding its batch adds (positions count real
    tokens only, pad keys are hidden); without the mask the pads are attended to and it does change."""
    ids, mask = texts([4, 15], padding_side="right")
    with torch.no_grad():
        alone = model.get_text_features(ids[:1, :6], mask[:1, :6])
        batched = model.get_text_features(ids, mask)[:1]
        unmasked = model.get_text_features(ids[:1])
    assert_close_rel(batched, alone, "padded vs alone", F32_REL)
    assert (unmasked - alone).abs().max() > 1e-3
    assert position_ids_from_input_ids(torch.tensor([[PAD, PAD, BOS, 7, EOS]]), PAD).tolist() == [[1, 1, 2, 3, 4]]


def test_xlm_roberta_encoder_matches_transformers():
    """The text tower's encoder on its own, against Transformers' XLMRobertaModel (no pooler) with its own
    defaults where AltCLIP's differ (2 token types, LayerNorm eps 1e-12) and token_type_ids given."""
    from transformers import XLMRobertaConfig as HFConfig, XLMRobertaModel as HFModel
    from minivlm.loading import load_weights
    from minivlm.models.xlm_roberta import XLMRobertaConfig, XLMRobertaModel

    d = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64, vocab_size=VOCAB,
             max_position_embeddings=64)
    hf = HFModel(HFConfig(**d), add_pooling_layer=False).eval()
    with torch.no_grad():
        for p in hf.parameters():
            p.add_(0.1 * torch.randn_like(p))
    ours = load_weights(XLMRobertaModel(XLMRobertaConfig.from_dict(hf.config.to_dict())), hf.state_dict())
    assert ours.config.layer_norm_eps == 1e-12 and ours.config.type_vocab_size == 2
    ids, mask = texts([9, 3, 20], padding_side="left")
    types = torch.randint(0, 2, ids.shape)
    with torch.no_grad():
        ref = hf(input_ids=ids, attention_mask=mask, token_type_ids=types).last_hidden_state
        out = ours(ids, mask, token_type_ids=types)
    keep = mask.bool()
    assert_close_rel(out[keep], ref[keep], "XLM-R last_hidden_state", F32_REL)
    with pytest.raises(ValueError, match="token_type_ids"):
        ours(ids, mask, token_type_ids=types + 2)


def test_features_match_transformers(checkpoint, model):
    hf, _ = checkpoint
    ids, mask = texts([7, 2, 11], padding_side="right", seed=2)
    pv = pixel_values(4, seed=2)
    with torch.no_grad():
        text = model.get_text_features(ids, mask)
        image = model.get_image_features(pv)
        assert_close_rel(text, hf.get_text_features(input_ids=ids, attention_mask=mask).pooler_output,
                         "get_text_features", F32_REL)
        assert_close_rel(image, hf.get_image_features(pixel_values=pv).pooler_output, "get_image_features", F32_REL)
    assert text.shape == (3, 16) and image.shape == (4, 16)


def test_loss_matches_transformers(checkpoint, model):
    hf, _ = checkpoint
    ids, mask = texts([6, 12, 3], padding_side="right", seed=3)
    pv = pixel_values(3, seed=3)
    with torch.no_grad():
        ref = hf(input_ids=ids, pixel_values=pv, attention_mask=mask, return_loss=True).loss
        ours = model(ids, pv, attention_mask=mask, return_loss=True).loss
    assert abs(ours.item() - ref.item()) <= F32_REL * abs(ref.item())
    # The loss trains both towers and the temperature.
    model.zero_grad()
    model(ids, pv, attention_mask=mask, return_loss=True).loss.backward()
    for name in ("logit_scale", "text_projection.weight", "visual_projection.weight",
                 "text_model.roberta.encoder.layer.0.attention.self.query.weight",
                 "vision_model.encoder.layers.0.self_attn.q_proj.weight"):
        grad = model.get_parameter(name).grad
        assert grad is not None and grad.abs().max() > 0, name
    model.zero_grad()


def test_zero_shot_ranking_equals_transformers(checkpoint, model, tmp_path):
    """End to end: 3 PIL images through minivlm's CLIPImageProcessor (Transformers' CLIPImageProcessorPil
    for the reference), 6 labels through a tokenizer.json; minivlm's probabilities rank the labels as
    Transformers' logits do. The test first checks that the ranking is well posed: adjacent logits differ
    by more than twice the float32 tolerance (and so by over 200x the measured error), so float32 noise
    cannot decide it."""
    hf, _ = checkpoint
    labels = ["cat", "dog", "bird", "car", "red boat", "small house"]
    ids, mask = tokenize_labels(build_tokenizer(tmp_path / "tokenizer.json"), labels)
    rng = np.random.default_rng(4)
    images = [Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8))
              for h, w in ((20, 30), (16, 16), (40, 18))]
    settings = dict(size={"shortest_edge": IMAGE}, crop_size={"height": IMAGE, "width": IMAGE})
    pv = CLIPImageProcessor(**settings)(images)["pixel_values"]
    with torch.no_grad():
        ref_pv = CLIPImageProcessorPil(**settings)(images, return_tensors="pt")["pixel_values"]
        ref = hf(input_ids=ids, pixel_values=ref_pv, attention_mask=mask).logits_per_image     # (3, 6)
        probs = model.zero_shot(pv, ids, mask)
    gaps = ref.sort(dim=-1).values.diff(dim=-1)
    assert gaps.min() > 2 * F32_REL * ref.abs().max(), f"labels nearly tied: {ref}"
    assert probs.shape == (3, len(labels))
    assert torch.allclose(probs.sum(-1), torch.ones(3))
    assert torch.equal(probs.argsort(dim=-1, descending=True), ref.argsort(dim=-1, descending=True))
    assert_close_rel(probs, ref.softmax(-1), "zero-shot probabilities", F32_REL)


def test_tokenize_labels(tmp_path):
    """Against Transformers' fast tokenizer reading the same file; pads are XLM-R's <pad> on the right."""
    from transformers import PreTrainedTokenizerFast

    path = build_tokenizer(tmp_path / "tokenizer.json")
    labels = ["cat", "small red car", "dog"]
    ids, mask = tokenize_labels(path, labels)
    reference = PreTrainedTokenizerFast(tokenizer_file=str(path), pad_token="<pad>", bos_token="<s>",
                                        eos_token="</s>")([f"a photo of a {s}" for s in labels], padding=True,
                                                          return_tensors="pt")
    assert torch.equal(ids, reference["input_ids"]) and torch.equal(mask, reference["attention_mask"])
    vocab = {w: 4 + i for i, w in enumerate(WORDS)}
    a, photo, of, cat = vocab["a"], vocab["photo"], vocab["of"], vocab["cat"]
    assert ids[0].tolist() == [BOS, a, photo, of, a, cat, EOS, PAD, PAD]
    assert mask[0].tolist() == [1] * 7 + [0, 0] and mask[1].tolist() == [1] * 9
    assert ids.dtype == mask.dtype == torch.long
    ids, _ = tokenize_labels(path, ["dog"], template="{}", pad_id=9, max_length=2)
    assert ids.tolist() == [[BOS, EOS]]                # truncation keeps the special tokens
    ids, _ = tokenize_labels(path, ["cat", "small dog"], template="{}", pad_id=99)
    assert ids[0].tolist() == [BOS, cat, EOS, 99]
    # the same from the folder, and from a Tokenizer read once
    from minivlm.processing import Tokenizer
    for tokenizer in (tmp_path, Tokenizer.from_pretrained(tmp_path)):
        again, again_mask = tokenize_labels(tokenizer, labels)
        assert torch.equal(again, reference["input_ids"]) and torch.equal(again_mask, reference["attention_mask"])


def test_both_key_spellings_load(checkpoint, model, tmp_path):
    """Transformers' save_pretrained (encoder.layer.N in both towers), the hub's BAAI/AltCLIP layout
    (RoBERTa's encoder.layer.N, CLIP's encoder.layers.N) and Transformers' in-memory state dict
    (encoder.layers.N in both) load to the same model; a file holding one weight under two spellings, or
    missing one, is refused."""
    hf, folder = checkpoint
    saved = load_file(str(folder / "model.safetensors"))
    assert any(".encoder.layer.0." in k for k in saved if k.startswith("vision_model."))
    assert not any(".encoder.layers." in k for k in saved)

    hub = {k.replace("vision_model.encoder.layer.", "vision_model.encoder.layers."): v for k, v in saved.items()}
    hub["text_model.roberta.embeddings.position_ids"] = torch.arange(64)[None]   # buffers old files carry
    hub["vision_model.embeddings.position_ids"] = torch.arange(17)[None]
    hub["text_model.roberta.embeddings.token_type_ids"] = torch.zeros(1, 64, dtype=torch.long)
    memory = {k: v.contiguous() for k, v in hf.state_dict().items()}
    assert any("roberta.encoder.layers.0." in k for k in memory)
    ids, mask = texts([9, 3], seed=5)
    pv = pixel_values(2, seed=5)
    with torch.no_grad():
        expected = model(ids, pv, attention_mask=mask).logits_per_text
        for name, tensors in (("hub", hub), ("memory", memory)):
            other = minivlm.from_pretrained(write_checkpoint(tmp_path / name, tensors, folder))
            assert_same_weights(other, model, name)
            assert_close_rel(other(ids, pv, attention_mask=mask).logits_per_text, expected, name, F32_REL)

    twice = dict(saved)
    twice["vision_model.encoder.layers.0.mlp.fc1.bias"] = saved["vision_model.encoder.layer.0.mlp.fc1.bias"].clone()
    with pytest.raises(CheckpointError, match="stored twice"):
        minivlm.from_pretrained(write_checkpoint(tmp_path / "twice", twice, folder))
    missing = {k: v for k, v in saved.items() if k != "text_model.transformation.weight"}
    with pytest.raises(CheckpointError, match="text_model.transformation.weight"):
        minivlm.from_pretrained(write_checkpoint(tmp_path / "missing", missing, folder))


def test_config_defaults_and_overrides(checkpoint):
    """Omitted fields get Transformers' defaults; BAAI/AltCLIP-style *_config_dict entries win."""
    from transformers import AltCLIPConfig as HFConfig

    ours, theirs = AltCLIPConfig.from_dict({"model_type": "altclip"}), HFConfig()
    for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                 "hidden_act", "max_position_embeddings", "type_vocab_size", "layer_norm_eps", "pad_token_id",
                 "project_dim"):
        assert getattr(ours.text_config, name) == getattr(theirs.text_config, name), name
    for name in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "image_size",
                 "patch_size", "hidden_act", "layer_norm_eps"):
        assert getattr(ours.vision_config, name) == getattr(theirs.vision_config, name), name
    assert (ours.projection_dim, ours.logit_scale_init_value) == (theirs.projection_dim, theirs.logit_scale_init_value)
    d = json.loads((checkpoint[1] / "config.json").read_text())
    d["text_config_dict"] = {"project_dim": 40}
    d["vision_config_dict"] = {"patch_size": 8}
    c = AltCLIPConfig.from_dict(d)
    assert (c.text_config.project_dim, c.vision_config.patch_size, c.text_config.hidden_size) == (40, 8, 32)


def test_bad_inputs(model, tmp_path):
    ids, mask = texts([4, 6])
    pv = pixel_values(2)
    with pytest.raises(TypeError, match="input_ids"):
        model(ids.float(), pv)
    with pytest.raises(TypeError, match="input_ids"):
        model(ids[0], pv)
    with pytest.raises(ValueError, match=r"input_ids: ids must lie in \[0, vocab_size=128\)"):
        model(ids + VOCAB, pv)
    with pytest.raises(ValueError, match="exceeds the 62 tokens"):
        model(torch.full((1, 63), 5), pv)
    with pytest.raises(ValueError, match=r"attention_mask: expected shape \(2, 8\)"):
        model(ids, pv, attention_mask=mask[:, :3])
    with pytest.raises(ValueError, match="attention_mask: expected only 0"):
        model(ids, pv, attention_mask=mask * 2)
    with pytest.raises(ValueError, match="pixel_values"):
        model(ids, pv[:, :, :8])
    with pytest.raises(TypeError, match="pixel_values"):
        model(ids, pv.numpy())
    with pytest.raises(ValueError, match="return_loss.*2 texts and 3 images"):
        model(ids, pixel_values(3), attention_mask=mask, return_loss=True)
    with pytest.raises(TypeError, match="return_loss"):
        model(ids, pv, return_loss="yes")
    with pytest.raises(ValueError, match="AltCLIPTextConfig: hidden_size=30 is not a multiple"):
        AltCLIPConfig.from_dict({"text_config": {"hidden_size": 30, "num_attention_heads": 4}})
    with pytest.raises(ValueError, match="pad_token_id"):
        AltCLIPConfig.from_dict({"text_config": {"vocab_size": 10, "pad_token_id": 10}})
    with pytest.raises(ValueError, match="projection_dim"):
        AltCLIPConfig.from_dict({"projection_dim": 0})
    with pytest.raises(ValueError, match="position_embedding_type"):
        AltCLIPConfig.from_dict({"text_config": {"position_embedding_type": "relative_key"}})
    with pytest.raises(ValueError, match="hidden_act"):
        AltCLIPConfig.from_dict({"text_config": {"hidden_act": "mish"}})
    path = build_tokenizer(tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="tokenizer must be a Tokenizer, a checkpoint folder or the path"):
        tokenize_labels(tmp_path / "absent.json", ["cat"])
    with pytest.raises(TypeError, match="labels"):
        tokenize_labels(path, [])
    with pytest.raises(TypeError, match="labels"):
        tokenize_labels(path, ["cat", 3])
    with pytest.raises(ValueError, match="template"):
        tokenize_labels(path, ["cat"], template="a photo")
    with pytest.raises(ValueError, match="max_length"):
        tokenize_labels(path, ["cat"], max_length=0)


def test_registered_model_type():
    from minivlm.models import model_class

    assert model_class("altclip") is AltCLIPModel
