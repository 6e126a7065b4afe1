"""Muon (Keras 3): momentum orthogonalized by Newton-Schulz for matrices, AdamW for the rest.

A parameter takes the AdamW path when it is not 2-D, when ``exclude_embeddings`` is set and
``"embedding"`` is in its path (lower-cased), or when one of ``exclude_layers`` (regular
expressions) is found in its path; every other parameter takes the Muon path. First, weight
decay ``p <- p - p * wd * lr``: ``wd`` is ``adam_weight_decay`` on the AdamW path and
``weight_decay`` on the Muon path (None: none), skipped for a parameter that
``exclude_from_weight_decay`` names. Then, on the AdamW path (``numbaopt.keras3.adam``'s
rule, in the kernels), with ``t = iterations + 1``::

    lr_a  = lr * adam_lr_ratio                             (in float32, as Keras's variable)
    alpha = lr_a * sqrt(1 - adam_beta_2^t) / (1 - adam_beta_1^t)
    m <- m + (g - m) * (1 - adam_beta_1);   v <- v + (g^2 - v) * (1 - adam_beta_2)
    p <- p - m * alpha / (sqrt(v) + epsilon)

and on the Muon path, for a matrix of ``rows x cols``::

    m <- m + (g + m * (momentum - 1))
    x = g + momentum * m  (nesterov), else m;   x <- x^T when rows > cols
    x <- x / (|x|_F + 1e-7)
    ns_steps times:  A = x x^T;  B = muon_b * A + (muon_c * A) A;  x <- muon_a * x + B x
    x <- x^T when rows > cols
    u = lr * x;   u <- u * sqrt(max(rows, cols)) * rms_rate   (unless rms_rate is None)
    p <- p - u

The Muon path runs in NumPy on host arrays (``np.matmul``: the Newton-Schulz products are
BLAS matrix products, fast on the CPU; a CUDA parameter is copied to the host and back for
it). A loop in a tensor pass would be exact too, but slow for large matrices, and Numba's
``np.dot`` needs SciPy, which numbaopt does not depend on. Float32 stays float32 (the
matrix products are float32 BLAS, as TensorFlow's are).

Keras on TensorFlow, quirks reproduced: ``exclude_from_weight_decay(var_names=...)``
matches the variable's short name (``kernel``, no ``":0"``), not its path, as Muon's own
``_apply_weight_decay`` reads ``variable.name``; the weight decay uses ``lr``, not
``lr * adam_lr_ratio``; ``velocity`` exists only for AdamW-path parameters
(``keras_variables`` lists it so; numbaopt keeps a zero one for the others). Keras on
TensorFlow fails on a float64 Muon-path variable (``InvalidArgumentError``, after the
weight decay and the momentum of that variable, and the variables before it, changed, and
without counting the step) unless ``rms_rate`` is None and the learning rate a float:
``sqrt(max(rows, cols))`` in ``lr_adjust`` is a float32 tensor, and so is a schedule's
``lr``, and TensorFlow does not promote float32 to float64. numbaopt computes what Keras's
dtype rules define there (what Keras on JAX or torch computes, and Keras on TensorFlow with
those two values cast): ``lr`` as float64(float32 lr), the factor as
``float64(float32(sqrt(max)))``, ``rms_rate`` in full float64. Keras 2.0 has no Muon.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt import devices
from numbaopt.hyperparameters import StepInputs
from numbaopt.keras3 import naming
from numbaopt.keras3.adam import adam_rule
from numbaopt.keras3.base import BASE_ARGUMENTS, Argument, Keras3Optimizer, float32_setting, host_value
from numbaopt.state import Slot


def newton_schulz(x: npt.NDArray[Any], steps: int, a: float, b: float, c: float) -> npt.NDArray[Any]:
    """Keras's ``zeropower_via_newtonschulz5`` of the matrix ``x``, in ``x``'s dtype."""
    kind = x.dtype.type
    tall = x.shape[-2] > x.shape[-1]
    if tall:
        x = x.T
    x = x / (np.sqrt(np.sum(x * x)) + kind(1e-7))
    a_, b_, c_ = kind(a), kind(b), kind(c)
    for _ in range(steps):
        gram = x @ x.T
        x = a_ * x + (b_ * gram + (c_ * gram) @ gram) @ x
    return np.ascontiguousarray(x.T) if tall else x


def muon_update(p: npt.NDArray[Any], g: npt.NDArray[Any], m: npt.NDArray[Any], weight_decay: Any, lr: Any,
                h: Mapping[str, Any]) -> tuple[npt.NDArray[Any], npt.NDArray[Any]]:
    """One Muon step of matrix ``p`` (host arrays, not written): the new ``(p, m)``.
    ``weight_decay`` and ``lr`` are the dtype's (0: no decay)."""
    kind = p.dtype.type
    if weight_decay != 0:
        p = p - p * weight_decay * lr
    m = m + (g + m * kind(h["momentum"] - 1))
    x = g + kind(h["momentum"]) * m if h["nesterov"] else m
    update = lr * newton_schulz(x, h["ns_steps"], h["muon_a"], h["muon_b"], h["muon_c"])
    if h["rms_rate"] is not None:
        update = update * kind(np.sqrt(np.float32(max(p.shape)))) * kind(h["rms_rate"])
    return p - update, m


#: Muon's own keys of Keras's ``get_config``, in its order (not its constructor's).
_CONFIG_ORDER = (
    "adam_beta_1", "adam_beta_2", "epsilon", "exclude_layers", "muon_a", "muon_b", "muon_c", "adam_lr_ratio",
    "momentum", "ns_steps", "nesterov", "exclude_embeddings", "adam_weight_decay", "rms_rate",
)


class _Layers(Argument):
    """``exclude_layers``: None (none) or a list of regular expressions."""

    def check(self, value: object) -> Any:
        return [] if value is None else Argument(self.name, (), "names").check(value)


class Muon(Keras3Optimizer):
    """Muon (Keras 3's ``keras.optimizers.Muon``): Newton-Schulz-orthogonalized momentum
    for 2-D parameters, AdamW for the others."""

    arguments = (
        Argument("learning_rate", 0.001, "learning_rate"),
        Argument("adam_beta_1", 0.9, "unit"),
        Argument("adam_beta_2", 0.999, "unit"),
        Argument("adam_weight_decay", 0.004, "optional"),
        Argument("epsilon", 1e-7),
        Argument("weight_decay", 0.004, "optional"),
        *BASE_ARGUMENTS[1:],  # Muon takes the base's arguments in the middle of its own
        _Layers("exclude_layers", None, "names"),
        Argument("exclude_embeddings", True, "flag"),
        Argument("muon_a", 3.4445, "real"),
        Argument("muon_b", -4.7750, "real"),
        Argument("muon_c", 2.0315, "real"),
        Argument("adam_lr_ratio", 1),  # an int by default, as in Keras's config
        Argument("momentum", 0.95, "unit"),
        Argument("ns_steps", 5, "count"),
        Argument("nesterov", True, "flag"),
        Argument("rms_rate", 0.2, "optional"),
    )
    #: ``velocity`` is Adam's, used on the AdamW path only (Keras builds it only there).
    slots = (Slot("momentum"), Slot("velocity", sign="nonnegative"))
    #: Its Newton-Schulz step updates ``momentum`` on the host, in the parameters' dtype.
    slot_dtypes = ()
    rule = staticmethod(adam_rule)
    keras_build = (("momentum", "velocity"),)

    @classmethod
    def bind_arguments(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        hyper = super().bind_arguments(args, kwargs)
        hyper["exclude_layers"] = list(hyper["exclude_layers"] or [])  # Keras keeps ``exclude_layers or []``
        return hyper

    def get_config(self) -> dict[str, Any]:
        """Keras's Muon config: the base keys, then Muon's in the order its ``get_config`` adds them."""
        config = super().get_config()
        device = {"device": config.pop("device")} if "device" in config else {}
        own = {key: config.pop(key) for key in _CONFIG_ORDER}
        own["exclude_layers"] = list(own["exclude_layers"])
        return {**config, **own, **device}

    @staticmethod
    def step_scalars(h: StepInputs, dtype: type[np.floating[Any]]) -> tuple[np.floating[Any] | bool, ...]:
        """The AdamW path's: its weight decay uses ``lr``, its step ``lr * adam_lr_ratio``."""
        one, t, lr = dtype(1), dtype(h.iterations + 1), dtype(h.lr)
        adam_lr = dtype(np.float32(h.lr) * np.float32(h.adam_lr_ratio))
        beta_1_power = float32_setting(h.adam_beta_1, dtype) ** t
        beta_2_power = float32_setting(h.adam_beta_2, dtype) ** t
        alpha = adam_lr * np.sqrt(one - beta_2_power) / (one - beta_1_power)
        return (
            float32_setting(h.weight_decay, dtype), lr, alpha,
            dtype(1 - h.adam_beta_1), dtype(1 - h.adam_beta_2), dtype(h.epsilon),
        )

    def check_part_stepping(self) -> None:
        """Muon routes each parameter by its Keras path and shape and orthogonalizes whole
        matrices on the host: it steps only by ``apply_gradients`` / ``apply``."""
        raise ValueError(
            "Muon steps by apply_gradients / apply (with names= for its layer rules), not by parts "
            "(numbaopt.torch) or shards (ShardedOptimizer): its Muon path routes parameters by their Keras "
            "paths and runs Newton-Schulz on whole matrices"
        )

    # ----------------------------------------------------------------- routing

    def uses_adamw(self, shape: Sequence[int], path: str) -> bool:
        """Keras's ``_should_use_adamw``: whether the parameter of ``shape`` at ``path``
        takes the AdamW path (not 2-D, an embedding, or a layer ``exclude_layers`` names)."""
        if len(shape) != 2:
            return True
        if self._hyper["exclude_embeddings"] and "embedding" in path.lower():
            return True
        return any(re.search(keyword, path) for keyword in self._hyper["exclude_layers"])

    def _paths(self, n: int, names: Sequence[str] | None) -> list[str]:
        return list(names) if names is not None else [f"param_{i}" for i in range(n)]

    def _check_builds(self, params: Sequence[Any], names: tuple[str, ...] | None) -> None:
        super()._check_builds(params, names)
        if self._hyper["exclude_layers"] and names is None and self._names is None:
            raise ValueError("Muon's exclude_layers match parameter paths: pass names= to the step")

    def _decayed(self, params: Sequence[Any], names: tuple[str, ...] | None) -> list[bool]:
        """Muon's ``_use_weight_decay``: the short name (the path's last component, no
        ``":0"``) searched, as Muon's ``_apply_weight_decay`` sees the Keras variable."""
        short = [path.rsplit("/", 1)[-1] for path in self._paths(len(params), names or self._names)]
        by_name = naming.excluded_by_pattern(short, self._excluded_patterns, suffix="")
        return [not (id(p) in self._excluded_ids or excluded) for p, excluded in zip(params, by_name)]

    # -------------------------------------------------------------------- step

    def _update_alone(self) -> bool:
        """Never the kernels' plain step: the Muon path runs in ``_update``."""
        return False

    def _update(self, grads: list[Any], params: list[Any], present: list[int], decayed: list[bool],
                names: tuple[str, ...] | None) -> None:
        """The AdamW path in the kernels (its parts by weight decay), then the Muon path on the host."""
        backend = devices.backend_for(params, self._hyper.get("device", "auto"))
        checked = [backend.check_parameter(p, i) for i, p in enumerate(params)]
        paths = self._paths(len(params), names or self._names)
        adamw = [self.uses_adamw(p.shape, path) for p, path in zip(checked, paths)]
        hyper = self._hyper
        with_decay = {**hyper, "weight_decay": hyper["adam_weight_decay"]}
        without = {**hyper, "weight_decay": None}
        parts = [
            (part, [i for i in present if adamw[i] and decayed[i] == wanted])
            for part, wanted in ((with_decay, True), (without, False))
        ]
        # The kernels alone (not Keras3Optimizer's check for outside callers); called with
        # no part too when every parameter is a Muon one: it binds the slots and counts the step.
        super(Keras3Optimizer, self).apply_gradient_parts(grads, params, [(part, at) for part, at in parts if at])
        muon = [i for i in present if not adamw[i]]
        if not muon:
            return
        assert self._slots is not None
        momentum = self._slots.views("momentum")
        lr = self._learning_rate_now()
        for i in muon:
            kind = checked[i].dtype.type
            decay = float32_setting(hyper["weight_decay"], kind) if decayed[i] else kind(0)
            p, m = muon_update(host_value(backend, checked[i]), host_value(backend, grads[i]),
                               host_value(backend, momentum[i]), decay, kind(lr), hyper)
            backend.copy_from_host(checked[i], p)
            backend.copy_from_host(momentum[i], m)
        devices.mark_modified([params[i] for i in muon])

    def keras_slot_variables(self, kind: str, path: str, value: npt.NDArray[Any]) -> list[tuple[str, npt.NDArray[Any]]]:
        """Keras builds ``velocity`` for AdamW-path parameters only."""
        if kind == "velocity" and not self.uses_adamw(value.shape, path):
            return []
        return super().keras_slot_variables(kind, path, value)
