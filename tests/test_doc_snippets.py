"""Every ```python block of README.md and docs/**/*.md runs, unchanged, as a reader would paste it.

Each block runs alone, in a fresh namespace (so every block must be complete in itself), in a temporary
working directory that holds what the blocks name: tiny random-weight checkpoint folders built by the tests'
builders (llava-next-folder, blip2-folder, kosmos2-folder, idefics-folder, altclip-folder; each with its
preprocessor_config.json, processor settings, and a tiny word-level tokenizer.json with its
tokenizer_config.json) and a few small pictures (photo.jpg,
cat.jpg, dog.jpg, snowman.jpg). Install and shell blocks (```bash) are not Python and are left out. A block
that uses CUDA is skipped where torch sees no GPU.
"""

import json
import pathlib
import re

import pytest
import torch
from PIL import Image

import _altclip
import _blip2
import _idefics
import _kosmos2
import _llava
from helpers import save

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)


def python_blocks():
    """pytest params of every ```python block: (file, line of its fence, source), named "README.md:63"."""
    blocks = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            name = f"{path.relative_to(ROOT)}:{line}"
            blocks.append(pytest.param(path, line, match.group(1), id=name))
    return blocks


BLOCKS = python_blocks()


def write_tokenizer(path, vocab_size, named, template=None):
    """A word-level tokenizer.json over a tiny vocabulary: id i is the word "w{i}" unless `named` gives it a
    token's name ("<image>": 127); the named tokens match whole inside the text, "<unk>" stands for every
    other word, and `template` ("<s> $A") is what encode adds around a text by default."""
    from tokenizers import AddedToken, Tokenizer, models, pre_tokenizers, processors

    ids = {i: f"w{i}" for i in range(vocab_size)} | {i: name for name, i in named.items()}
    tokenizer = Tokenizer(models.WordLevel({name: i for i, name in ids.items()}, unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    special = {"<s>", "</s>", "<pad>", "<unk>"}
    tokenizer.add_special_tokens([AddedToken(n, special=True) for n in named if n in special])
    tokenizer.add_tokens([AddedToken(n, special=False) for n in named if n not in special])
    if template:
        tokenizer.post_processor = processors.TemplateProcessing(
            single=template, special_tokens=[(t, named[t]) for t in template.split() if t in named])
    tokenizer.save(str(path / "tokenizer.json"))


def write_json(path, data):
    path.write_text(json.dumps(data))


def write_tokenizer_config(folder, **tokens):
    """tokenizer_config.json naming the special tokens (as a hub folder does)."""
    write_json(folder / "tokenizer_config.json", {"tokenizer_class": "PreTrainedTokenizerFast", **tokens})


def build_llava_next(folder):
    save(_llava.hf_model(_llava.hf_config()), folder)
    write_json(folder / "preprocessor_config.json",
               {"image_grid_pinpoints": _llava.PINPOINTS, "size": {"shortest_edge": _llava.CROP},
                "crop_size": {"height": _llava.CROP, "width": _llava.CROP}})
    # The processor's settings, as LLaVA-NeXT checkpoints write them (the CLS counted, then dropped).
    write_json(folder / "processor_config.json",
               {"patch_size": _llava.CONFIG["vision_config"]["patch_size"], "vision_feature_select_strategy": "default",
                "num_additional_image_tokens": 1, "image_token": "<image>"})
    write_tokenizer(folder, 128, {"<pad>": _llava.PAD, "<s>": _llava.BOS, "</s>": _llava.EOS, "<unk>": 3,
                                  "<image>": _llava.IMAGE_TOKEN}, template="<s> $A")
    write_tokenizer_config(folder, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>",
                           padding_side="left")
    # A chat template in llava-v1.6-mistral's format: [INST] ... [/INST], an <image> per image part.
    (folder / "chat_template.jinja").write_text(
        "{% for message in messages %}{% if message['role'] == 'user' %}[INST] {% else %} {% endif %}"
        "{% for part in message['content'] %}{% if part['type'] == 'image' %}<image>\n"
        "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}{% endfor %}"
        "{% if message['role'] == 'user' %} [/INST]{% else %}{{ eos_token }}{% endif %}{% endfor %}")


def build_blip2(folder):
    save(_blip2.hf_model(_blip2.hf_config("opt")), folder)
    write_json(folder / "preprocessor_config.json", {"size": {"height": _blip2.IMAGE, "width": _blip2.IMAGE}})
    write_json(folder / "processor_config.json", {"num_query_tokens": _blip2.NUM_QUERIES})
    write_tokenizer(folder, 128, {"<pad>": _blip2.OPT_PAD, "</s>": _blip2.OPT_EOS, "<unk>": 3,
                                  "<image>": _blip2.IMAGE_TOKEN}, template="</s> $A")
    write_tokenizer_config(folder, bos_token="</s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def build_kosmos2(folder):
    save(_kosmos2.hf_model(_kosmos2.hf_config()), folder)
    write_json(folder / "preprocessor_config.json",
               {"size": {"shortest_edge": _kosmos2.IMAGE}, "crop_size": _kosmos2.IMAGE, "use_square_size": True})
    write_tokenizer(folder, 128, {"<s>": _kosmos2.BOS, "<pad>": _kosmos2.PAD, "</s>": _kosmos2.EOS, "<unk>": 3,
                                  "<grounding>": 125, "<image>": _kosmos2.BOI, "</image>": _kosmos2.EOI},
                    template="<s> $A")
    write_tokenizer_config(folder, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


def build_idefics(folder):
    save(_idefics.hf_model(_idefics.hf_config()), folder)
    write_json(folder / "preprocessor_config.json", {"image_size": _idefics.SIZE})
    write_tokenizer(folder, _idefics.VOCAB + _idefics.EXTRA,
                    {"<pad>": _idefics.PAD, "<s>": _idefics.BOS, "</s>": _idefics.EOS, "<unk>": 3,
                     "<fake_token_around_image>": _idefics.FAKE, "<image>": _idefics.IMAGE}, template="<s> $A")


def build_altclip(folder):
    save(_altclip.hf_model(_altclip.hf_config()), folder)
    write_json(folder / "preprocessor_config.json",
               {"size": {"shortest_edge": _altclip.IMAGE}, "crop_size": _altclip.IMAGE})
    _altclip.build_tokenizer(folder / "tokenizer.json")
    write_tokenizer_config(folder, bos_token="<s>", eos_token="</s>", pad_token="<pad>", unk_token="<unk>")


FOLDERS = {"llava-next-folder": build_llava_next, "blip2-folder": build_blip2, "kosmos2-folder": build_kosmos2,
           "idefics-folder": build_idefics, "altclip-folder": build_altclip}
PICTURES = {"photo.jpg": (60, 40), "cat.jpg": (32, 32), "dog.jpg": (24, 40), "snowman.jpg": (48, 48)}  # (w, h)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """The folder every block runs in: the checkpoint folders and pictures the blocks open."""
    root = tmp_path_factory.mktemp("doc_snippets")
    for name, build in FOLDERS.items():
        build(root / name)
    g = torch.Generator().manual_seed(0)
    for name, (w, h) in PICTURES.items():
        pixels = torch.randint(0, 256, (h, w, 3), generator=g, dtype=torch.uint8).numpy()
        Image.fromarray(pixels).save(root / name)
    return root


def test_readme_and_docs_have_python_blocks():
    files = {block.values[0].name for block in BLOCKS}
    assert {"README.md", "loading_and_generation.md"} <= files, files


@pytest.mark.parametrize("path, line, source", BLOCKS)
def test_block_runs(path, line, source, workdir, monkeypatch):
    if "cuda" in source and not torch.cuda.is_available():
        pytest.skip("this block runs on a CUDA GPU and torch sees none")
    monkeypatch.chdir(workdir)
    # Padded so that a traceback names the Markdown file and the line there.
    code = compile("\n" * line + source, str(path), "exec")
    exec(code, {"__name__": "__main__"})
