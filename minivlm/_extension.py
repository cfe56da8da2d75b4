"""The compiled extension minivlm._C: the CPU and CUDA kernels of the ops that minivlm.ops defines.

minivlm works without it. Every model runs on the reference math (`minivlm.use_reference()` or
MINIVLM_REFERENCE=1), and only a call that needs a kernel fails, with the error `require` raises: it says
how to build the extension.
"""

import importlib

BUILD_COMMAND = "pip install --no-build-isolation -e ."

# None once minivlm._C is loaded (its kernels registered); before that, or where it cannot be imported,
# why not.
load_error = "is not loaded yet (importing minivlm.ops loads it)"


def load():
    """Import minivlm._C, which registers the kernels; minivlm.ops calls this once it has defined the ops."""
    global load_error
    name = f"{__package__}._C"
    try:
        importlib.import_module(name)   # loading the library runs its TORCH_LIBRARY_IMPL registrations
    except ImportError as e:
        not_built = isinstance(e, ModuleNotFoundError) and e.name == name
        load_error = "is not built" if not_built else f"cannot be loaded ({e})"
    else:
        load_error = None


def require(what: str) -> None:
    """Raise ImportError, saying how to build the extension, unless its kernels are loaded. `what`: who
    needs them ("minivlm.attention"), named in the message."""
    if load_error is not None:
        raise ImportError(
            f"{what} needs the compiled kernels, but minivlm's extension minivlm._C {load_error}. "
            f"Build it from the repository root (with torch installed) with\n"
            f"    {BUILD_COMMAND}\n"
            f"or run on the reference math instead: `with minivlm.use_reference():` or MINIVLM_REFERENCE=1.")


def load_extension(what: str = "this") -> None:
    """Import minivlm.ops (the op schemas) and minivlm._C (their kernels); require(what) after that. For
    code that needs the kernels from the start: the tests, the benchmarks, the demo."""
    from . import ops  # noqa: F401  (defines the ops, then calls load())

    require(what)
