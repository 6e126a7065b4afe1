"""Adamax, Adam's infinity-norm variant (Keras 2.0).

Per step, with ``t = iterations + 1`` and ``lr_eff = lr / (1 + decay * iterations)``::

    lr_t = lr_eff / (1 - beta_1^t)
    m <- beta_1 * m + (1 - beta_1) * g
    u <- max(beta_2 * u, |g|)
    p <- p - lr_t * m / (u + epsilon)
"""
import math
from typing import Any

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, Slot, StepInputs


def adamax_rule(
    p: float, g: float, m: float, u: float, lr_t: float, beta_1: float, one_minus_beta_1: float, beta_2: float,
    epsilon: float,
) -> tuple[float, float, float]:
    """One element of Adamax; returns the new (p, m, u). Compiled for the CPU and for CUDA."""
    m = beta_1 * m + one_minus_beta_1 * g
    u = beta_2 * u
    magnitude = abs(g)
    # Written out rather than max(): a NaN on either side must stay NaN, as in Keras.
    if magnitude > u or math.isnan(magnitude):
        u = magnitude
    p = p - lr_t * m / (u + epsilon)
    return p, m, u


class Adamax(Optimizer):
    """Adamax: Adam based on the infinity norm (Adam paper, section 7).

    Arguments: ``lr``, ``epsilon``, ``decay`` (floats >= 0), ``beta_1`` and ``beta_2``
    (floats in [0, 1)), and ``clipnorm`` / ``clipvalue``.
    """

    hyperparameters = (
        Hyperparameter("lr", 0.002),
        Hyperparameter("beta_1", 0.9, "fraction"),
        Hyperparameter("beta_2", 0.999, "fraction"),
        Hyperparameter("epsilon", 1e-8),
        Hyperparameter("decay", 0.0),
    )
    slots = (Slot("ms"), Slot("us", sign="nonnegative"))
    rule = staticmethod(adamax_rule)

    # What later Kerases make of it (numbaopt.declarations).
    keras = KerasDescription(
        imported={"legacy": KerasClass({"ms": "m", "us": "v"}, float32_settings=("decay",))},
    )

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t = dtype(1), dtype(h.iterations + 1)
        beta_1 = dtype(h.beta_1)
        lr_t = h.decayed_lr(dtype) / (one - beta_1**t)
        return lr_t, beta_1, one - beta_1, dtype(h.beta_2), dtype(h.epsilon)
