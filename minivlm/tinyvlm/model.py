"""The tiny VLM itself: minivlm's own LLaVA-NeXT at toy size, its processor, and the batches it learns from.

    model = new_model(seed=0)                  # LlavaNextForConditionalGeneration, random weights (0.44M)
    processor = new_processor()                # LlavaNextProcessor: the word-level tokenizer + 32 px crops
    batch = encode_batch(processor, [(image, "what colour is the circle?", "red"), ...])
    logits = model(**batch.inputs).logits      # the loss is taken on batch.labels (answers only)
    print(answer(model, processor, [image], ["what colour is the circle?"]))       # ["red"]

The architecture is LLaVA-NeXT's, unchanged: a CLIP vision tower, the two-layer projector and a Llama
decoder. Only the sizes are small (`CONFIG`):

    picture (any size) --processor--> 2 crops of 32 x 32 px: the whole picture squashed to 32 x 32 (the
                                      "base"), and the one tile of the single grid pinpoint [32, 32] (the
                                      picture fitted inside 32 x 32, keeping its aspect ratio, letterboxed)
    CLIP tower: 8 px patches -> 4 x 4 = 16 patches + class token per crop; width 64, 2 layers, 4 heads
    projector: 64 -> 96 -> 96 (GELU between)
    packing: base 16 features, then the tile's grid with the letterbox rows/columns cut and one
             image_newline per row: 16 + 4 * 5 = 36 image tokens for a square picture (fewer when not)
    Llama decoder: width 96, 3 layers, 4 query heads of 24 channels sharing 2 key/value heads (GQA),
             SwiGLU MLP 256, RoPE, a 42-word vocabulary -> next-word logits

The sizes were chosen by measurement (docs/tiny_vlm.md): the decoder's work grows with every image token
it reads, and the language here is tiny, so a narrower, shallower decoder (0.44M parameters in all
rather than 0.94M with width 128 and 4 layers) learns the captions in less CPU time: 94% caption exact
match on validation after 337 CPU-s, where the wider one had 51% after 222 CPU-s and 88% after 502.

The CLIP tower's last layer feeds the projector (`vision_feature_layer: -1`; LLaVA takes the second to
last of a pretrained tower, whose last layer was trained for CLIP's contrastive objective; here nothing is
pretrained, so every layer learns for this model's use).

The folder `save` writes is a checkpoint as Transformers writes it (config.json, model.safetensors,
generation_config.json, the tokenizer, processor_config.json and a chat template), so `minivlm generate`,
`minivlm.from_pretrained` and Transformers' LlavaNextForConditionalGeneration all load it.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

from . import data

#: config.json of the tiny VLM, in Transformers' spelling. The token ids are the word-level tokenizer's
#: (minivlm.tinyvlm.data): 0 <pad>, 1 <s>, 2 </s>, 4 <image>.
CONFIG = {
    "model_type": "llava_next",
    "architectures": ["LlavaNextForConditionalGeneration"],
    "image_token_index": 4,
    "image_grid_pinpoints": [[32, 32]],          # one pinpoint: the base crop plus one 1 x 1 tile
    "vision_feature_layer": -1,
    "vision_feature_select_strategy": "default",  # drop CLIP's class token
    "projector_hidden_act": "gelu",
    "tie_word_embeddings": False,
    "vision_config": {
        "model_type": "clip_vision_model", "hidden_size": 64, "intermediate_size": 256,
        "num_hidden_layers": 2, "num_attention_heads": 4, "image_size": 32, "patch_size": 8,
        "projection_dim": 64,
    },
    "text_config": {
        "model_type": "llama", "vocab_size": len(data.vocabulary()), "hidden_size": 96,
        "intermediate_size": 256, "num_hidden_layers": 3, "num_attention_heads": 4, "num_key_value_heads": 2,
        "max_position_embeddings": 128, "rms_norm_eps": 1e-5, "tie_word_embeddings": False,
        "pad_token_id": 0, "bos_token_id": 1, "eos_token_id": 2,
    },
    "pad_token_id": 0,
}

IGNORE = -100      # the label of a position whose next token is not scored (cross_entropy's ignore_index)

#: The chat template: one user turn with its image, then "assistant:" (the prompt `data.prompt` writes).
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ m['role'] }}:"
    "{% for c in m['content'] %}{% if c['type'] == 'image' %} <image>{% else %} {{ c['text'] }}{% endif %}"
    "{% endfor %} {% endfor %}{% if add_generation_prompt %}assistant:{% endif %}")


def new_config():
    """A fresh LlavaNextConfig of CONFIG (minivlm's)."""
    from ..models.llava_next import LlavaNextConfig
    return LlavaNextConfig.from_dict(copy.deepcopy(CONFIG))


def new_model(seed: int = 0):
    """The tiny VLM with fresh random weights: every Linear and Embedding weight from N(0, 0.02) (GPT-2 and
    Llama's initialisation), biases 0, norms 1, the class and position embeddings N(0, 0.02) too."""
    import torch

    from ..models.llava_next import LlavaNextForConditionalGeneration

    torch.manual_seed(seed)
    model = LlavaNextForConditionalGeneration(new_config())
    init_weights(model)
    return model


def init_weights(model, std: float = 0.02):
    """Re-draw a model's weights in place: matrices and embeddings N(0, std), biases 0, norm scales 1."""
    import torch

    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.dim() >= 2 or name.endswith(("class_embedding", "image_newline")):
                p.normal_(0.0, std)
            elif "norm" in name and name.endswith("weight"):
                p.fill_(1.0)
            else:
                p.zero_()


def new_processor():
    """The tiny VLM's LlavaNextProcessor: the word-level tokenizer (data.make_tokenizer), 32 px crops of
    the one pinpoint, CLIP's mean and std, and the chat template."""
    import tempfile

    from ..processing import LlavaNextProcessor, Tokenizer
    from ..processing.images import LlavaNextImageProcessor

    with tempfile.TemporaryDirectory() as tmp:       # the tokenizer files, read back as minivlm's Tokenizer
        tokenizer = Tokenizer.from_pretrained(data.build_tokenizer(tmp))
    crop, patch = CONFIG["vision_config"]["image_size"], CONFIG["vision_config"]["patch_size"]
    images = LlavaNextImageProcessor(image_grid_pinpoints=CONFIG["image_grid_pinpoints"], size={"shortest_edge": crop},
                                     crop_size={"height": crop, "width": crop})
    return LlavaNextProcessor(tokenizer, images, chat_template=CHAT_TEMPLATE, patch_size=patch,
                              vision_feature_select_strategy="default", num_additional_image_tokens=1)


#: New tokens `generate` writes by default for this model: the longest caption is 27 tokens and `</s>`.
MAX_NEW_TOKENS = 40


def save(model, processor, folder) -> Path:
    """Write model and processor into one checkpoint folder (see the module docstring), with a
    generation_config.json whose max_new_tokens fits the longest caption. Returns the folder."""
    from ..generation import GenerationConfig

    folder = Path(folder)
    generation = GenerationConfig.from_model_config(model.config)
    generation.max_new_tokens = MAX_NEW_TOKENS
    model.generation_config = generation
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    return folder


# --------------------------------------------------------------------------------------------------
# Batches: (picture, question, answer) -> the model's inputs, with labels on the answer only
# --------------------------------------------------------------------------------------------------

@dataclass
class Batch:
    """A training batch. inputs: the model's keyword arguments (input_ids, attention_mask and the image
    inputs the processor made); labels: (B, T) the token at each position where it is to be predicted,
    IGNORE elsewhere (the prompt, the image tokens, the padding); n_tokens: how many labels are scored."""
    inputs: dict
    labels: object
    n_tokens: int


def prompt_text(processor, question: str, image: bool = True) -> str:
    """The prompt of one question through the processor's chat template (for the tiny VLM, the same
    text as data.prompt(question)); image=False: a turn without the picture ("user: {question} assistant:")."""
    content = [{"type": "image"}] if image else []
    conversation = [{"role": "user", "content": content + [{"type": "text", "text": question}]}]
    return processor.apply_chat_template(conversation, add_generation_prompt=True)


def encode_batch(processor, triples, make_inputs=None) -> Batch:
    """triples: [(PIL image, question, answer)]. Each row is the prompt of the question (its image tokens
    expanded by the processor), then the answer's tokens and the end-of-sequence token; only those are
    labelled. A row may also be a conversation about its picture: question and answer then are lists of
    the same length, and each further turn (the user's question, unlabelled, then the answer and
    end-of-sequence, labelled) follows the previous answer, the picture only in the first.

    make_inputs(prompt, image) -> the processor's tensors for one row (default processor(text=prompt,
    images=[image]); other models call their processors differently: see minivlm.tools.run.build_inputs).
    Rows are padded on the right: the padding comes after every real token, so the causal mask alone keeps
    it out of sight and no attention mask needs to be built (attention_mask is still returned, for models
    that read it).

    Works for any minivlm processor: a per-token input other than input_ids (attention_mask, IDEFICS's
    image_attention_mask, Kosmos-2's image_embeds_position_mask) is continued over the answer by repeating
    its last position, so the answer sees what the prompt's last token saw."""
    import torch

    tok = processor.tokenizer
    rows = []
    for image, question, answer in triples:
        turns = list(zip(question, answer)) if isinstance(question, (list, tuple)) else [(question, answer)]
        text = prompt_text(processor, turns[0][0])
        if make_inputs is None:
            inputs = processor(text=text, images=[image], return_tensors="pt")
        else:
            inputs = make_inputs(text, image)
        ids = answer_tokens(tok, text, turns[0][1])
        labelled = [True] * len(ids)
        for q, a in turns[1:]:
            follow = prompt_text(processor, q, image=False)
            prompt_ids = list(tok(follow, add_special_tokens=False)["input_ids"])
            answer_ids = answer_tokens(tok, follow, a)
            ids += prompt_ids + answer_ids
            labelled += [False] * len(prompt_ids) + [True] * len(answer_ids)
        rows.append((inputs, torch.tensor(ids), torch.tensor(labelled)))

    lengths = [r[0]["input_ids"].shape[1] + len(r[1]) for r in rows]
    T = max(lengths)
    input_ids = torch.full((len(rows), T), tok.pad_token_id if tok.pad_token_id is not None else 0)
    labels = torch.full((len(rows), T), IGNORE)
    per_token = {}                   # name -> list of (1, T_i, ...) tensors continued over the answer
    images = {}                      # name -> list of per-image tensors
    for b, (inputs, answer_ids, labelled) in enumerate(rows):
        prompt_ids = inputs["input_ids"][0]
        P, A = len(prompt_ids), len(answer_ids)
        input_ids[b, :P + A] = torch.cat([prompt_ids, answer_ids])
        # the model predicts position t from positions < t: the label of t is the token at t
        labels[b, P:P + A] = torch.where(labelled, answer_ids, IGNORE)
        for name, value in inputs.items():
            if name == "input_ids":
                continue
            if value.dim() >= 2 and value.shape[:2] == (1, P):
                grown = torch.cat([value, value[:, -1:].expand(1, A, *value.shape[2:])], dim=1)
                pad = grown.new_zeros((1, T - P - A) + tuple(value.shape[2:]))
                per_token.setdefault(name, []).append(torch.cat([grown, pad], dim=1))
            else:
                images.setdefault(name, []).append(value)
    batch = {"input_ids": input_ids}
    batch.update({name: torch.cat(values) for name, values in per_token.items()})
    for name, values in images.items():
        batch[name] = _stack_images(values)
    return Batch(inputs=batch, labels=labels, n_tokens=int((labels != IGNORE).sum()))


def _stack_images(values):
    """Concatenate per-example image tensors along the batch, zero-padding any ragged second axis
    (LLaVA-NeXT's crop count, IDEFICS's image count)."""
    import torch

    if values[0].dim() >= 2 and len({v.shape[1:] for v in values}) > 1:
        n = max(v.shape[1] for v in values)
        values = [torch.cat([v, v.new_zeros((v.shape[0], n - v.shape[1]) + tuple(v.shape[2:]))], dim=1)
                  for v in values]
    return torch.cat(values)


def answer_tokens(tokenizer, prompt: str, answer: str) -> list:
    """The ids the answer adds after the prompt, then end-of-sequence: the tokens of prompt + " " + answer
    past those of the prompt alone, which is how the answer is spelled after that prompt. (Tokenizing the
    answer on its own would not do for every tokenizer: sentencepiece and byte-level BPE spell a word
    differently at the start of a text.) Where the tokenizer merges a token across the boundary (a
    subword tokenizer may join the prompt's last ":" with the answer), the answer is tokenized on its
    own after a space instead."""
    eos = tokenizer.eos_token_id

    def tokens(text, special=True):   # a tokenizer that ends every text with eos (XLM-R's) has it cut here
        ids = list(tokenizer(text, add_special_tokens=special)["input_ids"])
        return ids[:-1] if ids and ids[-1] == eos else ids

    prompt_ids, full = tokens(prompt), tokens(prompt + " " + answer)
    if full[:len(prompt_ids)] == prompt_ids and len(full) > len(prompt_ids):
        return full[len(prompt_ids):] + [eos]
    ids = tokens(" " + answer, special=False)
    if not ids:
        raise ValueError(f"answer_tokens: the answer {answer!r} has no tokens")
    return ids + [eos]


# --------------------------------------------------------------------------------------------------
# Answers
# --------------------------------------------------------------------------------------------------

def answer(model, processor, images, questions, max_new_tokens: int = MAX_NEW_TOKENS) -> list:
    """Greedy answers, one per (image, question) pair, generated in one left-padded batch."""
    import torch

    prompts = [prompt_text(processor, q) for q in questions]
    inputs = processor(text=prompts, images=list(images), padding=True, padding_side="left", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.batch_decode(new, skip_special_tokens=True)]


__all__ = ["CONFIG", "CHAT_TEMPLATE", "IGNORE", "Batch", "new_config", "new_model", "init_weights",
           "MAX_NEW_TOKENS", "new_processor", "save", "prompt_text", "encode_batch", "answer_tokens", "answer"]
