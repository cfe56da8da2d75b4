"""`minivlm bench model NAME`: a whole minivlm model against Transformers on the same weights and inputs.

The benchmark builds a Transformers model of realistic proportions scaled down (random weights), saves
it to a temporary folder, and loads that folder into both libraries, so both run the same numbers:

    prefill   one forward over the prompt with the image(s), filling a fresh KV cache, logits of the
              last position only (what generation does first). minivlm: model(..., cache=..,
              logits_to_keep=1); Transformers: model(..., use_cache=True, logits_to_keep=1).
    decode    the time per generated token of greedy generation: the time between the model's forward
              calls inside one generate call, over N steps after the first (see StepClock).
    beam      the same for beam search with BEAMS beams (a step then runs BEAMS rows per prompt and
              moves the cache rows to the beams they continue), against Transformers' beam search and
              against minivlm's own greedy step.
    memory    the peak resident memory of loading the checkpoint and generating, each library in a
              fresh process (a process's peak only grows; see minivlm.tools.bench.memory).

Timings alternate between the two libraries within every repetition (see minivlm.tools.bench.kernels),
and the ratios are taken per repetition. Everything runs in float32 on the CPU.

Beside each time, its rate against this machine's ceilings (minivlm.tools.bench.ceiling, measured at the
start of the run): the prefill (or forward) in GFLOP/s against the float32 matmul ceiling, decode in GB/s
per token against the copy ceiling. The work is counted once, op by op, on an untimed call of minivlm's
model (ceiling.WorkCounter); that count, the work these numbers take, rates both libraries (one that does
more, such as recomputing what minivlm caches, shows as a lower rate).

    prefill FLOPs   every matrix product and convolution (2 * output elements * inner length: for a plain
                    decoder that is the usual 2 * parameters * tokens, here with the vision tower over its
                    patches and the head over the one position kept) plus attention's two products
    decode bytes    per step, every weight the step reads (once; an embedding by the row looked up) plus
                    the keys and values attention reads from the cache, the mean over the timed steps
"""
from __future__ import annotations

import json
import os
import statistics
import sys
import tempfile
import time
from typing import Optional

import torch

from .. import tiny
from .ceiling import Work, WorkCounter, ceiling_lines, fmt_fraction, fraction, mean_segment, measure_ceilings
from .kernels import Timing, environment, fmt_timing, print_table, time_side_by_side
from .memory import child_main, current_rss_kib, peak_rss_kib, run_probe

# Targets: prefill (or a contrastive model's forward) at most 1.05x Transformers' time,
# decode per token at most 0.9x.
PREFILL_TARGET = 1.05
DECODE_TARGET = 0.9
# Beam search with BEAMS beams: per token at most Transformers' beam search, and at most 4.5x greedy.
BEAMS = 4
BEAM_TARGET = 1.0
BEAM_OVER_GREEDY_TARGET = 4.5


# --------------------------------------------------------------------------------------------------
# What is benchmarked: one spec per model
# --------------------------------------------------------------------------------------------------
# A spec builds a Transformers checkpoint of given proportions (a dict: the model's sizes plus the common
# keys new_tokens, reps, warmup), the inputs a processor would give for it, and names the module each
# library calls once per generated token (for StepClock). The harness below does the rest. FULL is a
# setup of realistic proportions scaled down; QUICK (--quick) the model family's config of
# minivlm.tools.tiny, the one the parity tests and the demo run.

# Where a tiny config holds the vision tower's sizes that describe and make_inputs read.
VISION_SIZES = dict(vision_hidden="vision_config.hidden_size", vision_layers="vision_config.num_hidden_layers",
                    vision_heads="vision_config.num_attention_heads", image_size="vision_config.image_size",
                    patch_size="vision_config.patch_size")


def tiny_setup(config: dict, sizes: dict, **run) -> dict:
    """A --quick setup: `config` (a config.json dict of minivlm.tools.tiny, which transformers_config builds
    as it is), the sizes describe and make_inputs read, each found at its dotted path in config (`sizes`:
    name -> "vision_config.hidden_size"), and the run's own keys (text_tokens, new_tokens, reps, ...)."""
    def at(path):
        value = config
        for key in path.split("."):
            value = value[key]
        return value
    return dict(run, config=config, **{name: at(path) for name, path in sizes.items()})


def transformers_config(spec, s: dict):
    """The Transformers config of setup s: its tiny config as it is (--quick), else spec.hf_config(s)."""
    if "config" in s:
        from transformers import AutoConfig
        return AutoConfig.for_model(**s["config"])
    return spec.hf_config(s)


class LlavaNextBench:
    """LLaVA-NeXT with Mistral's layout (GQA, no sliding window at this length): a 1:2 image, two crops
    side by side plus the base image."""
    name = "llava_next"
    FULL = dict(vision_hidden=512, vision_layers=6, vision_heads=8, image_size=336, patch_size=14,
                text_hidden=1024, text_layers=8, text_heads=16, text_kv_heads=4, intermediate=2816, vocab=32064,
                image_hw=(300, 600), text_tokens=32, new_tokens=16, reps=5, warmup=1)
    QUICK = tiny_setup(tiny.llava_next(sliding_window=None),
                       dict(VISION_SIZES, text_hidden="text_config.hidden_size",
                            text_layers="text_config.num_hidden_layers", text_heads="text_config.num_attention_heads",
                            text_kv_heads="text_config.num_key_value_heads"),
                       image_hw=(16, 32), text_tokens=16, new_tokens=4, reps=3, warmup=1)
    IMAGE_TOKEN = 32000

    def hf_class(self):
        from transformers import LlavaNextForConditionalGeneration
        return LlavaNextForConditionalGeneration

    def hf_config(self, s: dict):
        from transformers import CLIPVisionConfig, LlavaNextConfig, MistralConfig

        vision = CLIPVisionConfig(hidden_size=s["vision_hidden"], intermediate_size=4 * s["vision_hidden"],
                                  num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                                  image_size=s["image_size"], patch_size=s["patch_size"])
        text = MistralConfig(hidden_size=s["text_hidden"], intermediate_size=s["intermediate"],
                             num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"],
                             num_key_value_heads=s["text_kv_heads"], vocab_size=s["vocab"], sliding_window=None,
                             max_position_embeddings=8192, bos_token_id=1, eos_token_id=2, pad_token_id=0)
        c = s["image_size"]
        return LlavaNextConfig(vision_config=vision.to_dict(), text_config=text.to_dict(),
                               image_grid_pinpoints=[[c, 2 * c], [2 * c, c], [2 * c, 2 * c]],
                               image_token_index=min(self.IMAGE_TOKEN, s["vocab"] - 1))

    def make_inputs(self, s: dict, folder: str) -> dict:
        """One image and a prompt with its image tokens, as a processor would give them."""
        from minivlm.models.llava_next import LlavaNextConfig, image_feature_count, num_crops

        with open(os.path.join(folder, "config.json")) as f:
            cfg = LlavaNextConfig.from_dict(json.load(f))
        g = torch.Generator().manual_seed(0)
        hw = tuple(s["image_hw"])
        n_image = image_feature_count(hw, cfg)
        text = torch.randint(3, cfg.image_token_index, (s["text_tokens"],), generator=g)
        ids = torch.cat([torch.tensor([1]), text[:4], torch.full((n_image,), cfg.image_token_index), text[4:]])[None]
        Nc = num_crops(hw, cfg.image_grid_pinpoints, s["image_size"])
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.randn(1, Nc, 3, s["image_size"], s["image_size"], generator=g),
                "image_sizes": torch.tensor([hw])}

    def describe(self, s: dict, inputs: dict) -> str:
        return (f"CLIP hidden {s['vision_hidden']} x {s['vision_layers']} layers, {s['image_size']}px crops; "
                f"decoder hidden {s['text_hidden']} x {s['text_layers']} layers, {s['text_heads']} heads / "
                f"{s['text_kv_heads']} KV heads; image {s['image_hw'][0]}x{s['image_hw'][1]} "
                f"({inputs['pixel_values'].shape[1]} crops); prompt {inputs['input_ids'].shape[1]} tokens")

    def step_module(self, impl: str, model):
        return model          # both libraries call the whole model once per token


class Blip2Bench:
    """BLIP-2 with an OPT language model: EVA tower, Q-Former, 32 image tokens then BOS and the prompt."""
    name = "blip2"
    VISION = dict(vision_hidden=704, vision_layers=6, vision_heads=11, image_size=224, patch_size=14,
                  qformer_hidden=384, qformer_layers=6, qformer_heads=6, queries=32)
    FULL = dict(VISION, text_hidden=1024, text_layers=8, text_heads=16, vocab=50272, text_tokens=32,
                new_tokens=16, reps=5, warmup=1)
    SIZES = dict(VISION_SIZES, queries="num_query_tokens", qformer_hidden="qformer_config.hidden_size",
                 qformer_layers="qformer_config.num_hidden_layers", vocab="text_config.vocab_size")
    QUICK = tiny_setup(tiny.blip2("opt"), dict(SIZES, text_hidden="text_config.hidden_size",
                                               text_layers="text_config.num_hidden_layers"),
                       text_tokens=16, new_tokens=4, reps=3, warmup=1)
    BOS = 2

    def hf_class(self):
        from transformers import Blip2ForConditionalGeneration
        return Blip2ForConditionalGeneration

    def text_config(self, s: dict) -> dict:
        from transformers import OPTConfig
        return OPTConfig(hidden_size=s["text_hidden"], ffn_dim=4 * s["text_hidden"], num_hidden_layers=s["text_layers"],
                         num_attention_heads=s["text_heads"], vocab_size=s["vocab"],
                         word_embed_proj_dim=s["text_hidden"]).to_dict()

    def hf_config(self, s: dict):
        from transformers import Blip2Config

        vision = dict(hidden_size=s["vision_hidden"], intermediate_size=4 * s["vision_hidden"],
                      num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                      image_size=s["image_size"], patch_size=s["patch_size"])
        qformer = dict(hidden_size=s["qformer_hidden"], num_hidden_layers=s["qformer_layers"],
                       num_attention_heads=s["qformer_heads"], intermediate_size=4 * s["qformer_hidden"],
                       encoder_hidden_size=s["vision_hidden"])
        return Blip2Config(vision_config=vision, qformer_config=qformer, text_config=self.text_config(s),
                           num_query_tokens=s["queries"], image_token_index=s["vocab"] - 1)

    def prompt(self, s: dict, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full((s["queries"],), s["vocab"] - 1), torch.tensor([self.BOS]), text])

    def make_inputs(self, s: dict, folder: str) -> dict:
        g = torch.Generator().manual_seed(0)
        text = torch.randint(4, s["vocab"] - 1, (s["text_tokens"],), generator=g)
        ids = self.prompt(s, text)[None]
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids),
                "pixel_values": torch.randn(1, 3, s["image_size"], s["image_size"], generator=g)}

    def describe(self, s: dict, inputs: dict) -> str:
        patches = (s["image_size"] // s["patch_size"]) ** 2
        return (f"EVA ViT hidden {s['vision_hidden']} x {s['vision_layers']} layers ({patches} patches + CLS); "
                f"Q-Former {s['queries']} queries, hidden {s['qformer_hidden']} x {s['qformer_layers']} layers; "
                f"{self.lm_name} hidden {s['text_hidden']} x {s['text_layers']} layers; "
                f"prompt {inputs['input_ids'].shape[1]} tokens")

    lm_name = "OPT"

    def step_module(self, impl: str, model):
        # Transformers' BLIP-2 generate runs the language model's own generate: its forward is called
        # once per token; so is minivlm's (inside the BLIP-2 forward).
        return model.language_model


class Blip2T5Bench(Blip2Bench):
    """BLIP-2 with a Flan-T5 language model: the image tokens and the prompt go to the encoder, the
    decoder starts from the pad token; prefill = the encoder and the first decoder step."""
    name = "blip2_t5"
    FULL = dict(Blip2Bench.VISION, text_hidden=512, text_layers=6, text_heads=8, vocab=32128, text_tokens=32,
                new_tokens=16, reps=5, warmup=1)
    QUICK = tiny_setup(tiny.blip2("t5"), dict(Blip2Bench.SIZES, text_hidden="text_config.d_model",
                                              text_layers="text_config.num_layers"),
                       text_tokens=16, new_tokens=4, reps=3, warmup=1)
    lm_name = "Flan-T5 (encoder and decoder)"

    def text_config(self, s: dict) -> dict:
        from transformers import T5Config
        return T5Config(d_model=s["text_hidden"], d_kv=s["text_hidden"] // s["text_heads"], d_ff=2 * s["text_hidden"],
                        num_layers=s["text_layers"], num_heads=s["text_heads"], vocab_size=s["vocab"],
                        feed_forward_proj="gated-gelu", tie_word_embeddings=False, pad_token_id=0,
                        eos_token_id=1, decoder_start_token_id=0).to_dict()

    def adjust(self, model):
        # Transformers builds every T5 with lm_head tied to the embedding; Flan-T5's own is separate
        # (and stored in hub files): give it its own weights, as tests/_blip2.py does.
        lm = model.language_model
        lm.lm_head.weight = torch.nn.Parameter(torch.randn_like(lm.shared.weight) * lm.shared.weight.std())

    def prompt(self, s: dict, text: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.full((s["queries"],), s["vocab"] - 1), text, torch.tensor([1])])   # ... </s>

    def prefill_inputs(self, inputs: dict) -> dict:
        return {"decoder_input_ids": torch.zeros(inputs["input_ids"].shape[0], 1, dtype=torch.long)}

    def step_module(self, impl: str, model):
        return model.language_model.decoder     # the T5 decoder stack: once per token in both libraries


class Kosmos2Bench:
    """Kosmos-2: CLIP tower, 64 latent queries, sub-LN text decoder. The prompt as Kosmos2Processor
    lays it out: <s> <image> 64 image positions </image> <grounding> text."""
    name = "kosmos2"
    FULL = dict(vision_hidden=512, vision_layers=6, vision_heads=8, image_size=224, patch_size=14, queries=64,
                text_hidden=1024, text_layers=8, text_heads=16, vocab=65037, text_tokens=32,
                new_tokens=16, reps=5, warmup=1)
    QUICK = tiny_setup(tiny.kosmos2(), dict(VISION_SIZES, queries="latent_query_num",
                                            text_hidden="text_config.embed_dim", text_layers="text_config.layers",
                                            vocab="text_config.vocab_size"),
                       text_tokens=16, new_tokens=4, reps=3, warmup=1)
    BOS, IMAGE, END_IMAGE, GROUNDING = 0, 3, 4, 5      # ids of <s>, <image>, </image>, <grounding>

    def hf_class(self):
        from transformers import Kosmos2ForConditionalGeneration
        return Kosmos2ForConditionalGeneration

    def hf_config(self, s: dict):
        from transformers import Kosmos2Config

        vision = dict(hidden_size=s["vision_hidden"], intermediate_size=4 * s["vision_hidden"],
                      num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                      image_size=s["image_size"], patch_size=s["patch_size"])
        text = dict(embed_dim=s["text_hidden"], ffn_dim=4 * s["text_hidden"], layers=s["text_layers"],
                    attention_heads=s["text_heads"], vocab_size=s["vocab"])
        return Kosmos2Config(vision_config=vision, text_config=text, latent_query_num=s["queries"])

    def make_inputs(self, s: dict, folder: str) -> dict:
        g = torch.Generator().manual_seed(0)
        text = torch.randint(6, s["vocab"], (s["text_tokens"],), generator=g)
        Q = s["queries"]
        ids = torch.cat([torch.tensor([self.BOS, self.IMAGE]), torch.full((Q,), self.IMAGE),
                         torch.tensor([self.END_IMAGE, self.GROUNDING]), text])[None]
        position_mask = torch.zeros_like(ids)
        position_mask[:, 2:2 + Q] = 1
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_embeds_position_mask": position_mask,
                "pixel_values": torch.randn(1, 3, s["image_size"], s["image_size"], generator=g)}

    def describe(self, s: dict, inputs: dict) -> str:
        patches = (s["image_size"] // s["patch_size"]) ** 2
        return (f"CLIP hidden {s['vision_hidden']} x {s['vision_layers']} layers ({patches} patches + CLS); "
                f"{s['queries']} latent queries; text decoder hidden {s['text_hidden']} x {s['text_layers']} "
                f"layers; prompt {inputs['input_ids'].shape[1]} tokens")

    def step_module(self, impl: str, model):
        # The text decoder stack (text_model.model in both libraries) runs once per token: Transformers'
        # Kosmos-2 generate runs its text model's own generate, minivlm's forward calls the stack.
        return model.text_model.model


class IdeficsBench:
    """IDEFICS: CLIP-style tower, Perceiver resampler, a Llama decoder with gated cross-attention every 4th
    layer; two images per sample, interleaved with text (each token sees the most recent image)."""
    name = "idefics"
    FULL = dict(vision_hidden=512, vision_layers=6, vision_heads=8, image_size=224, patch_size=14, latents=64,
                resampler_depth=2, text_hidden=1024, text_layers=8, text_heads=16, intermediate=2816, vocab=32000,
                cross_interval=4, text_tokens=32, new_tokens=16, reps=5, warmup=1)
    QUICK = tiny_setup(tiny.idefics(), dict(VISION_SIZES, vision_hidden="vision_config.embed_dim",
                                            latents="perceiver_config.resampler_n_latents",
                                            resampler_depth="perceiver_config.resampler_depth",
                                            text_hidden="hidden_size", text_layers="num_hidden_layers",
                                            cross_interval="cross_layer_interval", vocab="vocab_size"),
                       text_tokens=16, new_tokens=4, reps=3, warmup=1)

    def hf_class(self):
        from transformers import IdeficsForVisionText2Text
        return IdeficsForVisionText2Text

    def hf_config(self, s: dict):
        from transformers import IdeficsConfig

        vision = dict(embed_dim=s["vision_hidden"], intermediate_size=4 * s["vision_hidden"],
                      num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                      image_size=s["image_size"], patch_size=s["patch_size"])
        perceiver = dict(use_resampler=True, resampler_n_latents=s["latents"], resampler_depth=s["resampler_depth"],
                         resampler_n_heads=s["text_heads"] // 2, resampler_head_dim=64)
        # Alphas of one (not Transformers' default zeros) so that the cross-attention counts in the outputs.
        return IdeficsConfig(vocab_size=s["vocab"], additional_vocab_size=2, hidden_size=s["text_hidden"],
                             intermediate_size=s["intermediate"], num_hidden_layers=s["text_layers"],
                             num_attention_heads=s["text_heads"], cross_layer_interval=s["cross_interval"],
                             use_resampler=True, vision_config=vision, perceiver_config=perceiver,
                             alpha_initializer="ones", alpha_type="float")

    def make_inputs(self, s: dict, folder: str) -> dict:
        """<s> text <image> text <image> text, as IdeficsProcessor lays out two images (the image token is
        the first additional id); image_attention_mask[b, t, i] = 1 when image i is the latest before t."""
        g = torch.Generator().manual_seed(0)
        image = s["vocab"] + 1
        n = s["text_tokens"]
        text = torch.randint(3, s["vocab"], (n,), generator=g)
        ids = torch.cat([torch.tensor([1]), text[: n // 4], torch.tensor([image]), text[n // 4: n // 2],
                         torch.tensor([image]), text[n // 2:]])[None]
        T = ids.shape[1]
        first, second = (ids[0] == image).nonzero()[:, 0].tolist()
        image_mask = torch.zeros(1, T, 2, dtype=torch.long)
        image_mask[0, first:second, 0] = 1
        image_mask[0, second:, 1] = 1
        return {"input_ids": ids, "attention_mask": torch.ones_like(ids), "image_attention_mask": image_mask,
                "pixel_values": torch.randn(1, 2, 3, s["image_size"], s["image_size"], generator=g)}

    def describe(self, s: dict, inputs: dict) -> str:
        return (f"vision hidden {s['vision_hidden']} x {s['vision_layers']} layers; resampler {s['latents']} latents, "
                f"depth {s['resampler_depth']}; decoder hidden {s['text_hidden']} x {s['text_layers']} layers, "
                f"cross-attention every {s['cross_interval']}; 2 images; prompt {inputs['input_ids'].shape[1]} tokens")

    def step_module(self, impl: str, model):
        return model          # both libraries call the whole model once per token


class AltclipBench:
    """AltCLIP: a batch of images against a batch of labels, one forward (a contrastive model: no generate)."""
    name = "altclip"
    generates = False
    compared = "logits_per_image"
    FULL = dict(vision_hidden=768, vision_layers=6, vision_heads=12, image_size=224, patch_size=14,
                text_hidden=768, text_layers=6, text_heads=12, vocab=250002, projection=768, images=8, labels=16,
                label_tokens=12, reps=5, warmup=1)
    QUICK = tiny_setup(tiny.altclip(), dict(VISION_SIZES, text_hidden="text_config.hidden_size",
                                            text_layers="text_config.num_hidden_layers",
                                            vocab="text_config.vocab_size"),
                       images=2, labels=4, label_tokens=6, reps=3, warmup=1)

    def hf_class(self):
        from transformers import AltCLIPModel
        return AltCLIPModel

    def hf_config(self, s: dict):
        from transformers import AltCLIPConfig

        vision = dict(hidden_size=s["vision_hidden"], intermediate_size=4 * s["vision_hidden"],
                      num_hidden_layers=s["vision_layers"], num_attention_heads=s["vision_heads"],
                      image_size=s["image_size"], patch_size=s["patch_size"], projection_dim=s["projection"])
        text = dict(hidden_size=s["text_hidden"], intermediate_size=4 * s["text_hidden"],
                    num_hidden_layers=s["text_layers"], num_attention_heads=s["text_heads"], vocab_size=s["vocab"],
                    project_dim=s["projection"])
        return AltCLIPConfig(text_config=text, vision_config=vision, projection_dim=s["projection"])

    def make_inputs(self, s: dict, folder: str) -> dict:
        """Labels of 3 to label_tokens tokens (<s> ... </s>, right-padded with 1 as XLM-R's tokenizer does)."""
        g = torch.Generator().manual_seed(0)
        L = s["label_tokens"]
        lengths = torch.randint(3, L + 1, (s["labels"],), generator=g)
        ids = torch.ones(s["labels"], L, dtype=torch.long)
        for row, n in enumerate(lengths.tolist()):
            ids[row, :n] = torch.cat([torch.tensor([0]), torch.randint(4, s["vocab"], (n - 2,), generator=g),
                                      torch.tensor([2])])
        return {"input_ids": ids, "attention_mask": (ids != 1).long(),
                "pixel_values": torch.randn(s["images"], 3, s["image_size"], s["image_size"], generator=g)}

    def describe(self, s: dict, inputs: dict) -> str:
        return (f"CLIP vision hidden {s['vision_hidden']} x {s['vision_layers']} layers, {s['image_size']} px; "
                f"XLM-R text hidden {s['text_hidden']} x {s['text_layers']} layers; {s['images']} images against "
                f"{s['labels']} labels of up to {s['label_tokens']} tokens")

    def forward_fn(self, impl: str, model, inputs: dict):
        def call():
            with torch.inference_mode():
                return model(**inputs).logits_per_image
        return call


SPECS = {spec.name: spec for spec in (LlavaNextBench(), Blip2Bench(), Blip2T5Bench(), Kosmos2Bench(), IdeficsBench(),
                                      AltclipBench())}


# --------------------------------------------------------------------------------------------------
# The harness
# --------------------------------------------------------------------------------------------------

def save_checkpoint(spec, s: dict, folder: str):
    torch.manual_seed(0)
    model = spec.hf_class()(transformers_config(spec, s))
    if hasattr(spec, "adjust"):
        spec.adjust(model)
    model.save_pretrained(folder)


def load(spec, impl: str, folder: str):
    if impl == "minivlm":
        import minivlm
        return minivlm.from_pretrained(folder)
    return spec.hf_class().from_pretrained(folder, dtype=torch.float32).eval()


def prefill_fn(spec, impl: str, model, inputs: dict):
    """One prompt forward into a fresh cache, last position's logits. An encoder-decoder spec gives the
    decoder's first input (`prefill_inputs`): the prefill is then the encoder plus one decoder step."""
    extra = spec.prefill_inputs(inputs) if hasattr(spec, "prefill_inputs") else {"logits_to_keep": 1}
    B, T = (extra.get("decoder_input_ids") if "decoder_input_ids" in extra else inputs["input_ids"]).shape
    if impl == "minivlm":
        def call():
            with torch.inference_mode():
                return model(**inputs, **extra, cache=model.new_cache(B, T)).logits[:, -1]
    else:
        def call():
            with torch.inference_mode():
                return model(**inputs, **extra, use_cache=True).logits[:, -1]
    return call


def generate_fn(impl: str, model, inputs: dict, n: int, beams: int = 1):
    """Greedy generation (or beam search with `beams` beams) of exactly n tokens (no end-of-sequence stop)."""
    if impl == "minivlm":
        def call():
            return model.generate(**inputs, max_new_tokens=n, eos_token_id=[], num_beams=beams)
    else:
        def call():
            with torch.inference_mode():
                return model.generate(**inputs, max_new_tokens=n, min_new_tokens=n, do_sample=False,
                                      eos_token_id=None, pad_token_id=0, num_beams=beams)
    return call


class StepClock:
    """The start time of every call of the module a library runs once per generated token, taken by a
    forward pre-hook.

    Each library's generate calls it once for the prompt and once per new token after the first, so the
    time between the first decode call and the last is (calls - 2) whole decode steps: the forward plus
    everything the loop does around it (choosing the token, stopping checks, cache bookkeeping).
    Measured inside one generate call, it is free of the prefill's own run-to-run noise (a prefill costs
    ~75 steps on the LLaVA-NeXT config: subtracting two whole generate timings would drown the steps).
    """

    def __init__(self, module):
        self.stamps = []
        self.handle = module.register_forward_pre_hook(lambda mod, args: self.stamps.append(time.perf_counter()))

    def decode_ms_per_token(self, call, new_tokens: int) -> float:
        self.stamps.clear()
        call()
        if len(self.stamps) != new_tokens:   # one prefill call + one call per token after the first
            raise RuntimeError(f"expected {new_tokens} forward calls, saw {len(self.stamps)}")
        return 1e3 * (self.stamps[-1] - self.stamps[1]) / (len(self.stamps) - 2)


def decode_calls(steps: int) -> int:
    """How many tokens a timed generate makes: the prefill + (steps + 1) decode calls = `steps` intervals."""
    return steps + 2


def count_decode_work(spec, model, inputs: dict, steps: int):
    """The work of minivlm's decode step, the mean over the steps StepClock times, counted on one untimed
    generate of the same length: a pre-hook on the step module starts a new WorkCounter segment at every
    call, so segment i + 1 runs from call i to call i + 1 (segment 0: whatever runs before the first call,
    such as a vision tower). Returns the mean Segment of those steps."""
    n = decode_calls(steps)
    counter = WorkCounter(model)
    handle = spec.step_module("minivlm", model).register_forward_pre_hook(lambda mod, args: counter.new_segment())
    try:
        with counter:
            generate_fn("minivlm", model, inputs, n)()
    finally:
        handle.remove()
    if len(counter.segments) != n + 1:
        raise RuntimeError(f"expected {n} calls of the step module, saw {len(counter.segments) - 1}")
    return mean_segment(counter.segments[2:-1])      # calls 1 .. n-2: the intervals StepClock divides by


def time_decode(spec, models: dict, inputs: dict, steps: int, reps: int, warmup: int, beams: int = 1) -> dict:
    """Per-token decode time of each library, alternating within every repetition (see StepClock)."""
    n = decode_calls(steps)
    clocks = {impl: StepClock(spec.step_module(impl, m)) for impl, m in models.items()}
    calls = {impl: generate_fn(impl, m, inputs, n, beams) for impl, m in models.items()}
    timings = {impl: Timing([]) for impl in models}
    for rep in range(warmup + reps):
        for impl in models:
            ms = clocks[impl].decode_ms_per_token(calls[impl], n)
            if rep >= warmup:
                timings[impl].samples.append(ms)
    for clock in clocks.values():
        clock.handle.remove()
    return timings


def _ratios(a: Timing, b: Timing) -> list:
    return [x / y for x, y in zip(a.samples, b.samples)]


def measure_memory(spec, impl: str, folder: str, s: dict) -> dict:
    """Peak RSS of loading + generating, in a fresh process (see minivlm.tools.bench.memory for why)."""
    child = {"model": spec.name, "impl": impl, "folder": folder, "setup": s}
    return run_probe("minivlm.tools.bench.models", child)


def _memory_child(child: dict) -> dict:
    spec, s = SPECS[child["model"]], child["setup"]
    start = current_rss_kib()
    model = load(spec, child["impl"], child["folder"])
    inputs = spec.make_inputs(s, child["folder"])
    loaded = current_rss_kib()
    if getattr(spec, "generates", True):
        generate_fn(child["impl"], model, inputs, s["new_tokens"] + 1)()
    else:
        spec.forward_fn(child["impl"], model, inputs)()
    return {"start_kib": start, "after_load_kib": loaded, "peak_kib": peak_rss_kib()}


def print_work(work: dict) -> None:
    """The counted work of the first call (prefill or forward) and of a decode step."""
    for what, w in work.items():
        if what == "decode / token":
            print(f"work of a decode step (the mean of the timed steps): {w.bytes / 1e6:.3g} MB read = weights "
                  f"{w.weight_bytes / 1e6:.3g} + keys and values {w.kv_bytes / 1e6:.3g}")
        else:
            print(f"work of the {what}: {w.flops / 1e9:.3g} GFLOP = matrix products {w.matmul_flops / 1e9:.3g} "
                  f"+ attention {w.attention_flops / 1e9:.3g}")


def run(json_path: Optional[str] = None, quick: bool = False, threads: Optional[int] = None,
        reps: Optional[int] = None, name: str = "llava_next") -> int:
    if name not in SPECS:
        raise SystemExit(f"minivlm bench model: unknown model {name!r}; available: {', '.join(SPECS)}")
    spec = SPECS[name]
    if threads is not None:
        torch.set_num_threads(threads)
    s = dict(spec.QUICK if quick else spec.FULL)
    if reps is not None:
        s["reps"] = reps
    env = environment()
    print(f"minivlm {env['minivlm']} model benchmark: {name}{' (--quick: tiny model)' if quick else ''}")
    print(f"torch {env['torch']}, transformers {env['transformers']}, threads {env['threads']}, float32 CPU")
    ceilings = measure_ceilings(dtypes=(torch.float32,))     # before the models take memory
    for line in ceiling_lines(ceilings):
        print(line)
    with tempfile.TemporaryDirectory() as folder:
        save_checkpoint(spec, s, folder)
        inputs = spec.make_inputs(s, folder)
        models = {impl: load(spec, impl, folder) for impl in ("minivlm", "transformers")}
        T = inputs["input_ids"].shape[1]
        print(f"config: {spec.describe(s, inputs)}")
        # A contrastive model (no generate) is timed on one forward; a generative one on prefill and decode.
        generates = getattr(spec, "generates", True)
        first = "prefill" if generates else "forward"
        fns = {impl: (prefill_fn(spec, impl, m, inputs) if generates else spec.forward_fn(impl, m, inputs))
               for impl, m in models.items()}
        # Same weights, same numbers: a check that the comparison is fair. minivlm's call also counts the work.
        with torch.inference_mode():
            with WorkCounter(models["minivlm"]) as counter:
                a = fns["minivlm"]()
            b = fns["transformers"]()
        work = {first: counter.segments[0]}
        diff = (a - b).abs().max().item()
        scale = b.abs().max().item()
        where = "at the last prompt position" if generates else f"in {spec.compared}"
        print(f"max |logit difference| {where}: {diff:.1e} (largest logit {scale:.1e})")
        if not diff <= 1e-4 * max(scale, 1.0):   # float32 parity is ~1e-6 relative (the parity tests)
            print("WARNING: the two libraries disagree on these weights: the timings compare different work")
        print(f"{s['reps']} repetitions after {s['warmup']} warm-up, the two libraries alternating within each")

        prefill = time_side_by_side(fns, s["reps"], s["warmup"], 0.0)
        decode = time_decode(spec, models, inputs, s["new_tokens"], s["reps"], s["warmup"]) if generates else None
        beam = time_decode(spec, models, inputs, s["new_tokens"], s["reps"], s["warmup"], BEAMS) if generates else None
        if decode:
            work["decode / token"] = count_decode_work(spec, models["minivlm"], inputs, s["new_tokens"])
        del models
        memory = {impl: measure_memory(spec, impl, folder, s) for impl in ("minivlm", "transformers")}

    print_work(work)
    rows = [["", "minivlm ms", "transformers ms", "minivlm rate", "transformers rate", "ratio [min-max]", "target", ""]]
    results = {}
    timed = [(first, prefill, PREFILL_TARGET)] + ([("decode / token", decode, DECODE_TARGET)] if decode else [])
    for what, times, target in timed:
        r = _ratios(times["minivlm"], times["transformers"])
        med = statistics.median(r)
        per_call = Work(work[what].flops, "FLOP") if what == first else Work(work[what].bytes, "B")
        rates = {impl: fraction(per_call, 1e-3 * times[impl].median, ceilings) for impl in times}
        results[what] = {"minivlm": times["minivlm"].to_json(), "transformers": times["transformers"].to_json(),
                         "ratio": med, "ratio_min": min(r), "ratio_max": max(r), "target": target,
                         "result": "PASS" if med <= target else "MISS", "work": per_call.to_json(), "rates": rates}
        rows.append([what, fmt_timing(times["minivlm"]), fmt_timing(times["transformers"]),
                     fmt_fraction(rates["minivlm"]), fmt_fraction(rates["transformers"]),
                     f"{med:.2f}x [{min(r):.2f}-{max(r):.2f}]", f"<= {target}x", results[what]["result"]])
    if beam:
        r = _ratios(beam["minivlm"], beam["transformers"])
        over = {impl: _ratios(beam[impl], decode[impl]) for impl in beam}
        med, med_over = statistics.median(r), statistics.median(over["minivlm"])
        ok = med <= BEAM_TARGET and med_over <= BEAM_OVER_GREEDY_TARGET
        results[f"beam x{BEAMS} / token"] = {
            "minivlm": beam["minivlm"].to_json(), "transformers": beam["transformers"].to_json(), "ratio": med,
            "ratio_min": min(r), "ratio_max": max(r), "target": BEAM_TARGET,
            "over_greedy": {impl: statistics.median(v) for impl, v in over.items()},
            "over_greedy_target": BEAM_OVER_GREEDY_TARGET, "result": "PASS" if ok else "MISS"}
        rows.append([f"beam x{BEAMS} / token", fmt_timing(beam["minivlm"]), fmt_timing(beam["transformers"]), "", "",
                     f"{med:.2f}x [{min(r):.2f}-{max(r):.2f}]", f"<= {BEAM_TARGET}x", "PASS" if med <= BEAM_TARGET else "MISS"])
    print("\nmedian [min-max] of the repetitions; ratio = minivlm / transformers, per repetition; "
          "rate = the work / the median time, % = of the ceiling")
    print_table(rows, [max(len(str(row[i])) for row in rows) for i in range(len(rows[0]))])
    if beam:
        o = results[f"beam x{BEAMS} / token"]["over_greedy"]
        print(f"beam x{BEAMS} / greedy per token: minivlm {o['minivlm']:.2f}x (target <= {BEAM_OVER_GREEDY_TARGET}x: "
              f"{'PASS' if o['minivlm'] <= BEAM_OVER_GREEDY_TARGET else 'MISS'}), transformers {o['transformers']:.2f}x")
    tps = {impl: 1e3 / decode[impl].median for impl in decode} if decode else None
    if tps:
        print(f"decode tokens/s: minivlm {tps['minivlm']:.1f}, transformers {tps['transformers']:.1f}")
    print(f"\npeak resident memory, loading + {'generating' if decode else 'one forward'}, each library in a "
          f"fresh process (MiB):")
    for impl, m in memory.items():
        if "error" in m:
            print(f"  {impl}: error: {m['error']}")
        else:
            print(f"  {impl}: peak {m['peak_kib'] / 1024:.0f}, after loading {m['after_load_kib'] / 1024:.0f}, "
                  f"interpreter + libraries {m['start_kib'] / 1024:.0f}")
    if quick:
        print("(--quick: the targets are set for the full config; on the tiny one PASS/MISS mean little)")
    if json_path:
        with open(json_path, "w") as f:
            json.dump({"environment": env, "model": name, "setup": s, "prompt_tokens": T, "max_abs_logit_diff": diff, "max_abs_logit": scale,
                       "ceilings": {key: c.to_json() for key, c in ceilings.items()},
                       "work": {what: w.to_json() for what, w in work.items()},
                       "results": results, "tokens_per_s": tps, "memory": memory}, f, indent=2)
        print(f"\nwrote {json_path}")
    return 0


if __name__ == "__main__":     # a memory probe's child process (see measure_memory)
    sys.exit(child_main(_memory_child))
