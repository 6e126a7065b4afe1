"""One optimizer step in each library, behind the same small interface.

``build(library, name, params, grads, clipnorm=None)`` takes NumPy parameters and
gradients (each library gets its own copies) and returns ``step()``, a function that
applies one step and returns once the update is done (JAX's asynchronous dispatch is
waited for). It raises ``Missing`` when the library is not installed and ``Unsupported``
when the library has no such optimizer or variant, so the suite reports those rather
than failing.

Every library runs the same hyperparameters: Keras 2.0's defaults, except SGD with
``momentum=0.9`` so that every library keeps (and pays the memory traffic of) a momentum
buffer, as numbaopt always does. The optimizers are numbaopt's registry; a peer table
without an entry for one reports it as unsupported. The peers' formulas differ from Keras 2.0 in details
(where epsilon sits, bias corrections): the suite compares speed, not results.
"""
import importlib
import os

import numpy as np

from numbaopt import optimizers
from numbaopt.optimizers.base import StepInputs

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

#: The libraries in report order. "roofline" is not a library: see roofline.py.
LIBRARIES = ("numbaopt", "torch-fused", "torch-foreach", "optax", "tf_keras", "numpy")

#: Settings that differ from Keras 2.0's defaults in the benchmark (see the module docstring).
OVERRIDES = {"SGD": {"momentum": 0.9}}

#: Constructor arguments of every benchmarked optimizer (Keras 2.0 names), from the registry.
SETTINGS = {
    cls.__name__: {**cls().get_config(), **OVERRIDES.get(cls.__name__, {})} for cls in optimizers.rule_based()
}


class Missing(Exception):
    """The library is not installed."""


class Unsupported(Exception):
    """The library has no such optimizer, variant or dtype."""


def _require(module):
    try:
        return importlib.import_module(module)
    except ImportError as error:
        raise Missing(f"{module} is not installed ({error})") from None


def _entry(table, library, name):
    """``table[name]``: the peer's counterpart of optimizer ``name``, or ``Unsupported``."""
    if name not in table:
        raise Unsupported(f"{library} has no counterpart of {name} in benchmarks/peers.py")
    return table[name]


def build(library, name, params, grads, clipnorm=None):
    """``step()`` for optimizer ``name`` of ``library`` over copies of ``params`` and ``grads``."""
    builders = {
        "numbaopt": _numbaopt,
        "torch-fused": lambda *a: _torch(*a, variant="fused"),
        "torch-foreach": lambda *a: _torch(*a, variant="foreach"),
        "optax": _optax,
        "tf_keras": _tf_keras,
        "numpy": _numpy,
    }
    return builders[library](name, [p.copy() for p in params], grads, clipnorm)


def versions():
    """Installed versions of every peer (None when missing), for the report, read from the
    package metadata: importing TensorFlow, torch and JAX in the parent would cost seconds
    and a gigabyte it keeps for the whole run."""
    from importlib import metadata

    found = {}
    for name, distributions in (("numba", ["numba"]), ("numpy", ["numpy"]), ("torch", ["torch"]),
                                ("jax", ["jax"]), ("optax", ["optax"]),
                                ("tensorflow", ["tensorflow", "tensorflow-cpu"]), ("tf_keras", ["tf-keras"])):
        found[name] = None
        for distribution in distributions:
            try:
                found[name] = metadata.version(distribution)
                break
            except metadata.PackageNotFoundError:
                pass
    return found


# ------------------------------------------------------------------ numbaopt


def _numbaopt(name, params, grads, clipnorm):
    from numbaopt import optimizers

    kwargs = dict(SETTINGS[name], **({"clipnorm": clipnorm} if clipnorm else {}))
    opt = getattr(optimizers, name)(**kwargs)
    pairs = list(zip(grads, params))
    return lambda: opt.apply_gradients(pairs)


# --------------------------------------------------------------------- torch


def _torch(name, params, grads, clipnorm, variant):
    torch = _require("torch")
    s = SETTINGS[name]
    b = (s.get("beta_1"), s.get("beta_2"))
    classes = {
        "SGD": lambda ps, **k: torch.optim.SGD(ps, lr=s["lr"], momentum=s["momentum"], **k),
        "RMSprop": lambda ps, **k: torch.optim.RMSprop(ps, lr=s["lr"], alpha=s["rho"], eps=s["epsilon"], **k),
        "Adagrad": lambda ps, **k: torch.optim.Adagrad(ps, lr=s["lr"], eps=s["epsilon"], **k),
        "Adadelta": lambda ps, **k: torch.optim.Adadelta(ps, lr=s["lr"], rho=s["rho"], eps=s["epsilon"], **k),
        "Adam": lambda ps, **k: torch.optim.Adam(ps, lr=s["lr"], betas=b, eps=s["epsilon"], **k),
        "Adamax": lambda ps, **k: torch.optim.Adamax(ps, lr=s["lr"], betas=b, eps=s["epsilon"], **k),
        "Nadam": lambda ps, **k: torch.optim.NAdam(ps, lr=s["lr"], betas=b, eps=s["epsilon"], **k),
    }
    tensors = [torch.nn.Parameter(torch.from_numpy(p)) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g.copy())
    try:
        opt = _entry(classes, "torch.optim", name)(tensors, **{variant: True})
    except (RuntimeError, TypeError, ValueError) as error:
        raise Unsupported(f"torch.optim.{name}({variant}=True): {error}") from None

    def step():
        if clipnorm:
            torch.nn.utils.clip_grad_norm_(tensors, clipnorm)
        opt.step()

    try:
        step()  # torch refuses some fused variants only when it first steps
    except RuntimeError as error:
        raise Unsupported(f"torch.optim.{name}({variant}=True): {error}") from None
    return step


# --------------------------------------------------------------------- optax


def _optax(name, params, grads, clipnorm):
    jax = _require("jax")
    optax = _require("optax")
    if params[0].dtype == np.float64 and not jax.config.jax_enable_x64:
        jax.config.update("jax_enable_x64", True)

    s = SETTINGS[name]
    transforms = {
        "SGD": lambda: optax.sgd(s["lr"], momentum=s["momentum"]),
        "RMSprop": lambda: optax.rmsprop(s["lr"], decay=s["rho"], eps=s["epsilon"]),
        "Adagrad": lambda: optax.adagrad(s["lr"], initial_accumulator_value=0.0, eps=s["epsilon"]),
        "Adadelta": lambda: optax.adadelta(s["lr"], rho=s["rho"], eps=s["epsilon"]),
        "Adam": lambda: optax.adam(s["lr"], s["beta_1"], s["beta_2"], s["epsilon"]),
        "Adamax": lambda: optax.adamax(s["lr"], s["beta_1"], s["beta_2"], s["epsilon"]),
        "Nadam": lambda: optax.nadam(s["lr"], s["beta_1"], s["beta_2"], s["epsilon"]),
    }
    tx = _entry(transforms, "optax", name)()
    if clipnorm:
        tx = optax.chain(optax.clip_by_global_norm(clipnorm), tx)
    return optax_step(tx, params, grads)


def optax_step(tx, params, grads):
    """``step()`` of the optax transformation ``tx`` under ``jax.jit`` on copies of the NumPy
    ``params`` and ``grads``, waiting for the result (JAX dispatches asynchronously)."""
    jax = _require("jax")
    optax = _require("optax")
    import jax.numpy as jnp

    state = {"params": [jnp.asarray(p) for p in params]}
    state["opt"] = tx.init(state["params"])
    device_grads = [jnp.asarray(g) for g in grads]

    def update(params, opt_state, grads):
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state

    # Donating the parameters and the state lets XLA update them in place.
    jitted = jax.jit(update, donate_argnums=(0, 1))

    def step():
        state["params"], state["opt"] = jitted(state["params"], state["opt"], device_grads)
        jax.block_until_ready(state["params"])

    return step


# ------------------------------------------------------------------ tf_keras


def _tf_keras(name, params, grads, clipnorm):
    tf = _require("tensorflow")
    tf_keras = _require("tf_keras")
    s = SETTINGS[name]
    legacy = tf_keras.optimizers.legacy
    # tf_keras's clipnorm clips each gradient by its own norm; global_clipnorm is Keras 2.0's.
    kwargs = {"global_clipnorm": clipnorm} if clipnorm else {}
    optimizers = {
        "SGD": lambda: legacy.SGD(s["lr"], momentum=s["momentum"], **kwargs),
        "RMSprop": lambda: legacy.RMSprop(s["lr"], rho=s["rho"], epsilon=s["epsilon"], **kwargs),
        "Adagrad": lambda: legacy.Adagrad(s["lr"], initial_accumulator_value=0.0, epsilon=s["epsilon"], **kwargs),
        "Adadelta": lambda: legacy.Adadelta(s["lr"], rho=s["rho"], epsilon=s["epsilon"], **kwargs),
        "Adam": lambda: legacy.Adam(s["lr"], s["beta_1"], s["beta_2"], s["epsilon"], **kwargs),
        "Adamax": lambda: legacy.Adamax(s["lr"], s["beta_1"], s["beta_2"], s["epsilon"], **kwargs),
        "Nadam": lambda: legacy.Nadam(s["lr"], s["beta_1"], s["beta_2"], s["epsilon"], **kwargs),
    }
    opt = _entry(optimizers, "tf_keras", name)()
    variables = [tf.Variable(p) for p in params]
    tensors = [tf.constant(g) for g in grads]

    # autograph=False: a plain loop to trace (autograph fails to parse it and warns per trace).
    @tf.function(autograph=False)
    def update(grads):
        opt.apply_gradients(zip(grads, variables))

    return lambda: update(tensors)


# --------------------------------------------------------------------- numpy


def _numpy(name, params, grads, clipnorm):
    """The Keras 2.0 rules as in-place NumPy: ufuncs with ``out=`` into reused scratch buffers."""
    opt = getattr(optimizers, name)(**SETTINGS[name])  # only for its once-per-call scalars
    rule = _entry(_NUMPY_RULES, "numpy", name)
    slots = [[np.zeros_like(p) for _ in opt.slot_names] for p in params]
    scratch = [(np.empty_like(p), np.empty_like(p)) for p in params]
    clipped = [np.empty_like(g) for g in grads] if clipnorm else grads

    progress = {"iterations": 0, "scalars": opt.state().scalars}  # the step count and scalar state, kept here

    def step():
        dtype = params[0].dtype.type
        if clipnorm:
            norm = np.sqrt(sum(float(np.dot(g.ravel(), g.ravel())) for g in grads))
            factor = dtype(clipnorm / norm) if norm >= clipnorm else dtype(1)
            for g, c in zip(grads, clipped):
                np.multiply(g, factor, out=c)
        inputs = StepInputs(opt.get_config(), progress["iterations"], progress["scalars"])
        scalars = opt.step_scalars(inputs, dtype)
        for p, g, s, t in zip(params, clipped, slots, scratch):
            rule(p, g, *s, *t, *scalars)
        progress["scalars"] = {**progress["scalars"], **opt.advance_scalar_state(inputs)}
        progress["iterations"] += 1

    return step


def _sgd(p, g, m, t, u, lr, momentum, nesterov):
    m *= momentum
    np.multiply(g, lr, out=t)
    m -= t
    p += m


def _rmsprop(p, g, a, t, u, lr, rho, one_minus_rho, epsilon):
    a *= rho
    np.multiply(g, g, out=t)
    t *= one_minus_rho
    a += t
    np.sqrt(a, out=t)
    t += epsilon
    np.divide(g, t, out=t)
    t *= lr
    p -= t


def _adagrad(p, g, a, t, u, lr, epsilon):
    np.multiply(g, g, out=t)
    a += t
    np.sqrt(a, out=t)
    t += epsilon
    np.divide(g, t, out=t)
    t *= lr
    p -= t


def _adadelta(p, g, a, d, t, u, lr, rho, one_minus_rho, epsilon):
    a *= rho
    np.multiply(g, g, out=t)
    t *= one_minus_rho
    a += t
    np.add(d, epsilon, out=t)
    np.sqrt(t, out=t)
    np.add(a, epsilon, out=u)
    np.sqrt(u, out=u)
    np.divide(t, u, out=t)
    t *= g  # the update
    np.multiply(t, lr, out=u)
    p -= u
    d *= rho
    np.multiply(t, t, out=u)
    u *= one_minus_rho
    d += u


def _adam(p, g, m, v, t, u, lr_t, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, epsilon):
    m *= beta_1
    np.multiply(g, one_minus_beta_1, out=t)
    m += t
    v *= beta_2
    np.multiply(g, g, out=t)
    t *= one_minus_beta_2
    v += t
    np.sqrt(v, out=t)
    t += epsilon
    np.divide(m, t, out=t)
    t *= lr_t
    p -= t


def _adamax(p, g, m, w, t, u, lr_t, beta_1, one_minus_beta_1, beta_2, epsilon):
    m *= beta_1
    np.multiply(g, one_minus_beta_1, out=t)
    m += t
    w *= beta_2
    np.abs(g, out=t)
    np.maximum(w, t, out=w)
    np.add(w, epsilon, out=t)
    np.divide(m, t, out=t)
    t *= lr_t
    p -= t


def _nadam(p, g, m, v, t, u, lr, beta_1, one_minus_beta_1, beta_2, one_minus_beta_2, epsilon,
           one_minus_ms_new, one_minus_ms_next, one_minus_beta_2_t, one_minus_mc_t, mc_t1):
    m *= beta_1
    np.multiply(g, one_minus_beta_1, out=t)
    m += t
    v *= beta_2
    np.multiply(g, g, out=t)
    t *= one_minus_beta_2
    v += t
    np.divide(g, one_minus_ms_new, out=t)
    t *= one_minus_mc_t
    np.divide(m, one_minus_ms_next, out=u)
    u *= mc_t1
    t += u  # m_bar
    np.divide(v, one_minus_beta_2_t, out=u)
    np.sqrt(u, out=u)
    u += epsilon
    np.divide(t, u, out=t)
    t *= lr
    p -= t


_NUMPY_RULES = {
    "SGD": _sgd, "RMSprop": _rmsprop, "Adagrad": _adagrad, "Adadelta": _adadelta,
    "Adam": _adam, "Adamax": _adamax, "Nadam": _nadam,
}
