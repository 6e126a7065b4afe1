"""An independent, slow, obvious float64 NumPy transcription of the Keras 2.0 spec.

Written from the Keras 2.0 arithmetic (``docs/optimizers/``), not from numbaopt's code: the tests compare the
kernels against it. ``reference_run`` applies a list of steps and returns the parameters
and slots after each.
"""
import numpy as np


def clip(grads, clipnorm, clipvalue):
    if clipnorm:
        norm = np.sqrt(sum(np.sum(g**2) for g in grads))
        if norm >= clipnorm:
            grads = [g * clipnorm / norm for g in grads]
    if clipvalue:
        grads = [np.clip(g, -clipvalue, clipvalue) for g in grads]
    return grads


def step(name, cfg, params, slots, grads, iterations, scalars):
    """One Keras 2.0 step in float64; returns new params, slots (dict of lists) and scalars."""
    grads = clip([np.asarray(g, np.float64) for g in grads], cfg.get("clipnorm"), cfg.get("clipvalue"))
    lr = cfg["lr"]
    if name != "Nadam":
        lr = lr / (1.0 + cfg.get("decay", 0.0) * iterations)
    t = iterations + 1
    new_params, new_slots = [], {k: [] for k in slots}
    if name == "Nadam":
        b1, sd = cfg["beta_1"], cfg["schedule_decay"]
        mc_t = b1 * (1 - 0.5 * 0.96 ** (t * sd))
        mc_t1 = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * sd))
        ms_new = scalars["m_schedule"] * mc_t
        ms_next = scalars["m_schedule"] * mc_t * mc_t1
        scalars = {"m_schedule": ms_new}
    for i, (p, g) in enumerate(zip(params, grads)):
        if name == "SGD":
            m = slots["moments"][i]
            v = cfg["momentum"] * m - lr * g
            p = p + cfg["momentum"] * v - lr * g if cfg["nesterov"] else p + v
            new = {"moments": v}
        elif name in ("RMSprop", "Adagrad"):
            a = slots["accumulators"][i]
            a = cfg["rho"] * a + (1 - cfg["rho"]) * g**2 if name == "RMSprop" else a + g**2
            p = p - lr * g / (np.sqrt(a) + cfg["epsilon"])
            new = {"accumulators": a}
        elif name == "Adadelta":
            a, d = slots["accumulators"][i], slots["delta_accumulators"][i]
            a = cfg["rho"] * a + (1 - cfg["rho"]) * g**2
            u = g * np.sqrt(d + cfg["epsilon"]) / np.sqrt(a + cfg["epsilon"])
            p = p - lr * u
            d = cfg["rho"] * d + (1 - cfg["rho"]) * u**2
            new = {"accumulators": a, "delta_accumulators": d}
        elif name == "Adam":
            b1, b2 = cfg["beta_1"], cfg["beta_2"]
            lr_t = lr * np.sqrt(1 - b2**t) / (1 - b1**t)
            m = b1 * slots["ms"][i] + (1 - b1) * g
            v = b2 * slots["vs"][i] + (1 - b2) * g**2
            p = p - lr_t * m / (np.sqrt(v) + cfg["epsilon"])
            new = {"ms": m, "vs": v}
        elif name == "Adamax":
            b1, b2 = cfg["beta_1"], cfg["beta_2"]
            lr_t = lr / (1 - b1**t)
            m = b1 * slots["ms"][i] + (1 - b1) * g
            u = np.maximum(b2 * slots["us"][i], np.abs(g))
            p = p - lr_t * m / (u + cfg["epsilon"])
            new = {"ms": m, "us": u}
        elif name == "Nadam":
            b1, b2 = cfg["beta_1"], cfg["beta_2"]
            g_prime = g / (1 - ms_new)
            m = b1 * slots["ms"][i] + (1 - b1) * g
            v = b2 * slots["vs"][i] + (1 - b2) * g**2
            m_bar = (1 - mc_t) * g_prime + mc_t1 * (m / (1 - ms_next))
            p = p - cfg["lr"] * m_bar / (np.sqrt(v / (1 - b2**t)) + cfg["epsilon"])
            new = {"ms": m, "vs": v}
        new_params.append(p)
        for k in slots:
            new_slots[k].append(new[k])
    return new_params, new_slots, scalars


SLOTS = {
    "SGD": ("moments",),
    "RMSprop": ("accumulators",),
    "Adagrad": ("accumulators",),
    "Adadelta": ("accumulators", "delta_accumulators"),
    "Adam": ("ms", "vs"),
    "Adamax": ("ms", "us"),
    "Nadam": ("ms", "vs"),
}


def reference_run(name, cfg, params, grad_steps):
    """Params and slots (float64) after each of ``grad_steps``; ``cfg`` is a full config."""
    params = [np.asarray(p, np.float64) for p in params]
    slots = {k: [np.zeros_like(p) for p in params] for k in SLOTS[name]}
    scalars = {"m_schedule": 1.0}
    history = []
    for it, grads in enumerate(grad_steps):
        params, slots, scalars = step(name, cfg, params, slots, grads, it, scalars)
        history.append((params, slots))
    return history
