"""SGD (Keras 3): plain, with momentum, or Nesterov's.

Per step, after Keras 3's weight decay ``p <- p - p * weight_decay * lr``::

    momentum == 0:  p <- p - g * lr
    otherwise:      m <- m * momentum - g * lr
                    p <- p + m                          (nesterov: p + m * momentum - g * lr)

Differs from Keras 2.0's SGD: no ``decay``; the momentum buffer exists only with momentum
(Keras 3 builds none at 0); on TensorFlow a float64 model uses ``float32(momentum)``.
"""
from typing import Any

import numpy as np

from numbaopt.keras3.base import Argument, Keras3Optimizer, Variant, float32_setting
from numbaopt.state import Slot
from numbaopt.hyperparameters import StepInputs


def sgd_rule(p: float, g: float, weight_decay: float, lr: float) -> tuple[float]:
    """One element of plain SGD; returns the new (p,). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    return (p - g * lr,)


def momentum_rule(
    p: float, g: float, m: float, weight_decay: float, lr: float, momentum: float, nesterov: bool
) -> tuple[float, float]:
    """One element of SGD with momentum; returns the new (p, m)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m * momentum - g * lr
    if nesterov:
        return p + (m * momentum - g * lr), m
    return p + m, m


class SGD(Keras3Optimizer):
    """Gradient descent with momentum (Keras 3's ``keras.optimizers.SGD``)."""

    arguments = (
        Argument("learning_rate", 0.01, "learning_rate"),
        Argument("momentum", 0.0, "real"),
        Argument("nesterov", False, "flag"),
    )
    structural = ("momentum",)
    slots = ()
    rule = staticmethod(sgd_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        super().check_settings(hyper)
        momentum = hyper["momentum"]
        if not isinstance(momentum, float) or momentum < 0 or momentum > 1:
            raise ValueError("`momentum` must be a float between [0, 1].")

    tf_keras_unused_slots = (Slot("momentum"),)  # tf-keras builds it at momentum 0 too

    @classmethod
    def variant(cls, hyper: Any) -> Variant:
        if hyper["momentum"] != 0:
            return Variant((Slot("momentum"),), momentum_rule)
        return Variant((), sgd_rule)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        decay = (float32_setting(h.weight_decay, dtype), dtype(h.lr))
        if h.momentum != 0:
            return decay + (float32_setting(h.momentum, dtype), bool(h.nesterov))
        return decay
