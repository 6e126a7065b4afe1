"""Two optimizers whose state is not shaped like their parameters, each declared as a new
module would declare it (``tests/test_extending.py`` runs them everywhere):

* ``Factored``, Adafactor-shaped: second moments factored into one value per row and one
  per column (a plain one for parameters of fewer than two axes), the update clipped by
  its own RMS and scaled by the parameter's RMS;
* ``TrustRatio``, LAMB-shaped: Adam's moments per element, then a per-tensor trust ratio
  ``|p| / |update|`` that scales the step.

``declare()`` defines and registers them (the tests patch the registry around it); the
NumPy references below restate the same arithmetic in float64 without the kernels.
"""
import math

import numpy as np

from numbaopt.clipping import clip_gradient
from numbaopt.optimizers.base import Hyperparameter, Optimizer
from numbaopt.phases import ElementPass, TensorPass
from numbaopt.state import Slot

# ------------------------------------------------------------------ Factored


def factored_step(p, g, r, c, v, n, last, second, clip, lr, rho, epsilon_1, epsilon_2, threshold):
    """One tensor: update the factored (or plain) second moment, then the parameter."""
    if n == 0:
        return
    if last == 0:  # fewer than two axes: a plain second moment
        for i in range(n):
            x = clip_gradient(g[i], *clip)
            v[i] = rho * v[i] + (1 - rho) * (x * x + epsilon_1)
    else:
        rows, batches = n // last, n // (last * second)
        for row in range(rows):
            total = 0.0
            for k in range(last):
                x = clip_gradient(g[row * last + k], *clip)
                total += x * x + epsilon_1
            r[row] = rho * r[row] + (1 - rho) * (total / last)
        for b in range(batches):
            for k in range(last):
                total = 0.0
                for row in range(second):
                    x = clip_gradient(g[(b * second + row) * last + k], *clip)
                    total += x * x + epsilon_1
                c[b * last + k] = rho * c[b * last + k] + (1 - rho) * (total / second)
    # The update's RMS, then the parameter's, both before the parameter changes.
    squares, weights = 0.0, 0.0
    for i in range(n):
        u = _scaled(g, r, c, v, i, last, second, clip)
        squares += u * u
        weights += p[i] * p[i]
    shrink = max(1.0, math.sqrt(squares / n) / threshold)
    step = lr * max(epsilon_2, math.sqrt(weights / n)) / shrink
    for i in range(n):
        p[i] = p[i] - step * _scaled(g, r, c, v, i, last, second, clip)


def _scaled(g, r, c, v, i, last, second, clip):
    """The unclipped update of element ``i``: the gradient over the root of its second moment."""
    x = clip_gradient(g[i], *clip)
    if last == 0:
        return x / math.sqrt(v[i])
    row = i // last
    b = row // second
    mean = 0.0
    for q in range(second):
        mean += r[b * second + q]
    mean /= second
    return x / math.sqrt(r[row] / mean * c[b * last + i % last])


# ------------------------------------------------------------------ TrustRatio


def trust_moments(p, g, m, v, t, lr, beta_1, beta_2, epsilon, weight_decay, correction_1, correction_2):
    """Phase 1, per element: Adam's moments."""
    m = beta_1 * m + (1 - beta_1) * g
    v = beta_2 * v + (1 - beta_2) * (g * g)
    return p, m, v


def trust_ratio(p, g, m, v, trust, n, last, second, clip, lr, beta_1, beta_2, epsilon, weight_decay, correction_1,
                correction_2):
    """Phase 2, per tensor: ``|p| / |update|`` (1 where either norm is zero)."""
    weights, updates = 0.0, 0.0
    for i in range(n):
        u = m[i] / correction_1 / (math.sqrt(v[i] / correction_2) + epsilon) + weight_decay * p[i]
        weights += p[i] * p[i]
        updates += u * u
    trust[0] = math.sqrt(weights) / math.sqrt(updates) if weights > 0 and updates > 0 else 1.0


def trust_apply(p, g, m, v, t, lr, beta_1, beta_2, epsilon, weight_decay, correction_1, correction_2):
    """Phase 3, per element: the step, scaled by the tensor's trust ratio."""
    u = m / correction_1 / (math.sqrt(v / correction_2) + epsilon) + weight_decay * p
    return p - lr * t[0] * u, m, v


def declare():
    """Define (and so register) both optimizers; returns ``(Factored, TrustRatio)``."""

    class Factored(Optimizer):
        hyperparameters = (
            Hyperparameter("lr", 0.01),
            Hyperparameter("decay_rate", 0.8),
            Hyperparameter("epsilon_1", 1e-30),
            Hyperparameter("epsilon_2", 1e-3),
            Hyperparameter("clip_threshold", 1.0),
        )
        slots = (Slot("r", "rows"), Slot("c", "columns"), Slot("v"))
        phases = (TensorPass(factored_step),)

        @staticmethod
        def step_scalars(h, dtype):
            rho = 1.0 - (h.iterations + 1.0) ** -h.decay_rate
            return (dtype(h.lr), dtype(rho), dtype(h.epsilon_1), dtype(h.epsilon_2), dtype(h.clip_threshold))

    class TrustRatio(Optimizer):
        hyperparameters = (
            Hyperparameter("lr", 0.01),
            Hyperparameter("beta_1", 0.9, "fraction"),
            Hyperparameter("beta_2", 0.999, "fraction"),
            Hyperparameter("epsilon", 1e-6),
            Hyperparameter("weight_decay", 0.01),
        )
        slots = (Slot("m"), Slot("v"), Slot("trust", "tensor"))
        phases = (ElementPass(trust_moments), TensorPass(trust_ratio), ElementPass(trust_apply))

        @staticmethod
        def step_scalars(h, dtype):
            t = h.iterations + 1
            return tuple(dtype(x) for x in (h.lr, h.beta_1, h.beta_2, h.epsilon, h.weight_decay,
                                            1 - h.beta_1**t, 1 - h.beta_2**t))

    return Factored, TrustRatio


# ------------------------------------------------------------------ references


def _clipped(grads, clipnorm):
    norm = math.sqrt(sum(float(np.sum(np.asarray(g, np.float64) ** 2)) for g in grads))
    return [g * clipnorm / norm if clipnorm and norm >= clipnorm else g for g in grads]


def factored_reference(params, steps, clipnorm=None, lr=0.01, decay_rate=0.8, epsilon_1=1e-30, epsilon_2=1e-3,
                       threshold=1.0):
    params = [np.array(p, np.float64) for p in params]
    r = [np.zeros(p.shape[:-1]) if p.ndim >= 2 else np.zeros(()) for p in params]
    c = [np.zeros(p.shape[:-2] + p.shape[-1:]) if p.ndim >= 2 else np.zeros(()) for p in params]
    v = [np.zeros_like(p) for p in params]
    for t, grads in enumerate(steps, start=1):
        rho = 1.0 - t**-decay_rate
        for i, g in enumerate(_clipped([np.asarray(g, np.float64) for g in grads], clipnorm)):
            p = params[i]
            if not p.size:
                continue  # nothing to update, no moments to keep
            if p.ndim < 2:
                v[i] = rho * v[i] + (1 - rho) * (g * g + epsilon_1)
                u = g / np.sqrt(v[i])
            else:
                r[i] = rho * r[i] + (1 - rho) * np.mean(g * g + epsilon_1, axis=-1)
                c[i] = rho * c[i] + (1 - rho) * np.mean(g * g + epsilon_1, axis=-2)
                factor = (r[i] / np.mean(r[i], axis=-1, keepdims=True))[..., None] * c[i][..., None, :]
                u = g / np.sqrt(factor)
            u = u / max(1.0, np.sqrt(np.mean(u * u)) / threshold)
            params[i] = p - lr * max(epsilon_2, np.sqrt(np.mean(p * p))) * u
    return params, {"r": r, "c": c, "v": v}


def trust_reference(params, steps, clipnorm=None, lr=0.01, beta_1=0.9, beta_2=0.999, epsilon=1e-6, weight_decay=0.01):
    params = [np.array(p, np.float64) for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    trust = [np.zeros(()) for _ in params]
    for t, grads in enumerate(steps, start=1):
        for i, g in enumerate(_clipped([np.asarray(g, np.float64) for g in grads], clipnorm)):
            m[i] = beta_1 * m[i] + (1 - beta_1) * g
            v[i] = beta_2 * v[i] + (1 - beta_2) * g * g
            u = m[i] / (1 - beta_1**t) / (np.sqrt(v[i] / (1 - beta_2**t)) + epsilon) + weight_decay * params[i]
            w_norm, u_norm = np.sqrt(np.sum(params[i] ** 2)), np.sqrt(np.sum(u**2))
            trust[i] = np.array(w_norm / u_norm if w_norm > 0 and u_norm > 0 else 1.0)
            params[i] = params[i] - lr * trust[i] * u
    return params, {"m": m, "v": v, "trust": trust}
