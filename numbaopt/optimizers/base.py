"""The base class: everything the seven optimizers share.

A subclass only declares (its hyperparameters, its slots, its extra scalar state) and
computes (the once-per-call scalars and, in its module, the per-element rule). The base
class owns argument checking, the iteration counter, clipping, binding slots to
parameters, dispatch to the kernels, and the Keras-style config and weights.
"""
import inspect
import math
import numbers
from typing import Any, NamedTuple

import numpy as np

from numbaopt.clipping import clip_arguments, decayed_lr


class Hyperparameter(NamedTuple):
    """A constructor argument: its Keras 2.0 name, default and valid range.

    ``kind`` is ``"nonnegative"`` (a finite float >= 0), ``"fraction"`` (a float in
    [0, 1), for the betas), ``"flag"`` (a bool) or ``"device"`` ("auto", "cpu" or "cuda").
    """

    name: str
    default: Any
    kind: str = "nonnegative"

    def check(self, value):
        """``value`` as a plain float or bool, or a TypeError / ValueError naming it."""
        if self.kind == "device":
            if not isinstance(value, str) or value not in ("auto", "cpu", "cuda"):
                raise ValueError(f"{self.name} must be 'auto', 'cpu' or 'cuda', got {value!r}")
            return value
        if self.kind == "flag":
            if not isinstance(value, (bool, np.bool_)):
                raise TypeError(f"{self.name} must be a bool, got {value!r}")
            return bool(value)
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Real):
            raise TypeError(f"{self.name} must be a real number, got {value!r}")
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{self.name} must be finite, got {value!r}")
        if value < 0:
            raise ValueError(f"{self.name} must be >= 0, got {value!r}")
        if self.kind == "fraction" and value >= 1:
            raise ValueError(f"{self.name} must be in [0, 1), got {value!r}")
        return value


#: Keyword arguments every optimizer accepts besides its own (Keras 2.0: clipnorm, clipvalue).
CLIPPING = (Hyperparameter("clipnorm", None), Hyperparameter("clipvalue", None))

#: Where the step runs: "auto" (where the parameters live), or "cpu" / "cuda" to force and
#: check that. In the config only when given, like the clip settings.
DEVICE = (Hyperparameter("device", None, "device"),)

#: Later Keras versions spell ``lr`` as ``learning_rate``; both name the same setting.
ALIASES = {"learning_rate": "lr"}


class OptimizerState(NamedTuple):
    """A copy of an optimizer's whole state; ``get_weights`` is its list view.

    ``scalars`` holds the extra scalar state by name (Nadam's ``m_schedule``); ``slots``
    maps each slot kind to one array per parameter, in parameter order (empty before the
    first step); ``names`` is the tuple of parameter names, or None when none were given.
    """

    iterations: int
    scalars: dict
    slots: dict
    names: tuple = None


class Optimizer:
    """Base class of the Keras 2.0 optimizers.

    Subclasses declare ``hyperparameters`` (in Keras 2.0's positional order), ``slot_names``
    (the slot kinds, in ``get_weights`` order), ``scalar_state`` (extra scalar state and its
    initial value), ``keras2_iterations`` (whether Keras 2.0's ``get_weights`` lists
    ``iterations``) and ``kernel`` (the name of the update kernel), and implement
    ``step_scalars``.
    """

    hyperparameters: tuple = ()
    slot_names: tuple = ()
    scalar_state: tuple = ()
    keras2_iterations = True
    kernel = ""
    _settable = {}  # name -> Hyperparameter of what assignment may change; set per subclass

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        parameters = [
            inspect.Parameter(h.name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=h.default)
            for h in cls.hyperparameters
        ]
        parameters.append(inspect.Parameter("kwargs", inspect.Parameter.VAR_KEYWORD))
        cls.__signature__ = inspect.Signature(parameters)
        cls._settable = {h.name: h for h in cls.hyperparameters + CLIPPING + DEVICE}

    def __init__(self, *args, **kwargs):
        self._hyper = self._bind_arguments(args, kwargs)
        self._iterations = 0
        self._scalars = {name: float(value) for name, value in self.scalar_state}
        self._slots = None  # numbaopt.slots.SlotStore once bound to parameters
        self._pending_slots = None  # host arrays from set_weights before the first step
        self._names = None  # parameter names, from a named step, set_parameter_names or a checkpoint

    # ----------------------------------------------------------------- arguments

    @classmethod
    def _bind_arguments(cls, args, kwargs):
        """Keras 2.0's constructor rules: positional in declared order, clip keywords, TypeError otherwise."""
        names = [h.name for h in cls.hyperparameters]
        if len(args) > len(names):
            raise TypeError(
                f"{cls.__name__} takes at most {len(names)} positional arguments "
                f"({', '.join(names)}), got {len(args)}"
            )
        given = dict(zip(names, args))
        for key, value in kwargs.items():
            name = ALIASES.get(key, key)
            if name not in names and name not in ("clipnorm", "clipvalue", "device"):
                raise TypeError(f"Unexpected keyword argument passed to optimizer {cls.__name__}: {key}")
            if name in given:
                raise TypeError(f"{cls.__name__} got multiple values for argument {name!r}")
            given[name] = value
        checked = {}
        for h in cls.hyperparameters + CLIPPING + DEVICE:
            if h.name in given:
                checked[h.name] = h.check(given[h.name])
            elif h.default is not None:
                checked[h.name] = h.default
        return checked

    def __getattr__(self, name):
        # Hyperparameters read as attributes, as in Keras (opt.lr, opt.beta_1, opt.clipnorm).
        hyper = self.__dict__.get("_hyper")
        if hyper is not None and name in hyper:
            return hyper[name]
        if hyper is not None and ALIASES.get(name) in hyper:
            return hyper[ALIASES[name]]
        raise AttributeError(f"{type(self).__name__!s} has no attribute {name!r}")

    def __setattr__(self, name, value):
        # Assigning a hyperparameter (opt.lr = 0.01, say, for a schedule) checks the value
        # and takes effect at the next step, as Keras's K.set_value(opt.lr, ...) does.
        key = ALIASES.get(name, name)
        declared = type(self)._settable
        if key in declared and "_hyper" in self.__dict__:
            self._hyper[key] = declared[key].check(value)
        else:
            super().__setattr__(name, value)

    @property
    def iterations(self):
        """The number of steps applied so far."""
        return self._iterations

    # -------------------------------------------------------------------- config

    def get_config(self):
        """The constructor arguments as plain JSON types; clip settings only when given."""
        return dict(self._hyper)

    @classmethod
    def from_config(cls, config):
        """An optimizer built from ``get_config()``'s output (or a later Keras's config)."""
        from numbaopt.registry import keras2_arguments

        return cls(**keras2_arguments(cls, config))

    def checkpoint_config(self):
        """What a checkpoint records to rebuild this optimizer (JSON types): its config.

        Without ``device``: where the arrays live belongs to the run, not to the state, so a
        checkpoint written from GPU state loads on the CPU and the other way round.
        """
        return {key: value for key, value in self.get_config().items() if key != "device"}

    @classmethod
    def from_checkpoint_config(cls, config, **options):
        """The inverse of ``checkpoint_config``; ``options`` come from ``load_optimizer``."""
        if options:
            raise TypeError(f"{cls.__name__} takes no loading options, got {sorted(options)}")
        return cls.from_config(config)

    def checkpoint_arrays(self):
        """State a checkpoint stores beside the slots, as ``{name: array}`` in a fixed order.

        For state that is not one float array per parameter and slot kind, such as the
        variables of the optimizer ``TFOptimizer`` wraps: each array becomes a checksummed
        dataset in ``/arrays`` (numbers only, see ``numbaopt.checkpoint.ARRAY_DTYPES``), which
        keeps large state out of the JSON config. The Keras 2.0 optimizers have none.
        """
        return {}

    def load_checkpoint_arrays(self, arrays):
        """Take back what ``checkpoint_arrays`` saved; ``load_optimizer`` calls it after ``set_weights``.

        Raise ValueError or TypeError for arrays this optimizer cannot use. The Keras 2.0
        optimizers keep none, so any array means the file is not one of theirs.
        """
        if arrays:
            raise ValueError(f"{type(self).__name__} keeps no checkpoint arrays, got {sorted(arrays)}")

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self._hyper.items())
        return f"{type(self).__name__}({args})"

    # ------------------------------------------------------------------ the step

    def step_scalars(self, dtype):
        """The kernel's scalar arguments for this call, as values of ``dtype``.

        Everything that depends on the step but not on the element (decayed learning rate,
        bias corrections, schedules) is computed here once per call, in the parameters'
        dtype as Keras computes it, so float32 kernels stay in float32.
        """
        raise NotImplementedError(f"{type(self).__name__} does not define step_scalars; use one of the optimizers")

    def advance_scalar_state(self):
        """Update the extra scalar state after a step (Nadam's ``m_schedule``)."""

    def lr_at_step(self, dtype):
        """The decayed learning rate for the current call."""
        return decayed_lr(self.lr, self._hyper.get("decay", 0.0), self._iterations, dtype)

    def apply_gradients(self, grads_and_vars, names=None):
        """Apply one step to ``(gradient, parameter)`` pairs, updating parameters in place.

        ``names`` (optional, one distinct string per pair) names the parameters: slots
        belong to parameters by position, and names let a resumed run catch parameters
        that were renamed or reordered since the names were recorded (ValueError).
        Everything is checked before anything changes: a bad pair raises and leaves the
        parameters, the slots and ``iterations`` as they were.
        """
        from numbaopt import devices

        grads, params = _split_pairs(grads_and_vars)
        names = self._check_names(names, len(params))
        backend = devices.backend_for(params, self._hyper.get("device", "auto"))
        params = [backend.check_parameter(p, i) for i, p in enumerate(params)]
        grads = [backend.check_gradient(g, p, i) for i, (g, p) in enumerate(zip(grads, params))]
        store = self._bind(params, backend)
        grad_addresses = store.grouped_addresses(grads)  # ``grads`` keeps them alive until the end

        norm = None
        if self._hyper.get("clipnorm"):
            norm = store.global_norm(grad_addresses)
        for group, param_at, grad_at in zip(store.groups, store.parameter_addresses(), grad_addresses):
            dtype = group.dtype.type
            clip = clip_arguments(self._hyper.get("clipnorm"), self._hyper.get("clipvalue"), norm, dtype)
            store.run(self.kernel, group, param_at, grad_at, clip, self.step_scalars(dtype))
        self.advance_scalar_state()
        self._iterations += 1
        if names is not None:
            self._names = names

    def _bind(self, params, backend):
        """The slot store for these parameters: created on the first step, checked on later ones."""
        from numbaopt.slots import SlotStore

        if self._slots is not None:
            self._slots.check_parameters(params, backend)
            return self._slots
        store = SlotStore.create(params, self.slot_names, backend, initial=self._pending_slots)
        self._slots, self._pending_slots = store, None
        return store

    # ------------------------------------------------------------------- weights

    def state(self):
        """A copy of the whole state as an ``OptimizerState``."""
        if self._slots is not None:
            slots = self._slots.host_slots()
        elif self._pending_slots is not None:
            slots = {k: [a.copy() for a in v] for k, v in self._pending_slots.items()}
        else:
            slots = {}
        return OptimizerState(self._iterations, dict(self._scalars), slots, self._names)

    def set_parameter_names(self, names):
        """Record names for the parameters the slots belong to; later named steps must match.

        Loading a checkpoint calls this; call it yourself to accept parameters that were
        renamed on purpose. Needs the slots (after a step, ``set_weights`` or a load).
        """
        if self._slots is not None:
            n_params = self._slots.n_params
        elif self._pending_slots is not None:
            n_params = len(next(iter(self._pending_slots.values())))
        else:
            raise ValueError("set_parameter_names: no parameters yet; pass names= to apply_gradients instead")
        self._names = _names_tuple(names, n_params)

    def _check_names(self, names, n_params):
        """``names`` as a tuple, checked against the call and the recorded names (None passes)."""
        if names is None:
            return None
        names = _names_tuple(names, n_params)
        if self._names is not None and names != self._names:
            if sorted(names) == sorted(self._names):
                problem = "the same names in another order"
            else:
                problem = f"new {sorted(set(names) - set(self._names))}, missing {sorted(set(self._names) - set(names))}"
            position = next((i for i, (a, b) in enumerate(zip(names, self._names)) if a != b), len(names))
            raise ValueError(
                f"apply_gradients: parameter names differ from the recorded ones ({problem}); "
                f"first difference at position {position}. Slots belong to parameters by position; "
                "call set_parameter_names to accept the new names"
            )
        return names

    def get_weights(self):
        """``[iterations]``, the extra scalar state, then each slot kind for all parameters."""
        state = self.state()
        weights = [np.array(state.iterations, dtype=np.int64)]
        weights += [np.array(state.scalars[name], dtype=np.float64) for name, _ in self.scalar_state]
        for kind in self.slot_names:
            weights += state.slots.get(kind, [])
        return weights

    def set_weights(self, weights):
        """Load a ``get_weights()`` list, or the shorter Keras 2.0 list of this optimizer.

        The Keras 2.0 list lacks the state Keras 2.0 did not save (``iterations`` for
        RMSprop, Adagrad and Adadelta, Nadam's ``m_schedule``); that state is left as it is.
        The count and every shape and dtype are checked before anything changes.
        """
        weights = _weights_list(weights)
        n_params = self._slots.n_params if self._slots is not None else None
        if n_params is None and self._pending_slots is not None:
            n_params = len(next(iter(self._pending_slots.values())))
        scalars, slot_lists = self._split_weights(weights, n_params)
        iterations, scalar_values = self._check_scalar_weights(scalars)
        if self._slots is not None:
            self._slots.check_host_slots(slot_lists)
        else:
            _check_slot_lists(slot_lists)
        # Nothing below can fail.
        if iterations is not None:
            self._iterations = iterations
        self._scalars.update(scalar_values)
        if self._slots is not None:
            self._slots.load_host_slots(slot_lists)
        elif slot_lists and len(next(iter(slot_lists.values()))):
            self._pending_slots = {k: [np.array(a, copy=True) for a in v] for k, v in slot_lists.items()}

    def _split_weights(self, weights, n_params):
        """Cut a weights list into its scalar part and its slot lists, recognising its form by length."""
        n_kinds = len(self.slot_names)
        full_scalars = 1 + len(self.scalar_state)
        keras2_scalars = 1 if self.keras2_iterations else 0
        candidates = []
        for n_scalars, names in (
            (full_scalars, ["iterations"] + [n for n, _ in self.scalar_state]),
            (keras2_scalars, ["iterations"] if self.keras2_iterations else []),
        ):
            rest = len(weights) - n_scalars
            if rest < 0 or rest % n_kinds:
                continue
            if n_params is not None and rest != n_params * n_kinds:
                continue
            if (n_scalars, names) not in candidates:
                candidates.append((n_scalars, names))
        if len(candidates) > 1:
            # Same remainder for both forms (RMSprop and Adagrad before the first step):
            # the full list starts with iterations, an integer scalar.
            first = weights[0] if weights else None
            full_form = first is not None and first.ndim == 0 and first.dtype.kind in "iu"
            candidates = [candidates[0] if full_form else candidates[1]]
        if not candidates:
            expected = f"{full_scalars} + {n_kinds} x (number of parameters)"
            if n_params is not None:
                expected = f"{full_scalars + n_kinds * n_params} (or the Keras 2.0 list of {keras2_scalars + n_kinds * n_params})"
            raise ValueError(
                f"{type(self).__name__}.set_weights got {len(weights)} arrays, expected {expected}"
            )
        n_scalars, names = candidates[0]
        scalars = dict(zip(names, weights[:n_scalars]))
        per_kind = (len(weights) - n_scalars) // n_kinds
        slot_lists = {
            kind: weights[n_scalars + k * per_kind : n_scalars + (k + 1) * per_kind]
            for k, kind in enumerate(self.slot_names)
        }
        return scalars, slot_lists

    def _check_scalar_weights(self, scalars):
        iterations = None
        values = {}
        for name, value in scalars.items():
            if value.shape not in ((), (1,)):
                raise ValueError(f"set_weights: {name} must be a scalar, got shape {value.shape}")
            item = value.reshape(()).item()
            if name == "iterations":
                if isinstance(item, float) and not item.is_integer() or item < 0:
                    raise ValueError(f"set_weights: iterations must be a non-negative integer, got {item!r}")
                iterations = int(item)
            else:
                if not math.isfinite(float(item)):
                    raise ValueError(f"set_weights: {name} must be finite, got {item!r}")
                values[name] = float(item)
        return iterations, values


def _split_pairs(grads_and_vars):
    """The gradients and the parameters of a list of (gradient, parameter) pairs."""
    try:
        pairs = list(grads_and_vars)
    except TypeError:
        raise TypeError("apply_gradients takes an iterable of (gradient, parameter) pairs") from None
    for i, pair in enumerate(pairs):
        if not isinstance(pair, (tuple, list)) or len(pair) != 2:
            raise TypeError(f"apply_gradients: item {i} is not a (gradient, parameter) pair")
    if not pairs:
        raise ValueError("apply_gradients got no (gradient, parameter) pairs")
    for i, (grad, _) in enumerate(pairs):
        if grad is None:
            # What an autodiff framework returns for a parameter the loss does not depend on.
            raise ValueError(f"gradient {i} is None: the loss may not depend on parameter {i}")
    return [g for g, _ in pairs], [p for _, p in pairs]


def _weights_list(weights):
    """``weights`` as a list of numeric arrays, or a TypeError naming the first bad item."""
    if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__iter__"):
        raise TypeError(f"set_weights takes a list of arrays, got {type(weights).__name__}")
    arrays = []
    for i, w in enumerate(weights):
        try:
            a = np.asarray(w)
        except Exception as error:  # noqa: BLE001 - any conversion failure means "not an array"
            raise TypeError(f"set_weights: item {i} is not an array: {error}") from None
        if a.dtype.kind not in "biuf":
            raise TypeError(f"set_weights: item {i} has dtype {a.dtype}, not a number type")
        arrays.append(a)
    return arrays


def _names_tuple(names, n_params):
    """``names`` as a tuple of ``n_params`` distinct non-empty strings, or a TypeError / ValueError."""
    if isinstance(names, str):
        raise TypeError("parameter names must be a sequence of strings, not one string")
    names = tuple(names)
    for i, name in enumerate(names):
        if not isinstance(name, str) or not name:
            raise TypeError(f"parameter name {i} must be a non-empty string, got {name!r}")
    if len(names) != n_params:
        raise ValueError(f"got {len(names)} parameter names for {n_params} parameters")
    if len(set(names)) != len(names):
        raise ValueError(f"parameter names must be distinct, got {sorted(n for n in set(names) if names.count(n) > 1)} twice")
    return names


def _check_slot_lists(slot_lists):
    """Slot lists given before the first step: float arrays, the same shapes for every kind."""
    lists = list(slot_lists.items())
    if not lists:
        return
    first_kind, first = lists[0]
    for kind, arrays in lists:
        for i, a in enumerate(arrays):
            if a.dtype not in (np.float32, np.float64):
                raise TypeError(f"set_weights: {kind}[{i}] must be float32 or float64, got {a.dtype}")
            if a.shape != first[i].shape or a.dtype != first[i].dtype:
                raise ValueError(
                    f"set_weights: {kind}[{i}] has shape {a.shape} {a.dtype}, "
                    f"but {first_kind}[{i}] has {first[i].shape} {first[i].dtype}"
                )
