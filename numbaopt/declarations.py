"""What an optimizer class declares about itself beyond its arguments, slots and rule: plain data.

An optimizer module (``numbaopt.optimizers.<name>``) holds everything numbaopt knows about
its optimizer, so the modules that read Keras files and configs (``keras_files``,
``keras_config``) and the torch adapter (``numbaopt.torch``) name no optimizer: they read
these declarations. Each is a class attribute; a class that declares none gets the
default (read with ``keras_description(cls)`` and ``scalar_state_advances_with(cls)``):

``keras: KerasDescription``
    What later Kerases make of a Keras 2.0 optimizer: tf-keras's legacy class of the same
    name, whose update is Keras 2.0's (``KerasClass``: its slot names, the settings it
    rounds through float32), or why that class is refused; the keys of later configs that
    are inert at some values; a setting they store under another key; a slot Keras does
    not keep at some settings; a setting held by the slots' initial value. Default:
    ``KerasDescription()``, nothing imported from Keras files. (tf-keras's new-style
    optimizers and Keras 3's are a family of their own, ``numbaopt.keras3``.)

``scalar_state_advances_with: Mapping[str, tuple[str, ...]]``
    Per scalar state (``scalar_state``, shared by every parameter), the hyperparameters it
    advances with: torch param groups may not set those apart. Default: none.

It sits below the optimizers (it imports nothing of numbaopt), so their modules can
declare with these records.
"""
from __future__ import annotations

from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple

#: The Keras generations whose classes import into Keras 2.0's optimizers: tf-keras's
#: ``optimizers.legacy`` (OptimizerV2).
GENERATIONS = ("legacy",)

_NOTHING: Mapping[str, Any] = MappingProxyType({})


class KerasClass(NamedTuple):
    """One Keras generation's class of the optimizer's name, whose update is Keras 2.0's."""

    #: numbaopt slot kind -> the name Keras gives the slot, in Keras's order of the kinds.
    slots: Mapping[str, str]
    #: numbaopt scalar state -> the name of the Keras weight that holds it (a legacy ``.h5``
    #: writes it as ``<optimizer name>/<weight name>:0``).
    scalars: Mapping[str, str] = _NOTHING
    #: Settings Keras reads only through ``tf.cast(python_float, dtype)``, which rounds them
    #: to float32 first: in a float64 model the arithmetic uses float32(value).
    float32_settings: tuple[str, ...] = ()
    #: A constant of the update that a float64 model uses both float32-rounded and exactly
    #: (in words, e.g. "its schedule constant 0.96"): the class is refused in a float64 model.
    mixed_constant: str = ""


class KerasDescription(NamedTuple):
    """What later Kerases make of an optimizer (the class attribute ``keras``)."""

    #: Generation (``GENERATIONS``) -> its class of this name, imported from its model files.
    imported: Mapping[str, KerasClass] = _NOTHING
    #: Generation -> why its class of this name is not Keras 2.0's (refused, naming the reason).
    refused: Mapping[str, str] = _NOTHING
    #: Keys of later Keras configs that have no effect at the listed values (another value is
    #: refused), beyond those every optimizer's config has (``keras_config``).
    inert: Mapping[str, tuple[Any, ...]] = _NOTHING
    #: A key under which a later Keras stores one of this class's settings -> that setting.
    #: A config with the setting's own key too is built from it (the other is overwritten).
    renamed: Mapping[str, str] = _NOTHING
    #: Slot kind -> the setting at whose value 0 the slot has no effect, and Keras keeps none.
    unused_slots: Mapping[str, str] = _NOTHING
    #: Settings whose only effect is the slots' initial value: a file that holds the slots
    #: holds the setting already.
    in_slots: tuple[str, ...] = ()


#: The description of a class that declares none: nothing is imported from Keras files.
NO_KERAS = KerasDescription()


def keras_description(cls: type[Any]) -> KerasDescription:
    """The ``keras`` declaration of the optimizer class ``cls``, or ``NO_KERAS``."""
    description = getattr(cls, "keras", NO_KERAS)
    if not isinstance(description, KerasDescription):
        raise TypeError(f"{cls.__name__}.keras must be a numbaopt.declarations.KerasDescription, got {description!r:.80}")
    return description


def scalar_state_advances_with(cls: type[Any]) -> Mapping[str, tuple[str, ...]]:
    """The ``scalar_state_advances_with`` declaration of the optimizer class ``cls`` (none by default)."""
    declared: Mapping[str, tuple[str, ...]] = getattr(cls, "scalar_state_advances_with", _NOTHING)
    return declared
