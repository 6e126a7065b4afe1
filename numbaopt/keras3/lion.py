"""Lion (Keras 3): sign of an interpolated momentum.

Per step, with the betas float32-rounded in a float64 model, after weight decay
``p <- p - p * weight_decay * lr``::

    p <- p - lr * sign(m * beta_1 + g * (1 - beta_1))
    m <- m * beta_2 + g * (1 - beta_2)

Keras 2.0 has no Lion.
"""
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def lion_rule(p: float, g: float, m: float, weight_decay: float, lr: float, beta_1: float, one_minus_beta_1: float,
              beta_2: float, one_minus_beta_2: float, one: float) -> tuple[float, float]:
    """One element of Lion; returns the new (p, m). Compiled for the CPU and for CUDA
    (``one`` is 1 in the parameters' dtype: a literal would make float32 kernels float64)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    c = m * beta_1 + g * one_minus_beta_1
    sign = one if c > 0 else (-one if c < 0 else c)  # 0 and NaN stay, as tf.sign's
    return p - lr * sign, m * beta_2 + g * one_minus_beta_2


class Lion(Keras3Optimizer):
    """Lion (Keras 3's ``keras.optimizers.Lion``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("beta_1", 0.9, "real"),
        Argument("beta_2", 0.99, "unit"),
    )
    slots = (Slot("momentum"),)
    rule = staticmethod(lion_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        super().check_settings(hyper)
        if hyper["beta_1"] <= 0 or hyper["beta_1"] > 1:
            raise ValueError("Argument `beta_1` must be in the [0, 1] range. Otherwise, the optimizer degenerates to "
                             f"SignSGD. Received: beta_1={hyper['beta_1']}.")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, beta_1, beta_2 = dtype(1.0), float32_setting(h.beta_1, dtype), float32_setting(h.beta_2, dtype)
        return float32_setting(h.weight_decay, dtype), dtype(h.lr), beta_1, one - beta_1, beta_2, one - beta_2, one
