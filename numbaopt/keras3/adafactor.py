"""Adafactor (Keras 3): factored second moments (Shazeer & Stern, 2018).

Per step, with ``t = iterations + 1``, ``lr`` and ``epsilon_2`` as the parameter's dtype
casts them (float32-rounded in a float64 model on TensorFlow), after weight decay
``p <- p - p * weight_decay * lr``::

    rho_t    = min(lr, 1 / sqrt(t))
    alpha_t  = max(epsilon_2, rms(p)) * rho_t              rms(x) = sqrt(mean(x^2))
    s        = g^2 + epsilon_1
    beta_2_t = 1 - t^beta_2_decay
    two or more axes (the last two factored):
        r <- beta_2_t * r + (1 - beta_2_t) * mean(s, axis=-1)        shape[:-1]
        c <- beta_2_t * c + (1 - beta_2_t) * mean(s, axis=-2)        shape[:-2] + shape[-1:]
        v <- (r / mean(r, axis=-1))[..., None] * c[..., None, :]     the full shape
    fewer:
        v <- beta_2_t * v + (1 - beta_2_t) * s
    u = g / sqrt(v);   p <- p - alpha_t * u / max(1, rms(u) / clip_threshold)

As Keras 3.15 keeps it, ``v`` is a full-size variable for every parameter (the factored
moments do not save memory there), and a parameter of fewer than two axes has ``r`` and
``c`` as int32 scalars 0 that never change: ``keras_variables`` lists them so. Keras names
``r`` and ``c`` after the parameter's last path component only (``adafactor/kernel``,
twice per parameter), ``v`` as usual (``adafactor/dense_kernel_velocity``).

``relative_step`` changes nothing in Keras 3.15: with it, ``lr = min(lr, 1 / sqrt(t))``,
which ``rho_t`` computes anyway (it is kept for the config). Keras 2.0 has no Adafactor.

tf-keras's new-style Adafactor (``tf_keras=True``) is the same update with ``u = g *
rsqrt(v)`` (two roundings, where Keras 3 divides once), and it saves no ``r`` and ``c``
for a parameter of fewer than two axes (its placeholders are untracked variables).
optax's differs (decay on ``r`` only, relative step sizes, no full ``v``).
"""
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.clipping import clip_gradient
from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3.base import Argument, Keras3Optimizer, float32_setting
from numbaopt.phases import TensorPass
from numbaopt.state import Slot


def _rounded(x: float, cell: Any) -> Any:
    """``x`` (a float64 sum or mean) in the dtype of the 1-element view ``cell``: a value
    TensorFlow computes in the parameter's dtype is rounded to it, as its ops round it."""
    cell[0] = x
    return cell[0]


def _scaled(g: float, v: float, one: float, reciprocal_root: bool) -> float:
    """``u = g / sqrt(v)`` as Keras 3 computes it, or ``g * rsqrt(v)`` as tf-keras does."""
    if reciprocal_root:
        return g * (one / math.sqrt(v))
    return g / math.sqrt(v)


def adafactor_step(p: Any, g: Any, r: Any, c: Any, v: Any, scratch: Any, n: int, last: int, second: int, clip: Any,
                   weight_decay: float, lr: float, rho_t: float, epsilon_1: float, epsilon_2: float,
                   beta_2_t: float, one_minus_beta_2_t: float, one: float, clip_threshold: float,
                   reciprocal_root: bool) -> None:
    """One tensor of Adafactor: its moments, then the parameter. Compiled for the CPU and for CUDA.

    Sums run in float64 (closer to TensorFlow's tree-summed float32 means than a float32
    loop); every mean is rounded to the parameter's dtype (``_rounded``) and every
    element-wise operation stays in that dtype, as Keras's ops compute them.
    """
    if n == 0:
        return
    if weight_decay != 0:
        for i in range(n):
            p[i] = p[i] - p[i] * weight_decay * lr
    squares = 0.0
    for i in range(n):
        squares += p[i] * p[i]
    rms_p = _rounded(math.sqrt(_rounded(squares / n, scratch)), scratch)
    alpha_t = max(epsilon_2, rms_p) * rho_t
    if last == 0:  # fewer than two axes: a plain second moment
        for i in range(n):
            x = clip_gradient(g[i], *clip)
            v[i] = beta_2_t * v[i] + one_minus_beta_2_t * (x * x + epsilon_1)
    else:
        rows, batches = n // last, n // (last * second)
        for row in range(rows):
            total = 0.0
            for k in range(last):
                x = clip_gradient(g[row * last + k], *clip)
                total += x * x + epsilon_1
            r[row] = beta_2_t * r[row] + one_minus_beta_2_t * _rounded(total / last, scratch)
        for b in range(batches):
            for k in range(last):
                total = 0.0
                for q in range(second):
                    x = clip_gradient(g[(b * second + q) * last + k], *clip)
                    total += x * x + epsilon_1
                c[b * last + k] = beta_2_t * c[b * last + k] + one_minus_beta_2_t * _rounded(total / second, scratch)
        for b in range(batches):
            total = 0.0
            for q in range(second):
                total += r[b * second + q]
            mean = _rounded(total / second, scratch)
            for q in range(second):
                factor = r[b * second + q] / mean
                for k in range(last):
                    v[(b * second + q) * last + k] = factor * c[b * last + k]
    # rms(u), then the step: u is computed twice rather than stored (Keras keeps no u).
    squares = 0.0
    for i in range(n):
        u = _scaled(clip_gradient(g[i], *clip), v[i], one, reciprocal_root)
        squares += u * u
    rms_u = _rounded(math.sqrt(_rounded(squares / n, scratch)), scratch)
    shrink = max(one, rms_u / clip_threshold)
    for i in range(n):
        u = _scaled(clip_gradient(g[i], *clip), v[i], one, reciprocal_root)
        p[i] = p[i] - alpha_t * (u / shrink)
    scratch[0] = 0


class Adafactor(Keras3Optimizer):
    """Adafactor (Keras 3's ``keras.optimizers.Adafactor``)."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("beta_2_decay", -0.8, "real"),
        Argument("epsilon_1", 1e-30),
        Argument("epsilon_2", 1e-3),
        Argument("clip_threshold", 1.0),
        Argument("relative_step", True, "flag"),
    )
    #: ``scratch``, one value per tensor, is numbaopt's (it rounds sums to the dtype): Keras has none.
    slots = (Slot("r", "rows"), Slot("c", "columns"), Slot("velocity"), Slot("scratch", "tensor"))
    phases = (TensorPass(adafactor_step),)
    keras_build = (("r", "c", "velocity"),)

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        one, t, lr = dtype(1), dtype(h.iterations + 1), dtype(h.lr)
        rho_t = min(lr, one / np.sqrt(t))
        beta_2_t = one - t ** dtype(h.beta_2_decay)
        return (
            float32_setting(h.weight_decay, dtype), lr, rho_t, dtype(h.epsilon_1), float32_setting(h.epsilon_2, dtype),
            beta_2_t, one - beta_2_t, one, dtype(h.clip_threshold), bool(h.get("tf_keras")),
        )

    def keras_slot_variables(self, kind: str, path: str, value: npt.NDArray[Any]) -> list[tuple[str, npt.NDArray[Any]]]:
        """``r`` and ``c`` are ``add_variable(name=variable.name)`` in Keras: named after the
        parameter's last path component; below two axes, int32 scalars 0 (tf-keras: none)."""
        if kind == "velocity":
            return super().keras_slot_variables(kind, path, value)
        if value.ndim == 0:
            if self._hyper.get("tf_keras"):
                return []
            value = np.array(0, np.int32)
        return [(f"{self.name}/{path.split('/')[-1]}", value)]
