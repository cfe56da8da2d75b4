"""generate: greedy search, sampling and beam search over a KV cache, for every model in minivlm.

    tokens = model.generate(**inputs, max_new_tokens=20)                        # greedy
    tokens = model.generate(**inputs, do_sample=True, top_p=0.9)                # sampling
    tokens = model.generate(**inputs, num_beams=4, num_return_sequences=2)      # beam search
    out = model.generate(**inputs, return_dict_in_generate=True, output_scores=True)   # GenerateOutput

The settings come from generate's arguments, then `model.generation_config` (the checkpoint's
generation_config.json), then Transformers 5.23's defaults (minivlm/generation/config.py). The result
is what Transformers' generate returns for the same settings: the prompt followed by the new tokens
(B * num_return_sequences, T + N) for a decoder-only model, the decoder's tokens (.., 1 + N), start token
first, for an encoder-decoder one.

How the model is run (`_Runner`):
1. Prefill. A KV cache for the whole sequence is allocated once (`model.new_cache`); the prompt, with the
   images (pixel_values, ...: inputs of this first call only), goes through the model once, and only the
   last position's logits are computed (`logits_to_keep=1`). Encoder-decoder models (T5, BLIP-2 around
   T5) encode the prompt once instead and start the decoder from decoder_start_token_id.
2. Several rows per prompt (beams, or num_return_sequences samples): the prefill runs once per prompt,
   then every row of the cache is repeated (`cache.select_rows`), so the images are encoded once.
3. Steps. Each step feeds only the tokens just chosen, one per row. A left-padded prompt gets positions
   cumsum(mask) - 1 (pads at 0) and the mask, extended by ones, at every step; a prompt without padding
   gets neither, and the kernel's causal band does the masking.
   Beam search then moves each row's cached keys and values to the beam it continues (`cache.reorder`).

Choosing a token (scores in float32, as Transformers picks them; logits.py processes them first):
- greedy: the argmax;
- sampling: a draw from softmax(scores) after temperature, top-k and top-p (`generator` makes the draws
  reproducible; without one they come from torch's global generator, so `torch.manual_seed(s)` before
  generate gives the tokens Transformers' generate gives after the same seed);
- beam search (num_beams = K > 1), per prompt: K running beams, scored by their summed log-probabilities.
  Each step scores all K * V continuations, keeps the best 2K (one more K per extra eos id, so that K
  continuations remain even when the best ones all end), or draws them with do_sample. A continuation
  that ends (eos, a stop string, or the length limit) is a finished hypothesis, kept among the K best
  finished ones with score sum(log p) / new_length ** length_penalty if it is among the first K
  candidates; the best K that go on are the new running beams. A prompt is done when no running beam
  can beat its worst finished hypothesis (early_stopping=False: judged at the current length; "never":
  at the longest possible length when length_penalty > 0), or, with early_stopping=True, as soon as it
  has K finished hypotheses. The result is the best num_return_sequences finished hypotheses.

Stopping: a row is finished when its token is an eos id or its text ends in a stop string; its later
tokens are the pad id (when there is an eos id: then the pad id defaults to the first eos id). Generation
ends when every row is finished or the length limit is reached.

Checks: a keyword that is neither an option of generate nor an input of the prefill forward
(encoder-decoder: `encode`) is a TypeError listing what generate takes (`generate_arguments`); a
Transformers setting minivlm does not implement is a ValueError naming it. The prompt's token ids are
checked by the prefill forward; the steps run inside `decode_step()`, so the model checks (and syncs on)
nothing for the tokens fed back: they were chosen from the logits, and the pad id must be below the
logits' width.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass
from typing import Optional

import torch

from .._checks import decode_step, unknown_kwargs_error
from .config import UNSUPPORTED, GenerationConfig, check_int
from .logits import apply, score_processors
from .stopping import StopStrings

# Forward arguments generate fills in itself (or that contradict it): not model inputs a caller may pass.
MADE_BY_GENERATE = ("input_ids", "inputs_embeds", "attention_mask", "position_ids", "cache", "logits_to_keep",
                    "labels", "decoder_input_ids", "decoder_attention_mask", "encoder_hidden_states")
DEFAULT_NEW_TOKENS = 20      # with neither max_new_tokens nor max_length set (Transformers' default)
FAR = -1.0e9                 # beam search's "never": a score that loses every comparison (as Transformers')


@dataclass
class GenerateOutput:
    """What generate returns with return_dict_in_generate=True. R = rows (prompts * num_return_sequences),
    N = new tokens.

    sequences         (R, T + N) as generate returns without the dict
    scores            output_scores: per step, the processed scores (greedy/sampling: (R, V) after the
                      penalties and filters; beam search: (B * K, V) log-probabilities after them)
    logits            output_logits: per step, the raw float32 logits, rows as in scores
    logprobs          (R, N) the log-probability of each chosen token: greedy/sampling under softmax of
                      the processed scores; beam search the processed log-probability its beam added
                      (0 past a hypothesis' end). Transformers' compute_transition_scores gives the same
                      (normalize_logits=True for greedy/sampling, False for beam search).
    sequences_scores  beam search with output_scores: each returned hypothesis' score (R,)
    beam_indices      beam search: (R, N) at each step, the row (of B * K) the hypothesis came from; -1
                      past its end
    """
    sequences: torch.Tensor
    scores: Optional[tuple] = None
    logits: Optional[tuple] = None
    logprobs: Optional[torch.Tensor] = None
    sequences_scores: Optional[torch.Tensor] = None
    beam_indices: Optional[torch.Tensor] = None


class GenerationMixin:
    """Adds `generate` to a decoder-only or encoder-decoder model (minivlm.models.base.GenerativeModel,
    which says what it needs). `generation_config` holds the checkpoint's settings: from_pretrained sets
    it from the folder; None = the token ids of the model's config."""
    generation_config: Optional[GenerationConfig] = None

    @torch.inference_mode()
    def generate(self, input_ids: torch.Tensor, *, attention_mask=None,
                 generation_config: Optional[GenerationConfig] = None,
                 max_new_tokens: Optional[int] = None, max_length: Optional[int] = None,
                 min_new_tokens: Optional[int] = None, min_length: Optional[int] = None,
                 do_sample: Optional[bool] = None, temperature: Optional[float] = None,
                 top_k: Optional[int] = None, top_p: Optional[float] = None,
                 repetition_penalty: Optional[float] = None, no_repeat_ngram_size: Optional[int] = None,
                 num_beams: Optional[int] = None, length_penalty: Optional[float] = None,
                 early_stopping=None, num_return_sequences: Optional[int] = None,
                 eos_token_id=None, pad_token_id=None, stop_strings=None, tokenizer=None, streamer=None,
                 return_dict_in_generate: Optional[bool] = None, output_scores: Optional[bool] = None,
                 output_logits: Optional[bool] = None, generator: Optional[torch.Generator] = None,
                 **model_inputs):
        """The prompt (B, T) followed by the new tokens (see the module docstring), or a GenerateOutput.

        attention_mask: (B, T), 1 = real token, 0 = padding; decoder-only models need left padding. None:
        the pad id's positions are padding if it occurs in input_ids and differs from every eos id (as
        Transformers infers it), else there is no padding.
        Each setting None = model.generation_config's, else Transformers' default (generation_config: a
        GenerationConfig whose set fields come before model.generation_config's). max_new_tokens /
        max_length: the length limit (default 20 new tokens); min_new_tokens / min_length: no eos before;
        do_sample, temperature, top_k (0 = off; default 50), top_p: sampling; repetition_penalty,
        no_repeat_ngram_size: see logits.py; num_beams > 1: beam search, with length_penalty,
        early_stopping (True, False or "never") and num_return_sequences; eos_token_id (an id, a list,
        or [] for none), pad_token_id; stop_strings (a string or a list) with tokenizer (a minivlm
        Tokenizer or Processor); streamer: an object with put(ids) and end() (streamers.py), one prompt,
        no beams; return_dict_in_generate, output_scores, output_logits: a GenerateOutput; generator: a
        torch.Generator for the draws. model_inputs (pixel_values, image_sizes, ...) go to the prefill
        forward (encoder-decoder: `encode`) only.
        """
        unsupported = {k: model_inputs.pop(k) for k in list(model_inputs) if k in UNSUPPORTED}
        if model_inputs:
            takes = generate_arguments(self)
            if not set(model_inputs) <= set(takes):
                raise unknown_kwargs_error(f"{type(self).__name__}.generate()", model_inputs, takes)
        base = self.generation_config or GenerationConfig.from_model_config(self.config)
        if generation_config is not None:
            if not isinstance(generation_config, GenerationConfig):
                raise TypeError(f"generate: generation_config must be a minivlm GenerationConfig, got "
                                f"{type(generation_config).__name__}")
            base = base.merged_fields(generation_config)
        settings = base.merged(
            max_new_tokens=max_new_tokens, max_length=max_length, min_new_tokens=min_new_tokens,
            min_length=min_length, do_sample=do_sample, temperature=temperature, top_k=top_k, top_p=top_p,
            repetition_penalty=repetition_penalty, no_repeat_ngram_size=no_repeat_ngram_size,
            num_beams=num_beams, length_penalty=length_penalty, early_stopping=early_stopping,
            num_return_sequences=num_return_sequences, stop_strings=stop_strings,
            return_dict_in_generate=return_dict_in_generate, output_scores=output_scores,
            output_logits=output_logits, **unsupported)
        eos = settings.eos_token_id if eos_token_id is None else GenerationConfig(eos_token_id=eos_token_id).eos_token_id
        eos = eos or None
        pad = settings.pad_token_id if pad_token_id is None else pad_token_id
        check_int("generate: pad_token_id", pad, 0)
        if attention_mask is None:
            attention_mask = infer_attention_mask(input_ids, pad, eos)
        if pad is None and eos:
            pad = eos[0]
        _check_inputs(input_ids, attention_mask, generator, left_padded=not self.is_encoder_decoder)
        stops = None
        if settings.stop_strings is not None:
            if tokenizer is None:
                raise ValueError("generate: stop_strings need the tokenizer (tokenizer=processor.tokenizer) to "
                                 "know the text of each token")
            stops = StopStrings(settings.stop_strings, tokenizer)
        beams = settings.num_beams
        if streamer is not None and (beams > 1 or input_ids.shape[0] * settings.num_return_sequences != 1):
            raise ValueError(f"generate: a streamer streams one sequence, without beam search; got "
                             f"{input_ids.shape[0]} prompt(s), num_beams={beams}, "
                             f"num_return_sequences={settings.num_return_sequences}")

        rows_per_prompt = beams if beams > 1 else settings.num_return_sequences
        run = _Runner(self, input_ids, attention_mask, rows_per_prompt, generated_length(self, settings, input_ids),
                      model_inputs)
        if eos is not None and pad >= run.logits.shape[-1]:         # finished rows are fed the pad id
            raise ValueError(f"generate: pad_token_id must be a token id below the vocabulary size "
                             f"{run.logits.shape[-1]} (the logits' width), got {pad}")
        if streamer is not None:
            streamer.put(run.tokens[:, :run.length].cpu())
        min_keep = 1 if beams == 1 else (len(eos) + 1 if eos else 2)
        steps = score_processors(settings, prompt_length=run.length, eos=eos, prompt_mask=run.prompt_mask,
                                 min_keep=min_keep)
        search = _beam_search if beams > 1 else _greedy_or_sample
        out = search(run, settings, steps, eos=eos, pad=pad, stops=stops, streamer=streamer, generator=generator)
        if streamer is not None:
            streamer.end()
        return out if settings.return_dict_in_generate else out.sequences


def generated_length(model, settings, input_ids) -> int:
    """The longest sequence generate may return (decoder-only: prompt included; encoder-decoder: the
    decoder's, start token included), as Transformers sets it: prompt + max_new_tokens, else max_length,
    else prompt + 20, then at most max_position_embeddings."""
    prompt = 1 if model.is_encoder_decoder else input_ids.shape[1]
    if settings.max_new_tokens is not None:
        total = prompt + settings.max_new_tokens
    elif settings.max_length is not None:
        total = settings.max_length
    else:
        total = prompt + DEFAULT_NEW_TOKENS
        limit = getattr(model.config, "max_position_embeddings", None)
        total = min(total, limit) if isinstance(limit, int) else total
    if prompt >= total:
        raise ValueError(f"generate: the prompt has {prompt} tokens, but max_length is {total}: nothing is left "
                         f"to generate (set max_new_tokens instead)")
    return total


class _Runner:
    """The model side of generate: the token buffer, the cache and the forward calls.

    tokens (R, L) holds every row's sequence (R = prompts * rows_per_prompt, L = the longest result);
    its first `length` columns are filled. `logits` (R, V) score the next token. step(next_tokens (R,))
    writes them at column `length`, feeds them to the model and sets the logits for the one after.
    """

    def __init__(self, model, input_ids, attention_mask, rows_per_prompt, max_len, model_inputs):
        self.model, self.max_len = model, max_len
        B, T = input_ids.shape
        device = input_ids.device
        R = B * rows_per_prompt
        rows = torch.arange(B, device=device).repeat_interleave(rows_per_prompt)      # row -> its prompt
        padded = attention_mask is not None and not bool(attention_mask.all())
        self.mask = self.positions = self.prompt_mask = None
        if model.is_encoder_decoder:
            start = _decoder_start(model)
            encoded = model.encode(input_ids, attention_mask=attention_mask, **model_inputs)   # (B, S, E)
            self.encoded = encoded.index_select(0, rows) if rows_per_prompt > 1 else encoded
            # The steps get the encoder mask only when it has padding (decided here, once).
            self.encoder_mask = attention_mask.index_select(0, rows) if padded else None
            self.tokens = torch.full((R, max_len), start, dtype=torch.long, device=device)
            self.cache = model.new_cache(R, max_len)
            self.length = 1
            self.logits = self._decode(self.tokens[:, :1])
            return
        self.tokens = torch.empty(R, max_len, dtype=torch.long, device=device)
        self.tokens[:, :T] = input_ids.index_select(0, rows) if rows_per_prompt > 1 else input_ids
        cache = model.new_cache(B, max_len)
        if padded:
            self.mask = torch.ones(B, max_len, dtype=torch.long, device=device)        # new tokens are real
            self.mask[:, :T] = attention_mask
            if model.positions_from_generate:
                self.positions = (attention_mask.cumsum(-1) - 1).masked_fill(attention_mask == 0, 0)   # (B, T)
        logits = model(input_ids, attention_mask=None if self.mask is None else self.mask[:, :T],
                       position_ids=self.positions, cache=cache, logits_to_keep=1, **model_inputs).logits[:, -1]
        if rows_per_prompt > 1:      # the prefill ran once per prompt: repeat its rows
            cache.select_rows(rows)
            logits = logits.index_select(0, rows)
            if self.mask is not None:
                self.mask = self.mask.index_select(0, rows)
            if self.positions is not None:
                self.positions = self.positions.index_select(0, rows)
        if self.mask is not None:
            self.prompt_mask = self.mask[:, :T]
        self.cache, self.logits, self.length = cache, logits, T

    def _decode(self, last):
        return self.model.decode(last, self.encoded, self.encoder_mask, cache=self.cache,
                                 logits_to_keep=1).logits[:, -1]

    def step(self, next_tokens):
        self.tokens[:, self.length] = next_tokens
        self.length += 1
        if self.length == self.max_len:
            return
        with decode_step():    # inputs made by generate from checked ones: the model checks nothing that syncs
            if self.model.is_encoder_decoder:
                self.logits = self._decode(next_tokens[:, None])
                return
            if self.positions is not None:
                self.positions = self.positions[:, -1:] + 1                               # (R, 1)
            mask = None if self.mask is None else self.mask[:, :self.length]
            self.logits = self.model(next_tokens[:, None], attention_mask=mask, position_ids=self.positions,
                                     cache=self.cache, logits_to_keep=1).logits[:, -1]


def _greedy_or_sample(run, settings, steps, *, eos, pad, stops, streamer, generator):
    R = run.tokens.shape[0]
    eos_ids = torch.tensor(eos, device=run.tokens.device) if eos else None
    unfinished = torch.ones(R, dtype=torch.bool, device=run.tokens.device)
    keep = settings.return_dict_in_generate
    scores_out, logits_out, logprobs = [], [], []
    while True:
        raw = run.logits.float()
        scores = apply(steps, run.tokens[:, :run.length], raw)
        if settings.do_sample:
            next_tokens = torch.multinomial(scores.softmax(-1), 1, generator=generator)[:, 0]   # (R,)
        else:
            next_tokens = scores.argmax(-1)
        if eos_ids is not None:
            next_tokens = torch.where(unfinished, next_tokens, pad)        # finished rows get the pad id
        if keep:
            if settings.output_scores:
                scores_out.append(scores)
            if settings.output_logits:
                logits_out.append(raw)
            logprobs.append(scores.log_softmax(-1).gather(1, next_tokens[:, None])[:, 0])
        if streamer is not None:
            streamer.put(next_tokens.cpu())
        run.step(next_tokens)
        if eos_ids is not None:
            unfinished &= ~torch.isin(next_tokens, eos_ids)
        if stops is not None:
            unfinished &= ~stops(run.tokens[:, :run.length])
        if run.length == run.max_len or ((eos_ids is not None or stops is not None) and not bool(unfinished.any())):
            break
    return GenerateOutput(
        sequences=run.tokens[:, :run.length],
        scores=tuple(scores_out) if keep and settings.output_scores else None,
        logits=tuple(logits_out) if keep and settings.output_logits else None,
        logprobs=torch.stack(logprobs, 1) if keep else None)


def _beam_search(run, settings, steps, *, eos, pad, stops, streamer, generator):
    K, L, T0 = settings.num_beams, run.max_len, run.length
    R, V = run.logits.shape
    B, N, device = R // K, L - T0, run.tokens.device
    C = max(2, 1 + len(eos or [])) * K             # candidates kept per step and prompt
    lp, early = settings.length_penalty, settings.early_stopping
    eos_ids = torch.tensor(eos, device=device) if eos else None
    group = torch.arange(B, device=device)[:, None] * K             # (B, 1): first row of each prompt
    first_k = torch.arange(C, device=device) < K                    # (C,)

    # Running beams: scores (B, K) = summed log-probs; only the first beam of each prompt is live at first,
    # so that the K beams do not all pick the same token. Per step and beam: the row it came from (src) and
    # the processed log-probability of its token (tok_lp).
    run_scores = torch.zeros(B, K, device=device)
    run_scores[:, 1:] = FAR
    run_src = torch.full((B, K, N), -1, dtype=torch.long, device=device)
    run_lp = torch.zeros(B, K, N, device=device)
    # Finished hypotheses, the K best per prompt. Their tokens past the end: the pad id, or the first eos
    # id when the pad id is 0 or unset (Transformers 5.23 fills this way: it tests the pad id for truth).
    fill = pad if pad else (eos[0] if eos else -1)
    run.tokens[:, T0:] = fill
    done_tokens = run.tokens.view(B, K, L).clone()
    done_scores = torch.full((B, K), FAR, device=device)
    done_src = torch.full((B, K, N), -1, dtype=torch.long, device=device)
    done_lp = torch.zeros(B, K, N, device=device)
    is_done = torch.zeros(B, K, dtype=torch.bool, device=device)
    can_improve = torch.ones(B, 1, dtype=torch.bool, device=device)
    keep = settings.return_dict_in_generate
    scores_out, logits_out = [], []

    def pick(t, index):          # t (B, M, ...) -> t (B, len(index), ...) at beams index (B, n)
        return torch.take_along_dim(t, index.view(*index.shape, *[1] * (t.dim() - 2)), dim=1)

    while True:
        cur = run.length
        raw = run.logits.float()
        logp = apply(steps, run.tokens[:, :cur], raw.log_softmax(-1))                    # (R, V)
        if keep and settings.output_scores:
            scores_out.append(logp)
        if keep and settings.output_logits:
            logits_out.append(raw)
        total = (logp.view(B, K, V) + run_scores[:, :, None]).view(B, K * V)
        if settings.do_sample:
            index = torch.multinomial(total.softmax(-1), C, generator=generator)          # (B, C)
            cand = total.gather(1, index)
        else:
            cand, index = torch.topk(total, C)
        beam, token = index // V, index % V
        cand_tokens = pick(run.tokens.view(B, K, L), beam)                                 # (B, C, L)
        cand_tokens[:, :, cur] = token
        cand_src, cand_lp = pick(run_src, beam), pick(run_lp, beam)
        cand_src[:, :, cur - T0] = beam + group
        cand_lp[:, :, cur - T0] = logp.view(B, K * V).gather(1, index)
        ends = torch.full((B, C), cur + 1 >= L, dtype=torch.bool, device=device)
        if eos_ids is not None:
            ends |= torch.isin(token, eos_ids)
        if stops is not None:
            ends |= stops(cand_tokens[:, :, :cur + 1].reshape(B * C, -1)).view(B, C)

        # The K best candidates that go on are the new running beams.
        live = cand + ends.float() * FAR
        best = torch.topk(live, K).indices                                                 # (B, K)
        run_scores, run_src, run_lp = pick(live, best), pick(cand_src, best), pick(cand_lp, best)
        # Candidates that end among the first K become finished hypotheses if they beat the K kept ones.
        ended = ends & first_k
        score = cand / ((cur + 1 - T0) ** lp)
        score += (is_done.all(-1, keepdim=True) & (early is True)).float() * FAR      # prompt already full
        score += (~can_improve).float() * FAR
        score += (~ended).float() * FAR
        merged = torch.cat((done_scores, score), 1)
        top = torch.topk(merged, K).indices
        done_tokens = pick(torch.cat((done_tokens, cand_tokens), 1), top)
        done_scores, is_done = pick(merged, top), pick(torch.cat((is_done, ended), 1), top)
        done_src = pick(torch.cat((done_src, cand_src), 1), top)
        done_lp = pick(torch.cat((done_lp, cand_lp), 1), top)

        # Each row takes the sequence (with its new token) and the cache of the beam it continues.
        run.tokens.copy_(pick(cand_tokens, best).view(R, L))
        run.cache.reorder(run_src[:, :, cur - T0].reshape(-1))
        run.step(run.tokens[:, cur].clone())
        # Can a running beam still beat the worst finished hypothesis? Judged at the current length
        # (early_stopping False or True), or at the longest possible one ("never" with length_penalty > 0).
        length = (L - T0) if (early == "never" and lp > 0.0) else (run.length - T0)
        best_possible = run_scores[:, :1] / (length ** lp)
        worst_done = torch.where(is_done, done_scores.min(1, keepdim=True).values, FAR)
        can_improve &= (best_possible > worst_done).any(-1, keepdim=True)
        if not bool(can_improve.any()) or (early is True and bool(is_done.all())) or bool(ends.all()) \
                or run.length == L:
            break

    n = settings.num_return_sequences
    src = done_src[:, :n].reshape(B * n, N)
    new = int((src >= 0).sum(1).max())
    return GenerateOutput(
        sequences=done_tokens[:, :n].reshape(B * n, L)[:, :T0 + new],
        scores=tuple(scores_out) if keep and settings.output_scores else None,
        logits=tuple(logits_out) if keep and settings.output_logits else None,
        logprobs=done_lp[:, :n].reshape(B * n, N)[:, :new] if keep else None,
        sequences_scores=done_scores[:, :n].reshape(-1) if keep and settings.output_scores else None,
        beam_indices=src[:, :new] if keep else None)


def _decoder_start(model) -> int:
    start = (model.generation_config or GenerationConfig()).decoder_start_token_id
    if start is None:   # a generation_config.json without it: the model config's (T5: the pad id)
        start = GenerationConfig.from_model_config(model.config).decoder_start_token_id
    if start is None:
        raise ValueError("generate: an encoder-decoder model needs decoder_start_token_id (in "
                         "generation_config.json or config.json), found none")
    return start


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


def _check_inputs(input_ids, attention_mask, generator, left_padded=True):
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
    if generator is not None and not isinstance(generator, torch.Generator):
        raise TypeError(f"{fn}: generator must be a torch.Generator, got {type(generator).__name__}")
