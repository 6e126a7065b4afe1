"""The test registry: one entry per optimizer, with its option sets, shared by all tests."""
import numpy as np

from numbaopt import optimizers

NAMES = ("SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "Adamax", "Nadam")
DTYPES = (np.float32, np.float64)

#: Per optimizer: non-default hyperparameters (the defaults are always tested too).
NON_DEFAULT = {
    "SGD": {"lr": 0.05, "momentum": 0.9},
    "RMSprop": {"lr": 0.01, "rho": 0.8, "epsilon": 1e-6},
    "Adagrad": {"lr": 0.1, "epsilon": 1e-6},
    "Adadelta": {"lr": 0.5, "rho": 0.9, "epsilon": 1e-6},
    "Adam": {"lr": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6},
    "Adamax": {"lr": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6},
    "Nadam": {"lr": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-6, "schedule_decay": 0.01},
}

#: Option sets applied on top of the defaults. clipnorm=1 sits between the small and the
#: large gradient steps that ``gradient_steps`` alternates, so it clips on some steps only.
OPTIONS = {
    "defaults": {},
    "custom": "NON_DEFAULT",
    "decay": {"decay": 0.05},
    "nesterov": {"momentum": 0.9, "nesterov": True},
    "clipnorm": {"clipnorm": 1.0},
    "clipvalue": {"clipvalue": 0.05},
    "both-clips": {"clipnorm": 1.0, "clipvalue": 0.05},
}

SHAPES = [(), (5,), (3, 4), (2, 3, 2, 2)]


def option_sets(name):
    """The (option id, constructor kwargs) pairs that apply to optimizer ``name``."""
    for option, kwargs in OPTIONS.items():
        if kwargs == "NON_DEFAULT":
            kwargs = NON_DEFAULT[name]
        if option == "nesterov" and name != "SGD":
            continue
        if option == "decay" and name == "Nadam":
            continue
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
