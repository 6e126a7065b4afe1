"""The fixtures are real: recapture every case from tf-keras, and the Keras 3 ones from Keras 3,
and compare (float64 bitwise, float32 bitwise or within the last bits another CPU gives, see
docs/parity.md).

Runs ``fixtures/scripts/capture.py --check fixtures/`` and ``capture_keras3.py --check
fixtures/keras3`` in fresh processes (a capture sets TensorFlow's environment before
TensorFlow loads). Needs the keras extra, hence the
``keras`` marker: ``tox -e keras``. A fixture edited by hand or produced by numbaopt
fails here.
"""
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.keras

ROOT = Path(__file__).resolve().parent.parent


def test_recapture_is_bitwise_equal_to_committed_fixtures():
    pytest.importorskip("tf_keras")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "scripts" / "capture.py"), "--check", str(ROOT / "fixtures")],
        capture_output=True, text=True, timeout=1800,
    )
    sys.stdout.write(proc.stdout[-5000:])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "recapture check passed" in proc.stdout


def test_keras3_recapture_equals_committed_fixtures():
    """``fixtures/scripts/capture_keras3.py --check fixtures/keras3``: every Keras 3 case again,
    float64 bitwise, float32 bitwise or within the last bits."""
    pytest.importorskip("keras", minversion="3")
    proc = subprocess.run(
        [sys.executable, str(ROOT / "fixtures" / "scripts" / "capture_keras3.py"),
         "--check", str(ROOT / "fixtures" / "keras3")],
        capture_output=True, text=True, timeout=1800,
    )
    sys.stdout.write(proc.stdout[-5000:])
    assert proc.returncode == 0, proc.stdout[-5000:] + proc.stderr[-5000:]
    assert "recapture check passed" in proc.stdout
