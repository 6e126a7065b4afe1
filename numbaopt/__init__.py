"""numbaopt: the Keras 2.0 optimizers as fast, exact, checkpointable Numba kernels.

``from numbaopt import optimizers`` gives SGD, RMSprop, Adagrad, Adadelta, Adam, Adamax,
Nadam and TFOptimizer with Keras 2.0's names, defaults and arithmetic. Importing
numbaopt imports only its version (``numbaopt.version``), compiles nothing and does not
import Numba: kernels are compiled (or loaded from the on-disk cache) on first use.
"""
from __future__ import annotations

import importlib
from typing import Any

from numbaopt.version import VERSION

__version__ = VERSION

_LAZY = {
    "optimizers": ("numbaopt.optimizers", None),
    "save_optimizer": ("numbaopt.checkpoint", "save_optimizer"),
    "load_optimizer": ("numbaopt.loading", "load_optimizer"),
    "CheckpointError": ("numbaopt.checkpoint", "CheckpointError"),
    "import_keras_optimizer": ("numbaopt.keras_files", "import_keras_optimizer"),
    "export_keras_optimizer": ("numbaopt.keras_files", "export_keras_optimizer"),
}

__all__ = ["optimizers", "save_optimizer", "load_optimizer", "CheckpointError", "__version__",
           "import_keras_optimizer", "export_keras_optimizer"]


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(f"module 'numbaopt' has no attribute {name!r}")
    module, attribute = _LAZY[name]
    value = importlib.import_module(module)
    return value if attribute is None else getattr(value, attribute)
