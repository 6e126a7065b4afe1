"""RMSprop (Keras 3), with optional momentum and centering.

Per step, after weight decay ``p <- p - p * weight_decay * lr``::

    v <- rho * v + (1 - rho) * g^2
    centered:  a <- rho * a + (1 - rho) * g;   d = v - a^2 + epsilon
    otherwise: d = v + epsilon
    increment = lr * g / sqrt(d)
    momentum > 0: m <- momentum * m + increment;  p <- p - m
    otherwise:    p <- p - increment

Differs from Keras 2.0's RMSprop: epsilon inside the square root (1e-7, not 1e-8 outside
it), no ``decay``, ``momentum`` and ``centered``; the slot is named ``velocity``.
"""
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, Variant, float32_setting
from numbaopt.state import Slot


def rmsprop_rule(p: float, g: float, v: float, weight_decay: float, lr: float, rho: float, one_minus_rho: float,
                 epsilon: float, momentum: float) -> tuple[float, float]:
    """One element of RMSprop; returns the new (p, v). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    v = rho * v + one_minus_rho * (g * g)
    return p - (lr * g) / math.sqrt(v + epsilon), v


def momentum_rule(p: float, g: float, v: float, m: float, weight_decay: float, lr: float, rho: float,
                  one_minus_rho: float, epsilon: float, momentum: float) -> tuple[float, float, float]:
    """RMSprop with momentum; returns the new (p, v, m)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    v = rho * v + one_minus_rho * (g * g)
    m = momentum * m + (lr * g) / math.sqrt(v + epsilon)
    return p - m, v, m


def centered_rule(p: float, g: float, v: float, a: float, weight_decay: float, lr: float, rho: float,
                  one_minus_rho: float, epsilon: float, momentum: float) -> tuple[float, float, float]:
    """Centered RMSprop; returns the new (p, v, a)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    v = rho * v + one_minus_rho * (g * g)
    a = rho * a + one_minus_rho * g
    return p - (lr * g) / math.sqrt(v - a * a + epsilon), v, a


def centered_momentum_rule(p: float, g: float, v: float, m: float, a: float, weight_decay: float, lr: float, rho: float,
                           one_minus_rho: float, epsilon: float, momentum: float) -> tuple[float, float, float, float]:
    """Centered RMSprop with momentum; returns the new (p, v, m, a)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    v = rho * v + one_minus_rho * (g * g)
    a = rho * a + one_minus_rho * g
    m = momentum * m + (lr * g) / math.sqrt(v - a * a + epsilon)
    return p - m, v, m, a


class RMSprop(Keras3Optimizer):
    """RMSprop (Keras 3's ``keras.optimizers.RMSprop``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("rho", 0.9, "unit"),
        Argument("momentum", 0.0, "unit"),
        Argument("epsilon", 1e-7),
        Argument("centered", False, "flag"),
    )
    structural = ("momentum", "centered")
    slots = (Slot("velocity", sign="nonnegative"),)
    rule = staticmethod(rmsprop_rule)
    keras_build = (("velocity",), ("momentum",), ("average_gradient",))

    @classmethod
    def variant(cls, hyper: Any) -> Variant:
        momentum, centered = hyper["momentum"] > 0, hyper["centered"]
        slots = (Slot("velocity", sign="nonnegative"),) + ((Slot("momentum"),) if momentum else ()) + ((Slot("average_gradient"),) if centered else ())
        rules: dict[tuple[bool, bool], Callable[..., tuple[float, ...]]] = {
            (False, False): rmsprop_rule, (True, False): momentum_rule,
            (False, True): centered_rule, (True, True): centered_momentum_rule,
        }
        rule = rules[momentum, centered]
        return Variant(slots, rule)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        return (
            float32_setting(h.weight_decay, dtype), dtype(h.lr), dtype(h.rho), dtype(1 - h.rho),
            dtype(h.epsilon), dtype(h.momentum),
        )
