"""Bad input at the models' entry points: token ids outside the vocabulary and keyword arguments minivlm
does not take raise one-line errors naming the argument, what was expected and what arrived.

Every model that reads token ids checks them with one shared helper, once per forward (or generate)
call: generate's decode loop feeds back tokens chosen from the logits, in range by construction, and
pays no check (no device sync) per step. The models are tiny and random, built from minivlm configs.
"""
import inspect
import re
from dataclasses import dataclass, field

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

import _altclip
import _blip2
import _idefics
import _kosmos2
import _llava
from minivlm.generation import GenerationMixin
from minivlm.models.altclip import AltCLIPConfig, AltCLIPModel
from minivlm.models.blip2 import Blip2Config, Blip2ForConditionalGeneration
from minivlm.models.clip import CLIPVisionConfig, CLIPVisionModel
from minivlm.models.idefics import IdeficsConfig, IdeficsForVisionText2Text
from minivlm.models.kosmos2 import Kosmos2Config, Kosmos2ForConditionalGeneration
from minivlm.models.llama import LlamaConfig, LlamaForCausalLM
from minivlm.models.llava_next import LlavaNextConfig, LlavaNextForConditionalGeneration, image_feature_count
from minivlm.models.opt import OPTConfig, OPTForCausalLM
from minivlm.models.t5 import T5Config, T5ForConditionalGeneration

VOCAB = 128


def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.1 * torch.randn(p.shape, generator=g))
    return model.eval()


@dataclass
class Case:
    model: torch.nn.Module
    inputs: dict                    # a valid forward call; input_ids first
    vocab: int                      # rows of the embedding table
    id_args: tuple = ("input_ids",)
    image_inputs: dict = field(default_factory=dict)   # what generate needs besides input_ids


def text(n, seed=0):
    return torch.randint(3, 100, (1, n), generator=torch.Generator().manual_seed(seed))


def llama(model_type="llama"):
    extra = dict(sliding_window=8) if model_type == "mistral" else {}
    config = LlamaConfig(model_type=model_type, vocab_size=VOCAB, hidden_size=32, intermediate_size=64,
                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, **extra)
    return Case(randomize(LlamaForCausalLM(config)), dict(input_ids=text(6)), VOCAB)


def opt():
    config = OPTConfig(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, ffn_dim=64, num_attention_heads=4,
                       max_position_embeddings=64)
    return Case(randomize(OPTForCausalLM(config)), dict(input_ids=text(6)), VOCAB)


def t5():
    config = T5Config(vocab_size=VOCAB, d_model=32, d_kv=8, num_heads=4, d_ff=64, num_layers=2,
                      relative_attention_num_buckets=8, relative_attention_max_distance=16,
                      feed_forward_proj="gated-gelu", tie_word_embeddings=False)
    return Case(randomize(T5ForConditionalGeneration(config)),
                dict(input_ids=text(6), decoder_input_ids=text(3, seed=1)), VOCAB,
                id_args=("input_ids", "decoder_input_ids"))


def llava_next():
    config = LlavaNextConfig.from_dict(_llava.hf_config(text="llama").to_dict())
    sizes = [(16, 32)]
    n = image_feature_count(sizes[0], config)
    ids = torch.cat([torch.tensor([[_llava.BOS] + [_llava.IMAGE_TOKEN] * n]), text(3)], dim=1)
    images = dict(pixel_values=_llava.pixel_values(sizes), image_sizes=torch.tensor(sizes))
    return Case(randomize(LlavaNextForConditionalGeneration(config)), dict(input_ids=ids, **images), VOCAB,
                image_inputs=images)


def blip2(lm):
    config = Blip2Config.from_dict(_blip2.hf_config(text=lm).to_dict())
    prefix = [_blip2.IMAGE_TOKEN] * _blip2.NUM_QUERIES + ([_blip2.OPT_BOS] if lm == "opt" else [])
    ids = torch.cat([torch.tensor([prefix]), text(3)], dim=1)
    images = dict(pixel_values=_blip2.pixel_values(1))
    inputs = dict(input_ids=ids, **images)
    if lm == "t5":
        inputs["decoder_input_ids"] = text(3, seed=1)
    return Case(randomize(Blip2ForConditionalGeneration(config)), inputs, VOCAB, image_inputs=images,
                id_args=("input_ids", "decoder_input_ids") if lm == "t5" else ("input_ids",))


def kosmos2():
    config = Kosmos2Config.from_dict(_kosmos2.hf_config().to_dict())
    ids, _, image_mask = _kosmos2.prompts([3])
    images = dict(pixel_values=_kosmos2.pixel_values(1), image_embeds_position_mask=image_mask)
    return Case(randomize(Kosmos2ForConditionalGeneration(config)), dict(input_ids=ids, **images), VOCAB,
                image_inputs=images)


def idefics():
    config = IdeficsConfig.from_dict(_idefics.hf_config().to_dict())
    ids, mask, image_mask = _idefics.prompts([[2, "img", 3]])      # <image> is id 129, in the additional table
    images = dict(pixel_values=_idefics.pixel_values(1, 1), image_attention_mask=image_mask)
    return Case(randomize(IdeficsForVisionText2Text(config)), dict(input_ids=ids, attention_mask=mask, **images),
                _idefics.VOCAB + _idefics.EXTRA, image_inputs=images)


def altclip():
    config = AltCLIPConfig.from_dict(_altclip.hf_config().to_dict())
    ids, mask = _altclip.texts([4])
    return Case(randomize(AltCLIPModel(config)), dict(input_ids=ids, pixel_values=_altclip.pixel_values(1),
                                                      attention_mask=mask), VOCAB)


BUILDERS = {"llama": llama, "mistral": lambda: llama("mistral"), "opt": opt, "t5": t5, "llava_next": llava_next,
            "blip2_opt": lambda: blip2("opt"), "blip2_t5": lambda: blip2("t5"), "kosmos2": kosmos2,
            "idefics": idefics, "altclip": altclip}
_built = {}


def case(name) -> Case:
    if name not in _built:
        torch.manual_seed(0)
        _built[name] = BUILDERS[name]()
    return _built[name]


GENERATIVE = [n for n in BUILDERS if n != "altclip"]
ID_ARGS = [(n, arg) for n in BUILDERS for arg in ("input_ids", "decoder_input_ids")
           if n in ("t5", "blip2_t5") or arg == "input_ids"]


# -- token ids outside the vocabulary --------------------------------------------------------------------

@pytest.mark.parametrize("bad", ["vocab_size", "negative"])
@pytest.mark.parametrize("name,arg", ID_ARGS, ids=[f"{n}-{a}" for n, a in ID_ARGS])
def test_forward_rejects_token_ids_outside_the_vocabulary(name, arg, bad):
    c = case(name)
    ids = c.inputs[arg].clone()
    ids[0, -1] = c.vocab if bad == "vocab_size" else -1        # the last (text) token
    with torch.no_grad(), pytest.raises(ValueError) as info:
        c.model(**{**c.inputs, arg: ids})
    low, high = int(ids.min()), int(ids.max())
    assert (low == -1) if bad == "negative" else (high == c.vocab)
    assert re.fullmatch(rf"{arg}: ids must lie in \[0, [a-z_ +]*vocab_size={c.vocab}\), got ids from {low} to {high}",
                        str(info.value)), str(info.value)


@pytest.mark.parametrize("name", GENERATIVE)
def test_generate_rejects_a_prompt_outside_the_vocabulary(name):
    c = case(name)
    ids = c.inputs["input_ids"].clone()
    ids[0, -1] = c.vocab
    with pytest.raises(ValueError, match=rf"^input_ids: ids must lie in \[0, [a-z_ +]*vocab_size={c.vocab}\)"):
        c.model.generate(ids, **c.image_inputs, max_new_tokens=2)


@pytest.mark.parametrize("name", ["llava_next", "blip2_opt", "blip2_t5", "kosmos2", "idefics"])
def test_image_placeholder_ids_are_accepted(name):
    """The placeholders a model swaps for image features (the vocabulary's last id in the tiny LLaVA-NeXT and
    BLIP-2, IDEFICS's <image> in its additional table) pass the check, in forward and in generate."""
    c = case(name)
    with torch.no_grad():
        assert torch.isfinite(c.model(**c.inputs).logits).all()
    assert c.model.generate(c.inputs["input_ids"], **c.image_inputs, max_new_tokens=2).shape[1] >= 2


class IntegerMinMax(TorchDispatchMode):
    """Counts min / max / aminmax reductions of integer tensors: what an id-range check runs."""

    def __init__(self):
        super().__init__()
        self.count = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func.overloadpacket in (torch.ops.aten.min, torch.ops.aten.max, torch.ops.aten.aminmax) and \
                not args[0].is_floating_point():
            self.count += 1
        return func(*args, **(kwargs or {}))


@pytest.mark.parametrize("name", GENERATIVE)
def test_generate_checks_ids_once_not_per_step(name):
    c = case(name)
    counts = []
    for new_tokens in (2, 6):
        with IntegerMinMax() as counter:
            c.model.generate(c.inputs["input_ids"], **c.image_inputs, max_new_tokens=new_tokens, eos_token_id=[])
        counts.append(counter.count)
    assert counts[0] >= 1 and counts[0] == counts[1], f"id checks for 2 and 6 new tokens: {counts}"


def test_generate_rejects_a_pad_id_outside_the_vocabulary():
    """Finished rows are fed the pad id: it must be a token id the model can embed."""
    model = case("llama").model
    ids = torch.cat([text(6), text(6, seed=3)])
    free = model.generate(ids, max_new_tokens=3, eos_token_id=[])
    eos = int(free[0, 6])                              # row 0 finishes at once, row 1 runs on
    assert eos not in free[1, 6:].tolist(), "pick another seed"
    with pytest.raises(ValueError, match=rf"^generate: pad_token_id must be a token id below the vocabulary "
                                         rf"size {VOCAB} \(the logits' width\), got {VOCAB}$"):
        model.generate(ids, max_new_tokens=3, eos_token_id=eos, pad_token_id=VOCAB)


# -- keyword arguments minivlm does not take ---------------------------------------------------------------

FORWARD_CASES = [(n, "forward", "output_attentions") for n in BUILDERS] + [
    ("llava_next", "forward", "interpolate_pos_encoding"), ("t5", "encode", "output_hidden_states"),
    ("t5", "decode", "use_cache"), ("blip2_t5", "encode", "interpolate_pos_encoding")]


@pytest.mark.parametrize("name,method,unknown", FORWARD_CASES, ids=[f"{n}-{m}-{u}" for n, m, u in FORWARD_CASES])
def test_forward_names_an_unknown_keyword_and_what_it_takes(name, method, unknown):
    c = case(name)
    fn = getattr(c.model, method)
    args = dict(c.inputs)
    if method != "forward":     # T5 (and BLIP-2's T5) encode / decode
        args = dict(input_ids=args["input_ids"], pixel_values=args.get("pixel_values")) if method == "encode" \
            else dict(decoder_input_ids=args["decoder_input_ids"], encoder_hidden_states=torch.zeros(1, 6, 32))
        args = {k: v for k, v in args.items() if v is not None}
    takes = ", ".join(inspect.signature(fn).parameters)
    cls = type(c.model).__name__
    with torch.no_grad(), pytest.raises(TypeError) as info:
        fn(**args, **{unknown: True})
    assert str(info.value) == f"{cls}.{method}() got an unexpected keyword argument {unknown!r}; it takes {takes}"


def test_forward_lists_every_unknown_keyword():
    model = randomize(CLIPVisionModel(CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                                       num_attention_heads=4, image_size=16, patch_size=4)))
    with torch.no_grad(), pytest.raises(TypeError, match=r"^CLIPVisionModel\.forward\(\) got unexpected keyword "
                                                         r"arguments 'interpolate_pos_encoding', 'return_dict'; "
                                                         r"it takes pixel_values, output_hidden_states, num_layers$"):
        model(torch.zeros(1, 3, 16, 16), interpolate_pos_encoding=True, return_dict=False)


@pytest.mark.parametrize("name", GENERATIVE)
def test_generate_names_unknown_keywords_and_what_it_takes(name):
    c = case(name)
    cls = type(c.model).__name__
    with pytest.raises(TypeError) as info:
        c.model.generate(c.inputs["input_ids"], **c.image_inputs, max_new_tokens=2, assistant_model=None,
                         prefix_allowed_tokens_fn=lambda *a: [])
    message = str(info.value)
    assert message.startswith(f"{cls}.generate() got unexpected keyword arguments 'assistant_model', "
                              f"'prefix_allowed_tokens_fn'; it takes input_ids, "), message
    takes = message.split("; it takes ")[1].split(", ")
    options = [p for p in inspect.signature(GenerationMixin.generate).parameters if p not in ("self", "model_inputs")]
    assert set(options) <= set(takes) and set(c.image_inputs) <= set(takes), message
    assert not {"cache", "position_ids", "logits_to_keep", "labels"} & set(takes), message
    with pytest.raises(TypeError, match=rf"^{cls}\.generate\(\) got an unexpected keyword argument "
                                        r"'output_router_logits'; it takes input_ids, "):
        c.model.generate(c.inputs["input_ids"], **c.image_inputs, max_new_tokens=2, output_router_logits=True)
    # A Transformers generation setting minivlm does not implement: a ValueError that names it.
    with pytest.raises(ValueError, match=r"output_attentions=True is a Transformers generation setting"):
        c.model.generate(c.inputs["input_ids"], **c.image_inputs, max_new_tokens=2, output_attentions=True)


def test_generate_lists_the_options_of_the_generate_called():
    """The list comes from the signatures: an option a generate gains shows up without further edits."""
    class WithOption(LlamaForCausalLM):
        def generate(self, input_ids, *, new_option=None, **kwargs):
            return super().generate(input_ids, **kwargs)

    model = WithOption(case("llama").model.config)
    with pytest.raises(TypeError, match=r"^WithOption\.generate\(\) got an unexpected keyword argument 'assistant_model'; "
                                        r"it takes input_ids, new_option, attention_mask, generation_config, "
                                        r"max_new_tokens, "):
        model.generate(text(4), assistant_model=4)
