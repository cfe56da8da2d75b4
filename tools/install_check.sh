#!/usr/bin/env bash
# The install check: the README's install works whether or not the `wheel` package is present, a second
# install of an unchanged tree recompiles nothing, a regular install holds the package data (the shipped
# tiny VLM), and an isolated `pip install .` stops at once with a message saying what to run. Run it in the virtual environment the README's commands made:
#
#   bash tools/install_check.sh
#
# It installs `wheel` for the duration (and removes it again if it was not there), so it checks pip's
# path where a project with only a setup.py would take the legacy `setup.py develop`. It ends with the
# editable install back in place.
set -euo pipefail
cd "$(dirname "$0")/.."
log="$(mktemp -d "${TMPDIR:-/tmp}/minivlm-install-check.XXXXXX")"
trap 'rm -rf "$log"' EXIT
fail() { echo "install_check: FAILED: $*" >&2; tail -25 "$log/pip.log" >&2 || true; exit 1; }

had_wheel=true
python -c "import wheel" 2>/dev/null || had_wheel=false
$had_wheel || pip install -q wheel

# 1. With wheel present: an editable and a regular install, both through PEP 517/660. The tree is
#    unchanged since the last build, so ninja finds every object up to date and nothing recompiles.
for target in "-e ." "."; do
  start=$SECONDS
  # shellcheck disable=SC2086
  pip install -v --no-build-isolation --no-deps $target > "$log/pip.log" 2>&1 || fail "pip install --no-build-isolation $target"
  grep -q "setup.py develop" "$log/pip.log" && fail "pip took the legacy setup.py develop path"
  compiled=$(grep -cE "^\s*\[[0-9]+/[0-9]+\] .*(c\+\+|nvcc)" "$log/pip.log" || true)
  [ "$compiled" -eq 0 ] || fail "pip install --no-build-isolation $target recompiled $compiled files of an unchanged tree"
  (cd /tmp && python -c "import torch, minivlm; minivlm.attention; print('install_check: imports, CPU kernels for', torch.ops.minivlm.cpu_isa())") \
    || fail "minivlm does not import after pip install $target"
  # the trained tiny VLM and its test pictures are package data: a regular install copies them into
  # site-packages, and the model loads from there
  (cd /tmp && python -c "
import minivlm, minivlm.tinyvlm as t
folder = t.shipped_folder()
assert ('$target' == '-e .') != ('site-packages' in str(folder)), folder
assert len(list((folder.parent / 'pictures').glob('*.png'))) == 12
minivlm.from_pretrained(folder, progress=False)
print('install_check: the shipped tiny VLM loads from', folder)") \
    || fail "the shipped tiny VLM is missing or does not load after pip install $target"
  echo "install_check: pip install --no-build-isolation $target with wheel present: $((SECONDS - start)) s, nothing recompiled"
done

# 2. An isolated build cannot see the installed torch: it must stop at once and say what to run.
if pip install --no-deps . > "$log/pip.log" 2>&1; then
  fail "an isolated pip install . succeeded: it should stop and point to --no-build-isolation"
fi
grep -q "no-build-isolation" "$log/pip.log" || fail "the isolated build's error does not mention --no-build-isolation"
echo "install_check: isolated pip install . stops with the --no-build-isolation message"

# 3. Back to the editable install (the tests and the demo run from the checkout), wheel as it was.
pip install -q --no-build-isolation --no-deps -e . > "$log/pip.log" 2>&1 || fail "restoring the editable install"
$had_wheel || pip uninstall -q -y wheel
echo "install_check: passed"
