"""Training minivlm models: one plain loop, and the tiny VLM's two-stage recipe on top of it.

    from minivlm import train
    run = train.train_tiny_vlm("tiny-vlm")                  # both stages; writes a checkpoint folder
    run = train.finetune("my-llava", "tuned", steps=200, freeze=["vision"])   # any generative model

The loop (`train_stage`) is what every training run here is made of, written out so it can be stepped
through in a debugger:

    for step in range(steps):
        batch = encode_batch(processor, examples(step))     # (picture, question, answer) -> tensors
        logits = model(**batch.inputs).logits               # (B, T, V), through minivlm's kernels
        loss = cross_entropy(logits[:, t - 1], labels[:, t]) over the answer tokens only
        loss.backward()                                     # the kernels' backward passes (attention, rope)
        clip the gradient's global norm to 1; set the learning rate (warmup, then cosine); AdamW step

The tiny VLM's recipe is LLaVA's (Liu et al. 2023), at toy size and from scratch:

    stage 1, "captions": the model learns to describe a picture ("what is in the picture?" -> its
             caption). In LLaVA only the projector trains here, between a pretrained CLIP tower and a
             pretrained LLM; nothing here is pretrained, so every parameter trains: the vision tower, the
             projector, image_newline and the decoder.
    stage 2, "questions": instruction tuning on the questions (colour, shape, count, exists), each row
             a conversation about one picture (up to 5 questions, each answer followed by the next
             question, as LLaVA's instruction data is), with a quarter of the rows still captions so the
             model keeps that skill; every parameter trains (as in LLaVA's stage 2, plus the vision
             tower, which LLaVA keeps frozen).

Each stage ends with a validation score on pictures of the validation split. The folder written holds the
checkpoint (loadable by minivlm and Transformers), `training_log.json` (every step's loss, learning rate,
gradient norm and time, the validation scores, the settings) and `loss.png` (the curve).
"""
from __future__ import annotations

import json
import math
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .tinyvlm import data
from .tinyvlm.model import IGNORE, encode_batch


@dataclass
class Stage:
    """One stage of training. examples(step, batch_size) -> [(image, question, answer)] gives each step's
    rows; steps, batch_size, lr (the peak learning rate), warmup (steps of linear warmup; then a cosine
    decay to min_lr_ratio * lr at the last step); freeze: the parts that do not train ("vision",
    "connector", "decoder": see `model_parts`)."""
    name: str
    steps: int
    batch_size: int
    lr: float
    warmup: int
    examples: Callable = field(repr=False, default=None)
    freeze: tuple = ()
    min_lr_ratio: float = 0.1


@dataclass
class TrainSettings:
    """What the whole run shares: AdamW's betas and weight decay (on weight matrices and embeddings only),
    the gradient clipping norm, the seed (the weights, then each step's data come from it), threads
    (torch's, for the model; None: torch's default) and data_workers (processes that draw and encode the
    batches ahead of the model; 0: the training process does it between steps)."""
    weight_decay: float = 0.01
    betas: tuple = (0.9, 0.98)
    clip: float = 1.0
    seed: int = 0
    threads: Optional[int] = None
    data_workers: int = 0


def learning_rate(step: int, stage: Stage) -> float:
    """Linear warmup from lr / warmup to lr over `warmup` steps, then half a cosine down to
    min_lr_ratio * lr at the last step."""
    if step < stage.warmup:
        return stage.lr * (step + 1) / stage.warmup
    progress = (step - stage.warmup) / max(1, stage.steps - stage.warmup - 1)
    floor = stage.min_lr_ratio * stage.lr
    return floor + (stage.lr - floor) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))


def answer_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy of the labelled tokens: the logits at position t - 1 predict the token at t."""
    V = logits.shape[-1]
    return F.cross_entropy(logits[:, :-1].reshape(-1, V).float(), labels[:, 1:].reshape(-1), ignore_index=IGNORE)


# --------------------------------------------------------------------------------------------------
# Which parameters train
# --------------------------------------------------------------------------------------------------

#: Each generative model's parts, as prefixes of its parameter names. What no prefix names is the
#: "connector": the projector and image_newline, the Q-Former and its queries, the perceiver resampler
#: and the gated cross-attention layers.
PARTS = {
    "LlavaNextForConditionalGeneration": {"vision": ("vision_tower.",), "decoder": ("language_model.",)},
    "Blip2ForConditionalGeneration": {"vision": ("vision_model.",), "decoder": ("language_model.",)},
    "Kosmos2ForConditionalGeneration": {"vision": ("vision_model.",), "decoder": ("text_model.",)},
    "IdeficsForVisionText2Text": {"vision": ("model.vision_model.",),
                                  "decoder": ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")},
}
PART_NAMES = ("vision", "connector", "decoder")


def model_parts(model) -> dict:
    """{"vision": [names], "connector": [names], "decoder": [names]}: every parameter in one part."""
    name = type(model).__name__
    if name not in PARTS:
        raise ValueError(f"model_parts: training knows the parts of {', '.join(PARTS)}, got a {name}")
    prefixes = PARTS[name]
    parts = {p: [] for p in PART_NAMES}
    for param_name, _ in model.named_parameters():
        part = next((p for p, pre in prefixes.items() if param_name.startswith(pre)), "connector")
        parts[part].append(param_name)
    return parts


def set_trainable(model, freeze=()) -> list:
    """Freeze the named parts (requires_grad False), train the rest, and honour a config's own freeze_*
    options (IDEFICS: freeze_vision_layers, freeze_text_layers, freeze_lm_head, with their module
    exceptions). Returns the names of the parameters that train."""
    for part in freeze:
        if part not in PART_NAMES:
            raise ValueError(f"freeze: expected parts among {', '.join(PART_NAMES)}, got {part!r}")
    parts = model_parts(model)
    frozen = {n for part in freeze for n in parts[part]} | config_frozen(model)
    names = []
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
        if name not in frozen:
            names.append(name)
    if not names:
        raise ValueError(f"freeze: {list(freeze)} leaves no parameter of {type(model).__name__} to train")
    return names


def config_frozen(model) -> set:
    """The parameters a config's own freeze_* options freeze, as Transformers applies them. Only IDEFICS
    has such options (its config.json defaults freeze both the decoder and the vision tower):

        freeze_text_layers     the decoder layers and final norm, and the base rows of the token
                               embedding (the added tokens' rows, additional_embedding, still train)
        freeze_vision_layers   the vision tower
        freeze_lm_head         the base rows of the LM head (additional_fc still trains)

    freeze_text_module_exceptions / freeze_vision_module_exceptions name module kinds ("LayerNorm",
    "Linear", "Embedding") that train inside a frozen part. The perceiver resampler and the gated
    cross-attention layers always train."""
    if type(model).__name__ != "IdeficsForVisionText2Text":
        return set()
    config = model.config

    def option(name, default):
        return getattr(config, name, config.unread.get(name, default))

    kinds = {"LayerNorm": torch.nn.LayerNorm, "Linear": torch.nn.Linear, "Embedding": torch.nn.Embedding}

    def frozen_under(prefixes, exceptions) -> set:
        keep = tuple(kinds[e] for e in exceptions)
        names = set()
        for module_name, module in model.named_modules():
            if module_name.startswith(prefixes) and not (keep and isinstance(module, keep)):
                names |= {f"{module_name}.{p}" for p, _ in module.named_parameters(recurse=False)}
        return names

    frozen = set()
    if option("freeze_text_layers", True):
        frozen |= frozen_under(("model.layers", "model.norm"), option("freeze_text_module_exceptions", []) or [])
        frozen.add("model.embed_tokens.weight")
    if option("freeze_vision_layers", True):
        frozen |= frozen_under(("model.vision_model",), option("freeze_vision_module_exceptions", []) or [])
    if option("freeze_lm_head", False):
        frozen.add("lm_head.weight")
    return frozen


def make_optimizer(model, stage: Stage, settings: TrainSettings) -> torch.optim.AdamW:
    """AdamW over the trainable parameters: weight decay on matrices and embeddings (dim >= 2), none on
    biases, norm scales and single vectors."""
    trainable = [p for p in model.parameters() if p.requires_grad]
    decay = [p for p in trainable if p.dim() >= 2]
    no_decay = [p for p in trainable if p.dim() < 2]
    groups = [{"params": decay, "weight_decay": settings.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=stage.lr, betas=settings.betas)


# --------------------------------------------------------------------------------------------------
# The loop
# --------------------------------------------------------------------------------------------------

class Batches(torch.utils.data.Dataset):
    """A stage's batches, one per step: encode_batch(processor, stage.examples(step, batch_size)). A
    Dataset, so that a DataLoader can make them in worker processes while the model trains."""

    def __init__(self, processor, stage: Stage, make_inputs: Optional[Callable] = None):
        self.processor, self.stage, self.make_inputs = processor, stage, make_inputs

    def __len__(self):
        return self.stage.steps

    def __getitem__(self, step: int):
        if not 0 <= step < self.stage.steps:
            raise IndexError(step)
        return encode_batch(self.processor, self.stage.examples(step, self.stage.batch_size), self.make_inputs)


def train_stage(model, processor, stage: Stage, settings: TrainSettings, *, log: Optional[list] = None,
                progress: bool = True, make_inputs: Optional[Callable] = None) -> list:
    """Train model on stage.steps batches of stage.examples. Appends one dict per step to `log` (and
    returns it): stage, step, loss, lr, grad_norm (before clipping), seconds (since the stage began),
    tokens (real tokens in the batch). make_inputs: how one row's prompt and picture become the
    processor's tensors (see encode_batch)."""
    from tqdm.auto import tqdm

    log = [] if log is None else log
    set_trainable(model, stage.freeze)
    optimizer = make_optimizer(model, stage, settings)
    params = [p for p in model.parameters() if p.requires_grad]
    model.train()
    start, tokens_seen = time.perf_counter(), 0
    batches = Batches(processor, stage, make_inputs)
    if settings.data_workers:    # the pictures are drawn and processed in other processes, ahead of time
        batches = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=settings.data_workers,
                                              prefetch_factor=4)
    bar = tqdm(total=stage.steps, desc=stage.name, disable=not progress, leave=True, dynamic_ncols=True)
    for step, batch in enumerate(batches):
        bar.update()
        # Rows are padded on the right, after every real token: the causal mask alone keeps the padding out
        # of sight, so no attention mask is passed (the kernels then build none).
        inputs = {k: v for k, v in batch.inputs.items() if k != "attention_mask"}
        logits = model(**inputs).logits                                     # (B, T, V)
        loss = answer_loss(logits, batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        grad_norm = torch.nn.utils.clip_grad_norm_(params, settings.clip)
        lr = learning_rate(step, stage)
        for group in optimizer.param_groups:
            group["lr"] = lr
        optimizer.step()

        seconds = time.perf_counter() - start
        tokens = int(batch.inputs["attention_mask"].sum()) if "attention_mask" in batch.inputs else \
            batch.labels.numel()
        tokens_seen += tokens
        log.append({"stage": stage.name, "step": step, "loss": loss.item(), "lr": lr,
                    "grad_norm": grad_norm.item(), "seconds": seconds, "tokens": tokens})
        if not math.isfinite(log[-1]["loss"]):
            raise FloatingPointError(f"train_stage: the loss of stage {stage.name!r} is {log[-1]['loss']} at "
                                     f"step {step} (lr {lr:.3g}); lower the learning rate")
        bar.set_postfix(loss=f"{log[-1]['loss']:.3f}", tok_s=f"{tokens_seen / seconds:.0f}")
    bar.close()
    model.eval()
    return log


# --------------------------------------------------------------------------------------------------
# The tiny VLM's data per stage
# --------------------------------------------------------------------------------------------------

#: Where each stage's training seeds start: stage 1 and stage 2 see different pictures.
STAGE_SEED_OFFSET = {"captions": 0, "questions": 50_000_000}
CAPTION_SHARE = 0.25       # the share of caption rows in stage 2
MAX_TURNS = 5              # questions per conversation in stage 2 (the rows fit the 128 positions)


def caption_rows(seed_offset: int = 0) -> Callable:
    """Stage 1's rows: the pictures of consecutive training seeds with their captions."""
    def examples(step: int, batch_size: int) -> list:
        rows = []
        for s in _seeds(seed_offset, step, batch_size):
            e = data.make_example(s)
            rows.append((e.image, data.CAPTION_QUESTION, e.caption))
        return rows
    return examples


def question_rows(seed_offset: int = STAGE_SEED_OFFSET["questions"], caption_share: float = CAPTION_SHARE,
                  max_turns: int = MAX_TURNS) -> Callable:
    """Stage 2's rows: for each picture, its caption (with probability caption_share), else a
    conversation about it, as LLaVA's instruction data holds them: up to max_turns of its questions in a
    random order, each answer followed by the next question. A conversation holds one of the picture's
    two existence questions (one is "yes", the other "no": with both, the second would be answered by
    the first). The choices come from a generator seeded by the picture's seed."""
    import numpy as np

    def examples(step: int, batch_size: int) -> list:
        rows = []
        for s in _seeds(seed_offset, step, batch_size):
            e = data.make_example(s)
            rng = np.random.default_rng([s, 1])
            if rng.random() < caption_share:
                rows.append((e.image, data.CAPTION_QUESTION, e.caption))
                continue
            exists = [q for q in e.questions if q.kind == "exists"]
            asked = [q for q in e.questions if q.kind != "exists"] + [exists[rng.integers(len(exists))]]
            order = rng.permutation(len(asked))[:max_turns]
            rows.append((e.image, [asked[i].question for i in order], [asked[i].answer for i in order]))
        return rows
    return examples


def _seeds(offset: int, step: int, batch_size: int) -> range:
    start = offset + step * batch_size
    if start + batch_size > data.SPLIT_SIZE:
        raise ValueError("training ran past the training split's seeds")
    return range(data.SPLIT_OFFSETS["train"] + start, data.SPLIT_OFFSETS["train"] + start + batch_size)


# --------------------------------------------------------------------------------------------------
# The tiny VLM's recipe
# --------------------------------------------------------------------------------------------------

#: The recipe's defaults (measured in docs/tiny_vlm.md).
DEFAULT_STEPS = (2500, 2000)
DEFAULT_BATCH_SIZE = 32
DEFAULT_LR = (2e-3, 2e-3)
DEFAULT_WARMUP = (50, 50)
VALIDATION_PICTURES = 100


def tiny_vlm_stages(steps=DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, lr=DEFAULT_LR,
                    warmup=DEFAULT_WARMUP) -> list:
    """The two stages of the tiny VLM's recipe (see the module docstring)."""
    _check_pair("steps", steps)
    return [Stage("captions", steps[0], batch_size, lr[0], min(warmup[0], max(1, steps[0] // 4)), caption_rows()),
            Stage("questions", steps[1], batch_size, lr[1], min(warmup[1], max(1, steps[1] // 4)), question_rows())]


def train_tiny_vlm(out, *, steps=DEFAULT_STEPS, batch_size: int = DEFAULT_BATCH_SIZE, lr=DEFAULT_LR,
                   settings: Optional[TrainSettings] = None, validation: int = VALIDATION_PICTURES,
                   progress: bool = True, say: Callable = print) -> dict:
    """Train the tiny VLM from scratch with both stages and write it to the folder `out`. Returns the run's
    record (also written as out/training_log.json): settings, per-step log, validation scores, times."""
    from .tinyvlm.evaluate import evaluate, format_scores
    from .tinyvlm.model import new_model, new_processor, save

    settings = settings or TrainSettings()
    out = _output_folder(out)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    model, processor = new_model(settings.seed), new_processor()
    stages = [s for s in tiny_vlm_stages(steps, batch_size, lr) if s.steps > 0]
    record = _record(settings, stages, model)
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    for stage in stages:
        train_stage(model, processor, stage, settings, log=record["log"], progress=progress)
        if validation:
            scores = evaluate(model, processor, validation, split="validation", questions=stage.name != "captions")
            record["validation"][stage.name] = scores
            say(f"validation after {stage.name}: " + format_scores(scores).replace("\n", "\n  "))
    record["wall_seconds"] = time.perf_counter() - wall_start
    record["cpu_seconds"] = cpu_seconds() - cpu_start
    record["machine_after"] = machine()
    save(model, processor, out)
    _write_record(record, out)
    return record


def finetune(init, out, *, steps: int = 200, batch_size: int = 16, lr: float = 1e-4, warmup: int = 20,
             freeze=(), questions: bool = False, settings: Optional[TrainSettings] = None,
             progress: bool = True) -> dict:
    """Fine-tune the generative checkpoint folder `init` (any of LLaVA-NeXT, BLIP-2, Kosmos-2, IDEFICS) on
    the shapes captions (questions=True: stage 2's mix, one question per row) with its own processor and
    prompt format (its chat template), freezing the parts named in freeze (and what its config's freeze_*
    options freeze); write the model and processor to `out`. Returns the run's record, as train_tiny_vlm."""
    from .loading import from_pretrained, read_config
    from .processing import load_processor
    from .tools.run import GENERATIVE, build_inputs

    settings = settings or TrainSettings()
    out = _output_folder(out)
    if settings.threads:
        torch.set_num_threads(settings.threads)
    torch.manual_seed(settings.seed)
    model_type = read_config(Path(init)).get("model_type")
    if model_type not in GENERATIVE:
        raise ValueError(f"finetune: --init must be a generative checkpoint ({', '.join(GENERATIVE)}); "
                         f"{str(init)!r} holds model_type {model_type!r}")
    model = from_pretrained(init, progress=progress)
    processor = load_processor(init)
    if processor.chat_template is None:
        raise ValueError(f"finetune: {str(init)!r} has no chat template; the prompts are written with it")

    def make_inputs(prompt, image):          # as `minivlm generate` calls each model's processor
        return build_inputs(processor, model, model_type, prompt, [image])

    # one question per row: a conversation of several may not fit a small checkpoint's positions
    rows = question_rows(max_turns=1) if questions else caption_rows()
    stage = Stage("finetune", steps, batch_size, lr, min(warmup, max(1, steps // 4)), rows, tuple(freeze))
    record = _record(settings, [stage], model)
    record["init"] = str(init)
    cpu_start, wall_start = cpu_seconds(), time.perf_counter()
    train_stage(model, processor, stage, settings, log=record["log"], progress=progress, make_inputs=make_inputs)
    record["wall_seconds"] = time.perf_counter() - wall_start
    record["cpu_seconds"] = cpu_seconds() - cpu_start
    record["trainable"] = sum(p.numel() for p in model.parameters() if p.requires_grad)
    for p in model.parameters():
        p.requires_grad_(True)
    model.save_pretrained(out)
    processor.save_pretrained(out)
    _write_record(record, out)
    return record


def cpu_seconds() -> float:
    """CPU time used so far by this process and its finished children (the data workers), user + system:
    what "CPU-minutes" counts."""
    import resource

    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _check_pair(name, value):
    if len(value) != 2 or any(not isinstance(v, int) or v < 0 for v in value):
        raise ValueError(f"{name}: expected two step counts >= 0 (stage 1, stage 2), got {value!r}")


def _output_folder(out) -> Path:
    out = Path(out)
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise FileExistsError(f"out: {str(out)!r} exists and is not an empty folder")
    out.mkdir(parents=True, exist_ok=True)
    return out


def machine() -> dict:
    """The CPU's model name, its core count and the load averages now (1, 5, 15 minutes)."""
    name = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            name = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), name)
    except OSError:
        pass
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    return {"cpu": name, "cpu_count": os.cpu_count(), "load_average": load}


def _record(settings: TrainSettings, stages: list, model) -> dict:
    return {"settings": asdict(settings), "machine_before": machine(),
            "stages": [{k: v for k, v in asdict(s).items() if k != "examples"} for s in stages],
            "parameters": sum(p.numel() for p in model.parameters()),
            "threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
            "reference_math": _reference_enabled(), "log": [], "validation": {}}


def _reference_enabled() -> bool:
    from . import ops
    return ops.reference_enabled()


def _write_record(record: dict, out: Path):
    """training_log.json (one line per step, numbers to 5 significant digits) and loss.png."""
    def short(row):
        return {k: float(f"{v:.5g}") if isinstance(v, float) else v for k, v in row.items()}

    head = {k: v for k, v in record.items() if k != "log"}
    with open(out / "training_log.json", "w", encoding="utf-8") as f:
        f.write(json.dumps(head, indent=1)[:-2] + ',\n "log": [\n')
        f.write(",\n".join(json.dumps(short(row), separators=(",", ":")) for row in record["log"]))
        f.write("\n ]\n}\n")
    plot_loss(record, out / "loss.png")


def plot_loss(record: dict, path) -> Path:
    """The loss per step (and its running mean), one colour per stage, to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 3.5), dpi=100)
    offset = 0
    for stage in record["stages"]:
        rows = [r for r in record["log"] if r["stage"] == stage["name"]]
        if not rows:
            continue
        x = [offset + r["step"] for r in rows]
        y = [r["loss"] for r in rows]
        line, = ax.plot(x, y, alpha=0.25, linewidth=0.8)
        window = max(1, len(y) // 30)
        smooth = [sum(y[max(0, i - window + 1):i + 1]) / len(y[max(0, i - window + 1):i + 1]) for i in range(len(y))]
        ax.plot(x, smooth, color=line.get_color(), label=stage["name"])
        offset += len(rows)
    ax.set_yscale("log")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (answer tokens)")
    ax.legend()
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return Path(path)


__all__ = ["Stage", "TrainSettings", "learning_rate", "answer_loss", "PARTS", "model_parts", "set_trainable",
           "config_frozen", "make_optimizer", "train_stage", "caption_rows", "question_rows", "tiny_vlm_stages",
           "train_tiny_vlm", "finetune", "plot_loss"]
