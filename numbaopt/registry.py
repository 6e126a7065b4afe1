"""The one list of optimizers, and Keras's ``serialize`` / ``deserialize`` / ``get`` over it.

An optimizer class registers itself when its module is imported (``Optimizer`` registers
every subclass that defines its own ``rule``); ``numbaopt.optimizers`` imports every module
of its package, so once it is imported the registry lists every optimizer. Tests, the
capture script, benchmarks and docs checks derive their lists from ``registered()``.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, TypeVar

# The registry sits below the optimizers (it may not import ``numbaopt.optimizers.base``),
# so a class here is ``type[Any]`` and an optimizer ``Any``: ``checkpoint`` and the
# optimizers give the precise types.
_C = TypeVar("_C", bound=type)

#: Registered optimizers by lower-case qualified name (``qualified_name``), in the order
#: their modules were imported.
_CLASSES: dict[str, type[Any]] = {}

#: The families of optimizers: Keras 2.0's (``numbaopt.optimizers``), Keras 3's
#: (``numbaopt.keras3``) and torch.optim's (``numbaopt.torch_optim``). A class says its
#: family in its ``family`` attribute.
FAMILIES = ("keras2", "keras3", "torch_optim")


def family_of(cls: type[Any]) -> str:
    """The family of optimizer class ``cls`` (``"keras2"`` unless it says otherwise)."""
    family: str = getattr(cls, "family", "keras2")
    return family


def qualified_name(cls: type[Any]) -> str:
    """The name a class is registered and recorded under (checkpoints, sharded indexes):
    its class name for Keras 2.0's family, which came first, else ``family.ClassName``
    (``keras3.Adam``, ``torch_optim.Adam``), so that the families' classes of one name stay apart."""
    family = family_of(cls)
    return cls.__name__ if family == "keras2" else f"{family}.{cls.__name__}"


def register(cls: _C) -> _C:
    """Add ``cls`` to the registry under its qualified name (any case); returns ``cls``.

    A second class of the same name is refused, unless it is the same class defined again
    (a reloaded module).
    """
    key = qualified_name(cls).lower()
    known = _CLASSES.get(key)
    if known is not None and (known.__module__, known.__qualname__) != (cls.__module__, cls.__qualname__):
        raise ValueError(f"an optimizer named {cls.__name__} is already registered, from {known.__module__}")
    _CLASSES[key] = cls
    return cls


def registered(family: str = "keras2") -> tuple[type[Any], ...]:
    """Every registered optimizer class of ``family`` (``FAMILIES``)."""
    return tuple(cls for cls in _CLASSES.values() if family_of(cls) == family)


def rule_based(family: str = "keras2") -> tuple[type[Any], ...]:
    """The registered optimizers of ``family`` whose update numbaopt's kernels run: an
    element rule, or phases (``numbaopt.phases``); not ``TFOptimizer``."""
    return tuple(
        cls for cls in registered(family)
        if getattr(cls, "rule", None) is not None or bool(getattr(cls, "phases", ()))
    )


def optimizer_class(
    name: str, custom_objects: Mapping[str, type[Any]] | None = None, family: str = "keras2"
) -> type[Any]:
    """The optimizer class registered as ``name`` (any case): a class name of ``family``,
    or a qualified name (``keras3.AdamW``) of any family; else a ValueError."""
    if custom_objects and name in custom_objects:
        return custom_objects[name]
    key = str(name).lower()
    if family != "keras2" and "." not in key:
        key = f"{family}.{key}"
    try:
        return _CLASSES[key]
    except KeyError:
        known = ", ".join(cls.__name__ for cls in registered(family))
        raise ValueError(f"Unknown optimizer: {name!r} (known: {known})") from None


def serialize(optimizer: Any) -> dict[str, Any]:
    """``{"class_name": ..., "config": ...}`` for ``optimizer``."""
    return {"class_name": type(optimizer).__name__, "config": optimizer.get_config()}


def deserialize(config: dict[str, Any], custom_objects: Mapping[str, type[Any]] | None = None) -> Any:
    """The optimizer described by ``serialize``'s output; the class name matches in any case."""
    if not isinstance(config, dict) or "class_name" not in config:
        raise ValueError(f"an optimizer description is a dict with 'class_name' and 'config', got {config!r}")
    cls = optimizer_class(config["class_name"], custom_objects)
    return cls.from_config(config.get("config") or {})


def get(identifier: object) -> Any:
    """An optimizer from a name (defaults), a serialized dict, an optimizer (returned as is),
    or a TensorFlow optimizer (wrapped in ``TFOptimizer``)."""
    if _is_tensorflow_optimizer(identifier):
        return optimizer_class("tfoptimizer")(identifier)
    if isinstance(identifier, registered()):
        return identifier
    if isinstance(identifier, dict):
        return deserialize(identifier)
    if isinstance(identifier, str):
        return deserialize({"class_name": identifier, "config": {}})
    raise ValueError(f"Could not interpret optimizer identifier: {identifier!r}")


def _is_tensorflow_optimizer(obj: object) -> bool:
    """Whether ``obj`` is an optimizer of TensorFlow or a Keras on TensorFlow (checked
    without importing TensorFlow)."""
    roots = ("tensorflow", "tf_keras", "keras")
    return any(
        klass.__module__.split(".")[0] in roots and "optimizer" in klass.__name__.lower()
        for klass in type(obj).__mro__
    )
