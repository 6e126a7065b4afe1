"""Adamax (Keras 3): Adam with the infinity norm.

Per step, with ``t = iterations + 1``, after weight decay ``p <- p - p * weight_decay * lr``::

    m <- m + (g - m) * (1 - beta_1)
    u <- max(beta_2 * u, |g|)
    p <- p - lr * m / ((1 - beta_1^t) * (u + epsilon))

Differs from Keras 2.0's Adamax: epsilon 1e-7 and inside the product, no ``decay``;
slots ``momentum`` / ``norm``.
"""
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def adamax_rule(p: float, g: float, m: float, u: float, weight_decay: float, lr: float, one_minus_beta_1: float,
                beta_2: float, one_minus_beta_1_power: float, epsilon: float) -> tuple[float, float, float]:
    """One element of Adamax; returns the new (p, m, u). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * one_minus_beta_1
    u = max(beta_2 * u, abs(g))
    return p - (lr * m) / (one_minus_beta_1_power * (u + epsilon)), m, u


class Adamax(Keras3Optimizer):
    """Adamax (Keras 3's ``keras.optimizers.Adamax``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("beta_1", 0.9, "unit"),
        Argument("beta_2", 0.999, "unit"),
        Argument("epsilon", 1e-7),
    )
    slots = (Slot("momentum"), Slot("norm", sign="nonnegative"))
    rule = staticmethod(adamax_rule)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        beta_1_power = float32_setting(h.beta_1, dtype) ** dtype(h.iterations + 1)
        return (
            float32_setting(h.weight_decay, dtype), dtype(h.lr), dtype(1 - h.beta_1), dtype(h.beta_2),
            dtype(1) - beta_1_power, dtype(h.epsilon),
        )
