"""Keras model files: import, export, refusals and hostile files, without TensorFlow.

The model files in ``fixtures/keras_files/`` were saved by real Keras runs
(``fixtures/scripts/capture_keras_files.py``), each with the gradients of the steps Keras
took after saving and the weights it reached (``<case>.steps.h5``). Importing a file and
applying those gradients must reach Keras's weights. ``tests/test_keras_files_tf.py``
(``tox -e keras``) loads exported files back into tf-keras.
"""
import io
import json
import os
import shutil
import zipfile
from pathlib import Path

import h5py
import numpy as np
import pytest

import numbaopt
from numbaopt import optimizers
from numbaopt.checkpoint import TEMPORARY_SUFFIX, CheckpointError
from numbaopt.cli import main as cli_main
from numbaopt import keras_files, keras_isolation, keras_reading
from numbaopt.keras_files import read_keras_file

KERAS_FILES = Path(__file__).resolve().parent.parent / "fixtures" / "keras_files"
ALL_CASES = sorted(p.name.removesuffix(".steps.h5") for p in KERAS_FILES.glob("*.steps.h5"))
#: The files of tf-keras's legacy optimizers, imported into Keras 2.0's family (numbaopt.optimizers);
#: the others import into numbaopt.keras3 (tests/test_keras3_files.py).
CASES = [c for c in ALL_CASES if c.startswith("legacy_")]
H5_CASES = CASES
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}


def recorded(case):
    """(model file, optimizer class name, dtype, grads per step, Keras's weights per step)."""
    with h5py.File(KERAS_FILES / f"{case}.steps.h5", "r") as f:
        n = int(f.attrs["n_parameters"])
        grads = [[f[f"grads/{i}"][s] for i in range(n)] for s in range(int(f.attrs["steps"]))]
        weights = [[f[f"weights/{i}"][s] for i in range(n)] for s in range(int(f.attrs["steps"]))]
        return KERAS_FILES / f.attrs["model_file"], f.attrs["optimizer"], f.attrs["dtype"], grads, weights


def relative_error(ours, keras):
    return float(np.max(np.abs(ours - keras)) / max(np.max(np.abs(keras)), np.finfo(keras.dtype).tiny))


def copy_of(case, tmp_path):
    source = recorded(case)[0]
    target = tmp_path / source.name
    shutil.copyfile(source, target)
    return target


def fresh_copy(case, tmp_path):
    """A copy of ``case`` as Keras saves it before the first step: tf-keras legacy without
    optimizer weights, new-style with its iteration count alone, Keras 3 without slots."""
    path = copy_of(case, tmp_path)
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as z:
            members = {name: z.read(name) for name in z.namelist()}

        def drop_slots(f):
            for key in list(f["optimizer/vars"])[2:]:
                del f[f"optimizer/vars/{key}"]
            f["optimizer/vars/0"][()] = 0

        members["model.weights.h5"] = _edited_weights(members["model.weights.h5"], drop_slots)
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return path
    with h5py.File(path, "r+") as f:
        new_style = "iteration:0" in f["optimizer_weights"]
        del f["optimizer_weights"]
        if new_style:
            f["optimizer_weights/iteration:0"] = np.int64(0)
            f["optimizer_weights"].attrs["weight_names"] = np.asarray([b"iteration:0"])
    return path


def test_every_kind_of_file_is_shipped():
    assert {c.split("_")[0] for c in ALL_CASES} >= {"legacy", "new", "keras3", "k3", "k3h5", "jax", "torch", "tfk"}
    legacy = {recorded(c)[1] for c in CASES if c.startswith("legacy")}
    assert legacy == {cls.__name__ for cls in optimizers.rule_based()}
    assert {recorded(c)[2] for c in ALL_CASES} == {"float32", "float64"}


@pytest.mark.parametrize("case", CASES)
def test_import_then_the_recorded_steps_reach_keras_weights(case):
    path, keras_class, dtype, grads, weights = recorded(case)
    opt, params = numbaopt.import_keras_optimizer(path)
    assert type(opt).__name__ == keras_class
    assert opt.parameter_names == tuple(params)
    assert opt.iterations > 0 and all(p.dtype == dtype and p.flags.writeable for p in params.values())
    for step, (g, expected) in enumerate(zip(grads, weights)):
        opt.apply_gradients(zip(g, params.values()), names=list(params))
        for name, ours, keras in zip(params, params.values(), expected):
            error = relative_error(ours, keras)
            assert error <= TOLERANCE[dtype], f"{case} step {step + 1} {name}: {error:.3g}"


@pytest.mark.parametrize("case", CASES)
def test_import_loads_every_slot_and_the_config_the_file_holds(case):
    found = read_keras_file(recorded(case)[0])
    opt, params = numbaopt.import_keras_optimizer(found.path)
    assert opt.iterations == int(found.iterations.value)
    state = opt.state()
    for kind in opt.slot_names:
        for i, name in enumerate(params):
            expected = found.slots[kind][i].value if kind in found.slots else np.zeros_like(params[name])
            np.testing.assert_array_equal(state.slots[kind][i], expected)
    for name, slot in found.scalars.items():
        assert state.scalars[name] == float(slot.value)
    config = found.keras_config
    assert opt.lr == config["learning_rate"]
    for key in ("epsilon", "beta_1", "beta_2", "rho", "nesterov"):  # from the file, never numbaopt's defaults
        if key in config:
            assert getattr(opt, key) == config[key], key


@pytest.mark.parametrize("case", CASES)
def test_a_file_saved_before_the_first_step_imports_as_a_fresh_optimizer(case, tmp_path):
    if refuses_fresh(case, tmp_path):
        return
    opt, params = numbaopt.import_keras_optimizer(fresh_copy(case, tmp_path))
    _, trained = numbaopt.import_keras_optimizer(recorded(case)[0])
    assert opt.iterations == 0 and list(params) == list(trained)
    assert all(not np.any(a) for arrays in opt.state().slots.values() for a in arrays)
    assert opt.state().scalars == dict(type(opt).scalar_state)


def refuses_fresh(case, tmp_path):
    """Whether ``case`` starts from a non-zero accumulator (tf-keras's Adagrad), which only its
    saved slots hold: without them the file is refused."""
    if read_keras_file(recorded(case)[0]).keras_config.get("initial_accumulator_value", 0) == 0:
        return False
    with pytest.raises(ValueError, match="initial_accumulator_value=0.1"):
        numbaopt.import_keras_optimizer(fresh_copy(case, tmp_path))
    return True


def test_names_are_as_keras_writes_them():
    _, params = numbaopt.import_keras_optimizer(KERAS_FILES / "legacy_adam.h5")
    assert list(params) == ["hidden/kernel:0", "hidden/bias:0", "output/kernel:0", "output/bias:0"]
    _, params = numbaopt.import_keras_optimizer(KERAS_FILES / "keras3_adam.keras")
    assert list(params) == ["layers/dense/vars/0", "layers/dense/vars/1", "layers/dense_1/vars/0", "layers/dense_1/vars/1"]
    _, params = numbaopt.import_keras_optimizer(KERAS_FILES / "k3h5_adam.h5")
    assert list(params) == ["model/hidden/kernel", "model/hidden/bias", "model/output/kernel", "model/output/bias"]


def test_a_step_with_other_names_is_refused():
    opt, params = numbaopt.import_keras_optimizer(KERAS_FILES / "legacy_adam.h5")
    before = {k: v.copy() for k, v in params.items()}
    with pytest.raises(ValueError, match="hidden/kernel:0"):
        opt.apply_gradients(zip([np.ones_like(p) for p in params.values()], params.values()),
                            names=["a", "b", "c", "d"])
    assert opt.iterations == 4 and all(np.array_equal(before[k], params[k]) for k in params)


# ------------------------------------------------------------------- refusals


def edit_optimizer_config(path, change):
    """Apply ``change(class_name, config) -> (class_name, config)`` to the optimizer config of a copy."""
    if path.suffix == ".keras":
        with zipfile.ZipFile(path) as z:
            members = {name: z.read(name) for name in z.namelist()}
        model = json.loads(members["config.json"])
        description = model["compile_config"]["optimizer"]
        description["class_name"], description["config"] = change(description["class_name"], description["config"])
        members["config.json"] = json.dumps(model)
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name, data)
        return
    with h5py.File(path, "r+") as f:
        training = json.loads(f.attrs["training_config"])
        description = training["optimizer_config"]
        description["class_name"], description["config"] = change(description["class_name"], description["config"])
        f.attrs["training_config"] = json.dumps(training).encode()


def setting(**values):
    return lambda class_name, config: (class_name, {**config, **values})


def renamed(new_name):
    return lambda class_name, config: (new_name, config)


#: (case, change, the setting the ValueError must name)
REFUSALS = [
    ("legacy_adam", setting(amsgrad=True), "amsgrad"),
    ("legacy_sgd", setting(clipnorm=1.0), "clipnorm"),
    ("legacy_adam", setting(learning_rate={"class_name": "ExponentialDecay", "config": {}}), "schedule"),
    ("legacy_rmsprop", setting(centered=True), "centered"),
    ("legacy_rmsprop", setting(momentum=0.9), "momentum"),
    ("legacy_adam", renamed("MyAdam"), "custom"),
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


def test_a_custom_keras3_class_is_refused_whatever_its_name(tmp_path):
    path = copy_of("keras3_adam", tmp_path)
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


def test_legacy_settings_cast_through_float32_are_rounded_as_tensorflow_rounds_them(tmp_path):
    path = copy_of("legacy_adam_float64", tmp_path)
    edit_optimizer_config(path, setting(decay=0.01))
    opt, _ = numbaopt.import_keras_optimizer(path)
    assert opt.decay == float(np.float32(0.01)) != 0.01
    path = copy_of("legacy_adam", tmp_path)  # float32: the arithmetic rounds it anyway
    edit_optimizer_config(path, setting(decay=0.01))
    assert numbaopt.import_keras_optimizer(path)[0].decay == 0.01


def test_legacy_nadam_in_float64_is_refused(tmp_path):
    """Its schedule uses 0.96 rounded to float32 (docs/parity.md, difference 10)."""
    path = copy_of("legacy_nadam", tmp_path)
    with h5py.File(path, "r+") as f:
        for group in (f["model_weights"], f["optimizer_weights"]):
            def widen(name, obj, group=group):
                if isinstance(obj, h5py.Dataset) and obj.dtype == np.float32:
                    value = obj[()].astype(np.float64)
                    del group[name]
                    group[name] = value
            names = []
            group.visititems(lambda name, obj: names.append(name) if isinstance(obj, h5py.Dataset) else None)
            for name in names:
                widen(name, group[name])
    with pytest.raises(ValueError, match="0.96"):
        numbaopt.import_keras_optimizer(path)


# -------------------------------------------------------------- hostile files


def damage_h5(case, tmp_path, edit):
    path = copy_of(case, tmp_path)
    with h5py.File(path, "r+") as f:
        edit(f)
    return path


def replace_dataset(where, value):
    def edit(f):
        del f[where]
        f[where] = value
    return edit


def set_attribute(key, value):
    def edit(f):
        f.attrs[key] = value
    return edit


def training_config(change):
    def edit(f):
        f.attrs["training_config"] = change(f.attrs["training_config"])
    return edit


HOSTILE_H5 = {
    "training_config not JSON": training_config(lambda text: text[: len(text) // 2]),
    "training_config a list": training_config(lambda text: b"[1, 2]"),
    "no optimizer_config": training_config(lambda text: json.dumps({"loss": "mse"}).encode()),
    "NaN learning rate": training_config(lambda text: text.replace('"learning_rate": 0.009999999776482582',
                                                                   '"learning_rate": NaN')),
    "infinite epsilon": training_config(lambda text: text.replace('"epsilon": 1e-06', '"epsilon": Infinity')),
    "negative learning rate": training_config(lambda text: text.replace('"learning_rate": 0.00999',
                                                                        '"learning_rate": -0.00999')),
    "epsilon missing": training_config(lambda text: text.replace('"epsilon": 1e-06, ', '').replace(', "epsilon": 1e-06', '')),
    "slot of another shape": replace_dataset("optimizer_weights/Adam/hidden/kernel/m:0", np.zeros((4, 3), np.float32)),
    "slot of another dtype": replace_dataset("optimizer_weights/Adam/hidden/kernel/m:0", np.zeros((3, 4), np.float64)),
    "slot of strings": replace_dataset("optimizer_weights/Adam/hidden/kernel/m:0", np.array([b"x"] * 12).reshape(3, 4)),
    "slot missing": lambda f: f.__delitem__("optimizer_weights/Adam/hidden/kernel/m:0"),
    "iteration negative": replace_dataset("optimizer_weights/Adam/iter:0", np.int64(-3)),
    "iteration a float": replace_dataset("optimizer_weights/Adam/iter:0", np.float32(3)),
    "weight missing": lambda f: f.__delitem__("model_weights/hidden/hidden/kernel:0"),
    "weight names of numbers": lambda f: f["model_weights/hidden"].attrs.__setitem__("weight_names", np.arange(3)),
    "an unknown optimizer weight": lambda f: (
        f["optimizer_weights"].create_dataset("Adam/hidden/kernel/z:0", data=np.zeros((3, 4), np.float32)),
        f["optimizer_weights"].attrs.__setitem__(
            "weight_names", [n.encode() for n in f["optimizer_weights"].attrs["weight_names"]] + [b"Adam/hidden/kernel/z:0"])),
    "a slot linked to another file": lambda f: (
        f.__delitem__("optimizer_weights/Adam/hidden/kernel/m:0"),
        f["optimizer_weights/Adam/hidden/kernel"].__setitem__("m:0", h5py.ExternalLink("/etc/passwd", "/x"))),
    "a compressed slot": lambda f: (
        f.__delitem__("optimizer_weights/Adam/hidden/kernel/m:0"),
        f.create_dataset("optimizer_weights/Adam/hidden/kernel/m:0", data=np.zeros((3, 4), np.float32),
                         compression="gzip")),
    "no model_weights": lambda f: f.__delitem__("model_weights"),
    "a weight named twice": lambda f: f["model_weights/hidden"].attrs.__setitem__(
        "weight_names", [b"hidden/kernel:0"] * 1000 + [b"hidden/bias:0"]),
    "no v slots": lambda f: f["optimizer_weights"].attrs.__setitem__(
        "weight_names", [n.encode() for n in f["optimizer_weights"].attrs["weight_names"] if not n.endswith("/v:0")]),
    "a chunked slot (its chunks could be absent and its shape huge)": lambda f: (
        f.__delitem__("optimizer_weights/Adam/hidden/kernel/m:0"),
        f.create_dataset("optimizer_weights/Adam/hidden/kernel/m:0", shape=(3, 4), dtype=np.float32, chunks=(1, 1))),
}


def test_nadam_needs_its_momentum_cache(tmp_path):
    path = damage_h5("legacy_nadam", tmp_path, lambda f: f["optimizer_weights"].attrs.__setitem__(
        "weight_names", [n.encode() for n in f["optimizer_weights"].attrs["weight_names"] if "momentum_cache" not in n]))
    with pytest.raises(CheckpointError, match="momentum_cache"):
        numbaopt.import_keras_optimizer(path)


def test_sgd_with_momentum_needs_its_slots(tmp_path):
    path = damage_h5("legacy_sgd", tmp_path, lambda f: f["optimizer_weights"].attrs.__setitem__(
        "weight_names", [n.encode() for n in f["optimizer_weights"].attrs["weight_names"][:1]]))
    with pytest.raises(CheckpointError, match="momentum slots"):
        numbaopt.import_keras_optimizer(path)


@pytest.mark.parametrize("damage", sorted(HOSTILE_H5))
def test_a_damaged_h5_is_a_checkpoint_error(damage, tmp_path, capsys):
    path = damage_h5("legacy_adam", tmp_path, HOSTILE_H5[damage])
    with pytest.raises(CheckpointError, match=str(path.name)):
        numbaopt.import_keras_optimizer(path)
    assert cli_main(["inspect", str(path)]) == 1
    assert "Traceback" not in capsys.readouterr().err


def test_a_huge_attribute_is_a_checkpoint_error(tmp_path):
    path = copy_of("legacy_adam", tmp_path)
    with h5py.File(path, "r+", libver="latest") as f:
        f.attrs["training_config"] = b"{" + b" " * (17 * 2**20) + b"}"
    with pytest.raises(CheckpointError, match="far smaller"):
        numbaopt.import_keras_optimizer(path)


@pytest.mark.parametrize("case", ["legacy_adam", "keras3_adam"])
@pytest.mark.parametrize("cut", [0, 100, 0.5, -20])
def test_a_truncated_file_is_a_checkpoint_error(case, cut, tmp_path):
    path = copy_of(case, tmp_path)
    data = path.read_bytes()
    path.write_bytes(data[: int(cut * len(data)) if isinstance(cut, float) else cut])
    with pytest.raises(CheckpointError):
        numbaopt.import_keras_optimizer(path)


def test_files_that_are_not_keras_model_files(tmp_path):
    (tmp_path / "noise.h5").write_bytes(os.urandom(5000))
    numbaopt.save_optimizer(optimizers.Adam(), tmp_path / "checkpoint.h5")
    with zipfile.ZipFile(tmp_path / "other.keras", "w") as z:
        z.writestr("readme.txt", "hello")
    fixture = Path(__file__).resolve().parent.parent / "fixtures" / "adam.h5"
    for path in (tmp_path / "noise.h5", tmp_path / "checkpoint.h5", tmp_path / "other.keras", fixture,
                 tmp_path / "missing.h5", tmp_path):
        with pytest.raises(CheckpointError, match=str(path.name)):
            numbaopt.import_keras_optimizer(path)


HOSTILE_KERAS = {
    "config.json not JSON": lambda members: members.update({"config.json": b"{"}),
    "no config.json": lambda members: members.pop("config.json"),
    "no compile_config": lambda members: members.update({"config.json": b'{"config": {"layers": []}}'}),
    "weights not HDF5": lambda members: members.update({"model.weights.h5": b"not hdf5"}),
    "no model.weights.h5": lambda members: members.pop("model.weights.h5"),
    "a slot missing": lambda members: members.update({"model.weights.h5": _edited_weights(
        members["model.weights.h5"], lambda f: f.__delitem__("optimizer/vars/5"))}),
    "a slot of another shape": lambda members: members.update({"model.weights.h5": _edited_weights(
        members["model.weights.h5"], replace_dataset("optimizer/vars/3", np.zeros(3, np.float32)))}),
}


def _edited_weights(data, edit):
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as f:
        edit(f)
    return buffer.getvalue()


@pytest.mark.parametrize("damage", sorted(HOSTILE_KERAS))
def test_a_damaged_keras_file_is_a_checkpoint_error(damage, tmp_path):
    path = copy_of("keras3_adam", tmp_path)
    with zipfile.ZipFile(path) as z:
        members = {name: z.read(name) for name in z.namelist()}
    HOSTILE_KERAS[damage](members)
    with zipfile.ZipFile(path, "w") as z:
        for name, data in members.items():
            z.writestr(name, data)
    with pytest.raises(CheckpointError, match=path.name):
        numbaopt.import_keras_optimizer(path)


# ---------------------------------------------------------------------- inspect


@pytest.mark.parametrize("case", ["legacy_nadam", "new_adam", "keras3_sgd"])
def test_inspect_shows_a_keras_files_optimizer_state(case, capsys):
    path = recorded(case)[0]
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    found = read_keras_file(path)
    assert f"class       {found.keras_class}" in out and f"iterations  {int(found.iterations.value)}" in out
    for name in found.names:
        for kind in found.slots:
            assert any(line.split()[1:3] == [name, kind] for line in out.splitlines() if line[:1].isdigit())
    if "m_schedule" in found.scalars:
        assert f"m_schedule  {float(found.scalars['m_schedule'].value)!r}" in out


# ----------------------------------------------------------------------- export


def stepped(case, steps=2):
    """Import ``case`` and apply its first recorded steps."""
    path, _, _, grads, _ = recorded(case)
    opt, params = numbaopt.import_keras_optimizer(path)
    for g in grads[:steps]:
        opt.apply_gradients(zip(g, params.values()), names=list(params))
    return opt, params


@pytest.mark.parametrize("case", H5_CASES)
def test_export_then_import_gives_back_the_exported_state(case, tmp_path):
    opt, params = stepped(case)
    path = copy_of(case, tmp_path)
    numbaopt.export_keras_optimizer(opt, path, parameters=params)
    again, again_params = numbaopt.import_keras_optimizer(path)
    assert again.get_config() == opt.get_config() and again.iterations == opt.iterations
    ours, theirs = opt.state(), again.state()
    assert ours.scalars.keys() == theirs.scalars.keys()
    for name in ours.scalars:  # the file keeps m_schedule in the model's dtype
        assert theirs.scalars[name] == float(np.asarray(ours.scalars[name], params[next(iter(params))].dtype))
    file_kinds = read_keras_file(path).slots
    for kind in file_kinds:
        for a, b in zip(ours.slots[kind], theirs.slots[kind]):
            np.testing.assert_array_equal(a, b)
    for name in params:
        np.testing.assert_array_equal(params[name], again_params[name])
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(TEMPORARY_SUFFIX)]


@pytest.mark.parametrize("case", H5_CASES)
def test_export_into_a_file_saved_before_the_first_step_lays_out_kerass_weights(case, tmp_path):
    if refuses_fresh(case, tmp_path):
        return
    opt, params = stepped(case)
    path = fresh_copy(case, tmp_path)
    numbaopt.export_keras_optimizer(opt, path, parameters=params)
    with h5py.File(path, "r") as f, h5py.File(recorded(case)[0], "r") as keras_file:
        # the names and order Keras itself writes after a step
        assert list(f["optimizer_weights"].attrs["weight_names"]) == list(keras_file["optimizer_weights"].attrs["weight_names"])
    again, again_params = numbaopt.import_keras_optimizer(path)
    assert again.iterations == opt.iterations and list(again_params) == list(params)
    for kind in read_keras_file(path).slots:
        for a, b in zip(opt.state().slots[kind], again.state().slots[kind]):
            np.testing.assert_array_equal(a, b)


def test_export_into_a_file_saved_before_the_first_step_needs_names(tmp_path):
    opt, params = stepped("legacy_adam")
    unnamed = optimizers.Adam.from_config(opt.get_config())
    unnamed.set_weights(opt.get_weights())
    with pytest.raises(ValueError, match="named"):
        numbaopt.export_keras_optimizer(unnamed, fresh_copy("legacy_adam", tmp_path))


def test_export_writes_changed_settings_into_the_config(tmp_path):
    opt, params = stepped("legacy_adam")
    opt.lr, opt.beta_1 = 0.125, 0.5
    path = copy_of("legacy_adam", tmp_path)
    numbaopt.export_keras_optimizer(opt, path)
    again, _ = numbaopt.import_keras_optimizer(path)
    assert (again.lr, again.beta_1) == (0.125, 0.5) and again.get_config() == opt.get_config()


def test_export_matches_slots_by_name_not_position(tmp_path):
    """An optimizer whose parameters come in another order still lands on the right variables."""
    path, _, _, grads, _ = recorded("legacy_adam")
    _, params = numbaopt.import_keras_optimizer(path)
    order = [3, 1, 0, 2]
    names = [list(params)[i] for i in order]
    opt = optimizers.Adam(lr=0.01)
    opt.apply_gradients(zip([grads[0][i] for i in order], [params[n] for n in names]), names=names)
    target = copy_of("legacy_adam", tmp_path)
    numbaopt.export_keras_optimizer(opt, target)
    again, again_params = numbaopt.import_keras_optimizer(target)
    for i, name in enumerate(names):
        np.testing.assert_array_equal(again.state().slots["ms"][list(again_params).index(name)], opt.state().slots["ms"][i])


#: mismatch -> (case, make(opt, params) -> (optimizer to export, parameters=, what the ValueError says))
EXPORT_MISMATCHES = {
    "another class": ("legacy_adam", lambda opt, params: (optimizers.SGD(), None, "holds a Adam")),
    "other names": ("legacy_adam", lambda opt, params: (_renamed(opt, ["w", "x", "y", "z"]), None, "do not match")),
    "fewer parameters": ("legacy_adam", lambda opt, params: (_first_two(params), None, "2 parameters")),
    "a parameter of another shape": ("legacy_adam", lambda opt, params: (
        opt, {"hidden/bias:0": np.zeros(5, np.float32)}, "shape")),
    "a parameter of another dtype": ("legacy_adam", lambda opt, params: (opt, {"hidden/bias:0": np.zeros(4)}, "dtype")),
    "an unknown parameter": ("legacy_adam", lambda opt, params: (
        opt, {"hidden/gamma:0": np.zeros(4, np.float32)}, "no weight")),
    "clipnorm with clipvalue": ("legacy_adam", lambda opt, params: (
        _set(opt, clipnorm=1.0, clipvalue=0.5), None, "global_clipnorm and clipvalue")),
}


def _renamed(opt, names):
    opt.set_parameter_names(names)
    return opt


def _first_two(params):
    opt = optimizers.Adam(lr=0.01)
    opt.apply_gradients([(np.ones_like(p), p.copy()) for p in list(params.values())[:2]])
    return opt


def _set(opt, **settings):
    for name, value in settings.items():
        setattr(opt, name, value)
    return opt


@pytest.mark.parametrize("mismatch", sorted(EXPORT_MISMATCHES))
def test_export_refuses_a_mismatch_and_leaves_the_file_as_it_was(mismatch, tmp_path):
    case, make = EXPORT_MISMATCHES[mismatch]
    opt, params = stepped(case)
    path = copy_of(case, tmp_path)
    before = path.read_bytes()
    exported, parameters, match = make(opt, params)
    with pytest.raises(ValueError, match=match):
        numbaopt.export_keras_optimizer(exported, path, parameters=parameters)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_export_takes_parameters_as_a_dict(tmp_path):
    opt, params = stepped("legacy_adam")
    with pytest.raises(TypeError, match="dict"):
        numbaopt.export_keras_optimizer(opt, copy_of("legacy_adam", tmp_path), parameters=list(params.values()))
    with pytest.raises(TypeError, match="Keras 2.0 or numbaopt.keras3 optimizers"):
        numbaopt.export_keras_optimizer(object(), copy_of("legacy_adam", tmp_path))


def test_export_into_a_keras3_file_takes_a_keras3_optimizer(tmp_path):
    opt, _ = stepped("legacy_adam")
    path = copy_of("keras3_adam", tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="numbaopt.keras3.Adam"):
        numbaopt.export_keras_optimizer(opt, path)
    assert path.read_bytes() == before


def test_export_into_a_legacy_optimizers_keras_file_is_refused(tmp_path):
    """tf-keras neither saves nor loads a legacy optimizer's state in a .keras file."""
    opt, _ = stepped("legacy_adam")
    with pytest.raises(ValueError, match="without its state"):
        numbaopt.export_keras_optimizer(opt, copy_of("tfk_legacy_adam_keras", tmp_path))


def test_a_crash_while_exporting_leaves_the_previous_file(tmp_path, monkeypatch):
    opt, params = stepped("legacy_adam")
    path = copy_of("legacy_adam", tmp_path)
    before = path.read_bytes()

    def crash(*args):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(KeyboardInterrupt):
        numbaopt.export_keras_optimizer(opt, path, parameters=params)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]


def test_name_lists_split_as_tf_keras_splits_long_ones(tmp_path):
    """tf-keras writes a list attribute above 64512 bytes as weight_names0, weight_names1...;
    both sides read and write that form."""
    path = copy_of("legacy_adam", tmp_path)
    with h5py.File(path, "r+") as f:
        group = f["optimizer_weights"]
        names = list(group.attrs["weight_names"])
        del group.attrs["weight_names"]
        group.attrs["weight_names0"], group.attrs["weight_names1"] = names[:3], names[3:]
    opt, params = numbaopt.import_keras_optimizer(path)
    assert opt.parameter_names == tuple(params) and opt.iterations == 4

    long_names = [f"layer_{i}/" + "x" * 200 + f"/kernel:{i}" for i in range(1000)]
    with h5py.File(tmp_path / "names.h5", "w") as f:
        keras_reading.write_names(f, "weight_names", long_names)
        assert "weight_names" not in f.attrs and "weight_names1" in f.attrs
        assert keras_reading.names_attribute(f, "weight_names", "/") == long_names


posix_fork = pytest.mark.skipif(not hasattr(os, "fork"), reason="the reader runs in a forked child where os.fork exists")


@posix_fork
def test_a_crash_of_the_hdf5_library_while_reading_is_a_checkpoint_error(monkeypatch):
    """Keras .h5 files have no metadata checksums, and HDF5 can crash (SIGSEGV) or loop on some
    damage: the file is read in a forked child, whose death becomes a CheckpointError."""
    import signal

    path = str(KERAS_FILES / "legacy_adam.h5")
    with pytest.raises(CheckpointError, match="crashed or hung.*signal"):
        keras_isolation.isolated(lambda p: os.kill(os.getpid(), signal.SIGSEGV), path)
    monkeypatch.setattr(keras_isolation, "_patience", lambda p: 0.5)
    with pytest.raises(CheckpointError, match="crashed or hung"):
        keras_isolation.isolated(lambda p: __import__("time").sleep(60), path)


@posix_fork
def test_the_childs_result_and_errors_come_back_as_they_are():
    path = str(KERAS_FILES / "legacy_adam.h5")
    found = keras_isolation.isolated(keras_files._read_h5, path)
    np.testing.assert_array_equal(found.weights["hidden/kernel:0"].value, read_keras_file(path).weights["hidden/kernel:0"].value)

    def refuse(p):
        raise keras_reading.Refused("no")

    with pytest.raises(ValueError, match="no"):
        keras_isolation.isolated(refuse, path)
