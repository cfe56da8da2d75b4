"""`minivlm parity`: on tiny random checkpoints of every architecture Transformers and minivlm agree at
every stage (float32 and float64); with a bug planted in one module of minivlm's model the report fails
and names, as the first divergence, the first stage whose output passes through that module; the
command's errors are one line; the two libraries never hold their models at once."""
import json

import pytest

from minivlm.tools import cli, parity
from minivlm.tools.checkpoints import ARCHS, tiny_checkpoint
from minivlm.tools.parity import GENERATIVE, bugs, compare, stages


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    root = tmp_path_factory.mktemp("parity")
    return {arch: tiny_checkpoint(arch, root / arch) for arch in ARCHS}


# The stage kinds each report must hold (a stage map that lost its towers would still "pass").
KINDS = {"llava_next": ["processor: pixel_values", "vision layer 1", "projector", "decoder layer 1", "logits",
                        "greedy step 0"],
         "blip-2": ["vision layer 1", "Q-Former layer 1", "language projection", "decoder layer 1", "greedy step 0"],
         "kosmos-2": ["vision layer 1", "latent queries (image-to-text projection)", "decoder layer 1", "greedy step 0"],
         "idefics": ["vision layer 1", "resampler norm (the latents)", "gated cross-attention before layer 2",
                     "decoder layer 3", "greedy step 0"],
         "altclip": ["vision layer 1", "text layer 1", "text projection", "logits per image", "probabilities"],
         "clip_vision_model": ["vision layer 1", "pooled output"],
         "llama": ["decoder layer 1", "final norm", "greedy step 4"],
         "mistral": ["decoder layer 1", "greedy step 0"],
         "opt": ["position embedding", "decoder layer 1", "greedy step 0"],
         "t5": ["encoder block 1", "decoder block 1", "greedy step 0"]}


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("arch", ARCHS)
def test_every_architecture_passes(folders, arch, dtype, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert cli.main(["parity", str(folders[arch]), "--dtype", dtype, "--quiet", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    report = json.loads(out.read_text())
    assert report["passed"] and report["first_failure"] is None and report["model_type"] == arch
    names = [r["stage"] for r in report["rows"]]
    assert set(KINDS[arch]) <= set(names), sorted(set(KINDS[arch]) - set(names))
    compared = [r for r in report["rows"] if r["passed"] is not None]
    assert all(r["passed"] for r in compared)
    # every stage of the map ran on both sides: none was left uncompared
    assert [r["stage"] for r in report["rows"] if r["passed"] is None] == []
    for r in compared:
        if r["max_rel"] is not None:
            assert 0 <= r["max_rel"] <= r["tolerance"], r
        assert r["stage"] in printed
    assert "all " in printed and "compared stages agree" in printed
    tokens = report["greedy_tokens"]
    assert tokens["minivlm"] == tokens["transformers"] and (len(tokens["minivlm"]) > 0) == (arch in GENERATIVE)


def test_an_arch_name_builds_a_tiny_checkpoint(capsys):
    assert cli.main(["parity", "llama", "--quiet", "--max-new-tokens", "2"]) == 0
    out = capsys.readouterr().out
    assert "minivlm parity: llama (llama, float32" in out and "greedy step 1" in out and "greedy step 2" not in out


# (arch, module, bug, the stage that must be named, dtype). An epsilon off by 10x moves a float32 stage
# by less than its tolerance on some towers, so those run in float64, where any such change shows.
PLANTED = [
    ("llava_next", "language_model.model.layers.1.self_attn", bugs.interleaved_rope, "decoder layer 1", "float32"),
    ("llava_next", "vision_tower.encoder.layers.1.layer_norm1", bugs.norm_eps, "vision layer 1", "float64"),
    ("llava_next", "multi_modal_projector.linear_2", bugs.transposed, "projector", "float32"),
    ("blip-2", "qformer.encoder.layer.1.attention.attention.query", bugs.transposed, "Q-Former layer 1", "float32"),
    ("kosmos-2", "text_model.model.layers.1.self_attn_layer_norm", bugs.norm_eps, "decoder layer 1", "float64"),
    ("idefics", "model.gated_cross_attn_layers.1", bugs.flipped_gate, "gated cross-attention before layer 2", "float32"),
    ("altclip", "text_model.roberta.encoder.layer.1.output.LayerNorm", bugs.norm_eps, "text layer 1", "float64"),
    ("clip_vision_model", "encoder.layers.1.layer_norm2", bugs.norm_eps, "vision layer 1", "float64"),
    ("llama", "model.layers.1.self_attn", bugs.interleaved_rope, "decoder layer 1", "float32"),
    ("mistral", "model.layers.0.self_attn", bugs.interleaved_rope, "decoder layer 0", "float32"),
    ("opt", "model.decoder.layers.1.final_layer_norm", bugs.norm_eps, "decoder layer 1", "float64"),
    ("t5", "encoder.block.1.layer.0.layer_norm", bugs.norm_eps, "encoder block 1", "float64"),
]


@pytest.mark.parametrize("arch, module, bug, stage, dtype", PLANTED, ids=[f"{p[0]}-{p[2].__name__}" for p in PLANTED])
def test_a_planted_bug_is_found_at_its_stage(folders, arch, module, bug, stage, dtype):
    report = parity.check(folders[arch], dtype=dtype, modify_ours=bugs.at(module, bug))
    assert report.first_failure == stage, parity.format_report(report)
    rows = {r.stage: r for r in report.rows}
    # every stage before it still agrees, and the failing stage's module path is the planted one's parent
    before = report.rows[:[r.stage for r in report.rows].index(stage)]
    assert all(r.passed is not False for r in before)
    assert module.startswith(rows[stage].ours + ".") or module == rows[stage].ours


def test_the_command_fails_and_names_the_stage(folders, monkeypatch, tmp_path, capsys):
    load = parity.load_ours
    monkeypatch.setattr(parity, "load_ours", lambda *a: _planted(load(*a)))
    out = tmp_path / "r.json"
    assert cli.main(["parity", str(folders["llama"]), "--quiet", "--json", str(out)]) == 1
    printed = capsys.readouterr().out
    line = next(x for x in printed.splitlines() if x.startswith("decoder layer 1"))
    assert "FAIL  <- first divergence" in line
    assert "the first is 'decoder layer 1': minivlm module 'model.layers.1'" in printed
    data = json.loads(out.read_text())
    assert data["passed"] is False and data["first_failure"] == "decoder layer 1"


def _planted(model):
    bugs.at("model.layers.1.self_attn", bugs.interleaved_rope)(model)
    return model


def test_the_libraries_run_one_after_the_other(folders, monkeypatch):
    """minivlm's model is loaded only after Transformers' model was freed."""
    import weakref

    alive = []
    load_theirs, load_ours = parity.load_theirs, parity.load_ours

    def theirs(*a):
        model = load_theirs(*a)
        alive.append(weakref.ref(model))
        return model

    def ours(*a):
        assert alive and alive[0]() is None, "Transformers' model is still alive when minivlm's loads"
        return load_ours(*a)

    monkeypatch.setattr(parity, "load_theirs", theirs)
    monkeypatch.setattr(parity, "load_ours", ours)
    assert parity.check(folders["opt"]).passed


def test_refuses_what_does_not_fit(folders, monkeypatch, capsys):
    monkeypatch.setattr(parity, "available_bytes", lambda: 1000)
    assert cli.main(["parity", str(folders["llama"]), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1
    assert "needs about" in err and "GiB available" in err and "one after the other" in err


def test_model_bytes_counts_the_weights_in_the_dtype(folders):
    import math

    import torch
    from safetensors import safe_open

    with safe_open(str(folders["llama"] / "model.safetensors"), "pt") as f:
        n = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys())
    assert parity.model_bytes(folders["llama"], torch.float32) == 4 * n
    assert parity.model_bytes(folders["llama"], torch.float64) == 8 * n


@pytest.mark.parametrize("argv, message", [
    (["parity", "llava-hf/llava-v1.6-mistral-7b-hf"], "nothing is downloaded"),
    (["parity", "llama", "--dtype", "float64", "--max-new-tokens", "-1"], "--max-new-tokens must be an int >= 0"),
    (["parity", "llama", "--prompt", "  "], "--prompt: expected some text"),
    (["parity", "llama", "--image", "x.png"], "--image: a llama checkpoint reads no picture"),
    (["parity", "clip_vision_model", "--image", "/nonexistent.png"], "--image: expected an image file"),
])
def test_bad_input_is_one_line(argv, message, capsys):
    assert cli.main(argv + ["--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("minivlm parity: error:") and message in err, err


def test_without_transformers_it_says_how_to_install(monkeypatch, capsys):
    import sys

    monkeypatch.setitem(sys.modules, "transformers", None)       # import transformers raises ImportError
    assert cli.main(["parity", "llama", "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert err == ("minivlm parity: error: minivlm parity needs Transformers, which is not installed: "
                   "pip install 'minivlm[parity]'")


def test_a_folder_that_is_not_a_checkpoint(tmp_path, capsys):
    assert cli.main(["parity", str(tmp_path), "--quiet"]) == 1
    assert "has no config.json" in capsys.readouterr().err


def test_a_truncated_checkpoint_fails_before_loading(folders, tmp_path, monkeypatch, capsys):
    import shutil

    copy = shutil.copytree(folders["opt"], tmp_path / "opt")
    weights = copy / "model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    monkeypatch.setattr(parity, "load_theirs", lambda *a: pytest.fail("Transformers was asked to load it"))
    assert cli.main(["parity", str(copy), "--quiet"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "model.safetensors is truncated" in err, err


def test_compare_rows():
    import torch

    same = compare.compare_tensors("s", "a", "b", torch.ones(2, 3), torch.ones(2, 3), 1e-5)
    assert same.passed and same.max_abs == 0 and same.shape == [2, 3]
    off = compare.compare_tensors("s", "a", "b", torch.tensor([1.0, 2.0]), torch.tensor([1.0, 4.0]), 1e-5)
    assert not off.passed and off.max_abs == 2.0 and off.max_rel == 0.5
    shape = compare.compare_tensors("s", "a", "b", torch.ones(2), torch.ones(3), 1e-5)
    assert shape.passed is False and "shapes differ" in shape.note
    nan = compare.compare_tensors("s", "a", "b", torch.tensor([float("nan")]), torch.ones(1), 1e-5)
    assert nan.passed is False and "minivlm has NaN" in nan.note
    masked = compare.compare_tensors("s", "a", "b", torch.tensor([[1.0, 9.0]]), torch.tensor([[1.0, 0.0]]), 1e-5,
                                     torch.tensor([[True, False]]))
    assert masked.passed                              # the pad position is not compared
    assert compare.compare_tensors("s", "a", "b", None, torch.ones(1), 1e-5).passed is None


def test_every_stage_map_names_modules_that_exist(folders):
    """Each model's stage map names modules of both models (so a renamed module fails here, by name)."""
    import minivlm

    for arch in ARCHS:
        config = json.loads((folders[arch] / "config.json").read_text())
        ours = dict(minivlm.from_pretrained(folders[arch]).named_modules())
        theirs = dict(parity.transformers_class(arch).from_pretrained(str(folders[arch])).named_modules())
        for s in stages.stages(config):
            assert s.ours in ours, (arch, s)
            assert s.theirs in theirs, (arch, s)
            # the image side's rows are not the prompt's positions: no attention mask applies to them
            image_side = s.name.startswith(("vision", "Q-Former", "resampler", "latent", "projector", "visual",
                                            "language projection"))
            assert s.text is not image_side, (arch, s)


def test_tiny_checkpoint_refuses_bad_arguments(tmp_path):
    with pytest.raises(ValueError, match="arch must be one of llava_next, blip-2"):
        tiny_checkpoint("gpt2", tmp_path / "x")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "file").write_text("x")
    with pytest.raises(FileExistsError, match="exists and is not an empty folder"):
        tiny_checkpoint("llama", tmp_path / "full")


def test_tiny_checkpoints_hold_what_a_hub_folder_holds(folders):
    """Every tiny checkpoint has its weights, config and processor files; the generative ones a chat
    template and generation_config.json; nothing of the tokenizer's training is left behind."""
    for arch, folder in folders.items():
        files = {p.name for p in folder.iterdir()}
        assert {"config.json", "model.safetensors"} <= files, (arch, files)
        assert ("preprocessor_config.json" if arch == "clip_vision_model" else "tokenizer.json") in files
        if arch in ("llava_next", "blip-2", "kosmos-2", "idefics"):
            assert {"chat_template.jinja", "generation_config.json", "processor_config.json"} <= files, (arch, files)
        assert ".tokenizer" not in files


def test_minivlm_tiny_writes_a_folder(tmp_path, capsys):
    import minivlm

    assert cli.main(["tiny", "opt", str(tmp_path / "opt"), "--quiet"]) == 0
    assert capsys.readouterr().out.startswith(f"wrote a tiny random opt checkpoint to {tmp_path / 'opt'}: config.json")
    assert type(minivlm.from_pretrained(tmp_path / "opt")).__name__ == "OPTForCausalLM"
    assert cli.main(["tiny", "opt", str(tmp_path / "opt"), "--quiet"]) == 1        # not empty any more
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "exists and is not an empty folder" in err
