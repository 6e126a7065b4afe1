"""RAdam (torch.optim 2.13): Adam with the variance rectification.

Per parameter, with its own ``step``::

    g <- -g if maximize;  weight decay as Adam's (decoupled or not)
    m <- lerp(m, g, 1 - beta1);   v <- v * beta2 + (1 - beta2) * g * g
    rho_inf = 2 / (1 - beta2) - 1;   rho_t = rho_inf - 2 step beta2^step / (1 - beta2^step)
    rho_t > 5:  p <- p - m / (1 - beta1^step) * lr * (sqrt(1 - beta2^step) / (sqrt(v) + eps)) * rect
    otherwise:  p <- p - m / (1 - beta1^step) * lr
    rect = sqrt((rho_t - 4)(rho_t - 2) rho_inf / ((rho_inf - 4)(rho_inf - 2) rho_t))
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero, check_betas, lerp_weight
from numbaopt.torch_optim.elements import decayed, lerped


def radam_rule(p: float, g: float, m: float, v: float, maximize: bool, weight_decay: float, decoupled: bool, decay: float,
               w: float, small: bool, w_complement: float, beta2: float, one_minus_beta2: float, bias_correction1: float,
               lr: float, rectified: bool, bias_correction2_sqrt: float, eps: float, rect: float) -> tuple[float, float, float]:
    """One element of RAdam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    p, g = decayed(p, g, maximize, weight_decay, decoupled, decay)
    m = lerped(m, g, w, small, w_complement)
    v = v * beta2 + one_minus_beta2 * g * g
    corrected = m / bias_correction1
    if rectified:
        return p - corrected * lr * (bias_correction2_sqrt / (math.sqrt(v) + eps)) * rect, m, v
    return p - corrected * lr, m, v


class RAdam(TorchOptimOptimizer):
    """RAdam: rectified Adam (torch's ``torch.optim.RAdam``)."""

    arguments = (
        Argument("lr", 1e-3, "real"),
        Argument("betas", (0.9, 0.999), "pair"),
        Argument("eps", 1e-8, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("decoupled_weight_decay", False, "flag"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("capturable", False, "refused"),
        Argument("differentiable", False, "refused"),
    )
    keyword_only = ("foreach", "maximize", "capturable", "differentiable")
    slots = (Slot("exp_avg"), Slot("exp_avg_sq", sign="nonnegative"))
    rule = staticmethod(radam_rule)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["eps"], "Invalid epsilon value")
        check_betas(hyper["betas"])
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        step = float(h.state["step"])
        beta1, beta2 = h.betas
        lr, weight_decay = h.lr, h.weight_decay
        bias_correction1, bias_correction2 = 1 - beta1**step, 1 - beta2**step
        rho_inf = 2 / (1 - beta2) - 1
        rho_t = rho_inf - 2 * step * (beta2**step) / bias_correction2
        rectified = rho_t > 5.0
        rect = ((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5 if rectified else 1.0
        return (
            bool(h.maximize), dtype(weight_decay), bool(h.decoupled_weight_decay), dtype(1 - lr * weight_decay),
            *lerp_weight(1 - beta1, dtype), dtype(beta2), dtype(1 - beta2), dtype(bias_correction1), dtype(lr),
            bool(rectified), dtype(bias_correction2**0.5), dtype(h.eps), dtype(rect),
        )
