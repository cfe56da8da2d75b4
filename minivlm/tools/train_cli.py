"""`minivlm train tiny-vlm` and `minivlm eval tiny-vlm`: the tiny VLM's training and scoring commands.

    minivlm train tiny-vlm --out DIR [--steps S1,S2] [--batch-size B] [--seed S] [--threads N] [--workers N]
                           [--reference]
    minivlm train tiny-vlm --out DIR --init CHECKPOINT [--steps S] [--freeze vision,decoder] [--questions]
    minivlm eval tiny-vlm [--model DIR] [--n N] [--seed S] [--json [PATH]] [--threads N]

The loop and the recipe are minivlm/train.py; the data minivlm/tinyvlm/data.py; the scores
minivlm/tinyvlm/evaluate.py. Without --model, eval scores the model that ships with minivlm.
"""
from __future__ import annotations

import argparse
import json
import os
import sys

from .run import _positive_float, _positive_int as _positive

TASKS = ("tiny-vlm",)


def _non_negative(text: str) -> int:
    value = int(text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be >= 0, got {value}")
    return value


def _steps(text: str) -> tuple:
    try:
        values = tuple(int(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected one or two step counts like 600,900, got {text!r}")
    if not 1 <= len(values) <= 2 or any(v < 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected one or two step counts >= 0 like 600,900, got {text!r}")
    return values


def run_train(args) -> int:
    import contextlib

    import torch

    from .. import ops, train

    # The model's matrices are small: one thread does them at full speed, and a second core is better
    # spent drawing the next batches (measured on 2 cores: 1 thread + 1 worker 0.125 s a step, 9.9 CPU-s
    # per 60 steps; 2 threads and no worker 0.11 s, 11.6 CPU-s; 1 thread alone 0.17 s).
    cores = os.cpu_count() or 1
    workers = args.workers if args.workers is not None else (1 if cores >= 2 else 0)
    threads = args.threads or max(1, cores - workers)
    settings = train.TrainSettings(seed=args.seed, threads=threads, data_workers=workers)
    context = ops.use_reference() if args.reference else contextlib.nullcontext()
    say = (lambda *a: None) if args.quiet else (lambda text: print(text, file=sys.stderr))
    with context:
        if args.init is not None:
            steps = args.steps or (200,)
            if len(steps) != 1:
                raise ValueError(f"--steps: fine-tuning (--init) has one stage: give one step count, got "
                                 f"{','.join(map(str, steps))}")
            freeze = tuple(p for p in (args.freeze or "").split(",") if p)
            record = train.finetune(args.init, args.out, steps=steps[0], batch_size=args.batch_size or 16,
                                    lr=args.lr or 1e-4, freeze=freeze, questions=args.questions,
                                    settings=settings, progress=not args.quiet)
        else:
            if args.freeze or args.questions:
                raise ValueError("--freeze and --questions are for fine-tuning a checkpoint (--init DIR); "
                                 "the tiny VLM's recipe trains every parameter in both stages")
            steps = args.steps or train.DEFAULT_STEPS
            if len(steps) != 2:
                raise ValueError(f"--steps: the recipe has two stages (captions, questions): give two step "
                                 f"counts like 600,900, got {','.join(map(str, steps))}")
            lr = (args.lr, args.lr) if args.lr else train.DEFAULT_LR
            record = train.train_tiny_vlm(args.out, steps=steps, batch_size=args.batch_size or train.DEFAULT_BATCH_SIZE,
                                          lr=lr, settings=settings, validation=args.validation,
                                          progress=not args.quiet, say=say)
    steps_done = len(record["log"])
    n = torch.get_num_threads()
    print(f"trained {steps_done} steps in {record['wall_seconds']:.0f} s ({record['cpu_seconds']:.0f} CPU-s, "
          f"{steps_done / record['wall_seconds']:.2f} steps/s, {n} thread{'s' if n != 1 else ''}, "
          f"{workers} data worker{'s' if workers != 1 else ''}{', reference math' if args.reference else ''}); "
          f"wrote {args.out}")
    return 0


def run_eval(args) -> int:
    import torch

    from ..loading import from_pretrained
    from ..processing import load_processor
    from ..tinyvlm import shipped_folder
    from ..tinyvlm.evaluate import evaluate, format_scores

    if args.threads:
        torch.set_num_threads(args.threads)
    folder = args.model or shipped_folder()
    model = from_pretrained(folder, progress=False)
    processor = load_processor(folder)
    scores = evaluate(model, processor, args.n, split=args.split, seed=args.seed)
    scores.update(model=str(folder), split=args.split, seed=args.seed)
    if args.json == "-":                     # --json alone: the scores as JSON on stdout, nothing else
        print(json.dumps(scores, indent=2))
        return 0
    print(f"{args.split} pictures from seed {args.seed}, model {folder}:")
    print(format_scores(scores))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(scores, f, indent=2)
            f.write("\n")
    return 0


def add_parsers(subparsers, common) -> None:
    p = subparsers.add_parser(
        "train", parents=[common], help="train the tiny VLM from scratch (or fine-tune a checkpoint) on the CPU",
        description="Train the tiny VLM (minivlm's LLaVA-NeXT at toy size) from scratch on pictures of coloured "
                    "shapes drawn on the fly: stage 1 on captions, stage 2 on questions (docs/tiny_vlm.md). "
                    "With --init, fine-tune a generative checkpoint folder on the same data instead.")
    p.add_argument("task", choices=TASKS, help="what to train: tiny-vlm")
    p.add_argument("--out", required=True, metavar="DIR", help="the folder to write (absent or empty)")
    p.add_argument("--steps", type=_steps, metavar="S1,S2",
                   help="steps of each stage (default 2500,2000); with --init one count (default 200)")
    p.add_argument("--batch-size", type=_positive, metavar="B", help="rows per step (default 32; --init 16)")
    p.add_argument("--lr", type=_positive_float, metavar="LR",
                   help="peak learning rate of both stages (default 2e-3; --init 1e-4)")
    p.add_argument("--seed", type=int, default=0, help="the seed of the initial weights (default 0)")
    p.add_argument("--threads", type=_positive, metavar="N",
                   help="torch's threads for the model (default: the cores less the data workers)")
    p.add_argument("--workers", type=_non_negative, metavar="N",
                   help="processes that draw and encode the batches ahead (default 1 where there are 2 cores or more)")
    p.add_argument("--reference", action="store_true", help="run on the naive reference math, not the kernels")
    p.add_argument("--validation", type=_non_negative, default=100, metavar="N",
                   help="validation pictures scored after each stage (default 100; 0: none)")
    p.add_argument("--init", metavar="DIR", help="fine-tune this generative checkpoint folder instead")
    p.add_argument("--freeze", metavar="PARTS", help="with --init: parts that do not train, among vision, "
                   "connector, decoder (comma-separated)")
    p.add_argument("--questions", action="store_true",
                   help="with --init: train on stage 2's questions and captions, not captions alone")
    p.set_defaults(func=run_train)

    p = subparsers.add_parser(
        "eval", parents=[common], help="score the tiny VLM on freshly drawn pictures",
        description="Score a tiny VLM (default: the one shipped with minivlm) on N pictures of a split: caption "
                    "exact match per shape count and question accuracy per question type.")
    p.add_argument("task", choices=TASKS, help="what to score: tiny-vlm")
    p.add_argument("--model", metavar="DIR", help="the checkpoint folder (default: the shipped tiny VLM)")
    p.add_argument("--n", type=_positive, default=500, metavar="N", help="pictures to score (default 500)")
    p.add_argument("--seed", type=int, default=0, metavar="S", help="the split's first seed to use (default 0)")
    p.add_argument("--split", choices=("heldout", "validation"), default="heldout",
                   help="which pictures (default heldout)")
    p.add_argument("--json", metavar="PATH", nargs="?", const="-",
                   help="also write the scores to PATH as JSON; --json alone prints only the JSON")
    p.add_argument("--threads", type=_positive, metavar="N", help="torch.set_num_threads(N) first")
    p.set_defaults(func=run_eval)
