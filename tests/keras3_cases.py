"""What the Keras 3 family's tests run over, and facts about Keras 3.15 they check against.

The optimizers are numbaopt's registry (``registry.rule_based("keras3")``): one registered
later is in every parametrized test at once. Tables that hold per-optimizer data (Keras's
signatures and config keys, the NumPy references, settings away from the defaults) are
keyed by class name, and ``test_keras3.py`` checks that each covers every registered class,
so a new optimizer fails loudly until its entries are written.

The NumPy references transcribe ``keras/src/optimizers/<name>.py`` (Keras 3.15) op by op,
with TensorFlow's casts: ``ops.cast(python_float, dtype)`` rounds through float32 first
(``cast32``), a Python float meeting a tensor in an op is converted to the tensor's dtype
exactly (``dtype(x)``), and the learning rate is a float32 variable cast to the
parameter's dtype.
"""
import numpy as np

from numbaopt import keras3, registry  # noqa: F401  (keras3 registers the family)

CLASSES = {cls.__name__: cls for cls in registry.rule_based("keras3")}
NAMES = tuple(CLASSES)
#: The optimizers whose state or update is per tensor: their NumPy references, which take
#: whole runs and parameter names, are in tests/test_keras3_tensor_optimizers.py.
TENSOR_WISE = ("Lamb", "Adafactor", "Muon")
#: The element-wise optimizers: ``REFERENCES`` transcribes each, op by op.
ELEMENT_NAMES = tuple(name for name in NAMES if name not in TENSOR_WISE)
DTYPES = (np.float32, np.float64)

#: Keras 3.15's constructor parameters, in order, with their defaults (``inspect.signature``
#: of the real classes, written down; ``test_keras3_keras.py`` checks it against Keras).
_BASE = (("clipnorm", None), ("clipvalue", None), ("global_clipnorm", None), ("use_ema", False), ("ema_momentum", 0.99),
         ("ema_overwrite_frequency", None), ("loss_scale_factor", None), ("gradient_accumulation_steps", None),
         ("name", None))
KERAS_SIGNATURES = {
    "Adadelta": (("learning_rate", 0.001), ("rho", 0.95), ("epsilon", 1e-07), ("weight_decay", None)) + _BASE,
    "Adagrad": (("learning_rate", 0.001), ("initial_accumulator_value", 0.1), ("epsilon", 1e-07), ("weight_decay", None)) + _BASE,
    "Adam": (("learning_rate", 0.001), ("beta_1", 0.9), ("beta_2", 0.999), ("epsilon", 1e-07), ("amsgrad", False),
             ("weight_decay", None)) + _BASE,
    "Adamax": (("learning_rate", 0.001), ("beta_1", 0.9), ("beta_2", 0.999), ("epsilon", 1e-07), ("weight_decay", None)) + _BASE,
    "AdamW": (("learning_rate", 0.001), ("weight_decay", 0.004), ("beta_1", 0.9), ("beta_2", 0.999), ("epsilon", 1e-07),
              ("amsgrad", False)) + _BASE,
    "Ftrl": (("learning_rate", 0.001), ("learning_rate_power", -0.5), ("initial_accumulator_value", 0.1),
             ("l1_regularization_strength", 0.0), ("l2_regularization_strength", 0.0),
             ("l2_shrinkage_regularization_strength", 0.0), ("beta", 0.0), ("weight_decay", None)) + _BASE,
    "Lion": (("learning_rate", 0.001), ("beta_1", 0.9), ("beta_2", 0.99), ("weight_decay", None)) + _BASE,
    "Nadam": (("learning_rate", 0.001), ("beta_1", 0.9), ("beta_2", 0.999), ("epsilon", 1e-07), ("weight_decay", None)) + _BASE,
    "RMSprop": (("learning_rate", 0.001), ("rho", 0.9), ("momentum", 0.0), ("epsilon", 1e-07), ("centered", False),
                ("weight_decay", None)) + _BASE,
    "ScheduleFreeAdamW": (("learning_rate", 0.0025), ("beta_1", 0.9), ("beta_2", 0.999), ("epsilon", 1e-08),
                          ("warmup_steps", 0), ("weight_decay", None)) + _BASE,
    "SGD": (("learning_rate", 0.01), ("momentum", 0.0), ("nesterov", False), ("weight_decay", None)) + _BASE,
    "Lamb": (("learning_rate", 0.001), ("beta_1", 0.9), ("beta_2", 0.999), ("epsilon", 1e-07), ("weight_decay", None)) + _BASE,
    "Adafactor": (("learning_rate", 0.001), ("beta_2_decay", -0.8), ("epsilon_1", 1e-30), ("epsilon_2", 0.001),
                  ("clip_threshold", 1.0), ("relative_step", True), ("weight_decay", None)) + _BASE,
    "Muon": (("learning_rate", 0.001), ("adam_beta_1", 0.9), ("adam_beta_2", 0.999), ("adam_weight_decay", 0.004),
             ("epsilon", 1e-07), ("weight_decay", 0.004)) + _BASE + (
        ("exclude_layers", None), ("exclude_embeddings", True), ("muon_a", 3.4445), ("muon_b", -4.775), ("muon_c", 2.0315),
        ("adam_lr_ratio", 1), ("momentum", 0.95), ("ns_steps", 5), ("nesterov", True), ("rms_rate", 0.2)),
}

#: Keras 3.15's ``get_config()`` keys, in its order.
_CONFIG_BASE = ("name", "learning_rate", "weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "use_ema",
                "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps")
KERAS_CONFIG_KEYS = {
    "Adadelta": _CONFIG_BASE + ("rho", "epsilon"),
    "Adagrad": _CONFIG_BASE + ("initial_accumulator_value", "epsilon"),
    "Adam": _CONFIG_BASE + ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "Adamax": _CONFIG_BASE + ("beta_1", "beta_2", "epsilon"),
    "AdamW": _CONFIG_BASE + ("beta_1", "beta_2", "epsilon", "amsgrad"),
    "Ftrl": _CONFIG_BASE + ("learning_rate_power", "initial_accumulator_value", "l1_regularization_strength",
                            "l2_regularization_strength", "l2_shrinkage_regularization_strength", "beta"),
    "Lion": _CONFIG_BASE + ("beta_1", "beta_2"),
    "Nadam": _CONFIG_BASE + ("beta_1", "beta_2", "epsilon"),
    "RMSprop": _CONFIG_BASE + ("rho", "momentum", "epsilon", "centered"),
    "ScheduleFreeAdamW": _CONFIG_BASE + ("beta_1", "beta_2", "epsilon", "warmup_steps"),
    "SGD": _CONFIG_BASE + ("momentum", "nesterov"),
    "Lamb": _CONFIG_BASE + ("beta_1", "beta_2", "epsilon"),
    "Adafactor": _CONFIG_BASE + ("beta_2_decay", "epsilon_1", "epsilon_2", "clip_threshold", "relative_step"),
    "Muon": _CONFIG_BASE + ("adam_beta_1", "adam_beta_2", "epsilon", "exclude_layers", "muon_a", "muon_b", "muon_c",
                            "adam_lr_ratio", "momentum", "ns_steps", "nesterov", "exclude_embeddings",
                            "adam_weight_decay", "rms_rate"),
}

#: Config values Keras 3 reports otherwise than the constructor's default (Muon keeps
#: ``exclude_layers or []``).
CONFIG_DEFAULTS = {"Muon": {"exclude_layers": []}}

#: Settings away from the defaults, per optimizer: each one turns on what the defaults
#: leave off (momentum, nesterov, centering, amsgrad, warm-up, the regularizers, weight decay).
CUSTOM = {
    "Adadelta": [{"learning_rate": 0.5, "rho": 0.8, "epsilon": 1e-5, "weight_decay": 0.01}],
    "Adagrad": [{"learning_rate": 0.05, "initial_accumulator_value": 0.3, "epsilon": 1e-5, "weight_decay": 0.01}],
    "Adam": [{"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4, "amsgrad": True, "weight_decay": 0.02}],
    "Adamax": [{"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4, "weight_decay": 0.02}],
    "AdamW": [{"learning_rate": 0.01, "weight_decay": 0.1, "beta_1": 0.8, "amsgrad": True}],
    "Ftrl": [{"learning_rate": 0.05, "learning_rate_power": -0.6, "initial_accumulator_value": 0.2,
              "l1_regularization_strength": 0.01, "l2_regularization_strength": 0.02,
              "l2_shrinkage_regularization_strength": 0.03, "beta": 0.5, "weight_decay": 0.01}],
    "Lion": [{"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.95, "weight_decay": 0.02}],
    "Nadam": [{"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "epsilon": 1e-4, "weight_decay": 0.02}],
    "RMSprop": [{"learning_rate": 0.01, "rho": 0.8, "momentum": 0.5, "weight_decay": 0.02},
                {"learning_rate": 0.01, "centered": True},
                {"learning_rate": 0.01, "momentum": 0.5, "centered": True, "epsilon": 1e-4}],
    "ScheduleFreeAdamW": [{"learning_rate": 0.01, "beta_1": 0.8, "beta_2": 0.99, "warmup_steps": 3, "weight_decay": 0.02}],
    "SGD": [{"learning_rate": 0.05, "momentum": 0.9, "weight_decay": 0.02},
            {"learning_rate": 0.05, "momentum": 0.9, "nesterov": True}],
}


#: The rules whose NumPy transcription is not bitwise numbaopt's, and why; their tolerance
#: is relative to the tensor's largest value. Every other rule must agree bit for bit
#: (and the CUDA tests allow these ten times their tolerance).
NOT_BITWISE = {
    "Ftrl": "x**p for p other than 0.5: the compiled pow and NumPy's differ in the last bit, and (clip(z) - z) "
            "cancels, so a few ulps of z show",
}


def configurations(names=NAMES):
    """(id, name, kwargs): the defaults and every ``CUSTOM`` setting of each optimizer."""
    out = []
    for name in names:
        out.append((f"{name.lower()}-defaults", name, {}))
        for k, kwargs in enumerate(CUSTOM.get(name, [])):
            out.append((f"{name.lower()}-custom{k}", name, dict(kwargs)))
    return out


# ------------------------------------------------------------------ the NumPy references


def cast32(x, kind):
    """``ops.cast(python_float, dtype)`` on TensorFlow: through float32."""
    return kind(np.float32(x))


def _sgd(h, kind, p, g, s, t, lr, shared):
    if h["momentum"] != 0:
        momentum = cast32(h["momentum"], kind)
        s["momentum"] = s["momentum"] * momentum - g * lr
        if h["nesterov"]:
            return p + (s["momentum"] * momentum - g * lr)
        return p + s["momentum"]
    return p - g * lr


def _rmsprop(h, kind, p, g, s, t, lr, shared):
    rho = h["rho"]
    s["velocity"] = kind(rho) * s["velocity"] + kind(1 - rho) * np.square(g)
    if h["centered"]:
        s["average_gradient"] = kind(rho) * s["average_gradient"] + kind(1 - rho) * g
        denominator = s["velocity"] - np.square(s["average_gradient"]) + kind(h["epsilon"])
    else:
        denominator = s["velocity"] + kind(h["epsilon"])
    increment = (lr * g) / np.sqrt(denominator)
    if h["momentum"] > 0:
        s["momentum"] = kind(h["momentum"]) * s["momentum"] + increment
        return p - s["momentum"]
    return p - increment


def _adagrad(h, kind, p, g, s, t, lr, shared):
    s["accumulator"] = s["accumulator"] + np.square(g)
    return p - (lr * g) / np.sqrt(s["accumulator"] + kind(h["epsilon"]))


def _adadelta(h, kind, p, g, s, t, lr, shared):
    rho, eps = h["rho"], kind(h["epsilon"])
    s["accumulated_grad"] = kind(rho) * s["accumulated_grad"] + kind(1 - rho) * np.square(g)
    delta = -((np.sqrt(s["accumulated_delta_var"] + eps) * g) / np.sqrt(s["accumulated_grad"] + eps))
    s["accumulated_delta_var"] = kind(rho) * s["accumulated_delta_var"] + kind(1 - rho) * np.square(delta)
    return p + lr * delta


def _adam(h, kind, p, g, s, t, lr, shared):
    beta_1_power = cast32(h["beta_1"], kind) ** t
    beta_2_power = cast32(h["beta_2"], kind) ** t
    alpha = lr * np.sqrt(kind(1) - beta_2_power) / (kind(1) - beta_1_power)
    s["momentum"] = s["momentum"] + (g - s["momentum"]) * kind(1 - h["beta_1"])
    s["velocity"] = s["velocity"] + (np.square(g) - s["velocity"]) * kind(1 - h["beta_2"])
    v = s["velocity"]
    if h["amsgrad"]:
        s["velocity_hat"] = np.maximum(s["velocity_hat"], v)
        v = s["velocity_hat"]
    return p - (s["momentum"] * alpha) / (np.sqrt(v) + kind(h["epsilon"]))


def _adamax(h, kind, p, g, s, t, lr, shared):
    beta_1_power = cast32(h["beta_1"], kind) ** t
    s["momentum"] = s["momentum"] + (g - s["momentum"]) * kind(1 - h["beta_1"])
    s["norm"] = np.maximum(kind(h["beta_2"]) * s["norm"], np.abs(g))
    return p - (lr * s["momentum"]) / ((kind(1) - beta_1_power) * (s["norm"] + kind(h["epsilon"])))


def _nadam_product(h, kind, shared, t):
    """``_backend_update_step``: the product advanced before the update, in the first
    variable's dtype, ``0.96`` and ``beta_1`` exact (Python floats meeting a tensor)."""
    shared["u_product"] = shared["u_product"] * kind(h["beta_1"]) * (kind(1.0) - kind(0.5) * kind(0.96) ** t)


def _nadam(h, kind, p, g, s, t, lr, shared):
    decay, beta_1, beta_2 = cast32(0.96, kind), cast32(h["beta_1"], kind), cast32(h["beta_2"], kind)
    u_t = beta_1 * (kind(1.0) - kind(0.5) * decay ** t)
    u_t_1 = beta_1 * (kind(1.0) - kind(0.5) * decay ** (t + kind(1)))
    u_product_t = kind(shared["u_product"])
    u_product_t_1 = u_product_t * u_t_1
    beta_2_power = beta_2 ** t
    s["momentum"] = s["momentum"] + (g - s["momentum"]) * (kind(1) - beta_1)
    s["velocity"] = s["velocity"] + (np.square(g) - s["velocity"]) * (kind(1) - beta_2)
    m_hat = (u_t_1 * s["momentum"]) / (kind(1) - u_product_t_1) + ((kind(1) - u_t) * g) / (kind(1) - u_product_t)
    v_hat = s["velocity"] / (kind(1) - beta_2_power)
    return p - (m_hat * lr) / (np.sqrt(v_hat) + kind(h["epsilon"]))


def _ftrl(h, kind, p, g, s, t, lr, shared):
    power = kind(-h["learning_rate_power"])
    l2_reg = kind(h["l2_regularization_strength"]) + kind(h["beta"]) / (kind(2.0) * lr)
    grad_to_use = g + kind(2 * h["l2_shrinkage_regularization_strength"]) * p
    accum = s["accumulator"]
    new_accum = accum + np.square(g)
    s["linear"] = s["linear"] + (grad_to_use - ((np.power(new_accum, power) - np.power(accum, power)) / lr) * p)
    quadratic = np.power(new_accum, power) / lr + kind(2) * l2_reg
    l1 = kind(h["l1_regularization_strength"])
    clipped = np.clip(s["linear"], -l1, l1)
    s["accumulator"] = new_accum
    return (clipped - s["linear"]) / quadratic


def _lion(h, kind, p, g, s, t, lr, shared):
    beta_1, beta_2 = cast32(h["beta_1"], kind), cast32(h["beta_2"], kind)
    p = p - lr * np.sign(s["momentum"] * beta_1 + g * (kind(1.0) - beta_1))
    s["momentum"] = s["momentum"] * beta_2 + g * (kind(1.0) - beta_2)
    return p


def _schedule_free(h, kind, p, g, s, t, lr, shared):
    beta_1, beta_2, eps = cast32(h["beta_1"], kind), cast32(h["beta_2"], kind), cast32(h["epsilon"], kind)
    if h["warmup_steps"] > 0:
        lr = lr * np.minimum(t / kind(h["warmup_steps"]), kind(1.0))
    bias_correction_2 = kind(1) - beta_2 ** t
    s["velocity"] = s["velocity"] + (np.square(g) - s["velocity"]) * (kind(1) - beta_2)
    denom = np.sqrt(s["velocity"] / bias_correction_2) + eps
    s["momentum"] = s["momentum"] - (lr * g) / denom
    weight = kind(1.0) / t
    # Keras means momentum_old here; on TensorFlow ``momentum.value`` reads the variable
    # after its update (numbaopt follows TensorFlow, see schedule_free_adamw.py).
    x_old = (p - (kind(1) - beta_1) * s["momentum"]) / beta_1
    x_new = (kind(1) - weight) * x_old + weight * s["momentum"]
    return (kind(1) - beta_1) * s["momentum"] + beta_1 * x_new


def _zeros(p, h):
    return np.zeros_like(p)


#: name -> (slots as Keras's ``build`` adds them, at settings h; their initial values; the step).
REFERENCES = {
    "SGD": (lambda h: ("momentum",) if h["momentum"] != 0 else (), {}, _sgd),
    "RMSprop": (lambda h: ("velocity",) + (("momentum",) if h["momentum"] > 0 else ())
                + (("average_gradient",) if h["centered"] else ()), {}, _rmsprop),
    "Adagrad": (lambda h: ("accumulator",),
                {"accumulator": lambda p, h: np.full_like(p, cast32(h["initial_accumulator_value"], p.dtype.type))},
                _adagrad),
    "Adadelta": (lambda h: ("accumulated_grad", "accumulated_delta_var"), {}, _adadelta),
    "Adam": (lambda h: ("momentum", "velocity") + (("velocity_hat",) if h["amsgrad"] else ()), {}, _adam),
    "AdamW": (lambda h: ("momentum", "velocity") + (("velocity_hat",) if h["amsgrad"] else ()), {}, _adam),
    "Adamax": (lambda h: ("momentum", "norm"), {}, _adamax),
    "Nadam": (lambda h: ("momentum", "velocity"), {}, _nadam),
    "Ftrl": (lambda h: ("accumulator", "linear"),
             {"accumulator": lambda p, h: np.full_like(p, cast32(h["initial_accumulator_value"], p.dtype.type))}, _ftrl),
    "Lion": (lambda h: ("momentum",), {}, _lion),
    "ScheduleFreeAdamW": (lambda h: ("momentum", "velocity"), {"momentum": lambda p, h: p.copy()}, _schedule_free),
}


def reference_run(name, h, params, steps, learning_rates=None):
    """Keras 3's steps on copies of ``params`` (one dtype), its config ``h`` (every key);
    returns (params, slots by kind). ``learning_rates`` gives each step's float32 rate
    (a schedule's), else ``h["learning_rate"]``."""
    slot_names, initial, step = REFERENCES[name]
    kind = params[0].dtype.type
    params = [p.copy() for p in params]
    slots = [{k: initial.get(k, _zeros)(p, h) for k in slot_names(h)} for p in params]
    shared = {"u_product": kind(1.0)}
    for k, grads in enumerate(steps):
        lr = kind(np.float32(h["learning_rate"] if learning_rates is None else learning_rates[k]))
        t = kind(k + 1)
        if name == "Nadam":
            _nadam_product(h, kind, shared, t)
        for i, g in enumerate(grads):
            p = params[i]
            if h.get("weight_decay") is not None:
                p = p - p * cast32(h["weight_decay"], kind) * lr
            params[i] = step(h, kind, p, g.astype(kind), slots[i], t, lr, shared)
    return params, {k: [s[k] for s in slots] for k in slot_names(h)}
