"""Adam (Keras 2.0).

Per step, with ``t = iterations + 1`` and ``lr_eff = lr / (1 + decay * iterations)``::

    lr_t = lr_eff * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m <- beta_1 * m + (1 - beta_1) * g
    v <- beta_2 * v + (1 - beta_2) * g^2
    p <- p - lr_t * m / (sqrt(v) + epsilon)
"""
import math
from typing import Any

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, Slot, StepInputs


def adam_rule(
    p: float, g: float, m: float, v: float, lr_t: float, beta_1: float, one_minus_beta_1: float, beta_2: float,
    one_minus_beta_2: float, epsilon: float,
) -> tuple[float, float, float]:
    """One element of Adam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    m = beta_1 * m + one_minus_beta_1 * g
    v = beta_2 * v + one_minus_beta_2 * (g * g)
    p = p - lr_t * m / (math.sqrt(v) + epsilon)
    return p, m, v


class Adam(Optimizer):
    """Adam: adaptive moment estimation, with the paper's defaults.

    Arguments: ``lr``, ``epsilon``, ``decay`` (floats >= 0), ``beta_1`` and ``beta_2``
    (floats in [0, 1)), and ``clipnorm`` / ``clipvalue``.
    """

    hyperparameters = (
        Hyperparameter("lr", 0.001),
        Hyperparameter("beta_1", 0.9, "fraction"),
        Hyperparameter("beta_2", 0.999, "fraction"),
        Hyperparameter("epsilon", 1e-8),
        Hyperparameter("decay", 0.0),
    )
    slots = (Slot("ms"), Slot("vs", sign="nonnegative"))
    rule = staticmethod(adam_rule)

    # What later Kerases make of it (numbaopt.declarations).
    keras = KerasDescription(
        imported={"legacy": KerasClass({"ms": "m", "vs": "v"}, float32_settings=("decay",))},
        inert={"amsgrad": (False,)},
    )

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t = dtype(1), dtype(h.iterations + 1)
        beta_1, beta_2 = dtype(h.beta_1), dtype(h.beta_2)
        lr_t = h.decayed_lr(dtype) * (np.sqrt(one - beta_2**t) / (one - beta_1**t))
        return lr_t, beta_1, one - beta_1, beta_2, one - beta_2, dtype(h.epsilon)
