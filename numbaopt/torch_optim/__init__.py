"""torch.optim's optimizers, exact, on NumPy arrays: ``numbaopt.torch_optim``.

The third family beside Keras 2.0's (``numbaopt.optimizers``) and Keras 3's
(``numbaopt.keras3``): torch.optim 2.13's optimizers with their constructor signatures,
defaults, checks and single-tensor arithmetic (``numbaopt.torch_optim.base``), each one
module. ``numbaopt.torch.optim`` makes them torch optimizers with torch's state dicts.
Importing this package imports neither torch nor Numba.
"""
from __future__ import annotations

import importlib
import pkgutil

from numbaopt import registry
from numbaopt.torch_optim.base import TorchOptimOptimizer

for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
del _module

globals().update({cls.__name__: cls for cls in registry.registered("torch_optim")})

__all__ = ["TorchOptimOptimizer", *(cls.__name__ for cls in registry.registered("torch_optim"))]
