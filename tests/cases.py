"""What the tests run over: every registered optimizer, its option sets, dtypes and shapes.

The list of optimizers is numbaopt's registry: an optimizer added to the package is
tested by every parametrized test without an edit here.
"""
from pathlib import Path

import numpy as np

from numbaopt import optimizers

#: The golden fixtures recorded from real Keras.
FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"

#: The optimizers whose update is an element rule run by numbaopt's kernels.
NAMES = tuple(cls.__name__ for cls in optimizers.rule_based())
DTYPES = (np.float32, np.float64)


def non_default(cls):
    """Hyperparameters of ``cls`` away from their defaults, far enough to matter.

    Values in (0, 1) are halved (a rate stays a rate), larger ones multiplied by 5, zeros
    become 0.9 (SGD's momentum). ``decay`` keeps its own option set and flags stay off
    (SGD's ``nesterov`` has its own too).
    """
    values = {}
    for h in cls.hyperparameters:
        if h.kind == "fraction":
            values[h.name] = round(h.default - 0.1, 6)
        elif h.kind == "nonnegative" and h.name != "decay":
            values[h.name] = 0.9 if h.default == 0 else h.default * (0.5 if h.default < 1 else 5)
    return values

#: Option sets applied on top of the defaults. clipnorm=1 sits between the small and the
#: large gradient steps that ``gradient_steps`` alternates, so it clips on some steps only.
OPTIONS = {
    "defaults": {},
    "custom": "non-default",
    "decay": {"decay": 0.05},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "clipnorm": {"clipnorm": 1.0},
    "clipvalue": {"clipvalue": 0.05},
    "both-clips": {"clipnorm": 1.0, "clipvalue": 0.05},
}

SHAPES = [(), (5,), (3, 4), (2, 3, 2, 2)]


def option_sets(name):
    """The (option id, constructor kwargs) pairs that apply to optimizer ``name``: an
    option set is skipped when the optimizer lacks one of its hyperparameters."""
    cls = getattr(optimizers, name)
    declared = {h.name for h in cls.hyperparameters} | {"clipnorm", "clipvalue"}
    for option, kwargs in OPTIONS.items():
        if kwargs == "non-default":
            kwargs = non_default(cls)
        if set(kwargs) <= declared:
            yield option, dict(kwargs)


def full_config(name, kwargs):
    """Every hyperparameter of ``name`` (defaults filled in) plus the given options."""
    return {**getattr(optimizers, name)().get_config(), **kwargs}


def make_params(dtype, shapes=SHAPES, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(dtype) for s in shapes]


def gradient_steps(shapes=SHAPES, steps=40, seed=1, dtype=np.float64):
    """Random gradients whose global norm alternates below and above 1."""
    rng = np.random.default_rng(seed)
    scales = [0.05 if k % 3 == 0 else 0.5 for k in range(steps)]
    return [[(scale * rng.normal(size=s)).astype(dtype) for s in shapes] for scale in scales]


def relative_error(ours, reference):
    """max |ours - reference| / max |reference| over a tensor (0 when both are zero)."""
    ours, reference = np.asarray(ours, np.float64), np.asarray(reference, np.float64)
    scale = np.max(np.abs(reference)) if reference.size else 0.0
    diff = np.max(np.abs(ours - reference)) if reference.size else 0.0
    return diff / scale if scale > 0 else diff


# ------------------------------------------------ bad inputs that must change nothing


def bad_steps(params):
    """(id, grads_and_vars, exception) for calls that must be refused after binding to ``params``.

    Shared by every optimizer that takes NumPy parameters (the seven and ``TFOptimizer``),
    so all of them refuse the same calls with the same exception types.
    """
    grads = [np.ones_like(p) for p in params]
    pairs = list(zip(grads, params))
    read_only = params[2].copy()
    read_only.flags.writeable = False
    fortran = np.asfortranarray(params[2].copy())
    return [
        ("gradient-shape", [(np.ones((9,)), params[0])] + pairs[1:], ValueError),
        ("fewer-params", pairs[:-1], ValueError),
        ("more-params", pairs + [(np.ones(2), np.zeros(2))], ValueError),
        ("param-shape", pairs[:3] + [(np.ones((2, 3, 2, 3)), np.zeros((2, 3, 2, 3)))], ValueError),
        ("param-dtype", pairs[:1] + [(grads[1].astype(np.float32), params[1].astype(np.float32))] + pairs[2:], TypeError),
        ("integer-param", pairs[:2] + [(grads[2], np.zeros((3, 4), np.int64))] + pairs[3:], TypeError),
        ("list-param", pairs[:1] + [(grads[1], params[1].tolist())] + pairs[2:], TypeError),
        ("read-only-param", pairs[:2] + [(grads[2], read_only)] + pairs[3:], ValueError),
        ("fortran-param", pairs[:2] + [(grads[2], fortran)] + pairs[3:], ValueError),
        ("shared-memory", pairs[:1] + [(grads[1], params[3].reshape(-1)[:5])] + pairs[2:], ValueError),
        ("same-param-twice", pairs[:3] + [(grads[2], params[2])], ValueError),
        ("string-gradient", [("abc", params[0])] + pairs[1:], TypeError),
        ("unsafe-gradient-dtype", pairs[:1] + [(grads[1].astype(np.complex128), params[1])] + pairs[2:], TypeError),
        ("not-pairs", [params[0]] + pairs[1:], TypeError),
        ("no-pairs", [], ValueError),
    ]


#: The ids of ``bad_steps``, for ``pytest.mark.parametrize``.
BAD_IDS = [case[0] for case in bad_steps(make_params(np.float64))]


def snapshot(opt, params, to_host=np.copy):
    """Copies of the parameters and weights, and the iteration count, for ``assert_unchanged``.

    ``to_host`` copies one parameter to a NumPy array (``copy_to_host`` for device arrays).
    """
    return [to_host(p) for p in params], [w.copy() for w in opt.get_weights()], opt.iterations


def assert_unchanged(before, opt, params, to_host=np.copy):
    """A refused call left the parameters, the weights and ``iterations`` as ``snapshot`` saw them."""
    old_params, old_weights, old_iterations = before
    assert opt.iterations == old_iterations
    for p, q in zip(map(to_host, params), old_params, strict=True):
        np.testing.assert_array_equal(p, q)
    weights = opt.get_weights()
    assert len(weights) == len(old_weights)
    for w, v in zip(weights, old_weights):
        np.testing.assert_array_equal(w, v)
