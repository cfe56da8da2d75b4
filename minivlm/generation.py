"""Text generation shared by every model in minivlm: greedy decoding or sampling, with a KV cache.

    tokens = model.generate(input_ids, attention_mask=mask, max_new_tokens=20)   # (B, T + N)

Decoder-only models (the same loop as Transformers' `generate` for greedy search and multinomial
sampling):
1. Prefill: the whole prompt goes through the model once, filling a preallocated KV cache
   (`model.new_cache`); extra inputs such as pixel_values go to this call only.
2. Each step feeds only the token just chosen; its position is the previous one + 1.
3. Positions of a left-padded prompt: cumsum(attention_mask) - 1, with pads at 0 (they are masked out
   anyway), so every row's first real token sits at position 0.
4. The next token is the argmax of the last logits (greedy), or a draw from softmax(logits) after
   temperature, then top-k, then top-p filtering (Transformers' warper order), all in float32.
5. A row that produced an end-of-sequence token is finished: its later tokens are the pad id (the first
   eos id when no pad id is set, as Transformers does). Generation stops when every row is finished or
   after max_new_tokens.

What a model provides for this is written once, in minivlm/models/base.py (`GenerativeModel`):
`new_cache(batch_size, max_length)` and a forward `model(input_ids, attention_mask=..., position_ids=...,
cache=..., logits_to_keep=1, **model_inputs)` returning an object with `.logits`. A model that numbers
positions itself (`positions_from_generate = False`, Kosmos-2) gets no position_ids.

Encoder-decoder models (`is_encoder_decoder = True`: T5, BLIP-2 around T5): the prompt is encoded once,
`model.encode(input_ids, attention_mask=..., **model_inputs) -> (B, S, E)`
(any padding side: T5 tokenizers pad on the right). The decoder starts from decoder_start_token_id and
each step calls `model.decode(last_token (B, 1), encoder_states, attention_mask, cache=cache,
logits_to_keep=1)`; the cache comes from `new_cache(batch_size, 1 + max_new_tokens)`. Tokens are chosen
and finished rows padded exactly as in steps 4-5. The result is the decoder tokens (B, 1 + N), starting
with decoder_start_token_id, as Transformers returns them.

`model.generation_config` (set by minivlm.from_pretrained) gives the default eos / pad / decoder start
ids, else `model.config`.

Checks: a keyword argument that neither generate nor the prefill forward (encoder-decoder: `encode`) takes
raises a TypeError naming `Model.generate()` and listing what it takes (`generate_arguments`). The prompt's
token ids are checked once, by the prefill forward; the decode steps run inside `decode_step()`, so the
model does not check (and sync on) every token fed back: they were chosen from the logits, and the pad id
that finished rows get must be below the logits' width. Nor does it ask whether the mask holds padding
(`has_padding`): generate passes a mask only when it does, deciding that once per call.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Optional, Union

import torch

from ._checks import decode_step, unknown_kwargs_error

# Where a composite (vision-language) config.json keeps its decoder's settings, as Transformers looks.
TEXT_CONFIG_KEYS = ("decoder", "generator", "text_config")
TOKEN_FIELDS = ("bos_token_id", "eos_token_id", "pad_token_id", "decoder_start_token_id")
# Forward arguments generate fills in itself (or that contradict it): not model inputs a caller may pass.
MADE_BY_GENERATE = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "cache", "logits_to_keep",
                    "labels", "decoder_input_ids", "decoder_attention_mask", "encoder_hidden_states")


@dataclass
class GenerationConfig:
    bos_token_id: Optional[int] = None      # start of sequence (kept for completeness: prompts carry their own)
    eos_token_id: Union[int, list, None] = None   # end of sequence: an int or a list, stored as a list or None
    pad_token_id: Optional[int] = None      # fills finished rows; None = the first eos id
    max_new_tokens: int = 20                # tokens to generate when generate() is not told
    decoder_start_token_id: Optional[int] = None   # encoder-decoder models: the decoder's first input

    def __post_init__(self):
        if isinstance(self.eos_token_id, int) and not isinstance(self.eos_token_id, bool):
            self.eos_token_id = [self.eos_token_id]
        elif self.eos_token_id is not None:
            self.eos_token_id = list(self.eos_token_id) or None
        for name in ("bos_token_id", "pad_token_id", "decoder_start_token_id"):
            _check_id(f"GenerationConfig: {name}", getattr(self, name))
        for token in self.eos_token_id or []:
            _check_id("GenerationConfig: eos_token_id", token)
        _check_int("GenerationConfig: max_new_tokens", self.max_new_tokens, 1)

    def to_dict(self) -> dict:
        """generation_config.json as Transformers writes it: each setting that differs from the default (one
        eos id as an int), Transformers' own defaults for what minivlm does not have, and
        `_from_model_config` when nothing but the model's token ids is set; from_dict reads it back."""
        d = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) != f.default}
        if isinstance(d.get("eos_token_id"), list) and len(d["eos_token_id"]) == 1:
            d["eos_token_id"] = d["eos_token_id"][0]
        d.update(output_attentions=False, output_hidden_states=False, use_cache=True)
        if set(d) <= set(TOKEN_FIELDS) | {"output_attentions", "output_hidden_states", "use_cache"}:
            d["_from_model_config"] = True
        return dict(sorted(d.items()))

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationConfig":
        kwargs = {k: d[k] for k in TOKEN_FIELDS + ("max_new_tokens",) if d.get(k) is not None}
        return cls(**kwargs)

    @classmethod
    def from_pretrained(cls, path) -> "GenerationConfig":
        """From a checkpoint folder: generation_config.json if there is one (alone: Transformers does not
        complete it from config.json), else config.json's top level, then its decoder's text_config."""
        folder = Path(path)
        for name in ("generation_config.json", "config.json"):
            if (folder / name).is_file():
                with open(folder / name) as f:
                    d = json.load(f)
                if name == "generation_config.json":
                    return cls.from_dict(d)
                text = next((d[k] for k in TEXT_CONFIG_KEYS if isinstance(d.get(k), dict)), {})
                return cls.from_dict({k: d.get(k) if d.get(k) is not None else text.get(k) for k in TOKEN_FIELDS})
        return cls()

    @classmethod
    def from_model_config(cls, config) -> "GenerationConfig":
        """From a model's config dataclass: its own ids, then its text_config's for those it lacks."""
        text = next((getattr(config, k) for k in TEXT_CONFIG_KEYS if getattr(config, k, None) is not None), None)
        values = {}
        for k in TOKEN_FIELDS:
            value = getattr(config, k, None)
            values[k] = value if value is not None else getattr(text, k, None)
        return cls.from_dict(values)


class GenerationMixin:
    """Adds `generate` to a decoder-only or encoder-decoder model (minivlm.models.base.GenerativeModel,
    which says what it needs). `generation_config` holds the default token ids: from_pretrained sets it
    from the checkpoint folder; None = from the model's config."""
    generation_config: Optional[GenerationConfig] = None

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, *, attention_mask=None, max_new_tokens: Optional[int] = None,
                 eos_token_id=None, pad_token_id=None, do_sample: bool = False, temperature: float = 1.0,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 generator: Optional[torch.Generator] = None, **model_inputs) -> torch.LongTensor:
        """The prompt (B, T) followed by up to max_new_tokens new tokens: a LongTensor (B, T + N); for an
        encoder-decoder model the decoder tokens (B, 1 + N), decoder_start_token_id first.

        attention_mask: (B, T), 1 = real token, 0 = padding; decoder-only models need left padding. None:
        the pad id's positions are padding if it occurs in input_ids and differs from every eos id (as
        Transformers infers it), else there is no padding. eos_token_id, pad_token_id, max_new_tokens: default to `self.generation_config`.
        do_sample: draw from the distribution instead of taking the argmax, after dividing the logits by
        temperature and keeping the top_k most likely tokens (None = all) and the smallest set whose
        probability reaches top_p (None = all); generator makes the draws reproducible. model_inputs
        (pixel_values, image_sizes, ...) go to the prefill forward (encoder-decoder: to `encode`) only; any
        other keyword is a TypeError that lists `generate_arguments(self)`.
        """
        if model_inputs:
            takes = generate_arguments(self)
            if not set(model_inputs) <= set(takes):
                raise unknown_kwargs_error(f"{type(self).__name__}.generate()", model_inputs, takes)
        defaults = self.generation_config or GenerationConfig.from_model_config(self.config)
        N = defaults.max_new_tokens if max_new_tokens is None else max_new_tokens
        eos = defaults.eos_token_id if eos_token_id is None else GenerationConfig(eos_token_id=eos_token_id).eos_token_id
        pad = defaults.pad_token_id if pad_token_id is None else pad_token_id
        if attention_mask is None:
            attention_mask = infer_attention_mask(input_ids, pad, eos)
        if pad is None and eos:
            pad = eos[0]
        encoder_decoder = self.is_encoder_decoder
        _check_generate_args(input_ids, attention_mask, N, pad, do_sample, temperature, top_k, top_p, generator,
                             left_padded=not encoder_decoder)
        choose = dict(eos=eos, pad=pad, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
                      generator=generator)
        if encoder_decoder:
            return self._generate_encoder_decoder(input_ids, attention_mask, N, defaults, choose, model_inputs)

        B, T = input_ids.shape
        device = input_ids.device
        tokens = torch.empty(B, T + N, dtype=torch.long, device=device)      # prompt, then new tokens
        tokens[:, :T] = input_ids
        cache = self.new_cache(B, T + N)
        # Without padding neither a mask nor positions are passed: the model then uses the causal band and
        # positions past, ..., past + T - 1 (what cumsum(mask) - 1 would give), so each step stays cheap.
        padded = attention_mask is not None and not bool(attention_mask.all())
        mask = positions = None
        if padded:
            mask = torch.ones(B, T + N, dtype=torch.long, device=device)     # new tokens are all real
            mask[:, :T] = attention_mask
            if self.positions_from_generate:
                positions = (mask[:, :T].cumsum(-1) - 1).masked_fill(mask[:, :T] == 0, 0)   # (B, T); pads at 0

        logits = self(input_ids, attention_mask=None if mask is None else mask[:, :T], position_ids=positions,
                      cache=cache, logits_to_keep=1, **model_inputs).logits[:, -1]          # (B, vocab)

        def step(next_tokens, i):    # feed token T + i, get the logits for the one after it
            nonlocal positions
            if positions is not None:
                positions = positions[:, -1:] + 1                                         # (B, 1)
            return self(next_tokens[:, None], attention_mask=None if mask is None else mask[:, :T + i + 1],
                        position_ids=positions, cache=cache, logits_to_keep=1).logits[:, -1]

        return _choose_tokens(tokens, T, logits, step, **choose)

    def _generate_encoder_decoder(self, input_ids, attention_mask, N, defaults, choose, model_inputs):
        """Encode once, then decode from decoder_start_token_id: the decoder tokens (B, 1 + N)."""
        start = defaults.decoder_start_token_id
        if start is None:   # a generation_config.json without it: the model config's (T5: the pad id)
            start = GenerationConfig.from_model_config(self.config).decoder_start_token_id
        if start is None:
            raise ValueError("generate: an encoder-decoder model needs decoder_start_token_id (in "
                             "generation_config.json or config.json), found none")
        B = input_ids.shape[0]
        encoder_states = self.encode(input_ids, attention_mask=attention_mask, **model_inputs)   # (B, S, E)
        tokens = torch.full((B, 1 + N), start, dtype=torch.long, device=input_ids.device)
        cache = self.new_cache(B, 1 + N)
        # The steps get the encoder mask only when it has padding (decided here, once).
        if attention_mask is not None and bool(attention_mask.all()):
            attention_mask = None

        def step(last_tokens, i):    # feed the newest decoder token (B,), get the next logits (B, vocab)
            return self.decode(last_tokens[:, None], encoder_states, attention_mask, cache=cache,
                               logits_to_keep=1).logits[:, -1]

        return _choose_tokens(tokens, 1, step(tokens[:, 0], -1), step, **choose)


def generate_arguments(model) -> list:
    """The keyword arguments model.generate takes, read from the signatures: the options of the generate
    called and of GenerationMixin.generate, then the model inputs of the prefill forward (encoder-decoder:
    `encode`) that generate does not fill in itself. An option added to a signature appears here too."""
    prefill = model.encode if model.is_encoder_decoder else model.forward
    names = []
    for fn in (type(model).generate, GenerationMixin.generate, prefill):
        for p in inspect.signature(fn).parameters.values():
            if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD) or p.name == "self" or p.name in names or \
                    (fn is prefill and p.name in MADE_BY_GENERATE):
                continue
            names.append(p.name)
    return names


def infer_attention_mask(input_ids, pad, eos):
    """The padding mask of a prompt given without one, as Transformers' generate infers it: where a pad id
    exists, differs from every eos id and occurs in input_ids, its positions are padding; else None (no
    padding). (With pad == eos an eos inside a prompt would be taken for padding, so nothing is inferred.)"""
    if pad is None or not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or \
            input_ids.dtype.is_floating_point or (eos and pad in eos):
        return None
    is_pad = input_ids == pad
    return (~is_pad).long() if bool(is_pad.any()) else None


def _choose_tokens(tokens, start, logits, step, *, eos, pad, do_sample, temperature, top_k, top_p, generator):
    """Fill tokens[:, start:] column by column. logits (B, vocab) score the first new token; step(next_tokens,
    i) feeds new token i (B,) to the model and returns the logits for token i + 1. Returns tokens up to the
    last column filled (fewer when every row finished early)."""
    B, N = tokens.shape[0], tokens.shape[1] - start
    eos_ids = torch.tensor(eos, device=tokens.device) if eos else None
    if eos_ids is not None and pad >= logits.shape[-1]:    # finished rows are fed the pad id
        raise ValueError(f"generate: pad_token_id must be a token id below the vocabulary size {logits.shape[-1]} "
                         f"(the logits' width), got {pad}")
    unfinished = torch.ones(B, dtype=torch.bool, device=tokens.device)
    for i in range(N):
        scores = logits.float()                      # Transformers picks tokens from float32 scores
        if do_sample:
            next_tokens = sample(scores, temperature, top_k, top_p, generator)
        else:
            next_tokens = scores.argmax(-1)                                           # (B,)
        if eos_ids is not None:
            next_tokens = torch.where(unfinished, next_tokens, pad)   # finished rows get pad
            unfinished &= ~torch.isin(next_tokens, eos_ids)
        tokens[:, start + i] = next_tokens
        if i == N - 1 or (eos_ids is not None and not bool(unfinished.any())):
            return tokens[:, :start + i + 1]
        with decode_step():    # inputs made by generate from checked ones: the model checks nothing that syncs
            logits = step(next_tokens, i)
    return tokens


def sample(scores: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
           top_p: Optional[float] = None, generator: Optional[torch.Generator] = None) -> torch.Tensor:
    """One token per row of scores (B, vocab), drawn from softmax of the filtered scores."""
    probs = filter_scores(scores, temperature, top_k, top_p).softmax(-1)
    return torch.multinomial(probs, 1, generator=generator)[:, 0]                       # (B,)


def filter_scores(scores: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None) -> torch.Tensor:
    """Temperature, then top-k, then top-p (Transformers' order); filtered-out tokens get -inf."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None:
        kth_best = torch.topk(scores, min(top_k, scores.shape[-1])).values[:, -1:]     # (B, 1)
        scores = scores.masked_fill(scores < kth_best, float("-inf"))                  # ties with it stay
    if top_p is not None and top_p < 1.0:
        # Drop the least likely tokens while their total probability stays <= 1 - top_p; keep the best one.
        sorted_scores, order = torch.sort(scores)                                       # ascending
        drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -1] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), float("-inf"))
    return scores


def _check_int(name, value, minimum):
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")


def _check_id(name, value):
    if value is not None:
        _check_int(name, value, 0)


def _check_generate_args(input_ids, attention_mask, max_new_tokens, pad, do_sample, temperature, top_k, top_p,
                         generator, left_padded=True):
    fn = "generate"
    if not isinstance(input_ids, torch.Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0 or \
            input_ids.dtype.is_floating_point or input_ids.dtype == torch.bool:
        got = f"shape {tuple(input_ids.shape)}, {input_ids.dtype}" if isinstance(input_ids, torch.Tensor) \
            else type(input_ids).__name__
        raise ValueError(f"{fn}: input_ids must be an integer tensor (batch, sequence) with sequence >= 1, got {got}")
    if attention_mask is not None:
        if not isinstance(attention_mask, torch.Tensor) or attention_mask.shape != input_ids.shape:
            got = tuple(attention_mask.shape) if isinstance(attention_mask, torch.Tensor) else type(attention_mask).__name__
            raise ValueError(f"{fn}: attention_mask must have input_ids' shape {tuple(input_ids.shape)}, got {got}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError(f"{fn}: attention_mask must hold only 0 (pad) and 1 (real token)")
        if left_padded and not bool(attention_mask[:, -1].all()):
            raise ValueError(f"{fn}: attention_mask has a pad at the end of a row; generation needs left padding "
                             f"(new tokens follow the last prompt token)")
    _check_int(f"{fn}: max_new_tokens", max_new_tokens, 1)
    _check_id(f"{fn}: pad_token_id", pad)
    if not isinstance(do_sample, bool):
        raise TypeError(f"{fn}: do_sample must be a bool, got {type(do_sample).__name__}")
    if isinstance(temperature, bool) or not isinstance(temperature, (int, float)) or not 0 < temperature < float("inf"):
        raise ValueError(f"{fn}: temperature must be a finite number > 0, got {temperature!r}")
    if top_k is not None:
        _check_int(f"{fn}: top_k", top_k, 1)
    if top_p is not None and (isinstance(top_p, bool) or not isinstance(top_p, (int, float)) or not 0 < top_p <= 1):
        raise ValueError(f"{fn}: top_p must be in (0, 1], got {top_p!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator, got {type(generator).__name__}")
