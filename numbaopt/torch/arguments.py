"""torch.optim's argument names given to a class of Keras's names: a TypeError that names Keras's.

``numbaopt.torch.Adam`` takes Keras's arguments (``beta_1``, ``epsilon``); a user who types
torch.optim's (``betas``, ``eps``) would otherwise read only "unexpected keyword argument".
"""
from __future__ import annotations

import inspect
from collections.abc import Iterable, Mapping
from typing import Any

#: torch.optim's argument: what Keras's classes call it (those a class has are named).
KERAS_NAMES: dict[str, tuple[str, ...]] = {
    "lr": ("learning_rate",),
    "betas": ("beta_1", "beta_2"),
    "eps": ("epsilon", "epsilon_1", "epsilon_2"),
    "alpha": ("rho",),
    "momentum_decay": ("schedule_decay",),
    "lr_decay": ("decay",),
    "weight_decay": ("weight_decay",),
    "initial_accumulator_value": ("initial_accumulator_value",),
    "momentum": ("momentum",),
    "nesterov": ("nesterov",),
    "amsgrad": ("amsgrad",),
}

#: torch.optim's arguments that choose an implementation or a variant Keras's classes lack.
TORCH_ONLY = ("foreach", "fused", "capturable", "differentiable", "maximize", "centered", "dampening",
              "decoupled_weight_decay")


def check_torch_arguments(name: str, core: type[Any], kwargs: Mapping[str, Any]) -> None:
    """Raise TypeError for a torch.optim argument among ``kwargs`` that ``core`` (the
    class ``name`` steps with) does not take, naming what it takes instead."""
    _check_names(name, set(inspect.signature(core).parameters) | {"learning_rate"}, kwargs)


def check_group_keys(name: str, core: type[Any], settable: Iterable[str], group: Mapping[str, Any]) -> None:
    """Raise for a key of a param group that names a setting the group cannot set: one of
    the ``core``'s that is the same for every parameter (ValueError), or a torch.optim
    argument (TypeError, as ``check_torch_arguments``). Other keys are the user's, as in torch."""
    own = set(settable) | {"params", "param_names", "betas"}
    for key in set(group) - own:
        if key in inspect.signature(core).parameters:
            raise ValueError(f"a param group of {name} cannot set {key}: it is the same for every parameter "
                             "(give it to the constructor)")
    _check_names(name, own, {key: value for key, value in group.items() if key not in own})


def _check_names(name: str, accepted: set[str], kwargs: Mapping[str, Any]) -> None:
    for argument in kwargs:
        if argument in accepted or (argument not in KERAS_NAMES and argument not in TORCH_ONLY):
            continue
        keras = [k for k in KERAS_NAMES.get(argument, ()) if k in accepted]
        if keras:
            says = f"{name} takes {' and '.join(keras)} (Keras's name{'s' if len(keras) > 1 else ''}), not {argument}"
        elif argument == "weight_decay" and "decay" in accepted:
            says = (f"{name} (Keras 2.0's) has no weight_decay: its decay is the learning rate's decay; "
                    "numbaopt.torch.keras3's classes take weight_decay")
        else:
            says = f"{name} has no {argument} (an argument of torch.optim's)"
        raise TypeError(f"{says}; numbaopt.torch.optim's classes take torch.optim's arguments")
