"""Adagrad (torch.optim 2.13).

Per parameter, with its own ``step`` (``sum`` starts at the optimizer's
``initial_accumulator_value``, torch's ``defaults``, never a group's)::

    g <- -g if maximize;   g <- g + weight_decay * p   (weight_decay != 0)
    clr = lr / (1 + (step - 1) * lr_decay)
    sum <- sum + g * g
    p <- p + (-clr) * g / (sqrt(sum) + eps)
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero
from numbaopt.torch_optim.elements import coupled


def adagrad_rule(p: float, g: float, total: float, maximize: bool, weight_decay: float, first: bool, initial: float,
                 eps: float, neg_clr: float) -> tuple[float, float]:
    """One element of Adagrad; returns the new (p, sum). Compiled for the CPU and for CUDA."""
    g = coupled(p, g, maximize, weight_decay)
    if first:
        total = initial
    total = total + g * g
    return p + neg_clr * g / (math.sqrt(total) + eps), total


class Adagrad(TorchOptimOptimizer):
    """Adagrad (torch's ``torch.optim.Adagrad``)."""

    arguments = (
        Argument("lr", 1e-2, "real"),
        Argument("lr_decay", 0, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("initial_accumulator_value", 0, "real"),
        Argument("eps", 1e-10, "real"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("differentiable", False, "refused"),
        Argument("fused", None, "refused"),
    )
    keyword_only = ("maximize", "differentiable", "fused")
    slots = (Slot("sum", sign="nonnegative"),)
    rule = staticmethod(adagrad_rule)
    defaults_only = ("initial_accumulator_value",)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["lr_decay"], "Invalid lr_decay value")
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")
        at_least_zero(hyper["initial_accumulator_value"], "Invalid initial_accumulator_value value")
        at_least_zero(hyper["eps"], "Invalid epsilon value")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        step = float(h.state["step"])
        clr = h.lr / (1 + (step - 1) * h.lr_decay)
        return (bool(h.maximize), dtype(h.weight_decay), bool(step == 1), dtype(h.initial_accumulator_value),
                dtype(h.eps), dtype(-clr))
