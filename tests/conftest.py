"""pytest's hooks and fixtures for the suite; what the tests import is in helpers.py.

Hypothesis profiles (choose with MINIVLM_HYPOTHESIS_PROFILE):
  ci  (default) derandomized, so CI runs the same examples every time; few enough to stay quick on 2 cores.
  dev           1000 examples per property, for a long local hunt after changing a kernel.
A failing example prints its reproduction blob (print_blob) so it can be replayed with @reproduce_failure.
"""

import inspect
import os
import sys

import pytest
import torch
from hypothesis import HealthCheck, settings

from helpers import CPU_ISAS, RUNNABLE_ISAS, Cpu, save, seed_torch


def pytest_configure(config):
    # Run against this checkout even where the package is not installed in editable mode.
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if root not in sys.path:
        sys.path.insert(0, root)
    settings.register_profile(
        "ci",
        derandomize=True,
        max_examples=60,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.register_profile(
        "dev",
        max_examples=1000,
        deadline=None,
        print_blob=True,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    )
    settings.load_profile(os.environ.get("MINIVLM_HYPOTHESIS_PROFILE", "ci"))


def pytest_report_header(config):
    lacking = [isa for isa in CPU_ISAS if isa not in RUNNABLE_ISAS]
    return (f"minivlm CPU kernels: compiled for {', '.join(CPU_ISAS)}; tested here: {', '.join(RUNNABLE_ISAS)}"
            + (f"; not run (this CPU lacks them): {', '.join(lacking)}" if lacking else ""))


@pytest.fixture(autouse=True)
def _seeded(request, monkeypatch):
    """Every test starts from the same global torch seed, so a failure reproduces on its own, and runs
    the compiled kernels even where MINIVLM_REFERENCE is set in the environment (the tests compare the
    kernels with the reference; test_reference_switch.py sets it where it means to). A test on a
    Cpu(isa) device runs that instruction set's kernels, and the ones before it are restored after."""
    monkeypatch.delenv("MINIVLM_REFERENCE", raising=False)
    seed_torch(0)
    device = getattr(request.node, "callspec", None) and request.node.callspec.params.get("device")
    if isinstance(device, Cpu):
        previous = torch.ops.minivlm.set_cpu_isa(device.isa)
        yield
        torch.ops.minivlm.set_cpu_isa(previous)
    else:
        yield


@pytest.fixture(scope="module")
def checkpoints(request, tmp_path_factory):
    """checkpoints(*args, **options) -> (a tiny Transformers model, the folder its save_pretrained wrote),
    built by the test module's build_checkpoint(*args, **options) once per module and configuration (the
    arguments with build_checkpoint's defaults filled in, however they are spelled)."""
    build = request.module.build_checkpoint
    cache = {}

    def get(*args, **options):
        bound = inspect.signature(build).bind(*args, **options)
        bound.apply_defaults()
        key = repr(sorted((name, sorted(value.items()) if isinstance(value, dict) else value)
                          for name, value in bound.arguments.items()))
        if key not in cache:
            hf = build(*args, **options)
            cache[key] = hf, save(hf, tmp_path_factory.mktemp(request.module.__name__))
        return cache[key]

    return get
