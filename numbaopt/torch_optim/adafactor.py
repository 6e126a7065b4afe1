"""Adafactor (torch.optim 2.13's ``torch.optim.Adafactor``): factored second moments.

Per parameter, with its own ``step`` (``eps1`` None: the parameters' dtype's machine epsilon)::

    g <- -g if maximize
    rho = min(lr, 1 / sqrt(step));   alpha = max(eps2, norm(p) / sqrt(numel)) * rho
    p <- p * (1 - lr * weight_decay)                     (weight_decay != 0)
    two or more axes (the last two factored):
        row_var <- lerp(row_var, norm(g, axis=-1)^2 / columns, step^beta2_decay)
        col_var <- lerp(col_var, norm(g, axis=-2)^2 / rows, step^beta2_decay)
        v = row_var * col_var / max(mean(row_var, axis=-2), eps1)
    fewer:  variance <- lerp(variance, g * g, step^beta2_decay);   v = variance
    u = g / sqrt(max(v, eps1^2));   p <- p + (-alpha / max(1, norm(u) / (sqrt(numel) d))) * u

torch keeps ``row_var`` and ``col_var`` (shaped ``[..., rows, 1]`` and ``[..., 1, columns]``)
for a parameter of two or more axes and ``variance`` for one of fewer; numbaopt keeps
``variance`` for every parameter (its slots are declared per optimizer, not per tensor),
and ``numbaopt.torch.optim`` reads and writes torch's entries. Norms are summed in float64
and rounded to the parameters' dtype, as torch's ``.norm()`` gives them.
"""
import math
from typing import Any

import numpy as np

from numbaopt.clipping import clip_gradient
from numbaopt.hyperparameters import StepInputs
from numbaopt.phases import TensorPass
from numbaopt.state import Slot
from numbaopt.torch_optim.base import Argument, TorchOptimOptimizer, lerp_weight


def _rounded(x: float, cell: Any) -> Any:
    """``x`` (a float64 sum) in the dtype of the 1-element view ``cell``, as torch's
    reductions give it in the parameters' dtype."""
    cell[0] = x
    return cell[0]


def _direction(g: float, row: float, col: float, mean: float, variance: float, factored: bool, eps1_squared: float,
               one: float) -> Any:
    """``u`` of one element: the gradient over the square root of its second-moment estimate."""
    v = row * col / mean if factored else variance
    return one / math.sqrt(max(v, eps1_squared)) * g


def adafactor_step(p: Any, g: Any, row: Any, col: Any, variance: Any, scratch: Any, n: int, last: int, second: int, clip: Any,
                   sign: float, rho: float, eps2: float, decayed: bool, decay: float, w: float, small: bool,
                   w_complement: float, eps1: float, eps1_squared: float, d: float, one: float) -> None:
    """One tensor of Adafactor: its moments, then the parameter. Compiled for the CPU and for CUDA."""
    if n == 0:
        return
    squares = 0.0
    for i in range(n):
        squares += p[i] * p[i]
    alpha = max(eps2, float(_rounded(math.sqrt(squares), scratch)) / n ** 0.5) * rho
    if decayed:
        for i in range(n):
            p[i] = p[i] * decay
    factored = last != 0
    if factored:
        rows, batches = n // last, n // (last * second)
        columns, rows_per_batch = _rounded(last, scratch), _rounded(second, scratch)  # torch divides in the dtype
        for r in range(rows):
            total = 0.0
            for k in range(last):
                x = sign * clip_gradient(g[r * last + k], *clip)
                total += x * x
            norm = _rounded(math.sqrt(total), scratch)
            mean = norm * norm / columns
            row[r] = row[r] + w * (mean - row[r]) if small else mean - (mean - row[r]) * w_complement
        for b in range(batches):
            for k in range(last):
                total = 0.0
                for q in range(second):
                    x = sign * clip_gradient(g[(b * second + q) * last + k], *clip)
                    total += x * x
                norm = _rounded(math.sqrt(total), scratch)
                mean = norm * norm / rows_per_batch
                at = b * last + k
                col[at] = col[at] + w * (mean - col[at]) if small else mean - (mean - col[at]) * w_complement
    else:
        for i in range(n):
            x = sign * clip_gradient(g[i], *clip)
            square = x * x
            variance[i] = variance[i] + w * (square - variance[i]) if small else square - (square - variance[i]) * w_complement
    # norm(u), then the step: u is computed twice rather than stored (torch keeps no u).
    factor = _rounded(0.0, scratch)
    for stage in range(2):
        squares = 0.0
        for b in range(n // (last * second) if factored else 1):
            mean = eps1
            if factored:
                total = 0.0
                for q in range(second):
                    total += row[b * second + q]
                mean = max(_rounded(total / second, scratch), eps1)
            for i in range(b * last * second, (b + 1) * last * second if factored else n):
                r, k = i // last if factored else 0, i % last if factored else 0
                u = _direction(sign * clip_gradient(g[i], *clip), row[r] if factored else row[0], col[b * last + k] if factored else col[0],
                               mean, variance[i], factored, eps1_squared, one)
                if stage == 0:
                    squares += u * u
                else:
                    p[i] = p[i] + factor * u
        if stage == 0:
            shrink = max(1.0, float(_rounded(math.sqrt(squares), scratch)) / (n ** 0.5 * d))
            factor = _rounded(-alpha / shrink, scratch)
    scratch[0] = 0


class Adafactor(TorchOptimOptimizer):
    """Adafactor (torch's ``torch.optim.Adafactor``)."""

    arguments = (
        Argument("lr", 1e-2, "real"),
        Argument("beta2_decay", -0.8, "real"),
        Argument("eps", (None, 1e-3), "eps_pair"),
        Argument("d", 1.0, "real"),
        Argument("weight_decay", 0.0, "real"),
        Argument("foreach", None, "optional_flag"),
        Argument("maximize", False, "flag"),
    )
    keyword_only = ("foreach", "maximize")
    #: ``scratch``, one value per tensor, is numbaopt's (it rounds sums to the dtype): torch has none.
    slots = (Slot("row_var", "rows"), Slot("col_var", "columns"), Slot("variance"), Slot("scratch", "tensor"))
    phases = (TensorPass(adafactor_step),)

    @classmethod
    def check_settings(cls, hyper: Any) -> None:
        lr, beta2_decay, (eps1, eps2), d, weight_decay = (hyper[k] for k in ("lr", "beta2_decay", "eps", "d", "weight_decay"))
        if not 0.0 <= lr:
            raise ValueError(f"Learning rate should be >= 0 but is: {lr}")
        if not 0.0 >= beta2_decay:
            raise ValueError(f"beta2_decay should be <= 0 but is: {beta2_decay}")
        if eps1 is not None and not 0.0 <= eps1:
            raise ValueError(f"epsilon1 should be >= 0 but is: {eps1}")
        if not 0.0 <= eps2:
            raise ValueError(f"epsilon2 should be >= 0 but is: {eps2}")
        if not 1.0 <= d:
            raise ValueError(f"Clipping threshold d should be >= 1 but is: {d}")
        if not 0.0 <= weight_decay:
            raise ValueError(f"weight_decay should be >= 0 but is: {weight_decay}")

    @classmethod
    def torch_slot_shape(cls, slot: Slot, shape: tuple[int, ...]) -> tuple[int, ...] | None:
        """torch keeps ``variance`` only for a parameter of fewer than two axes."""
        if slot.name == "variance" and len(shape) >= 2:
            return None
        return super().torch_slot_shape(slot, shape)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        step = float(h.state["step"])
        eps1, eps2 = h.eps
        eps1 = float(np.finfo(dtype).eps) if eps1 is None else eps1
        lr, weight_decay = h.lr, h.weight_decay
        return (
            dtype(-1 if h.maximize else 1), np.float64(min(lr, 1 / (step**0.5))), np.float64(eps2), bool(weight_decay != 0),
            dtype(1 - lr * weight_decay), *lerp_weight(step**h.beta2_decay, dtype), dtype(eps1), dtype(eps1 * eps1),
            np.float64(h.d), dtype(1),
        )
