"""`minivlm generate` and `minivlm classify`: run a checkpoint folder on your own pictures.

    minivlm generate --model DIR --image cat.png --prompt "What is in the picture?" --chat
    minivlm classify --model DIR --image cat.png --labels "a cat,a dog,a car"

generate: one of the four generative models (model_type llava_next, blip-2, kosmos-2, idefics) continues
the prompt, reading the images. The new text (not the prompt) is printed to stdout as it is generated.
- The images: LLaVA-NeXT and IDEFICS read one or more, put where the prompt writes `<image>` (one mark
  per --image, in order; a prompt without marks gets the images in front: "<image>\\n" per image for
  LLaVA-NeXT). BLIP-2 and Kosmos-2 read exactly one, and their prompts hold no mark.
- --chat renders the checkpoint's chat template on one user message (an image part per --image, then the
  prompt) with the assistant's turn opened; the template writes the image marks.
- Search: greedy by default; --sample (with --temperature, --top-p, --seed) draws the tokens; --num-beams
  N > 1 runs beam search, whose text is known only at the end (printed then, without streaming).
- Kosmos-2 then prints the caption of the whole text (prompt and generation, tags removed) and one line
  per grounded entity: the phrase, its character span in the caption, its boxes as (x0, y0, x1, y1)
  fractions of the image's width and height. --boxes-out PNG draws them on the image.
- --json PATH also writes the prompt as fed to the processor, the token ids and the text.

classify: AltCLIP scores every image against every label (--labels "a cat,a dog": comma-separated) and
prints, per image, the labels by probability (softmax over the labels of logits_per_image).

Both: --dtype (float32 by default), --device (cpu, cuda), --reference (every kernel on its naive
reference math: `minivlm.use_reference()`), --quiet, --debug. Progress bars go to stderr: one while a
checkpoint over 256 MiB loads, and one counting generate's new tokens, which is shown only when stdout
is not a terminal (on a terminal the streamed text is the progress, and a bar there would overwrite it)
and not with beam search. --quiet shows no bar.

Nothing is downloaded: --model is a local folder (from `hf download ID --local-dir DIR`). Bad input is
reported before the model loads where it can be: one line naming the argument, what was expected and
what arrived (cli.py prints it and exits with 1; --debug shows the traceback).

This module imports torch and the models only inside the functions that run, so that `minivlm --help`
answers at once.
"""
from __future__ import annotations

import argparse
import json
import re
import sys
from contextlib import nullcontext
from pathlib import Path

#: The models generate runs (config.json's model_type -> the name in messages).
GENERATIVE = {"llava_next": "LLaVA-NeXT", "blip-2": "BLIP-2", "kosmos-2": "Kosmos-2", "idefics": "IDEFICS"}
#: The models that read exactly one image.
ONE_IMAGE = ("blip-2", "kosmos-2")
IMAGE_MARK = "<image>"
DTYPES = ("float32", "bfloat16", "float16", "float64")
# What a hub id looks like: owner/name, letters, digits, '-', '_', '.'.
HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


# -- the parsers ----------------------------------------------------------------------------------------

def add_generate_parser(subparsers, common) -> None:
    p = subparsers.add_parser(
        "generate", parents=[common], help="continue a prompt about images with a generative checkpoint",
        description="Generate text with a LLaVA-NeXT, BLIP-2, Kosmos-2 or IDEFICS checkpoint folder, printing "
                    "it as it comes. The images go where the prompt writes <image> (one per --image, in "
                    "order); LLaVA-NeXT and IDEFICS put them in front of a prompt without any (LLaVA-NeXT: "
                    "'<image>\\n' per image), BLIP-2 and Kosmos-2 read one image and no mark. The bar "
                    "counting new tokens (stderr) shows only when stdout is not a terminal: there the "
                    "streamed text is the progress.")
    _add_model_options(p)
    p.add_argument("--prompt", required=True, metavar="TEXT",
                   help="the text to continue, with an <image> mark where each image goes (see above and --chat)")
    p.add_argument("--chat", action="store_true",
                   help="apply the checkpoint's chat template: a user message of the images and the prompt, "
                        "then the assistant's turn")
    p.add_argument("--max-new-tokens", type=_positive_int, metavar="N",
                   help="at most N new tokens (default: the checkpoint's generation_config, else 20)")
    p.add_argument("--sample", action="store_true", help="draw the tokens instead of taking the likeliest")
    p.add_argument("--temperature", type=_positive_float, metavar="T", help="with --sample: divide the logits by T")
    p.add_argument("--top-p", type=_probability, metavar="P",
                   help="with --sample: draw from the likeliest tokens holding probability P")
    p.add_argument("--seed", type=int, metavar="S", help="with --sample: torch.manual_seed(S) first")
    p.add_argument("--num-beams", type=_positive_int, metavar="N",
                   help="beam search with N beams (N > 1: the text is printed at the end)")
    p.add_argument("--json", metavar="PATH", help="also write the prompt, token ids and text to PATH as JSON")
    p.add_argument("--boxes-out", metavar="PNG", help="Kosmos-2: draw the entities' boxes on the image, save as PNG")
    # classify's option, taken only to say in one line where it belongs
    p.add_argument("--labels", help=argparse.SUPPRESS)
    p.set_defaults(func=run_generate)


def add_classify_parser(subparsers, common) -> None:
    p = subparsers.add_parser(
        "classify", parents=[common], help="rank labels for images with an AltCLIP checkpoint",
        description="Score each image against each label with an AltCLIP checkpoint folder and print, per "
                    "image, the labels by probability (softmax over the labels).")
    _add_model_options(p)
    p.add_argument("--labels", required=True, help='comma-separated labels, e.g. "a cat,a dog"')
    p.add_argument("--json", metavar="PATH", help="also write the probabilities and logits to PATH as JSON")
    p.add_argument("--prompt", help=argparse.SUPPRESS)      # generate's option: see run_classify
    p.set_defaults(func=run_classify)


def _add_model_options(p) -> None:
    p.add_argument("--model", required=True, metavar="DIR",
                   help="a local checkpoint folder (config.json, *.safetensors, the tokenizer); nothing is "
                        "downloaded: get one with `hf download ID --local-dir DIR`")
    p.add_argument("--image", required=True, action="append", metavar="PATH", help="an image file (repeatable)")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="the weights' dtype (default float32)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="where the model runs")
    p.add_argument("--reference", action="store_true", help="run every kernel on the naive reference math")


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0, got {text}")
    return value


def _probability(text: str) -> float:
    value = float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be in (0, 1], got {text}")
    return value


# -- generate -------------------------------------------------------------------------------------------

def run_generate(args) -> int:
    import torch

    import minivlm
    from minivlm.generation.search import generated_length
    from minivlm.processing import load_processor

    if args.labels is not None:
        raise ValueError("--labels: generate continues a prompt and ranks no labels; to rank labels for a "
                         "picture, use `minivlm classify --model DIR --image PATH --labels \"a cat,a dog\"` with "
                         "an AltCLIP checkpoint")
    folder, model_type = check_model_folder(args.model, "generate")
    if model_type == "altclip":
        raise ValueError(f"--model: {str(folder)!r} is an AltCLIP checkpoint, which ranks labels and writes no "
                         f"text: use `minivlm classify --model DIR --image PATH --labels \"a cat,a dog\"`")
    if model_type not in GENERATIVE:
        raise ValueError(f"--model: {str(folder)!r} has model_type {model_type!r}; minivlm generate runs "
                         f"{', '.join(GENERATIVE)}")
    name = GENERATIVE[model_type]
    if not args.prompt.strip():
        raise ValueError(f"--prompt: expected some text, got {args.prompt!r}")
    if model_type in ONE_IMAGE and len(args.image) != 1:
        raise ValueError(f"--image: {name} reads exactly one image, got {len(args.image)}")
    if args.boxes_out is not None and model_type != "kosmos-2":
        raise ValueError(f"--boxes-out: only Kosmos-2 grounds phrases in boxes; this is a {name} checkpoint")
    if not args.sample:
        for option, value in (("--temperature", args.temperature), ("--top-p", args.top_p), ("--seed", args.seed)):
            if value is not None:
                raise ValueError(f"{option}: applies only with --sample (greedy and beam search draw nothing)")
    check_device(args.device)
    images = [load_image(path) for path in args.image]

    processor = load_from(folder, load_processor)
    prompt = build_prompt(processor, model_type, args.prompt, len(images), args.chat)
    model = load_from(folder, minivlm.from_pretrained, dtype=args.dtype, device=args.device,
                      progress=False if args.quiet else None)
    inputs = build_inputs(processor, model, model_type, prompt, images)
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    prompt_length = inputs["input_ids"].shape[1]

    options = dict(max_new_tokens=args.max_new_tokens, num_beams=args.num_beams)
    if args.sample:
        options.update(do_sample=True, temperature=args.temperature, top_p=args.top_p)
        if args.seed is not None:
            torch.manual_seed(args.seed)
    settings = model.generation_config.merged(**options)
    check_positions(model, prompt_length)
    start = 1 if model.is_encoder_decoder else prompt_length     # where the new tokens start in the output
    new_tokens = generated_length(model, settings, inputs["input_ids"]) - start
    check_positions(model, prompt_length, new_tokens)

    streaming = settings.num_beams == 1
    bar = None
    if streaming and not args.quiet and not sys.stdout.isatty():
        from tqdm import tqdm
        bar = tqdm(total=new_tokens, desc="generating", unit="token", file=sys.stderr)
    printer = TextPrinter(processor, bar) if streaming else None
    try:
        with minivlm.use_reference() if args.reference else nullcontext():
            sequences = model.generate(**inputs, **options, streamer=printer)
    finally:
        if bar is not None:
            bar.close()
    generated = sequences[0, start:].tolist()
    text = processor.decode(generated, skip_special_tokens=True)
    if not streaming:
        print(text, end="")
    print()

    result = {"model": str(folder), "model_type": model_type, "images": list(args.image), "prompt": prompt,
              "input_ids": inputs["input_ids"][0].tolist(), "generated_ids": generated, "text": text}
    if model_type == "kosmos-2":
        # The caption of the whole sequence: a phrase of the prompt may be grounded too.
        caption, entities = processor.post_process_generation(
            processor.decode(sequences[0].tolist(), skip_special_tokens=True))
        for line in format_grounding(caption, entities):
            print(line)
        result["caption"] = caption
        result["entities"] = [{"phrase": e.phrase, "span": list(e.span), "boxes": [list(b) for b in e.boxes]}
                              for e in entities]
        if args.boxes_out is not None:
            from minivlm.grounding import draw_boxes
            draw_boxes(images[0], entities).save(args.boxes_out, format="PNG")
    if args.json is not None:
        write_json(args.json, result)
    return 0


class TextPrinter:
    """generate's streamer: prints the new text to stdout as the tokens come and advances a progress bar
    (tqdm, or None; the caller closes it) by one per new token.

    generate puts the prompt first (skipped), then each new token. The new tokens are decoded together at
    every step, so the printed pieces add up to exactly decode(new tokens, skip_special_tokens=True). A
    piece is printed up to its last space or newline (the last word may still change with the next
    token), and nothing while the text ends in an unfinished character (U+FFFD)."""

    def __init__(self, processor, bar=None):
        self.processor, self.bar = processor, bar
        self.tokens, self.printed, self.prompt_seen = [], 0, False

    def put(self, ids):
        if not self.prompt_seen:
            self.prompt_seen = True
            return
        self.tokens += ids.reshape(-1).tolist()
        if self.bar is not None:
            self.bar.update(ids.numel())
        text = self.processor.decode(self.tokens, skip_special_tokens=True)
        if text.endswith("\ufffd"):
            return
        cut = max(text.rfind(" "), text.rfind("\n")) + 1
        if cut > self.printed:
            print(text[self.printed:cut], end="", flush=True)
            self.printed = cut

    def end(self):
        text = self.processor.decode(self.tokens, skip_special_tokens=True)
        print(text[self.printed:], end="", flush=True)
        self.printed = len(text)


def build_prompt(processor, model_type: str, prompt: str, n_images: int, chat: bool) -> str:
    """The text the processor reads: the chat template's rendering (with --chat) or the prompt, with the
    image marks checked (LLaVA-NeXT: "<image>\\n" per image put in front of a prompt without marks)."""
    if chat:
        if not processor.chat_template:
            raise ValueError("--chat: expected a checkpoint with a chat template (chat_template.jinja or the "
                             "tokenizer's), and this one has none: run without --chat and write the prompt in "
                             "the model's format")
        content = [{"type": "image"} for _ in range(n_images)] + [{"type": "text", "text": prompt}]
        prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    marks = prompt.count(IMAGE_MARK)
    if model_type in ONE_IMAGE:
        if marks:
            raise ValueError(f"--prompt: {GENERATIVE[model_type]} reads its image without a mark; expected no "
                             f"{IMAGE_MARK} in the prompt, got {marks}")
        return prompt
    if marks == 0 and not chat:                      # no marks: the images go in front
        mark = IMAGE_MARK + "\n" if model_type == "llava_next" else IMAGE_MARK
        return mark * n_images + prompt
    if marks != n_images:
        raise ValueError(f"--prompt: expected one {IMAGE_MARK} per --image ({n_images}), got {marks} "
                         f"{IMAGE_MARK} mark(s)" + (" (the chat template writes one per image)" if chat else ""))
    return prompt


def build_inputs(processor, model, model_type: str, prompt: str, images: list) -> dict:
    """The processor's call for each model -> the tensors generate reads."""
    if model_type == "llava_next":
        return processor(text=prompt, images=images, return_tensors="pt")
    if model_type == "blip-2":
        return processor(text=prompt, images=images[0], return_tensors="pt")
    if model_type == "kosmos-2":
        return processor(text=prompt, images=images[0], num_image_tokens=model.config.latent_query_num,
                         return_tensors="pt")
    return processor(text=[interleave(prompt, images)], return_tensors="pt")       # IDEFICS


def interleave(prompt: str, images: list) -> list:
    """IDEFICS's sample: the prompt's pieces between its <image> marks, with the images in their place
    ("a <image> b" -> ["a ", image, " b"]); empty pieces are left out."""
    pieces = prompt.split(IMAGE_MARK)
    sample = [pieces[0]]
    for image, piece in zip(images, pieces[1:]):
        sample += [image, piece]
    return [item for item in sample if not isinstance(item, str) or item]


def check_positions(model, prompt_length: int, new_tokens: int = 0) -> None:
    """The prompt and the new tokens must fit in the text model's positions (max_position_embeddings)."""
    config = getattr(model.config, "text_config", None) or model.config
    positions = getattr(config, "max_position_embeddings", None)
    if positions is None:
        return
    if prompt_length >= positions:
        raise ValueError(f"--prompt: the prompt is {prompt_length} tokens long (image tokens included), and the "
                         f"text model has {positions} positions (max_position_embeddings): shorten the prompt")
    if prompt_length + new_tokens > positions:
        raise ValueError(f"--max-new-tokens: the prompt's {prompt_length} tokens and {new_tokens} new ones need "
                         f"{prompt_length + new_tokens} positions, and the text model has {positions} "
                         f"(max_position_embeddings): ask for at most {positions - prompt_length} new tokens")


def format_grounding(caption: str, entities) -> list:
    """Kosmos-2's caption and entities as printed lines:

        caption: An image of a snowman warming himself by a fire.
        entities:
          "a snowman"  chars 12-21  (0.391, 0.047, 0.984, 0.828)
    """
    lines = [f"caption: {caption}", "entities:" if entities else "entities: none"]
    for phrase, (start, end), boxes in entities:
        corners = " ".join("(" + ", ".join(f"{v:.3f}" for v in box) + ")" for box in boxes)
        lines.append(f"  {json.dumps(phrase, ensure_ascii=False)}  chars {start}-{end}  {corners}")
    return lines


# -- classify -------------------------------------------------------------------------------------------

def run_classify(args) -> int:
    import torch

    import minivlm
    from minivlm.processing import load_processor

    if args.prompt is not None:
        raise ValueError("--prompt: classify (AltCLIP) reads no prompt: give the texts to rank as --labels "
                         "\"a cat,a dog\"; to continue a prompt, use `minivlm generate` with a generative checkpoint")
    folder, model_type = check_model_folder(args.model, "classify")
    if model_type in GENERATIVE:
        raise ValueError(f"--model: {str(folder)!r} is a {GENERATIVE[model_type]} checkpoint, which writes text: "
                         f"use `minivlm generate --model DIR --image PATH --prompt TEXT`; classify ranks labels "
                         f"with AltCLIP")
    if model_type != "altclip":
        raise ValueError(f"--model: {str(folder)!r} has model_type {model_type!r}; minivlm classify runs altclip")
    labels = parse_labels(args.labels)
    check_device(args.device)
    images = [load_image(path) for path in args.image]

    processor = load_from(folder, load_processor)
    model = load_from(folder, minivlm.from_pretrained, dtype=args.dtype, device=args.device,
                      progress=False if args.quiet else None)
    inputs = processor(text=labels, images=images, padding=True, return_tensors="pt")
    positions = model.config.text_config.max_position_embeddings - model.config.text_config.pad_token_id - 1
    if inputs["input_ids"].shape[1] > positions:     # XLM-R counts positions from pad_token_id + 1
        raise ValueError(f"--labels: the longest label is {inputs['input_ids'].shape[1]} tokens long, and the "
                         f"text model reads at most {positions}: shorten it")
    inputs = {k: v.to(args.device) for k, v in inputs.items()}
    with torch.inference_mode(), minivlm.use_reference() if args.reference else nullcontext():
        logits = model(**inputs).logits_per_image.float().cpu()         # (images, labels)
    probabilities = logits.softmax(dim=-1)

    result = {"model": str(folder), "model_type": model_type, "labels": labels, "images": []}
    for path, row, p in zip(args.image, logits, probabilities):
        order = p.argsort(descending=True).tolist()
        print(path)
        for i in order:
            print(f"  {p[i].item():.3f}  {labels[i]}")
        result["images"].append({"image": path, "ranking": [
            {"label": labels[i], "probability": p[i].item(), "logit": row[i].item()} for i in order]})
    if args.json is not None:
        write_json(args.json, result)
    return 0


def parse_labels(text: str) -> list:
    """ "a cat, a dog" -> ["a cat", "a dog"]; an empty label is an error."""
    labels = [label.strip() for label in text.split(",")]
    empty = [i + 1 for i, label in enumerate(labels) if not label]
    if empty:
        raise ValueError(f"--labels: expected comma-separated labels, none empty; got {text!r}, whose label(s) "
                         f"{', '.join(map(str, empty))} (counting from 1) are empty")
    return labels


# -- what both commands check ---------------------------------------------------------------------------

def check_model_folder(path: str, command: str):
    """--model -> (the folder, its config.json's model_type), with a clear error for a path that is no
    checkpoint folder (a hub id among them: nothing is downloaded)."""
    from minivlm.models import MODEL_TYPES

    folder = Path(path)
    if not folder.exists():
        if HUB_ID.match(path):
            raise FileNotFoundError(
                f"--model: {path!r} is not a local folder; it looks like a Hugging Face hub id, and minivlm "
                f"downloads nothing: get the folder with `hf download {path} --local-dir DIR`, then pass "
                f"--model DIR")
        raise FileNotFoundError(f"--model: expected a local checkpoint folder, got {path!r}, which does not exist")
    if not folder.is_dir():
        raise NotADirectoryError(f"--model: expected a checkpoint folder, got {path!r}, which is a file")
    config = folder / "config.json"
    if not config.is_file():
        raise FileNotFoundError(f"--model: {path!r} is not a checkpoint folder: it has no config.json")
    try:
        model_type = json.loads(config.read_text(encoding="utf-8")).get("model_type")
    except (ValueError, AttributeError) as error:
        raise ValueError(f"--model: {str(config)!r} is not a JSON object ({error})") from None
    known = list(GENERATIVE) + ["altclip"]
    if model_type not in known:
        others = " (a tower on its own)" if model_type in MODEL_TYPES else ""
        raise ValueError(f"--model: {str(config)!r} has model_type {model_type!r}{others}; minivlm {command} "
                         f"reads {', '.join(known)}")
    return folder, model_type


def load_from(folder, load, **options):
    """load(folder, **options) (the processor, the model), its errors (a damaged file, a missing tokenizer)
    prefixed with --model, which they are about."""
    try:
        return load(folder, **options)
    except (OSError, ValueError) as error:
        try:
            named = type(error)(f"--model: {error}")
        except Exception:          # an exception type that takes other arguments
            named = ValueError(f"--model: {error}")
        raise named from error


def check_device(device: str) -> None:
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"--device: expected a device torch can reach, got 'cuda', and this torch "
                           f"({torch.__version__}) sees no CUDA GPU: use --device cpu")


def load_image(path: str):
    """--image PATH -> an RGB PIL image, or an error naming the path."""
    from PIL import Image, UnidentifiedImageError

    if not Path(path).is_file():
        raise FileNotFoundError(f"--image: expected an image file, got {path!r}, which "
                                f"{'is a folder' if Path(path).is_dir() else 'does not exist'}")
    try:
        with Image.open(path) as image:
            return image.convert("RGB")
    except (UnidentifiedImageError, OSError, ValueError, SyntaxError) as error:
        message = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise ValueError(f"--image: {path!r} cannot be decoded as an image ({message})") from None


def write_json(path: str, data: dict) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(data, f, indent=2, ensure_ascii=False)
        f.write("\n")
