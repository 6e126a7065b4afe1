"""Keras 3 and tf-keras new-style model files into ``numbaopt.keras3``, without TensorFlow.

The files in ``fixtures/keras_files/`` (``fixtures/scripts/capture_keras_files.py``): Keras 3
``.keras`` and ``.h5`` under TensorFlow, JAX and torch, tf-keras new-style ``.h5`` and
``.keras``, every optimizer of ``numbaopt.keras3`` and the base settings (schedule, weight
decay, clipping, EMA, accumulation, loss scaling, a LossScaleOptimizer), plain and rich
models (Embedding, Conv1D, LSTM, BatchNormalization, a nested model). Each is imported and
continued with the gradients Keras used after saving; the weights must be Keras's.
"""
import io
import json
import os
import warnings
import zipfile

import h5py
import numpy as np
import pytest

import numbaopt
from numbaopt import keras3, keras3_files
from numbaopt.cli import main as cli_main
from numbaopt.keras3_files import Keras3File
from numbaopt.keras_files import KerasStateNotSaved, read_keras_file
from tests import keras_reload
from tests.test_keras_files import (
    ALL_CASES, KERAS_FILES, TOLERANCE, copy_of, edit_optimizer_config, recorded, relative_error, renamed, setting,
)

#: Every file imported into numbaopt.keras3 (the tf-keras legacy ones go to Keras 2.0's family).
CASES = [c for c in ALL_CASES if not c.startswith(("legacy_", "tfk_legacy_"))]


@pytest.mark.parametrize("case", CASES)
def test_import_then_the_recorded_steps_reach_keras_weights(case):
    path, keras_class, dtype, grads, weights = recorded(case)
    opt, params = numbaopt.import_keras_optimizer(path)
    assert isinstance(opt, keras3.Keras3Optimizer) and type(opt).__name__ == keras_class
    assert opt.iterations > 0 and all(p.dtype == dtype and p.flags.writeable for p in params.values())
    for step, (g, expected) in enumerate(zip(grads, weights)):
        assert [x.shape for x in g] == [p.shape for p in params.values()]
        opt.apply_gradients(zip(g, params.values()), names=list(params))
        for name, ours, keras_value in zip(params, params.values(), expected):
            error = relative_error(ours, keras_value)
            assert error <= TOLERANCE[dtype], f"{case} step {step + 1} {name}: {error:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_the_files_variables_are_the_optimizers_keras_variables(case):
    """What the file holds, in its order, is what the imported optimizer lists (``keras_variables``)."""
    found = read_keras_file(recorded(case)[0])
    assert isinstance(found, Keras3File)
    opt, params = numbaopt.import_keras_optimizer(found.path)
    listed = opt.keras_variables()
    if found.generation == "keras3" and opt.slot_names:
        assert [path for path, _ in listed] == [e.path for e in keras3_files.layout(opt, "keras3", list(params), list(params.values()))]
    assert int(listed[0][1]) == int(found.iterations.value)
    for kind, stored in found.slots.items():
        for i, slot in enumerate(stored):
            np.testing.assert_array_equal(opt.state().slots[kind][i], np.asarray(slot.value, opt.state().slots[kind][i].dtype))


def test_a_tf_keras_legacy_optimizer_in_a_keras_file_starts_afresh_and_says_so():
    path = recorded("tfk_legacy_adam_keras")[0]
    with pytest.warns(KerasStateNotSaved, match="without its state"):
        opt, params = numbaopt.import_keras_optimizer(path)
    assert type(opt) is numbaopt.optimizers.Adam and opt.iterations == 0 and len(params) == 4


def test_batch_normalization_statistics_are_not_parameters():
    _, params = numbaopt.import_keras_optimizer(recorded("k3_adam_rich")[0])
    bn = [n for n in params if "batch_normalization" in n]
    assert bn == ["layers/batch_normalization/vars/0", "layers/batch_normalization/vars/1"]  # gamma, beta
    _, params = numbaopt.import_keras_optimizer(recorded("k3h5_sgd_rich")[0])
    assert not [n for n in params if "moving_" in n] and any(n.endswith("bn/gamma") for n in params)


def test_a_loss_scale_optimizer_imports_its_inner_optimizer():
    found = read_keras_file(recorded("k3_sgd_loss_scale")[0])
    assert found.loss_scaled and found.keras_class == "SGD"
    assert all(path.startswith("optimizer/inner_optimizer/vars/") for path in found.variables)  # the copy Keras reads


REFUSALS = [
    ("k3_adam", renamed("MyAdam"), "custom"),
    ("k3_adam", lambda c, config: (c, {**config, "learning_rate": {"module": "mine", "class_name": "MySchedule",
                                                                  "config": {}, "registered_name": "MySchedule"}}),
     "custom schedule"),
    ("k3_adam", setting(learning_rate="my_function"), "Python function"),
    ("tfk_adam_h5", renamed("Custom>MyAdam"), "custom"),
    ("tfk_adam_h5", renamed("Nadam"), "u_product"),
    ("tfk_adam_keras", renamed("Nadam"), "u_product"),
]


@pytest.mark.parametrize("case, change, named", REFUSALS, ids=[f"{c}-{n}" for c, _, n in REFUSALS])
def test_what_numbaopt_cannot_reproduce_is_refused_naming_it(case, change, named, tmp_path, capsys):
    path = copy_of(case, tmp_path)
    edit_optimizer_config(path, change)
    with pytest.raises(ValueError, match=named) as error:
        numbaopt.import_keras_optimizer(path)
    assert str(error.value).startswith(f"{path}: ")
    assert cli_main(["inspect", str(path)]) == 1
    assert named in capsys.readouterr().err


def test_a_custom_module_is_refused_but_a_backends_own_module_is_not(tmp_path):
    found = read_keras_file(recorded("torch_adam")[0])
    assert found.keras_class == "Adam"  # recorded as keras.src.backend.torch.optimizers.torch_adam
    path = copy_of("k3_adam", tmp_path)
    edit_optimizer_config(path, lambda c, config: (c, config))
    import zipfile
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    model = json.loads(members["config.json"])
    model["compile_config"]["optimizer"].update(module="mypackage.optimizers", registered_name="MyPackage>Adam")
    members["config.json"] = json.dumps(model)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(ValueError, match="custom"):
        numbaopt.import_keras_optimizer(path)


def test_settings_are_checked_before_the_structure(tmp_path):
    """A refused setting is the ValueError even where the slots would not fit either."""
    path = copy_of("k3_adam", tmp_path)
    edit_optimizer_config(path, lambda c, config: ("MyOptimizer", {**config, "amsgrad": True}))
    with pytest.raises(ValueError, match="MyOptimizer"):
        numbaopt.import_keras_optimizer(path)


def test_slots_that_do_not_fit_the_settings_are_a_checkpoint_error(tmp_path):
    path = copy_of("k3_adam", tmp_path)
    edit_optimizer_config(path, setting(amsgrad=True))  # the file holds no velocity_hat
    with pytest.raises(numbaopt.CheckpointError, match="keeps"):
        numbaopt.import_keras_optimizer(path)


@pytest.mark.parametrize("case", ALL_CASES)
def test_inspect_shows_the_files_optimizer_state(case, capsys):
    path = recorded(case)[0]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", KerasStateNotSaved)
        assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    found = read_keras_file(path)
    assert f"class       {found.keras_class}" in out
    for name in found.names:
        for kind in found.slots:
            assert any(line.split()[1:3] == [name, kind] for line in out.splitlines() if line[:1].isdigit())


# ----------------------------------------------------------------------- export


def stepped(case, steps=2):
    """Import ``case`` and apply its first recorded steps."""
    path, _, _, grads, _ = recorded(case)
    opt, params = numbaopt.import_keras_optimizer(path)
    for g in grads[:steps]:
        opt.apply_gradients(zip(g, params.values()), names=list(params))
    return opt, params


def same_state(a, b):
    """Bitwise the same Keras variables (paths, dtypes, values) and settings."""
    assert a.get_config() == b.get_config() and a.iterations == b.iterations
    ours, theirs = a.keras_variables(), b.keras_variables()
    assert [(p, v.dtype, v.shape) for p, v in ours] == [(p, v.dtype, v.shape) for p, v in theirs]
    for (path, x), (_, y) in zip(ours, theirs):
        assert x.tobytes() == y.tobytes(), path


def zip_members(path):
    with zipfile.ZipFile(path) as z:
        return {info.filename: (z.read(info), info.compress_type, info.date_time) for info in z.infolist()}


@pytest.mark.parametrize("case", CASES)
def test_export_then_import_gives_back_the_state_bitwise(case, tmp_path):
    """Every shipped kind (Keras 3 .keras and .h5 under each backend, tf-keras new-style .h5 and
    .keras, every optimizer and base setting): export after two steps, import the copy, and
    the state, settings and parameters are the exported ones; both continue alike."""
    opt, params = stepped(case)
    path = copy_of(case, tmp_path)
    before = zip_members(path) if path.suffix == ".keras" else None
    numbaopt.export_keras_optimizer(opt, path, parameters=params)
    again, again_params = numbaopt.import_keras_optimizer(path)
    same_state(opt, again)
    assert list(again_params) == list(params)
    for name in params:
        assert params[name].tobytes() == again_params[name].tobytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left
    if before is not None:  # every member but the weights as it was (the config too: no setting changed)
        after = zip_members(path)
        assert list(after) == list(before)
        assert {k: v for k, v in after.items() if k != "model.weights.h5"} == {k: v for k, v in before.items() if k != "model.weights.h5"}
    grads = recorded(case)[3]
    for g in grads[2:]:
        opt.apply_gradients(zip(g, params.values()), names=list(params))
        again.apply_gradients(zip(g, again_params.values()), names=list(again_params))
    same_state(opt, again)


def test_a_loss_scale_optimizers_inner_state_is_written_in_both_copies(tmp_path):
    opt, params = stepped("k3_adam_loss_scale_rich")
    path = copy_of("k3_adam_loss_scale_rich", tmp_path)
    numbaopt.export_keras_optimizer(opt, path, parameters=params)
    with zipfile.ZipFile(path) as z, h5py.File(io.BytesIO(z.read("model.weights.h5")), "r") as f:
        inner = [f[f"optimizer/inner_optimizer/vars/{i}"][()] for i in range(len(f["optimizer/inner_optimizer/vars"]))]
        outer = [f[f"optimizer/vars/{i}"][()] for i in range(len(f["optimizer/vars"]))]
        assert len(outer) == len(inner) + 4 and int(inner[0]) == opt.iterations == 6
        for a, b in zip(inner, outer[4:]):
            assert np.asarray(a).tobytes() == np.asarray(b).tobytes()
        assert float(outer[3]) == 32768.0  # the loss scale's own variables as they were


@pytest.mark.parametrize("case", ["k3_adam", "tfk_adam_h5", "tfk_adam_keras", "k3h5_adam", "k3_adam_loss_scale_rich"])
def test_export_writes_changed_settings_into_the_files_config(case, tmp_path):
    opt, params = stepped(case)
    opt.learning_rate, opt.beta_1 = 0.125, 0.5
    path = copy_of(case, tmp_path)
    numbaopt.export_keras_optimizer(opt, path)
    again, _ = numbaopt.import_keras_optimizer(path)
    assert again.learning_rate == 0.125 and again.beta_1 == 0.5
    same_state(opt, again)
    assert read_keras_file(path).keras_config["learning_rate"] == 0.125


def fresh_keras_copy(case, tmp_path):
    """A case's file as Keras saves it before the first step: the step count (and Keras 3's
    learning rate) alone."""
    return keras_reload.fresh_keras_copy(case, tmp_path)


@pytest.mark.parametrize("case", ["k3_adam", "k3_adam_ema", "k3_adam_accumulation", "k3_adafactor", "k3_nadam",
                                  "tfk_adam_keras", "tfk_adam_ema_keras", "jax_adam", "tfk_adam_h5", "tfk_adafactor_h5",
                                  "tfk_adam_ema_h5", "k3h5_adam", "k3h5_sgd_rich", "jax_h5_adam"])
def test_export_into_a_file_saved_before_the_first_step_lays_out_kerass_variables(case, tmp_path):
    opt, params = stepped(case)
    path = fresh_keras_copy(case, tmp_path)
    assert numbaopt.import_keras_optimizer(path)[0].iterations == 0
    numbaopt.export_keras_optimizer(opt, path, parameters=params)
    again, _ = numbaopt.import_keras_optimizer(path)
    same_state(opt, again)
    # the variables Keras itself saves after a step: as many, in its order, of the same shapes and dtypes
    ours, keras_own = keras_reload.file_values(path)[1], keras_reload.file_values(recorded(case)[0])[1]
    assert [(a.shape, a.dtype) for a in ours] == [(a.shape, a.dtype) for a in keras_own]


def test_an_optimizer_not_yet_built_writes_the_variables_keras_builds(tmp_path):
    _, params = numbaopt.import_keras_optimizer(recorded("k3_adam")[0])
    opt = keras3.Adam(learning_rate=0.01, name="adam")  # unnamed: matched by position
    path = copy_of("k3_adam", tmp_path)
    numbaopt.export_keras_optimizer(opt, path)
    found = read_keras_file(path)
    assert int(found.iterations.value) == 0
    assert all(not np.any(s.value) for stored in found.slots.values() for s in stored)


def _set(opt, **settings):
    for name, value in settings.items():
        setattr(opt, name, value)
    return opt


def _renamed_params(opt, params):
    opt.set_parameter_names([f"x{i}" for i in range(len(params))])
    return opt, None


def _excluding(opt, params):
    fresh = keras3.AdamW.from_config(opt.get_config())
    fresh.exclude_from_weight_decay(var_names=["bias"])
    return fresh, None


#: mismatch -> (case, make(opt, params) -> (optimizer to export, parameters=), what the ValueError says)
EXPORT_MISMATCHES = {
    "another class": ("k3_adam", lambda opt, params: (keras3.SGD(), None), "holds a Keras 3 optimizer Adam"),
    "a Keras 2.0 optimizer": ("k3_adam", lambda opt, params: (numbaopt.optimizers.Adam(), None), "numbaopt.keras3.Adam"),
    "amsgrad": ("k3_adam", lambda opt, params: (keras3.Adam(learning_rate=0.01, amsgrad=True, name="adam"), None), "amsgrad"),
    "use_ema": ("k3_adam", lambda opt, params: (keras3.Adam(learning_rate=0.01, use_ema=True, name="adam"), None), "use_ema"),
    "a schedule for a float": ("k3_adam", lambda opt, params: (keras3.Adam(
        learning_rate=keras3.schedules.ExponentialDecay(0.1, 10, 0.5), name="adam"), None), "learning_rate"),
    "Keras 3 arithmetic into tf-keras": ("tfk_adam_h5", lambda opt, params: (keras3.Adam(), None), "tf_keras=False"),
    "tf-keras arithmetic into Keras 3": ("k3_adam", lambda opt, params: (keras3.Adam(tf_keras=True), None), "tf_keras=True"),
    "a setting tf-keras lacks": ("tfk_adam_h5", lambda opt, params: (_set(opt, loss_scale_factor=2.0), None),
                                 "loss_scale_factor"),
    "other names": ("k3_adam", _renamed_params, "do not match"),
    "fewer parameters": ("k3_adam", lambda opt, params: (_two(params), None), "2 parameters"),
    "a parameter of another shape": ("k3_adam", lambda opt, params: (
        opt, {"layers/dense/vars/1": np.zeros(5, np.float32)}), "shape"),
    "a parameter of another dtype": ("k3_adam", lambda opt, params: (opt, {"layers/dense/vars/1": np.zeros(4)}), "dtype"),
    "an unknown parameter": ("k3_adam", lambda opt, params: (opt, {"layers/dense/vars/7": np.zeros(4, np.float32)}),
                             "no trainable variable"),
    "exclusions from weight decay": ("k3_adamw", _excluding, "exclude"),
}


def _two(params):
    opt = keras3.Adam(learning_rate=0.01, name="adam")
    opt.apply_gradients([(np.ones_like(p), p.copy()) for p in list(params.values())[:2]])
    return opt


@pytest.mark.parametrize("mismatch", sorted(EXPORT_MISMATCHES))
def test_export_refuses_a_mismatch_and_leaves_the_file_as_it_was(mismatch, tmp_path):
    case, make, match = EXPORT_MISMATCHES[mismatch]
    opt, params = stepped(case)
    path = copy_of(case, tmp_path)
    before = path.read_bytes()
    exported, parameters = make(opt, params)
    with pytest.raises(ValueError, match=match):
        numbaopt.export_keras_optimizer(exported, path, parameters=parameters)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("case", ["k3_sgd_loss_scale"])
def test_export_into_a_file_saved_before_the_first_step_is_refused_where_not_laid_out(case, tmp_path):
    """A LossScaleOptimizer's .keras saved before the first step holds no slots to write into,
    and its loss scale's own copy is not laid out."""
    opt, params = stepped(case)
    path = fresh_keras_copy(case, tmp_path)
    with zipfile.ZipFile(path) as z:
        members = [(i, z.read(i)) for i in z.infolist()]
    with zipfile.ZipFile(path, "w") as z:
        for info, data in members:
            if info.filename == "model.weights.h5":
                buffer = io.BytesIO(data)
                with h5py.File(buffer, "r+") as f:
                    for key in [k for k in f["optimizer/inner_optimizer/vars"] if int(k) >= 2]:
                        del f[f"optimizer/inner_optimizer/vars/{key}"]
                data = buffer.getvalue()
            z.writestr(info, data)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="before the first step"):
        numbaopt.export_keras_optimizer(opt, path, parameters=params)
    assert path.read_bytes() == before


def test_a_crash_while_exporting_leaves_the_previous_file(tmp_path, monkeypatch):
    opt, params = stepped("k3_adam_rich")
    path = copy_of("k3_adam_rich", tmp_path)
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        numbaopt.export_keras_optimizer(opt, path, parameters=params)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


@pytest.mark.parametrize("name", ["k3_adam.keras", "k3h5_adam.h5", "tfk_adam_h5.h5", "tfk_adam_keras.keras"])
def test_a_damaged_file_is_a_checkpoint_error_never_another_exception(name, tmp_path):
    """Bytes changed at random or the file cut short: a CheckpointError (or ValueError)
    naming what is wrong, whatever the damage; never another exception, never a hang."""
    import random

    data = (KERAS_FILES / name).read_bytes()
    rng = random.Random(name)
    for trial in range(24):
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 4, 32])):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        if trial % 4 == 0:
            damaged = damaged[: rng.randrange(len(damaged))]
        path = tmp_path / f"{trial}{os.path.splitext(name)[1]}"
        path.write_bytes(bytes(damaged))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                numbaopt.import_keras_optimizer(path)
            except (numbaopt.CheckpointError, ValueError) as error:
                assert str(error)
