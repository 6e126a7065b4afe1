"""Keras 3.15's learning-rate schedules, computed as Keras 3 computes them on TensorFlow.

``schedule(step)`` returns a ``numpy.float32`` equal, bit for bit, to what
``keras.optimizers.schedules`` returns for a Python-float ``initial_learning_rate`` on the
TensorFlow backend, eagerly: every argument is rounded to float32 first, and each operation runs
in float32 in Keras's order. TensorFlow's CPU kernels evaluate ``cos``, ``log`` and ``pow`` of a
scalar with the C library's ``cosf``, ``logf`` and ``powf``, so these schedules call the same
functions (measured bitwise on glibc). Where no C math library can be loaded (Windows), they fall
back to float64 NumPy rounded to float32, which differs from those functions by at most 1 ulp
(on 600 arguments each: ``powf`` 0 differences, ``cosf`` 13, ``logf`` 2); a schedule's result
then differs from Keras's by at most 1 ulp, 4 for ``CosineDecayRestarts`` (measured over the
tests' 83 configurations, steps 0 to 300).

Compiled with XLA (``jit_compile=True``), TensorFlow's results are not its eager ones: XLA has
its own ``cos`` and rewrites ``x / c`` as ``x * (1 / c)``, so the cosine schedules differ by up to
hundreds of ulps and ``PolynomialDecay(cycle=True)`` can jump a whole cycle at a multiple of
``decay_steps``. These schedules follow eager TensorFlow.

Deliberate differences from Keras 3:

- Keras computes in the dtype of ``initial_learning_rate``: a Python int makes it compute in
  int32 (``decay_rate=0.5`` becomes 0) and a ``numpy.float64`` in float64. Here it is always
  float32, Keras's dtype for a Python float.
- ``name=None`` means the class's default name. Keras 3 accepts ``None`` but its ``__call__``
  then raises; tf-keras's default name is ``None``, so this is what lets tf-keras configs run.
- Arguments are type-checked when the schedule is made (Keras fails at the first call, or not at
  all): numbers must be real, ``staircase``/``cycle`` bools, and ``PiecewiseConstantDecay``'s
  ``values`` all ints or all floats (Keras raises at its first call when they mix).

tf-keras 2.21 (``tf_keras/src/optimizers/schedules``) has the same six classes, arguments and
config keys, and the same arithmetic except that:

- every ``name`` defaults to ``None`` (see above);
- it does not check ``decay_steps > 0``, so a tf-keras config with ``decay_steps=0`` loads
  there but raises ``ValueError`` here, as in Keras 3;
- ``PiecewiseConstantDecay`` selects the value with ``tf.case``; Keras 3 sums
  ``(condition) * value``, so an inf or nan among ``values`` makes every step nan in Keras 3
  (and here), and a ``-0.0`` value comes out as ``0.0``;
- it also has ``LinearCosineDecay`` and ``NoisyLinearCosineDecay`` (not exported, used by the
  V1 APIs); Keras 3 has neither, and ``deserialize`` refuses them.
"""
from __future__ import annotations

import ctypes
import ctypes.util
import math
import numbers
from typing import Any, Callable

import numpy as np


def _f32(value: Any) -> np.float32:
    """``value`` rounded to float32, as TensorFlow converts a Python number or casts a tensor."""
    # NumPy >= 2.3's stubs need typing.Self (Python 3.11); under mypy's python_version 3.10 its
    # scalars are Any, hence the ignore (and unused-ignore for older NumPy).
    return np.float32(value)  # type: ignore[no-any-return, unused-ignore]


_PI = _f32(math.pi)


def _load_libm() -> ctypes.CDLL | None:
    try:
        return ctypes.CDLL("libm.so.6")  # glibc, without find_library's run of ldconfig
    except OSError:
        path = ctypes.util.find_library("m")
    try:
        return ctypes.CDLL(path) if path else None
    except OSError:
        return None


def _c_float_functions() -> tuple[Callable[..., Any], ...] | None:
    """The C library's ``cosf``, ``logf`` and ``powf`` (TensorFlow's scalar kernels call them), or
    None where there is no C math library to load."""
    libm = _load_libm()
    try:
        functions = libm.cosf, libm.logf, libm.powf  # type: ignore[union-attr]
    except AttributeError:  # None, or a library without them
        return None
    for function, arity in zip(functions, (1, 1, 2)):
        function.restype = ctypes.c_float
        function.argtypes = [ctypes.c_float] * arity
    return functions


# ctypes returns the C float as a Python float, so rounding it to float32 again is exact.
_C_FUNCTIONS = _c_float_functions()
if _C_FUNCTIONS is not None:
    _cosf, _logf, _powf = _C_FUNCTIONS

    def _cos(x: np.float32) -> np.float32:
        return _f32(_cosf(x))

    def _log(x: np.float32) -> np.float32:
        return _f32(_logf(x))

    def _pow(x: np.float32, y: np.float32) -> np.float32:
        return _f32(_powf(x, y))

else:  # pragma: no cover - platforms without a loadable C math library

    def _cos(x: np.float32) -> np.float32:
        return _f32(np.cos(np.float64(x)))

    def _log(x: np.float32) -> np.float32:
        return _f32(np.log(np.float64(x)))

    def _pow(x: np.float32, y: np.float32) -> np.float32:
        return _f32(np.power(np.float64(x), np.float64(y)))


def _is_number(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _check_number(argument: str, value: Any, *, optional: bool = False) -> None:
    if not (_is_number(value) or (optional and value is None)):
        kind = "a number or None" if optional else "a number"
        raise TypeError(f"Argument `{argument}` must be {kind}. Received: {argument}={value!r}")


def _check_positive(argument: str, value: Any) -> None:
    """Keras 3's own check, with its message."""
    _check_number(argument, value)
    if value <= 0:
        raise ValueError(f"Argument `{argument}` must be > 0. Received: {argument}={value}")


def _check_bool(argument: str, value: Any) -> None:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"Argument `{argument}` must be a bool. Received: {argument}={value!r}")


def _check_name(name: Any, default: str) -> str:
    """Keras 3's name-scope rule, checked now rather than at the first call."""
    if name is None:
        return default
    if not isinstance(name, str) or "/" in name:
        raise ValueError(
            "Argument `name` must be a string and cannot contain character `/`. "
            f"Received: name={name!r}"
        )
    return name


def _step(step: Any) -> np.float32:
    if not _is_number(step):
        raise TypeError(f"Argument `step` must be a number. Received: step={step!r}")
    return _f32(step)


class LearningRateSchedule:
    """Base class: ``schedule(step)`` is the learning rate at optimizer step ``step``."""

    def __call__(self, step: int) -> np.float32:
        raise NotImplementedError(
            f"Learning rate schedule '{type(self).__name__}' must override `__call__(self, step)`."
        )

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(
            f"Learning rate schedule '{type(self).__name__}' "
            "must override `get_config()` in order to be serializable."
        )

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LearningRateSchedule:
        return cls(**config)


class ExponentialDecay(LearningRateSchedule):
    """``initial_learning_rate * decay_rate ** p``, ``p = step / decay_steps``, floored if
    ``staircase``."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str = "ExponentialDecay",
    ) -> None:
        _check_number("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_number("decay_rate", decay_rate)
        _check_bool("staircase", staircase)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = _check_name(name, "ExponentialDecay")

    def __call__(self, step: int) -> np.float32:
        p = _step(step) / _f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return _f32(_f32(self.initial_learning_rate) * _pow(_f32(self.decay_rate), p))

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class PiecewiseConstantDecay(LearningRateSchedule):
    """``values[0]`` while ``step <= boundaries[0]``, ``values[i]`` while
    ``boundaries[i-1] < step <= boundaries[i]``, ``values[-1]`` after ``boundaries[-1]``.

    Keras casts the boundaries to the step's dtype, so with an integer step a float boundary is
    truncated (10.7 acts as 10), and it sums ``float(condition) * value`` over the intervals.
    """

    def __init__(
        self, boundaries: list[float], values: list[float], name: str = "PiecewiseConstant"
    ) -> None:
        for argument, sequence in (("boundaries", boundaries), ("values", values)):
            if not isinstance(sequence, (list, tuple)):
                raise TypeError(
                    f"Argument `{argument}` must be a list or tuple. Received: {argument}={sequence!r}"
                )
            for value in sequence:
                _check_number(argument, value)
        if len(boundaries) != len(values) - 1:
            raise ValueError(
                "The length of boundaries should be 1 less than the length of "
                f"values. Received: boundaries={boundaries} of length "
                f"{len(boundaries)}, and values={values} of length {len(values)}."
            )
        if not boundaries:
            raise ValueError("Argument `boundaries` must not be empty (Keras fails at the first call).")
        if len({isinstance(v, numbers.Integral) for v in values}) > 1:
            raise TypeError(
                f"Argument `values` must be all ints or all floats. Received: values={values}"
            )
        self.boundaries = boundaries
        self.values = values
        self.name = _check_name(name, "PiecewiseConstant")

    def __call__(self, step: int) -> np.float32:
        if isinstance(step, numbers.Integral) and not isinstance(step, (bool, np.bool_)):
            x: Any = step
            bounds: list[Any] = [int(b) for b in self.boundaries]
        else:
            x = _step(step)
            bounds = [_f32(b) for b in self.boundaries]
        values = [_f32(v) for v in self.values]
        result = _f32(0)
        with np.errstate(invalid="ignore"):  # 0 * inf is nan, silently, as in Keras
            result += _f32(x <= bounds[0]) * values[0]
            result += _f32(x > bounds[-1]) * values[-1]
            for low, high, value in zip(bounds[:-1], bounds[1:], values[1:-1]):
                result += _f32(low < x <= high) * value
        return _f32(result)

    def get_config(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "values": self.values, "name": self.name}


class PolynomialDecay(LearningRateSchedule):
    """``(initial_learning_rate - end_learning_rate) * (1 - p) ** power + end_learning_rate``,
    ``p = min(step, decay_steps) / decay_steps``; with ``cycle``, ``p = step / (decay_steps *
    max(1, ceil(step / decay_steps)))`` instead."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        end_learning_rate: float = 0.0001,
        power: float = 1.0,
        cycle: bool = False,
        name: str = "PolynomialDecay",
    ) -> None:
        _check_number("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_number("end_learning_rate", end_learning_rate)
        _check_number("power", power)
        _check_bool("cycle", cycle)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.end_learning_rate = end_learning_rate
        self.power = power
        self.cycle = cycle
        self.name = _check_name(name, "PolynomialDecay")

    def __call__(self, step: int) -> np.float32:
        end = _f32(self.end_learning_rate)
        s = _step(step)
        decay_steps = _f32(self.decay_steps)
        if self.cycle:
            multiplier = _f32(1) if s == 0 else np.ceil(s / decay_steps)
            decay_steps = decay_steps * multiplier
        else:
            s = min(s, decay_steps)
        p = s / decay_steps
        return _f32((_f32(self.initial_learning_rate) - end) * _pow(_f32(1) - p, _f32(self.power)) + end)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "end_learning_rate": self.end_learning_rate,
            "power": self.power,
            "cycle": self.cycle,
            "name": self.name,
        }


class InverseTimeDecay(LearningRateSchedule):
    """``initial_learning_rate / (1 + decay_rate * p)``, ``p = step / decay_steps``, floored if
    ``staircase``."""

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        decay_rate: float,
        staircase: bool = False,
        name: str = "InverseTimeDecay",
    ) -> None:
        _check_number("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_number("decay_rate", decay_rate)
        _check_bool("staircase", staircase)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.decay_rate = decay_rate
        self.staircase = staircase
        self.name = _check_name(name, "InverseTimeDecay")

    def __call__(self, step: int) -> np.float32:
        p = _step(step) / _f32(self.decay_steps)
        if self.staircase:
            p = np.floor(p)
        return _f32(_f32(self.initial_learning_rate) / (_f32(1) + _f32(self.decay_rate) * p))

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "decay_rate": self.decay_rate,
            "staircase": self.staircase,
            "name": self.name,
        }


class CosineDecay(LearningRateSchedule):
    """Cosine decay, after an optional linear warmup.

    Without ``warmup_target``: ``initial_learning_rate * decayed(min(step, decay_steps))``, where
    ``decayed(s) = (1 - alpha) * 0.5 * (1 + cos(pi * s / decay_steps)) + alpha``.
    With it, ``s = min(step, decay_steps + warmup_steps)``; while ``s < warmup_steps`` the rate is
    ``(warmup_target - initial_learning_rate) * s / warmup_steps + initial_learning_rate``, then
    ``warmup_target * decayed(s - warmup_steps)``.

    Keras evaluates ``1 - alpha`` as a Python float (rounded to float32 once), unlike
    ``CosineDecayRestarts``, which subtracts in float32.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        decay_steps: float,
        alpha: float = 0.0,
        name: str = "CosineDecay",
        warmup_target: float | None = None,
        warmup_steps: float = 0,
    ) -> None:
        _check_number("initial_learning_rate", initial_learning_rate)
        _check_positive("decay_steps", decay_steps)
        _check_number("alpha", alpha)
        _check_number("warmup_target", warmup_target, optional=True)
        _check_number("warmup_steps", warmup_steps)
        self.initial_learning_rate = initial_learning_rate
        self.decay_steps = decay_steps
        self.alpha = alpha
        self.name = _check_name(name, "CosineDecay")
        self.warmup_steps = warmup_steps
        self.warmup_target = warmup_target

    def _decayed(self, s: np.float32, decay_steps: np.float32, decay_from: np.float32) -> np.float32:
        cosine = _f32(0.5) * (_f32(1) + _cos(_PI * (s / decay_steps)))
        return _f32(decay_from * (_f32(1 - self.alpha) * cosine + _f32(self.alpha)))

    def __call__(self, step: int) -> np.float32:
        initial = _f32(self.initial_learning_rate)
        decay_steps = _f32(self.decay_steps)
        s = _step(step)
        if self.warmup_target is None:
            return self._decayed(min(s, decay_steps), decay_steps, initial)
        target = _f32(self.warmup_target)
        warmup_steps = _f32(self.warmup_steps)
        s = min(s, decay_steps + warmup_steps)
        if s < warmup_steps:
            return _f32((target - initial) * (s / warmup_steps) + initial)
        return self._decayed(s - warmup_steps, decay_steps, target)

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "decay_steps": self.decay_steps,
            "alpha": self.alpha,
            "name": self.name,
            "warmup_target": self.warmup_target,
            "warmup_steps": self.warmup_steps,
        }


class CosineDecayRestarts(LearningRateSchedule):
    """SGDR: cosine decay from 1 to ``alpha`` over periods that grow by ``t_mul``, each
    restarting at ``m_mul`` times the previous peak.

    With ``f = step / first_decay_steps`` the period index is ``i = floor(f)`` when
    ``t_mul == 1``, otherwise ``i = floor(log(1 - f * (1 - t_mul)) / log(t_mul))`` and
    ``f = (f - (1 - t_mul**i) / (1 - t_mul)) / t_mul**i`` (the fraction of period ``i`` done);
    the rate is ``initial_learning_rate * ((1 - alpha) * 0.5 * m_mul**i * (1 + cos(pi * f)) +
    alpha)``.
    """

    def __init__(
        self,
        initial_learning_rate: float,
        first_decay_steps: float,
        t_mul: float = 2.0,
        m_mul: float = 1.0,
        alpha: float = 0.0,
        name: str = "SGDRDecay",
    ) -> None:
        _check_number("initial_learning_rate", initial_learning_rate)
        _check_positive("first_decay_steps", first_decay_steps)
        for argument, value in (("t_mul", t_mul), ("m_mul", m_mul), ("alpha", alpha)):
            _check_number(argument, value)
        self.initial_learning_rate = initial_learning_rate
        self.first_decay_steps = first_decay_steps
        self._t_mul = t_mul
        self._m_mul = m_mul
        self.alpha = alpha
        self.name = _check_name(name, "SGDRDecay")

    def __call__(self, step: int) -> np.float32:
        one = _f32(1)
        alpha, t_mul = _f32(self.alpha), _f32(self._t_mul)
        fraction = _step(step) / _f32(self.first_decay_steps)
        if t_mul == one:
            restart = np.floor(fraction)
            fraction = fraction - restart
        else:
            restart = np.floor(_log(one - fraction * (one - t_mul)) / _log(t_mul))
            done = (one - _pow(t_mul, restart)) / (one - t_mul)
            fraction = (fraction - done) / _pow(t_mul, restart)
        cosine = _f32(0.5) * _pow(_f32(self._m_mul), restart) * (one + _cos(_PI * fraction))
        return _f32(_f32(self.initial_learning_rate) * ((one - alpha) * cosine + alpha))

    def get_config(self) -> dict[str, Any]:
        return {
            "initial_learning_rate": self.initial_learning_rate,
            "first_decay_steps": self.first_decay_steps,
            "t_mul": self._t_mul,
            "m_mul": self._m_mul,
            "alpha": self.alpha,
            "name": self.name,
        }


SCHEDULES: dict[str, type[LearningRateSchedule]] = {
    cls.__name__: cls
    for cls in (
        ExponentialDecay,
        PiecewiseConstantDecay,
        PolynomialDecay,
        InverseTimeDecay,
        CosineDecay,
        CosineDecayRestarts,
    )
}
#: The ``module`` Keras 3 and tf-keras write; Keras 3 also resolves its source module's path.
_MODULES = (
    None,
    "keras.optimizers.schedules",
    "keras.src.optimizers.schedules.learning_rate_schedule",
)


def _plain(value: Any) -> Any:
    """Config values as Keras's ``serialize_keras_object`` writes them: NumPy scalars as Python
    scalars, lists and tuples kept."""
    if isinstance(value, (list, tuple)):
        return type(value)(_plain(v) for v in value)
    if isinstance(value, np.generic) and not isinstance(value, (str, int, float, bool)):
        return value.item()
    return value


def serialize(schedule: LearningRateSchedule) -> dict[str, Any]:
    """``keras.optimizers.schedules.serialize(schedule)``, Keras 3's form."""
    if type(schedule) not in SCHEDULES.values():
        raise ValueError(
            f"Can only serialize Keras 3's built-in schedules, not {type(schedule).__name__!r}."
        )
    return {
        "module": "keras.optimizers.schedules",
        "class_name": type(schedule).__name__,
        "config": {key: _plain(value) for key, value in schedule.get_config().items()},
        "registered_name": None,
    }


def deserialize(config: dict[str, Any]) -> LearningRateSchedule:
    """A schedule from Keras 3's ``serialize`` output or tf-keras's (either format)."""
    if not isinstance(config, dict) or not isinstance(config.get("config"), dict):
        raise TypeError(
            "A serialized schedule is a dict with 'class_name' and a 'config' dict. "
            f"Received: {config!r}"
        )
    class_name = config.get("class_name")
    cls = SCHEDULES.get(class_name) if isinstance(class_name, str) else None
    registered = config.get("registered_name")
    if cls is None or config.get("module") not in _MODULES or registered not in (None, class_name):
        raise ValueError(
            f"Unknown learning rate schedule {class_name!r} (module {config.get('module')!r}, "
            f"registered_name {registered!r}): only Keras 3's built-in "
            f"schedules can be deserialized: {', '.join(SCHEDULES)}."
        )
    return cls.from_config(config["config"])
