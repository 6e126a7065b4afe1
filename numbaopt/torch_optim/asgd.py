"""ASGD (torch.optim 2.13): averaged stochastic gradient descent.

Per parameter, with its own ``step``, ``eta`` (starts at the group's ``lr``) and ``mu``
(starts at 1), scalars of the per-parameter scalars' dtype, as torch keeps them::

    g <- -g if maximize;   g <- g + weight_decay * p   (weight_decay != 0)
    p <- p * (1 - lambd * eta);   p <- p + (-eta) * g
    ax <- ax + (p - ax) * mu   (mu != 1),   ax <- p   (mu == 1)
    eta <- lr / (1 + lambd * lr * step)^alpha;   mu <- 1 / max(1, step - t0)
"""
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero
from numbaopt.torch_optim.elements import coupled


def asgd_rule(p: float, g: float, ax: float, maximize: bool, weight_decay: float, decay: float, neg_eta: float,
              averaging: bool, mu: float) -> tuple[float, float]:
    """One element of ASGD; returns the new (p, ax). Compiled for the CPU and for CUDA."""
    g = coupled(p, g, maximize, weight_decay)
    p = p * decay
    p = p + neg_eta * g
    ax = ax + (p - ax) * mu if averaging else p
    return p, ax


class ASGD(TorchOptimOptimizer):
    """Averaged SGD (torch's ``torch.optim.ASGD``)."""

    arguments = (
        Argument("lr", 1e-2, "real"),
        Argument("lambd", 1e-4, "real"),
        Argument("alpha", 0.75, "real"),
        Argument("t0", 1e6, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("differentiable", False, "refused"),
        Argument("capturable", False, "refused"),
    )
    slots = (Slot("ax"),)
    rule = staticmethod(asgd_rule)
    parameter_state = (("step", 0.0), ("eta", 0.0), ("mu", 1.0))

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")

    @staticmethod
    def parameter_update(h: StepInputs, stored: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        """The step reads ``eta`` and ``mu`` as they were (at the first step: the group's
        ``lr`` and 1) and replaces them after, from the new ``step``."""
        scalar = type(stored["step"])
        step = scalar(stored["step"] + scalar(1))
        first = stored["step"] == 0
        during = {"step": step, "eta": scalar(h.lr) if first else stored["eta"], "mu": scalar(1) if first else stored["mu"]}
        lr, lambd = h.lr, h.lambd
        after = {"step": step, "eta": scalar(lr / ((1 + lambd * lr * float(step)) ** h.alpha)),
                 "mu": scalar(1 / max(1, float(step) - h.t0))}
        return during, after

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        eta, mu = float(h.state["eta"]), h.state["mu"]
        return (bool(h.maximize), dtype(h.weight_decay), dtype(1 - h.lambd * eta), dtype(-eta), bool(mu != 1), dtype(mu))
