"""Replay one fixture through numbaopt and compare, step by step, with what Keras recorded.

A Keras 2.0 replay rebuilds the optimizer with ``numbaopt.optimizers.deserialize`` and
applies the recorded gradients, by one of two routes (``ROUTES``, see ``numbaopt.parity``);
after every step every parameter and every slot is compared. A Keras 3 replay (route
``keras3``) rebuilds it with ``numbaopt.keras3.deserialize`` from Keras's ``serialize()``
output, compares the parameters, ``learning_rate`` and ``iterations`` after every step and
``keras_variables()`` after the last. Errors are relative, ``max|ours - keras| / max|keras|``
per tensor, within ``TOLERANCE``; ``iterations`` must match exactly.
"""
from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from numbaopt import optimizers
from numbaopt.parity.fixtures import Keras3Fixture

if TYPE_CHECKING:
    from numbaopt.parity.fixtures import Fixture

#: Tolerance on the max relative error per tensor, by parameter dtype.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}

#: The two ways a Keras 2.0 case is replayed (see ``numbaopt.parity``).
ROUTES = ("keras2", "tf-keras")

#: The one way a Keras 3 case is replayed: from Keras 3's ``serialize()`` output.
KERAS3_ROUTES = ("keras3",)


def routes_of(fixture: Fixture | Keras3Fixture) -> tuple[str, ...]:
    """The routes a fixture is replayed by, by its family."""
    return KERAS3_ROUTES if isinstance(fixture, Keras3Fixture) else ROUTES


@dataclass
class Result:
    """The outcome of one replay."""

    optimizer: str
    case: str
    dtype: str
    config: str  # a member of ROUTES or KERAS3_ROUTES
    steps: int
    max_error: float
    tolerance: float
    passed: bool
    worst_step: int | None = None  # 1-based step where max_error occurred
    worst_tensor: str | None = None
    error: str | None = None  # an exception that stopped the replay
    file: str = ""


def relative_error(ours: npt.ArrayLike, keras: npt.ArrayLike) -> float:
    """``max|ours - keras| / max|keras|`` over a tensor, in float64.

    Values below the smallest normal number of the reference's dtype count as zero on both
    sides, and the denominator is floored at that number: TensorFlow's CPU kernels flush
    denormals to zero, so Keras records 0 where numbaopt keeps, say, a float32 run's Nadam
    ``m_schedule`` (which underflows after about 110 steps) as a tiny float64; below the
    normal range a float has no relative precision to compare anyway.
    """
    keras = np.asarray(keras)
    ours = np.asarray(ours)
    if ours.shape != keras.shape:
        return math.inf
    if ours.size == 0:
        return 0.0
    tiny = float(np.finfo(keras.dtype if keras.dtype.kind == "f" else np.float64).tiny)
    k = keras.astype(np.float64)
    o = ours.astype(np.float64)
    if not (np.all(np.isfinite(o)) and np.all(np.isfinite(k))):
        return 0.0 if np.array_equal(o, k, equal_nan=True) else math.inf
    k = np.where(np.abs(k) < tiny, 0.0, k)
    o = np.where(np.abs(o) < tiny, 0.0, o)
    return float(np.abs(o - k).max() / max(float(np.abs(k).max()), tiny))


def _to_device(arrays: list[npt.NDArray[Any]], device: str) -> list[Any]:
    if device == "cpu":
        return arrays
    from numba import cuda

    return [cuda.to_device(a) for a in arrays]


def _host(x: Any) -> npt.NDArray[Any]:
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()  # type: ignore[no-any-return]  # an untyped (Numba) device array
    if hasattr(x, "get") and not isinstance(x, np.ndarray):  # CuPy
        return x.get()  # type: ignore[no-any-return]  # an untyped (CuPy) array
    return np.asarray(x)


def build_optimizer(fixture: Fixture, route: str) -> optimizers.Optimizer:
    """The numbaopt optimizer for ``fixture`` as ``route`` describes it."""
    config = fixture.keras2_config if route == "keras2" else fixture.keras_config
    # The registry sits below the optimizers, so deserialize gives Any.
    return optimizers.deserialize({"class_name": fixture.optimizer, "config": dict(config)})  # type: ignore[no-any-return]


def replay(fixture: Fixture | Keras3Fixture, route: str = "keras2", device: str = "cpu") -> Result:
    """Replay ``fixture`` through numbaopt and return a ``Result`` (a Keras 3 fixture has one
    route, ``keras3``, whatever ``route`` says)."""
    if isinstance(fixture, Keras3Fixture):
        return replay_keras3(fixture, device)
    tol = TOLERANCE[fixture.dtype]
    result = Result(fixture.optimizer, fixture.case, fixture.dtype, route, fixture.steps,
                    0.0, tol, False, file=fixture.file)
    if route == "keras2" or fixture.clipping != "composed":
        grads_all = fixture.grads
    else:
        grads_all = fixture.applied_grads  # type: ignore[assignment]  # recorded when clipping is composed
    try:
        opt = build_optimizer(fixture, route)
        slot_names = list(getattr(opt, "slot_names", fixture.slot_names))
        if slot_names != list(fixture.slot_names):
            raise ValueError(f"slot kinds {slot_names} differ from the fixture's {fixture.slot_names}")
        n = len(fixture.param_shapes)
        has_schedule = fixture.m_schedule is not None
        params = _to_device(fixture.unflatten(fixture.params[0]), device)
        worst: tuple[float, int | None, str | None] = (0.0, None, None)

        def check(step: int, label: str, ours: npt.ArrayLike, keras: npt.ArrayLike) -> None:
            nonlocal worst
            err = relative_error(ours, keras)
            if err > worst[0]:
                worst = (err, step, label)

        for step in range(fixture.steps):
            grads = _to_device(fixture.unflatten(grads_all[step]), device)
            opt.apply_gradients(list(zip(grads, params)))
            ref_params = fixture.unflatten(fixture.params[step + 1])
            for i in range(n):
                check(step + 1, f"param {fixture.param_names[i]}", _host(params[i]), ref_params[i])
            weights = [_host(w) for w in opt.get_weights()]
            expected_len = 1 + int(has_schedule) + len(slot_names) * n
            if len(weights) != expected_len:
                raise ValueError(f"get_weights gave {len(weights)} arrays, expected {expected_len}")
            iterations = int(np.asarray(weights[0]).reshape(()))
            if iterations != int(fixture.iterations[step]) or iterations != opt.iterations:
                worst = (math.inf, step + 1,
                         f"iterations {iterations} (attribute {opt.iterations}), Keras {fixture.iterations[step]}")
            offset = 1
            if has_schedule:
                check(step + 1, "m_schedule", weights[1], fixture.m_schedule[step])  # type: ignore[index]  # has_schedule
                offset = 2
            for k, kind in enumerate(slot_names):
                ref = fixture.unflatten(fixture.slots[step, k])
                for i in range(n):
                    check(step + 1, f"{kind} {fixture.param_names[i]}", weights[offset + k * n + i], ref[i])
        result.max_error, result.worst_step, result.worst_tensor = worst
        result.passed = result.max_error <= tol
    except Exception as exc:  # a replay that cannot run is a failed replay, reported as such
        result.max_error = math.inf
        result.error = f"{type(exc).__name__}: {exc}"
        result.passed = False
    return result


def replay_keras3(fixture: Keras3Fixture, device: str = "cpu") -> Result:
    """Replay a Keras 3 ``fixture`` through ``numbaopt.keras3`` and return a ``Result``."""
    tol = TOLERANCE[fixture.dtype]
    result = Result(fixture.optimizer, fixture.case, fixture.dtype, "keras3", fixture.steps,
                    0.0, tol, False, file=fixture.file)
    worst: tuple[float, int | None, str | None] = (0.0, None, None)

    def check(step: int, label: str, ours: npt.ArrayLike, keras: npt.ArrayLike) -> None:
        nonlocal worst
        err = relative_error(ours, keras)
        if err > worst[0]:
            worst = (err, step, label)

    def mismatch(step: int, label: str) -> None:
        nonlocal worst
        if worst[0] < math.inf:
            worst = (math.inf, step, label)

    try:
        from numbaopt import keras3

        opt = keras3.deserialize(fixture.serialized)
        if fixture.exclude_from_weight_decay is not None:
            opt.exclude_from_weight_decay(var_names=fixture.exclude_from_weight_decay)
        names = fixture.param_names
        params = _to_device(fixture.unflatten(fixture.params[0]), device)
        for step in range(fixture.steps):
            grads = _to_device(fixture.unflatten(fixture.grads[step]), device)
            opt.apply_gradients(zip(grads, params), names=names)
            expected = fixture.unflatten(fixture.params[step + 1])
            for name, ours, keras_value in zip(names, params, expected):
                check(step + 1, f"param {name}", _host(ours), keras_value)
            check(step + 1, "learning_rate", np.float64(opt.learning_rate), fixture.learning_rate[step])
            if int(opt.iterations) != int(fixture.iterations[step]):
                mismatch(step + 1, f"iterations {opt.iterations}, Keras {fixture.iterations[step]}")
        ours_vars = [(path, _host(value)) for path, value in opt.keras_variables()]
        ours_paths = [path for path, _ in ours_vars]
        keras_paths = [path for path, _ in fixture.variables]
        if ours_paths != keras_paths:
            mismatch(fixture.steps, f"keras_variables paths {ours_paths}, Keras {keras_paths}")
        else:
            for (path, ours), (_, keras_value) in zip(ours_vars, fixture.variables):
                check(fixture.steps, f"variable {path}", ours, keras_value)
        if fixture.finalized is not None:
            host = [_host(p).copy() for p in params]
            opt.finalize_variable_values(host)
            for name, ours, keras_value in zip(names, host, fixture.unflatten(fixture.finalized)):
                check(fixture.steps, f"finalized {name}", ours, keras_value)
        result.max_error, result.worst_step, result.worst_tensor = worst
        result.passed = result.max_error <= tol
    except Exception as exc:  # a replay that cannot run is a failed replay, reported as such
        result.max_error = math.inf
        result.error = f"{type(exc).__name__}: {exc}"
        result.passed = False
    return result


def run_all(fixtures: Iterable[Fixture | Keras3Fixture], device: str = "cpu",
            routes: Iterable[str] = ROUTES + KERAS3_ROUTES) -> list[Result]:
    """Replay every fixture by each of ``routes`` it has; a list of ``Result``."""
    routes = tuple(routes)
    return [replay(fx, route, device) for fx in fixtures for route in routes_of(fx) if route in routes]
