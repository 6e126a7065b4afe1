"""RMSprop (Keras 2.0).

Per step, with ``lr_eff = lr / (1 + decay * iterations)``::

    a <- rho * a + (1 - rho) * g^2
    p <- p - lr_eff * g / (sqrt(a) + epsilon)
"""
import math
from typing import Any

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, Slot, StepInputs


def rmsprop_rule(
    p: float, g: float, a: float, lr: float, rho: float, one_minus_rho: float, epsilon: float
) -> tuple[float, float]:
    """One element of RMSprop; returns the new (p, a). Compiled for the CPU and for CUDA."""
    a = rho * a + one_minus_rho * (g * g)
    # Keras adds epsilon outside the square root, after it.
    p = p - lr * g / (math.sqrt(a) + epsilon)
    return p, a


class RMSprop(Optimizer):
    """RMSProp: divide the gradient by a running average of its recent magnitude.

    Arguments: ``lr``, ``rho``, ``epsilon`` (fuzz factor), ``decay`` (all floats >= 0), and
    ``clipnorm`` / ``clipvalue``. Usually a good choice for recurrent networks.
    """

    hyperparameters = (
        Hyperparameter("lr", 0.001),
        Hyperparameter("rho", 0.9),
        Hyperparameter("epsilon", 1e-8),
        Hyperparameter("decay", 0.0),
    )
    slots = (Slot("accumulators", sign="nonnegative"),)
    keras2_iterations = False
    rule = staticmethod(rmsprop_rule)

    # What later Kerases make of it (numbaopt.declarations).
    keras = KerasDescription(
        imported={"legacy": KerasClass({"accumulators": "rms"}, float32_settings=("decay",))},
        inert={"momentum": (0, 0.0), "centered": (False,)},
    )

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        rho = dtype(h.rho)
        return h.decayed_lr(dtype), rho, dtype(1) - rho, dtype(h.epsilon)
