"""Peak extra memory of one attention forward pass, each implementation measured in a fresh process.

A process's peak resident set size only ever grows, so one process cannot measure several
implementations one after another. `measure` therefore starts a new interpreter
(`python -m minivlm._memory SPEC`) per implementation. The child

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


def probe(spec: dict) -> dict:
    """In the child: run one forward of spec["impl"] on spec["shape"] and report the peak's rise."""
    import torch

    from .bench import AttentionShape, attention_function, attention_inputs

    torch.set_num_threads(spec["threads"])
    shape = AttentionShape(**spec["shape"])
    fn = attention_function(spec["impl"], shape)
    with torch.no_grad():
        fn(*attention_inputs(shape.tiny()))              # 1. warm up
        q, k, v = attention_inputs(shape)                # 2. inputs
        baseline = current_rss_kib()                     # 3. baseline
        peak_before = peak_rss_kib()
        out = fn(q, k, v)                                # 4. one forward
        peak_after = peak_rss_kib()
    del out
    return {"extra_kib": max(0, peak_after - baseline), "baseline_kib": baseline,
            "peak_before_kib": peak_before, "peak_after_kib": peak_after, "peak_rose": peak_after > peak_before}


def start(impl: str, shape: dict, threads: int) -> subprocess.Popen:
    """In the parent: launch a fresh Python process that probes `impl` on `shape` (AttentionShape fields).

    Probes do not disturb each other's numbers (each counts only its own process), so several may run
    at once; `finish` collects a probe's report.
    """
    spec = json.dumps({"impl": impl, "shape": shape, "threads": threads})
    package_parent = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_parent, env.get("PYTHONPATH")) if p)
    return subprocess.Popen([sys.executable, "-m", "minivlm._memory", spec],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def finish(proc: subprocess.Popen) -> dict:
    """Wait for a probe; its report, or {"error": message} where it failed (e.g. ran out of memory)."""
    stdout, stderr = proc.communicate()
    if proc.returncode != 0:
        lines = (stderr or stdout or "").strip().splitlines()
        return {"error": lines[-1] if lines else f"exit status {proc.returncode}"}
    return json.loads(stdout.strip().splitlines()[-1])


def measure(impl: str, shape: dict, threads: int) -> dict:
    """Probe `impl` on `shape` in a fresh process and return its report (see `probe`)."""
    return finish(start(impl, shape, threads))


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if len(argv) != 1:
        print("usage: python -m minivlm._memory '{\"impl\": ..., \"shape\": {...}, \"threads\": N}'",
              file=sys.stderr)
        return 2
    print(json.dumps(probe(json.loads(argv[0]))))
    return 0


if __name__ == "__main__":
    sys.exit(main())
