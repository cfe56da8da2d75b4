"""The CLIP vision tower (minivlm.models.clip) against Transformers' CLIPVisionModel.

Tiny random-weight towers (3 layers, width 32, 4 heads, 28 px images in 7 px patches: 17 tokens), the
weights moved through a state dict in the hub's spelling ("vision_model." prefix) and the model's own
checkpoint_renames, then every output compared.
"""
import json

import pytest
import torch
import transformers
from safetensors.torch import save_file

import minivlm
from minivlm.loading import load_weights
from minivlm.models.clip import CLIPVisionConfig, CLIPVisionModel
from helpers import assert_close_rel

TINY = dict(hidden_size=32, intermediate_size=48, num_hidden_layers=3, num_attention_heads=4,
            image_size=28, patch_size=7)


def hf_tower(dtype=torch.float32, hidden_act="quick_gelu", attn="sdpa"):
    """A Transformers CLIPVisionModel with weights drawn large enough (std 0.5, not the 0.02 init) that
    attention is far from uniform and every layer changes its input a lot."""
    config = transformers.CLIPVisionConfig(**TINY, hidden_act=hidden_act)
    model = transformers.CLIPVisionModel._from_config(config, attn_implementation=attn).to(dtype).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def ours_from(hf) -> CLIPVisionModel:
    """Our tower with hf's weights, given as a hub checkpoint spells them (vision_model.*)."""
    model = CLIPVisionModel(CLIPVisionConfig.from_dict(hf.config.to_dict()))
    hub_keys = {f"vision_model.{k}": v for k, v in hf.state_dict().items()}
    load_weights(model, hub_keys, dtype=next(hf.parameters()).dtype)   # strict: every key must match
    return model.eval()


def rtol(dtype):
    # The two towers run the same LayerNorms, linears and activations; they differ in the attention
    # kernel's order of summation (minivlm's online softmax vs PyTorch's SDPA or Transformers' eager
    # matmul-softmax-matmul). Each layer then adds a few roundings at the scale of the largest
    # activation, and 3 layers carry them forward: 16 units of roundoff of max|expected| covers that
    # with 4x headroom over the worst seen (3.8 units, float32 against eager, 10 seeds).
    return 16 * torch.finfo(dtype).eps


# Transformers' eager attention takes its softmax in float32 even for float64 inputs, so in float64 only
# its SDPA path is an exact-arithmetic oracle; float32 is checked against both paths.
@pytest.mark.parametrize("dtype, attn", [(torch.float32, "eager"), (torch.float32, "sdpa"),
                                         (torch.float64, "sdpa")])
@pytest.mark.parametrize("hidden_act", ["quick_gelu", "gelu"])
def test_matches_transformers(dtype, attn, hidden_act):
    hf = hf_tower(dtype, hidden_act, attn)
    ours = ours_from(hf)
    assert ours.config.hidden_act == hidden_act
    pixel_values = torch.randn(2, 3, 28, 28, dtype=dtype)
    with torch.no_grad():
        expected = hf(pixel_values, output_hidden_states=True)
        got = ours(pixel_values, output_hidden_states=True)
    assert len(got.hidden_states) == len(expected.hidden_states) == TINY["num_hidden_layers"] + 1
    for i, (a, e) in enumerate(zip(got.hidden_states, expected.hidden_states)):
        assert a.dtype == dtype
        assert_close_rel(a, e, f"hidden_states[{i}]", rtol(dtype))
    assert_close_rel(got.last_hidden_state, expected.last_hidden_state, "last_hidden_state", rtol(dtype))
    assert_close_rel(got.pooler_output, expected.pooler_output, "pooler_output", rtol(dtype))
    assert got.hidden_states[-1] is got.last_hidden_state


def test_hidden_states_zero_is_pre_layernormed_embeddings():
    # LLaVA-NeXT's vision_feature_layer indexes this tuple, so its [0] must be what Transformers puts there.
    ours = ours_from(hf_tower())
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        got = ours(pixel_values, output_hidden_states=True)
        embeddings = ours.pre_layrnorm(ours.embeddings(pixel_values))
    assert torch.equal(got.hidden_states[0], embeddings)
    assert ours(pixel_values).hidden_states is None


def test_num_layers_runs_a_prefix_of_the_full_tower():
    ours = ours_from(hf_tower())
    pixel_values = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        full = ours(pixel_values, output_hidden_states=True)
        for n in range(TINY["num_hidden_layers"] + 1):
            part = ours(pixel_values, output_hidden_states=True, num_layers=n)
            # The same operations on the same data in the same order: bit-identical.
            assert len(part.hidden_states) == n + 1
            for a, e in zip(part.hidden_states, full.hidden_states):
                assert torch.equal(a, e)
            assert torch.equal(part.last_hidden_state, full.hidden_states[n])
            assert torch.equal(part.pooler_output, ours.post_layernorm(full.hidden_states[n][:, 0]))


def test_pixel_values_are_cast_to_the_weights_dtype():
    ours = ours_from(hf_tower(torch.float64))
    pixel_values = torch.randn(1, 3, 28, 28)
    with torch.no_grad():
        got = ours(pixel_values)
        expected = ours(pixel_values.double())
    assert got.last_hidden_state.dtype == torch.float64
    assert torch.equal(got.last_hidden_state, expected.last_hidden_state)


@pytest.mark.parametrize("prefix", ["", "vision_model."])
def test_from_pretrained_reads_a_clip_vision_checkpoint(tmp_path, prefix):
    # "" is what Transformers' save_pretrained writes; "vision_model." is the hub's older spelling.
    hf = hf_tower()
    if prefix:
        save_file({prefix + k: v.contiguous() for k, v in hf.state_dict().items()}, tmp_path / "model.safetensors")
        (tmp_path / "config.json").write_text(json.dumps(hf.config.to_dict()))
    else:
        hf.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["model_type"] == "clip_vision_model"
    ours = minivlm.from_pretrained(tmp_path)
    assert isinstance(ours, CLIPVisionModel) and not ours.training
    pixel_values = torch.randn(2, 3, 28, 28)
    with torch.no_grad():
        expected = hf(pixel_values)
        got = ours(pixel_values)
    assert_close_rel(got.last_hidden_state, expected.last_hidden_state, "last_hidden_state", rtol(torch.float32))
    assert_close_rel(got.pooler_output, expected.pooler_output, "pooler_output", rtol(torch.float32))


def test_config_defaults_and_sources():
    hf_default = transformers.CLIPVisionConfig()
    ours_default = CLIPVisionConfig.from_dict({})
    for name in vars(ours_default):
        if name != "unread":      # not a setting: the config.json entries kept for saving (none here)
            assert getattr(ours_default, name) == getattr(hf_default, name), name
    assert ours_default.unread == {}
    assert CLIPVisionConfig() == ours_default
    # A whole CLIP config.json: the vision half is taken, the text half ignored.
    clip = transformers.CLIPConfig(vision_config=dict(TINY, hidden_act="gelu"),
                                   text_config=dict(hidden_size=16)).to_dict()
    config = CLIPVisionConfig.from_dict(clip)
    assert (config.hidden_size, config.patch_size, config.hidden_act) == (32, 7, "gelu")
    # A vision_config as found in a VLM's config.json, with keys we do not use.
    config = CLIPVisionConfig.from_dict({"model_type": "clip_vision_model", "image_size": 336, "patch_size": 14,
                                         "projection_dim": 768, "vocab_size": 32000})
    assert (config.image_size, config.patch_size, config.num_patches) == (336, 14, 576)


@pytest.mark.parametrize("field, value, message", [
    ("hidden_size", 30, "not a multiple of num_attention_heads"),
    ("num_hidden_layers", 0, "num_hidden_layers must be a positive int"),
    ("patch_size", 56, "patch_size 56 is larger than image_size 28"),
    ("hidden_act", "swiglu", "unsupported hidden_act 'swiglu'"),
    ("layer_norm_eps", -1.0, "layer_norm_eps must be a positive number"),
])
def test_bad_config(field, value, message):
    with pytest.raises(ValueError, match=message):
        CLIPVisionConfig.from_dict(dict(TINY, **{field: value}))


def test_bad_input():
    ours = ours_from(hf_tower())
    for shape in [(3, 28, 28), (1, 1, 28, 28), (1, 3, 28, 32), (1, 3, 56, 56)]:
        with pytest.raises(ValueError, match=r"pixel_values must have shape \(batch, 3, 28, 28\), got "
                                             + str(shape).replace("(", r"\(").replace(")", r"\)")):
            ours(torch.zeros(shape))
    with pytest.raises(TypeError, match="pixel_values must be a torch.Tensor, got list"):
        ours([[0.0]])
    for bad in (-1, 4, 1.5, True):
        with pytest.raises(ValueError, match=r"num_layers must be an int in \[0, 3\]"):
            ours(torch.zeros(1, 3, 28, 28), num_layers=bad)
