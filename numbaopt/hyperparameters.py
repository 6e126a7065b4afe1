"""Hyperparameters: declared with their Keras names, defaults and ranges, checked, bound
to constructor arguments by Keras 2.0's rules, and read by ``step_scalars`` (``StepInputs``).

Below the optimizers: it knows no optimizer, only declarations.
"""
from __future__ import annotations

import math
import numbers
from collections.abc import Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

from numbaopt.schedules import decayed_lr


class Hyperparameter(NamedTuple):
    """A constructor argument: its Keras 2.0 name, default and valid range.

    ``kind`` is ``"nonnegative"`` (a finite float >= 0), ``"fraction"`` (a float in
    [0, 1), for the betas), ``"flag"`` (a bool), ``"device"`` ("auto", "cpu" or "cuda")
    or ``"slot_dtype"`` (None or one of ``SLOT_DTYPES``).
    """

    name: str
    default: Any
    kind: str = "nonnegative"

    def check(self, value: object) -> float | bool | str:
        """``value`` as a plain float or bool, or a TypeError / ValueError naming it."""
        if self.kind == "device":
            if not isinstance(value, str) or value not in ("auto", "cpu", "cuda"):
                raise ValueError(f"{self.name} must be 'auto', 'cpu' or 'cuda', got {value!r}")
            return value
        if self.kind == "slot_dtype":
            name = value if value is None or isinstance(value, str) else _dtype_name(value)
            if name is not None and name not in SLOT_DTYPES:
                raise ValueError(f"{self.name} must be None or one of {SLOT_DTYPES} (or a NumPy or torch float32 or "
                                 f"bfloat16 dtype), got {value!r}")
            return name  # type: ignore[return-value]  # None: as declared
        if self.kind == "flag":
            if value is None and self.default is None:  # a setting that is off unless given
                return None  # type: ignore[return-value]
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{self.name} must be a bool, got {value!r}")
            return bool(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name} must be a real number, got {value!r}")
        try:
            value = float(value)
        except OverflowError:  # an int or Fraction beyond the float range
            raise ValueError(f"{self.name} must be finite, got a number too large for a float") from None
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value!r}")
        if value < 0:
            raise ValueError(f"{self.name} must be >= 0, got {value!r}")
        if self.kind == "fraction" and value >= 1:
            raise ValueError(f"{self.name} must be in [0, 1), got {value!r}")
        return value


def _dtype_name(value: object) -> str:
    """The name of the dtype ``value`` (``np.float32``, ``ml_dtypes.bfloat16``,
    ``torch.bfloat16``): the ``slot_dtype`` it means, or ``""`` for none."""
    if type(value).__module__ == "torch":  # torch's dtypes print as "torch.bfloat16"; NumPy does not know them
        return str(value).removeprefix("torch.")
    try:
        return np.dtype(value).name  # type: ignore[call-overload, no-any-return]
    except (TypeError, ValueError):
        return ""


#: Keyword arguments every optimizer accepts besides its own (Keras 2.0: clipnorm, clipvalue).
CLIPPING = (Hyperparameter("clipnorm", None), Hyperparameter("clipvalue", None))

#: Where the step runs: "auto" (where the parameters live), or "cpu" / "cuda" to force and
#: check that. In the config only when given, like the clip settings.
DEVICE = (Hyperparameter("device", None, "device"),)

#: How the slots are kept: None (as declared: the parameters' dtype, float32 for 16-bit
#: parameters), float32, bfloat16, or 8-bit block-wise quantization (``numbaopt.quantization``).
SLOT_DTYPES = ("float32", "bfloat16", "q8")

#: numbaopt's memory settings, which every optimizer takes: ``slot_dtype`` (fixed once the
#: optimizer is built) and ``stochastic_rounding`` of 16-bit parameters. In the config only
#: when given, like the device.
MEMORY = (Hyperparameter("slot_dtype", None, "slot_dtype"), Hyperparameter("stochastic_rounding", None, "flag"))

#: Later Keras versions spell ``lr`` as ``learning_rate``; both name the same setting.
ALIASES = {"learning_rate": "lr"}




class StepInputs(Mapping[str, Any]):
    """What ``step_scalars`` computes from, read as attributes: the hyperparameters
    (``h.lr``, ``h.beta_1``), ``h.iterations`` (the steps done before this one) and
    ``h.scalars`` (the extra scalar state, by name). A read-only mapping of the hyperparameters."""

    def __init__(self, hyper: Mapping[str, Any], iterations: int, scalars: Mapping[str, float]) -> None:
        # The hyperparameters become instance attributes: read several times a step, an
        # attribute is a dict lookup where ``__getattr__`` would be a call.
        attributes = self.__dict__
        attributes.update(hyper)
        for alias, name in ALIASES.items():
            if name in hyper:
                attributes[alias] = hyper[name]
        self._hyper, self.iterations, self.scalars = hyper, iterations, scalars

    def __getattr__(self, name: str) -> Any:  # only for names that are not hyperparameters
        raise AttributeError(f"no hyperparameter {name!r}")

    def __getitem__(self, name: str) -> Any:
        return self._hyper[name]

    def get(self, name: str, default: Any = None) -> Any:
        return self._hyper.get(name, default)

    def __iter__(self) -> Iterator[str]:
        return iter(self._hyper)

    def __len__(self) -> int:
        return len(self._hyper)

    def decayed_lr(self, dtype: type[np.floating[Any]]) -> np.floating[Any]:
        """The learning rate of this step after Keras 2.0's decay, in ``dtype``."""
        return decayed_lr(self._hyper["lr"], self._hyper.get("decay", 0.0), self.iterations, dtype)


def hyperparameter_property(name: str) -> property:
    """The attribute ``opt.<name>``: the hyperparameter's value. A clip left off has none:
    AttributeError, from ``Optimizer.__getattr__`` (which Python asks next)."""

    def value(self: Any) -> Any:
        try:
            return self.__dict__["_hyper"][name]
        except KeyError:
            raise AttributeError(name) from None

    return property(value, doc=f"The hyperparameter ``{name}``; assigning it checks the value.")


def bind_arguments(
    owner: str, declared: tuple[Hyperparameter, ...], args: tuple[Any, ...], kwargs: Mapping[str, Any]
) -> dict[str, Any]:
    """Keras 2.0's constructor rules: positional in declared order, clip keywords, TypeError otherwise."""
    names = [h.name for h in declared]
    if len(args) > len(names):
        raise TypeError(
            f"{owner} takes at most {len(names)} positional arguments "
            f"({', '.join(names)}), got {len(args)}"
        )
    given = dict(zip(names, args))
    for key, value in kwargs.items():
        name = ALIASES.get(key, key)
        if name not in names and name not in ("clipnorm", "clipvalue", "device", "slot_dtype", "stochastic_rounding"):
            raise TypeError(f"Unexpected keyword argument passed to optimizer {owner}: {key}")
        if name in given:
            raise TypeError(f"{owner} got multiple values for argument {name!r}")
        given[name] = value
    checked: dict[str, Any] = {}
    for h in declared + CLIPPING + DEVICE + MEMORY:
        if h.name in given and given[h.name] is None and h in MEMORY:
            continue  # None is the default, absent from the config
        if h.name in given:
            checked[h.name] = h.check(given[h.name])
        elif h.default is not None:
            checked[h.name] = h.default
    return checked
