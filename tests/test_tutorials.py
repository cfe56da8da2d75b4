"""The tutorials are runnable scripts; each must run to the end (they assert their own claims)."""

import pathlib
import runpy

import pytest

TUTORIALS = sorted((pathlib.Path(__file__).parent.parent / "tutorials").glob("*.py"))


def test_there_are_tutorials():
    assert TUTORIALS, "tutorials/ has no scripts"


@pytest.mark.parametrize("path", TUTORIALS, ids=lambda p: p.name)
def test_tutorial_runs(path):
    runpy.run_path(str(path), run_name="__main__")
