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
    isa = torch.ops.minivlm.cpu_isa()
    have = torch.backends.cpu.get_cpu_capability()
    rank = {"DEFAULT": 0, "NONE": 0, "AVX2": 1, "AVX512": 2}
    if rank.get(isa, 0) > rank.get(have, 0):
        raise ImportError(
            f"minivlm._C was compiled for {isa} vector instructions but this CPU offers {have}; rebuild on "
            f"this machine (pip install --no-build-isolation -e .) or set MINIVLM_CPU_ISA=avx2 or none")
    _loaded = True
