"""Keras 3's optimizers, exact: ``numbaopt.keras3``.

The second family beside Keras 2.0's (``numbaopt.optimizers``): Keras 3.15's fourteen
optimizers with their constructor arguments, defaults, configs and base-optimizer features
(``numbaopt.keras3.base``), each one module; learning-rate schedules in
``numbaopt.keras3.schedules``. ``serialize`` / ``deserialize`` / ``get`` speak Keras 3's
forms and read tf-keras's.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from numbaopt import registry
from numbaopt.keras3 import schedules
from numbaopt.keras3.adadelta import Adadelta
from numbaopt.keras3.adafactor import Adafactor
from numbaopt.keras3.adagrad import Adagrad
from numbaopt.keras3.adam import Adam
from numbaopt.keras3.adamax import Adamax
from numbaopt.keras3.adamw import AdamW
from numbaopt.keras3.base import Keras3Optimizer
from numbaopt.keras3.ftrl import Ftrl
from numbaopt.keras3.lamb import Lamb
from numbaopt.keras3.lion import Lion
from numbaopt.keras3.muon import Muon
from numbaopt.keras3.nadam import Nadam
from numbaopt.keras3.rmsprop import RMSprop
from numbaopt.keras3.schedule_free_adamw import ScheduleFreeAdamW
from numbaopt.keras3.sgd import SGD

__all__ = [
    "SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Ftrl", "Lion",
    "ScheduleFreeAdamW", "Lamb", "Adafactor", "Muon", "Keras3Optimizer", "deserialize", "get", "schedules", "serialize",
]

#: The module Keras 3 records for its optimizers in a serialized config.
_KERAS_MODULE = "keras.optimizers"


def serialize(optimizer: Keras3Optimizer) -> dict[str, Any]:
    """Keras 3's ``keras.optimizers.serialize``: module, class name, config."""
    if not isinstance(optimizer, Keras3Optimizer):
        raise TypeError(f"serialize takes a numbaopt.keras3 optimizer, got {type(optimizer).__name__}")
    return {"module": _KERAS_MODULE, "class_name": type(optimizer).__name__, "config": optimizer.get_config(), "registered_name": None}


def deserialize(config: Mapping[str, Any], custom_objects: Mapping[str, type[Any]] | None = None) -> Keras3Optimizer:
    """The optimizer a serialized config describes: Keras 3's form or tf-keras's
    ``{"class_name", "config"}``. A class Keras does not ship is refused (ValueError)."""
    if not isinstance(config, Mapping) or "class_name" not in config:
        raise ValueError(f"an optimizer description is a dict with 'class_name' and 'config', got {config!r:.200}")
    module = config.get("module")
    if module not in (None, _KERAS_MODULE, "keras.optimizers.legacy", "keras.src.optimizers") or config.get("registered_name") not in (None, config["class_name"]):
        raise ValueError(f"{config['class_name']!r} from {module!r} is a custom optimizer class, not one of Keras's")
    cls = registry.optimizer_class(config["class_name"], custom_objects, family="keras3")
    built: Keras3Optimizer = cls.from_config(dict(config.get("config") or {}))
    return built


def get(identifier: object) -> Keras3Optimizer | None:
    """Keras 3's ``keras.optimizers.get``: a name (defaults), a serialized dict, or an
    optimizer; None gives None, as in Keras."""
    if identifier is None:
        return None
    if isinstance(identifier, Keras3Optimizer):
        return identifier
    if isinstance(identifier, Mapping):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")
