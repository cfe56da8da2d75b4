"""Build minivlm and its compiled extension minivlm._C.

    pip install torch==2.13.0 ninja           # torch first: the extension compiles against it
    pip install --no-build-isolation -e .     # no isolation, so pip does not fetch another torch

The CPU kernels (csrc/cpu/) always build. torch's cpp_extension passes no vector-ISA flags, so we choose
them here from the build machine's CPU (the extension is built where it runs): AVX-512 where the CPU has
it, else AVX2+FMA, else plain C++. MINIVLM_CPU_ISA=avx512|avx2|none overrides. ATen's at::vec::Vectorized
then compiles to those registers, and `torch.ops.minivlm.cpu_isa()` reports which one was chosen.
csrc/cuda/ is the place for the CUDA kernels; they build only where a CUDA toolkit and a CUDA torch exist.
"""

import glob
import os
import platform

from setuptools import find_packages, setup
from torch.utils.cpp_extension import BuildExtension, CppExtension

ROOT = os.path.dirname(os.path.abspath(__file__))

# Compiler flags and the ATen macro that selects the matching at::vec implementation for each ISA.
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "none": [],
}


def cpu_flags():
    """The x86 feature flags of the build machine, from /proc/cpuinfo (empty elsewhere)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def choose_isa():
    forced = os.environ.get("MINIVLM_CPU_ISA", "").lower()
    if forced:
        if forced not in ISA_FLAGS:
            raise SystemExit(f"MINIVLM_CPU_ISA must be one of {sorted(ISA_FLAGS)}, got {forced!r}")
        return forced
    if platform.machine() not in ("x86_64", "AMD64"):
        return "none"
    flags = cpu_flags()
    if {"avx512f", "avx512bw", "avx512vl", "avx512dq", "fma", "f16c"} <= flags:
        return "avx512"
    if {"avx2", "fma", "f16c"} <= flags:
        return "avx2"
    return "none"


def extensions():
    isa = choose_isa()
    print(f"minivlm: building the CPU kernels for {isa}")
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")) + glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    cxx = ["-O3", "-fopenmp", "-Wno-unknown-pragmas", "-DMINIVLM_ISA=\"" + isa.upper() + "\""] + ISA_FLAGS[isa]
    return [CppExtension(
        "minivlm._C",
        sources,
        include_dirs=[os.path.join(ROOT, "csrc")],
        extra_compile_args={"cxx": cxx},
        extra_link_args=["-fopenmp"],
    )]


setup(
    name="minivlm",
    version="0.1.0",
    description="A minimal, from-scratch, educational PyTorch reference of five vision-language models",
    packages=find_packages(include=["minivlm", "minivlm.*"]),
    python_requires=">=3.10",
    # torch is deliberately unpinned: install it first (pip install torch==2.13.0 takes the CPU build), then
    # build with --no-build-isolation so this requirement is already met and nothing is downloaded.
    install_requires=["torch>=2.13", "numpy", "pillow", "ninja", "safetensors", "tokenizers", "tqdm"],
    extras_require={
        "test": ["pytest", "hypothesis", "transformers==5.23.0"],
    },
    entry_points={"console_scripts": ["minivlm=minivlm.cli:main"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": BuildExtension},
)
