"""The trained tiny VLM that ships with minivlm (minivlm/tinyvlm/weights): its scores on held-out pictures,
on the hand-drawn pictures, the same logits in Transformers, the demo's opening, and the package data."""
import json
import math
import time
from pathlib import Path

import pytest
import torch

import minivlm
from minivlm.processing import load_processor
from minivlm.tinyvlm import data, shipped_folder
from minivlm.tinyvlm.evaluate import evaluate
from minivlm.tinyvlm.model import answer, prompt_text

ROOT = Path(__file__).resolve().parent.parent
PICTURES = ROOT / "minivlm" / "tinyvlm" / "pictures"

#: The targets the shipped model meets on 500 held-out pictures (docs/tiny_vlm.md has the measured scores).
TARGETS = {"caption/1": 0.90, "caption/2": 0.80, "questions/all": 0.90}
SAMPLE, SAMPLE_SEED = 300, 10_000     # CI's sample: 300 held-out pictures other than the documented 500


@pytest.fixture(scope="module")
def shipped():
    folder = shipped_folder()
    return folder, minivlm.from_pretrained(folder, progress=False), load_processor(folder)


@pytest.fixture(scope="module")
def sample_scores(shipped):
    _, model, processor = shipped
    return evaluate(model, processor, SAMPLE, split="heldout", seed=SAMPLE_SEED)


@pytest.mark.parametrize("key", sorted(TARGETS))
def test_the_shipped_model_meets_the_targets_on_a_held_out_sample(key, sample_scores):
    group, name = key.split("/")
    n = sample_scores["counts"][f"{group}/{name}"] if name != "all" else \
        sum(v for k, v in sample_scores["counts"].items() if k.startswith(group + "/"))
    target = TARGETS[key]
    # A model whose true accuracy is exactly the target scores at least target - 2 sigma on n samples
    # with probability about 97.7% (binomial, normal approximation): the threshold for a sample of n.
    # The sample is fixed, so a pass or fail repeats; a real regression falls far below.
    margin = 2 * math.sqrt(target * (1 - target) / n)
    assert sample_scores[group][name] >= target - margin, (key, sample_scores[group][name], n)


def test_the_shipped_folder_loads_in_transformers_with_the_same_logits(shipped):
    transformers = pytest.importorskip("transformers")
    folder, model, processor = shipped
    theirs = transformers.LlavaNextForConditionalGeneration.from_pretrained(folder).eval()
    their_processor = transformers.AutoProcessor.from_pretrained(folder)
    example = data.make_example(data.SPLIT_OFFSETS["heldout"] + 3, n_shapes=2)
    text = prompt_text(processor, data.CAPTION_QUESTION)
    ours_in = processor(text=text, images=example.image, return_tensors="pt")
    theirs_in = their_processor(text=text, images=example.image, return_tensors="pt")
    assert torch.equal(ours_in["input_ids"], theirs_in["input_ids"])
    with torch.no_grad():
        ours = model(**ours_in).logits
        reference = theirs(**theirs_in).logits
    # float32, two implementations of the same math (different kernels, summation orders); the logits
    # reach about 19 in size and float32 rounding over 2 vision + 3 decoder layers gives ~1e-5 (measured
    # up to 1.3e-5 over 30 held-out pictures). 1e-4 leaves a margin of 8x, and is 1000x below the effect
    # of one wrong weight.
    torch.testing.assert_close(ours, reference, rtol=0, atol=1e-4)


def test_the_hand_drawn_pictures_are_answered_as_documented(shipped):
    _, model, processor = shipped
    manifest = json.loads((PICTURES / "pictures.json").read_text())
    assert len(manifest) == 12
    from PIL import Image
    images, questions, answers = [], [], []
    for item in manifest:
        image = Image.open(PICTURES / item["file"]).convert("RGB")
        assert image.size == tuple(item["size"])
        for q in [{"question": data.CAPTION_QUESTION, "answer": item["caption"]}] + item["questions"]:
            images.append(image)
            questions.append(q["question"])
            answers.append(q["answer"])
    replies = answer(model, processor, images, questions, max_new_tokens=40)
    right = sum(r == a for r, a in zip(replies, answers))
    # docs/tiny_vlm.md states the count measured on these pictures; the test holds it to within two
    # answers of that (greedy argmax can flip where two words are nearly tied, on another CPU's kernels)
    assert right >= HAND_DRAWN_RIGHT - 2, (right, len(answers))


HAND_DRAWN_RIGHT = 92     # of 94 answers (12 captions, 82 questions), measured (docs/tiny_vlm.md)


def test_the_demo_opening_runs_in_under_ten_seconds(shipped):
    from minivlm.tools.demo import stage_tiny_vlm

    start = time.perf_counter()
    result = stage_tiny_vlm(seed=5)
    seconds = time.perf_counter() - start
    assert result.ok, result.max_abs_diff
    assert "what is in the picture?" in result.detail
    # a user-facing bound, not a speed target: the opening is measured at about 1 s on this 2-core CPU
    assert seconds < 10, seconds


# A regular (non-editable) install holding the weights and pictures is checked by tools/install_check.sh,
# which the README's test command runs after the tests: it needs an install, which a test should not make.


def test_the_eval_command_scores_the_shipped_model_and_writes_json(tmp_path, capsys):
    from minivlm.tools.cli import main

    assert main(["eval", "tiny-vlm", "--n", "30", "--seed", "77", "--json", str(tmp_path / "s.json")]) == 0
    out = capsys.readouterr().out
    assert "30 pictures" in out and "caption exact match, 1 shape" in out and "questions, all" in out
    scores = json.loads((tmp_path / "s.json").read_text())
    assert scores["n"] == 30 and scores["seed"] == 77 and scores["model"] == str(shipped_folder())
    assert sum(scores["counts"][f"caption/{k}"] for k in "123") == 30

    assert main(["eval", "tiny-vlm", "--n", "5", "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)        # only the JSON on stdout
    assert printed["n"] == 5 and "all" in printed["caption"] and "all" in printed["questions"]
