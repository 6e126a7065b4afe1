"""Adagrad (Keras 3).

Per step, after weight decay ``p <- p - p * weight_decay * lr``::

    a <- a + g^2
    p <- p - lr * g / sqrt(a + epsilon)

with ``a`` starting at ``initial_accumulator_value`` (float32-rounded in a float64 model,
as TensorFlow's constant initializer makes it; tf-keras's new-style Adagrad, ``tf_keras=True``,
starts it at the exact value). Differs from Keras 2.0's Adagrad: epsilon
inside the square root (1e-7), the accumulator starts at 0.1 rather than 0, no ``decay``.
"""
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def adagrad_rule(p: float, g: float, a: float, weight_decay: float, lr: float, epsilon: float) -> tuple[float, float]:
    """One element of Adagrad; returns the new (p, a). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    a = a + g * g
    return p - (lr * g) / math.sqrt(a + epsilon), a


class Adagrad(Keras3Optimizer):
    """Adagrad (Keras 3's ``keras.optimizers.Adagrad``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("initial_accumulator_value", 0.1),
        Argument("epsilon", 1e-7),
    )
    slots = (Slot("accumulator", sign="nonnegative"),)
    rule = staticmethod(adagrad_rule)

    def initial_slots(self, params: Sequence[npt.NDArray[Any]]) -> dict[str, list[npt.NDArray[Any]]]:
        value = self._hyper["initial_accumulator_value"]
        start = (lambda kind: kind(value)) if self._hyper.get("tf_keras") else (lambda kind: float32_setting(value, kind))
        return {"accumulator": [np.full(p.shape, start(p.dtype.type), p.dtype) for p in params]}

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        return float32_setting(h.weight_decay, dtype), dtype(h.lr), dtype(h.epsilon)
