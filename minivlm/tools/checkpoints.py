"""Tiny random checkpoints as a user's folder holds them, written by Transformers: config.json and
model.safetensors (save_pretrained), generation_config.json, the tokenizer, the processor settings and a
chat template, for every architecture minivlm implements. `minivlm parity ARCH` builds one on the spot;
the command-line tests, the README tour and tutorials/03_debugging_parity.py run on them.

    from minivlm.tools.checkpoints import tiny_checkpoint
    folder = tiny_checkpoint("llava_next", "/tmp/tiny-llava")

The sizes are those of `minivlm.tools.tiny`, with the vocabulary and the special token ids of the
tokenizer trained on the spot (`minivlm.tools.tiny_tokenizers`); the weights are drawn from N(0, 0.08)
so that every layer changes the numbers (Transformers' default init leaves many near zero). Building
one needs Transformers (the `parity` extra); reading one needs minivlm alone.
"""
from __future__ import annotations

import shutil
from pathlib import Path

from . import tiny, tiny_tokenizers

#: The model_type names `tiny_checkpoint` builds: the five vision-language models, then the towers.
ARCHS = ("llava_next", "blip-2", "kosmos-2", "idefics", "altclip", "clip_vision_model", "llama", "mistral",
         "opt", "t5")

# Chat templates for the four generative models, in the style of their instruction-tuned checkpoints:
# each message's images become the model's image mark, then its text.
LLAVA_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | upper }}: "
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>\n{% else %}{{ c['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}ASSISTANT:{% endif %}")
IDEFICS_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] | capitalize }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %}<image>{% else %} {{ c['text'] }}{% endif %}"
    "{% endfor %}<end_of_utterance>\n{% endfor %}{% if add_generation_prompt %}Assistant:{% endif %}")
BLIP2_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
    "{% if m['role'] == 'user' %}Question: {{ c['text'] }} Answer:{% else %} {{ c['text'] }}{% endif %}"
    "{% endif %}{% endfor %}{% endfor %}")
KOSMOS2_TEMPLATE = (
    "{% for m in messages %}{% for c in m['content'] %}{% if c['type'] == 'text' %}"
    "{% if m['role'] == 'user' %}<grounding>{{ c['text'] }}{% else %} {{ c['text'] }}{% endif %}"
    "{% endif %}{% endfor %}{% endfor %}")


def tiny_checkpoint(arch: str, folder, *, seed: int = 0) -> Path:
    """Write a tiny random checkpoint of `arch` (one of ARCHS) to `folder` (created; it must be empty or
    absent) and return the folder as a Path."""
    if arch not in ARCHS:
        raise ValueError(f"tiny_checkpoint: arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    folder = Path(folder)
    if folder.exists() and (not folder.is_dir() or any(folder.iterdir())):
        raise FileExistsError(f"tiny_checkpoint: folder {str(folder)!r} exists and is not an empty folder")
    folder.mkdir(parents=True, exist_ok=True)
    _BUILDERS[arch](folder, seed)
    shutil.rmtree(folder / ".tokenizer", ignore_errors=True)    # where the tokenizer was trained
    return folder


def _save(config: dict, folder: Path, seed: int):
    """Build the Transformers model of a config.json dict, draw its weights and save it into `folder`."""
    import torch
    import transformers

    transformers.utils.logging.disable_progress_bar()    # save_pretrained's bar for one small file
    hf_config = transformers.AutoConfig.for_model(**config)
    auto = {"clip_vision_model": transformers.CLIPVisionModel, "altclip": transformers.AltCLIPModel,
            "t5": transformers.T5ForConditionalGeneration, "blip-2": transformers.Blip2ForConditionalGeneration,
            "idefics": transformers.IdeficsForVisionText2Text,
            "kosmos-2": transformers.Kosmos2ForConditionalGeneration,
            "llava_next": transformers.LlavaNextForConditionalGeneration}
    cls = auto.get(config["model_type"], transformers.AutoModelForCausalLM)
    torch.manual_seed(seed)
    model = cls.from_config(hf_config) if cls is transformers.AutoModelForCausalLM else cls(hf_config)
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() >= 2:
                p.normal_(0, 0.08)
    model.eval().save_pretrained(folder)
    return model


def _ids(tok) -> dict:
    return dict(pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id)


def _llava_next(folder: Path, seed: int):
    import transformers

    tok = tiny_tokenizers.llama(folder / ".tokenizer")
    tok.add_tokens([transformers.AddedToken("<image>", special=True, normalized=False)], special_tokens=True)
    config = tiny.llava_next()
    crop = config["vision_config"]["image_size"]
    images = transformers.LlavaNextImageProcessorPil(
        size={"shortest_edge": crop}, crop_size={"height": crop, "width": crop},
        image_grid_pinpoints=config["image_grid_pinpoints"])
    transformers.LlavaNextProcessor(image_processor=images, tokenizer=tok, chat_template=LLAVA_TEMPLATE,
                                    patch_size=config["vision_config"]["patch_size"],
                                    vision_feature_select_strategy=config["vision_feature_select_strategy"],
                                    num_additional_image_tokens=1).save_pretrained(folder)
    config["image_token_index"] = tok.convert_tokens_to_ids("<image>")
    config["text_config"].update(vocab_size=len(tok), **_ids(tok))
    _save(config, folder, seed)


def _blip2(folder: Path, seed: int):
    import transformers

    tok = tiny_tokenizers.opt(folder / ".tokenizer")
    config = tiny.blip2("opt")
    size = config["vision_config"]["image_size"]
    processor = transformers.Blip2Processor(
        image_processor=transformers.BlipImageProcessorPil(size={"height": size, "width": size}), tokenizer=tok,
        num_query_tokens=config["num_query_tokens"])
    processor.chat_template = BLIP2_TEMPLATE
    processor.save_pretrained(folder)          # the processor adds <image> to the tokenizer
    tok = processor.tokenizer
    config["image_token_index"] = tok.convert_tokens_to_ids("<image>")
    config["text_config"].update(vocab_size=len(tok), **_ids(tok))
    _save(config, folder, seed)


def _kosmos2(folder: Path, seed: int):
    import transformers

    tok = tiny_tokenizers.xlm_roberta(folder / ".tokenizer")
    config = tiny.kosmos2()
    crop = config["vision_config"]["image_size"]
    processor = transformers.Kosmos2Processor(
        image_processor=transformers.CLIPImageProcessorPil(size={"shortest_edge": crop},
                                                           crop_size={"height": crop, "width": crop}),
        tokenizer=tok)
    processor.chat_template = KOSMOS2_TEMPLATE
    processor.save_pretrained(folder)
    tok = processor.tokenizer
    # 128 positions: the image span (latent_query_num + 2), a prompt and 20 generated tokens fit
    config["text_config"].update(vocab_size=len(tok), max_position_embeddings=128, **_ids(tok))
    _save(config, folder, seed)


def _idefics(folder: Path, seed: int):
    import transformers

    tok = tiny_tokenizers.llama(folder / ".tokenizer")
    added = ["<fake_token_around_image>", "<image>", "<end_of_utterance>"]
    tok.add_special_tokens({"additional_special_tokens": added})
    size = tiny.IMAGE_SIZE
    processor = transformers.IdeficsProcessor(
        image_processor=transformers.IdeficsImageProcessorPil(image_size=size), tokenizer=tok)
    processor.chat_template = IDEFICS_TEMPLATE
    processor.save_pretrained(folder)
    # the added tokens (pad, the image marks, end of utterance) go in the additional vocabulary, as in
    # the hub checkpoints: the base vocabulary ends where they start. The model's pad id must lie in the
    # base vocabulary (the embedding's padding_idx): 0, <unk>, as in idefics-9b's config.json
    base = min(tok.convert_tokens_to_ids(["<pad>"] + added))
    config = tiny.idefics(additional_vocab_size=len(tok) - base) | _ids(tok) | {"vocab_size": base, "pad_token_id": 0}
    _save(config, folder, seed)


def _altclip(folder: Path, seed: int):
    import transformers

    tok = tiny_tokenizers.xlm_roberta(folder / ".tokenizer")
    crop = tiny.IMAGE_SIZE
    transformers.AltCLIPProcessor(
        image_processor=transformers.CLIPImageProcessorPil(size={"shortest_edge": crop},
                                                           crop_size={"height": crop, "width": crop}),
        tokenizer=tok).save_pretrained(folder)
    config = tiny.altclip()
    config["text_config"].update(vocab_size=len(tok), **_ids(tok))
    _save(config, folder, seed)


def _clip_vision(folder: Path, seed: int):
    import transformers

    crop = tiny.IMAGE_SIZE
    transformers.CLIPImageProcessorPil(size={"shortest_edge": crop},
                                       crop_size={"height": crop, "width": crop}).save_pretrained(folder)
    _save(tiny._vision("clip_vision_model"), folder, seed)


def _decoder(kind: str, make_config):
    def build(folder: Path, seed: int):
        tok = tiny_tokenizers.BUILDERS[kind](folder / ".tokenizer")
        tok.save_pretrained(folder)
        _save(make_config(tok), folder, seed)
    return build


_BUILDERS = {
    "llava_next": _llava_next, "blip-2": _blip2, "kosmos-2": _kosmos2, "idefics": _idefics, "altclip": _altclip,
    "clip_vision_model": _clip_vision,
    "llama": _decoder("llama", lambda tok: tiny.llama("llama", vocab_size=len(tok), **_ids(tok))),
    "mistral": _decoder("llama", lambda tok: tiny.llama("mistral", vocab_size=len(tok), num_key_value_heads=2,
                                                        sliding_window=16, **_ids(tok))),
    "opt": _decoder("opt", lambda tok: tiny.opt(vocab_size=len(tok), **_ids(tok))),
    "t5": _decoder("t5", lambda tok: tiny.t5() | dict(vocab_size=len(tok), pad_token_id=tok.pad_token_id,
                                                      eos_token_id=tok.eos_token_id)),
}
