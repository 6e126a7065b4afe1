"""Nadam (Keras 3): Adam with Nesterov momentum and the 0.96 momentum schedule.

Per step, with ``t = iterations + 1`` and the running product ``u_product`` (starts at 1,
kept in the first parameter's dtype, advanced once per step before the update)::

    u_t   = beta_1 * (1 - 0.5 * 0.96^t);   u_t1 = beta_1 * (1 - 0.5 * 0.96^(t + 1))
    u_product <- u_product * u_t;           u_product_t1 = u_product * u_t1

then per element, after weight decay ``p <- p - p * weight_decay * lr``::

    m <- m + (g - m) * (1 - beta_1);   v <- v + (g^2 - v) * (1 - beta_2)
    m_hat = u_t1 * m / (1 - u_product_t1) + (1 - u_t) * g / (1 - u_product)
    p <- p - m_hat * lr / (sqrt(v / (1 - beta_2^t)) + epsilon)

A float64 model on TensorFlow uses 0.96 and the betas rounded to float32 in the update,
but not in the product (tf-keras's new-style Nadam, ``tf_keras=True``, in the product too).
Differs from Keras 2.0's Nadam: no ``schedule_decay`` (the
schedule is 0.96^t), epsilon 1e-7, learning rate 0.001.
"""
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3 import naming
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.state import Slot


def nadam_rule(p: float, g: float, m: float, v: float, weight_decay: float, lr: float, one_minus_beta_1: float,
               one_minus_beta_2: float, u_t1: float, one_minus_u_product_t1: float, one_minus_u_t: float,
               one_minus_u_product: float, one_minus_beta_2_power: float, epsilon: float) -> tuple[float, float, float]:
    """One element of Nadam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m + (g - m) * one_minus_beta_1
    v = v + (g * g - v) * one_minus_beta_2
    m_hat = (u_t1 * m) / one_minus_u_product_t1 + (one_minus_u_t * g) / one_minus_u_product
    v_hat = v / one_minus_beta_2_power
    return p - (m_hat * lr) / (math.sqrt(v_hat) + epsilon), m, v


class Nadam(Keras3Optimizer):
    """Nadam (Keras 3's ``keras.optimizers.Nadam``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("beta_1", 0.9, "unit"),
        Argument("beta_2", 0.999, "unit"),
        Argument("epsilon", 1e-7),
    )
    slots = (Slot("momentum"), Slot("velocity", sign="nonnegative"))
    scalar_state = (("u_product", 1.0),)
    rule = staticmethod(nadam_rule)
    scalar_state_advances_with = {"u_product": ("beta_1",)}
    tf_keras_file_refused = ("tf-keras does not save its running product u_product, so no continuation of the file "
                             "is exact (Keras's own differs between eager and tf.function runs)")

    @staticmethod
    def _u_product(h: StepInputs) -> Any:
        """The product after this step's factor, in the first parameter's dtype (Keras's variable)."""
        kind = h.first_variable_dtype
        t = kind(h.iterations + 1)
        if h.get("tf_keras"):  # tf-keras multiplies by the update's own u_t, its constants float32-rounded
            u_t = float32_setting(h.beta_1, kind) * (kind(1.0) - kind(0.5) * float32_setting(0.96, kind) ** t)
            return kind(h.scalars["u_product"]) * u_t
        return kind(h.scalars["u_product"]) * kind(h.beta_1) * (kind(1.0) - kind(0.5) * kind(0.96) ** t)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t = dtype(1), dtype(h.iterations + 1)
        decay, beta_1, beta_2 = float32_setting(0.96, dtype), float32_setting(h.beta_1, dtype), float32_setting(h.beta_2, dtype)
        u_t = beta_1 * (dtype(1.0) - dtype(0.5) * decay**t)
        u_t1 = beta_1 * (dtype(1.0) - dtype(0.5) * decay ** (t + one))
        u_product = dtype(Nadam._u_product(h))
        return (
            float32_setting(h.weight_decay, dtype), dtype(h.lr), one - beta_1, one - beta_2,
            u_t1, one - u_product * u_t1, one - u_t, one - u_product, one - beta_2**t, dtype(h.epsilon),
        )

    @staticmethod
    def advance_scalar_state(h: StepInputs) -> dict[str, float]:
        return {"u_product": float(Nadam._u_product(h))}

    def keras_extra_variables(self, scalars: Any) -> list[tuple[str, npt.NDArray[Any]]]:
        """Keras's ``u_product``, an unnamed variable its ``build`` adds last."""
        return [(f"{self.name}/variable", np.array(scalars["u_product"], self._first_dtype))]
