"""`minivlm generate` and `minivlm classify` on tiny random checkpoint folders, against Transformers.

Each folder is written once per module by Transformers (minivlm.tools.checkpoints.tiny_checkpoint). The
commands run in-process (`cli.main([...])`, output read with capsys); one generate run and one error go
through a subprocess, as a user runs them. Transformers reads the same folder, picture and prompt:
`from_pretrained(folder, dtype=torch.float64)`, its AutoProcessor (backend="pil") on the same inputs,
greedy `generate`, the new tokens decoded with skip_special_tokens=True. Token ids and text must be equal;
numbers (AltCLIP's probabilities) agree to a stated tolerance.
"""
import contextlib
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from minivlm.grounding import Entity
from minivlm.tools import cli, run
from minivlm.tools.checkpoints import tiny_checkpoint
from minivlm.tools.parity import default_dtype

transformers = pytest.importorskip("transformers")
transformers.utils.logging.set_verbosity_error()
transformers.utils.logging.disable_progress_bar()

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (ROOT, os.environ.get("PYTHONPATH")) if p))

GENERATIVE = ("llava_next", "blip-2", "kosmos-2", "idefics")
HF_CLASSES = {"llava_next": "LlavaNextForConditionalGeneration", "blip-2": "Blip2ForConditionalGeneration",
              "kosmos-2": "Kosmos2ForConditionalGeneration", "idefics": "IdeficsForVisionText2Text",
              "altclip": "AltCLIPModel"}
NEW_TOKENS = 20      # as many as the checkpoints' default, so that a run without --max-new-tokens compares
PROMPT = "A photo of"

# Greedy search in float32 picks Transformers' float64 tokens wherever float32 rounding cannot swap the
# two likeliest: the float32 model moves each logit by at most ~1e-6 of the step's largest |logit|
# (measured on these 2-4 layer models: 3e-7..6e-7), so a step whose top-2 margin is over 1e-4 of that
# scale (a factor > 100) cannot flip. The test asserts every step's margin exceeds it before comparing.
MARGIN_REL = 1e-4
# AltCLIP's probabilities in float32 against Transformers' float32: both round the same 2-layer towers,
# maybe in different orders (GEMM blockings, minivlm's attention kernel against SDPA), which moves the
# normalized embeddings by ~1e-7 and the logits (cosines scaled by exp(logit_scale) ~ 14) by ~1e-6; a
# softmax probability moves by at most half the largest logit change. 1e-5 leaves a factor of ~10
# (measured here: 0, the same CPU path on both sides).
PROB_TOL = 1e-5


# -- folders, pictures, Transformers' answers -------------------------------------------------------------

@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """folders[arch]: the tiny checkpoint folder of arch, written on first use."""
    root = tmp_path_factory.mktemp("checkpoints")

    class Folders(dict):
        def __missing__(self, arch):
            self[arch] = tiny_checkpoint(arch, root / arch)
            return self[arch]

    return Folders()


@pytest.fixture(scope="module")
def pictures(tmp_path_factory):
    """Two small noise pictures of different shapes (PNG), and a text file named x.png."""
    root = tmp_path_factory.mktemp("pictures")
    rng = np.random.default_rng(0)
    paths = {}
    for name, (h, w) in (("a.png", (24, 32)), ("b.png", (40, 20))):
        Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(root / name)
        paths[name] = str(root / name)
    (root / "x.png").write_text("not a picture\n")
    paths["x.png"] = str(root / "x.png")
    return paths


def rgb(path):
    with Image.open(path) as image:
        return image.convert("RGB")


# Transformers' Kosmos-2 builds its causal mask with torch.full(..., finfo(float64).min) in the default
# dtype, which overflows float32: it generates in float64 only with float64 as the default dtype
# (default_dtype: minivlm.tools.parity's).


_HF_MODELS = {}


def hf_model(folder, arch):
    """Transformers' model (float64) and processor of a folder, loaded once per folder."""
    if folder not in _HF_MODELS:
        cls = getattr(transformers, HF_CLASSES[arch])
        model = cls.from_pretrained(str(folder), dtype=torch.float64).eval()
        processor = transformers.AutoProcessor.from_pretrained(str(folder), backend="pil")
        _HF_MODELS[folder] = model, processor
    return _HF_MODELS[folder]


def hf_generate(folder, arch, text, images, new_tokens=NEW_TOKENS, num_beams=1):
    """Transformers' greedy (or beam) generation: text is the prompt string, or IDEFICS's sample list.
    Returns the prompt's ids, the new ids, their text, the text of the whole sequence and each step's
    top-2 margin relative to its largest |score|."""
    model, processor = hf_model(folder, arch)
    if arch == "idefics":
        inputs = processor(text=[text], return_tensors="pt")
    elif arch == "kosmos-2":
        inputs = processor(text=text, images=images[0], num_image_tokens=model.config.latent_query_num,
                           return_tensors="pt")
    elif arch == "blip-2":
        inputs = processor(text=text, images=images[0], return_tensors="pt")
    else:
        inputs = processor(text=text, images=images, return_tensors="pt")
    inputs = {k: v.double() if v.is_floating_point() else v for k, v in inputs.items()}
    with default_dtype(torch.float64) if arch == "kosmos-2" else contextlib.nullcontext():
        out = model.generate(**inputs, max_new_tokens=new_tokens, do_sample=False, num_beams=num_beams,
                             output_scores=True, return_dict_in_generate=True)
    T = inputs["input_ids"].shape[1]
    new = out.sequences[0, T:].tolist()
    top2 = [s[0].float().topk(2).values for s in out.scores]
    margins = [((a - b) / s[0].abs().max()).item() for (a, b), s in zip(top2, out.scores)]
    return dict(prompt_ids=inputs["input_ids"][0].tolist(), ids=new,
                text=processor.decode(new, skip_special_tokens=True),
                full_text=processor.decode(out.sequences[0], skip_special_tokens=True), margins=margins)


def cli_run(capsys, *argv):
    """cli.main(argv) in-process -> (exit status, stdout, stderr)."""
    status = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return status, out, err


def generate(capsys, folder, images, prompt, *options):
    argv = ["generate", "--model", folder, "--prompt", prompt, "--quiet", *options]
    for image in images:
        argv += ["--image", image]
    status, out, err = cli_run(capsys, *argv)
    assert status == 0 and err == "", err
    return out


# -- generate against Transformers ------------------------------------------------------------------------

# What each model reads for PROMPT and picture a.png: the text the CLI gives the processor, and the
# processor's text (IDEFICS: the interleaved sample) on Transformers' side.
def expected_prompt(arch, image):
    if arch == "llava_next":
        return "<image>\n" + PROMPT, "<image>\n" + PROMPT        # the CLI puts the mark in front
    if arch == "idefics":
        return "<image>" + PROMPT, [image, PROMPT]
    return PROMPT, PROMPT


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("arch", GENERATIVE)
def test_generate_prints_transformers_text(arch, dtype, folders, pictures, capsys, tmp_path):
    folder, image = folders[arch], pictures["a.png"]
    fed, hf_text = expected_prompt(arch, rgb(image))
    theirs = hf_generate(folder, arch, hf_text, [rgb(image)])
    if dtype == "float32":
        assert min(theirs["margins"]) > MARGIN_REL, (arch, theirs["margins"])
    assert theirs["text"].strip(), "Transformers generated no text: the test would compare nothing"
    out = generate(capsys, folder, [image], PROMPT, "--dtype", dtype, "--max-new-tokens", NEW_TOKENS,
                   "--json", tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["prompt"] == fed
    assert data["input_ids"] == theirs["prompt_ids"]
    assert data["generated_ids"] == theirs["ids"]
    assert data["text"] == theirs["text"]
    assert data["model"] == str(folder) and data["model_type"] == arch and data["images"] == [image]
    if arch != "kosmos-2":
        assert out == theirs["text"] + "\n"
        assert set(data) == {"model", "model_type", "images", "prompt", "input_ids", "generated_ids", "text"}
    else:
        caption, entities = hf_model(folder, arch)[1].post_process_generation(theirs["full_text"])
        assert out == theirs["text"] + "\n" + "\n".join(run.format_grounding(caption, entities)) + "\n"
        assert data["caption"] == caption
        assert [(e["phrase"], tuple(e["span"]), [tuple(b) for b in e["boxes"]]) for e in data["entities"]] == \
            [(p, tuple(s), [tuple(b) for b in boxes]) for p, s, boxes in entities]


@pytest.mark.parametrize("arch", ["llava_next", "idefics"])
def test_generate_chat_template(arch, folders, pictures, capsys, tmp_path):
    """--chat: one user message of the images and the prompt, the assistant's turn opened; IDEFICS with
    two pictures (the template writes a mark per image)."""
    folder = folders[arch]
    paths = [pictures["a.png"]] + ([pictures["b.png"]] if arch == "idefics" else [])
    images = [rgb(p) for p in paths]
    processor = hf_model(folder, arch)[1]
    content = [{"type": "image"} for _ in images] + [{"type": "text", "text": PROMPT}]
    # (Transformers' IdeficsProcessor does not read the folder's template: it is given explicitly.)
    rendered = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True,
                                             tokenize=False, chat_template=(folder / "chat_template.jinja").read_text())
    if arch == "idefics":
        assert rendered == f"User:<image><image> {PROMPT}<end_of_utterance>\nAssistant:"
        hf_text = ["User:", images[0], images[1], f"{PROMPT}<end_of_utterance>\nAssistant:"]
    else:
        assert rendered == f"USER: <image>\n{PROMPT} ASSISTANT:"
        hf_text = rendered
    theirs = hf_generate(folder, arch, hf_text, images)
    out = generate(capsys, folder, paths, PROMPT, "--chat", "--dtype", "float64", "--max-new-tokens", NEW_TOKENS,
                   "--json", tmp_path / "out.json")
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["prompt"] == rendered
    assert data["input_ids"] == theirs["prompt_ids"] and data["generated_ids"] == theirs["ids"]
    assert out == theirs["text"] + "\n"


@pytest.mark.parametrize("arch", ["llava_next", "idefics"])
def test_generate_two_images_in_mark_order(arch, folders, pictures, capsys):
    """Marks in the prompt place the images (IDEFICS: between the texts); LLaVA-NeXT without marks gets
    "<image>\\n" per image in front."""
    folder, paths = folders[arch], [pictures["a.png"], pictures["b.png"]]
    a, b = (rgb(p) for p in paths)
    if arch == "idefics":
        prompt, hf_text = "<image>A cat<image>and a dog", [a, "A cat", b, "and a dog"]
    else:
        prompt, hf_text = PROMPT, "<image>\n<image>\n" + PROMPT
    theirs = hf_generate(folder, arch, hf_text, [a, b])
    out = generate(capsys, folder, paths, prompt, "--dtype", "float64", "--max-new-tokens", NEW_TOKENS)
    assert out == theirs["text"] + "\n"


def test_generate_beam_search(folders, pictures, capsys):
    """--num-beams 3: no streaming; the text printed at the end is Transformers' beam search's."""
    folder, image = folders["llava_next"], pictures["a.png"]
    theirs = hf_generate(folder, "llava_next", "<image>\n" + PROMPT, [rgb(image)], new_tokens=8, num_beams=3)
    out = generate(capsys, folder, [image], PROMPT, "--dtype", "float64", "--max-new-tokens", 8, "--num-beams", 3)
    assert out == theirs["text"] + "\n"


@pytest.mark.parametrize("arch", GENERATIVE)
def test_reference_math_gives_the_same_text(arch, folders, pictures, capsys):
    folder, image = folders[arch], [pictures["a.png"]]
    kernels = generate(capsys, folder, image, PROMPT, "--max-new-tokens", 10)
    assert generate(capsys, folder, image, PROMPT, "--max-new-tokens", 10, "--reference") == kernels


def test_sampling_is_reproducible_with_a_seed(folders, pictures, capsys):
    folder, image = folders["blip-2"], [pictures["a.png"]]
    options = ("--sample", "--temperature", "1.5", "--top-p", "0.9", "--seed", "3", "--max-new-tokens", 10)
    first = generate(capsys, folder, image, PROMPT, *options)
    assert generate(capsys, folder, image, PROMPT, *options) == first
    assert first != generate(capsys, folder, image, PROMPT, "--max-new-tokens", 10)   # not greedy's


# -- Kosmos-2's grounding ------------------------------------------------------------------------------------

def test_kosmos2_entities_and_boxes_png(folders, pictures, capsys, tmp_path):
    """A grounded phrase (here the prompt's own) is printed as an entity line and drawn to --boxes-out."""
    folder, image = folders["kosmos-2"], pictures["b.png"]
    prompt = "<grounding><phrase> a cat</phrase><object><patch_index_0044><patch_index_0863></object> sits"
    theirs = hf_generate(folder, "kosmos-2", prompt, [rgb(image)])
    caption, entities = hf_model(folder, "kosmos-2")[1].post_process_generation(theirs["full_text"])
    assert entities and entities[0][0] == "a cat"
    png = tmp_path / "boxes.png"
    out = generate(capsys, folder, [image], prompt, "--dtype", "float64", "--max-new-tokens", NEW_TOKENS,
                   "--boxes-out", png)
    lines = run.format_grounding(caption, entities)
    assert out == theirs["text"] + "\n" + "\n".join(lines) + "\n"
    assert lines[1] == "entities:" and lines[2].startswith('  "a cat"  chars 0-5  (0.391, 0.047, 0.984, 0.828)')
    with Image.open(png) as drawn:
        assert drawn.format == "PNG" and drawn.size == rgb(image).size
        assert drawn.convert("RGB").tobytes() != rgb(image).tobytes()     # something was drawn


def test_format_grounding():
    entities = [Entity("a snowman", (12, 21), [(0.390625, 0.046875, 0.984375, 0.828125)]),
                Entity("two fires", (30, 39), [(0.0, 0.0, 0.5, 0.5), (0.5, 0.5, 1.0, 1.0)])]
    assert run.format_grounding("An image of a snowman by two fires.", entities) == [
        "caption: An image of a snowman by two fires.",
        "entities:",
        '  "a snowman"  chars 12-21  (0.391, 0.047, 0.984, 0.828)',
        '  "two fires"  chars 30-39  (0.000, 0.000, 0.500, 0.500) (0.500, 0.500, 1.000, 1.000)']
    assert run.format_grounding("A dog.", []) == ["caption: A dog.", "entities: none"]


# -- progress bars ---------------------------------------------------------------------------------------

def test_generation_bar_only_off_a_terminal(folders, pictures, capsys, monkeypatch):
    folder, image = folders["blip-2"], pictures["a.png"]
    argv = ["generate", "--model", folder, "--image", image, "--prompt", PROMPT, "--max-new-tokens", 5]
    status, out, err = cli_run(capsys, *argv)
    assert status == 0 and "generating" in err and "5/5" in err          # stdout is not a terminal here
    assert cli_run(capsys, *argv, "--quiet") == (0, out, "")
    monkeypatch.setattr(sys.stdout, "isatty", lambda: True)              # the streamed text is the progress
    assert cli_run(capsys, *argv) == (0, out, "")


def test_printer_prints_the_text_of_all_new_tokens(folders, capsys):
    """TextPrinter decodes all new tokens together: its pieces add up to their decoded text, across
    newlines and characters split over byte tokens."""
    from minivlm.processing import load_processor

    processor = load_processor(folders["llava_next"])
    ids = processor.tokenizer("Snow é\nwhite ünd  red\n\n ok", add_special_tokens=False)["input_ids"]
    printer = run.TextPrinter(processor)
    printer.put(torch.tensor([[1, 5, 6]]))        # the prompt: not printed
    for i in ids:
        printer.put(torch.tensor([i]))
    printer.end()
    assert capsys.readouterr().out == processor.decode(ids, skip_special_tokens=True)


# -- classify ---------------------------------------------------------------------------------------------

def test_classify_ranks_labels_as_transformers(folders, pictures, capsys, tmp_path):
    folder = folders["altclip"]
    paths = [pictures["a.png"], pictures["b.png"]]
    labels = ["a cat", "a dog on a sofa", "a red car"]
    model = transformers.AltCLIPModel.from_pretrained(str(folder), dtype=torch.float32).eval()
    processor = transformers.AutoProcessor.from_pretrained(str(folder), backend="pil")
    inputs = processor(text=labels, images=[rgb(p) for p in paths], padding=True, return_tensors="pt")
    with torch.no_grad():
        theirs = model(**inputs).logits_per_image.softmax(dim=-1)           # (images, labels)
    status, out, err = cli_run(capsys, "classify", "--model", folder, "--image", paths[0], "--image", paths[1],
                               "--labels", " a cat,a dog on a sofa , a red car", "--quiet", "--json",
                               tmp_path / "out.json")
    assert status == 0 and err == ""
    data = json.loads((tmp_path / "out.json").read_text())
    assert data["labels"] == labels and data["model_type"] == "altclip"
    expected_lines = []
    for path, row, mine in zip(paths, theirs, data["images"]):
        order = row.argsort(descending=True).tolist()
        gaps = row.sort(descending=True).values.diff().abs()
        assert gaps.min() > 2 * PROB_TOL, "a near tie: the ranking would not be a fair test"
        assert mine["image"] == path and [r["label"] for r in mine["ranking"]] == [labels[i] for i in order]
        for r, i in zip(mine["ranking"], order):
            assert abs(r["probability"] - row[i].item()) < PROB_TOL, (r, row[i].item())
        expected_lines += [path] + [f"  {r['probability']:.3f}  {r['label']}" for r in mine["ranking"]]
    assert out == "\n".join(expected_lines) + "\n"
    status, ref_out, _ = cli_run(capsys, "classify", "--model", folder, "--image", paths[0], "--image", paths[1],
                                 "--labels", ",".join(labels), "--quiet", "--reference")
    assert status == 0 and ref_out == out


# -- bad input: one line, exit status 1 -------------------------------------------------------------------

def truncated(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "truncated")
    weights = copy / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    return copy


def without_tokenizer(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "no-tokenizer")
    (copy / "tokenizer.json").unlink()
    return copy


def unknown_type(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "unknown")
    config = json.loads((copy / "config.json").read_text())
    (copy / "config.json").write_text(json.dumps(dict(config, model_type="gpt2")))
    return copy


def without_chat_template(folder, tmp_path):
    copy = shutil.copytree(folder, tmp_path / "no-template")
    (copy / "chat_template.jinja").unlink()
    return copy


def empty_folder(folder, tmp_path):
    (tmp_path / "empty").mkdir()
    return tmp_path / "empty"


HUB_ID = "llava-hf/llava-v1.6-mistral-7b-hf"
# (id, command, arch, how the folder is changed, the images, prompt or labels, more options, what the message holds)
BAD_INPUT = [
    ("hub-id", "generate", None, None, ["a.png"], PROMPT, [],
     [f"{HUB_ID!r} is not a local folder", "downloads nothing", f"hf download {HUB_ID} --local-dir DIR"]),
    ("no-config", "generate", "blip-2", empty_folder, ["a.png"], PROMPT, [], ["--model", "has no config.json"]),
    ("unknown-model-type", "generate", "blip-2", unknown_type, ["a.png"], PROMPT, [], ["model_type 'gpt2'"]),
    ("truncated-safetensors", "generate", "blip-2", truncated, ["a.png"], PROMPT, [], ["model.safetensors"]),
    ("no-tokenizer", "generate", "blip-2", without_tokenizer, ["a.png"], PROMPT, [], ["tokenizer.json"]),
    ("undecodable-image", "generate", "blip-2", None, ["x.png"], PROMPT, [],
     ["--image", "x.png", "cannot be decoded"]),
    ("missing-image", "generate", "blip-2", None, ["nothing.png"], PROMPT, [],
     ["--image", "nothing.png", "does not exist"]),
    ("empty-prompt", "generate", "blip-2", None, ["a.png"], "", [], ["--prompt", "expected some text"]),
    ("blank-prompt", "generate", "llava_next", None, ["a.png"], "  \n ", [], ["--prompt", "expected some text"]),
    ("prompt-too-long", "generate", "kosmos-2", None, ["a.png"], "word " * 150, [],
     ["--prompt", "tokens long", "has 128 positions"]),
    ("too-many-new-tokens", "generate", "kosmos-2", None, ["a.png"], PROMPT, ["--max-new-tokens", "500"],
     ["--max-new-tokens", "has 128", "at most"]),
    ("classify-a-generative-model", "classify", "llava_next", None, ["a.png"], "a cat,a dog", [],
     ["LLaVA-NeXT", "use `minivlm generate"]),
    ("generate-on-altclip", "generate", "altclip", None, ["a.png"], PROMPT, [],
     ["AltCLIP", "minivlm classify", "--labels"]),
    ("blip2-two-images", "generate", "blip-2", None, ["a.png", "b.png"], PROMPT, [],
     ["--image", "exactly one image, got 2"]),
    ("kosmos2-two-images", "generate", "kosmos-2", None, ["a.png", "b.png"], PROMPT, [],
     ["--image", "exactly one image, got 2"]),
    ("llava-marks", "generate", "llava_next", None, ["a.png"], "<image><image>" + PROMPT, [],
     ["--prompt", "one <image> per --image (1), got 2"]),
    ("idefics-marks", "generate", "idefics", None, ["a.png", "b.png"], "<image>" + PROMPT, [],
     ["--prompt", "one <image> per --image (2), got 1"]),
    ("blip2-mark", "generate", "blip-2", None, ["a.png"], "<image>" + PROMPT, [], ["--prompt", "no <image>"]),
    ("no-chat-template", "generate", "blip-2", without_chat_template, ["a.png"], PROMPT, ["--chat"],
     ["--chat", "has none"]),
    ("boxes-out-not-kosmos2", "generate", "blip-2", None, ["a.png"], PROMPT, ["--boxes-out", "b.png"], ["--boxes-out"]),
    ("temperature-without-sample", "generate", "blip-2", None, ["a.png"], PROMPT, ["--temperature", "0.5"],
     ["--temperature", "--sample"]),
    ("label-too-long", "classify", "altclip", None, ["a.png"], "a cat," + "word " * 40, [],
     ["--labels", "tokens long", "at most 62"]),
    ("empty-label", "classify", "altclip", None, ["a.png"], "a cat,, a dog", [], ["--labels", "label(s) 2"]),
    ("cuda-without-gpu", "generate", "blip-2", None, ["a.png"], PROMPT, ["--device", "cuda"],
     ["--device", "no CUDA GPU"]),
]
ONLY_WITHOUT_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has a GPU")
BAD_INPUT = [pytest.param(*case, id=case[0], marks=ONLY_WITHOUT_GPU if case[0] == "cuda-without-gpu" else ())
             for case in BAD_INPUT]


@pytest.mark.parametrize("name, command, arch, change, images, text, options, expected", BAD_INPUT)
def test_bad_input_is_one_line(name, command, arch, change, images, text, options, expected, folders, pictures,
                               capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)             # a relative --model (the hub id) is looked up here
    model = HUB_ID if arch is None else folders[arch]
    if change is not None:
        model = change(model, tmp_path)
    argv = [command, "--model", model, "--prompt" if command == "generate" else "--labels", text, *options]
    for image in images:
        argv += ["--image", pictures.get(image, image)]
    status, out, err = cli_run(capsys, *argv)
    assert status == 1 and out == ""
    assert err.endswith("\n") and err.count("\n") == 1, err
    assert err.startswith(f"minivlm {command}: error: --"), err
    for part in expected:
        assert part in err, (part, err)


@pytest.mark.parametrize("command, arch, option, value, message", [
    ("generate", "blip-2", "--labels", "a cat", "--labels: generate continues a prompt and ranks no labels"),
    ("classify", "altclip", "--prompt", PROMPT, "--prompt: classify (AltCLIP) reads no prompt"),
])
def test_the_other_commands_option_is_one_line(command, arch, option, value, message, folders, pictures, capsys):
    """--labels given to generate, --prompt given to classify: one line saying which command takes it."""
    required = ["--prompt", PROMPT] if command == "generate" else ["--labels", "a cat,a dog"]
    status, out, err = cli_run(capsys, command, "--model", str(folders[arch]), "--image", pictures["a.png"],
                               *required, option, value)
    assert status == 1 and out == "" and err.count("\n") == 1 and message in err, err


def test_debug_shows_the_exception(pictures):
    with pytest.raises(FileNotFoundError, match="downloads nothing"):
        cli.main(["generate", "--model", HUB_ID, "--image", pictures["a.png"], "--prompt", PROMPT, "--debug"])


# -- as a user runs it ------------------------------------------------------------------------------------

def test_subprocess_generate_and_error(folders, pictures, capsys):
    """`python -m minivlm generate` prints the in-process text (the checkpoint's default: 20 new tokens);
    an error is one line on stderr, exit status 1, no traceback."""
    folder, image = folders["llava_next"], pictures["a.png"]
    expected = generate(capsys, folder, [image], PROMPT, "--max-new-tokens", 20)
    result = subprocess.run([sys.executable, "-m", "minivlm", "generate", "--model", str(folder), "--image", image,
                             "--prompt", PROMPT, "--quiet"], capture_output=True, text=True, env=ENV, timeout=120)
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == expected
    result = subprocess.run([sys.executable, "-m", "minivlm", "generate", "--model", str(folder), "--image",
                             pictures["x.png"], "--prompt", PROMPT], capture_output=True, text=True, env=ENV,
                            timeout=120)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and "Traceback" not in result.stderr, result.stderr
    assert "cannot be decoded" in result.stderr
