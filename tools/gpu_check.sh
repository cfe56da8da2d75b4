#!/usr/bin/env bash
# Build minivlm on a GPU machine, run the CUDA side of the kernel suite, and benchmark it: one script, so
# that a lent GPU does it all in one call. Logs and results go to $OUT (default ./gpu-check-out).
#
#   tools/gpu_check.sh [pytest -k expression]      # default: every test parametrized on cuda
#
# The machine's own torch is used (pip install --no-build-isolation --no-deps -e . builds against it).
set -uo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-$PWD/gpu-check-out}"
mkdir -p "$OUT"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
status=0

nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
"$PY" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, torch.cuda.get_device_name())" | tee -a "$OUT/gpu.txt"

echo "== build"
start=$SECONDS
if ! MINIVLM_CUDA=1 MAX_JOBS="${MAX_JOBS:-16}" "$PY" -m pip install --no-build-isolation --no-deps -e . > "$OUT/build.log" 2>&1; then
  grep -E "error" "$OUT/build.log" | head -40
  tail -30 "$OUT/build.log"
  echo "BUILD FAILED"
  exit 1
fi
echo "built in $((SECONDS - start)) s"
"$PY" - <<'EOF'
import torch, minivlm
ops = ["attention", "attention_backward", "rope", "rope_backward", "causal_mask"]
print("CUDA kernels:", {op: torch._C._dispatch_has_kernel_for_dispatch_key(f"minivlm::{op}", "CUDA") for op in ops})
EOF

echo "== tests on cuda"
start=$SECONDS
"$PY" -m pytest tests/test_attention.py tests/test_rope.py tests/test_causal_mask.py tests/test_autograd.py \
  tests/test_bad_input.py tests/test_reference_switch.py -q --maxfail=20 -k "${1:-cuda}" -p no:cacheprovider \
  > "$OUT/tests.log" 2>&1 || status=1
tail -25 "$OUT/tests.log"
echo "tests took $((SECONDS - start)) s"

echo "== benchmark"
"$PY" -m minivlm bench kernels --device cuda --json "$OUT/bench_cuda.json" > "$OUT/bench.log" 2>&1 || status=1
tail -40 "$OUT/bench.log"
exit $status
