"""NAdam (torch.optim 2.13): Adam with Nesterov momentum and the 0.96 momentum schedule.

Per parameter, with its own ``step`` and ``mu_product`` (a float32 scalar, as torch keeps
it at its default dtype: ``mu_product *= mu`` rounds it to float32 every step, for float64
parameters too)::

    mu = beta1 * (1 - 0.5 * 0.96^(step * momentum_decay));  mu_next likewise at step + 1
    mu_product <- mu_product * mu
    g <- -g if maximize;  weight decay as Adam's (decoupled or not)
    m <- lerp(m, g, 1 - beta1);   v <- v * beta2 + (1 - beta2) * g * g
    denom = sqrt(v / (1 - beta2^step)) + eps
    p <- p + (-lr * (1 - mu) / (1 - mu_product)) * g / denom
    p <- p + (-lr * mu_next / (1 - mu_product * mu_next)) * m / denom
"""
import math
from typing import Any

import numpy as np

from numbaopt.hyperparameters import StepInputs
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, at_least_zero, check_betas, lerp_weight
from numbaopt.torch_optim.elements import decayed, lerped


def nadam_rule(p: float, g: float, m: float, v: float, maximize: bool, weight_decay: float, decoupled: bool, decay: float,
               w: float, small: bool, w_complement: float, beta2: float, one_minus_beta2: float, bias_correction2: float,
               eps: float, grad_value: float, avg_value: float) -> tuple[float, float, float]:
    """One element of NAdam; returns the new (p, m, v). Compiled for the CPU and for CUDA."""
    p, g = decayed(p, g, maximize, weight_decay, decoupled, decay)
    m = lerped(m, g, w, small, w_complement)
    v = v * beta2 + one_minus_beta2 * g * g
    denom = math.sqrt(v / bias_correction2) + eps
    p = p + grad_value * g / denom
    return p + avg_value * m / denom, m, v


def _mu(beta1: float, step: float, momentum_decay: float) -> float:
    return float(beta1 * (1.0 - 0.5 * (0.96 ** (step * momentum_decay))))


class NAdam(TorchOptimOptimizer):
    """NAdam: Adam with Nesterov momentum (torch's ``torch.optim.NAdam``)."""

    arguments = (
        Argument("lr", 2e-3, "real"),
        Argument("betas", (0.9, 0.999), "pair"),
        Argument("eps", 1e-8, "real"),
        Argument("weight_decay", 0, "real"),
        Argument("momentum_decay", 4e-3, "real"),
        Argument("decoupled_weight_decay", False, "flag"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
        Argument("capturable", False, "refused"),
        Argument("differentiable", False, "refused"),
    )
    keyword_only = ("foreach", "maximize", "capturable", "differentiable")
    slots = (Slot("exp_avg"), Slot("exp_avg_sq", sign="nonnegative"))
    rule = staticmethod(nadam_rule)
    parameter_state = (("step", 0.0), ("mu_product", 1.0))

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        at_least_zero(hyper["lr"], "Invalid learning rate")
        at_least_zero(hyper["eps"], "Invalid epsilon value")
        check_betas(hyper["betas"])
        at_least_zero(hyper["weight_decay"], "Invalid weight_decay value")
        at_least_zero(hyper["momentum_decay"], "Invalid momentum_decay value")

    @staticmethod
    def parameter_update(h: StepInputs, stored: Any) -> tuple[dict[str, Any], dict[str, Any]]:
        scalar = type(stored["step"])  # the per-parameter scalars' dtype, which torch rounds to
        step = scalar(stored["step"] + scalar(1))
        mu = _mu(h.betas[0], float(step), h.momentum_decay)
        during = {"step": step, "mu_product": scalar(stored["mu_product"] * scalar(mu))}
        return during, during

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        step, mu_product = float(h.state["step"]), float(h.state["mu_product"])
        beta1, beta2 = h.betas
        lr, weight_decay = h.lr, h.weight_decay
        mu, mu_next = _mu(beta1, step, h.momentum_decay), _mu(beta1, step + 1, h.momentum_decay)
        mu_product_next = mu_product * mu_next
        return (
            bool(h.maximize), dtype(weight_decay), bool(h.decoupled_weight_decay), dtype(1 - lr * weight_decay),
            *lerp_weight(1 - beta1, dtype), dtype(beta2), dtype(1 - beta2), dtype(1 - beta2**step), dtype(h.eps),
            dtype(-lr * (1.0 - mu) / (1.0 - mu_product)), dtype((-lr * mu_next) / (1.0 - mu_product_next)),
        )
