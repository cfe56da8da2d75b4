"""Peak memory, each implementation measured in a fresh process.

A process's peak resident set size only ever grows, so one process cannot measure several
implementations one after another. `start_probe` therefore starts a new interpreter
(`python -m MODULE SPEC`) per implementation, where MODULE hands SPEC to its probe (`child_main`).
The attention probe (`memory_probe` in minivlm.tools.bench.kernels)

  1. warms the implementation up on a tiny problem (thread pools, BLAS buffers, lazy initialisation),
  2. builds the real inputs q, k, v,
  3. notes its current resident size (the baseline: interpreter + libraries + inputs),
  4. runs the forward pass once, and
  5. reports how far the peak rose above the baseline: the extra memory the call needed, output included.

If the peak never rose above what the process had already reached before step 3 (say, while importing
libraries), the rise is only an upper bound; the report says so with peak_rose = False.

Which peak: getrusage(RUSAGE_SELF).ru_maxrss is the portable one, but on Linux a child started by
fork + exec inherits its parent's ru_maxrss (the kernel carries the old address space's peak across exec),
so in a child of a big benchmark process it starts out at the parent's peak. The peak of the process's own
address space, VmHWM in /proc/self/status, has no such inheritance; we read that where it exists and fall
back to ru_maxrss elsewhere. Both are in KiB.
"""

import json
import os
import resource
import subprocess
import sys


def current_rss_kib() -> int:
    """The resident set size right now, in KiB (Linux: the second field of /proc/self/statm, in pages)."""
    with open("/proc/self/statm") as f:
        pages = int(f.read().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") // 1024


def peak_rss_kib() -> int:
    """The highest resident set size this process has had, in KiB: VmHWM on Linux, else ru_maxrss."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])          # "VmHWM:    123456 kB"
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS


def start_probe(module: str, spec: dict) -> subprocess.Popen:
    """In the parent: launch a fresh Python process, `python -m module SPEC`, that probes `spec`.

    The child imports this same minivlm (its folder goes first on PYTHONPATH). Probes do not disturb
    each other's numbers (each counts only its own process), so several may run at once; `finish_probe`
    collects a probe's report.
    """
    import minivlm

    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(minivlm.__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", module, json.dumps(spec)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish_probe(proc: subprocess.Popen) -> dict:
    """Wait for a probe; its report, or {"error": message} where it failed (e.g. ran out of memory)."""
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        lines = (stderr or stdout or "").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(stdout.strip().splitlines()[-1])


def run_probe(module: str, spec: dict) -> dict:
    """Probe `spec` in a fresh process running `module` and return its report."""
    return finish_probe(start_probe(module, spec))


def child_main(probe, argv=None) -> int:
    """In the child (a module's `__main__`): print probe(SPEC) as JSON, SPEC being the one argument."""
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m MODULE SPEC   (SPEC: the probe's spec as JSON)", file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(argv[0]))))
    return 0
