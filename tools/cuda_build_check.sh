#!/usr/bin/env bash
# The CUDA build check: compile and link minivlm's CUDA kernels on a machine without a GPU, and check that
# every op has a CUDA kernel registered. A CUDA compile or link error fails it.
#
#   tools/cuda_build_check.sh
#
# It makes (once) or reuses a virtual environment with a CUDA build of torch in
# $MINIVLM_CUDA_VENV (default ~/.cache/minivlm/venv-cu130; `pip install torch==2.14.1` there is the
# CUDA 13.0 wheel), copies this checkout's tracked and new files to a scratch directory (the in-place
# CPU extension of the checkout is never touched), builds minivlm there with MINIVLM_CUDA=1 for sm_80
# and sm_90, and imports it.
#
# Where CI=true it is mandatory: no nvcc or no CUDA wheel fails it. Elsewhere, a machine without nvcc
# skips it with a line saying so.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
VENV="${MINIVLM_CUDA_VENV:-$HOME/.cache/minivlm/venv-cu130}"
TORCH_SPEC="${MINIVLM_CUDA_TORCH:-torch==2.14.1}"
ci=false
case "${CI:-}" in true|1|TRUE|True) ci=true ;; esac

if ! command -v nvcc >/dev/null 2>&1 && [ -z "${CUDA_HOME:-}" ]; then
  if $ci; then
    echo "cuda_build_check: FAILED: CI=true but no nvcc on the PATH and no CUDA_HOME" >&2
    exit 1
  fi
  echo "cuda_build_check: skipped: no CUDA toolkit (nvcc) on this machine"
  exit 0
fi

start=$SECONDS
# 1. The environment: made once, reused while its torch is a CUDA build.
if ! "$VENV/bin/python" -c "import torch, sys; sys.exit(torch.version.cuda is None)" 2>/dev/null; then
  echo "cuda_build_check: making $VENV with $TORCH_SPEC (about a minute, 5.4 GB)"
  rm -rf "$VENV"
  python3.11 -m venv "$VENV"
  "$VENV/bin/pip" install -q "$TORCH_SPEC" ninja setuptools wheel numpy
fi
# minivlm's own runtime dependencies: the final check imports minivlm, which (with torch loaded) imports
# the loader (safetensors) and the processors (pillow); an environment made before they were needed gets them.
if ! "$VENV/bin/python" -c "import numpy, PIL, safetensors, tokenizers, tqdm" 2>/dev/null; then
  "$VENV/bin/pip" install -q numpy pillow safetensors tokenizers tqdm
fi
"$VENV/bin/python" -c "import torch; print('cuda_build_check: torch', torch.__version__, 'CUDA', torch.version.cuda)"

# 2. A scratch copy of the checkout (tracked and untracked-but-not-ignored files).
WORK="$(mktemp -d "${TMPDIR:-/tmp}/minivlm-cuda-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
(cd "$ROOT" && git ls-files -co --exclude-standard -z | xargs -0 tar -cf - 2>/dev/null) | tar -xf - -C "$WORK"

# 3. Build with the CUDA kernels demanded, for the A100 (8.0) and H100 (9.0).
cd "$WORK"
MINIVLM_CUDA=1 TORCH_CUDA_ARCH_LIST="8.0;9.0" MAX_JOBS="${MAX_JOBS:-2}" \
  "$VENV/bin/python" setup.py -q build_ext --inplace > "$WORK/build.log" 2>&1 || {
  grep -E "error|Error" "$WORK/build.log" | grep -v "Wmaybe-uninitialized" | head -40 >&2
  tail -20 "$WORK/build.log" >&2
  echo "cuda_build_check: FAILED: the CUDA build did not compile or link" >&2
  exit 1
}

# 4. Every op has a CUDA kernel (and still its CPU kernel); the library has device code for both targets.
"$VENV/bin/python" - <<'EOF'
import glob, subprocess, sys
import torch
import minivlm.ops  # noqa: F401  (defines the ops' schemas, then loads minivlm._C, which registers their kernels)

minivlm._extension.require("cuda_build_check")   # minivlm._C was built and loads

ops = ["attention", "attention_backward", "rope", "rope_backward", "causal_mask"]
missing = [f"{op} ({key})" for op in ops for key in ("CUDA", "CPU")
           if not torch._C._dispatch_has_kernel_for_dispatch_key(f"minivlm::{op}", key)]
if missing:
    sys.exit("cuda_build_check: FAILED: no kernel registered for " + ", ".join(missing))
lib = glob.glob("minivlm/_C*.so")[0]
data = open(lib, "rb").read()
for arch in ("sm_80", "sm_90"):
    if arch.encode() not in data:
        sys.exit(f"cuda_build_check: FAILED: {lib} has no {arch} code")
print("cuda_build_check: every op has a CUDA kernel:", ", ".join(ops))
EOF
echo "cuda_build_check: passed in $((SECONDS - start)) s"
