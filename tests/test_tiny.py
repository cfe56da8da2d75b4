"""minivlm/tools/tiny.py: each tiny config dict gives one model in both libraries. minivlm reads the dict
itself to the config it reads from Transformers' to_dict of the same dict (what save_pretrained writes), so
the demo, which builds its models from the dicts alone, runs the models the parity tests save."""

import pytest

from helpers import transformers_config
from minivlm.models import model_class
from minivlm.tools import tiny

OPTIONS = {
    "llava_next": [{}, dict(text="llama", feature_layer=1, tie=True), dict(sliding_window=None)],
    "blip2": [{}, dict(text="t5"), dict(text="opt", cross_attention_frequency=1, tie=False)],
    "kosmos2": [{}, dict(tie=False)],
    "idefics": [{}, dict(use_resampler=False, alpha_type="float", tie=True, additional_vocab_size=0)],
    "altclip": [{}],
    "llama": [{}, dict(model_type="mistral", num_key_value_heads=2, sliding_window=8)],
    "opt": [{}, dict(do_layer_norm_before=False, word_embed_proj_dim=32)],
    "t5": [{}, dict(feed_forward_proj="relu", tie=True)],
}
CASES = [pytest.param(name, options, id=f"{name}-{i}") for name, cases in OPTIONS.items()
         for i, options in enumerate(cases)]


def test_every_family_is_covered():
    assert set(OPTIONS) == set(tiny.FAMILIES)


@pytest.mark.parametrize("name, options", CASES)
def test_minivlm_reads_the_dict_as_it_reads_transformers_config(name, options):
    d = tiny.FAMILIES[name](**options)
    hf = transformers_config(d)
    assert hf.model_type == d["model_type"]
    config_class = model_class(d["model_type"]).config_class
    assert config_class.from_dict(d) == config_class.from_dict(hf.to_dict())
