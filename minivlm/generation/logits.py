"""What generate does to the next-token scores before it picks a token, in Transformers' order:

    1. repetition_penalty     a token already in the sequence: score / penalty (score * penalty if < 0)
    2. no_repeat_ngram_size   a token that would repeat an n-gram of the sequence: -inf
    3. min_length, min_new_tokens   the eos ids: -inf while the sequence is too short
    4. sampling only: temperature, then top_k, then top_p (tokens filtered out: -inf)

Each step is a function `(sequences (R, L), scores (R, V)) -> scores`, where `sequences` are the tokens so
far: the prompt (with its left padding) and the new tokens for a decoder-only model, the decoder's tokens
for an encoder-decoder one. `score_processors(settings, ...)` lists those the settings turn on.
Greedy search and sampling process the float32 logits; beam search processes their log_softmax.
"""
from __future__ import annotations

from typing import Optional

import torch

NEG_INF = float("-inf")


def score_processors(settings, *, prompt_length: int, eos: Optional[list], prompt_mask=None,
                     min_keep: int = 1) -> list:
    """The processing steps `settings` (a merged GenerationConfig) turns on. prompt_length: the length of
    `sequences` at the first step. prompt_mask (R, T): the prompt's attention mask, whose left pads the
    repetition penalty skips. min_keep: the fewest tokens top-k and top-p keep (beam sampling keeps one
    per eos id and one more, so that a beam can always go on)."""
    steps = []
    if settings.repetition_penalty != 1.0:
        # Left pads are not part of the text: the first real token of each row (0 without a mask).
        skip = None if prompt_mask is None else (prompt_mask != 0).int().argmax(-1)
        steps.append(lambda seq, s: repetition_penalty(seq, s, settings.repetition_penalty, skip))
    if settings.no_repeat_ngram_size > 0:
        steps.append(lambda seq, s: no_repeat_ngram(seq, s, settings.no_repeat_ngram_size))
    min_length = settings.min_length             # min_new_tokens, when set, replaces it (as in Transformers)
    if settings.min_new_tokens is not None:
        min_length = prompt_length + settings.min_new_tokens
    if eos and min_length > 0:
        steps.append(lambda seq, s: s if seq.shape[1] >= min_length else ban(s, eos))
    if settings.do_sample:
        steps.append(lambda seq, s: filter_scores(s, settings.temperature, settings.top_k or None,
                                                  settings.top_p, min_keep=min_keep))
    return steps


def apply(steps: list, sequences: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    for step in steps:
        scores = step(sequences, scores)
    return scores


def repetition_penalty(sequences, scores, penalty: float, skip=None):
    """Every token that occurs in a row of sequences (from column skip[row] on) gets its score divided by
    penalty, or multiplied when negative, so that penalty > 1 always makes it less likely (CTRL's rule)."""
    V = scores.shape[-1]
    ids = sequences.clamp(max=V)                   # ids past the logits (never generated) go to column V
    if skip is not None:
        before = torch.arange(ids.shape[1], device=ids.device)[None, :] < skip[:, None]
        ids = ids.masked_fill(before, V)
    seen = torch.zeros(scores.shape[0], V + 1, dtype=torch.bool, device=scores.device)
    seen.scatter_(1, ids, True)
    penalized = torch.where(scores < 0, scores * penalty, scores / penalty)
    return torch.where(seen[:, :V], penalized, scores)


def no_repeat_ngram(sequences, scores, n: int):
    """Ban each token that would complete an n-gram already in the row: look for the last n - 1 tokens
    everywhere earlier in the row; the token after each place they occur is banned."""
    R, L = sequences.shape
    if L < n:
        return scores
    V = scores.shape[-1]
    last = sequences[:, L - (n - 1):]                          # (R, n - 1): the n-gram's start, if any
    grams = sequences.unfold(1, n, 1)                          # (R, L - n + 1, n): every n-gram so far
    hit = (grams[:, :, :-1] == last[:, None, :]).all(-1)       # (R, L - n + 1): begins like the next one
    banned = torch.zeros(R, V + 1, dtype=torch.bool, device=scores.device)
    banned.scatter_(1, torch.where(hit, grams[:, :, -1].clamp(max=V), V), True)
    return scores.masked_fill(banned[:, :V], NEG_INF)


def ban(scores, token_ids: list):
    """scores with the given tokens at -inf."""
    out = scores.clone()
    out[:, [t for t in token_ids if t < scores.shape[-1]]] = NEG_INF
    return out


def filter_scores(scores: torch.Tensor, temperature: float = 1.0, top_k: Optional[int] = None,
                  top_p: Optional[float] = None, min_keep: int = 1) -> torch.Tensor:
    """Temperature, then top-k, then top-p (Transformers' order); filtered-out tokens get -inf. top_k /
    top_p None keep everything; each filter keeps at least min_keep tokens."""
    if temperature != 1.0:
        scores = scores / temperature
    if top_k is not None:
        k = min(max(top_k, min_keep), scores.shape[-1])
        kth_best = torch.topk(scores, k).values[:, -1:]                                 # (R, 1)
        scores = scores.masked_fill(scores < kth_best, NEG_INF)                        # ties with it stay
    if top_p is not None and top_p < 1.0:
        # Drop the least likely tokens while their total probability stays <= 1 - top_p; keep the best ones.
        sorted_scores, order = torch.sort(scores)                                       # ascending
        drop = sorted_scores.softmax(-1).cumsum(-1) <= 1 - top_p
        drop[:, -min_keep:] = False
        scores = scores.masked_fill(drop.scatter(1, order, drop), NEG_INF)
    return scores
