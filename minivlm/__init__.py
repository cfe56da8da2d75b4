"""minivlm: a minimal, from-scratch, educational PyTorch reference of five vision-language models.

The compiled kernels live in `minivlm.ops`; their naive math, which a student reads first, in
`minivlm.reference`. The models live in `minivlm.models`, one file per architecture;
`minivlm.from_pretrained` loads one from a local checkpoint folder.

The names below load on first use (PEP 562 module `__getattr__`), so that `minivlm --help` and
`minivlm --version` answer without importing torch. Where torch is already imported, `import minivlm`
loads them at once: `minivlm.ops` then defines `torch.ops.minivlm.*` and loads their compiled kernels
(where built), at little extra cost.

Nothing here needs the compiled extension: without it every name imports and every model runs on the
reference math (`with minivlm.use_reference():`); only a kernel call fails, saying how to build it.
"""

import importlib
import sys

__version__ = "0.1.0"

#: The Transformers release the parity tests compare against (docs/parity.md); setup.py pins it for tests.
TRANSFORMERS_VERSION = "5.23.0"

#: Each public name -> (the submodule that defines it, the attribute there; None for the module itself).
_EXPORTS = {
    "ops": ("ops", None),
    "reference": ("reference", None),
    "attention": ("ops", "attention"),
    "rope": ("ops", "rope"),
    "causal_mask": ("ops", "causal_mask"),
    "use_reference": ("ops", "use_reference"),
    "reference_enabled": ("ops", "reference_enabled"),
    "from_pretrained": ("loading", "from_pretrained"),
}

__all__ = list(_EXPORTS)


def __getattr__(name):
    if name not in _EXPORTS:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    module, attribute = _EXPORTS[name]
    value = importlib.import_module(f"{__name__}.{module}")
    if attribute is not None:
        value = getattr(value, attribute)
    globals()[name] = value      # later lookups find it directly
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))


if "torch" in sys.modules:
    for _name in __all__:
        __getattr__(_name)
    del _name
