"""`minivlm parity DIR|ARCH`: where, stage by stage, minivlm and Transformers diverge on one checkpoint.

    minivlm parity path/to/llava-v1.6-mistral-7b-hf --image cat.png --prompt "What is this?"
    minivlm parity idefics --dtype float64          # a tiny random IDEFICS checkpoint, built on the spot

Both libraries load the same weights (a local checkpoint folder, or for ARCH, one of the model_type names
in `checkpoints.ARCHS`: a tiny random checkpoint written by Transformers into a temporary folder) and
read the same inputs: the picture and prompt through minivlm's processor (Transformers' processor runs
too, and the first rows compare the two processors' outputs). Forward hooks on the modules of the
stage map (`stages.py`) catch every stage's output; nothing in either model changes. Then one row per
stage, in the order the forward pass runs them: shape, max |diff|, max |diff| / max |value|, the
dtype's tolerance (`compare.TOLERANCES`, justified in docs/parity.md) and pass/fail; then the model's
outputs, then a few greedy tokens step by step (the token and the log-softmax of its logits). The first
failing row is where the two diverge. The exit status is 1 when any row fails.

Memory: the two libraries run one after the other, keeping only the recorded outputs (see compare.py),
so the peak is one model plus those outputs; before loading anything the command checks that one model
in the asked dtype fits in the memory the system has available, and refuses with the estimate if not.

Needs Transformers (`pip install 'minivlm[parity]'`); without it the command says so in one line.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Optional

DEFAULT_PROMPTS = {"llava_next": "<image>\nWhat is shown in this picture?", "blip-2": "Question: what is this? Answer:",
                   "kosmos-2": "<grounding>An image of", "idefics": "<image>What is shown in this picture?",
                   "altclip": "a photo of a cat, a photo of a dog", "t5": "translate English to German: a cat",
                   "llama": "The quick brown fox", "mistral": "The quick brown fox", "opt": "The quick brown fox"}
VISION = ("llava_next", "blip-2", "kosmos-2", "idefics", "altclip", "clip_vision_model")
GENERATIVE = ("llava_next", "blip-2", "kosmos-2", "idefics", "llama", "mistral", "opt", "t5")


def add_parser(subparsers, common) -> None:
    from ..checkpoints import ARCHS

    p = subparsers.add_parser(
        "parity", parents=[common], help="compare minivlm with Transformers stage by stage on one checkpoint",
        description="Load a checkpoint into Transformers and into minivlm (one after the other), feed both "
                    "the same inputs and print, stage by stage, how far apart their outputs are; the first "
                    "failing stage is where they diverge. Needs Transformers: pip install 'minivlm[parity]'.")
    p.add_argument("target", metavar="DIR|ARCH",
                   help=f"a local checkpoint folder, or one of {', '.join(ARCHS)} for a tiny random checkpoint")
    p.add_argument("--image", metavar="PATH", help="the picture (default: a small drawn one)")
    p.add_argument("--prompt", metavar="TEXT", help="the prompt (AltCLIP: comma-separated texts); default: "
                                                    "one per model")
    p.add_argument("--dtype", choices=("float32", "float64"), default="float32",
                   help="both libraries load the weights in this dtype (default float32)")
    p.add_argument("--max-new-tokens", type=int, default=5, metavar="N",
                   help="greedy tokens compared step by step (default 5; 0 for none)")
    p.add_argument("--json", metavar="PATH", help="also write every number to PATH as JSON")
    p.set_defaults(func=run_command)


@dataclass
class Report:
    """What `check` found: the rows in order, the first failing one, the memory used."""
    target: str
    model_type: str
    dtype: str
    rows: list = field(default_factory=list)
    peak_rss_bytes: Optional[int] = None
    model_bytes: Optional[int] = None
    tokens: dict = field(default_factory=dict)      # {"minivlm": [...], "transformers": [...]}: greedy ids

    @property
    def first_failure(self) -> Optional[str]:
        return next((r.stage for r in self.rows if r.passed is False), None)

    @property
    def passed(self) -> bool:
        return self.first_failure is None

    def to_dict(self) -> dict:
        return dict(target=self.target, model_type=self.model_type, dtype=self.dtype, passed=self.passed,
                    first_failure=self.first_failure, peak_rss_bytes=self.peak_rss_bytes,
                    model_bytes=self.model_bytes, greedy_tokens=self.tokens, rows=[r.to_dict() for r in self.rows])


def transformers_class(model_type: str):
    """The Transformers class that loads a checkpoint of `model_type` with its head."""
    import transformers

    return {"llava_next": transformers.LlavaNextForConditionalGeneration,
            "blip-2": transformers.Blip2ForConditionalGeneration,
            "kosmos-2": transformers.Kosmos2ForConditionalGeneration,
            "idefics": transformers.IdeficsForVisionText2Text, "altclip": transformers.AltCLIPModel,
            "clip_vision_model": transformers.CLIPVisionModel, "t5": transformers.T5ForConditionalGeneration,
            "llama": transformers.LlamaForCausalLM, "mistral": transformers.MistralForCausalLM,
            "opt": transformers.OPTForCausalLM}[model_type]


def require_transformers():
    """Transformers, or a one-line error saying how to install it."""
    try:
        import transformers
    except ImportError:
        raise RuntimeError("minivlm parity needs Transformers, which is not installed: "
                           "pip install 'minivlm[parity]'") from None
    return transformers


def default_image():
    """A small picture with a few coloured shapes (48 x 64), for runs without --image."""
    from PIL import Image, ImageDraw

    image = Image.new("RGB", (64, 48), (235, 235, 225))
    draw = ImageDraw.Draw(image)
    draw.ellipse((4, 4, 28, 28), fill=(200, 30, 30))
    draw.rectangle((36, 20, 60, 44), fill=(30, 60, 200))
    draw.polygon([(8, 44), (20, 30), (32, 44)], fill=(240, 200, 20))
    return image


def load_ours(folder, dtype, quiet: bool):
    """minivlm's model of `folder` (tests and the debugging tutorial wrap this to plant a bug)."""
    import minivlm

    return minivlm.from_pretrained(folder, dtype=dtype, progress=False if quiet else None)


def load_theirs(folder, dtype, model_type: str, quiet: bool):
    """Transformers' model of `folder`, in `dtype`, in eval mode."""
    transformers = require_transformers()
    if quiet:
        transformers.utils.logging.disable_progress_bar()
    return transformers_class(model_type).from_pretrained(str(folder), dtype=dtype).eval()


def load_their_processor(folder, model_type: str):
    """Transformers' processor of the folder, with the PIL image classes (the ones minivlm matches)."""
    import transformers

    if model_type in ("llama", "mistral", "opt", "t5"):
        return transformers.AutoTokenizer.from_pretrained(str(folder))
    if model_type == "clip_vision_model":
        return transformers.CLIPImageProcessorPil.from_pretrained(str(folder))
    if model_type == "idefics":
        return transformers.IdeficsProcessor(
            image_processor=transformers.IdeficsImageProcessorPil.from_pretrained(str(folder)),
            tokenizer=transformers.AutoTokenizer.from_pretrained(str(folder)))
    return transformers.AutoProcessor.from_pretrained(str(folder), backend="pil")


def processor_call(model_type: str, config: dict, image, prompt: str) -> dict:
    """The keyword arguments both processors are called with."""
    if model_type in ("llama", "mistral", "opt", "t5"):
        return dict(text=prompt, return_tensors="pt")
    if model_type == "clip_vision_model":
        return dict(images=[image], return_tensors="pt")
    if model_type == "altclip":
        texts = [t.strip() for t in prompt.split(",") if t.strip()]
        return dict(text=texts, images=image, padding=True, return_tensors="pt")
    if model_type == "idefics":
        parts = prompt.split("<image>")
        sample = [parts[0]] if parts[0] else []
        for text in parts[1:]:
            sample += [image] + ([text] if text else [])
        if len(parts) == 1:
            sample = [image] + sample
        return dict(text=[sample], return_tensors="pt")
    if model_type == "kosmos-2":
        return dict(text=prompt, images=image, num_image_tokens=config["latent_query_num"], return_tensors="pt")
    if model_type == "llava_next" and "<image>" not in prompt:
        prompt = "<image>\n" + prompt
    return dict(text=prompt, images=image, return_tensors="pt")


def model_inputs(model_type: str, config: dict, inputs: dict, dtype) -> tuple:
    """(forward inputs, generate inputs or None, the final outputs to compare {row name: attribute})."""
    import torch

    forward = {k: (v.to(dtype) if v.is_floating_point() else v) for k, v in inputs.items()
               if isinstance(v, torch.Tensor)}
    if model_type == "clip_vision_model":
        return forward, None, {"last hidden state": "last_hidden_state", "pooled output": "pooler_output"}
    if model_type == "altclip":
        return forward, None, {"image embeds": "image_embeds", "text embeds": "text_embeds",
                               "logits per image": "logits_per_image"}
    text = config.get("text_config") or config
    generate = dict(forward)
    if text.get("model_type") == "t5":      # teacher forcing: the start token, then the prompt
        start = torch.full_like(forward["input_ids"][:, :1], text.get("decoder_start_token_id") or 0)
        forward["decoder_input_ids"] = torch.cat([start, forward["input_ids"][:, :-1]], 1)
    return forward, generate, {"logits": "logits"}


def model_bytes(folder: Path, dtype) -> int:
    """The memory one copy of the checkpoint's weights takes in `dtype` (floating-point tensors converted,
    the others as stored), from the safetensors headers alone. minivlm's loader reads the headers, so a
    damaged file (a header cut short, a truncated file) fails here, naming the file, before either
    library loads anything."""
    from ...loading import _SafetensorsFiles, checkpoint_files

    total = 0
    for header in _SafetensorsFiles(checkpoint_files(folder)).headers:
        for stored, shape, _, nbytes in header.values():
            total += nbytes if not stored.is_floating_point else math.prod(shape) * dtype.itemsize
    return total


def available_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (Linux), else None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def peak_rss() -> Optional[int]:
    try:
        import resource
    except ImportError:
        return None
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024     # Linux reports KiB


@contextlib.contextmanager
def default_dtype(dtype):
    """Transformers' Kosmos-2 builds masks in the default dtype; float64 runs need it float64."""
    import torch

    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(previous)


def check(target, *, image=None, prompt: Optional[str] = None, dtype: str = "float32", new_tokens: int = 5,
          quiet: bool = True, modify_ours: Optional[Callable] = None, stage_list: Optional[list] = None) -> Report:
    """Compare the two libraries on `target` (a checkpoint folder or an ARCH name) and return the Report.
    image: a PIL image or a path (default `default_image()`); prompt: default per model; modify_ours:
    a function called on minivlm's loaded model before it runs (the tests and the debugging tutorial
    plant bugs with it); stage_list: the stages to compare (a list of stages.Stage) instead of the
    model's stage map, e.g. the sub-modules of one layer to narrow a divergence down."""
    import torch

    from ...loading import DTYPE_NAMES
    from ...processing import load_processor
    from ..checkpoints import ARCHS, tiny_checkpoint
    from ..run import load_image
    from . import compare, stages

    require_transformers()
    if dtype not in ("float32", "float64"):
        raise ValueError(f"--dtype must be float32 or float64, got {dtype!r}")
    if isinstance(new_tokens, bool) or not isinstance(new_tokens, int) or new_tokens < 0:
        raise ValueError(f"--max-new-tokens must be an int >= 0, got {new_tokens!r}")
    torch_dtype = DTYPE_NAMES[dtype]
    with contextlib.ExitStack() as stack:
        if str(target) in ARCHS and not Path(target).exists():
            folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="minivlm-parity-"))) / str(target)
            tiny_checkpoint(str(target), folder)
        else:
            folder = Path(target)
            if not folder.is_dir():
                raise FileNotFoundError(
                    f"parity: {str(target)!r} is neither a local checkpoint folder nor one of {', '.join(ARCHS)}; "
                    f"nothing is downloaded (get a hub checkpoint with: hf download ID --local-dir DIR)")
            if not (folder / "config.json").is_file():
                raise FileNotFoundError(f"parity: {str(folder)!r} is not a checkpoint folder: it has no config.json")
        config = json.loads((folder / "config.json").read_text(encoding="utf-8"))
        model_type = config.get("model_type")
        stage_list = stages.stages(config) if stage_list is None else list(stage_list)
        need = model_bytes(folder, torch_dtype)
        free_now = available_bytes()
        if free_now is not None and need > free_now:
            raise MemoryError(f"parity: one copy of {folder.name} in {dtype} needs about {need / 2**30:.1f} GiB and "
                              f"this machine has {free_now / 2**30:.1f} GiB available (the two libraries run one "
                              f"after the other, so one copy is the peak); try --dtype float32 or a larger machine")
        if model_type in VISION:
            image = default_image() if image is None else (load_image(str(image)) if not hasattr(image, "convert") else image)
        elif image is not None:
            raise ValueError(f"--image: a {model_type} checkpoint reads no picture")
        if prompt is None:
            prompt = DEFAULT_PROMPTS.get(model_type, "")
        if model_type != "clip_vision_model" and not prompt.strip():
            raise ValueError("--prompt: expected some text, got an empty prompt")
        tol = compare.TOLERANCES[torch_dtype]

        ours_proc = load_processor(folder)
        theirs_proc = load_their_processor(folder, model_type)
        kwargs = processor_call(model_type, config, image, prompt)
        theirs_inputs = dict(theirs_proc(**kwargs))
        if model_type == "clip_vision_model":    # minivlm's image processors return tensors as they are
            kwargs.pop("return_tensors")
        inputs = dict(ours_proc(**kwargs))
        rows = compare.compare_inputs(inputs, theirs_inputs, tol)
        forward, generate, outputs = model_inputs(model_type, config, inputs, torch_dtype)
        if model_type not in GENERATIVE:
            new_tokens = 0

        # Transformers first, then minivlm: never both models in memory at once
        with default_dtype(torch_dtype):
            theirs_model = load_theirs(folder, torch_dtype, model_type, quiet)
            theirs = compare.record(theirs_model, [s.theirs for s in stage_list], forward, outputs, generate,
                                    new_tokens)
            del theirs_model
            gc.collect()                  # its memory goes back before minivlm loads
        ours_model = load_ours(folder, torch_dtype, quiet)
        if modify_ours is not None:
            modify_ours(ours_model)
        ours = compare.record(ours_model, [s.ours for s in stage_list], forward, outputs, generate, new_tokens)
        del ours_model
        gc.collect()

    text_mask = inputs.get("attention_mask")
    text_mask = text_mask.bool() if isinstance(text_mask, torch.Tensor) else None
    for s in stage_list:
        a, b = ours.stages[s.ours], theirs.stages[s.theirs]
        mask = None
        if (s.text and text_mask is not None and b is not None and b.dim() >= 2
                and tuple(b.shape[:2]) == tuple(text_mask.shape)):
            mask = text_mask     # compare real positions only: pad positions are never read
        rows.append(compare.compare_tensors(s.name, s.ours, s.theirs, a, b, tol, mask))
    for name in outputs:
        a, b = ours.outputs[name], theirs.outputs[name]
        mask = text_mask if name == "logits" and text_mask is not None and tuple(b.shape[:2]) == tuple(text_mask.shape) else None
        rows.append(compare.compare_tensors(name, name, name, a, b, tol, mask))
    if model_type == "altclip":
        rows.append(compare.compare_tensors("probabilities", "softmax", "softmax", ours.outputs["logits per image"].softmax(-1),
                                            theirs.outputs["logits per image"].softmax(-1), tol))
    tokenizer = getattr(ours_proc, "tokenizer", ours_proc)
    decode = getattr(tokenizer, "decode", None)
    rows += compare.compare_greedy(ours, theirs, tol, decode)
    return Report(str(target), model_type, dtype, rows, peak_rss(), need,
                  {"minivlm": ours.tokens, "transformers": theirs.tokens})


def format_report(report: Report) -> str:
    """The table `minivlm parity` prints."""
    first = report.first_failure
    name_width = max(len(r.stage) for r in report.rows) + 2
    lines = [f"minivlm parity: {report.target} ({report.model_type}, {report.dtype}, tolerance "
             f"{compare_tol(report):.1e} of each stage's "
             f"largest |value|)",
             f"{'stage':<{name_width}}{'shape':<18}{'max |diff|':>11}{'rel':>10}{'tol':>10}  result"]
    for r in report.rows:
        shape = "x".join(map(str, r.shape)) if r.shape is not None else "-"
        diff = f"{r.max_abs:.2e}" if r.max_abs is not None else "-"
        rel = f"{r.max_rel:.2e}" if r.max_rel is not None else "-"
        tol = f"{r.tolerance:.1e}" if r.tolerance else "exact"
        result = {True: "pass", False: "FAIL", None: "-"}[r.passed]
        if r.stage == first:
            result += "  <- first divergence"
        note = f"  {r.note}" if r.note else ""
        lines.append(f"{r.stage:<{name_width}}{shape:<18}{diff:>11}{rel:>10}{tol:>10}  {result}{note}")
    if first is None:
        lines.append(f"all {sum(r.passed is True for r in report.rows)} compared stages agree")
    else:
        row = next(r for r in report.rows if r.stage == first)
        n_fail = sum(r.passed is False for r in report.rows)
        lines.append(f"{n_fail} stage(s) fail; the first is {first!r}: minivlm module {row.ours!r}, Transformers "
                     f"module {row.theirs!r}")
    if report.peak_rss_bytes:
        lines.append(f"peak memory {_size(report.peak_rss_bytes)} (one copy of the weights in {report.dtype}: "
                     f"{_size(report.model_bytes)})")
    return "\n".join(lines)


def _size(n: int) -> str:
    return f"{n / 2**30:.2f} GiB" if n >= 2**30 else f"{n / 2**20:.1f} MiB"


def compare_tol(report: Report) -> float:
    import torch

    from . import compare

    return compare.TOLERANCES[torch.float64 if report.dtype == "float64" else torch.float32]


def run_command(args) -> int:
    report = check(args.target, image=args.image, prompt=args.prompt, dtype=args.dtype,
                   new_tokens=args.max_new_tokens, quiet=args.quiet)
    print(format_report(report))
    if args.json:
        Path(args.json).write_text(json.dumps(report.to_dict(), indent=1))
    return 0 if report.passed else 1


__all__ = ["check", "Report", "format_report", "add_parser"]
