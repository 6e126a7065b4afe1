"""numbaopt's optimizers as PyTorch optimizers: ``import numbaopt.torch as nt``.

``nt.Adam(model.parameters(), lr=1e-3, clipnorm=1.0)`` is a ``torch.optim.Optimizer``
whose step is numbaopt's kernels on the tensors' own memory, bitwise the step of
``numbaopt.optimizers.Adam`` on the same data (see ``docs/torch.md``). Needs torch (the
``torch`` extra: from a checkout, ``pip install ".[torch]"``).
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

from numbaopt.optimizers import adadelta, adagrad, adam, adamax, nadam, rmsprop, sgd
from numbaopt.checkpoint import CheckpointError, read_checkpoint
from numbaopt.torch.optimizer import STATE_KEY, TorchOptimizer

__all__ = ["SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "Adamax", "Nadam", "TorchOptimizer", "load_optimizer"]


class SGD(TorchOptimizer, core=sgd.SGD):
    """Keras 2.0's SGD (momentum, Nesterov, decay) as a torch optimizer."""


class RMSprop(TorchOptimizer, core=rmsprop.RMSprop):
    """Keras 2.0's RMSprop as a torch optimizer."""


class Adagrad(TorchOptimizer, core=adagrad.Adagrad):
    """Keras 2.0's Adagrad as a torch optimizer."""


class Adadelta(TorchOptimizer, core=adadelta.Adadelta):
    """Keras 2.0's Adadelta as a torch optimizer."""


class Adam(TorchOptimizer, core=adam.Adam):
    """Keras 2.0's Adam as a torch optimizer."""


class Adamax(TorchOptimizer, core=adamax.Adamax):
    """Keras 2.0's Adamax as a torch optimizer."""


class Nadam(TorchOptimizer, core=nadam.Nadam):
    """Keras 2.0's Nadam as a torch optimizer."""


def load_optimizer(path: str | os.PathLike[str], params: Iterable[Any]) -> TorchOptimizer:
    """A torch optimizer over ``params`` with the state of the numbaopt checkpoint at
    ``path``, saved from the NumPy API or from torch (``numbaopt.save_optimizer``).

    ``params`` as the constructor takes them; their number, shapes and dtypes must be the
    checkpoint's (CheckpointError otherwise).
    """
    checkpoint = read_checkpoint(path)
    cls = next((c for c in TorchOptimizer.__subclasses__() if c.core.__name__ == checkpoint.class_name), None)
    if cls is None:
        raise CheckpointError(f"{path}: holds a {checkpoint.class_name}, which has no numbaopt.torch counterpart")
    try:
        opt: TorchOptimizer = cls(params, **checkpoint.config)
        n_params = sum(len(group["params"]) for group in opt.param_groups)
        if checkpoint.parameters and n_params != len(checkpoint.parameters):
            raise ValueError(f"it holds the state of {len(checkpoint.parameters)} parameters, got {n_params} parameters")
        n_slots = len(checkpoint.parameters) if cls.core.slot_names else 0
        state = {i: {kind: torch.from_numpy(checkpoint.slots[kind][i]) for kind in cls.core.slot_names} for i in range(n_slots)}
        own = {"class_name": checkpoint.class_name, "iterations": checkpoint.iterations, "scalar_state": checkpoint.scalars}
        opt.load_state_dict({"state": state, "param_groups": opt.state_dict()["param_groups"], STATE_KEY: own})
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot load the {checkpoint.class_name} into numbaopt.torch.{cls.__name__}: {error}") from error
    return opt
