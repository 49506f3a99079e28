"""The fused Triton kernel (twinpeaks._triton) against numpy, through Triton's interpreter on CPU tensors.

``TRITON_INTERPRET=1`` only works when set before triton is first imported, and other tests in this
process may import triton (torch.compile does), so the checks (tests/recording/triton_checks.py) run once in a
subprocess that sets it; each check is one test here. Skipped only when triton is not installed.
"""

import importlib.util
import json
import os
import subprocess
import sys

import pytest
import triton_checks

pytestmark = pytest.mark.skipif(importlib.util.find_spec("triton") is None,
                                reason="triton is not installed (pip install 'twinpeaks[gpu]')")

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


@pytest.fixture(scope="module")
def results():
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "triton_checks.py")], capture_output=True, text=True,
                          env=env, timeout=300)
    lines = proc.stdout.strip().splitlines()
    if proc.returncode or not lines:
        pytest.fail(f"the kernel checks did not run (exit {proc.returncode}):\n{proc.stderr[-3000:]}")
    return json.loads(lines[-1])


@pytest.mark.parametrize("name", list(triton_checks.CHECKS))
def test_kernel_against_numpy(results, name):
    assert name in results, f"check {name} did not report"
    assert results[name] == "ok", results[name]


def test_kernels_compile_for_cuda():
    """The compiled path (what runs on a GPU) lowers for sm_90: types and layouts the interpreter does not check."""
    try:
        from triton.backends import backends
    except Exception:
        backends = {}
    if "nvidia" not in backends:
        pytest.skip("triton has no nvidia backend here")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])}
    env.pop("TRITON_INTERPRET", None)
    proc = subprocess.run([sys.executable, os.path.join(HERE, "triton_checks.py"), "--compile"], capture_output=True,
                          text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out and all(v == "ok" for v in out.values()), out


def test_checks_can_fail():
    """A check that raises is reported as a failure, not as ok (the harness itself)."""
    env = dict(os.environ)
    env.pop("TRITON_INTERPRET", None)
    code = (f"import sys; sys.path.insert(0, {HERE!r}); import triton_checks as t; "
            "t.CHECKS['_boom'] = lambda: 1 / 0; t.main(['_boom'])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert "ZeroDivisionError" in json.loads(out.stdout.strip().splitlines()[-1])["_boom"]
