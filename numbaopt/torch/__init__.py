"""numbaopt's optimizers as PyTorch optimizers: ``import numbaopt.torch as nt``.

``nt.Adam(model.parameters(), lr=1e-3, clipnorm=1.0)`` is a ``torch.optim.Optimizer``
whose step is numbaopt's kernels on the tensors' own memory, bitwise the step of
``numbaopt.optimizers.Adam`` on the same data (see ``docs/torch.md``). Needs torch (the
``torch`` extra: from a checkout, ``pip install ".[torch]"``).

There is one class here per registered rule-based optimizer (``numbaopt.registry.rule_based()``),
made from the registry when it is first asked for: a ``TorchOptimizer`` subclass of the same
name whose ``core`` is that optimizer, so a newly registered optimizer is here with no edit.
"""
from __future__ import annotations

import os
from collections.abc import Iterable
from typing import Any

try:
    import torch
except ImportError as error:  # name the extra and how to install it, not only the missing module
    from numbaopt.extras import install_command

    raise ModuleNotFoundError(
        f"numbaopt.torch needs PyTorch (the torch extra), which cannot be imported ({error}): "
        f"{install_command('torch')}", name="torch"
    ) from error

from numbaopt import optimizers, quantization, registry
from numbaopt.checkpoint import CheckpointError, read_checkpoint
from numbaopt.torch.optimizer import STATE_KEY, TorchOptimizer

#: What this module defines itself; the optimizer classes come from the registry.
_OWN = ["TorchOptimizer", "load_optimizer", "torch_class"]

#: The torch class made for each core class (by the core class itself: a class registered
#: again under the same name gets a class of its own).
_MADE: dict[type[optimizers.Optimizer], type[TorchOptimizer]] = {}


def _cores() -> dict[str, type[optimizers.Optimizer]]:
    """The registered rule-based optimizers by class name."""
    return {cls.__name__: cls for cls in optimizers.rule_based()}


#: The module of each family's torch classes, where ``pickle`` finds them.
_MODULES = {"keras2": __name__, "keras3": f"{__name__}.keras3", "torch_optim": f"{__name__}.optim"}


def torch_class(core: type[optimizers.Optimizer], base: type[TorchOptimizer] = TorchOptimizer) -> type[TorchOptimizer]:
    """The ``numbaopt.torch`` class whose ``core`` is ``core`` (made on the first call), a
    subclass of ``base`` (a family's own, ``numbaopt.torch.optim``'s for torch.optim's).

    It has ``core``'s name and lives in this module (``numbaopt.torch.<name>``) for Keras
    2.0's family, in ``numbaopt.torch.keras3`` for Keras 3's, in ``numbaopt.torch.optim``
    for torch.optim's, where ``pickle`` finds it while ``core`` is registered.
    """
    made = _MADE.get(core)
    if made is None:
        if registry.family_of(core) == "torch_optim" and base is TorchOptimizer:
            raise TypeError(f"{core.__name__} keeps torch.optim's state dicts: its class is numbaopt.torch.optim.{core.__name__}")
        summary = (core.__doc__ or "").strip().split("\n")[0]
        family = registry.family_of(core)
        namespace = {
            "__module__": _MODULES[family],
            "__qualname__": core.__name__,
            "__doc__": f"numbaopt's {core.__name__} as a torch optimizer. {summary}".strip(),
        }
        made = _MADE[core] = type(core.__name__, (base,), namespace, core=core)
    return made


def __getattr__(name: str) -> Any:
    if name == "__all__":
        return [*_cores(), *_OWN]
    core = _cores().get(name)
    if core is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return torch_class(core)


def __dir__() -> list[str]:
    return sorted({*globals(), *_cores()})


def load_optimizer(path: str | os.PathLike[str], params: Iterable[Any]) -> TorchOptimizer:
    """A torch optimizer over ``params`` with the state of the numbaopt checkpoint at
    ``path``, saved from the NumPy API or from torch (``numbaopt.save_optimizer``).

    ``params`` as the constructor takes them; their number, shapes and dtypes must be the
    checkpoint's (CheckpointError otherwise).
    """
    checkpoint = read_checkpoint(path)
    core = registry.optimizer_class(checkpoint.class_name)
    if core not in registry.rule_based(registry.family_of(core)):
        raise CheckpointError(f"{path}: holds a {checkpoint.class_name}, which has no numbaopt.torch counterpart")
    if registry.family_of(core) == "torch_optim":
        raise CheckpointError(f"{path}: holds a {checkpoint.class_name}, whose torch class (numbaopt.torch.optim) resumes "
                              "from torch.optim's state dicts (state_dict / load_state_dict), not yet from a checkpoint")
    cls = torch_class(core)
    try:
        opt: TorchOptimizer = cls(params, **checkpoint.config)
        n_params = sum(len(group["params"]) for group in opt.param_groups)
        if checkpoint.parameters and n_params != len(checkpoint.parameters):
            raise ValueError(f"it holds the state of {len(checkpoint.parameters)} parameters, got {n_params} parameters")
        kinds = core.declared_slots(checkpoint.config)
        n_slots = len(checkpoint.parameters) if kinds else 0
        state = {i: {slot.name: torch.from_numpy(checkpoint.slots[slot.name][i]) for slot in kinds} for i in range(n_slots)}
        own = {"class_name": checkpoint.class_name, "iterations": checkpoint.iterations, "scalar_state": checkpoint.scalars,
               "codes": quantization.FORMAT}  # read_checkpoint converted earlier codes
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"], STATE_KEY: own})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot load the {checkpoint.class_name} into numbaopt.torch.{cls.__name__}: {error}") from error
    return opt
