"""save_pretrained (minivlm/saving.py): a folder minivlm writes is the folder Transformers 5.23 writes.

For every model type: a tiny Transformers checkpoint (tests/_<model>.py) is saved by Transformers, loaded by
minivlm and saved again by minivlm; then
- config.json and generation_config.json equal Transformers' own files (transformers_version aside), and
  Transformers' config class reads minivlm's config.json to the same config;
- the safetensors files hold the same tensor names (tied weights once), with metadata {"format": "pt"};
- minivlm and Transformers (the model class's from_pretrained) both reload the folder: the weights bit
  for bit as saved, and the same logits.
Then: sharding (several files and an index that both libraries load, laid out as Transformers lays out
its own), a half-precision model with float32 islands, a model built from a minivlm config with random
weights (Transformers loads it to the same logits, and its config.json is the one Transformers writes
for that config), and bad arguments.

Tolerance (float32 logits): 1e-5 of the largest logit, the bound of the parity tests (test_t5.py,
test_opt.py, ...; they measure <= 8e-7 on these tiny models). Both sides hold bit-identical weights
(checked first), so only the two implementations' float32 summation orders differ; a weight under a wrong
name, a lost tie or a wrong config field moves the logits by their own scale.
"""
import json
import shutil

import pytest
import torch
from safetensors import safe_open

import minivlm
import _altclip
import _blip2
import _idefics
import _kosmos2
import _llama
import _llava
import _opt
import _t5
from helpers import assert_close_rel, transformers_config
from minivlm.saving import parse_size, state_dict_to_save
from minivlm.tools import tiny

RTOL32 = 1e-5     # times the largest logit; see the module docstring
LLAVA_SIZES = [(20, 40), (40, 18)]


def _clip():
    import transformers
    torch.manual_seed(0)
    model = transformers.CLIPVisionModel(transformers_config(tiny._vision("clip_vision_model"))).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0.0, 0.5)
    return model


def _causal(vocab):
    return lambda: dict(input_ids=torch.randint(3, vocab, (2, 11), generator=torch.Generator().manual_seed(2)))


def _t5_inputs():
    ids, mask = _t5.right_padded([20, 13], 20)
    dec = torch.randint(2, 128, (2, 9), generator=torch.Generator().manual_seed(5))
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec)


def _llava_inputs():
    ids, mask = _llava.prompts(LLAVA_SIZES, [5, 2], _llava.hf_config())
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_llava.pixel_values(LLAVA_SIZES),
                image_sizes=torch.tensor(LLAVA_SIZES))


def _blip2_opt_inputs():
    ids, mask = _blip2.opt_prompts([5, 3])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_blip2.pixel_values(2))


def _blip2_t5_inputs():
    ids, mask = _blip2.t5_prompts([5, 3])
    dec = torch.randint(4, _blip2.IMAGE_TOKEN, (2, 6), generator=torch.Generator().manual_seed(1))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_blip2.pixel_values(2), decoder_input_ids=dec)


def _kosmos2_inputs():
    ids, mask, image_mask = _kosmos2.prompts([4, 7])
    return dict(input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                pixel_values=_kosmos2.pixel_values(2))


def _idefics_inputs():
    ids, mask, image_mask = _idefics.prompts([[3, "img", 4], [2, "img", 1]])
    return dict(input_ids=ids, attention_mask=mask, image_attention_mask=image_mask,
                pixel_values=_idefics.pixel_values(2, 1))


def _altclip_inputs():
    ids, mask = _altclip.texts([5, 3])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_altclip.pixel_values(2))


# name -> (a tiny Transformers model, its inputs, the output compared, the minivlm.tools.tiny config
# of the same architecture for the from-scratch round trip)
MODELS = {
    "llama": (lambda: _llama.hf_model("llama"), _causal(_llama.VOCAB), "logits", lambda: tiny.llama()),
    "llama_tied": (lambda: _llama.hf_model("llama", tie_word_embeddings=True), _causal(_llama.VOCAB), "logits",
                   lambda: tiny.llama(tie_word_embeddings=True)),
    "mistral": (lambda: _llama.hf_model("mistral", num_key_value_heads=2, sliding_window=8), _causal(_llama.VOCAB),
                "logits", lambda: tiny.llama("mistral", num_key_value_heads=2, sliding_window=8)),
    "opt": (_opt.hf_model, _causal(_opt.VOCAB), "logits", lambda: tiny.opt()),
    "t5": (lambda: _t5.hf_model(), _t5_inputs, "logits", lambda: tiny.t5()),
    "t5_tied": (lambda: _t5.hf_model("relu", tie=True), _t5_inputs, "logits", lambda: tiny.t5("relu", tie=True)),
    "clip_vision_model": (_clip, lambda: dict(pixel_values=_blip2.pixel_values(2)), "last_hidden_state",
                          lambda: tiny._vision("clip_vision_model")),
    "llava_next": (lambda: _llava.hf_model(_llava.hf_config()), _llava_inputs, "logits", lambda: tiny.llava_next()),
    "blip2_opt": (lambda: _blip2.hf_model(_blip2.hf_config("opt")), _blip2_opt_inputs, "logits",
                  lambda: tiny.blip2("opt")),
    "blip2_t5": (lambda: _blip2.hf_model(_blip2.hf_config("t5")), _blip2_t5_inputs, "logits",
                 lambda: tiny.blip2("t5")),
    "kosmos2": (lambda: _kosmos2.hf_model(_kosmos2.hf_config()), _kosmos2_inputs, "logits", lambda: tiny.kosmos2()),
    "idefics": (lambda: _idefics.hf_model(_idefics.hf_config()), _idefics_inputs, "logits", lambda: tiny.idefics()),
    "altclip": (lambda: _altclip.hf_model(_altclip.hf_config()), _altclip_inputs, "logits_per_image",
                lambda: tiny.altclip()),
}


def build_checkpoint(name):
    """The Transformers model of MODELS[name] that the checkpoints fixture (conftest.py) saves."""
    return MODELS[name][0]()


def hf_class(folder):
    """The Transformers class config.json's `architectures` names."""
    import transformers
    return getattr(transformers, json.loads((folder / "config.json").read_text())["architectures"][0])


def output(model, name, inputs):
    """model(**inputs()).<name>: fresh inputs for every call (Transformers' LLaVA-NeXT edits input_ids)."""
    with torch.no_grad():
        return getattr(model(**inputs()), name)


def real_positions(name, inputs):
    """The attention mask of a left-padded decoder's prompt (its pads' logits are not compared: each library
    computes them its own way), else None."""
    padded = ("llava_next", "blip2_opt", "kosmos2", "idefics")
    return inputs()["attention_mask"] if name in padded else None


def keys_and_metadata(folder):
    """{file name: (its tensor names, its metadata)} of every safetensors file in folder."""
    out = {}
    for file in sorted(folder.glob("*.safetensors")):
        with safe_open(str(file), framework="pt") as f:
            out[file.name] = (set(f.keys()), f.metadata())
    return out


def json_of(folder, name):
    d = json.loads((folder / name).read_text())
    d.pop("transformers_version", None)
    return d


@pytest.fixture(scope="module")
def resaved(checkpoints, tmp_path_factory):
    """name -> (the Transformers model, its folder, minivlm's load of it, the folder minivlm saved it to)."""
    cache = {}

    def get(name):
        if name not in cache:
            hf, folder = checkpoints(name)
            ours = minivlm.from_pretrained(folder)
            out = tmp_path_factory.mktemp(f"saved-{name}")
            ours.save_pretrained(out)
            cache[name] = hf, folder, ours, out
        return cache[name]

    return get


@pytest.mark.parametrize("name", MODELS)
def test_files_are_what_transformers_writes(resaved, name):
    hf, folder, ours, out = resaved(name)
    assert json_of(out, "config.json") == json_of(folder, "config.json")
    assert (out / "generation_config.json").exists() == (folder / "generation_config.json").exists()
    if (folder / "generation_config.json").exists():
        assert json_of(out, "generation_config.json") == json_of(folder, "generation_config.json")
    theirs, mine = keys_and_metadata(folder), keys_and_metadata(out)
    assert list(mine) == ["model.safetensors"] == list(theirs)
    assert mine["model.safetensors"][0] == theirs["model.safetensors"][0]      # tied weights once
    assert mine["model.safetensors"][1] == {"format": "pt"}
    assert not (out / "model.safetensors.index.json").exists()
    # Transformers' config class reads minivlm's config.json to the config it reads from its own
    import transformers
    a = transformers.AutoConfig.from_pretrained(out).to_dict()
    b = transformers.AutoConfig.from_pretrained(folder).to_dict()
    a.pop("_name_or_path"), b.pop("_name_or_path")
    assert a == b


@pytest.mark.parametrize("name", MODELS)
def test_both_libraries_reload_the_same_model(resaved, name):
    hf, folder, ours, out = resaved(name)
    _, inputs, what, _ = MODELS[name]
    again = minivlm.from_pretrained(out)
    assert again.config == ours.config
    a, b = ours.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    theirs = hf_class(out).from_pretrained(out).eval()
    expected = hf.state_dict()
    got = theirs.state_dict()
    assert got.keys() == expected.keys() and all(torch.equal(got[k], expected[k]) for k in got)
    reference, mask = output(hf, what, inputs), real_positions(name, inputs)
    assert_close_rel(output(theirs, what, inputs), reference, f"{name}: Transformers' reload", RTOL32, mask)
    assert_close_rel(output(again, what, inputs), reference, f"{name}: minivlm's reload", RTOL32, mask)


def test_tied_weights_are_stored_once_under_the_source(resaved):
    for name, dropped, kept in [("llama_tied", "lm_head.weight", "model.embed_tokens.weight"),
                                ("t5_tied", "lm_head.weight", "shared.weight"),
                                ("t5", "encoder.embed_tokens.weight", "shared.weight")]:
        _, _, ours, out = resaved(name)
        keys = keys_and_metadata(out)["model.safetensors"][0]
        assert kept in keys and dropped not in keys, name
    keys = keys_and_metadata(resaved("t5")[3])["model.safetensors"][0]
    assert "lm_head.weight" in keys        # Flan-T5's own head is not the table: stored


def test_sharded_like_transformers(checkpoints, tmp_path):
    """Llama's tensors are in the same order in both libraries: the same shards and index as Transformers'."""
    hf, folder = checkpoints("llama")
    minivlm.from_pretrained(folder).save_pretrained(tmp_path / "ours", max_shard_size="20KB")
    hf.save_pretrained(tmp_path / "theirs", max_shard_size="20KB")
    mine, theirs = keys_and_metadata(tmp_path / "ours"), keys_and_metadata(tmp_path / "theirs")
    assert len(mine) > 2 and "model.safetensors" not in mine
    assert mine == theirs                          # the same files holding the same tensors
    index = json.loads((tmp_path / "ours" / "model.safetensors.index.json").read_text())
    assert index == json.loads((tmp_path / "theirs" / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_parameters"] == hf.num_parameters()


def test_shards_follow_the_rule_and_both_libraries_load_them(checkpoints, tmp_path):
    """LLaVA-NeXT (whose tensors Transformers orders otherwise): every shard is at most the limit unless it
    is one larger tensor, and the next shard's first tensor did not fit; both libraries load the folder."""
    hf, folder = checkpoints("llava_next")
    ours = minivlm.from_pretrained(folder)
    limit = 20_000
    ours.save_pretrained(tmp_path, max_shard_size=limit)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    files = sorted(set(index["weight_map"].values()))
    assert len(files) > 2 and files[0] == f"model-00001-of-{len(files):05d}.safetensors"
    # The model's tensors in its order, each with the file it went to. A tensor over the limit has a file of
    # its own, taken at once (the shard being filled stays open); the others fill their shards greedily.
    order = [(k, t.numel() * t.element_size(), index["weight_map"][k]) for k, t in state_dict_to_save(ours).items()]
    large = [file for _, n, file in order if n > limit]
    small = [(n, file) for _, n, file in order if n <= limit]
    assert large and all(sum(1 for _, _, f in order if f == file) == 1 for file in large)
    assert [f for _, f in small] == sorted(f for _, f in small)
    sizes = [[n for n, f in small if f == file] for file in files if file not in large]
    for i, shard in enumerate(sizes):
        assert sum(shard) <= limit
        if i + 1 < len(sizes):
            assert sum(shard) + sizes[i + 1][0] > limit              # greedy: the next tensor did not fit
    sizes += [[n for _, n, f in order if f == file] for file in large]
    assert index["metadata"] == {"total_parameters": hf.num_parameters(), "total_size": sum(map(sum, sizes))}
    reference, mask = output(hf, "logits", _llava_inputs), real_positions("llava_next", _llava_inputs)
    theirs = hf_class(tmp_path).from_pretrained(tmp_path).eval()
    assert_close_rel(output(theirs, "logits", _llava_inputs), reference, "Transformers' load of shards", RTOL32, mask)
    assert_close_rel(output(minivlm.from_pretrained(tmp_path), "logits", _llava_inputs), reference,
                     "minivlm's load of shards", RTOL32, mask)


def test_a_second_save_replaces_the_weight_files(checkpoints, tmp_path):
    _, folder = checkpoints("opt")
    ours = minivlm.from_pretrained(folder)
    ours.save_pretrained(tmp_path, max_shard_size=30_000)
    assert len(list(tmp_path.glob("model-*.safetensors"))) > 1
    ours.save_pretrained(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.json", "generation_config.json",
                                                          "model.safetensors"]
    minivlm.from_pretrained(tmp_path)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=str)
def test_half_precision_keeps_float32_islands(checkpoints, tmp_path, dtype):
    _, folder = checkpoints("blip2_opt")
    ours = minivlm.from_pretrained(folder, dtype=dtype)
    ours.save_pretrained(tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["dtype"] == str(dtype).removeprefix("torch.")
    with safe_open(str(tmp_path / "model.safetensors"), framework="pt") as f:
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
    assert dtypes["query_tokens"] == "F32" and dtypes["qformer.layernorm.weight"] == "F32"
    assert dtypes["vision_model.embeddings.class_embedding"] == {torch.bfloat16: "BF16", torch.float16: "F16"}[dtype]
    again = minivlm.from_pretrained(tmp_path, dtype="auto")
    a, b = ours.state_dict(), again.state_dict()
    assert all(a[k].dtype == b[k].dtype and torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("name", MODELS)
def test_a_model_built_from_a_minivlm_config(tmp_path, name):
    """Random weights, no checkpoint: Transformers loads minivlm's folder to the same logits, and the
    config.json is the one Transformers writes for that config (its defaults for the unused settings)."""
    import transformers
    _, inputs, what, config = MODELS[name]
    d = config()
    from minivlm.models import model_class
    cls = model_class(d["model_type"])
    torch.manual_seed(0)
    ours = cls(cls.config_class.from_dict(d)).eval()
    with torch.no_grad():             # larger than the default init, so that every weight shows
        for p in ours.parameters():
            p.add_(0.05 * torch.randn_like(p))
    ours.save_pretrained(tmp_path / "ours")
    theirs = hf_class(tmp_path / "ours").from_pretrained(tmp_path / "ours").eval()
    assert_close_rel(output(theirs, what, inputs), output(ours, what, inputs), f"{name} from scratch", RTOL32,
                     real_positions(name, inputs))
    hf_class(tmp_path / "ours")(transformers_config(d)).save_pretrained(tmp_path / "theirs")
    assert json_of(tmp_path / "ours", "config.json") == json_of(tmp_path / "theirs", "config.json")


def test_config_round_trip_keeps_settings_minivlm_does_not_use():
    from minivlm.models.llava_next import LlavaNextConfig
    d = tiny.llava_next()
    d["vision_config"]["initializer_range"] = 0.5
    d["image_seq_length"] = 7
    config = LlavaNextConfig.from_dict(d)
    out = config.to_dict()
    assert out["vision_config"]["initializer_range"] == 0.5 and out["image_seq_length"] == 7
    assert out["vision_config"]["projection_dim"] == 16 and out["text_config"]["model_type"] == "mistral"
    assert LlavaNextConfig.from_dict(out) == config


def test_parse_size():
    assert parse_size("5GB") == 5 * 10**9 and parse_size("0.5 mb") == 500_000 and parse_size(123) == 123
    assert parse_size("50GB") == 50 * 10**9


@pytest.mark.parametrize("size, error, message", [
    ("5 gigs", ValueError, "max_shard_size must be a size such as '5GB'.*got '5 gigs'"),
    ("GB", ValueError, "max_shard_size must be a size"),
    ("0KB", ValueError, "max_shard_size must be a size"),
    (0, ValueError, "max_shard_size must be a positive number of bytes, got 0"),
    (-5, ValueError, "max_shard_size must be a positive number of bytes, got -5"),
    (True, TypeError, "max_shard_size must be an int.*got bool"),
    (1.5, TypeError, "max_shard_size must be an int.*got float"),
])
def test_bad_max_shard_size(checkpoints, tmp_path, size, error, message):
    _, folder = checkpoints("opt")
    with pytest.raises(error, match=message):
        minivlm.from_pretrained(folder).save_pretrained(tmp_path / "out", max_shard_size=size)
    assert not (tmp_path / "out").exists()          # nothing written


def test_path_that_is_a_file(checkpoints, tmp_path):
    _, folder = checkpoints("opt")
    file = tmp_path / "a-file"
    file.write_text("not a folder")
    with pytest.raises(NotADirectoryError, match="path .*a-file' is a file; expected a folder"):
        minivlm.from_pretrained(folder).save_pretrained(file)
    assert file.read_text() == "not a folder"


def test_meta_model_and_non_model(tmp_path):
    from minivlm.models.opt import OPTConfig, OPTForCausalLM
    from minivlm.saving import save_pretrained
    with torch.device("meta"):
        model = OPTForCausalLM(OPTConfig.from_dict(tiny.opt()))
    with pytest.raises(ValueError, match="weights on the meta device"):
        model.save_pretrained(tmp_path / "out")
    assert not (tmp_path / "out").exists()
    with pytest.raises(TypeError, match="model must be a minivlm.models.base.Model, got Linear"):
        save_pretrained(torch.nn.Linear(2, 2), tmp_path / "out")


def test_subfolders_are_created(checkpoints, tmp_path):
    _, folder = checkpoints("clip_vision_model")
    minivlm.from_pretrained(folder).save_pretrained(tmp_path / "a" / "b")
    assert (tmp_path / "a" / "b" / "model.safetensors").is_file()
    shutil.rmtree(tmp_path / "a")


def test_xlm_roberta_tower(tmp_path):
    """The XLM-R encoder alone (a Model, though from_pretrained has no model_type for it): Transformers'
    XLMRobertaModel (without its pooler, which minivlm does not have) loads it to the same states."""
    import transformers
    from minivlm.models.xlm_roberta import XLMRobertaConfig, XLMRobertaModel
    config = XLMRobertaConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                              intermediate_size=64, max_position_embeddings=40)
    torch.manual_seed(0)
    ours = XLMRobertaModel(config).eval()
    ours.save_pretrained(tmp_path)
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["architectures"] == ["XLMRobertaModel"] and saved["model_type"] == "xlm-roberta"
    assert XLMRobertaConfig.from_dict(saved) == config
    theirs = transformers.XLMRobertaModel.from_pretrained(tmp_path, add_pooling_layer=False).eval()
    ids = torch.randint(2, 50, (2, 7), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        mine = ours(ids)
        assert_close_rel(getattr(mine, "last_hidden_state", mine), theirs(ids).last_hidden_state, "XLM-R", RTOL32)
