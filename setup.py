"""Build minivlm and its compiled extension minivlm._C.

    pip install torch==2.13.0 ninja           # torch first: the extension compiles against it
    pip install --no-build-isolation -e .     # no isolation, so pip does not fetch another torch

The CPU kernels (csrc/cpu/) always build, three times over on x86-64: for AVX-512, for AVX2 + FMA and
for plain x86-64, each into its own library (minivlm/_cpu_avx512, _cpu_avx2, _cpu_default), so one build
runs on any x86-64 CPU. torch's cpp_extension passes no vector-ISA flags; ISA_FLAGS below gives each build
its flags and the ATen macro that makes at::vec::Vectorized use those registers. minivlm._C chooses the
library at run time from the CPU (MINIVLM_CPU_ISA=avx2|default forces a lower one), as ATen does for its
own kernels. Other CPUs get the plain build alone.

Each extension compiles in a fixed folder, build/<extension name>, so a second install of an unchanged
tree recompiles nothing (ninja compares each object with its sources, headers and command line).

The CUDA kernels (csrc/cuda/) build whenever a CUDA toolkit is found and torch is a CUDA build, whether or
not this machine has a GPU (a CI machine without one still compiles and links them). MINIVLM_CUDA=1
demands them (and fails if they cannot build), MINIVLM_CUDA=0 leaves them out. The toolkit is CUDA_HOME
if set, else the one the `nvcc` on the PATH belongs to (asked with `nvcc --dryrun`, which also sees
through a wrapper script); the GPU architectures are TORCH_CUDA_ARCH_LIST if set, else the visible
GPUs', else 8.0 and 9.0 (A100, H100).
"""

import glob
import os
import platform
import re
import shutil
import subprocess
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def find_cuda_home():
    """The CUDA toolkit's root: $CUDA_HOME, else where the nvcc on the PATH really lives, else None.

    torch guesses CUDA_HOME from the path of `nvcc` (its parent's parent), which is wrong when nvcc is a
    wrapper script in /usr/local/bin; `nvcc --dryrun` prints the toolkit it runs from as TOP=...
    """
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    nvcc = shutil.which("nvcc")
    if nvcc is None:
        return None
    try:
        out = subprocess.run([nvcc, "--dryrun", "-c", "-x", "cu", os.devnull, "-o", os.devnull],
                             capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.SubprocessError):
        return None
    match = re.search(r"^#\$ TOP=(.+)$", out.stdout + out.stderr, re.MULTILINE)
    return os.path.realpath(match.group(1).strip()) if match else os.path.dirname(os.path.dirname(os.path.realpath(nvcc)))


# torch.utils.cpp_extension reads CUDA_HOME when it is imported: settle it first.
CUDA_HOME = find_cuda_home()
if CUDA_HOME:
    os.environ["CUDA_HOME"] = CUDA_HOME

try:
    import torch  # noqa: E402
except ModuleNotFoundError:
    # pip builds in an isolated environment (without the installed torch) unless told not to.
    sys.exit("minivlm: the build cannot see torch. minivlm's extension compiles against the torch you have "
             "installed, so build it without isolation:\n"
             "    pip install torch==2.13.0 ninja\n"
             "    pip install --no-build-isolation -e .      (or: pip install --no-build-isolation .)")
from torch.utils.cpp_extension import BuildExtension, CppExtension, CUDAExtension  # noqa: E402

# Compiler flags and the ATen macro that selects the matching at::vec implementation, per instruction set.
ISA_FLAGS = {
    "avx512": ["-mavx512f", "-mavx512bw", "-mavx512vl", "-mavx512dq", "-mfma", "-mf16c",
               "-DCPU_CAPABILITY=AVX512", "-DCPU_CAPABILITY_AVX512"],
    "avx2": ["-mavx2", "-mfma", "-mf16c", "-DCPU_CAPABILITY=AVX2", "-DCPU_CAPABILITY_AVX2"],
    "default": ["-DCPU_CAPABILITY=DEFAULT"],
}


def cpu_isas():
    """The instruction sets to build the CPU kernels for: all three on x86-64, the plain one elsewhere."""
    return list(ISA_FLAGS) if platform.machine() in ("x86_64", "AMD64") else ["default"]


def want_cuda():
    """Build the CUDA kernels? MINIVLM_CUDA=0/1 decides; otherwise yes where a toolkit and a CUDA torch exist."""
    forced = os.environ.get("MINIVLM_CUDA", "")
    if forced not in ("", "0", "1"):
        raise SystemExit(f"MINIVLM_CUDA must be 0 or 1, got {forced!r}")
    problem = None
    if torch.version.cuda is None:
        problem = f"torch {torch.__version__} is a CPU-only build"
    elif not CUDA_HOME or not os.path.exists(os.path.join(CUDA_HOME, "bin", "nvcc")):
        problem = "no CUDA toolkit found (set CUDA_HOME or put nvcc on the PATH)"
    if forced == "0":
        return False
    if problem and forced == "1":
        raise SystemExit(f"MINIVLM_CUDA=1 but {problem}")
    if problem:
        print(f"minivlm: not building the CUDA kernels: {problem}")
    return problem is None


def cuda_arch_list():
    """TORCH_CUDA_ARCH_LIST if set; else the visible GPUs' (torch's default); else A100 and H100.

    Without a visible GPU torch would compile for every architecture it knows: many minutes for nothing.
    """
    if os.environ.get("TORCH_CUDA_ARCH_LIST"):
        return os.environ["TORCH_CUDA_ARCH_LIST"]
    if torch.cuda.is_available():
        return None
    return "8.0;9.0"


def extensions():
    """minivlm._C (the op schemas, the CPU dispatch, the CUDA kernels where they build) and one library of
    CPU kernels per instruction set."""
    def common():   # a fresh dict of lists for each extension: torch's helpers append to them in place
        return dict(include_dirs=[os.path.join(ROOT, "csrc")], extra_link_args=["-fopenmp"])

    cxx = ["-O3", "-fopenmp", "-Wno-unknown-pragmas"]
    cpu_sources = sorted(glob.glob(os.path.join("csrc", "cpu", "*.cpp")))
    isas = cpu_isas()
    print(f"minivlm: building the CPU kernels for {', '.join(isas)}")
    # Hidden visibility: nothing but minivlm_cpu_kernels() leaves a library, so an inline function compiled
    # with AVX-512 instructions can never be linked in place of its plain twin.
    kernels = [CppExtension(f"minivlm._cpu_{isa}", cpu_sources, **common(), extra_compile_args={
        "cxx": cxx + ["-fvisibility=hidden", "-fvisibility-inlines-hidden", f'-DMINIVLM_ISA="{isa}"'] + ISA_FLAGS[isa]})
        for isa in isas]
    sources = sorted(glob.glob(os.path.join("csrc", "*.cpp")))
    if not want_cuda():
        return [CppExtension("minivlm._C", sources, extra_compile_args={"cxx": cxx}, **common())] + kernels
    arch = cuda_arch_list()
    if arch:
        os.environ["TORCH_CUDA_ARCH_LIST"] = arch
    print(f"minivlm: building the CUDA kernels with {CUDA_HOME} for {arch or 'the visible GPUs'}")
    cuda_sources = sorted(glob.glob(os.path.join("csrc", "cuda", "*.cu")))
    nvcc = ["-O3", "-lineinfo"]
    return [CUDAExtension("minivlm._C", sources + cuda_sources, extra_compile_args={"cxx": cxx, "nvcc": nvcc},
                          **common())] + kernels


class Build(BuildExtension):
    """torch's BuildExtension (ninja), each extension in its own fixed folder build/<name>: the three CPU
    kernel libraries compile the same sources with other flags, and a fixed folder lets ninja skip what is
    already compiled."""

    def build_extension(self, ext):
        self.build_temp = os.path.join(ROOT, "build", ext.name)
        super().build_extension(ext)


# The version, and the Transformers version the parity tests hold for, have one home, minivlm/__init__.py
# (read as text: importing minivlm here would need torch).
INIT = open(os.path.join(ROOT, "minivlm", "__init__.py")).read()
VERSION = re.search(r'^__version__ = "([^"]+)"', INIT, re.MULTILINE).group(1)
TRANSFORMERS_VERSION = re.search(r'^TRANSFORMERS_VERSION = "([^"]+)"', INIT, re.MULTILINE).group(1)

setup(
    name="minivlm",
    version=VERSION,
    description="A minimal, from-scratch, educational PyTorch reference of five vision-language models",
    packages=find_packages(include=["minivlm", "minivlm.*"]),
    # the trained tiny VLM (a checkpoint folder of about 4 MB) and the pictures it is tested on
    package_data={"minivlm.tinyvlm": ["weights/*", "pictures/*"]},
    python_requires=">=3.10",
    # torch is deliberately unpinned: install it first (pip install torch==2.13.0 takes the CPU build), then
    # build with --no-build-isolation so this requirement is already met and nothing is downloaded.
    # jinja2 renders chat templates (torch depends on it too; named here because minivlm imports it).
    # matplotlib draws the training loss curve and the tutorials' figures (attention maps, projections).
    install_requires=["torch>=2.13", "numpy", "pillow", "ninja", "safetensors", "tokenizers", "tqdm", "jinja2",
                      "matplotlib"],
    extras_require={
        # `minivlm parity` compares with Transformers; nothing else in minivlm imports it
        "parity": [f"transformers=={TRANSFORMERS_VERSION}"],
        "test": ["pytest", "hypothesis", f"transformers=={TRANSFORMERS_VERSION}"],
    },
    entry_points={"console_scripts": ["minivlm=minivlm.tools.cli:main"]},
    ext_modules=extensions(),
    cmdclass={"build_ext": Build},
)
