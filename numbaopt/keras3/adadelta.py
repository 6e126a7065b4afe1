"""Adadelta (Keras 3).

Per step, after weight decay ``p <- p - p * weight_decay * lr``, with
``rms(x) = sqrt(x + epsilon)``::

    a <- rho * a + (1 - rho) * g^2
    delta = -rms(d) * g / rms(a)
    d <- rho * d + (1 - rho) * delta^2
    p <- p + lr * delta

Differs from Keras 2.0's Adadelta: learning rate 0.001 (not 1.0), epsilon 1e-7, no
``decay``; slots ``accumulated_grad`` / ``accumulated_delta_var``.
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def adadelta_rule(p: float, g: float, a: float, d: float, weight_decay: float, lr: float, rho: float,
                  one_minus_rho: float, epsilon: float) -> tuple[float, float, float]:
    """One element of Adadelta; returns the new (p, a, d). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    a = rho * a + one_minus_rho * (g * g)
    delta = -((math.sqrt(d + epsilon) * g) / math.sqrt(a + epsilon))
    d = rho * d + one_minus_rho * (delta * delta)
    return p + lr * delta, a, d


class Adadelta(Keras3Optimizer):
    """Adadelta (Keras 3's ``keras.optimizers.Adadelta``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("rho", 0.95, "unit"),
        Argument("epsilon", 1e-7),
    )
    slots = (Slot("accumulated_grad", sign="nonnegative"), Slot("accumulated_delta_var", sign="nonnegative"))
    rule = staticmethod(adadelta_rule)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        return float32_setting(h.weight_decay, dtype), dtype(h.lr), dtype(h.rho), dtype(1 - h.rho), dtype(h.epsilon)
