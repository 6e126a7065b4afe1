"""Adagrad (Keras 2.0).

Per step, with ``lr_eff = lr / (1 + decay * iterations)`` and the accumulator starting
at zero::

    a <- a + g^2
    p <- p - lr_eff * g / (sqrt(a) + epsilon)
"""
import math
from typing import Any

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, Slot, StepInputs


def adagrad_rule(p: float, g: float, a: float, lr: float, epsilon: float) -> tuple[float, float]:
    """One element of Adagrad; returns the new (p, a). Compiled for the CPU and for CUDA."""
    a = a + g * g
    p = p - lr * g / (math.sqrt(a) + epsilon)
    return p, a


class Adagrad(Optimizer):
    """Adagrad: per-parameter learning rates scaled by the sum of past squared gradients.

    Arguments: ``lr``, ``epsilon``, ``decay`` (all floats >= 0), and ``clipnorm`` /
    ``clipvalue``.
    """

    hyperparameters = (
        Hyperparameter("lr", 0.01),
        Hyperparameter("epsilon", 1e-8),
        Hyperparameter("decay", 0.0),
    )
    slots = (Slot("accumulators", sign="nonnegative"),)
    keras2_iterations = False
    rule = staticmethod(adagrad_rule)

    # What later Kerases make of it (numbaopt.declarations). Their initial_accumulator_value
    # is the accumulators' first value: a file with the accumulators holds it already.
    keras = KerasDescription(
        imported={"legacy": KerasClass({"accumulators": "accumulator"}, float32_settings=("decay",))},
        inert={"initial_accumulator_value": (0, 0.0)},
        in_slots=("initial_accumulator_value",),
    )

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        return h.decayed_lr(dtype), dtype(h.epsilon)
