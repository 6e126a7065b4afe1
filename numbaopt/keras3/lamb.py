"""Lamb (Keras 3): Adam's direction scaled per tensor by a trust ratio (You et al., 2019).

Per step, with ``t = iterations + 1`` and the betas of the powers rounded to float32 where
Keras casts them (a float64 model on TensorFlow), after weight decay
``p <- p - p * weight_decay * lr``::

    m <- m + (g - m) * (1 - beta_1)
    v <- v + (g^2 - v) * (1 - beta_2)
    update = (m / (1 - beta_1^t)) / (sqrt(v / (1 - beta_2^t)) + epsilon)
    ratio  = |p| / |update|   per tensor (Frobenius norms; 1 where either is 0)
    p <- p - ratio * lr * update

``|p|`` is the norm after weight decay, as Keras applies the decay before ``update_step``.
Three phases: the moments per element, the two norms per tensor, the step per element.
Keras's Lamb has no weight decay of its own: the base optimizer's ``weight_decay`` (None,
none, by default) is the only one, and it is not inside the ratio as in the paper. Keras
2.0 has no Lamb (tf-addons' ``LAMB`` puts the decay into the update).
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.phases import ElementPass, TensorPass
from numbaopt.state import Slot


def lamb_moments(p: float, g: float, m: float, v: float, t: Any, weight_decay: float, lr: float,
                 one_minus_beta_1: float, one_minus_beta_2: float, correction_1: float, correction_2: float,
                 epsilon: float, one: float) -> tuple[float, float, float]:
    """Phase 1, per element: weight decay and Adam's moments; returns the new (p, m, v)."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    return p, m, v


def lamb_ratio(p: Any, g: Any, m: Any, v: Any, ratio: Any, n: int, last: int, second: int, clip: Any,
               weight_decay: float, lr: float, one_minus_beta_1: float, one_minus_beta_2: float,
               correction_1: float, correction_2: float, epsilon: float, one: float) -> None:
    """Phase 2, per tensor: the trust ratio ``|p| / |update|`` into ``ratio[0]``."""
    # The sums run in float64 (TensorFlow's float32 reduce_sum sums in a tree, closer to
    # exact than a float32 loop); each norm is then rounded to the dtype through the slot,
    # and the ratio divides the rounded norms, as Keras's float32 ops do.
    weights, updates = 0.0, 0.0
    for i in range(n):
        u = (m[i] / correction_1) / (math.sqrt(v[i] / correction_2) + epsilon)
        weights += p[i] * p[i]
        updates += u * u
    ratio[0] = weights
    ratio[0] = math.sqrt(ratio[0])
    w_norm = ratio[0]
    ratio[0] = updates
    ratio[0] = math.sqrt(ratio[0])
    u_norm = ratio[0]
    ratio[0] = w_norm / u_norm if w_norm > 0 and u_norm > 0 else one


def lamb_apply(p: float, g: float, m: float, v: float, t: Any, weight_decay: float, lr: float,
               one_minus_beta_1: float, one_minus_beta_2: float, correction_1: float, correction_2: float,
               epsilon: float, one: float) -> tuple[float, float, float]:
    """Phase 3, per element: the step, scaled by the tensor's trust ratio ``t[0]``."""
    update = (m / correction_1) / (math.sqrt(v / correction_2) + epsilon)
    return p - (t[0] * lr) * update, m, v


class Lamb(Keras3Optimizer):
    """Lamb: layer-wise adaptive moments (Keras 3's ``keras.optimizers.Lamb``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("beta_1", 0.9, "unit"),
        Argument("beta_2", 0.999, "unit"),
        Argument("epsilon", 1e-7),
    )
    slots = (Slot("momentum"), Slot("velocity"), Slot("ratio", "tensor"))
    phases = (ElementPass(lamb_moments), TensorPass(lamb_ratio), ElementPass(lamb_apply))
    #: ``ratio`` is numbaopt's scratch between the phases: Keras keeps no such variable.
    keras_build = (("momentum", "velocity"),)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t = dtype(1), dtype(h.iterations + 1)
        beta_1_power = float32_setting(h.beta_1, dtype) ** t
        beta_2_power = float32_setting(h.beta_2, dtype) ** t
        return (
            float32_setting(h.weight_decay, dtype), dtype(h.lr), dtype(1 - h.beta_1), dtype(1 - h.beta_2),
            one - beta_1_power, one - beta_2_power, dtype(h.epsilon), one,
        )
