"""Device selection without a CUDA device: the ``device`` argument, and a CPU path that never
touches the CUDA target. (The CUDA side is tests/test_cuda.py, run by tox -e cudasim.)"""
import subprocess
import sys

import numpy as np
import pytest

from numbaopt import devices, optimizers
from tests.cases import NAMES, gradient_steps, make_params


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_device_is_in_the_config_only_when_given(name):
    cls = getattr(optimizers, name)
    assert "device" not in cls().get_config()
    opt = cls(device="cpu")
    assert opt.get_config()["device"] == "cpu"
    assert cls.from_config(opt.get_config()).get_config() == opt.get_config()
    assert "device" not in opt.checkpoint_config()  # a checkpoint loads on any device


@pytest.mark.parametrize("value", ["gpu", "CUDA", None, 0])
def test_bad_device_is_refused(value):
    with pytest.raises(ValueError, match="device must be 'auto', 'cpu' or 'cuda'"):
        optimizers.Adam(device=value)


@pytest.mark.parametrize("name", NAMES, ids=str.lower)
def test_device_cpu_runs_numpy_arrays(name):
    params, forced = make_params(np.float64), make_params(np.float64)
    auto, cpu = getattr(optimizers, name)(), getattr(optimizers, name)(device="cpu")
    for grads in gradient_steps(steps=2):
        auto.apply_gradients(zip(grads, params))
        cpu.apply_gradients(zip(grads, forced))
    for p, q in zip(params, forced):
        np.testing.assert_array_equal(p, q)


def test_device_cuda_without_cuda_is_a_clear_error_that_changes_nothing(monkeypatch):
    from numba import cuda

    monkeypatch.setattr(devices, "_CUDA", [])
    monkeypatch.setattr(cuda, "is_available", lambda: False)
    params = make_params(np.float64)
    before = [p.copy() for p in params]
    opt = optimizers.Adam(device="cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        opt.apply_gradients(zip(gradient_steps(steps=1)[0], params))
    assert opt.iterations == 0
    for p, q in zip(params, before):
        np.testing.assert_array_equal(p, q)


def test_cpu_step_never_imports_the_cuda_target():
    code = (
        "import sys, numpy as np\n"
        "from numbaopt import optimizers\n"
        "p = np.zeros(3)\n"
        "optimizers.Adam(clipnorm=1.0).apply_gradients([(np.ones(3), p)])\n"
        "assert p[0] < 0\n"
        "print(sorted(m for m in sys.modules if m.startswith(('numba.cuda', 'numba_cuda'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
