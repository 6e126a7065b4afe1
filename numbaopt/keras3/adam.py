"""Adam (Keras 3), and AMSGrad with ``amsgrad=True``.

Per step, with ``t = iterations + 1`` and the betas rounded to float32 where Keras casts
them (a float64 model on TensorFlow), after weight decay ``p <- p - p * weight_decay * lr``::

    alpha = lr * sqrt(1 - beta_2^t) / (1 - beta_1^t)
    m <- m + (g - m) * (1 - beta_1)
    v <- v + (g^2 - v) * (1 - beta_2)
    amsgrad: v_hat <- max(v_hat, v), and v_hat in place of v below
    p <- p - m * alpha / (sqrt(v) + epsilon)

Differs from Keras 2.0's Adam: epsilon 1e-7 (not 1e-8), no ``decay``, ``amsgrad``, the
slots are named ``momentum`` / ``velocity``.
"""
import math
from typing import Any, ClassVar

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, Variant, float32_setting
from numbaopt.state import Slot


def adam_rule(
    p: float, g: float, m: float, v: float, weight_decay: float, lr: float, alpha: float, one_minus_beta_1: float,
    one_minus_beta_2: float, epsilon: float,
) -> tuple[float, float, float]:
    """One element of Adam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    return p - (m * alpha) / (math.sqrt(v) + epsilon), m, v


def amsgrad_rule(
    p: float, g: float, m: float, v: float, v_hat: float, weight_decay: float, lr: float, alpha: float,
    one_minus_beta_1: float, one_minus_beta_2: float, epsilon: float,
) -> tuple[float, float, float, float]:
    """One element of AMSGrad; returns the new (p, m, v, v_hat)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    v_hat = max(v_hat, v)
    return p - (m * alpha) / (math.sqrt(v_hat) + epsilon), m, v, v_hat


class Adam(Keras3Optimizer):
    """Adam: adaptive moment estimation (Keras 3's ``keras.optimizers.Adam``)."""

    arguments: ClassVar[tuple[Argument, ...]] = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("beta_1", 0.9, "unit"),
        Argument("beta_2", 0.999, "unit"),
        Argument("epsilon", 1e-7),
        Argument("amsgrad", False, "flag"),
    )
    structural = ("amsgrad",)
    slots = (Slot("momentum"), Slot("velocity", sign="nonnegative"))
    rule = staticmethod(adam_rule)
    keras_build = (("momentum", "velocity"), ("velocity_hat",))

    @classmethod
    def variant(cls, hyper: Any) -> Variant:
        if hyper["amsgrad"]:
            return Variant((*cls.slots, Slot("velocity_hat", sign="nonnegative")), amsgrad_rule)
        return Variant(cls.slots, adam_rule)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t, lr = dtype(1), dtype(h.iterations + 1), dtype(h.lr)
        beta_1_power = float32_setting(h.beta_1, dtype) ** t
        beta_2_power = float32_setting(h.beta_2, dtype) ** t
        alpha = lr * np.sqrt(one - beta_2_power) / (one - beta_1_power)
        return (
            float32_setting(h.weight_decay, dtype), lr, alpha,
            dtype(1 - h.beta_1), dtype(1 - h.beta_2), dtype(h.epsilon),
        )
