"""Adam (torch.optim 2.13), AMSGrad with ``amsgrad=True``, AdamW's update with
``decoupled_weight_decay=True``.

Per parameter, with its own ``step`` (advanced first) and torch's single-tensor arithmetic::

    g <- -g if maximize
    weight_decay != 0:  p <- p * (1 - lr * weight_decay)   decoupled
                        g <- g + weight_decay * p          otherwise
    m <- lerp(m, g, 1 - beta1)
    v <- v * beta2 + (1 - beta2) * g * g
    amsgrad: v_max <- max(v_max, v), and v_max in place of v below
    p <- p + (-lr / (1 - beta1^step)) * m / (sqrt(v) / sqrt(1 - beta2^step) + eps)

The bias corrections and step size are Python floats (float64) in torch, cast to the
parameters' dtype where a tensor op takes them; so are they here.
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, Variant, at_least_zero, check_betas, lerp_weight
from numbaopt.torch_optim.elements import decayed, lerped


def adam_rule(p: float, g: float, m: float, v: float, maximize: bool, weight_decay: float, decoupled: bool, decay: float,
              w: float, small: bool, w_complement: float, beta2: float, one_minus_beta2: float, bias_correction2_sqrt: float,
              eps: float, neg_step_size: float) -> tuple[float, float, float]:
    """One element of Adam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    p, g = decayed(p, g, maximize, weight_decay, decoupled, decay)
    m = lerped(m, g, w, small, w_complement)
    v = v * beta2 + one_minus_beta2 * g * g
    return p + neg_step_size * m / (math.sqrt(v) / bias_correction2_sqrt + eps), m, v


def amsgrad_rule(p: float, g: float, m: float, v: float, v_max: float, maximize: bool, weight_decay: float, decoupled: bool,
                 decay: float, w: float, small: bool, w_complement: float, beta2: float, one_minus_beta2: float,
                 bias_correction2_sqrt: float, eps: float, neg_step_size: float) -> tuple[float, float, float, float]:
    """One element of AMSGrad; returns the new (p, m, v, v_max)."""
    p, g = decayed(p, g, maximize, weight_decay, decoupled, decay)
    m = lerped(m, g, w, small, w_complement)
    v = v * beta2 + one_minus_beta2 * g * g
    v_max = max(v_max, v)
    return p + neg_step_size * m / (math.sqrt(v_max) / bias_correction2_sqrt + eps), m, v, v_max


class Adam(TorchOptimOptimizer):
    """Adam: adaptive moment estimation (torch's ``torch.optim.Adam``)."""

    eight_bit_name = "Adam8bit"

    arguments: tuple[Argument, ...] = (
        Argument("lr", 1e-3, "real"),
        Argument("betas", (0.9, 0.999), "pair"),
        Argument("eps", 1e-8, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("amsgrad", False, "flag"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("capturable", False, "refused"),
        Argument("differentiable", False, "refused"),
        Argument("fused", None, "refused"),
        Argument("decoupled_weight_decay", False, "flag"),
    )
    keyword_only: tuple[str, ...] = ("foreach", "maximize", "capturable", "differentiable", "fused", "decoupled_weight_decay")
    slots = (Slot("exp_avg"), Slot("exp_avg_sq", sign="nonnegative"))
    rule = staticmethod(adam_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["eps"], "Invalid epsilon value")
        check_betas(hyper["betas"])
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")
        if not all(isinstance(beta, float) for beta in hyper["betas"]):
            raise ValueError("betas must be either both floats or both Tensors")

    @classmethod
    def variant(cls, hyper: Any) -> Variant:
        if hyper["amsgrad"]:
            return Variant((Slot("exp_avg"), Slot("exp_avg_sq", sign="nonnegative"), Slot("max_exp_avg_sq", sign="nonnegative")), amsgrad_rule)
        return Variant(cls.slots, adam_rule)

    @classmethod
    def structural_settings(cls) -> tuple[str, ...]:
        return ("amsgrad",)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        step = float(h.state["step"])
        beta1, beta2 = h.betas
        lr, weight_decay = h.lr, h.weight_decay
        step_size = lr / (1 - beta1**step)
        return (
            bool(h.maximize), dtype(weight_decay), bool(h.decoupled_weight_decay), dtype(1 - lr * weight_decay),
            *lerp_weight(1 - beta1, dtype), dtype(beta2), dtype(1 - beta2), dtype((1 - beta2**step) ** 0.5),
            dtype(h.eps), dtype(-step_size),
        )
