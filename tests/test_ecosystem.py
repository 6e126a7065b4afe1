"""What users of Keras, torch and optax expect of the optimizer object and the tools."""
import copy
import pickle

import numpy as np
import pytest

from numbaopt import checkpoint_report, optimizers
from numbaopt.checkpoint import Checkpoint
from tests.cases import NAMES, gradient_steps, make_params

SHAPES = [(), (5,), (3, 4)]


def _steps(opt, params, first, last, dtype):
    for grads in gradient_steps(SHAPES, steps=8)[first:last]:
        opt.apply_gradients(zip([g.astype(dtype) for g in grads], params))


@pytest.mark.parametrize("copier", [pickle.dumps, copy.deepcopy, copy.copy], ids=["pickle", "deepcopy", "copy"])
@pytest.mark.parametrize("name", NAMES)
def test_a_copy_of_a_stepped_optimizer_continues_bitwise_like_the_original(name, copier):
    dtype = np.float32
    opt = getattr(optimizers, name)(clipnorm=1.0)
    params = make_params(dtype, SHAPES)
    _steps(opt, params, 0, 4, dtype)
    other = pickle.loads(copier(opt)) if copier is pickle.dumps else copier(opt)
    other_params = [p.copy() for p in params]
    _steps(opt, params, 4, 8, dtype)
    _steps(other, other_params, 4, 8, dtype)
    assert other.get_config() == opt.get_config() and other.iterations == opt.iterations == 8
    for a, b in zip(params + opt.get_weights(), other_params + other.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_a_copy_is_independent_of_the_original():
    opt = optimizers.Adam()
    param = np.ones(3)
    opt.apply_gradients([(np.ones(3), param)])
    other = copy.deepcopy(opt)
    other.lr = 0.5
    other.apply_gradients([(np.ones(3), param.copy())])
    assert opt.lr == 0.001 and opt.iterations == 1 and other.iterations == 2


def test_assigning_an_unknown_attribute_is_an_error():
    opt = optimizers.SGD()
    with pytest.raises(AttributeError, match="SGD has no hyperparameter 'lrr'.*lr"):
        opt.lrr = 0.5
    opt.learning_rate = 0.5
    assert opt.lr == 0.5

    class Mine(optimizers.SGD):
        pass

    mine = Mine()
    mine.notes = "a subclass may keep attributes of its own"
    with pytest.raises(AttributeError, match="no hyperparameter 'momentun'"):
        mine.momentun = 0.9


def test_a_learning_rate_schedule_by_assignment():
    """The documented way to run a schedule: assign ``lr`` between steps."""
    opt = optimizers.SGD(lr=1.0)
    param = np.zeros(1)
    for epoch in range(3):
        opt.lr = 1.0 / (epoch + 1)
        opt.apply_gradients([(np.ones(1), param)])
    assert param[0] == pytest.approx(-(1 + 1 / 2 + 1 / 3))


def test_the_decayed_learning_rate_is_internal():
    assert not hasattr(optimizers.Adam, "lr_at_step")


def test_inspect_shows_where_the_state_of_an_optimizer_without_slots_is():
    report = checkpoint_report.report(Checkpoint(
        2, "0.1.0", "TFOptimizer", {"kind": "tf_keras.legacy"}, 3, {}, (), {},
        {"wrapped_0": np.array(3, np.int64), "wrapped_1": np.ones(4, np.float32)},
    ))
    assert "no slots: TFOptimizer keeps its state in the arrays below" in report
    assert "wrapped_1" in report and "had taken no step" not in report
