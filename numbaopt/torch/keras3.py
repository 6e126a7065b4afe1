"""Keras 3's optimizers as PyTorch optimizers: ``numbaopt.torch.keras3.AdamW(model.parameters(),
learning_rate=1e-3, weight_decay=0.004)``.

One class per registered Keras 3 optimizer (``numbaopt.registry.rule_based("keras3")``),
made from the registry when first asked for, as ``numbaopt.torch`` makes Keras 2.0's: a
``TorchOptimizer`` whose step is the ``numbaopt.keras3`` optimizer's update, bitwise, with
torch's ``lr`` in the param groups. What Keras 3 does around the update (clipping, EMA,
accumulation, loss scaling, schedules) is torch's to do here, and is refused with the torch
way to it (``Keras3Optimizer.check_part_stepping``).
"""
from __future__ import annotations

from typing import Any

from numbaopt import keras3, registry
from numbaopt.torch import torch_class


def _cores() -> dict[str, type[keras3.Keras3Optimizer]]:
    """The registered Keras 3 optimizers by class name."""
    return {cls.__name__: cls for cls in registry.rule_based("keras3")}


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return list(_cores())
    core = _cores().get(name)
    if core is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return torch_class(core)


def __dir__() -> list[str]:
    return sorted({*globals(), *_cores()})
