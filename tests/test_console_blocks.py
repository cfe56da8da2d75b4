"""Every ```console block of README.md and docs/*.md is a real run: each `$ minivlm ...` command runs again
(in-process, in one temporary folder holding photo.png, cat.png and the tiny checkpoints the blocks name)
and prints what the block shows after it.

The comparison is token by token. Text, token ids, shapes and pass/fail must be equal; decimals
(probabilities, log-probabilities) may differ by 2e-3, float32 rounding of another CPU's kernels;
numbers in scientific notation (each stage's differences, which depend on the CPU's instruction set) and
the peak-memory line are not compared. `$` lines that are not minivlm commands (pip) are not run.
After a change of output, `python tools/update_console_blocks.py` writes the blocks anew.
"""
import pathlib
import re
import shlex
import shutil

import pytest

from minivlm.tools import cli
from minivlm.tools.checkpoints import tiny_checkpoint

ROOT = pathlib.Path(__file__).resolve().parent.parent
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```console[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
SCIENTIFIC = re.compile(r"^-?\d+(\.\d+)?e[+-]\d+$")
DECIMAL = re.compile(r"^-?\d+\.\d+$")
# The folders the blocks name, by the architecture they hold.
FOLDERS = {"tiny-llava": "llava_next", "tiny-altclip": "altclip", "tiny-kosmos2": "kosmos-2",
           "tiny-blip2": "blip-2", "tiny-idefics": "idefics"}


def sessions():
    """pytest params: each console block as [(command, expected output lines)], named "README.md:180"."""
    params = []
    for path in DOCS:
        text = path.read_text()
        for match in FENCE.finditer(text):
            runs, current = [], None
            for line in match.group(1).splitlines():
                if line.startswith("$ "):
                    current = (line[2:].split("  #")[0].strip(), [])
                    runs.append(current)
                elif current is not None:
                    current[1].append(line)
            line_no = text.count("\n", 0, match.start()) + 1
            params.append(pytest.param(runs, id=f"{path.relative_to(ROOT)}:{line_no}"))
    return params


def prepare(root: pathlib.Path) -> pathlib.Path:
    """The folder the blocks run in: photo.png, cat.png and the tiny checkpoints they name
    (tools/update_console_blocks.py uses it too)."""
    from minivlm.tools.parity import default_image
    from PIL import Image, ImageDraw

    default_image().save(root / "photo.png")
    cat = Image.new("RGB", (40, 30), (250, 250, 250))
    ImageDraw.Draw(cat).ellipse((5, 5, 25, 25), fill=(0, 160, 0))
    cat.save(root / "cat.png")
    for name, arch in FOLDERS.items():
        tiny_checkpoint(arch, root / name)
    return root


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return prepare(tmp_path_factory.mktemp("console"))


def same_line(got: str, want: str) -> bool:
    if want.startswith("peak memory"):
        return got.startswith("peak memory")
    a, b = got.split(), want.split()
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if SCIENTIFIC.match(y):
            if not SCIENTIFIC.match(x):
                return False
        elif DECIMAL.match(y) and DECIMAL.match(x.rstrip(",")):
            if abs(float(x) - float(y)) > 2e-3:
                return False
        elif x != y:
            return False
    return True


def test_there_are_console_blocks():
    assert len(sessions()) >= 4


@pytest.mark.parametrize("runs", sessions())
def test_console_block(runs, workdir, monkeypatch, capsys):
    monkeypatch.chdir(workdir)
    for command, expected in runs:
        argv = shlex.split(command)
        if argv[0] != "minivlm":
            continue
        if argv[1] == "tiny":                   # it writes the folder anew
            shutil.rmtree(workdir / argv[3], ignore_errors=True)
        capsys.readouterr()
        status = cli.main(argv[1:])
        got = capsys.readouterr().out.rstrip("\n").splitlines()
        assert status == 0, (command, got)
        assert len(got) == len(expected), (command, got, expected)
        for g, w in zip(got, expected):
            assert same_line(g, w), (command, g, w)


def test_the_comparison_can_fail():
    assert same_line("a 0.380  x", "a 0.381  x") and not same_line("a 0.390 x", "a 0.380 x")
    assert same_line("s 1x2 3.1e-07 pass", "s 1x2 0.00e+00 pass") and not same_line("s 1x2 3.1e-07 FAIL",
                                                                                     "s 1x2 0.00e+00 pass")
    assert not same_line("OOOO", "OOOOO")
