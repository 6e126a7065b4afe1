"""SGD with momentum, Nesterov momentum and time-based decay (Keras 2.0).

Per step, with ``lr_eff = lr / (1 + decay * iterations)``::

    v = momentum * m - lr_eff * g
    m <- v
    p <- p + momentum * v - lr_eff * g   if nesterov
    p <- p + v                           otherwise
"""
from typing import Any

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, StepInputs


def sgd_rule(p: float, g: float, m: float, lr: float, momentum: float, nesterov: bool) -> tuple[float, float]:
    """One element of SGD; returns the new (p, m). Compiled for the CPU and for CUDA."""
    v = momentum * m - lr * g
    if nesterov:
        p = p + momentum * v - lr * g
    else:
        p = p + v
    return p, v


class SGD(Optimizer):
    """Stochastic gradient descent with momentum, Nesterov momentum and decay.

    Arguments: ``lr`` (float >= 0), ``momentum`` (float >= 0), ``decay`` (float >= 0,
    learning-rate decay over each update), ``nesterov`` (bool), and ``clipnorm`` /
    ``clipvalue`` as on every optimizer.
    """

    hyperparameters = (
        Hyperparameter("lr", 0.01),
        Hyperparameter("momentum", 0.0),
        Hyperparameter("decay", 0.0),
        Hyperparameter("nesterov", False, "flag"),
    )
    slot_names = ("moments",)
    rule = staticmethod(sgd_rule)

    # What later Kerases make of it (numbaopt.declarations). Without momentum the moments have
    # no effect, and Keras keeps none.
    keras = KerasDescription(
        imported={"legacy": KerasClass({"moments": "momentum"}, float32_settings=("decay",))},
        unused_slots={"moments": "momentum"},
    )

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        return h.decayed_lr(dtype), dtype(h.momentum), h.nesterov
