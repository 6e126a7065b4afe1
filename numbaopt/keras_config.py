"""Configs recorded by later Keras versions (tf-keras, Keras 3), mapped onto Keras 2.0 arguments.

Their configs carry more keys than Keras 2.0's. ``keras2_arguments`` maps them: a key that
names a Keras 2.0 setting is renamed, a key with no effect at its recorded value is dropped,
and a setting numbaopt cannot honour is refused with a ValueError that says why. It reads
only the class's name, declared hyperparameters and ``keras`` declaration (its own inert
keys and renamed settings, ``numbaopt.declarations``), so it sits below the optimizers.
"""
from __future__ import annotations

from typing import Any

from numbaopt.declarations import keras_description

_ANY = object()

#: Keys of later Keras configs with no effect here, and the values at which that holds
#: (``_ANY``: every value). A listed key at another value is refused.
_INERT_KEYS: dict[str, Any] = {
    "name": _ANY,
    "is_legacy_optimizer": _ANY,
    "jit_compile": _ANY,
    "ema_momentum": _ANY,
    "ema_overwrite_frequency": _ANY,
    "use_ema": (False,),
    "weight_decay": (None, 0, 0.0),
    "loss_scale_factor": (None,),
    "gradient_accumulation_steps": (None,),
    "global_clipnorm": (None,),
    "clipnorm": (None,),
    "clipvalue": (None,),
}

#: Keys that mark a config as written by a later Keras rather than Keras 2.0.
_LATER_KERAS_KEYS = ("name", "learning_rate", "is_legacy_optimizer", "global_clipnorm")


def keras2_arguments(cls: type[Any], config: dict[str, Any]) -> dict[str, Any]:
    """Constructor arguments of ``cls`` for a config from Keras 2.0 or a later Keras."""
    if not isinstance(config, dict):
        raise TypeError(f"an optimizer config must be a dict, got {type(config).__name__}")
    later_keras = any(key in config for key in _LATER_KERAS_KEYS)
    declared = {h.name for h in cls.hyperparameters} | {"clipnorm", "clipvalue", "learning_rate"}
    keras = keras_description(cls)  # the class's own inert keys, and settings stored under other keys
    inert_keys = {**_INERT_KEYS, **keras.inert}
    arguments: dict[str, Any] = {}
    for key, value in config.items():
        if key in ("clipnorm", "clipvalue", "global_clipnorm") and value is None:
            continue  # later Keras writes None for "off"
        if later_keras and key == "clipnorm":
            raise ValueError(
                "this config comes from a later Keras, whose clipnorm clips each gradient by its own "
                "norm; numbaopt (Keras 2.0) clips by the global norm of all gradients, which later "
                "Keras calls global_clipnorm"
            )
        if key == "global_clipnorm":
            arguments["clipnorm"] = value
        elif later_keras and key in keras.renamed and keras.renamed[key] not in config:
            arguments[keras.renamed[key]] = value  # a setting a later Keras stores under another key
        elif key in declared or key not in inert_keys:
            arguments[key] = value  # an unknown key reaches the constructor, which refuses it
        elif inert_keys[key] is not _ANY and value not in inert_keys[key]:
            raise ValueError(f"{cls.__name__} cannot honour {key}={value!r}: Keras 2.0 has no such setting")
    return arguments
