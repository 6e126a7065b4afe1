"""numbaopt against the Keras 2.0 golden fixtures recorded from real Keras (``fixtures/*.h5``;
the Keras 3 ones are tests/test_parity_keras3.py).

Every case is replayed twice: from the Keras-2.0-style config with the unclipped
gradients, and from the config tf-keras's own ``get_config()`` returned with the
gradients that optimizer received. Parameters and slots must match after every step
(docs/parity.md). Needs only h5py: no TensorFlow.
"""
import json
import shutil

import h5py
import numpy as np
import pytest

import numbaopt
from numbaopt import cli, optimizers, parity
from tests.cases import FIXTURES, NAMES

ALL = [fx for fx in parity.load_fixtures(FIXTURES) if fx.family == "keras2"]


def run_cli(*argv):
    """``numbaopt parity ARGV``'s exit status."""
    return cli.main(["parity", *argv])


def _id(fx):
    return f"{fx.optimizer.lower()}-{fx.case}-{fx.dtype}"


@pytest.mark.parametrize("route", parity.ROUTES)
@pytest.mark.parametrize("fixture", ALL, ids=_id)
def test_replay_matches_keras(fixture, route):
    result = parity.replay(fixture, route)
    assert result.error is None, result.error
    assert result.passed, (
        f"{fixture.label} ({route}): max relative error {result.max_error:.3g} > "
        f"{result.tolerance:g} at step {result.worst_step}, {result.worst_tensor}"
    )


@pytest.mark.parametrize("fixture", ALL, ids=_id)
def test_config_round_trip(fixture):
    """numbaopt's get_config is the recorded Keras-2.0-style config, by either route
    (less the clip settings the capture applied outside the Keras optimizer)."""
    keras2 = optimizers.deserialize({"class_name": fixture.optimizer, "config": fixture.keras2_config})
    assert keras2.get_config() == fixture.keras2_config
    from_keras = optimizers.deserialize({"class_name": fixture.optimizer, "config": fixture.keras_config})
    expected = dict(fixture.keras2_config)
    if fixture.clipping == "composed":
        expected.pop("clipnorm", None)
        expected.pop("clipvalue", None)
    assert from_keras.get_config() == expected


# ------------------------------------------------------- the fixture set itself


def test_fixture_coverage():
    """Every registered optimizer has fixtures, covering its defaults, other settings, its
    schedule and both clips in both dtypes, and nothing else is recorded."""
    by_opt = {}
    for fx in ALL:
        by_opt.setdefault(fx.optimizer, []).append(fx)
    missing = set(NAMES) - set(by_opt)
    assert not missing, f"no Keras fixtures for {sorted(missing)}: record them with fixtures/scripts/capture.py"
    assert set(by_opt) == set(NAMES)
    for opt, fxs in by_opt.items():
        for dtype in ("float32", "float64"):
            cfgs = [fx.keras2_config for fx in fxs if fx.dtype == dtype]
            defaults = optimizers.deserialize({"class_name": opt, "config": {}}).get_config()
            assert defaults in cfgs, (opt, dtype, "defaults")
            assert any(c != defaults and "clipnorm" not in c and "clipvalue" not in c for c in cfgs)
            if "schedule_decay" in defaults:
                assert any(c["schedule_decay"] != defaults["schedule_decay"] for c in cfgs)
            if "decay" in defaults:
                assert any(c["decay"] > 0 for c in cfgs), (opt, dtype, "decay")
            assert any("clipnorm" in c and "clipvalue" not in c for c in cfgs)
            assert any("clipvalue" in c and "clipnorm" not in c for c in cfgs)
            assert any("clipnorm" in c and "clipvalue" in c for c in cfgs)
            if "nesterov" in defaults:
                momentum = [c for c in cfgs if c["momentum"] > 0]
                assert any(c["nesterov"] for c in momentum) and any(not c["nesterov"] for c in momentum)
        assert min(fx.steps for fx in fxs) >= 30
        assert max(fx.steps for fx in fxs) >= 200


def test_clipnorm_cases_cross_the_threshold():
    for fx in ALL:
        if "clipnorm" in fx.keras2_config:
            with h5py.File(fx.file, "r") as f:
                norms = f[fx.group]["global_norm"][()]
            clipped = norms >= fx.keras2_config["clipnorm"]
            assert clipped.any() and not clipped.all(), fx.label


def test_fixture_shapes_and_ranks():
    for fx in ALL:
        ranks = {len(s) for s in fx.param_shapes}
        assert 0 in ranks and {1, 2} <= ranks, fx.label
        size = sum(int(np.prod(s)) for s in fx.param_shapes)
        assert fx.params.shape == (fx.steps + 1, size)
        assert fx.grads.shape == (fx.steps, size)
        assert fx.slots.shape == (fx.steps, len(fx.slot_names), size)
        assert fx.params.dtype == np.dtype(fx.dtype)
        assert list(fx.iterations) == list(range(1, fx.steps + 1))
        assert (fx.applied_grads is not None) == (fx.clipping == "composed")
        scalar_state = [name for name, _ in getattr(optimizers, fx.optimizer).scalar_state]
        assert (fx.m_schedule is not None) == ("m_schedule" in scalar_state)


def test_fixtures_are_compact():
    assert sum(p.stat().st_size for p in FIXTURES.glob("*.h5")) < 10 * 2**20


def test_relative_error():
    ref = np.array([1.0, -2.0, 4.0], dtype=np.float32)
    assert parity.relative_error(ref, ref) == 0.0
    assert parity.relative_error(ref + np.float32(0.004), ref) == pytest.approx(1e-3, rel=1e-3)
    assert parity.relative_error(np.array([np.nan, 0, 0]), ref) == float("inf")
    assert parity.relative_error(np.zeros(2), ref) == float("inf")  # shape mismatch
    # Below the smallest normal number both sides count as zero (TensorFlow flushes denormals).
    assert parity.relative_error(np.float64(1e-39), np.float32(0.0)) == 0.0
    assert parity.relative_error(np.float64(1e-37), np.float32(0.0)) > 1


# ------------------------------------------------- configs numbaopt must refuse


def _keras_config(optimizer):
    return next(fx.keras_config for fx in ALL if fx.optimizer == optimizer and fx.case == "defaults")


@pytest.mark.parametrize("optimizer, key, value", [
    ("Adam", "amsgrad", True),
    ("Adagrad", "initial_accumulator_value", 0.1),
    ("RMSprop", "centered", True),
    ("RMSprop", "momentum", 0.9),
    ("Adam", "clipnorm", 1.0),  # tf-keras clipnorm is per tensor; Keras 2.0's is global
])
def test_tf_keras_settings_numbaopt_cannot_honour_are_refused(optimizer, key, value):
    config = dict(_keras_config(optimizer), **{key: value})
    with pytest.raises(ValueError):
        optimizers.deserialize({"class_name": optimizer, "config": config})


def test_tf_keras_global_clipnorm_is_keras2_clipnorm():
    config = dict(_keras_config("Adam"), global_clipnorm=0.6)
    assert optimizers.deserialize({"class_name": "Adam", "config": config}).get_config()["clipnorm"] == 0.6


# ------------------------------------------------------------------------- CLI


def _corrupt_copy(tmp_path, scale=1.0 + 1e-4):
    """fixtures/adam.h5 in tmp_path with one float32 parameter changed after one step."""
    path = tmp_path / "adam.h5"
    shutil.copy(FIXTURES / "adam.h5", path)
    with h5py.File(path, "r+") as f:
        ds = f["custom-float32"]["params"]
        data = ds[()]
        data[17, 3] *= np.float32(scale)
        ds[...] = data
    return path


def test_cli_passes_on_shipped_fixtures(capsys):
    assert run_cli(str(FIXTURES / "nadam.h5")) == 0
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert lines[0].split() == ["optimizer", "case", "dtype", "config", "steps", "max", "error",
                                "tolerance", "verdict"]
    assert lines[-1].startswith("parity PASSED")
    assert "FAIL" not in out


def test_cli_fails_on_corrupted_fixture(tmp_path, capsys):
    path = _corrupt_copy(tmp_path)
    assert run_cli(str(tmp_path)) == 1
    out = capsys.readouterr().out
    assert "FAIL Adam/custom/float32 (keras2): step 17, param" in out
    assert out.strip().splitlines()[-1].startswith("parity FAILED")
    assert path.exists()


def test_cli_json(tmp_path, capsys):
    _corrupt_copy(tmp_path)
    assert run_cli(str(tmp_path / "adam.h5"), "--json") == 1
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is False and doc["device"] == "cpu"
    assert doc["failed"] == 2 and doc["passed"] == len(doc["results"]) - 2
    bad = [r for r in doc["results"] if not r["passed"]]
    assert {(r["case"], r["dtype"], r["worst_step"]) for r in bad} == {("custom", "float32", 17)}
    assert doc["reference"]["tensorflow_version"]
    row = doc["results"][0]
    assert set(row) >= {"optimizer", "case", "dtype", "config", "steps", "max_error", "tolerance", "passed"}


def test_cli_missing_path(tmp_path, capsys):
    assert run_cli(str(tmp_path / "nowhere")) == 2
    captured = capsys.readouterr()
    assert "no fixture files" in captured.err and captured.out == ""


@pytest.mark.parametrize("content", ["checkpoint", "foreign-hdf5", "fixture-without-cases-attrs"])
def test_cli_refuses_files_that_are_not_fixtures(tmp_path, capsys, content):
    path = tmp_path / "other.h5"
    if content == "checkpoint":
        numbaopt.save_optimizer(optimizers.Adam(), path)
    else:
        with h5py.File(path, "w") as f:
            f.attrs["format_version"] = 1
            if content == "fixture-without-cases-attrs":
                f.attrs["capture_script"] = "fixtures/capture.py"
                f.create_group("adam-float32").attrs["optimizer"] = "Adam"
    assert run_cli(str(path)) == 2
    assert "not a numbaopt fixture file" in capsys.readouterr().err


def test_numbaopt_parity_subcommand(capsys):
    """The console command: ``numbaopt parity [PATH] [--json]``."""
    try:
        status = cli.main(["parity", str(FIXTURES / "adagrad.h5"), "--json"])
    except SystemExit as exc:
        status = exc.code
    assert status in (0, None)
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] is True and doc["failed"] == 0


def test_cli_cuda_without_gpu(capsys):
    cuda = pytest.importorskip("numba.cuda")
    if cuda.is_available():
        pytest.skip("a CUDA GPU is present")
    assert run_cli(str(FIXTURES / "sgd.h5"), "--device", "cuda") == 2
    assert "cuda" in capsys.readouterr().err.lower()


def test_capture_script_describes_every_registered_optimizer(monkeypatch):
    """The capture script records every registered optimizer: its Keras tables cover them."""
    import importlib.util
    import os
    import sys

    spec = importlib.util.spec_from_file_location("capture", FIXTURES / "scripts" / "capture.py")
    capture = importlib.util.module_from_spec(spec)
    monkeypatch.setitem(sys.modules, "capture", capture)  # its dataclasses look themselves up there
    monkeypatch.setattr(os, "environ", dict(os.environ))  # it sets TensorFlow's (and CUDA's) variables
    spec.loader.exec_module(capture)
    assert set(capture.OPTIMIZERS) == set(NAMES)
    recorded = {(fx.optimizer, fx.case) for fx in ALL}
    planned = {(case.optimizer, case.name) for case in capture.all_cases()}
    assert planned == recorded


def test_progress_goes_to_stderr_a_line_per_fixture_off_a_terminal(capsys):
    assert run_cli(str(FIXTURES / "adagrad.h5"), "--json") == 0
    captured = capsys.readouterr()
    json.loads(captured.out)  # stdout holds the JSON document only
    lines = captured.err.strip().splitlines()
    cases = [fx for fx in ALL if fx.optimizer == "Adagrad"]
    assert len(lines) == len(cases)
    assert lines[0] == f"parity 1/{len(cases)} {cases[0].label} ok"


def test_progress_is_a_bar_on_a_terminal():
    import io

    from numbaopt.parity.report import Progress

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    stream = Terminal()
    progress = Progress(2, stream)
    progress.advance(ALL[0], [])
    progress.advance(ALL[1], [])
    text = stream.getvalue()
    assert text.startswith("\r[" + "#" * 15 + "." * 15 + "] 1/2") and text.endswith("\n") and text.count("\n") == 1


def test_version(capsys):
    with pytest.raises(SystemExit) as exit_:
        cli.main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"numbaopt {numbaopt.__version__}"
