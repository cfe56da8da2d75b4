"""Scoring the tiny VLM on freshly drawn pictures: caption exact match and question accuracy.

    scores = evaluate(model, processor, n=500, split="heldout")
    scores["caption"]["1"]     # share of one-shape pictures whose caption is exactly right
    scores["questions"]["all"], scores["questions"]["colour"], ...

A caption is right when the generated text equals the picture's caption: every shape's colour, kind and
place, in the caption's fixed order. A question is right when the generated answer is the answer word.
Everything is generated greedily, as `minivlm generate` does.
"""
from __future__ import annotations

from collections import defaultdict

from . import data
from .model import MAX_NEW_TOKENS, answer


def evaluate(model, processor, n: int = 500, *, split: str = "heldout", seed: int = 0, batch_size: int = 64,
             questions: bool = True, progress=None) -> dict:
    """Scores on the n pictures of `split` starting at its seed `seed` (shape counts as the generator draws
    them: one, two and three about a third each). Returns {"n": n, "caption": {"1", "2", "3", "all": share
    right}, "questions": {kind: share right, "all": ...}, "counts": how many of each were asked}.
    progress: None, or a callable(n_done) told after each batch."""
    if not isinstance(n, int) or n < 1:
        raise ValueError(f"evaluate: n must be a positive int (pictures), got {n!r}")
    seeds = data.split_seeds(split, seed + n)[seed:]
    was_training = model.training
    model.eval()
    right, total = defaultdict(int), defaultdict(int)
    try:
        for start in range(0, n, batch_size):
            examples = [data.make_example(s) for s in seeds[start:start + batch_size]]
            captions = answer(model, processor, [e.image for e in examples],
                              [data.CAPTION_QUESTION] * len(examples), max_new_tokens=MAX_NEW_TOKENS)
            for e, text in zip(examples, captions):
                key = f"caption/{len(e.scene.shapes)}"
                total[key] += 1
                right[key] += text == e.caption
            if questions:
                asked = [(e.image, q) for e in examples for q in e.questions]
                replies = []
                for i in range(0, len(asked), batch_size):
                    chunk = asked[i:i + batch_size]
                    replies += answer(model, processor, [a[0] for a in chunk], [a[1].question for a in chunk],
                                      max_new_tokens=3)
                for (_, q), reply in zip(asked, replies):
                    total[f"questions/{q.kind}"] += 1
                    right[f"questions/{q.kind}"] += reply == q.answer
            if progress is not None:
                progress(min(start + batch_size, n))
    finally:
        model.train(was_training)
    return _summary(n, right, total)


def _summary(n: int, right: dict, total: dict) -> dict:
    out = {"n": n, "caption": {}, "questions": {}, "counts": {}}
    for group in ("caption", "questions"):
        keys = sorted(k for k in total if k.startswith(group + "/"))
        for key in keys:
            out[group][key.split("/")[1]] = right[key] / total[key]
            out["counts"][key] = total[key]
        if keys:
            out[group]["all"] = sum(right[k] for k in keys) / sum(total[k] for k in keys)
    return out


def format_scores(scores: dict) -> str:
    """The scores as a few aligned lines of text."""
    lines = [f"{scores['n']} pictures"]
    caption = scores["caption"]
    for k in ("1", "2", "3"):
        if k in caption:
            lines.append(f"  caption exact match, {k} shape{'s' if k != '1' else ''}: {caption[k]:7.1%}  "
                         f"({scores['counts'][f'caption/{k}']} pictures)")
    questions = scores["questions"]
    for kind in ("colour", "shape", "count", "exists"):
        if kind in questions:
            lines.append(f"  questions, {kind + ':':8}             {questions[kind]:7.1%}  "
                         f"({scores['counts'][f'questions/{kind}']} asked)")
    if "all" in questions:
        lines.append(f"  questions, all:               {questions['all']:7.1%}")
    return "\n".join(lines)


__all__ = ["evaluate", "format_scores"]
