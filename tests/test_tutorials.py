"""The tutorials are runnable scripts; each must run to the end (they assert their own claims)."""

import pathlib
import runpy

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS, "tutorials/ has no scripts"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path, tmp_path, monkeypatch):
    monkeypatch.setenv("MINIVLM_TUTORIAL_OUT", str(tmp_path))     # where a tutorial writes its figures
    runpy.run_path(str(path), run_name="__main__")


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_is_a_percent_format_notebook(path):
    """Each tutorial is a jupytext "percent" script: it opens with a markdown cell (its title), and its
    prose is in markdown cells ("# %% [markdown]", every line a comment) between code cells ("# %%"), so
    `jupytext --to notebook` makes a notebook of it with the prose as text."""
    text = path.read_text()
    assert text.startswith("# %% [markdown]\n# # "), "a tutorial opens with a markdown cell holding its title"
    cells = text.split("\n# %%")
    kinds = ["markdown" if cell.lstrip("# %").startswith("[markdown]") or cell.startswith(" [markdown]")
             else "code" for cell in cells]
    assert kinds.count("markdown") >= 2 and kinds.count("code") >= 2, kinds
    for cell, kind in zip(cells, kinds):
        if kind == "markdown":
            body = cell.split("\n", 1)[1] if "\n" in cell else ""
            assert all(line.startswith("#") for line in body.strip("\n").splitlines()), cell[:80]
