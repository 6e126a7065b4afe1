"""numbaopt.keras3 against the Keras 3 fixtures recorded from Keras 3.15 on TensorFlow
(``fixtures/keras3/*.h5``, written by ``fixtures/scripts/capture_keras3.py``).

Every case is replayed from Keras's own ``serialize()`` output: parameters, learning rate
and iterations after every step, the optimizer's variables after the last (docs/parity.md).
Needs only h5py: no TensorFlow.
"""
import json

import h5py
import numpy as np
import pytest

from numbaopt import cli, parity
from tests.cases import FIXTURES

KERAS3 = FIXTURES / "keras3"
ALL = parity.load_fixtures(KERAS3)

#: The fourteen Keras 3 optimizers.
OPTIMIZERS = {"SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Ftrl",
              "Lion", "Lamb", "Adafactor", "Muon", "ScheduleFreeAdamW"}


def _id(fx):
    return f"{fx.optimizer.lower()}-{fx.case}-{fx.dtype}"


@pytest.mark.parametrize("fixture", ALL, ids=_id)
def test_replay_matches_keras3(fixture):
    result = parity.replay(fixture)
    assert result.error is None, result.error
    assert result.passed, (
        f"{fixture.label}: max relative error {result.max_error:.3g} > {result.tolerance:g} "
        f"at step {result.worst_step}, {result.worst_tensor}"
    )


def test_numbaopt_parity_replays_the_keras3_fixtures(capsys):
    assert cli.main(["parity", str(KERAS3), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["ok"] and doc["failed"] == 0 and len(doc["results"]) == len(ALL)
    assert {r["config"] for r in doc["results"]} == {"keras3"}
    assert doc["references"]["keras3"]["keras_version"].startswith("3.")


def test_the_default_fixtures_include_keras3():
    files = parity.fixture_files()
    assert {f.name for f in files if f.parent.name == "keras3"} == {f"{o.lower()}.h5" for o in OPTIMIZERS}
    assert any(f.parent.name != "keras3" for f in files)


# ------------------------------------------------------- the fixture set itself


def test_every_keras3_optimizer_in_both_dtypes():
    assert {fx.optimizer for fx in ALL} == OPTIMIZERS
    for opt in OPTIMIZERS:
        cases = {(fx.case, fx.dtype) for fx in ALL if fx.optimizer == opt}
        assert {("defaults", "float32")} <= cases and any(d == "float64" for _, d in cases), opt
        assert len({c for c, _ in cases}) >= 2, opt


def test_base_optimizer_features_and_schedules_are_covered():
    configs = {(fx.optimizer, fx.case): fx.serialized["config"] for fx in ALL}
    for opt in ("SGD", "Adam", "AdamW"):
        cfgs = [c for (o, _), c in configs.items() if o == opt]
        for key in ("clipnorm", "clipvalue", "global_clipnorm", "weight_decay", "ema_overwrite_frequency",
                    "gradient_accumulation_steps", "loss_scale_factor"):
            assert any(c[key] is not None for c in cfgs), (opt, key)
        assert any(c["use_ema"] for c in cfgs), opt
    schedules = {(c["learning_rate"]["class_name"], json.dumps(c["learning_rate"]["config"], sort_keys=True))
                 for c in configs.values() if isinstance(c["learning_rate"], dict)}
    assert {name for name, _ in schedules} == {"ExponentialDecay", "PiecewiseConstantDecay", "PolynomialDecay",
                                               "InverseTimeDecay", "CosineDecay", "CosineDecayRestarts"}
    assert any(json.loads(c).get("staircase") for _, c in schedules)
    assert any(json.loads(c).get("cycle") for _, c in schedules)
    assert any(json.loads(c).get("warmup_steps") for _, c in schedules)


def test_keras3_fixtures_are_well_formed():
    for fx in ALL:
        assert fx.family == "keras3" and fx.serialized["class_name"] == fx.optimizer, fx.label
        assert fx.serialized["module"] == "keras.optimizers"
        assert {len(s) for s in fx.param_shapes} >= {1, 2, 3}, fx.label
        assert "dense/kernel" in fx.param_names and "dense_1/kernel" in fx.param_names
        size = sum(int(np.prod(s)) for s in fx.param_shapes)
        assert fx.params.shape == (fx.steps + 1, size) and fx.grads.shape == (fx.steps, size)
        assert fx.params.dtype == fx.grads.dtype == np.dtype(fx.dtype)
        assert fx.learning_rate.shape == fx.iterations.shape == (fx.steps,)
        assert np.all(np.isfinite(fx.params)), fx.label
        paths = [path for path, _ in fx.variables]
        name = fx.serialized["config"]["name"]
        assert paths[0] == f"{name}/iteration" and all(p.startswith(name + "/") for p in paths), fx.label
        assert int(fx.variables[0][1]) == fx.steps
        accumulating = fx.serialized["config"]["gradient_accumulation_steps"]
        assert list(fx.iterations) == [k // (accumulating or 1) for k in range(1, fx.steps + 1)], fx.label
        assert (fx.finalized is not None) == fx.serialized["config"]["use_ema"], fx.label


def test_files_record_their_versions():
    for path in sorted(KERAS3.glob("*.h5")):
        with h5py.File(path, "r") as f:
            assert f.attrs["family"] == "keras3" and f.attrs["keras_version"] == "3.15.1", path
            assert f.attrs["capture_script"] == "fixtures/scripts/capture_keras3.py"


def test_keras3_fixtures_are_compact():
    assert sum(p.stat().st_size for p in KERAS3.glob("*.h5")) < 4 * 2**20


def test_docs_list_every_case():
    """docs/parity.md's Keras 3 table names every recorded case, and the dtypes left out."""
    import re

    text = (FIXTURES.parent / "docs" / "parity.md").read_text().split("## Keras 3 fixtures", 1)[1]
    rows = dict(re.findall(r"^\| `(\w+)` \| (.*) \| \d+ \|$", text, re.M))
    for fx in ALL:
        assert f"`{fx.case}`" in rows[fx.optimizer], (fx.optimizer, fx.case)
    for opt, cases in rows.items():
        for case, only in re.findall(r"`(\w+)`(?: \((\w+) only\))?", cases):
            dtypes = {fx.dtype for fx in ALL if (fx.optimizer, fx.case) == (opt, case)}
            assert dtypes == ({only} if only else {"float32", "float64"}), (opt, case)
