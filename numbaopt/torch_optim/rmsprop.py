"""RMSprop (torch.optim 2.13), centered with ``centered=True``, with momentum.

Per parameter::

    g <- -g if maximize;   g <- g + weight_decay * p   (weight_decay != 0)
    s <- s * alpha + (1 - alpha) * g * g
    centered:  a <- lerp(a, g, 1 - alpha);   avg = sqrt(s - a * a) + eps
    otherwise: avg = sqrt(s) + eps
    momentum > 0:  b <- b * momentum + g / avg;   p <- p + (-lr) * b
    otherwise:     p <- p + (-lr) * g / avg

The slots follow the constructor's ``momentum > 0`` and ``centered``: ``square_avg``, then
``momentum_buffer``, then ``grad_avg``, as torch creates them.
"""
import math
from collections.abc import Callable
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, Variant, at_least_zero, lerp_weight
from numbaopt.torch_optim.elements import coupled, lerped


def rmsprop_rule(p: float, g: float, s: float, maximize: bool, weight_decay: float, alpha: float, one_minus_alpha: float,
                 w: float, small: bool, w_complement: float, eps: float, momentum: float, neg_lr: float) -> tuple[float, float]:
    """One element of RMSprop; returns the new (p, s). Compiled for the CPU and for CUDA."""
    g = coupled(p, g, maximize, weight_decay)
    s = s * alpha + one_minus_alpha * g * g
    return p + neg_lr * g / (math.sqrt(s) + eps), s


def momentum_rule(p: float, g: float, s: float, b: float, maximize: bool, weight_decay: float, alpha: float,
                  one_minus_alpha: float, w: float, small: bool, w_complement: float, eps: float, momentum: float,
                  neg_lr: float) -> tuple[float, float, float]:
    """One element of RMSprop with momentum; returns the new (p, s, b)."""
    g = coupled(p, g, maximize, weight_decay)
    s = s * alpha + one_minus_alpha * g * g
    b = b * momentum + g / (math.sqrt(s) + eps)
    return p + neg_lr * b, s, b


def centered_rule(p: float, g: float, s: float, a: float, maximize: bool, weight_decay: float, alpha: float,
                  one_minus_alpha: float, w: float, small: bool, w_complement: float, eps: float, momentum: float,
                  neg_lr: float) -> tuple[float, float, float]:
    """One element of centered RMSprop; returns the new (p, s, a)."""
    g = coupled(p, g, maximize, weight_decay)
    s = s * alpha + one_minus_alpha * g * g
    a = lerped(a, g, w, small, w_complement)
    return p + neg_lr * g / (math.sqrt(s + -a * a) + eps), s, a


def centered_momentum_rule(p: float, g: float, s: float, b: float, a: float, maximize: bool, weight_decay: float,
                           alpha: float, one_minus_alpha: float, w: float, small: bool, w_complement: float, eps: float,
                           momentum: float, neg_lr: float) -> tuple[float, float, float, float]:
    """One element of centered RMSprop with momentum; returns the new (p, s, b, a)."""
    g = coupled(p, g, maximize, weight_decay)
    s = s * alpha + one_minus_alpha * g * g
    a = lerped(a, g, w, small, w_complement)
    b = b * momentum + g / (math.sqrt(s + -a * a) + eps)
    return p + neg_lr * b, s, b, a


class RMSprop(TorchOptimOptimizer):
    """RMSprop (torch's ``torch.optim.RMSprop``)."""

    arguments = (
        Argument("lr", 1e-2, "real"),
        Argument("alpha", 0.99, "real"),
        Argument("eps", 1e-8, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("momentum", 0, "real"),
        Argument("centered", False, "flag"),
        Argument("capturable", False, "refused"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("differentiable", False, "refused"),
    )
    slots = (Slot("square_avg", sign="nonnegative"),)
    rule = staticmethod(rmsprop_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["eps"], "Invalid epsilon value")
        at_least_zero(hyper["momentum"], "Invalid momentum value")
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")
        at_least_zero(hyper["alpha"], "Invalid alpha value")

    @classmethod
    def variant(cls, hyper: Any) -> Variant:
        momentum, centered = hyper["momentum"] > 0, hyper["centered"]
        slots = (Slot("square_avg", sign="nonnegative"),) + ((Slot("momentum_buffer"),) if momentum else ()) + ((Slot("grad_avg"),) if centered else ())
        rules: dict[tuple[bool, bool], Callable[..., tuple[float, ...]]] = {(False, False): rmsprop_rule, (True, False): momentum_rule, (False, True): centered_rule,
                (True, True): centered_momentum_rule}
        return Variant(slots, rules[momentum, centered])

    @classmethod
    def structural_settings(cls) -> tuple[str, ...]:
        return ("momentum", "centered")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        alpha = h.alpha
        return (bool(h.maximize), dtype(h.weight_decay), dtype(alpha), dtype(1 - alpha), *lerp_weight(1 - alpha, dtype),
                dtype(h.eps), dtype(h.momentum), dtype(-h.lr))
