"""Exported Keras 3 and tf-keras new-style model files against real Keras (``tox -e keras``):
the library and backend that wrote a file load numbaopt's export of it with exactly the
exported state and train on as numbaopt does.

Each backend runs in a process of its own (Keras 3 reads ``KERAS_BACKEND`` once, on import;
``tests/keras_reload.py``): tf-keras and Keras 3 on TensorFlow, Keras 3 on JAX and on torch.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.test_keras3_files import CASES
from tests.test_keras_files import TOLERANCE

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parent.parent

#: Files Keras saved before the first step, into which export lays out Keras's variables.
FRESH = ["k3_adam:fresh", "k3_adam_ema:fresh", "k3_adam_accumulation:fresh", "k3_adafactor:fresh", "tfk_adam_keras:fresh",
         "jax_adam:fresh", "torch_adam:fresh", "tfk_adam_h5:fresh", "tfk_adafactor_h5:fresh", "k3h5_adam:fresh",
         "torch_h5_sgd_rich:fresh"]

#: Adam files exported with a learning rate and beta_1 set in numbaopt (written into the config).
SETTINGS = ["k3_adam:settings", "tfk_adam_h5:settings", "tfk_adam_keras:settings", "k3_adam_loss_scale_rich:settings"]

#: Keras 3's own load_model does not restore the optimizer of a Keras 3 .h5 (nor, in 3.15, compile it:
#: its own files fail too), though the file holds the state: only the weights are Keras's to load.
NOT_RESTORED_BY_KERAS = ("k3h5_", "jax_h5_", "torch_h5_")


def backend_of(case):
    return "jax" if case.startswith("jax_") else "torch" if case.startswith("torch_") else "tensorflow"


@pytest.fixture(scope="module")
def reloaded(tmp_path_factory):
    """The reload results of every case, one process per backend."""
    pytest.importorskip("keras")
    pytest.importorskip("tf_keras")
    folder = tmp_path_factory.mktemp("reload")
    results = {}
    for backend in ("tensorflow", "jax", "torch"):
        cases = [c for c in CASES + FRESH + SETTINGS if backend_of(c) == backend]
        env = {**os.environ, "KERAS_BACKEND": backend, "TF_ENABLE_ONEDNN_OPTS": "0", "TF_CPP_MIN_LOG_LEVEL": "3",
               "CUDA_VISIBLE_DEVICES": "", "PYTHONPATH": str(ROOT)}
        proc = subprocess.run([sys.executable, "-m", "tests.keras_reload", str(folder), *cases], capture_output=True,
                              text=True, timeout=1800, env=env, cwd=ROOT)
        for line in proc.stdout.splitlines():
            if line.startswith("{"):
                result = json.loads(line)
                how = ":fresh" if result["fresh"] else ":settings" if result["settings"] else ""
                results[f"{result['case']}{how}"] = result
        missing = backend != "tensorflow" and f"No module named '{backend}'" in proc.stderr
        assert proc.returncode == 0 or missing, proc.stderr[-3000:]
    return results


@pytest.mark.parametrize("case", CASES + FRESH)
def test_keras_loads_the_export_and_continues_as_numbaopt_does(case, reloaded):
    if backend_of(case) != "tensorflow" and case not in reloaded:
        pytest.skip(f"Keras 3's {backend_of(case)} backend is not installed")
    result = reloaded[case]
    assert "error" not in result, result.get("error")
    assert result["weights"], "Keras loaded other weights than the exported parameters"
    if case.startswith(NOT_RESTORED_BY_KERAS):
        return
    assert result["state"] and result["loaded"] == result["variables"], "Keras loaded another optimizer state"
    assert result["config"] in (True, None)
    bound = TOLERANCE[result["dtype"]]
    assert result["numbaopt_vs_keras"] <= bound, f"numbaopt and Keras {result['numbaopt_vs_keras']:.3g} apart"
    assert result["keras_vs_recorded"] <= bound


@pytest.mark.parametrize("case", SETTINGS)
def test_keras_builds_the_optimizer_with_the_exported_settings(case, reloaded):
    result = reloaded[case]
    assert "error" not in result, result.get("error")
    assert (result["learning_rate"], result["beta_1"]) == (0.125, 0.5)
    assert result["state"] and result["weights"] and result["config"] in (True, None)
    assert result["numbaopt_vs_keras"] <= TOLERANCE[result["dtype"]]
