"""The Transformers version the parity tests hold for has one home, minivlm.TRANSFORMERS_VERSION: it is the
one installed, the one setup.py pins for the test extra, and the one docs/parity.md names."""
import pathlib
import re
from importlib import metadata

import minivlm

ROOT = pathlib.Path(__file__).resolve().parent.parent


def test_installed_transformers_is_the_parity_version():
    assert metadata.version("transformers") == minivlm.TRANSFORMERS_VERSION, \
        "the parity tests hold for the Transformers version in minivlm/__init__.py (docs/parity.md)"


def test_setup_and_docs_use_the_constant():
    setup = (ROOT / "setup.py").read_text()
    assert 'f"transformers=={TRANSFORMERS_VERSION}"' in setup
    assert not re.search(r"transformers==\d", setup)
    assert f"**{minivlm.TRANSFORMERS_VERSION}**" in (ROOT / "docs" / "parity.md").read_text()
