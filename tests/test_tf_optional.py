"""TensorFlow is optional: without it numbaopt imports and runs, and TFOptimizer says what to install.

Runs in the default environment. TensorFlow's absence is simulated in a subprocess by a
meta-path finder that refuses it, so the test means the same with or without TensorFlow
installed.
"""
import json
import subprocess
import sys

WITHOUT_TENSORFLOW = """
import json, sys
import numpy as np

class HideTensorFlow:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("tensorflow", "tf_keras", "keras"):
            raise ImportError(f"No module named {name!r} (hidden by the test)")
        return None

sys.meta_path.insert(0, HideTensorFlow())
import numbaopt
from numbaopt import optimizers

p = np.ones(3)
opt = optimizers.get("adam")
opt.apply_gradients([(np.ones(3), p)])
result = {"iterations": opt.iterations, "updated": bool(np.all(p < 1))}
try:
    optimizers.TFOptimizer(object())
except ImportError as error:
    result["error"] = str(error)
result["tensorflow_imported"] = any(m.split(".")[0] in ("tensorflow", "tf_keras") for m in sys.modules)
json.dump(result, sys.stdout)
"""


def test_numbaopt_runs_without_tensorflow_and_tfoptimizer_names_the_extra():
    run = subprocess.run([sys.executable, "-c", WITHOUT_TENSORFLOW], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    result = json.loads(run.stdout)
    assert result["iterations"] == 1 and result["updated"]
    assert "[keras]" in result["error"] and "pip install" in result["error"]
    assert not result["tensorflow_imported"]


def test_install_commands_fit_how_numbaopt_was_installed(monkeypatch, tmp_path):
    """From a source tree: an editable install of that tree; from a folder: that folder;
    from an index: the package name."""
    from numbaopt import extras

    tree = extras._TREE
    if (tree / "pyproject.toml").exists():
        assert extras.install_command("keras") == f'pip install -e "{tree}[keras]"'
    monkeypatch.setattr(extras, "_TREE", tmp_path)  # as if installed in site-packages
    monkeypatch.setattr(extras, "_installed_from", lambda: tmp_path / "checkout")
    assert extras.install_command("cuda") == f'pip install "{tmp_path / "checkout"}[cuda]"'
    monkeypatch.setattr(extras, "_installed_from", lambda: None)  # from a wheel: numbaopt is on no index
    monkeypatch.setattr(extras, "_extra_requirements", lambda extra: ["mpi4py>=4", "mpich"])
    assert extras.install_command("mpi") == 'pip install "mpi4py>=4" "mpich" (or, from a numbaopt checkout: pip install ".[mpi]")'
