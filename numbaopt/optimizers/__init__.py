"""The optimizers, and Keras's ``serialize`` / ``deserialize`` / ``get``.

Every module of this package is imported here, and each optimizer class registers itself
(``numbaopt.registry``): adding an optimizer is adding its module, nothing else. The
classes are then attributes of this package by their Keras names (``optimizers.Adam``).
``registered()`` and ``rule_based()`` list them (the registry is complete once this package
is imported). None of this imports Numba or TensorFlow.
"""
import importlib
import pkgutil

from numbaopt.optimizers.base import Optimizer
from numbaopt.state import OptimizerState
from numbaopt.registry import deserialize, get, registered, rule_based, serialize

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

globals().update({cls.__name__: cls for cls in registered()})

__all__ = ["Optimizer", "OptimizerState", *(cls.__name__ for cls in registered()), "serialize", "deserialize", "get",
           "registered", "rule_based"]
