"""Keras 3's base optimizer on numbaopt's step: what every ``numbaopt.keras3`` class shares.

A Keras 3 optimizer module declares its arguments (``arguments``, in Keras's positional
order), its slots and rule (or phases), and ``variant`` when a setting changes the slots
(Adam's ``amsgrad`` adds ``velocity_hat``). This base class gives it Keras 3's constructor
(the base arguments, ``name``, Keras's errors), ``get_config``, the learning rate (a float
kept in float32 as Keras's variable, or a schedule run at the real step count), and the
step around ``update_step`` in Keras 3's order (``BaseOptimizer.apply``, TensorFlow
backend)::

    g <- g / loss_scale_factor                    (numbaopt.keras3.gradients)
    accumulate, and on all but every n-th call stop here
    g <- clip(g)                                  clipnorm per variable | global_clipnorm | clipvalue
    p <- p - p * weight_decay * lr                in the kernel, unless the name is excluded
    p, slots <- update_step(...)                  the kernel (the optimizer's rule)
    average <- m * average + (1 - m) * p          use_ema, m = ema_momentum (0 at step 0)
    p <- average every ema_overwrite_frequency steps

The gradient settings, the averages and the accumulators run on host arrays (a copy to and
from the GPU for CUDA parameters); a step with none of them is the plain kernel step.
"""
from __future__ import annotations

import contextlib
import inspect
import math
import numbers
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, ClassVar, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from numbaopt import devices, halves, keras_weights
from numbaopt.hyperparameters import DEVICE, MEMORY, Hyperparameter, StepInputs
from numbaopt.keras3 import gradients, naming, schedules
from numbaopt.optimizers.base import Optimizer
from numbaopt.optimizers.step import locked
from numbaopt.phases import Phase
from numbaopt.state import Slot, check_slots
from numbaopt.step_checks import checked_arrays, checked_names

_O = TypeVar("_O", bound="Keras3Optimizer")


class Argument(Hyperparameter):
    """A Keras 3 constructor argument: its name, default and kind.

    Kinds beyond ``Hyperparameter``'s: ``"learning_rate"`` (a float, or a schedule of
    ``numbaopt.keras3.schedules``), ``"real"`` (any finite number), ``"unit"`` (in [0, 1]),
    ``"optional"`` (None or a number >= 0), ``"steps"`` (None or an int >= the default's
    floor, see ``check``), ``"count"`` (an int >= 0), ``"name"`` (None or a str),
    and ``"names"`` (a list of str).
    """

    def check(self, value: object) -> Any:
        checked = self._checked(value)
        # Keras keeps a number as given (an int stays an int in its config), and so do we.
        return value if type(value) is int and isinstance(checked, float) else checked

    def _checked(self, value: object) -> Any:
        kind = self.kind
        if kind == "learning_rate":
            if isinstance(value, schedules.LearningRateSchedule):
                return value
            if not isinstance(value, float):
                raise ValueError(
                    "Argument `learning_rate` should be float, or an instance of LearningRateSchedule "
                    f"(numbaopt.keras3.schedules). Received instead: learning_rate={value!r}"
                )
            return Hyperparameter(self.name, None).check(value)
        if kind == "optional":
            return None if value is None else Hyperparameter(self.name, None).check(value)
        if kind in ("real", "unit"):
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real) or not math.isfinite(float(value)):
                raise ValueError(f"{self.name} must be a finite number, got {value!r}")
            if kind == "unit" and not 0 <= float(value) <= 1:
                raise ValueError(f"{self.name} must be in [0, 1], got {value!r}")
            return float(value)
        if kind in ("steps", "count"):
            if value is None and kind == "steps":
                return None
            if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral) or int(value) < (1 if kind == "steps" else 0):
                raise ValueError(f"{self.name} must be {'None or ' if kind == 'steps' else ''}an integer >= "
                                 f"{1 if kind == 'steps' else 0}, got {value!r}")
            return int(value)
        if kind == "name":
            if value is not None and not isinstance(value, str):
                raise TypeError(f"{self.name} must be a str, got {value!r}")
            return value
        if kind == "names":
            if isinstance(value, str) or not isinstance(value, Iterable):
                raise TypeError(f"{self.name} must be a list of str, got {value!r}")
            names = list(value)
            if not all(isinstance(v, str) for v in names):
                raise TypeError(f"{self.name} must be a list of str, got {value!r}")
            return names
        return super().check(value)


#: The arguments of Keras 3's base optimizer, after each class's own, in Keras's order.
BASE_ARGUMENTS = (
    Argument("weight_decay", None, "optional"),
    Argument("clipnorm", None, "optional"),
    Argument("clipvalue", None, "optional"),
    Argument("global_clipnorm", None, "optional"),
    Argument("use_ema", False, "flag"),
    Argument("ema_momentum", 0.99, "unit"),
    Argument("ema_overwrite_frequency", None, "steps"),
    Argument("loss_scale_factor", None, "optional"),
    Argument("gradient_accumulation_steps", None, "steps"),
    Argument("name", None, "name"),
)

#: numbaopt's keyword for tf-keras's new-style optimizers (``tf_keras.optimizers``), which
#: compute a few things otherwise than Keras 3 (docs/keras3.md lists them): off by default;
#: a config written by tf-keras turns it on. In the config only when on.
TF_KERAS = Argument("tf_keras", False, "flag")

#: The base keys of Keras 3's ``get_config``, in its order (``name`` and ``learning_rate`` first).
_CONFIG_KEYS = (
    "name", "learning_rate", "weight_decay", "clipnorm", "global_clipnorm", "clipvalue", "use_ema",
    "ema_momentum", "ema_overwrite_frequency", "loss_scale_factor", "gradient_accumulation_steps",
)

#: Keys of tf-keras's new-style configs that Keras 3 has not and that change no number.
_TF_KERAS_ONLY = ("jit_compile", "is_legacy_optimizer")

#: The settings Keras 3 applies around the update (``apply``), and torch's way to each.
HOST_SETTINGS_INSTEAD = {
    "clipnorm": "clip in torch (torch.nn.utils.clip_grad_norm_ per parameter) before step()",
    "clipvalue": "clip in torch (torch.nn.utils.clip_grad_value_) before step()",
    "global_clipnorm": "clip in torch (torch.nn.utils.clip_grad_norm_) before step()",
    "use_ema": "keep the average in torch (torch.optim.swa_utils.AveragedModel)",
    "gradient_accumulation_steps": "accumulate in torch (call step() every n backward passes)",
    "loss_scale_factor": "scale in torch (torch.amp.GradScaler)",
}
HOST_SETTINGS = tuple(HOST_SETTINGS_INSTEAD) + ("ema_momentum", "ema_overwrite_frequency")

#: Checkpoint config key of the weight-decay exclusions (Keras's own saving drops them).
_EXCLUDED_KEY = "numbaopt_exclude_from_weight_decay"


#: numbaopt's keywords beside Keras 3's arguments: where to step, which tf-keras a file
#: came from, and the memory settings (``hyperparameters.MEMORY``).
EXTRAS = ("device", "tf_keras", "slot_dtype", "stochastic_rounding")


class Variant(NamedTuple):
    """The state and update an optimizer runs with at some settings."""

    slots: tuple[Slot, ...]
    rule: Callable[..., tuple[float, ...]] | None = None
    phases: tuple[Phase, ...] = ()


def host_value(backend: Any, array: Any) -> npt.NDArray[Any]:
    """``array``'s values on the host, to read and never write: the array itself on the
    CPU (no copy in the step), a copy from a GPU."""
    return array if backend is devices.CPU else backend.to_host(array)  # type: ignore[no-any-return]


def float32_setting(value: float | None, dtype: type[np.floating[Any]]) -> np.floating[Any]:
    """``ops.cast(python_float, dtype)`` on TensorFlow: the float rounded to float32 first
    (a float64 model sees float32(value)); None reads as 0."""
    rounded: np.floating[Any] = dtype(np.float32(0.0 if value is None else value))
    return rounded


class Keras3Optimizer(Optimizer):
    """Base class of ``numbaopt.keras3``'s optimizers: Keras 3's base optimizer."""

    family = "keras3"
    kernel_clipping = False
    keras2_iterations = True
    #: The class's own constructor arguments in Keras's order (the base ones follow).
    arguments: ClassVar[tuple[Argument, ...]] = ()
    #: Settings that choose the slots (``variant``): fixed once the optimizer is built.
    structural: ClassVar[tuple[str, ...]] = ()
    #: How Keras's ``build`` adds the slots: groups added by one ``add_optimizer_variables``
    #: call, interleaved per parameter within a group (``keras_variables`` order).
    keras_build: ClassVar[tuple[tuple[str, ...], ...]] = ()
    #: tf-keras's new-style class of this name in a model file (``numbaopt.keras3_files``):
    #: slots its ``build`` adds even where they have no effect (read, then dropped), and
    #: why a file with its state is refused ("": imported).
    tf_keras_unused_slots: ClassVar[tuple[Slot, ...]] = ()
    tf_keras_file_refused: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        declared = {a.name for a in cls.arguments}
        cls.hyperparameters = cls.arguments + tuple(a for a in BASE_ARGUMENTS if a.name not in declared)
        super().__init_subclass__(**kwargs)
        parameters = [
            inspect.Parameter(h.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=h.default) for h in cls.hyperparameters
        ]
        parameters += [inspect.Parameter(extra, inspect.Parameter.KEYWORD_ONLY, default=None) for extra in EXTRAS]
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        cls.__signature__ = inspect.Signature(parameters)
        cls.settable = {h.name: h for h in cls.hyperparameters + DEVICE + MEMORY if h.name not in cls.structural + ("name", "slot_dtype")}
        # The base's own properties, not the per-hyperparameter ones the Keras 2.0 base made.
        for own in ("learning_rate", "name"):
            if own in cls.__dict__:
                delattr(cls, own)

    @classmethod
    def bind_arguments(cls, args: tuple[Any, ...], kwargs: Mapping[str, Any]) -> dict[str, Any]:
        """Keras 3's constructor: positional in ``hyperparameters`` order, ``decay`` ignored
        with a warning, any other unknown keyword a ValueError, ``name`` automatic."""
        names = [h.name for h in cls.hyperparameters]
        if len(args) > len(names):
            raise TypeError(f"{cls.__name__} takes at most {len(names)} positional arguments, got {len(args)}")
        given = dict(zip(names, args))
        unknown = {}
        for key, value in kwargs.items():
            if key in given:
                raise TypeError(f"{cls.__name__} got multiple values for argument {key!r}")
            if key in names or key in EXTRAS:
                given[key] = value
            elif key == "decay":
                if value is not None:
                    warnings.warn("Argument `decay` is no longer supported and will be ignored.", stacklevel=4)
            else:
                unknown[key] = value
        if unknown:
            raise ValueError(f"Argument(s) not recognized: {unknown}")
        hyper = {h.name: h.check(given[h.name]) if h.name in given else h.default for h in cls.hyperparameters}
        if "device" in given:
            hyper["device"] = DEVICE[0].check(given["device"])
        for setting in MEMORY:
            if given.get(setting.name) is not None:
                hyper[setting.name] = setting.check(given[setting.name])
        if given.get("tf_keras"):
            hyper["tf_keras"] = TF_KERAS.check(given["tf_keras"])
        cls.check_settings(hyper)
        if hyper["name"] is None:
            hyper["name"] = naming.auto_name(cls.__name__)
        return hyper

    @classmethod
    def check_settings(cls, hyper: Mapping[str, Any]) -> None:
        """Keras 3's checks across arguments; a class adds its own (calling this one)."""
        clips = [hyper[k] for k in ("clipnorm", "clipvalue", "global_clipnorm")]
        if sum(c is not None for c in clips) > 1:
            raise ValueError(
                "Only one of `clipnorm`, `clipvalue` and `global_clipnorm` can be set. Received: "
                f"clipnorm={clips[0]}, clipvalue={clips[1]}, global_clipnorm={clips[2]}"
            )
        steps = hyper["gradient_accumulation_steps"]
        if steps is not None and steps < 2:
            raise ValueError(f"`gradient_accumulation_steps` must be an integer >= 2. Received: gradient_accumulation_steps={steps}")

    @classmethod
    def variant(cls, hyper: Mapping[str, Any]) -> Variant:
        """The slots and update at these settings: the class's own, unless a class says more."""
        return Variant(cls.slots, cls.rule, cls.phases)

    lr_name = "learning_rate"

    @classmethod
    def part_settings(cls) -> tuple[str, ...]:
        """The settings of the update itself: Keras's gradient processing, averages and
        schedules run in ``apply``, around the parts of a step, not in them."""
        return tuple(name for name in cls.settable if name not in HOST_SETTINGS + ("device", "tf_keras", "stochastic_rounding"))

    def check_part_stepping(self) -> None:
        """Steps by parts (``numbaopt.torch``) run the update alone: refuse the settings
        that Keras 3 applies around it, naming torch's own way to the same."""
        for name, instead in HOST_SETTINGS_INSTEAD.items():
            if self._hyper.get(name) not in (None, False):
                raise ValueError(f"{name} is applied by Keras 3's apply() around the update, which a torch step does "
                                 f"not run: {instead}")
        if isinstance(self._hyper["learning_rate"], schedules.LearningRateSchedule):
            raise ValueError("a learning-rate schedule runs in Keras 3's apply(); in torch, give a float "
                             "learning_rate and a torch.optim.lr_scheduler")
        if self._excluded_patterns or self._excluded_ids:
            raise ValueError("exclude_from_weight_decay matches whole parameters by name, which a step by parts or "
                             "shards does not see: in torch, put them in a param group with weight_decay=None")

    def apply_gradient_parts(self, grads: Sequence[Any], params: Sequence[Any], parts: Sequence[tuple[Mapping[str, Any], Sequence[int]]],
                             *, grad_addresses: npt.NDArray[np.int64] | None = None) -> None:
        """The update by parts (``Optimizer.apply_gradient_parts``), the slots starting
        where Keras's ``build`` starts them; without Keras 3's processing around it."""
        self.check_part_stepping()
        with self._lock, self._first_step(params):
            super().apply_gradient_parts(grads, params, parts, grad_addresses=grad_addresses)
            self._calls += 1

    def apply_shard(self, grads_and_vars: Iterable[tuple[Any, Any]], global_norm: float | None) -> None:
        """The update over a shard of a step (``ShardedOptimizer``), without Keras 3's
        processing around it, which the sharded step cannot split (refused, as for torch)."""
        self.check_part_stepping()
        pairs = list(grads_and_vars)
        with self._lock, self._first_step([p for _, p in pairs]):
            super().apply_shard(pairs, global_norm)
            self._calls += 1

    def set_weights(self, weights: Iterable[npt.ArrayLike]) -> None:
        """``Optimizer.set_weights``; Keras's step count follows ``iterations`` (accumulation
        state is not in the weights list, nor in ``load_state``'s: a checkpoint's arrays
        give it back after)."""
        with self._lock:
            super().set_weights(weights)
            self._calls = self._iterations

    @classmethod
    def declared_slots(cls, config: dict[str, Any]) -> tuple[Slot, ...]:
        variant = cls.variant(cls._config_arguments(config))
        return cls.stored_slots(cls.__name__, variant.slots, variant.phases, config.get("slot_dtype"))

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        variant = self.variant(self._hyper)
        check_slots(type(self).__name__, variant.slots)
        slots = self.stored_slots(type(self).__name__, variant.slots, variant.phases, self._hyper.get("slot_dtype"))
        self.slots, self.slot_names = slots, tuple(slot.name for slot in variant.slots)
        self.rule, self.phases = variant.rule, variant.phases
        self._calls = 0  # Keras's ``_iterations``: every call, also those that only accumulate
        self._excluded_patterns: list[str] = []
        self._excluded_ids: set[int] = set()
        self._averages: list[npt.NDArray[Any]] | None = None  # use_ema: one host array per parameter
        self._accumulators: list[npt.NDArray[Any]] | None = None  # gradient accumulation: the same
        self._variables: list[Any] | None = None  # the parameters of the first step, for apply(grads)
        self._first_dtype = np.dtype(np.float32)  # the first parameter's (Nadam keeps its product in it)

    # ----------------------------------------------------------------- settings

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "learning_rate" and "_hyper" in self.__dict__:
            if isinstance(self._hyper["learning_rate"], schedules.LearningRateSchedule) and not isinstance(
                value, schedules.LearningRateSchedule
            ):
                raise TypeError(
                    "This optimizer was created with a `LearningRateSchedule` object as its `learning_rate` "
                    "constructor argument, hence its learning rate is not settable. If you need the learning rate "
                    "to be settable, you should instantiate the optimizer with a float `learning_rate` argument."
                )
            if not isinstance(value, schedules.LearningRateSchedule):
                value = float(value)
            checked = self.settable["learning_rate"].check(value)
            with self._lock:
                self._hyper["learning_rate"] = checked
                self._fitting.clear()
            return
        if name in type(self).structural + ("slot_dtype",) and "_hyper" in self.__dict__:
            raise AttributeError(f"{name} chooses {type(self).__name__}'s slots; set it when constructing the optimizer")
        super().__setattr__(name, value)

    @property
    def learning_rate(self) -> float:
        """The learning rate of the next step: the schedule at the step count (Keras's
        ``_iterations``), or the float, as the float32 Keras keeps."""
        return float(self._learning_rate_now())

    @property
    def name(self) -> str:
        """Keras's optimizer name (automatic ``adam``, ``adam_1`` ... unless given): the
        prefix of the optimizer variables' paths."""
        return str(self._hyper["name"])

    def _learning_rate_now(self, hyper: Mapping[str, Any] | None = None) -> np.float32:
        lr = (self._hyper if hyper is None else hyper)["learning_rate"]
        value = lr(self._calls) if isinstance(lr, schedules.LearningRateSchedule) else lr
        return np.float32(value)  # type: ignore[no-any-return, unused-ignore]  # NumPy's stubs see Any under 3.10

    def step_inputs(self, hyper: Mapping[str, Any] | None = None) -> StepInputs:
        """``h.lr`` (and ``h.learning_rate``) is this step's learning rate as a float32, as
        Keras's variable or schedule gives it; ``h.iterations`` is Keras's ``iterations``."""
        values = dict(self._hyper)
        if hyper is not None:  # a part's settings; one it leaves out is off (None), as torch's groups drop them
            values.update({name: hyper.get(name) for name in self.part_settings()})
        values["lr"] = self._learning_rate_now(values)
        values["first_variable_dtype"] = self._first_dtype.type
        return StepInputs(values, self._iterations, self._scalars)

    # ------------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        """Keras 3's ``get_config``: the base keys, then the class's own, in Keras's order;
        a float learning rate as the float32 Keras keeps, a schedule serialized."""
        hyper = self._hyper
        lr = hyper["learning_rate"]
        config: dict[str, Any] = {
            key: (schedules.serialize(lr) if isinstance(lr, schedules.LearningRateSchedule) else float(np.float32(lr)))
            if key == "learning_rate" else hyper[key]
            for key in _CONFIG_KEYS
        }
        config.update({a.name: hyper[a.name] for a in type(self).arguments if a.name not in config})
        for extra in EXTRAS:
            if extra in hyper:
                config[extra] = hyper[extra]
        return config

    @classmethod
    def _config_arguments(cls, config: Mapping[str, Any]) -> dict[str, Any]:
        """Constructor arguments from a Keras 3 config (a schedule deserialized)."""
        if not isinstance(config, Mapping):
            raise TypeError(f"an optimizer config must be a dict, got {type(config).__name__}")
        arguments = {k: v for k, v in config.items() if k != _EXCLUDED_KEY}
        lr = arguments.get("learning_rate")
        if isinstance(lr, dict):
            arguments["learning_rate"] = schedules.deserialize(lr)
        elif isinstance(lr, numbers.Real) and not isinstance(lr, bool):
            arguments["learning_rate"] = float(lr)
        hyper = cls.bind_arguments((), {**arguments, "name": arguments.get("name") or "unnamed"})
        return hyper

    @classmethod
    def from_config(cls: type[_O], config: dict[str, Any]) -> _O:
        """Keras 3's ``from_config``: the optimizer a ``get_config()`` describes (a schedule
        as a dict), or a config of tf-keras's new-style class of the same name (its
        ``jit_compile`` and ``is_legacy_optimizer: false`` change no number)."""
        if config.get("is_legacy_optimizer"):
            raise ValueError(
                f"this config is of tf-keras's legacy {cls.__name__} (is_legacy_optimizer: true), whose update is "
                "Keras 2.0's: build it with numbaopt.optimizers.deserialize"
            )
        arguments = {key: value for key, value in config.items() if key not in _TF_KERAS_ONLY}
        if any(key in config for key in _TF_KERAS_ONLY):
            arguments["tf_keras"] = True
        if isinstance(arguments.get("learning_rate"), dict):
            arguments["learning_rate"] = schedules.deserialize(arguments["learning_rate"])
        return cls(**arguments)

    def checkpoint_config(self) -> dict[str, Any]:
        """The config, with the weight-decay exclusions by name (Keras's saving drops them)."""
        config = {key: value for key, value in self.get_config().items() if key != "device"}
        if self._excluded_patterns:
            config[_EXCLUDED_KEY] = list(self._excluded_patterns)
        return config

    @classmethod
    def from_checkpoint_config(cls: type[_O], config: dict[str, Any], **options: Any) -> _O:
        if options:
            raise TypeError(f"{cls.__name__} takes no loading options, got {sorted(options)}")
        excluded = config.get(_EXCLUDED_KEY)
        optimizer = cls.from_config({k: v for k, v in config.items() if k != _EXCLUDED_KEY})
        if excluded:
            optimizer.exclude_from_weight_decay(var_names=excluded)
        return optimizer

    def checkpoint_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """Keras's step count where it is not ``iterations`` (accumulation runs it ahead),
        the weights' averages (``use_ema``) and the gradient accumulators."""
        arrays: dict[str, npt.NDArray[Any]] = {}
        if self._calls != self._iterations:
            arrays["calls"] = np.array(self._calls, np.int64)
        for kind, values in (("average", self._averages), ("gradient_accumulator", self._accumulators)):
            for i, value in enumerate(values or ()):
                arrays[f"{kind}.{i:06d}"] = value
        return arrays

    def load_checkpoint_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        unknown = [name for name in arrays if name != "calls" and name.split(".")[0] not in ("average", "gradient_accumulator")]
        if unknown:
            raise ValueError(f"{type(self).__name__} keeps the arrays calls, average.* and gradient_accumulator.*, got {sorted(arrays)}")
        calls = int(np.asarray(arrays["calls"])) if "calls" in arrays else self._iterations
        averages = [np.array(arrays[k]) for k in sorted(arrays) if k.startswith("average.")]
        accumulators = [np.array(arrays[k]) for k in sorted(arrays) if k.startswith("gradient_accumulator.")]
        if calls < self._iterations:
            raise ValueError(f"calls={calls} is fewer than the {self._iterations} steps taken")
        self._calls = calls
        self._averages = averages or None
        self._accumulators = accumulators or None

    # --------------------------------------------------------------- Keras's API

    def exclude_from_weight_decay(self, var_list: Iterable[Any] | None = None, var_names: Iterable[str] | None = None) -> None:
        """Leave these parameters out of weight decay: the arrays in ``var_list``, and every
        parameter whose name (``names=`` of the step) matches one of ``var_names``, regular
        expressions searched in ``name + ":0"`` as Keras on TensorFlow does. Before the first step."""
        if self._slots is not None or self._calls:
            raise ValueError("`exclude_from_weight_decay()` can only be configured before the optimizer is built.")
        names = list(var_names or ())
        Argument("var_names", (), "names").check(names)
        self._excluded_ids = {id(v) for v in var_list or ()}
        self._excluded_patterns = names

    def apply_gradients(self, grads_and_vars: Iterable[tuple[Any, Any]], names: Sequence[str] | None = None) -> None:
        """Keras's ``apply_gradients``: one step over ``(gradient, parameter)`` pairs, the
        parameters updated in place; a None gradient leaves its parameter and slots as they are.
        ``names`` are the parameters' Keras paths (``"dense/kernel"``): weight-decay
        exclusions by name, Muon's layer rules and ``keras_variables`` read them."""
        pairs = list(grads_and_vars)
        self.apply([g for g, _ in pairs], [p for _, p in pairs], names=names)

    @locked
    def apply(self, grads: Sequence[Any], trainable_variables: Sequence[Any] | None = None, names: Sequence[str] | None = None) -> None:
        """Keras's ``apply``: ``grads`` for ``trainable_variables`` (or the parameters of
        the first step). Everything is checked before anything changes."""
        grads = list(grads)
        if not grads:
            return
        if self._slots is not None and trainable_variables is not None and self._update_alone():
            # Nothing of Keras's processing to do: the step's own checks and its fast path.
            pairs = list(zip(grads, trainable_variables))
            if len(pairs) == len(grads) == len(trainable_variables) and all(g is not None for g in grads):
                self._apply_gradients(pairs, names, None)
                self._calls += 1
                return
        if trainable_variables is None:
            if self._variables is None:
                raise ValueError("When passing `grads` without `variables`, the optimizer must already be built on a list of variables.")
            params = list(self._variables)
        else:
            params = list(trainable_variables)
        if len(grads) != len(params):
            raise ValueError(f"got {len(grads)} gradients for {len(params)} variables")
        present = [i for i, g in enumerate(grads) if g is not None]
        if not present:
            raise ValueError("No gradients provided for any variable.")
        names = checked_names(names, len(params), self._names)
        if len(present) < len(grads):
            labels = list(names or self._names or [f"param_{i}" for i in range(len(grads))])
            missing = [labels[i] for i, g in enumerate(grads) if g is None]
            warnings.warn(f"Gradients do not exist for variables {list(reversed(missing))} when minimizing the loss. "
                          "If using `model.compile()`, did you forget to provide a `loss` argument?", stacklevel=3)
        backend = devices.backend_for(params, self._hyper.get("device", "auto"))
        filled = [g if g is not None else p for g, p in zip(grads, params)]
        checked_grads, checked_params = checked_arrays(filled, params, backend)
        if self._slots is not None:
            self._slots.layout.check(checked_params, backend)
        else:
            backend.check_distinct(checked_params)
        self._check_builds(checked_params, names)
        averages = self._averages
        if averages is None and self._hyper["use_ema"]:  # tf-keras starts them at the parameters
            start = backend.to_host if self._hyper.get("tf_keras") else (lambda p: np.zeros(p.shape, p.dtype))
            averages = [start(p) for p in checked_params]
        accumulators = self._accumulators
        if accumulators is None and self._hyper["gradient_accumulation_steps"]:
            accumulators = [np.zeros(p.shape, p.dtype) for p in checked_params]

        with self._first_step(checked_params, backend):
            processed, accumulators = self._processed(backend, checked_grads, present, accumulators)
            if processed is not None:  # an update step (not only accumulating)
                self._update(processed, params, present, self._decayed(params, names), names)
        self._accumulators = accumulators
        if averages is not None:
            self._averages = averages
            self._update_averages(backend, checked_params)
        self._calls += 1
        if names is not None:
            self._names = names
        if self._variables is None:
            self._variables = params

    @contextlib.contextmanager
    def _first_step(self, params: Sequence[Any], backend: Any = None) -> Iterator[None]:
        """Around a step: before the first one binds the slots, note the first parameter's
        dtype and start the slots as Keras's ``build`` does (unless state was loaded); all
        undone if the step is refused, which leaves everything as it was."""
        if self._slots is not None or not params:
            yield
            return
        before = (self._pending_slots, self._pending_origin, self._first_dtype)
        try:
            if backend is None:
                backend = devices.backend_for(list(params), self._hyper.get("device", "auto"))
                params = [backend.check_parameter(p, i) for i, p in enumerate(params)]
            self._first_dtype = halves.compute_dtype(params[0].dtype)  # a 16-bit model computes in float32
            if self._pending_slots is None:
                # A 16-bit parameter's slots start from its float32 value (and keep float32 values).
                initial = self.initial_slots([np.asarray(host_value(backend, p), halves.compute_dtype(p.dtype)) for p in params])
                if initial:  # in the storage slot_dtype keeps them in
                    if self._hyper.get("slot_dtype") == "float32":
                        initial = {kind: [a.astype(np.float32) for a in arrays] for kind, arrays in initial.items()}
                    self._pending_slots, self._pending_origin = keras_weights.stored(self, initial), "the slots' initial values"
            yield
        except BaseException:
            self._pending_slots, self._pending_origin, self._first_dtype = before
            raise

    def initial_slots(self, params: Sequence[npt.NDArray[Any]]) -> dict[str, list[npt.NDArray[Any]]] | None:
        """The slots' values before the first step, for parameters ``params`` (their host
        values, to read: copy what is kept),
        where Keras's ``build`` does not start them at zero: every slot kind, one array per
        parameter. None: all zeros."""
        return None

    def _update_alone(self) -> bool:
        """Whether a step is the update alone: no setting of Keras's processing around it,
        no weight-decay exclusion. Settings may change between steps, so asked every step."""
        hyper = self._hyper
        return not (
            any(hyper[name] not in (None, False) for name in HOST_SETTINGS_INSTEAD)
            or (hyper["weight_decay"] is not None and (self._excluded_patterns or self._excluded_ids))
        )

    def _check_builds(self, params: Sequence[Any], names: tuple[str, ...] | None) -> None:
        """What must hold before the first step changes anything: names where the settings need them."""
        if self._excluded_patterns and names is None and self._names is None:
            raise ValueError("exclude_from_weight_decay(var_names=...) matches parameter names: pass names= to the step")
        for kind, values in (("average", self._averages), ("gradient accumulator", self._accumulators)):
            if values is None:
                continue
            if len(values) != len(params) or [v.shape for v in values] != [p.shape for p in params]:
                raise ValueError(f"the {kind}s belong to parameters of other counts or shapes than these")
            for i, (v, p) in enumerate(zip(values, params)):
                if v.dtype != p.dtype:
                    raise TypeError(f"parameter {i} has dtype {p.dtype}, but its {kind} has dtype {v.dtype}")

    def _processed(
        self, backend: Any, grads: list[Any], present: list[int], accumulators: list[npt.NDArray[Any]] | None
    ) -> tuple[list[Any] | None, list[npt.NDArray[Any]] | None]:
        """The gradients ``update_step`` sees (Keras's preprocessing), or None on a call
        that only accumulates; and the accumulators after this call (new arrays: the
        caller keeps them once the step is done). The user's arrays are never written."""
        hyper = self._hyper
        steps = hyper["gradient_accumulation_steps"]
        needed = hyper["loss_scale_factor"] is not None or steps or any(hyper[k] for k in ("clipnorm", "global_clipnorm", "clipvalue"))
        if not needed:
            return grads, accumulators
        on_host = [host_value(backend, g) for g in grads]  # each processing below makes new arrays
        if hyper["loss_scale_factor"] is not None:
            on_host = gradients.unscaled(on_host, hyper["loss_scale_factor"])
        if steps:
            assert accumulators is not None
            if (self._calls + 1) % steps:  # only accumulate
                return None, [on_host[i] + a if i in present else a for i, a in enumerate(accumulators)]
            on_host = gradients.accumulated(on_host, accumulators, steps)
            accumulators = [np.zeros_like(a) for a in accumulators]
        kept = gradients.clipped([on_host[i] for i in present], hyper["clipnorm"], hyper["global_clipnorm"], hyper["clipvalue"])
        for i, g in zip(present, kept):
            on_host[i] = g
        if backend is devices.CPU:
            return on_host, accumulators
        return [self._to_device(backend, g) for g in on_host], accumulators

    @staticmethod
    def _to_device(backend: Any, host: npt.NDArray[Any]) -> Any:
        device = backend.zeros(host.shape, host.dtype)
        backend.copy_from_host(device, host)
        return device

    def _decayed(self, params: Sequence[Any], names: tuple[str, ...] | None) -> list[bool]:
        """Per parameter, whether weight decay applies to it (Keras's ``_use_weight_decay``)."""
        if self._hyper["weight_decay"] is None:
            return [False] * len(params)
        by_name = naming.excluded_by_pattern(names or self._names or [""] * len(params), self._excluded_patterns)
        return [not (id(p) in self._excluded_ids or excluded) for p, excluded in zip(params, by_name)]

    def _update(self, grads: list[Any], params: list[Any], present: list[int], decayed: list[bool],
                names: tuple[str, ...] | None) -> None:
        """The kernel step: one part for the parameters weight decay applies to, one for the
        others (``names``, the step's parameter paths, are for a class that routes by them)."""
        if len(present) == len(params) and all(decayed):
            self._apply_gradients(list(zip(grads, params)), None, None)
            return
        no_decay = {**self._hyper, "weight_decay": None}
        parts = [
            (hyper, [i for i in present if decayed[i] == wanted])
            for hyper, wanted in ((self._hyper, True), (no_decay, False))
        ]
        super().apply_gradient_parts(grads, params, [(hyper, at) for hyper, at in parts if at])  # the kernels alone

    def _update_averages(self, backend: Any, params: Sequence[Any]) -> None:
        """Keras's ``_update_model_variables_moving_average`` and, every
        ``ema_overwrite_frequency`` steps, the averages written into the parameters."""
        assert self._averages is not None
        steps = self._hyper["gradient_accumulation_steps"] or 1
        keras_iterations = self._calls // steps
        frequency = self._hyper["ema_overwrite_frequency"]
        overwrite = bool(frequency) and (keras_iterations + 1) % frequency == 0
        for i, p in enumerate(params):
            value = host_value(backend, p)
            kind = value.dtype.type
            momentum = kind(self._hyper["ema_momentum"])
            if not self._hyper.get("tf_keras"):  # Keras 3 takes the parameters as they are at step 0
                momentum = kind(float(keras_iterations != 0)) * momentum
            self._averages[i] = momentum * self._averages[i] + (kind(1) - momentum) * value
            if overwrite:
                backend.copy_from_host(p, self._averages[i])
        if overwrite:
            devices.mark_modified(params)

    @locked
    def finalize_variable_values(self, var_list: Sequence[Any]) -> None:
        """Keras's ``finalize_variable_values``: with ``use_ema``, the averages written into
        the parameters (as ``fit`` does after the last epoch); otherwise nothing."""
        if not self._hyper["use_ema"]:
            return
        params = list(var_list)
        if self._averages is None or len(params) != len(self._averages):
            raise ValueError(
                f"The length of model variables ({len(params)}) to override does not match the length of model "
                f"variables stored in the optimizer ({0 if self._averages is None else len(self._averages)})."
            )
        backend = devices.backend_for(params, self._hyper.get("device", "auto"))
        checked = [backend.check_parameter(p, i) for i, p in enumerate(params)]
        for i, (p, average) in enumerate(zip(checked, self._averages)):
            if p.shape != average.shape or p.dtype != average.dtype:
                raise ValueError(f"parameter {i} is {p.shape} {p.dtype}, but its average is {average.shape} {average.dtype}")
        for p, average in zip(checked, self._averages):
            backend.copy_from_host(p, average)
        devices.mark_modified(params)

    @locked
    def keras_variables(self) -> list[tuple[str, npt.NDArray[Any]]]:
        """``(path, value)`` of each variable Keras 3's optimizer would hold, in the order
        of its ``variables``: the step count, the learning rate (a float one), the averages,
        the accumulators, then the slots as the class's ``build`` adds them. Parameter
        paths come from the step's ``names`` (``param_<i>`` without)."""
        name = self.name
        out: list[tuple[str, npt.NDArray[Any]]] = [(f"{name}/iteration", np.array(self._calls, np.int64))]
        if not isinstance(self._hyper["learning_rate"], schedules.LearningRateSchedule):
            out.append((f"{name}/learning_rate", np.array(self._learning_rate_now(), np.float32)))
        state = self.state()
        n = len(next(iter(state.slots.values()), self._averages or self._accumulators or []))
        paths = list(self._names) if self._names is not None else [f"param_{i}" for i in range(n)]
        for kind, values in (("average", self._averages), ("gradient_accumulator", self._accumulators)):
            out += [(naming.slot_path(name, path, kind), v.copy()) for path, v in zip(paths, values or ())]
        groups = type(self).keras_build or (self.slot_names,)
        for group in groups:
            kinds = [kind for kind in group if kind in state.slots]
            for i, path in enumerate(paths):
                for kind in kinds:
                    out += self.keras_slot_variables(kind, path, state.slots[kind][i])
        out += self.keras_extra_variables(state.scalars)
        return out

    def keras_slot_variables(self, kind: str, path: str, value: npt.NDArray[Any]) -> list[tuple[str, npt.NDArray[Any]]]:
        """The Keras variables that hold slot ``kind`` (``value``) of the parameter at
        ``path``: ``add_variable_from_reference``'s one, ``adam/dense_kernel_momentum``. A
        class whose ``build`` names them otherwise, or skips some, says so here."""
        return [(naming.slot_path(self.name, path, kind), value)]

    def keras_extra_variables(self, scalars: Mapping[str, float]) -> list[tuple[str, npt.NDArray[Any]]]:
        """Variables Keras's ``build`` adds after the slots (Nadam's ``u_product``): none here."""
        return []
