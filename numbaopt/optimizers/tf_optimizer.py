"""TFOptimizer: a native TensorFlow optimizer behind the numbaopt API (Keras 2.0's ``TFOptimizer``).

The update is the wrapped optimizer's own; numbaopt only drives it. On the first step the
wrapper creates one TensorFlow variable per parameter and has the wrapped optimizer build
its slots for them; those variables live as long as the wrapper, so the slots persist
between steps. Each step is one call of a ``tf.function`` traced once for the parameter
layout: copy the NumPy parameters into their variables (the user may have changed them),
apply the gradients, return the new values, which are copied back into the user's arrays.

TensorFlow is the optional ``keras`` extra: this module imports it only when a
``TFOptimizer`` is built, so the rest of numbaopt never needs it.

TensorFlow and Keras have no type information: their modules, optimizers and variables
are ``Any`` here.
"""
from __future__ import annotations

import base64
import binascii
import json
import math
import sys
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt

from numbaopt import devices, keras_weights, registry
from numbaopt.extras import install_command
from numbaopt.optimizers.base import Optimizer
from numbaopt.state import OptimizerState, Slot
from numbaopt.slots import Layout
from numbaopt.step_checks import checked_arrays, checked_names, listed_pairs, names_tuple, split_pairs

NO_CONFIG = (
    "TFOptimizer has no config: the wrapped TensorFlow optimizer is a live object that numbaopt "
    "cannot rebuild from settings (Keras 2.0's TFOptimizer raised NotImplementedError too). "
    "To save and resume one, use numbaopt.save_optimizer and "
    "numbaopt.load_optimizer(path, wrapped=<a freshly built TensorFlow optimizer of the same kind>)."
)


def _import_tensorflow() -> Any:
    try:
        import tensorflow as tf
    except ImportError as error:
        raise ImportError(
            f"TFOptimizer needs TensorFlow, which is not installed; install the keras extra "
            f"(tensorflow and tf-keras): {install_command('keras')}"
        ) from error
    return tf


class _Kind:
    """How to drive one family of TensorFlow optimizers: its variables, slots and weights.

    ``name`` is recorded in checkpoints. Subclasses differ in the variable type the
    optimizer accepts, how to create its slots before the first trace (so a ``tf.function``
    never creates variables, and weights loaded before the first step have somewhere to go),
    and how to list its state in an order that does not depend on variable names.
    """

    name = ""

    def __init__(self, tf: Any) -> None:
        self.tf = tf

    def make_variable(self, value: npt.NDArray[Any], index: int) -> tuple[Any, Any]:
        """A variable for one parameter, and the tf.Variable that holds its value."""
        variable = self.tf.Variable(value, name=f"param_{index}")
        return variable, variable

    def build(self, optimizer: Any, variables: list[Any]) -> None:
        raise NotImplementedError

    def weights(self, optimizer: Any, variables: list[Any]) -> list[Any]:
        """The optimizer's variables (slots and step count), in a fixed order."""
        return list(optimizer.variables)

    def config(self, optimizer: Any) -> dict[str, Any] | None:
        """The optimizer's settings as JSON types, or None when it has no config."""
        return _json_config(optimizer.get_config())


class _LegacyKeras(_Kind):
    """tf-keras's legacy optimizers (``tf_keras.optimizers.legacy``, OptimizerV2)."""

    name = "tf_keras.legacy"

    def build(self, optimizer: Any, variables: list[Any]) -> None:
        # What apply_gradients does first, under its own init_scope; idempotent.
        with self.tf.init_scope():
            optimizer._create_all_weights(variables)

    def weights(self, optimizer: Any, variables: list[Any]) -> list[Any]:
        return list(optimizer.variables())  # creation order: iterations, then slots


class _NewKeras(_Kind):
    """tf-keras's optimizers (``tf_keras.optimizers``, the "new" optimizer of TF 2.11+)."""

    name = "tf_keras"

    def build(self, optimizer: Any, variables: list[Any]) -> None:
        optimizer.build(variables)


class _Keras3(_NewKeras):
    """Keras 3 optimizers on the TensorFlow backend (what ``tf.keras`` is in TF 2.16+)."""

    name = "keras"

    def make_variable(self, value: npt.NDArray[Any], index: int) -> tuple[Any, Any]:
        # Keras 3 optimizers take only Keras variables; on TensorFlow, .value is the tf.Variable.
        import keras

        variable = keras.Variable(value, dtype=value.dtype.name, name=f"param_{index}")
        return variable, variable.value


class _CompatV1(_Kind):
    """``tf.compat.v1.train.Optimizer`` subclasses (apply_gradients runs eagerly and in tf.function)."""

    name = "tf.compat.v1"

    def build(self, optimizer: Any, variables: list[Any]) -> None:
        # _create_slots is the subclass hook apply_gradients calls under init_scope; the
        # stock optimizers' slot and non-slot creators return existing variables.
        with self.tf.init_scope():
            optimizer._create_slots(variables)

    def weights(self, optimizer: Any, variables: list[Any]) -> list[Any]:
        # variables() is sorted by name, and slot names get counters (param_0/Adam_2) that
        # depend on what the process built before: order the slots by slot name and parameter.
        slots = [
            slot
            for slot_name in optimizer.get_slot_names()
            for variable in variables
            if (slot := optimizer.get_slot(variable, slot_name)) is not None
        ]
        slot_ids = {id(s) for s in slots}
        return [v for v in optimizer.variables() if id(v) not in slot_ids] + slots

    def config(self, optimizer: Any) -> dict[str, Any] | None:
        return None


def _kind_of(optimizer: Any, tf: Any) -> _Kind:
    """The ``_Kind`` that drives ``optimizer``, or a TypeError saying what is accepted.

    A module that defines the class of a live instance is already imported, so
    ``sys.modules`` decides without importing Keras versions the user does not use.
    """
    if "tf_keras" in sys.modules:
        tf_keras = sys.modules["tf_keras"]
        if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
            return _LegacyKeras(tf)
        if isinstance(optimizer, tf_keras.optimizers.Optimizer):
            return _NewKeras(tf)
    keras = sys.modules.get("keras")
    if keras is not None and hasattr(keras, "Variable") and isinstance(optimizer, keras.optimizers.Optimizer):
        if keras.backend.backend() != "tensorflow":
            raise TypeError(f"TFOptimizer wraps Keras 3 optimizers on the TensorFlow backend, not {keras.backend.backend()!r}")
        return _Keras3(tf)
    if isinstance(optimizer, tf.compat.v1.train.Optimizer):
        return _CompatV1(tf)
    raise TypeError(
        "TFOptimizer wraps a TensorFlow optimizer (tf_keras.optimizers, tf_keras.optimizers.legacy, "
        f"Keras 3 on TensorFlow, or a tf.compat.v1.train.Optimizer), got {type(optimizer).__name__}"
    )


def _json_config(config: dict[str, Any]) -> dict[str, Any]:
    """``config`` as plain JSON types (NumPy scalars become Python numbers)."""

    def plain(value: object) -> Any:
        if isinstance(value, np.generic):
            return value.item()
        raise TypeError(f"the wrapped optimizer's config holds {value!r}, which a checkpoint cannot record as data")

    return json.loads(json.dumps(config, default=plain))  # type: ignore[no-any-return]  # json.loads gives Any


#: The dtypes a wrapped optimizer's variable may have in a format-1 config (no objects, no strings).
_WEIGHT_KINDS = "biuf"


def _array_name(index: int) -> str:
    """The name of the wrapped optimizer's ``index``-th variable in a checkpoint's /arrays.

    By position, not by the variable's name: TensorFlow numbers names by what the process
    built before (``param_0/Adam_2``), so a fresh optimizer of the same kind names them otherwise.
    """
    return f"wrapped_{index}"


def _decode(record: dict[str, Any], index: int) -> npt.NDArray[Any]:
    """A variable as format-1 checkpoints recorded it in the config (dtype, shape, base64
    little-endian bytes), or a ValueError naming what is wrong with it.

    Format 2 stores the variables as datasets (``checkpoint_arrays``); this reads the files
    numbaopt 0.1.0 wrote, which the checkpoint format promises to keep loading.
    """
    where = f"the wrapped optimizer's variable {index} in the checkpoint config"
    try:
        dtype = np.dtype(record["dtype"])
        shape = tuple(record["shape"])
        data = base64.b64decode(record["data"], validate=True)
    except (KeyError, TypeError, ValueError, binascii.Error) as error:
        raise ValueError(f"{where} is not a dtype, shape and base64 data: {error}") from None
    if dtype.kind not in _WEIGHT_KINDS or not all(isinstance(n, int) and n >= 0 for n in shape):
        raise ValueError(f"{where} has dtype {dtype} and shape {shape}, expected a numeric array")
    if len(data) != math.prod(shape) * dtype.itemsize:
        raise ValueError(f"{where} holds {len(data)} bytes, but shape {shape} {dtype} needs {math.prod(shape) * dtype.itemsize}")
    return np.frombuffer(data, dtype).reshape(shape).astype(dtype.newbyteorder("="))


def _config_differences(recorded: dict[str, Any], actual: dict[str, Any]) -> list[str]:
    """Keys whose values differ between two configs (floats within float32 rounding count as equal)."""
    differences = []
    for key in sorted(set(recorded) | set(actual)):
        if key == "name":
            continue  # Keras numbers names of later instances (Adam_1); no effect on the update
        a, b = recorded.get(key), actual.get(key)
        if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
            # TensorFlow stores hyperparameters in float32 variables once built, so a config
            # read after training gives 0.0010000000474974513 where a fresh one gives 0.001.
            if math.isclose(a, b, rel_tol=1e-6, abs_tol=0.0):
                continue
        elif a == b:
            continue
        differences.append(f"{key}: recorded {a!r}, given {b!r}")
    return differences


class _Binding:
    """The TensorFlow side of a TFOptimizer bound to one parameter layout."""

    def __init__(self, optimizer: Any, kind: _Kind, params: Sequence[npt.NDArray[Any]]) -> None:
        self.tf = tf = kind.tf
        pairs = [kind.make_variable(p, i) for i, p in enumerate(params)]
        self.variables = [variable for variable, _ in pairs]  # what the optimizer updates
        self.values = [value for _, value in pairs]  # their tf.Variables
        kind.build(optimizer, self.variables)
        self.weights = kind.weights(optimizer, self.variables)
        specs = [tf.TensorSpec(p.shape, tf.as_dtype(p.dtype)) for p in params]

        def step(params: Any, grads: Any) -> list[Any]:
            for value, param in zip(self.values, params):
                value.assign(param)
            optimizer.apply_gradients(zip(grads, self.variables))
            return [value.read_value() for value in self.values]

        # A fixed signature: one trace for the layout, never a retrace.
        self.step = tf.function(step, input_signature=[specs, specs])

    def check_weights(self, weights: Sequence[npt.NDArray[Any]], where: str) -> None:
        """Raise unless ``weights`` fit the wrapped optimizer's variables (count, shapes, dtypes)."""
        if len(weights) != len(self.weights):
            raise ValueError(
                f"{where}: got {len(weights)} arrays for the wrapped optimizer's variables, expected "
                f"{len(self.weights)} ({', '.join(v.name for v in self.weights)}); a checkpoint loads "
                "only into a freshly built optimizer of the same kind and the same parameters"
            )
        for w, variable in zip(weights, self.weights):
            dtype = np.dtype(self.tf.as_dtype(variable.dtype).as_numpy_dtype)  # Keras 3 gives a str
            if w.shape != tuple(variable.shape):
                raise ValueError(f"{where}: {variable.name} has shape {tuple(variable.shape)}, got {w.shape}")
            if w.dtype != dtype:
                raise TypeError(f"{where}: {variable.name} has dtype {dtype}, got {w.dtype}")

    def load(self, weights: Iterable[npt.NDArray[Any]]) -> None:
        for w, variable in zip(weights, self.weights):
            variable.assign(w)


@registry.register
@Optimizer.register
class TFOptimizer:
    """A native TensorFlow optimizer driven through the numbaopt API.

    ``TFOptimizer(optimizer)`` takes a tf-keras optimizer (legacy or new), a Keras 3
    optimizer on the TensorFlow backend, or a ``tf.compat.v1.train.Optimizer``.
    ``apply_gradients`` checks its pairs like every numbaopt optimizer, applies the wrapped
    optimizer's own update and writes it into the parameters in place; ``iterations``
    counts the steps. Clipping and learning-rate schedules are the wrapped optimizer's.

    It is an ``Optimizer`` (a registered virtual subclass) with the same public API; its
    state is the wrapped optimizer's variables, not numbaopt slots, so it has no slot
    kinds and no scalar state of its own.
    """

    slot_names: ClassVar[tuple[str, ...]] = ()
    slots: ClassVar[tuple[Slot, ...]] = ()  # its state is the wrapped optimizer's variables
    phases: ClassVar[tuple[Any, ...]] = ()
    scalar_state: ClassVar[tuple[tuple[str, float], ...]] = ()

    def __init__(self, optimizer: Any) -> None:
        tf = _import_tensorflow()
        self._kind = _kind_of(optimizer, tf)
        self.optimizer = optimizer
        self._iterations = 0
        self._names: tuple[str, ...] | None = None  # parameter names, from a named step, set_parameter_names or a checkpoint
        self._layout: Layout | None = None  # numbaopt.slots.Layout of the parameters, made by the first step
        self._tf: _Binding | None = None  # _Binding, made by the first step
        self._pending: list[npt.NDArray[Any]] | None = None  # the wrapped optimizer's weights given before the first step
        self._pending_origin = "set_weights"  # where they came from, for error messages

    def __repr__(self) -> str:
        return f"TFOptimizer({self.optimizer!r})"

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._iterations

    @property
    def parameter_names(self) -> tuple[str, ...] | None:
        """The recorded parameter names, or None."""
        return self._names

    def set_state_origin(self, origin: object) -> None:
        """Name where the state loaded before the first step came from, for the first step's errors."""
        self._pending_origin = str(origin)

    def set_parameter_names(self, names: Sequence[str]) -> None:
        """Record names for the parameters the wrapped optimizer's state belongs to."""
        if self._layout is None:
            raise ValueError("set_parameter_names: no parameters yet; pass names= to apply_gradients instead")
        self._names = names_tuple(names, self._layout.n_params)

    # -------------------------------------------------------------------- config

    def get_config(self) -> dict[str, Any]:
        raise NotImplementedError(NO_CONFIG)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> TFOptimizer:
        raise NotImplementedError(NO_CONFIG)

    def checkpoint_config(self) -> dict[str, Any]:
        """The wrapped optimizer's kind (family, module, class) and its config: what
        ``from_checkpoint_config`` checks a freshly built ``wrapped=`` against. Data, never
        pickled; the wrapped optimizer's variables are ``checkpoint_arrays``."""
        klass = type(self.optimizer)
        return {
            "kind": self._kind.name,
            "module": klass.__module__,
            "class_name": klass.__qualname__,
            "config": self._kind.config(self.optimizer),
        }

    def checkpoint_arrays(self) -> dict[str, npt.NDArray[Any]]:
        """The wrapped optimizer's variables (step count, slots, v1's ``beta1_power``...) in
        ``get_weights`` order: their number, shapes and dtypes are the wrapped optimizer's,
        not one float array per parameter and slot kind, so they are not numbaopt slots."""
        return {_array_name(i): w for i, w in enumerate(self.get_weights()[1:])}

    def load_checkpoint_arrays(self, arrays: Mapping[str, npt.NDArray[Any]]) -> None:
        """Give the wrapped optimizer the saved variables, checked against its own at the first step."""
        expected = [_array_name(i) for i in range(len(arrays))]
        if list(arrays) != expected:
            raise ValueError(
                f"TFOptimizer's checkpoint arrays are named {_array_name(0)}, {_array_name(1)}, ... in order, "
                f"got {list(arrays)[:8]}"
            )
        if arrays:
            self.set_weights([np.array(self._iterations, np.int64), *arrays.values()])

    @classmethod
    def declared_slots(cls, config: dict[str, Any]) -> tuple[Slot, ...]:
        """No slots, whatever the config: the state is the wrapped optimizer's variables."""
        return cls.slots

    @classmethod
    def from_checkpoint_config(cls, config: dict[str, Any], wrapped: Any = None, **options: Any) -> TFOptimizer:
        """A TFOptimizer around ``wrapped``, a freshly built TensorFlow optimizer of the recorded kind.

        A checkpoint holds data only, so it cannot build the TensorFlow optimizer itself;
        the caller builds it (same class, same settings) and the checkpoint's weights then
        give it its state. A different class or different settings raise ValueError.
        """
        if options:
            raise TypeError(f"TFOptimizer takes only wrapped= when loading, got {sorted(options)}")
        if not isinstance(config, dict) or not {"module", "class_name", "config"} <= config.keys():
            raise ValueError(f"a TFOptimizer checkpoint config has module, class_name and config, got {config!r:.200}")
        recorded = f"{config['module']}.{config['class_name']}"
        if wrapped is None:
            raise TypeError(
                f"this checkpoint holds a TFOptimizer around a {recorded}; load it with "
                "wrapped=<a freshly built TensorFlow optimizer of that class and settings>"
            )
        opt = cls(wrapped)
        given = f"{type(wrapped).__module__}.{type(wrapped).__qualname__}"
        if given != recorded:
            raise ValueError(f"this checkpoint holds a TFOptimizer around a {recorded}, but wrapped= is a {given}")
        if config["config"] is not None:
            differences = _config_differences(config["config"], opt._kind.config(wrapped))  # type: ignore[arg-type]  # a config, as recorded
            if differences:
                raise ValueError(
                    f"wrapped= has other settings than the checkpoint's {recorded}: " + "; ".join(differences)
                )
        weights = [_decode(w, i) for i, w in enumerate(config.get("weights", []))]  # format 1 only
        opt._pending = weights or None  # checked against the variables the first step creates
        return opt

    # ------------------------------------------------------------------ the step

    def apply_gradients(self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None = None) -> None:
        """Apply the wrapped optimizer's update to ``(gradient, parameter)`` pairs, in place.

        The checks are numbaopt's (NumPy parameters only; ``names`` as for every
        optimizer); a refused call raises and changes nothing. The first step binds the
        wrapped optimizer to the parameters' layout: it creates its slots then, and later
        steps must keep that layout.
        """
        cpu = devices.CPU
        grads, params = split_pairs(listed_pairs(grads_and_vars))
        names = checked_names(names, len(params), self._names)
        grads, params = checked_arrays(grads, params, cpu)
        if self._layout is None:
            layout = Layout(params, cpu)  # refuses parameters that share memory
            self._tf = _Binding(self.optimizer, self._kind, params)
            self._layout = layout
        else:
            self._layout.check(params, cpu)
        if self._pending is not None:
            self._tf.check_weights(self._pending, f"the first step after {self._pending_origin}")  # type: ignore[union-attr]  # bound above
            self._tf.load(self._pending)  # type: ignore[union-attr]  # bound with the layout
            self._pending = None
        for param, value in zip(params, self._tf.step(params, grads)):  # type: ignore[union-attr]  # bound with the layout
            np.copyto(param, value.numpy())
        self._iterations += 1
        if names is not None:
            self._names = names

    # ------------------------------------------------------------------- weights

    def get_weights(self) -> list[npt.NDArray[Any]]:
        """``[iterations]``, then the wrapped optimizer's variables (its step count and slots).

        Before the first step the wrapped optimizer has no slots for the parameters yet,
        so the list holds ``iterations`` and any weights given to ``set_weights``.
        """
        weights = [np.array(self._iterations, dtype=np.int64)]
        if self._pending is not None:
            return weights + [w.copy() for w in self._pending]
        if self._tf is None:
            return weights
        return weights + [np.array(v.numpy(), copy=True) for v in self._tf.weights]

    def set_weights(self, weights: Iterable[npt.ArrayLike]) -> None:
        """Load a ``get_weights()`` list; everything is checked before anything changes.

        Before the first step the wrapped optimizer's variables do not exist yet: the list
        is kept and checked against them when the first step creates them.
        """
        weights = keras_weights.as_arrays(weights)
        if not weights:
            raise ValueError("TFOptimizer.set_weights got no arrays, expected [iterations, ...]")
        iterations, _ = keras_weights.check_scalars({"iterations": weights[0]})
        rest = weights[1:]
        if rest and self._tf is not None:
            self._tf.check_weights(rest, "set_weights")
            self._tf.load(rest)
        elif rest:
            self._pending = [np.array(w, copy=True) for w in rest]
            self._pending_origin = "set_weights"
        self._iterations = iterations  # type: ignore[assignment]  # never None: "iterations" was checked

    def load_state(self, state: OptimizerState) -> None:
        """Take ``iterations`` and the names of an ``OptimizerState``; the wrapped optimizer's
        variables come with ``set_weights`` or ``load_checkpoint_arrays``."""
        if state.slots or state.scalars:
            raise ValueError("TFOptimizer keeps no numbaopt slots or scalar state")
        self.set_weights([np.array(state.iterations, np.int64)])
        if state.names is not None:
            self.set_parameter_names(state.names)

    def state(self) -> OptimizerState:
        """``iterations`` and the parameter names; the wrapped optimizer's variables are not
        numbaopt slots, so they are in ``get_weights()`` and ``checkpoint_arrays()`` instead."""
        return OptimizerState(self._iterations, {}, {}, self._names)

