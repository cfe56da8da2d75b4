"""minivlm.use_reference() and MINIVLM_REFERENCE=1 route the public ops to minivlm.reference."""

import json
import os
import subprocess
import sys
import threading

import pytest
import torch

import minivlm
from minivlm import ops, reference

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NoKernels:
    """Stands in for torch.ops.minivlm: any use of a compiled op fails the test."""

    def __getattr__(self, name):
        raise AssertionError(f"the compiled op torch.ops.minivlm.{name} was called")


def sample_calls():
    q = torch.randn(1, 4, 3, 8)
    k = torch.randn(1, 2, 5, 8)
    v = torch.randn(1, 2, 5, 8)
    x = torch.randn(1, 2, 5, 8)
    cos, sin = torch.randn(5, 8), torch.randn(5, 8)
    pm = torch.tensor([[0, 1, 1, 1, 1]])
    mask = torch.randn(3, 5)
    return {
        "attention": ((q, k, v, mask), dict(is_causal=True, window=2, scale=0.3)),
        "rope": ((x, cos, sin), {}),
        "causal_mask": ((pm, 3), dict(dtype=torch.bfloat16, window=2)),
    }


@pytest.fixture
def recorder(monkeypatch):
    """Wrap the three reference functions so that each call is recorded (and still computed)."""
    calls = []
    for name in ("attention", "rope", "causal_mask"):
        original = getattr(reference, name)

        def wrapped(*args, _name=name, _original=original, **kwargs):
            calls.append(_name)
            return _original(*args, **kwargs)

        monkeypatch.setattr(reference, name, wrapped)
    return calls


def test_use_reference_calls_reference_and_no_kernel(recorder, monkeypatch):
    calls = sample_calls()
    expected = {n: getattr(reference, n)(*a, **kw) for n, (a, kw) in calls.items()}
    recorder.clear()
    monkeypatch.setattr(torch.ops, "minivlm", NoKernels())
    assert not minivlm.reference_enabled()
    with minivlm.use_reference():
        assert minivlm.reference_enabled()
        for name, (args, kwargs) in calls.items():
            got = getattr(minivlm, name)(*args, **kwargs)
            assert torch.equal(got, expected[name]), name
    assert recorder == ["attention", "rope", "causal_mask"]
    assert not minivlm.reference_enabled()
    # Outside the context the kernels are back (and here they are gone, so the call must fail).
    with pytest.raises(AssertionError, match="compiled op torch.ops.minivlm.rope"):
        minivlm.rope(*calls["rope"][0])


def test_kernels_are_used_by_default(recorder):
    for name, (args, kwargs) in sample_calls().items():
        getattr(minivlm, name)(*args, **kwargs)
        getattr(ops, name)(*args, **kwargs)
    assert recorder == []


@pytest.mark.parametrize("reference_mode", [True, False], ids=["reference", "kernels"])
def test_arguments_are_checked_once(monkeypatch, reference_mode):
    """A public op checks its arguments once on either path: in reference mode the reference checks them,
    and the public function does not check them again first."""
    checked = []
    for name in ("check_attention", "check_rope", "check_causal_mask"):
        original = getattr(ops, name)
        assert getattr(reference, name) is original

        def counted(*args, _name=name, _original=original):
            checked.append(_name)
            return _original(*args)

        monkeypatch.setattr(ops, name, counted)
        monkeypatch.setattr(reference, name, counted)
    with minivlm.use_reference(reference_mode):
        for name, (args, kwargs) in sample_calls().items():
            getattr(minivlm, name)(*args, **kwargs)
    assert checked == ["check_attention", "check_rope", "check_causal_mask"]


def test_use_reference_nests_and_restores(recorder):
    args, kwargs = sample_calls()["rope"]
    with minivlm.use_reference():
        with minivlm.use_reference(False):
            assert not minivlm.reference_enabled()
            minivlm.rope(*args)
        assert minivlm.reference_enabled()
        minivlm.rope(*args)
        with pytest.raises(RuntimeError, match="boom"):
            with minivlm.use_reference(False):
                raise RuntimeError("boom")
        assert minivlm.reference_enabled(), "an exception inside use_reference(False) must restore the state"
    assert not minivlm.reference_enabled()
    assert recorder == ["rope"]


def test_use_reference_is_per_thread():
    seen = []
    with minivlm.use_reference():
        th = threading.Thread(target=lambda: seen.append(minivlm.reference_enabled()))
        th.start()
        th.join()
        assert minivlm.reference_enabled()
    assert seen == [False]


@pytest.mark.parametrize("value,enabled", [("1", True), ("true", True), ("0", False), ("", False),
                                           ("false", False), ("False", False)])
def test_environment_variable(monkeypatch, recorder, value, enabled):
    monkeypatch.setenv("MINIVLM_REFERENCE", value)
    assert minivlm.reference_enabled() is enabled
    args, kwargs = sample_calls()["attention"]
    minivlm.attention(*args, **kwargs)
    assert recorder == (["attention"] if enabled else [])
    # The context manager overrides the environment both ways.
    recorder.clear()
    with minivlm.use_reference(not enabled):
        minivlm.attention(*args, **kwargs)
    assert recorder == ([] if enabled else ["attention"])


def test_environment_variable_in_a_fresh_process():
    """MINIVLM_REFERENCE=1 set before Python starts: every public op runs the reference, and no compiled
    op is touched."""
    script = r"""
import json, torch, minivlm
from minivlm import reference
calls = []
for name in ("attention", "rope", "causal_mask"):
    original = getattr(reference, name)
    def wrapped(*a, _n=name, _o=original, **kw):
        calls.append(_n)
        return _o(*a, **kw)
    setattr(reference, name, wrapped)
class NoKernels:
    def __getattr__(self, name):
        raise AssertionError("kernel " + name)
torch.ops.minivlm = NoKernels()
q = torch.randn(1, 2, 3, 4); k = torch.randn(1, 1, 4, 4)
out = minivlm.attention(q, k, k, is_causal=True)
r = minivlm.rope(q, torch.randn(3, 4), torch.randn(3, 4))
m = minivlm.causal_mask(torch.ones(1, 4, dtype=torch.bool), 3)
print(json.dumps({"enabled": minivlm.reference_enabled(), "calls": calls,
                  "finite": bool(torch.isfinite(out).all())}))
"""
    env = dict(os.environ, MINIVLM_REFERENCE="1")
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    proc = subprocess.run([sys.executable, "-c", script], env=env, cwd=ROOT, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"enabled": True, "calls": ["attention", "rope", "causal_mask"], "finite": True}
