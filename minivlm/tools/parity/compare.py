"""The engine of `minivlm parity`: run one library on a checkpoint with forward hooks on the stage map's
modules, keep each stage's output, then compare two such records row by row.

The two libraries run one after the other (`record`), never side by side: each loads the checkpoint,
runs one forward pass with the hooks on, generates a few greedy tokens, keeps what it computed (on the
CPU) and frees its model before the other starts. The peak memory is one model plus the recorded
outputs, not two models.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Optional

import torch

# The tolerance of every compared value, relative to the largest |value| of the stage (Transformers'
# side), per dtype: the unit roundoff u times a growth budget G = 2048. Both libraries compute the same
# math in a different order (another attention kernel, other GEMM blockings); a dot product of K terms in
# another order differs by about sqrt(K) * u of its scale, and the differences add up over the L layers
# of a model, so sqrt(K) * L = 64 * 32 = 2048 covers a 7B model (K = 4096, 32 layers). float32: 2^-24 *
# 2048 = 1.2e-4; the tiny checkpoints measure 1e-7 to 1e-6. float64: 2^-53 * 2048 = 2.3e-13, rounded up
# to 1e-12: the float64 parity tests measure at most 2.3e-15, and a single step run in float32 by
# mistake (~1e-7) fails. A real bug (a wrong mask, scale, position or norm) moves values by 1e-3 or more.
TOLERANCES = {torch.float32: 2.0 ** -24 * 2048, torch.float64: 1e-12}


def first_tensor(output) -> Optional[torch.Tensor]:
    """The tensor a module's output stands for: itself, the first tensor of a tuple or list, a model
    output's first field (last_hidden_state), or None where there is none."""
    if isinstance(output, torch.Tensor):
        return output
    if isinstance(output, dict):
        output = list(output.values())
    elif hasattr(output, "last_hidden_state"):
        return output.last_hidden_state
    if isinstance(output, (tuple, list)):
        for item in output:
            t = first_tensor(item)
            if t is not None:
                return t
    return None


@dataclass
class Record:
    """What one library computed: each stage's output (None: the module never ran), the model's final
    outputs, and the greedy tokens with the log-softmax of each step's logits."""
    stages: dict = field(default_factory=dict)
    outputs: dict = field(default_factory=dict)
    tokens: list = field(default_factory=list)
    logprobs: list = field(default_factory=list)
    calls: dict = field(default_factory=dict)


def record(model, stage_paths: list, forward_inputs: dict, outputs: dict, generate_inputs: Optional[dict],
           new_tokens: int) -> Record:
    """Run `model` once on forward_inputs with a hook on each module of stage_paths (its first call is
    kept; a module the forward never calls records None), read the final `outputs` ({name: attribute of
    the model's output}), then generate `new_tokens` greedy tokens from generate_inputs (None: the model
    does not generate). Everything kept is detached and on the CPU."""
    rec = Record()
    modules = dict(model.named_modules())
    handles = []
    for path in stage_paths:
        if path not in modules:
            raise ValueError(f"parity: {type(model).__module__}.{type(model).__name__} has no module {path!r} "
                             f"(the stage map is out of date)")
        rec.stages[path] = None
        rec.calls[path] = 0

        def hook(module, args, output, path=path):
            rec.calls[path] += 1
            if rec.stages[path] is None:
                t = first_tensor(output)
                rec.stages[path] = None if t is None else t.detach().to("cpu", copy=True)

        handles.append(modules[path].register_forward_hook(hook))
    try:
        with torch.no_grad():
            out = model(**forward_inputs)
    finally:
        for h in handles:
            h.remove()
    for name, attribute in outputs.items():
        value = getattr(out, attribute)
        rec.outputs[name] = value.detach().to("cpu", copy=True)
    del out
    if generate_inputs is not None and new_tokens > 0:
        with torch.no_grad():
            gen = model.generate(**generate_inputs, max_new_tokens=new_tokens, do_sample=False, num_beams=1,
                                 return_dict_in_generate=True, output_logits=True)
        # the generated tokens end the sequence, one per step's logits (before them: the prompt, or for
        # an encoder-decoder the start token)
        rec.tokens = gen.sequences[0, gen.sequences.shape[1] - len(gen.logits):].tolist()
        rec.logprobs = [torch.log_softmax(step[0].double(), -1).to(step.dtype).cpu() for step in gen.logits]
    return rec


@dataclass
class Row:
    stage: str
    ours: str
    theirs: str
    shape: Optional[list]
    max_abs: Optional[float]
    max_rel: Optional[float]
    tolerance: Optional[float]
    passed: Optional[bool]      # None: not compared (one side did not compute it)
    note: str = ""

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def compare_tensors(stage: str, ours_path: str, theirs_path: str, mine, theirs, tol: float,
                    mask: Optional[torch.Tensor] = None) -> Row:
    """One row: max |ours - theirs| and that divided by max |theirs|, against `tol`."""
    if mine is None or theirs is None:
        who = "minivlm" if theirs is None else "Transformers"
        if mine is None and theirs is None:
            return Row(stage, ours_path, theirs_path, None, None, None, tol, None, "run by neither")
        return Row(stage, ours_path, theirs_path, None, None, None, tol, None,
                   f"only {who} computes it (unused by the other)")
    shape = list(theirs.shape)
    if mine.shape != theirs.shape:
        return Row(stage, ours_path, theirs_path, shape, None, None, tol, False,
                   f"shapes differ: minivlm {list(mine.shape)}, Transformers {shape}")
    a, b = mine.double(), theirs.double()
    if mask is not None:
        a, b = a[mask], b[mask]
    if not (torch.isfinite(a).all() and torch.isfinite(b).all()):
        bad = "minivlm" if not torch.isfinite(a).all() else "Transformers"
        return Row(stage, ours_path, theirs_path, shape, math.nan, math.nan, tol, False, f"{bad} has NaN or inf")
    if a.numel() == 0:
        return Row(stage, ours_path, theirs_path, shape, 0.0, 0.0, tol, True, "empty")
    diff = float((a - b).abs().max())
    scale = float(b.abs().max())
    rel = diff / scale if scale > 0 else (0.0 if diff == 0 else math.inf)
    return Row(stage, ours_path, theirs_path, shape, diff, rel, tol, rel <= tol)


def compare_inputs(mine: dict, theirs: dict, tol: float) -> list:
    """Rows for the processors' outputs: integer tensors must be equal, float ones within `tol`."""
    rows = []
    for key in mine:
        if key not in theirs:
            continue
        a, b = torch.as_tensor(mine[key]), torch.as_tensor(theirs[key])
        name = f"processor: {key}"
        if a.is_floating_point() or b.is_floating_point():
            rows.append(compare_tensors(name, key, key, a, b, tol))
            continue
        if a.shape != b.shape:
            rows.append(Row(name, key, key, list(b.shape), None, None, 0.0, False,
                            f"shapes differ: minivlm {list(a.shape)}, Transformers {list(b.shape)}"))
            continue
        wrong = int((a != b).sum())
        rows.append(Row(name, key, key, list(b.shape), float(wrong > 0), float(wrong > 0), 0.0, wrong == 0,
                        f"{wrong} of {a.numel()} differ" if wrong else "equal"))
    return rows


def compare_greedy(mine: Record, theirs: Record, tol: float, decode=None) -> list:
    """One row per generated step: the tokens must be equal and the log-softmax of the step's logits
    within `tol`. After the first differing token the prefixes differ, so later steps are not compared."""
    rows = []
    for k, (t_theirs, lp_theirs) in enumerate(zip(theirs.tokens, theirs.logprobs)):
        if k >= len(mine.tokens):
            rows.append(Row(f"greedy step {k}", "generate", "generate", None, None, None, tol, False,
                            f"minivlm stopped after {len(mine.tokens)} tokens"))
            break
        row = compare_tensors(f"greedy step {k}", "generate", "generate", mine.logprobs[k], lp_theirs, tol)
        t_mine = mine.tokens[k]
        words = f" {decode([t_theirs])!r}" if decode else ""
        if t_mine != t_theirs:
            row.passed = False
            row.note = f"token {t_mine} (minivlm) != {t_theirs} (Transformers)"
            rows.append(row)
            break
        row.note = (f"token {t_theirs}{words}, log-prob {float(lp_theirs[t_theirs]):.4f}"
                    + (f"; {row.note}" if row.note else ""))
        rows.append(row)
    if len(mine.tokens) > len(theirs.tokens) and all(r.passed for r in rows):
        rows.append(Row(f"greedy step {len(theirs.tokens)}", "generate", "generate", None, None, None, tol, False,
                        f"Transformers stopped after {len(theirs.tokens)} tokens, minivlm went on"))
    return rows
