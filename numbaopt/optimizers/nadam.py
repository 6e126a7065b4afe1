"""Nadam, Adam with Nesterov momentum (Keras 2.0).

Per call, with ``t = iterations + 1`` and the scalar state ``m_schedule`` (starts at 1)::

    mc_t    = beta_1 * (1 - 0.5 * 0.96^(t * schedule_decay))
    mc_t1   = beta_1 * (1 - 0.5 * 0.96^((t + 1) * schedule_decay))
    ms_new  = m_schedule * mc_t;   ms_next = ms_new * mc_t1;   m_schedule <- ms_new

then per element::

    g'   = g / (1 - ms_new)
    m   <- beta_1 * m + (1 - beta_1) * g;     m' = m / (1 - ms_next)
    v   <- beta_2 * v + (1 - beta_2) * g^2;   v' = v / (1 - beta_2^t)
    p   <- p - lr * ((1 - mc_t) * g' + mc_t1 * m') / (sqrt(v') + epsilon)

Nadam has no ``decay``: its learning rate follows the momentum schedule instead.
"""
import math
from typing import Any, Callable, TypeVar

import numpy as np

from numbaopt.declarations import KerasClass, KerasDescription
from numbaopt.optimizers.base import Hyperparameter, Optimizer, Slot, StepInputs

#: A scalar of the parameters' dtype, or a Python float (``advance_scalar_state``).
_F = TypeVar("_F", float, np.floating[Any])


def nadam_rule(
    p: float, g: float, m: float, v: float, lr: float, beta_1: float, one_minus_beta_1: float, beta_2: float,
    one_minus_beta_2: float, epsilon: float, one_minus_ms_new: float, one_minus_ms_next: float,
    one_minus_beta_2_t: float, one_minus_mc_t: float, mc_t1: float,
) -> tuple[float, float, float]:
    """One element of Nadam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    g_prime = g / one_minus_ms_new
    m = beta_1 * m + one_minus_beta_1 * g
    m_prime = m / one_minus_ms_next
    v = beta_2 * v + one_minus_beta_2 * (g * g)
    v_prime = v / one_minus_beta_2_t
    m_bar = one_minus_mc_t * g_prime + mc_t1 * m_prime
    p = p - lr * m_bar / (math.sqrt(v_prime) + epsilon)
    return p, m, v


class Nadam(Optimizer):
    """Nadam: Adam with Nesterov momentum and a momentum schedule.

    Arguments: ``lr``, ``epsilon``, ``schedule_decay`` (floats >= 0), ``beta_1`` and
    ``beta_2`` (floats in [0, 1)), and ``clipnorm`` / ``clipvalue``. Best left at defaults.
    """

    hyperparameters = (
        Hyperparameter("lr", 0.002),
        Hyperparameter("beta_1", 0.9, "fraction"),
        Hyperparameter("beta_2", 0.999, "fraction"),
        Hyperparameter("epsilon", 1e-8),
        Hyperparameter("schedule_decay", 0.004),
    )
    slots = (Slot("ms"), Slot("vs", sign="nonnegative"))
    scalar_state = (("m_schedule", 1.0),)
    rule = staticmethod(nadam_rule)

    # What later Kerases make of it (numbaopt.declarations). tf-keras's legacy Nadam keeps
    # m_schedule as the weight momentum_cache, uses 0.96 rounded to float32 in a float64
    # model (docs/parity.md, difference 10), and stores schedule_decay under "decay"; it
    # builds itself with schedule_decay=0.004 unless its config says schedule_decay, which
    # then overwrites its "decay" (difference 11). The newer Nadams follow another schedule.
    keras = KerasDescription(
        imported={
            "legacy": KerasClass({"ms": "m", "vs": "v"}, scalars={"m_schedule": "momentum_cache"},
                                 mixed_constant="its schedule constant 0.96"),
        },
        renamed={"decay": "schedule_decay"},
    )
    # m_schedule is shared by every parameter and advances with these: one value for all.
    scalar_state_advances_with = {"m_schedule": ("beta_1", "schedule_decay")}

    @staticmethod
    def _momentum_cache(h: StepInputs, dtype: Callable[[float], _F]) -> tuple[_F, _F]:
        """``(mc_t, mc_t1)`` for the step of ``h``."""
        one, half, base = dtype(1), dtype(0.5), dtype(0.96)
        t, decay, beta_1 = dtype(h.iterations + 1), dtype(h.schedule_decay), dtype(h.beta_1)
        mc_t = beta_1 * (one - half * base ** (t * decay))
        mc_t1 = beta_1 * (one - half * base ** ((t + one) * decay))
        return mc_t, mc_t1

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t = dtype(1), dtype(h.iterations + 1)
        beta_1, beta_2 = dtype(h.beta_1), dtype(h.beta_2)
        mc_t, mc_t1 = Nadam._momentum_cache(h, dtype)
        ms_new = dtype(h.scalars["m_schedule"]) * mc_t
        ms_next = ms_new * mc_t1
        return (
            dtype(h.lr), beta_1, one - beta_1, beta_2, one - beta_2, dtype(h.epsilon),
            one - ms_new, one - ms_next, one - beta_2**t, one - mc_t, mc_t1,
        )

    @staticmethod
    def advance_scalar_state(h: StepInputs) -> dict[str, float]:
        # Kept in float64 whatever the parameters' dtypes: it is shared by all of them.
        mc_t, _ = Nadam._momentum_cache(h, float)
        return {"m_schedule": h.scalars["m_schedule"] * mc_t}
