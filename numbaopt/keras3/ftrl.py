"""Ftrl (Keras 3): follow the regularized leader.

Per step, with ``k = -learning_rate_power``, after weight decay ``p <- p - p * weight_decay * lr``::

    l2 = l2_regularization_strength + beta / (2 * lr)
    g2 = g + 2 * l2_shrinkage_regularization_strength * p
    n' = n + g^2
    z <- z + g2 - (n'^k - n^k) / lr * p
    p <- (clip(z, -l1, l1) - z) / (n'^k / lr + 2 * l2);   n <- n'

with ``n`` starting at ``initial_accumulator_value`` (float32-rounded in a float64 model).
Keras 2.0 has no Ftrl.
"""
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def ftrl_rule(p: float, g: float, n: float, z: float, weight_decay: float, lr: float, power: float, l1: float,
              two_l2: float, two_shrinkage: float) -> tuple[float, float, float]:
    """One element of Ftrl; returns the new (p, n, z). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    grad_to_use = g + two_shrinkage * p
    new_n = n + g * g
    if power == 0.5:  # the default: sqrt is pow's correctly rounded value, at a tenth of the time
        new_n_power, n_power = math.sqrt(new_n), math.sqrt(n)
    else:
        new_n_power, n_power = math.pow(new_n, power), math.pow(n, power)
    z = z + (grad_to_use - ((new_n_power - n_power) / lr) * p)
    quadratic = new_n_power / lr + two_l2
    clipped = min(max(z, -l1), l1)
    return (clipped - z) / quadratic, new_n, z


class Ftrl(Keras3Optimizer):
    """Ftrl (Keras 3's ``keras.optimizers.Ftrl``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("learning_rate_power", -0.5, "real"),
        Argument("initial_accumulator_value", 0.1, "real"),
        Argument("l1_regularization_strength", 0.0, "real"),
        Argument("l2_regularization_strength", 0.0, "real"),
        Argument("l2_shrinkage_regularization_strength", 0.0, "real"),
        Argument("beta", 0.0),
    )
    slots = (Slot("accumulator", sign="nonnegative"), Slot("linear"))
    rule = staticmethod(ftrl_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        super().check_settings(hyper)
        for name in ("initial_accumulator_value", "l1_regularization_strength", "l2_regularization_strength",
                     "l2_shrinkage_regularization_strength"):
            if hyper[name] < 0.0:
                raise ValueError(f"`{name}` needs to be positive or zero. Received: {name}={hyper[name]}.")
        if hyper["learning_rate_power"] > 0.0:
            raise ValueError("`learning_rate_power` needs to be negative or zero. "
                             f"Received: learning_rate_power={hyper['learning_rate_power']}.")

    def initial_slots(self, params: Sequence[npt.NDArray[Any]]) -> dict[str, list[npt.NDArray[Any]]]:
        value = self._hyper["initial_accumulator_value"]
        return {
            "accumulator": [np.full(p.shape, float32_setting(value, p.dtype.type), p.dtype) for p in params],
            "linear": [np.zeros(p.shape, p.dtype) for p in params],
        }

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        lr = dtype(h.lr)
        l2 = dtype(h.l2_regularization_strength) + dtype(h.beta) / (dtype(2.0) * lr)
        return (
            float32_setting(h.weight_decay, dtype), lr, dtype(-h.learning_rate_power),
            dtype(h.l1_regularization_strength), dtype(2) * l2, dtype(2 * h.l2_shrinkage_regularization_strength),
        )
