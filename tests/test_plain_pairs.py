"""The one-pass check of a bound optimizer's usual step (``Layout.plain_pairs``).

It only saves the per-array checks work: whatever the pairs, a step must end exactly as
the per-array checks alone would make it end (the same parameters and slots, or the same
error with nothing changed).
"""
import numpy as np
import pytest

from numbaopt import devices, optimizers
from numbaopt.kernels import object_layout


class Subclass(np.ndarray):
    pass


def _read_only(array):
    array.flags.writeable = False
    return array


#: label -> function (gradient, parameter) -> the pair a step passes for that parameter.
VARIATIONS = {
    "plain": lambda g, p: (g, p),
    "zip-like list pair": lambda g, p: [g, p],
    "float32 gradient": lambda g, p: (g.astype(np.float32), p),
    "float64 gradient": lambda g, p: (g.astype(np.float64), p),
    "strided gradient": lambda g, p: (np.repeat(g, 2)[::2], p),
    "list gradient": lambda g, p: (g.tolist(), p),
    "gradient of another shape": lambda g, p: (g.reshape(-1, 1), p),
    "gradient subclass": lambda g, p: (g.view(Subclass), p),
    "parameter subclass": lambda g, p: (g, p.view(Subclass)),
    "read-only parameter": lambda g, p: (g, _read_only(p.view())),
    "strided parameter view": lambda g, p: (g[:2], p[::2]),
    "gradient is its parameter": lambda g, p: (p, p),
    "None gradient": lambda g, p: (None, p),
    "three-item pair": lambda g, p: (g, p, None),
    "non-canonical dtype object": lambda g, p: (g, np.frombuffer(p, p.dtype.newbyteorder("="))),
}


def _step(variation, dtype, one_pass):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(n).astype(dtype) for n in (4, 5)]
    grads = [rng.standard_normal(n).astype(dtype) for n in (4, 5)]
    opt = optimizers.Adam(clipnorm=1.0)
    opt.apply_gradients(list(zip(grads, params)))  # binds the slots
    if not one_pass:
        opt._slots.layout._read_pairs = None
    pairs = [(grads[0], params[0]), VARIATIONS[variation](grads[1], params[1])]
    try:
        opt.apply_gradients(pairs)
        outcome = None
    except Exception as error:  # the outcome compared, whatever it is
        outcome = (type(error), str(error))
    return outcome, [p.tobytes() for p in params], [s.tobytes() for s in opt.get_weights()]


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("variation", VARIATIONS)
def test_a_step_ends_as_the_per_array_checks_alone_would_end_it(variation, dtype):
    assert _step(variation, dtype, one_pass=True) == _step(variation, dtype, one_pass=False)


def test_the_object_layout_checks_out_here():
    """Where the probe fails, every step takes the per-array checks: correct, but slow."""
    assert object_layout.object_fields() is not None


def test_the_usual_steps_take_the_one_pass_check(monkeypatch):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n) for n in (3, 7, 1)]
    grads = [rng.standard_normal(n) for n in (3, 7, 1)]
    opt = optimizers.SGD(momentum=0.9)
    opt.apply_gradients(zip(grads, params))
    taken = []
    plain_pairs = type(opt._slots.layout).plain_pairs
    monkeypatch.setattr(type(opt._slots.layout), "plain_pairs",
                        lambda self, pairs: taken.append(plain_pairs(self, pairs)) or taken[-1])
    opt.apply_gradients(zip(grads, params))  # a zip, as Keras users write it
    opt.apply_gradients([(g, p) for g, p in zip(grads, params)])
    assert all(found is not None for found in taken) and len(taken) == 2


def test_new_parameters_that_overlap_are_refused_on_the_usual_path_too():
    opt = optimizers.SGD()
    grads = [np.ones(4), np.ones(4)]
    opt.apply_gradients(zip(grads, [np.zeros(4), np.zeros(4)]))
    shared = np.zeros(8)
    with pytest.raises(ValueError, match="share memory"):
        opt.apply_gradients(zip(grads, [shared[:4], shared[2:6]]))
    moved = [np.zeros(4), np.zeros(4)]
    opt.apply_gradients(zip(grads, moved))  # new, separate arrays: a step like any other
    assert all((p == -0.01).all() for p in moved)
