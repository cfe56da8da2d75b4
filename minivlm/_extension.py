"""Loading the compiled extension minivlm._C with an error that says how to build it."""

import torch

_loaded = False


def load_extension():
    global _loaded
    if _loaded:
        return
    try:
        from . import _C  # noqa: F401  (importing the library runs its TORCH_LIBRARY registrations)
    except ImportError as e:
        raise ImportError(
            "minivlm's compiled extension minivlm._C is not built. From the repository root run\n"
            "    pip install --no-build-isolation -e .\n"
            "(with torch already installed) to compile it. Original error: " + str(e)) from e
    try:
        torch.ops.minivlm.cpu_isa()   # the first call loads the CPU kernels for this CPU (or MINIVLM_CPU_ISA)
    except (ValueError, RuntimeError) as e:
        raise ImportError(f"minivlm: cannot load the CPU kernels: {e}") from e
    _loaded = True
