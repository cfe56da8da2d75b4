"""Tied weights follow what the checkpoint holds (minivlm/loading.py), as in Transformers.

A model lists the weights its config ties (`tied_weights()`: target -> source, e.g. lm_head.weight -> the
token embedding). For each pair the file may:
- leave the target out: it shares the source's parameter (what save_pretrained writes for a tied model);
- store it equal to the source: one shared parameter as well;
- store it with other values: a separate parameter with those values, and a warning naming both keys;
- store the target but not the source: the source shares the target's parameter.

Every model with tied weights is checked, pair by pair and layout by layout, against Transformers' load of
the same folder: the same value in every parameter, the same sharing, and the same logits.

Tolerance (float32 logits): 1e-5 of the largest logit, the bound of the parity tests (test_t5.py,
test_opt.py, ...), which measure <= 8e-7 for these tiny models. Both sides then hold bit-identical weights
(checked first), so only the summation order of the same float32 math differs; a tie decided wrongly puts
an embedding where the head belongs and moves the logits by their own scale.
"""
import shutil
import warnings

import pytest
import torch
from safetensors.torch import load_file, save_file

import minivlm
from minivlm.loading import CheckpointError, rename_key
import _blip2
import _idefics
import _kosmos2
import _llama
import _llava
import _opt
import _t5
from helpers import assert_close_rel

RTOL32 = 1e-5     # times the largest logit; see the module docstring
LLAVA_SIZES = [(20, 40), (40, 18)]


def _t5_tied():
    return _t5.hf_model("relu", tie=True)                   # T5 v1.0: every embedding tied to `shared`


def _t5_inputs(hf):
    ids, mask = _t5.right_padded([20, 13], 20)
    dec = torch.randint(2, 128, (2, 9), generator=torch.Generator().manual_seed(5))
    return dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec), None


def _causal_inputs(vocab):
    def inputs(hf):
        return dict(input_ids=torch.randint(3, vocab, (2, 11), generator=torch.Generator().manual_seed(2))), None
    return inputs


def _llama_tied(model_type):
    def build():
        return _llama.hf_model(model_type, tie_word_embeddings=True, num_key_value_heads=2)   # Mistral: GQA
    return build


def _llava_inputs(hf):
    ids, mask = _llava.prompts(LLAVA_SIZES, [5, 2], hf.config)
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_llava.pixel_values(LLAVA_SIZES),
                image_sizes=torch.tensor(LLAVA_SIZES)), mask


def _kosmos2_inputs(hf):
    ids, mask, image_mask = _kosmos2.prompts([4, 7])
    return dict(input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                pixel_values=_kosmos2.pixel_values(2)), mask


def _idefics_inputs(hf):
    ids, mask, image_mask = _idefics.prompts([[3, "img", 4], [2, "img", 1]])
    return dict(input_ids=ids, attention_mask=mask, image_attention_mask=image_mask,
                pixel_values=_idefics.pixel_values(2, 1)), mask


def _blip2_opt_inputs(hf):
    ids, mask = _blip2.opt_prompts([5, 3])
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_blip2.pixel_values(2)), mask


def _blip2_t5():
    hf = _blip2.hf_model(_blip2.hf_config("t5"))             # Flan-T5 style: its own lm_head ...
    hf.language_model.lm_head.weight = hf.language_model.shared.weight   # ... tied back, as the config claims
    return hf


def _blip2_t5_inputs(hf):
    ids, mask = _blip2.t5_prompts([5, 3])
    dec = torch.randint(4, _blip2.IMAGE_TOKEN, (2, 6), generator=torch.Generator().manual_seed(1))
    return dict(input_ids=ids, attention_mask=mask, pixel_values=_blip2.pixel_values(2), decoder_input_ids=dec), None


T5_PAIRS = [("encoder.embed_tokens.weight", "shared.weight"), ("decoder.embed_tokens.weight", "shared.weight"),
            ("lm_head.weight", "shared.weight")]

# name -> (build a tied Transformers model, its inputs -> (keyword arguments both models take, the mask of
# real positions or None), the pairs (target, source) it ties)
MODELS = {
    "t5": (_t5_tied, _t5_inputs, T5_PAIRS),
    "opt": (_opt.hf_model, _causal_inputs(_opt.VOCAB), [("lm_head.weight", "model.decoder.embed_tokens.weight")]),
    "llama": (_llama_tied("llama"), _causal_inputs(_llama.VOCAB), [("lm_head.weight", "model.embed_tokens.weight")]),
    "mistral": (_llama_tied("mistral"), _causal_inputs(_llama.VOCAB),
                [("lm_head.weight", "model.embed_tokens.weight")]),
    "llava_next": (lambda: _llava.hf_model(_llava.hf_config(text="llama", feature_layer=1, tie=True)), _llava_inputs,
                   [("language_model.lm_head.weight", "language_model.model.embed_tokens.weight")]),
    "kosmos2": (lambda: _kosmos2.hf_model(_kosmos2.hf_config()), _kosmos2_inputs,
                [("text_model.lm_head.weight", "text_model.model.embed_tokens.weight")]),
    "idefics": (lambda: _idefics.hf_model(_idefics.hf_config(tie=True)), _idefics_inputs,
                [("lm_head.weight", "model.embed_tokens.weight"),
                 ("lm_head.additional_fc.weight", "model.embed_tokens.additional_embedding.weight")]),
    "blip2_opt": (lambda: _blip2.hf_model(_blip2.hf_config("opt")), _blip2_opt_inputs,
                  [("language_model.lm_head.weight", "language_model.model.decoder.embed_tokens.weight")]),
    "blip2_t5": (_blip2_t5, _blip2_t5_inputs, [(f"language_model.{t}", f"language_model.{s}") for t, s in T5_PAIRS]),
}
LAYOUTS = ["absent", "equal", "different", "source_absent"]
CASES = [pytest.param(name, i, layout, id=f"{name}-{pair[0]}-{layout}")
         for name, (_, _, pairs) in MODELS.items() for i, pair in enumerate(pairs) for layout in LAYOUTS
         if layout != "absent" or i == 0]       # "absent" is the folder as saved: one case per model


def build_checkpoint(name):
    """The tied Transformers model of MODELS[name] that the checkpoints fixture (conftest.py) saves."""
    return MODELS[name][0]()


def _rewrite(folder, out, edit):
    """A copy of the checkpoint folder whose tensors are `edit(tensors)`."""
    shutil.copytree(folder, out)
    tensors = load_file(str(out / "model.safetensors"))
    save_file(edit(tensors), str(out / "model.safetensors"), metadata={"format": "pt"})
    return out


def _load_both(hf_class, folder):
    """minivlm's and Transformers' loads of one folder (float32, eval), and minivlm's warnings."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = minivlm.from_pretrained(folder)
    theirs = hf_class.from_pretrained(folder).eval()
    return ours, theirs, [str(w.message) for w in caught if "tied" in str(w.message)]


def assert_like_transformers(ours, theirs, inputs, what):
    """Every minivlm parameter holds Transformers' values, every claimed tie is shared (or not) as there,
    and the logits agree."""
    hf_params = {rename_key(n, ours.checkpoint_renames): p for n, p in theirs.named_parameters(remove_duplicate=False)}
    for name, p in ours.named_parameters(remove_duplicate=False):
        assert torch.equal(p, hf_params[name]), f"{what}: {name} differs from Transformers'"
    for target, source in ours.tied_weights().items():
        shared = ours.get_parameter(target) is ours.get_parameter(source)
        assert shared == (hf_params[target] is hf_params[source]), f"{what}: {target} shared={shared}, not as Transformers"
    kwargs, mask = inputs(theirs)
    with torch.no_grad():
        got, expected = ours(**kwargs).logits, theirs(**kwargs).logits
    assert_close_rel(got, expected, f"{what} logits", RTOL32, mask)


@pytest.mark.parametrize("name, pair, layout", CASES)
def test_tie_follows_the_file(checkpoints, name, pair, layout, tmp_path):
    _, inputs, pairs = MODELS[name]
    target, source = pairs[pair]
    hf, folder = checkpoints(name)
    stored = set(load_file(str(folder / "model.safetensors")))
    assert source in stored and not {t for t, _ in pairs} & stored     # save_pretrained drops every tied copy
    g = torch.Generator().manual_seed(11)

    def edit(tensors):
        if layout == "equal":
            tensors[target] = tensors[source].clone()
        elif layout == "different":
            tensors[target] = tensors[source].std() * torch.randn(tensors[source].shape, generator=g)
        elif layout == "source_absent":
            tensors[target] = tensors.pop(source)
        return tensors

    ours, theirs, tie_warnings = _load_both(type(hf), _rewrite(folder, tmp_path / "ckpt", edit))
    assert ours.tied_weights() == dict(pairs)
    separate = layout == "different"
    for t, s in pairs:          # the pair edited; every other one is absent from the file, hence tied
        assert (ours.get_parameter(t) is not ours.get_parameter(s)) == (separate and t == target), t
    if separate:
        assert len(tie_warnings) == 1 and target in tie_warnings[0] and source in tie_warnings[0], tie_warnings
        assert not torch.equal(ours.get_parameter(target), ours.get_parameter(source))
    else:
        assert tie_warnings == []
    assert_like_transformers(ours, theirs, inputs, f"{name} {target} {layout}")


def test_t5_four_tables(tmp_path):
    """A T5 whose config's tie_word_embeddings was set to False after it was built (so nothing is tied)
    is saved with four different tables: each is loaded into its own parameter, with three warnings."""
    hf = _t5_tied()
    hf.config.tie_word_embeddings = False
    g = torch.Generator().manual_seed(7)
    for stack in (hf.encoder, hf.decoder):
        stack.embed_tokens = torch.nn.Embedding(128, 64)
        stack.embed_tokens.weight.data = 0.5 * torch.randn(128, 64, generator=g)
    hf.lm_head.weight = torch.nn.Parameter(0.5 * torch.randn(128, 64, generator=g))
    hf.save_pretrained(tmp_path)
    assert {"shared.weight", "lm_head.weight", "encoder.embed_tokens.weight", "decoder.embed_tokens.weight"} <= \
        set(load_file(str(tmp_path / "model.safetensors")))
    ours, theirs, tie_warnings = _load_both(type(hf), tmp_path)
    assert len({id(ours.get_parameter(n)) for n in ["shared.weight"] + [t for t, _ in T5_PAIRS]}) == 4
    assert sorted(w.split("'")[1] for w in tie_warnings) == sorted(t for t, _ in T5_PAIRS), tie_warnings
    assert ours.config.tie_word_embeddings and theirs.config.tie_word_embeddings     # the claim; the file decides
    assert_like_transformers(ours, theirs, _t5_inputs, "four-table T5")


def test_source_absent_and_copies_that_differ_raise(checkpoints, tmp_path):
    """T5 without `shared` but with two different tied copies: which one `shared` (and the absent decoder
    embedding) should be is undecidable, so loading refuses the file and names the keys."""
    hf, folder = checkpoints("t5")

    def edit(tensors):
        table = tensors.pop("shared.weight")
        return {**tensors, "encoder.embed_tokens.weight": table, "lm_head.weight": table + 1}

    with pytest.raises(CheckpointError, match=r"shared\.weight.*encoder\.embed_tokens\.weight.*lm_head\.weight"):
        minivlm.from_pretrained(_rewrite(folder, tmp_path / "ckpt", edit))


def test_in_memory_state_dict_follows_the_same_rule():
    """load_weights on a state dict: a stored tied copy is read and compared too, never skipped."""
    from minivlm.loading import load_weights
    from minivlm.models.opt import OPTConfig, OPTForCausalLM

    model = OPTForCausalLM(OPTConfig(vocab_size=16, hidden_size=8, word_embed_proj_dim=8, num_hidden_layers=1,
                                     ffn_dim=16, num_attention_heads=2, max_position_embeddings=8))
    state = {k: torch.randn(v.shape) for k, v in model.state_dict().items()}
    state["lm_head.weight"] = torch.randn(16, 8)
    with pytest.warns(UserWarning, match=r"'lm_head\.weight'.*'model\.decoder\.embed_tokens\.weight'"):
        load_weights(model, state)
    assert torch.equal(model.lm_head.weight, state["lm_head.weight"])
    assert torch.equal(model.model.decoder.embed_tokens.weight, state["model.decoder.embed_tokens.weight"])
    state["lm_head.weight"] = state["model.decoder.embed_tokens.weight"].clone()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        load_weights(model, state)
    assert model.lm_head.weight is model.model.decoder.embed_tokens.weight
    # Nothing of a tied pair in the state dict: the source is reported missing.
    del state["lm_head.weight"], state["model.decoder.embed_tokens.weight"]
    with pytest.raises(CheckpointError, match=r"missing from the checkpoint \(1\):\n    model\.decoder\.embed_tokens"):
        load_weights(model, state)
