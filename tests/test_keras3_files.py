"""Keras 3 and tf-keras new-style model files into ``numbaopt.keras3``, without TensorFlow.

The files in ``fixtures/keras_files/`` (``fixtures/scripts/capture_keras_files.py``): Keras 3
``.keras`` and ``.h5`` under TensorFlow, JAX and torch, tf-keras new-style ``.h5`` and
``.keras``, every optimizer of ``numbaopt.keras3`` and the base settings (schedule, weight
decay, clipping, EMA, accumulation, loss scaling, a LossScaleOptimizer), plain and rich
models (Embedding, Conv1D, LSTM, BatchNormalization, a nested model). Each is imported and
continued with the gradients Keras used after saving; the weights must be Keras's.
"""
import json
import warnings

import numpy as np
import pytest

import numbaopt
from numbaopt import keras3, keras3_files
from numbaopt.cli import main as cli_main
from numbaopt.keras3_files import Keras3File
from numbaopt.keras_files import KerasStateNotSaved, read_keras_file
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


@pytest.mark.parametrize("case", ["k3_nadam", "k3_adam_loss_scale_rich", "tfk_rmsprop_keras", "jax_adamw_ema", "k3h5_adam",
                                  "tfk_legacy_adam_keras"])
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
