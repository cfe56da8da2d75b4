"""Float64 parity: every model's outputs against Transformers', both loaded in float64 from the same
tiny random-weight folder, compared at the real (non-pad) positions.

Each case builds a Transformers model with random weights (float32), saves it with save_pretrained, and
loads that folder twice: into Transformers with `from_pretrained(folder, dtype=torch.float64)` and into
minivlm with `minivlm.from_pretrained(folder, dtype=torch.float64)`. Every minivlm parameter must then be
float64 (a float64 model has no float32 islands) and the outputs must agree to F64_REL of their scale.
The float32 parity tests in each model's file cannot see a step that runs in float32 by mistake (it
rounds no worse than the rest); this file can: such a step alone leaves a difference of ~1e-7.
"""
import contextlib
import functools

import pytest
import torch

import minivlm
import _altclip
import _blip2
import _idefics
import _kosmos2
import _llama
import _llava
import _opt
import _t5
from helpers import assert_close_rel, left_padded_mask
from minivlm.tools.parity import default_dtype

# float64 tolerance, relative to the largest value compared. Both sides run the same float64 math in
# different orders (minivlm's attention kernel against SDPA, other GEMM blockings). A dot product of n
# terms evaluated in any order lies within n * u * sum|x_i y_i| of the exact value, u = 2^-53 ~ 1.1e-16,
# so with n <= 256 and a few layers of width <= 128 the outputs may differ by ~1e-15..1e-14 of their
# scale. Measured: 0 (bit-identical) for the LLaVA-NeXT, Llama, Mistral and OPT logits, <= 2.3e-15 for
# every other output (BLIP-2 with T5's logits the largest). 1e-12 leaves a >= 400x margin over that, yet
# is 6e4 times below float32's unit roundoff (6e-8): one step computed in float32 anywhere (a float32
# island, a float32 constant) moves the outputs by ~1e-7 of their scale and fails.
F64_REL = 1e-12

CASES = {}


def case(name):
    def register(build):
        CASES[name] = build
        return build
    return register


# Each case returns the Transformers model (float32), the inputs both models take (the same keyword
# names), the (B, T) mask of the real positions of the logits (None: all real) and the outputs to compare:
# a name both outputs share, or (minivlm's name, Transformers' dotted path).
LLAVA_SIZES = [(20, 40), (40, 18)]


@case("llava_next-mistral")
def _llava_mistral():
    return _llava_case("mistral", sliding_window=16)


@case("llava_next-llama")
def _llava_llama():
    return _llava_case("llama")


def _llava_case(text, **kwargs):
    hf = _llava.hf_model(_llava.hf_config(text=text, **kwargs))
    ids, mask = _llava.prompts(LLAVA_SIZES, [70, 9], hf.config)           # row 1 left-padded; >= 64 tokens
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=_llava.pixel_values(LLAVA_SIZES),
                  image_sizes=torch.tensor(LLAVA_SIZES))
    return hf, inputs, mask, ("logits", "image_hidden_states")


@case("llama")
def _llama_case():
    return _decoder_case(_llama.hf_model("llama"), _llama.VOCAB)


@case("mistral-window8")
def _mistral():
    return _decoder_case(_llama.hf_model("mistral", num_key_value_heads=2, sliding_window=8), _llama.VOCAB)


@case("opt")
def _opt_case():
    return _decoder_case(_opt.hf_model(), _opt.VOCAB, pad=_opt.PAD)


def _decoder_case(hf, vocab, pad=0):
    ids = torch.randint(3, vocab, (3, 70))
    mask = left_padded_mask([70, 64, 41], 70)
    return hf, dict(input_ids=ids.masked_fill(mask == 0, pad), attention_mask=mask), mask, ("logits",)


@case("t5")
def _t5_case():
    ids, mask = _t5.right_padded([40, 29, 35], 40)
    dec = torch.randint(2, _t5.VOCAB, (3, 38), generator=torch.Generator().manual_seed(5))
    dec[:, 0] = 0                                                          # the decoder start token
    return _t5.hf_model(), dict(input_ids=ids, attention_mask=mask, decoder_input_ids=dec), None, ("logits",)


@case("blip2-opt")
def _blip2_opt():
    hf = _blip2.hf_model(_blip2.hf_config("opt"))
    ids, mask = _blip2.opt_prompts([9, 2, 5])
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=_blip2.pixel_values(3))
    return hf, inputs, mask, ("logits", ("qformer_output", "qformer_outputs.last_hidden_state"))


@case("blip2-t5")
def _blip2_t5():
    hf = _blip2.hf_model(_blip2.hf_config("t5"))
    ids, mask = _blip2.t5_prompts([9, 2, 5])
    dec = torch.randint(4, _blip2.IMAGE_TOKEN, (3, 6), generator=torch.Generator().manual_seed(0))
    dec[:, 0] = _blip2.T5_PAD                                              # the decoder start token
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=_blip2.pixel_values(3), decoder_input_ids=dec)
    return hf, inputs, None, ("logits", ("qformer_output", "qformer_outputs.last_hidden_state"))


@case("kosmos2")
def _kosmos2_case():
    hf = _kosmos2.hf_model(_kosmos2.hf_config())
    ids, mask, image_mask = _kosmos2.prompts([5, 9, 2], seed=1)           # left-padded
    inputs = dict(input_ids=ids, attention_mask=mask, image_embeds_position_mask=image_mask,
                  pixel_values=_kosmos2.pixel_values(3, seed=1))
    return hf, inputs, mask, ("logits", ("image_hidden_states", "image_embeds"))


@case("idefics")
def _idefics_case():
    hf = _idefics.hf_model(_idefics.hf_config())
    ids, mask, image_mask = _idefics.prompts([[3, "img", 5, "img", 2], [2, "img", 4]])   # row 1 left-padded
    inputs = dict(input_ids=ids, attention_mask=mask, image_attention_mask=image_mask,
                  pixel_values=_idefics.pixel_values(2, 2))
    return hf, inputs, mask, ("logits", "image_hidden_states")


@case("altclip")
def _altclip_case():
    hf = _altclip.hf_model(_altclip.hf_config())
    ids, mask = _altclip.texts([9, 3, 20])                                 # right-padded, as XLM-R pads
    inputs = dict(input_ids=ids, attention_mask=mask, pixel_values=_altclip.pixel_values(2))
    return hf, inputs, None, ("logits_per_image", "logits_per_text")


# Output names whose rows are the (B, T) positions of the mask; the others are compared whole.
PER_POSITION = {"logits"}

# Transformers' Kosmos-2 builds its causal mask with torch.full(..., finfo(float64).min) in the
# default dtype, which overflows float32: its forward runs in float64 only with float64 as the default
# dtype. That changes nothing else there (its weights and inputs are float64 already).
DEFAULT_FLOAT64 = {"kosmos2"}




@pytest.mark.parametrize("name", list(CASES))
def test_outputs_match_transformers_float64(name, tmp_path):
    hf, inputs, mask, outputs = CASES[name]()
    hf.save_pretrained(tmp_path)
    theirs = type(hf).from_pretrained(tmp_path, dtype=torch.float64).eval()
    ours = minivlm.from_pretrained(tmp_path, dtype=torch.float64)
    islands = [n for n, p in [*ours.named_parameters(), *ours.named_buffers()]
               if p.is_floating_point() and p.dtype != torch.float64]
    assert not islands, f"{name}: not float64 in a float64 model: {islands[:5]}"
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    with torch.no_grad():
        with default_dtype(torch.float64) if name in DEFAULT_FLOAT64 else contextlib.nullcontext():
            ref = theirs(**inputs)
        out = ours(**inputs)
    for output in outputs:
        ours_name, their_path = (output, output) if isinstance(output, str) else output
        a, b = getattr(out, ours_name), functools.reduce(getattr, their_path.split("."), ref)
        assert a.dtype == b.dtype == torch.float64, (ours_name, a.dtype, b.dtype)
        assert_close_rel(a, b, f"{name} {ours_name}", F64_REL, mask if ours_name in PER_POSITION else None)
