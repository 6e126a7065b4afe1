"""ScheduleFreeAdamW (Keras 3): schedule-free AdamW (Defazio et al., 2024).

The parameter holds the training point ``y``; the slot ``momentum`` holds ``z`` (it starts
as a copy of the parameter). Per step, with ``t = iterations + 1``, every setting
float32-rounded in a float64 model, ``lr`` times ``min(t / warmup_steps, 1)`` when
warming up, after weight decay ``p <- p - p * weight_decay * lr``::

    v <- v + (g^2 - v) * (1 - beta_2)
    z <- z - lr * g / (sqrt(v / (1 - beta_2^t)) + epsilon)
    x = (y - (1 - beta_1) * z) / beta_1;   x' = (1 - 1/t) * x + z / t
    y <- (1 - beta_1) * z + beta_1 * x'

As Keras on TensorFlow (and torch) computes it: ``x`` reads ``z`` after its update (Keras
means the old one; JAX's Keras gives 3-20% other numbers). Keras 2.0 has no such optimizer.
"""
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def schedule_free_rule(p: float, g: float, z: float, v: float, weight_decay: float, decay_lr: float, lr: float,
                       beta_1: float, one_minus_beta_1: float, one_minus_beta_2: float, bias_correction_2: float,
                       epsilon: float, weight: float, one_minus_weight: float) -> tuple[float, float, float]:
    """One element of schedule-free AdamW; returns the new (p, z, v). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * decay_lr
    v = v + (g * g - v) * one_minus_beta_2
    z = z - (lr * g) / (math.sqrt(v / bias_correction_2) + epsilon)
    x = (p - one_minus_beta_1 * z) / beta_1
    x = one_minus_weight * x + weight * z
    return one_minus_beta_1 * z + beta_1 * x, z, v


class ScheduleFreeAdamW(Keras3Optimizer):
    """Schedule-free AdamW (Keras 3's ``keras.optimizers.ScheduleFreeAdamW``)."""

    arguments = (
        Argument("learning_rate", 0.0025, "learning_rate"),
        Argument("beta_1", 0.9, "unit"),
        Argument("beta_2", 0.999, "unit"),
        Argument("epsilon", 1e-8),
        Argument("warmup_steps", 0, "count"),
    )
    slots = (Slot("momentum"), Slot("velocity", sign="nonnegative"))
    #: ``momentum`` holds ``z``, a second copy of the parameters: 8 bits would lose them.
    slot_dtypes = ("float32", "bfloat16")
    rule = staticmethod(schedule_free_rule)

    def initial_slots(self, params: Sequence[npt.NDArray[Any]]) -> dict[str, list[npt.NDArray[Any]]]:
        return {"momentum": [p.copy() for p in params], "velocity": [np.zeros(p.shape, p.dtype) for p in params]}

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t, decay_lr = dtype(1), dtype(h.iterations + 1), dtype(h.lr)
        lr = decay_lr
        if h.warmup_steps > 0:
            lr = lr * min(t / float32_setting(h.warmup_steps, dtype), dtype(1.0))
        beta_1, beta_2 = float32_setting(h.beta_1, dtype), float32_setting(h.beta_2, dtype)
        weight = dtype(1.0) / t
        return (
            float32_setting(h.weight_decay, dtype), decay_lr, lr, beta_1, one - beta_1, one - beta_2,
            one - beta_2**t, float32_setting(h.epsilon, dtype), weight, one - weight,
        )
