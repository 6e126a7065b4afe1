"""Adadelta (Keras 2.0).

Per step, with ``lr_eff = lr / (1 + decay * iterations)``::

    a <- rho * a + (1 - rho) * g^2
    u  = g * sqrt(d + epsilon) / sqrt(a + epsilon)      (d before this step)
    p <- p - lr_eff * u
    d <- rho * d + (1 - rho) * u^2
"""
import math
from typing import Any

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, Slot, StepInputs


def adadelta_rule(
    p: float, g: float, a: float, d: float, lr: float, rho: float, one_minus_rho: float, epsilon: float
) -> tuple[float, float, float]:
    """One element of Adadelta; returns the new (p, a, d). Compiled for the CPU and for CUDA."""
    a = rho * a + one_minus_rho * (g * g)
    update = g * math.sqrt(d + epsilon) / math.sqrt(a + epsilon)
    p = p - lr * update
    d = rho * d + one_minus_rho * (update * update)
    return p, a, d


class Adadelta(Optimizer):
    """Adadelta: adapts learning rates from a moving window of gradient updates.

    Arguments: ``lr`` (best left at 1.0), ``rho``, ``epsilon``, ``decay`` (all
    floats >= 0), and ``clipnorm`` / ``clipvalue``.
    """

    hyperparameters = (
        Hyperparameter("lr", 1.0),
        Hyperparameter("rho", 0.95),
        Hyperparameter("epsilon", 1e-8),
        Hyperparameter("decay", 0.0),
    )
    slots = (Slot("accumulators", sign="nonnegative"), Slot("delta_accumulators", sign="nonnegative"))
    keras2_iterations = False
    rule = staticmethod(adadelta_rule)

    # What later Kerases make of it (numbaopt.declarations).
    keras = KerasDescription(
        imported={
            "legacy": KerasClass({"accumulators": "accum_grad", "delta_accumulators": "accum_var"},
                                 float32_settings=("decay",)),
        },
    )

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        rho = dtype(h.rho)
        return h.decayed_lr(dtype), rho, dtype(1) - rho, dtype(h.epsilon)
