"""Optimizer state in Keras model files: ``import_keras_optimizer`` and ``export_keras_optimizer``.

``model.save`` writes the optimizer's class, config and every slot into the model file:
a tf-keras ``.h5`` (attribute ``training_config``, groups ``optimizer_weights`` and
``model_weights``) or a Keras 3 ``.keras`` zip (``config.json`` and ``model.weights.h5``).
This module reads that state into a numbaopt optimizer and writes a numbaopt optimizer's
state back into a tf-keras ``.h5``. The page ``docs/keras-files.md`` says what is supported.

Two promises, as for checkpoints:

* **Only what numbaopt reproduces exactly.** A Keras class is imported only when its update
  is Keras 2.0's (as the optimizer of its name declares: its ``keras`` attribute,
  ``numbaopt.declarations``); a setting or a class whose arithmetic differs is refused
  with a ValueError that names it, never turned into a silently different optimizer.
* **A file is data.** Class names are looked up in numbaopt's registry, nothing named
  in a file is imported or run, every dataset is checked before it is read, and every
  damaged, truncated or foreign file raises ``CheckpointError``.
"""
from __future__ import annotations

import contextlib
import faulthandler
import io
import json
import math
import os
import pickle
import re
import select
import shutil
import signal
import threading
import time
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from numbaopt import checkpoint
from numbaopt import keras3_export, keras3_files
from numbaopt.checkpoint import CheckpointError
from numbaopt.declarations import KerasClass, keras_description
from numbaopt.keras3.base import Keras3Optimizer
from numbaopt.keras3_files import Keras3File
from numbaopt.keras_reading import (
    ATTRIBUTE_LIMIT as _ATTRIBUTE_LIMIT,
    LARGEST_JSON as _LARGEST_JSON,
    LARGEST_ZIP_RATIO as _LARGEST_ZIP_RATIO,
    Refused as _Refused,
    Stored as _Stored,
    check_finite as _check_finite,
    class_and_config as _class_and_config,
    dataset as _dataset,
    group as _group,
    json_attribute as _json_attribute,
    json_text as _json_text,
    names_attribute as _names_attribute,  # noqa: F401
    reading as _reading,
    text as _text,
    write_names as _write_names,  # noqa: F401
    zip_member as _zip_member,
)
from numbaopt.optimizers import Optimizer, rule_based
from numbaopt.registry import optimizer_class

#: The file generations (``numbaopt.declarations.GENERATIONS``) in words.
_GENERATION_NAMES = {
    "legacy": "tf-keras legacy optimizer (tf_keras.optimizers.legacy)",
    "new": "tf-keras new-style optimizer (tf_keras.optimizers)",
    "keras3": "Keras 3 optimizer",
}


_T = TypeVar("_T")


class KerasOptimizerFile(NamedTuple):
    """What a Keras model file holds about its optimizer, checked, as numbaopt sees it."""

    path: str
    generation: str  # "legacy", "new" or "keras3"
    keras_class: str
    keras_config: dict[str, Any]  # the optimizer's config as Keras wrote it
    arguments: dict[str, Any]  # numbaopt constructor arguments
    iterations: _Stored | None  # None when the file holds no optimizer weights
    scalars: dict[str, _Stored]  # numbaopt scalar state (``scalar_state``) by name
    names: tuple[str, ...]  # the parameters, in slot order
    weights: dict[str, _Stored]  # the parameters' values by name
    slots: dict[str, list[_Stored]]  # numbaopt slot kind -> one per parameter (empty kinds: not in the file)

    @property
    def optimizer_class(self) -> type[Optimizer]:
        cls: type[Optimizer] = optimizer_class(self.keras_class)
        return cls

    @property
    def keras(self) -> KerasClass:
        """What the optimizer declares about the Keras class of the file's generation."""
        return keras_description(self.optimizer_class).imported[self.generation]


# ----------------------------------------------------------------------- import


def import_keras_optimizer(path: str | os.PathLike[str]) -> tuple[Optimizer | Keras3Optimizer, dict[str, npt.NDArray[Any]]]:
    """The optimizer saved in a Keras model file, and the model's trainable weights.

    Returns ``(optimizer, params)``: a numbaopt optimizer of the file's class and config
    with its iterations, scalar state and every slot loaded (they bind at its next step),
    and ``{variable name: array}`` in the order the slots belong to the variables;
    ``optimizer.parameter_names == tuple(params)``. Names are as Keras writes them:
    ``hidden/kernel:0`` in a tf-keras ``.h5``, the variable's path in the weights file
    (``layers/dense/vars/0``) in a Keras 3 ``.keras``.

    Raises ``CheckpointError`` for a file that is not a readable Keras model file with an
    optimizer, and ``ValueError`` naming the class or setting for an optimizer whose update
    numbaopt cannot reproduce exactly.
    """
    found = read_keras_file(path)
    if isinstance(found, Keras3File):
        return keras3_files.build(found)
    if zipfile.is_zipfile(found.path):  # a tf-keras legacy optimizer in a .keras file
        warnings.warn(f"{found.path}: tf-keras saves a legacy optimizer in a .keras file without its state; "
                      f"{found.keras_class} starts afresh (iteration 0, zero slots)", KerasStateNotSaved, stacklevel=2)
    optimizer = found.optimizer_class(**found.arguments)
    weights: list[npt.NDArray[Any]] = [np.array(0 if found.iterations is None else found.iterations.value, np.int64)]
    for name, _ in optimizer.scalar_state:
        weights.append(np.array(found.scalars[name].value if name in found.scalars else 1.0, np.float64))
    for kind in optimizer.slot_names:
        slots = found.slots.get(kind)
        if slots:
            weights += [np.array(s.value, copy=True) for s in slots]
        else:  # a slot Keras does not keep at these settings (``unused_slots``), or no step yet
            weights += [np.zeros_like(found.weights[n].value) for n in found.names]
    params = {name: np.array(found.weights[name].value, order="C", copy=True) for name in found.names}
    try:
        optimizer.set_weights(weights)
        if found.names:
            optimizer.set_parameter_names(found.names)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{found.path}: the optimizer's weights do not fit {found.keras_class}: {error}") from error
    optimizer.set_state_origin(f"importing the Keras model file {found.path}")
    return optimizer, params


def read_keras_file(path: str | os.PathLike[str]) -> KerasOptimizerFile | Keras3File:
    """The optimizer state of the Keras model file at ``path``, checked (see ``import_keras_optimizer``)."""
    path = os.fspath(path)
    try:
        if not os.path.isfile(path):
            raise CheckpointError("no such file" if not os.path.exists(path) else "not a regular file")
        if zipfile.is_zipfile(path):
            return _isolated(_read_zip, path)
        return _isolated(_read_h5, path)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error.__cause__
    except ValueError as error:  # a refusal: numbaopt cannot reproduce the file's optimizer
        raise ValueError(f"{path}: {error}") from None


def is_keras_file(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` looks like a Keras model file (a zip, or an HDF5 file with Keras's
    attributes). Only a regular file is opened: a FIFO would block the reading forever,
    and ``/dev/zero`` would never end."""
    path = os.fspath(path)
    with contextlib.suppress(OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeError, CheckpointError):
        if not os.path.isfile(path):
            return False
        return zipfile.is_zipfile(path) or _isolated(_has_keras_attributes, path)
    return False


def _patience(path: str) -> float:
    """Seconds a child may take to read ``path``: a minute, and a second per 20 MB beyond."""
    return 60.0 + os.path.getsize(path) / 20e6


def _read_until_done(fd: int, pid: int, seconds: float) -> bytes:
    """Everything the child writes to ``fd``; the child is killed if it takes longer than
    ``seconds`` (HDF5 can loop forever on some damage), which leaves the data incomplete."""
    deadline = time.monotonic() + seconds
    chunks: list[bytes] = []
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([pipe], [], [], max(left, 0.0))[0] if left > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return b""
            chunk = pipe.read(2**16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def _has_keras_attributes(path: str) -> bool:
    import h5py

    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "training_config" in f.attrs or "model_weights" in f


def _isolated(read: Callable[[str], _T], path: str) -> _T:
    """``read(path)`` in a forked child process, where POSIX allows it, returning its result or
    raising its exception here.

    A Keras ``.h5`` file has no checksums on its metadata, and the HDF5 library crashes the
    process (a segmentation fault) on some damage, such as a flipped byte in the heap of
    its name lists: in a child, that crash becomes a CheckpointError. Without ``os.fork``, or
    with other Python threads running (one could hold h5py's lock as the child starts), the
    file is read in this process.
    """
    if not hasattr(os, "fork") or threading.active_count() > 1:
        return read(path)
    readable, writable = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of native threads (Numba's); the child uses none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: read, send the outcome, exit without running the parent's cleanup
        status = 0
        try:
            faulthandler.disable()
            os.close(readable)
            try:
                outcome: tuple[bool, Any] = (True, read(path))
            except Exception as error:  # noqa: BLE001  (raised again in the parent)
                outcome = (False, error)
            with os.fdopen(writable, "wb") as pipe:
                pickle.dump(outcome, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writable)
    try:
        data = _read_until_done(readable, pid, _patience(path))
    except BaseException:  # interrupted (KeyboardInterrupt, say): no child left running, no zombie
        _reaped(pid, kill=True)
        raise
    code = _reaped(pid)
    try:
        if code not in (0, None):
            raise ValueError("no outcome")
        succeeded, value = pickle.loads(data)  # written by the child above: arrays, strings, our exceptions
    except Exception:  # noqa: BLE001  (the child died before it could say)
        how = "unknown status" if code is None else f"signal {-code}" if code < 0 else f"status {code}"
        raise CheckpointError(f"the HDF5 library crashed or hung reading the file ({how}): it is damaged") from None
    if not succeeded:
        raise value
    return value  # type: ignore[no-any-return]  # pickle gives Any; the child returned read's _T


def _reaped(pid: int, kill: bool = False) -> int | None:
    """Wait for the child ``pid`` (killed first with ``kill``: a read that was interrupted)
    and return its exit code as ``os.waitstatus_to_exitcode`` gives it, or None where the
    process reaps its own children (``SIGCHLD`` ignored, or a handler that waits for them,
    as servers and job runners have): then the status is gone, and the child's outcome is
    what it wrote to the pipe."""
    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return None
    return os.waitstatus_to_exitcode(status)


def describe(found: KerasOptimizerFile | Keras3File) -> str:
    """Which Keras wrote the file, in words."""
    suffix = ".keras" if zipfile.is_zipfile(found.path) else ".h5"
    kind = f"{'Keras 3' if found.generation == 'keras3' else 'tf-keras'} {suffix} model file"
    words = f"{kind}, {_GENERATION_NAMES[found.generation]}"
    if isinstance(found, Keras3File) and found.loss_scaled:
        words += " in a LossScaleOptimizer (its inner state)"
    if isinstance(found, KerasOptimizerFile) and suffix == ".keras":
        words += " (tf-keras saves no state for it in a .keras file: it starts afresh)"
    return words


class KerasStateNotSaved(UserWarning):
    """The file holds the optimizer's class and settings but not its state (tf-keras's legacy
    optimizers in a ``.keras`` file): the imported optimizer starts afresh."""


# ------------------------------------------------------------- tf-keras .h5 files


def _read_h5(path: str) -> KerasOptimizerFile | Keras3File:
    import h5py

    with _reading("the file"):
        if not h5py.is_hdf5(path):
            raise CheckpointError("neither an HDF5 file nor a zip (.keras): not a Keras model file")
        f = h5py.File(path, "r")
    with f, _reading("the file"):  # the places below name themselves; this catches what a damaged file raises elsewhere
        if "training_config" not in f.attrs:
            raise CheckpointError("no attribute training_config: not a Keras model file saved with its optimizer "
                                  "(model.save after model.compile)")
        training_config = _json_attribute(f, "training_config")
        optimizer_config = training_config.get("optimizer_config")
        class_name, config = _class_and_config(optimizer_config, "training_config's optimizer_config")
        version = _text(f.attrs["keras_version"]) if "keras_version" in f.attrs else ""
        generation = "new" if config.get("is_legacy_optimizer") is False else "legacy"
        if version.startswith("3.") or "inner_optimizer" in config:
            generation = "keras3"
        if generation != "legacy":  # into numbaopt.keras3, the class of the same name
            return keras3_files.read_h5(path, f, generation, optimizer_config, _model_weights(f))
        keras_class = class_name.removeprefix("Custom>") if generation == "new" else class_name
        keras = _supported(generation, keras_class, class_name)
        model_weights = _model_weights(f)
        opt_name = config.get("name", keras_class)
        if not isinstance(opt_name, str):
            raise CheckpointError(f"the optimizer's name in training_config is not a string: {opt_name!r:.80}")
        group = _group(f, "optimizer_weights")
        iterations: _Stored | None = None
        scalars: dict[str, _Stored] = {}
        names: tuple[str, ...] = ()
        slots: dict[str, list[_Stored]] = {}
        if group is not None:
            iterations, scalars, names, slots = _optimizer_weights(group, generation, opt_name, keras)
            if not names and iterations is not None and int(iterations.value) == 0:
                iterations = None  # new-style tf-keras saves its iteration count alone before the first step
        if not names:  # no slots name the trainable variables: Keras records no trainability per weight
            names = tuple(model_weights)
        for name in names:
            if name not in model_weights:
                raise CheckpointError(f"optimizer_weights has slots for {name!r}, which model_weights does not hold")
        weights = {name: model_weights[name] for name in names}
        _check_slot_shapes(names, weights, slots)
    arguments = _arguments(keras_class, generation, config, bool(slots), _is_float64(weights))
    if iterations is not None:
        _check_every_slot(keras_class, arguments, keras, slots, scalars)
    return KerasOptimizerFile(path, generation, keras_class, config, arguments, iterations, scalars, names, weights, slots)


def _supported(generation: str, keras_class: str, class_name: str) -> KerasClass:
    """What the optimizer of the class's name declares about the class (its slot names...), or a
    ValueError saying why it is not imported."""
    imported = []
    for cls in rule_based():
        keras = keras_description(cls)
        if cls.__name__ == keras_class and generation in keras.imported:
            return keras.imported[generation]
        if cls.__name__ == keras_class and generation in keras.refused:
            raise _Refused(f"cannot import the {_GENERATION_NAMES[generation]} {keras_class}: "
                           f"{keras.refused[generation]}, so its update is not Keras 2.0's")
        if generation in keras.imported:
            imported.append(cls.__name__)
    raise _Refused(f"cannot import the optimizer class {class_name!r} ({_GENERATION_NAMES[generation]}): numbaopt "
                   f"imports only {', '.join(imported)}, whose update is Keras 2.0's; a custom or other class is not imported")


def _model_weights(f: Any) -> dict[str, _Stored]:
    """Every weight in ``model_weights``, by the name Keras gave it, in the file's order."""
    group = _group(f, "model_weights")
    if group is None:
        raise CheckpointError("group model_weights is missing: not a tf-keras model file")
    weights: dict[str, _Stored] = {}
    for layer in _names_attribute(group, "layer_names", "model_weights"):
        layer_group = _group(group, layer)
        if layer_group is None:
            raise CheckpointError(f"model_weights names layer {layer!r}, which it does not hold")
        for name in _names_attribute(layer_group, "weight_names", f"model_weights/{layer}"):
            where = f"model_weights/{layer}/{name}"
            value = _dataset(layer_group, name, where)
            if value.dtype.kind != "f":
                raise CheckpointError(f"{where} has dtype {value.dtype}, not a float")
            weights[name] = _Stored(where, value)
    return weights


def _optimizer_weights(
    group: Any, generation: str, opt_name: str, keras: KerasClass
) -> tuple[_Stored | None, dict[str, _Stored], tuple[str, ...], dict[str, list[_Stored]]]:
    """iterations, scalar state, parameter names and slots from ``optimizer_weights``."""
    slot_names = keras.slots
    by_keras_name = {keras_name: kind for kind, keras_name in slot_names.items()}
    scalar_names = {f"{opt_name}/{keras_name}:0": (name, keras_name) for name, keras_name in keras.scalars.items()}
    iterations: _Stored | None = None
    scalars: dict[str, _Stored] = {}
    found: dict[str, dict[str, _Stored]] = {kind: {} for kind in slot_names}
    names: list[str] = []
    for weight in _names_attribute(group, "weight_names", "optimizer_weights"):
        where = f"optimizer_weights/{weight}"
        value = _dataset(group, weight, where)
        if weight == (f"{opt_name}/iter:0" if generation == "legacy" else "iteration:0"):
            if value.shape != () or value.dtype.kind not in "iu" or not 0 <= int(value) < 2**63:
                raise CheckpointError(f"{where} is not an iteration count: {value!r:.60}")
            iterations = _Stored(where, value)
            continue
        if generation == "legacy" and weight in scalar_names:  # only tf-keras's legacy optimizers keep scalar state
            name, keras_name = scalar_names[weight]
            if value.shape != () or value.dtype.kind != "f" or not math.isfinite(float(value)):
                raise CheckpointError(f"{where} is not a {keras_name} (the scalar {name}): {value!r:.60}")
            scalars[name] = _Stored(where, value)
            continue
        kind, variable = _slot_of(weight, generation, opt_name, by_keras_name)
        if kind is None:
            raise CheckpointError(f"{where} is no weight of the optimizer {opt_name!r} that numbaopt knows")
        if variable in found[kind]:
            raise CheckpointError(f"{where}: a second {slot_names[kind]} slot for {variable!r}")
        if variable not in names:
            names.append(variable)
        found[kind][variable] = _Stored(where, value)
    slots: dict[str, list[_Stored]] = {}
    for kind, per_variable in found.items():
        if not per_variable:
            continue
        missing = [n for n in names if n not in per_variable]
        if missing:
            raise CheckpointError(f"optimizer_weights has no {slot_names[kind]} slot for {missing[0]!r}")
        slots[kind] = [per_variable[n] for n in names]
    if iterations is None:
        raise CheckpointError("optimizer_weights holds no iteration count")
    return iterations, scalars, tuple(names), slots


def _slot_of(weight: str, generation: str, opt_name: str, by_keras_name: Mapping[str, str]) -> tuple[str | None, str]:
    """(numbaopt slot kind, variable name) of an optimizer weight name, or (None, "")."""
    if not weight.startswith(f"{opt_name}/"):
        return None, ""
    rest = weight[len(opt_name) + 1:]
    if generation == "legacy":  # <opt>/<variable>/<slot>:<n>
        match = re.fullmatch(r"(.+)/([^/]+)(:\d+)", rest)
        if match and match[2] in by_keras_name:
            return by_keras_name[match[2]], match[1] + match[3]
    else:  # <opt>/<slot>/<variable>:<n>
        slot, _, variable = rest.partition("/")
        if slot in by_keras_name and variable:
            return by_keras_name[slot], variable
    return None, ""


def _check_every_slot(
    keras_class: str, arguments: Mapping[str, Any], keras: KerasClass, slots: Mapping[str, Any],
    scalars: Mapping[str, Any],
) -> None:
    """A file with optimizer weights holds every slot kind and scalar, but the slots Keras does
    not keep at its settings (``unused_slots``: they have no effect then)."""
    cls = optimizer_class(keras_class)
    unused = keras_description(cls).unused_slots
    for kind, keras_name in keras.slots.items():
        if kind not in slots and not (kind in unused and arguments.get(unused[kind]) == 0):
            raise CheckpointError(f"optimizer_weights holds no {keras_name} slots, which {keras_class} keeps")
    for name, _ in cls.scalar_state:
        if name not in scalars:
            raise CheckpointError(f"optimizer_weights holds no {keras.scalars.get(name, name)}, {keras_class}'s {name}")


def _is_float64(weights: Mapping[str, _Stored]) -> bool:
    return any(w.value.dtype == np.float64 for w in weights.values())


def _check_slot_shapes(names: tuple[str, ...], weights: Mapping[str, _Stored], slots: Mapping[str, list[_Stored]]) -> None:
    for kind, per_parameter in slots.items():
        for name, slot in zip(names, per_parameter):
            weight = weights[name].value
            if slot.value.shape != weight.shape or slot.value.dtype != weight.dtype:
                raise CheckpointError(
                    f"{slot.path} is {slot.value.dtype}{list(slot.value.shape)}, but its variable {name} is "
                    f"{weight.dtype}{list(weight.shape)}"
                )


# ------------------------------------------------------------- Keras 3 .keras files


def _read_zip(path: str) -> KerasOptimizerFile | Keras3File:
    """A ``.keras`` file: Keras 3's or tf-keras's new-style optimizer into numbaopt.keras3; a
    tf-keras legacy optimizer, which tf-keras saves in a ``.keras`` file without its
    state, as a fresh Keras 2.0 optimizer (``iterations`` None) over the trainable weights."""
    import h5py

    parts = keras3_files.zip_parts(path)
    generation, description = keras3_files.zip_optimizer(parts)
    if generation != "legacy":
        return keras3_files.read_zip(path, parts, generation, description)
    class_name, config = _class_and_config(description, "config.json's optimizer")
    if description.get("module") not in (None, "keras.optimizers.legacy") or description.get("registered_name") not in (None, class_name):
        raise _Refused(f"cannot import the optimizer class {class_name!r} from module {description.get('module')!r}: "
                       f"a custom optimizer class is user code, not imported")
    _supported("legacy", class_name, class_name)
    with _reading("model.weights.h5"):
        f = h5py.File(io.BytesIO(parts.weights), "r")
    with f, _reading("model.weights.h5"):
        weights = {w.name: w.stored for w in keras3_files.zip_weights(f, parts.model_config) if w.trainable is not False}
    arguments = _arguments(class_name, "legacy", config, False, _is_float64(weights))
    return KerasOptimizerFile(path, "legacy", class_name, config, arguments, None, {}, tuple(weights), weights, {})


def _setting(config: Mapping[str, Any], key: str) -> float:
    """A numeric setting of a Keras config; 1.0 where it is missing or not a number."""
    value = config.get(key, 1.0)
    return float(value) if isinstance(value, (int, float)) else 1.0


def _arguments(
    keras_class: str, generation: str, config: Mapping[str, Any], has_slots: bool, float64: bool
) -> dict[str, Any]:
    """numbaopt constructor arguments for a Keras config, or a ValueError naming what numbaopt cannot honour.

    ``float64``: whether the model's weights are float64, where tf-keras rounds some settings
    to float32 on their way into the arithmetic (``tf.cast`` of a Python float goes through
    float32); those are rounded here as TensorFlow rounds them, or refused where Keras uses
    the same setting both rounded and not.
    """
    from numbaopt import keras_config

    config = dict(config)
    where = f"the {_GENERATION_NAMES[generation]} {keras_class}"
    cls = optimizer_class(keras_class)
    description = keras_description(cls)
    keras = description.imported.get(generation, KerasClass({}))
    if float64:
        for key in keras.float32_settings:
            if isinstance(config.get(key), float):
                config[key] = float(np.float32(config[key]))
        mixed = [keras.mixed_constant] if keras.mixed_constant else []
        mixed += [f"{key}={config[key]!r}" for key in keras.mixed_settings
                  if isinstance(config.get(key), float) and float(np.float32(config[key])) != config[key]]
        if mixed:
            raise ValueError(
                f"{where} in a float64 model uses {mixed[0]} "
                f"rounded to float32 in one place and not in another; numbaopt cannot reproduce that exactly"
            )
    if isinstance(config.get("learning_rate"), dict):
        raise ValueError(f"{where} uses a learning-rate schedule ({config['learning_rate'].get('class_name')!r}); "
                         f"numbaopt has Keras 2.0's decay only")
    if config.get("global_clipnorm") is not None and config.get("clipvalue") is not None:
        raise ValueError(f"{where} sets both global_clipnorm and clipvalue: Keras clips by value first, "
                         f"Keras 2.0 (numbaopt) by norm first, and the two do not commute")
    for key, setting in description.renamed.items():
        if setting in config:  # Keras builds it from the setting's own key then (written by export_keras_optimizer)
            config.pop(key, None)
    for key in description.in_slots:
        if key in config and has_slots:  # the slots in the file already hold it
            del config[key]
    arguments = keras_config.keras2_arguments(cls, config)
    if "learning_rate" in arguments:
        arguments["lr"] = arguments.pop("learning_rate")
    declared = {h.name for h in cls.hyperparameters}
    for key in arguments:
        if key not in declared | {"clipnorm", "clipvalue", "lr"}:
            raise ValueError(f"{where} has the setting {key}={arguments[key]!r}, which numbaopt's {keras_class} lacks")
    for h in cls.hyperparameters:
        if h.name not in arguments and h.name != "decay":
            raise CheckpointError(f"the optimizer config lacks {h.name!r}: numbaopt takes no default for it")
    try:
        cls(**arguments)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"the optimizer config holds a value numbaopt refuses: {error}") from error
    return arguments


# ----------------------------------------------------------------------- export


def export_keras_optimizer(
    optimizer: Optimizer | Keras3Optimizer, path: str | os.PathLike[str], parameters: Mapping[str, npt.ArrayLike] | None = None
) -> None:
    """Write ``optimizer``'s state (and ``parameters``' values) into the Keras model file at ``path``.

    The file keeps its format (``.h5`` or ``.keras``) and optimizer generation, so Keras's
    ``load_model`` (the library that wrote it) resumes training with exactly this state:

    * a tf-keras ``.h5`` with a legacy optimizer (``numbaopt.optimizers``): the iteration
      count, the scalar state (``scalar_state``), every slot (matched to the file's
      variables by name when the optimizer has parameter names, else by position) and the
      optimizer's settings in ``training_config``;
    * a Keras 3 ``.keras`` or ``.h5``, or a tf-keras ``.h5`` or ``.keras`` with a new-style
      optimizer (``numbaopt.keras3``): every variable of Keras's ``optimizer.variables``
      (``numbaopt.keras3_export``), the settings in the file's optimizer config;

    and each ``{name: array}`` of ``parameters`` into the model variable of that name (as
    ``import_keras_optimizer`` names them). Everything is checked before anything is written
    (ValueError naming what does not match), and the file is replaced atomically.
    """
    if isinstance(optimizer, Keras3Optimizer):
        pass
    elif not isinstance(optimizer, Optimizer) or getattr(type(optimizer), "rule", None) is None:
        raise TypeError(f"export_keras_optimizer needs one of numbaopt's Keras 2.0 or numbaopt.keras3 optimizers, "
                        f"got {type(optimizer).__name__}")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise TypeError(f"parameters must be a dict of variable name -> array (as import_keras_optimizer "
                        f"returns), got {type(parameters).__name__}")
    read_from = checkpoint.file_identity(path)  # the file this export reads, and must copy (another export may replace it)
    found = read_keras_file(path)
    try:
        if isinstance(found, Keras3File):
            if not isinstance(optimizer, Keras3Optimizer):
                raise ValueError(f"{found.path} holds a {describe(found)}: it takes a numbaopt.keras3.{found.keras_class}, "
                                 f"not a {type(optimizer).__module__}.{type(optimizer).__name__}")
            write = keras3_export.prepared(optimizer, found, parameters, read_from)
            target = os.path.realpath(found.path)
            checkpoint.replace_file(target, lambda temporary: write(target, temporary))
            with contextlib.suppress(OSError):
                checkpoint.fsync_directory(os.path.dirname(target))
        else:
            _export_legacy(optimizer, found, parameters, read_from)
    except _ReplacedMeanwhile:
        # Another export replaced the file after this one read it: start again from that
        # file, so that no file holds one export's settings with another's slots.
        _EXPORTS.depth = getattr(_EXPORTS, "depth", 0) + 1
        try:
            if _EXPORTS.depth > _EXPORT_ATTEMPTS:
                raise CheckpointError(f"{found.path}: other exports kept replacing the file; nothing was written") from None
            export_keras_optimizer(optimizer, path, parameters)
        finally:
            _EXPORTS.depth -= 1


def _export_legacy(
    optimizer: Optimizer, found: KerasOptimizerFile, parameters: Mapping[str, npt.ArrayLike] | None,
    read_from: tuple[int, int, int, int] | None,
) -> None:
    """Into a tf-keras ``.h5`` with a legacy optimizer (Keras 2.0's family)."""
    if zipfile.is_zipfile(found.path):
        raise ValueError(f"{found.path}: tf-keras saves a legacy optimizer in a .keras file without its state, and "
                         f"loads none from it; export writes legacy optimizers into .h5 model files")
    if found.optimizer_class is not type(optimizer):
        raise ValueError(f"{found.path} holds a {found.keras_class} optimizer; cannot write a {type(optimizer).__name__} into it")
    state = optimizer.state()
    created = None
    if found.iterations is None:  # saved before the first step: lay out the weights Keras would create
        found, created = _laid_out(found, optimizer, state.names)
    order = _parameter_order(optimizer, state.names, found, state.slots)
    writes: dict[str, npt.NDArray[Any]] = {}
    assert found.iterations is not None  # read from the file, or laid out above
    writes[found.iterations.path] = np.array(state.iterations, found.iterations.value.dtype)
    for name, slot in found.scalars.items():
        writes[slot.path] = np.array(state.scalars[name], slot.value.dtype)
    for kind in optimizer.slot_names:
        if kind not in found.slots:
            if not _unused_slot(optimizer, kind):
                raise ValueError(f"{found.path} keeps no {kind} slots, which {type(optimizer).__name__} at its settings needs")
            continue
        for i, (slot, index) in enumerate(zip(found.slots[kind], order)):
            writes[slot.path] = _fitting(state.slots[kind][index], slot, f"slot {kind} of {found.names[i]!r}")
    for name, value in (parameters or {}).items():
        if name not in found.weights:
            raise ValueError(f"parameters: {name!r} is no weight of {found.path} (it has {', '.join(found.weights)})")
        writes[found.weights[name].path] = _fitting(value, found.weights[name], f"parameters[{name!r}]")
    training_config = _training_config(optimizer, found)
    _replace_atomically(found.path, writes, training_config, created, read_from)


#: How many times an export starts again while other exports replace the file under it.
_EXPORT_ATTEMPTS = 20
_EXPORTS = threading.local()


_ReplacedMeanwhile = keras3_export.ReplacedMeanwhile


def _laid_out(
    found: KerasOptimizerFile, optimizer: Optimizer, names: tuple[str, ...] | None
) -> tuple[KerasOptimizerFile, list[str]]:
    """``found`` with the optimizer weights Keras creates for the named parameters, and their
    names in the order Keras lists them: legacy ``<opt>/iter:0``, then each slot kind for all
    variables (``<opt>/<variable>/<slot>:0``); new-style ``iteration:0``, then every slot of
    each variable in turn (``<opt>/<slot>/<variable>:0``). The variables come in the model's order."""
    if names is None:
        raise ValueError(f"{found.path} holds no optimizer weights yet, so the optimizer's parameters must be named "
                         f"(set_parameter_names, or names= in apply_gradients) to say which weights they are")
    unknown = [n for n in names if n not in found.weights]
    if unknown:
        raise ValueError(f"the optimizer's parameters {unknown} are no weights of {found.path}")
    variables = tuple(n for n in found.weights if n in names)
    opt_name = str(found.keras_config.get("name", found.keras_class))
    keras_slots = found.keras.slots
    kinds = [k for k in keras_slots if found.generation != "legacy" or not _unused_slot(optimizer, k)]
    legacy = found.generation == "legacy"

    def slot_path(kind: str, variable: str) -> str:
        if not legacy:
            return f"{opt_name}/{keras_slots[kind]}/{variable}"
        match = re.fullmatch(r"(.+)(:\d+)", variable)
        if match is None:
            raise ValueError(f"{found.path}: the weight name {variable!r} lacks the ':0' ending tf-keras gives it")
        return f"{opt_name}/{match[1]}/{keras_slots[kind]}{match[2]}"

    slots = {kind: [_Stored(f"optimizer_weights/{slot_path(kind, v)}", found.weights[v].value) for v in variables]
             for kind in kinds}
    weight_names = [f"{opt_name}/iter:0" if legacy else "iteration:0"]
    iterations = _Stored(f"optimizer_weights/{weight_names[0]}", np.zeros((), np.int64))
    scalars = {}
    for name, _ in optimizer.scalar_state:  # in the first variable's dtype, as tf-keras keeps it
        weight_names.append(f"{opt_name}/{found.keras.scalars.get(name, name)}:0")
        scalars[name] = _Stored(f"optimizer_weights/{weight_names[-1]}", np.zeros((), found.weights[variables[0]].value.dtype))
    if legacy:
        weight_names += [slot_path(kind, v) for kind in kinds for v in variables]
    else:
        weight_names += [slot_path(kind, v) for v in variables for kind in kinds]
    return found._replace(iterations=iterations, scalars=scalars, names=variables, slots=slots), weight_names


def _parameter_order(
    optimizer: Optimizer, names: tuple[str, ...] | None, found: KerasOptimizerFile, slots: Mapping[str, list[Any]]
) -> list[int]:
    """For each of the file's variables, the index of the optimizer's parameter that is it."""
    n_params = len(next(iter(slots.values()), []))
    if n_params != len(found.names):
        raise ValueError(f"{type(optimizer).__name__} has slots for {n_params} parameters, but {found.path} "
                         f"has {len(found.names)} variables with slots ({', '.join(found.names)})")
    if names is None:
        return list(range(n_params))
    if set(names) != set(found.names):
        missing = sorted(set(found.names) - set(names))
        extra = sorted(set(names) - set(found.names))
        raise ValueError(f"the optimizer's parameter names do not match {found.path}'s variables: "
                         f"the file's {missing} are not among the optimizer's, the optimizer's {extra} not in the file")
    return [names.index(name) for name in found.names]


def _unused_slot(optimizer: Optimizer, kind: str) -> bool:
    """Whether the slot ``kind`` has no effect at the optimizer's settings (its ``unused_slots``)."""
    setting = keras_description(type(optimizer)).unused_slots.get(kind)
    return setting is not None and optimizer.get_config().get(setting) == 0


def _fitting(value: npt.ArrayLike, slot: _Stored, what: str) -> npt.NDArray[Any]:
    array = np.asarray(value)
    if array.shape != slot.value.shape:
        raise ValueError(f"{what} has shape {array.shape}, but {slot.path} has shape {slot.value.shape}")
    if array.dtype != slot.value.dtype:
        raise ValueError(f"{what} has dtype {array.dtype}, but {slot.path} has dtype {slot.value.dtype}")
    return np.array(array, order="C", copy=True)


def _training_config(optimizer: Optimizer, found: KerasOptimizerFile) -> dict[str, Any] | None:
    """The file's optimizer config with the optimizer's settings, or None when they are the file's already."""
    wanted = optimizer.checkpoint_config()
    float64 = _is_float64(found.weights)

    def settings(config: Mapping[str, Any]) -> dict[str, Any]:
        arguments = _arguments(found.keras_class, found.generation, config, bool(found.slots), float64)
        return found.optimizer_class(**arguments).checkpoint_config()

    # A setting Keras stores under another key (``renamed``) is written under both: Keras builds
    # itself from the setting's own key, with a default of its own where the config lacks it.
    renamed = keras_description(found.optimizer_class).renamed
    if settings(found.keras_config) == wanted and all(s in found.keras_config for s in renamed.values()):
        return None
    config = dict(found.keras_config)
    for key, value in wanted.items():
        if key == "lr":
            config["learning_rate"] = value
        elif key in renamed.values():
            for other in (other for other, setting in renamed.items() if setting == key):
                config[other] = value
            config[key] = value
        elif key == "clipnorm":
            config["global_clipnorm"] = value
        elif key == "decay" and "decay" not in config:
            if value:
                raise ValueError(f"{found.path}: the {_GENERATION_NAMES[found.generation]} has no decay; "
                                 f"cannot write decay={value!r}")
        else:
            config[key] = value
    for key in ("clipnorm", "clipvalue"):
        if key not in wanted and (found.keras_config.get("global_clipnorm" if key == "clipnorm" else key) is not None):
            config["global_clipnorm" if key == "clipnorm" else key] = None
    if settings(config) != wanted:
        raise ValueError(f"{found.path}: Keras's {found.keras_class} cannot express {wanted}")
    return config


def _replace_atomically(
    path: str, writes: Mapping[str, npt.NDArray[Any]], optimizer_config: dict[str, Any] | None,
    created: list[str] | None, read_from: tuple[int, int, int, int] | None = None,
) -> None:
    """Copy the file, write ``writes`` (dataset path -> value) into the copy, fsync, move it over ``path``.

    ``created``: the names of the optimizer weights to list in a new group ``optimizer_weights``.
    ``read_from``: the ``checkpoint.file_identity`` of the file ``writes`` were computed from; the copy is
    made from that very file, or ``_ReplacedMeanwhile`` is raised and nothing is written.
    """
    import h5py

    target = os.path.realpath(path)

    def write(temporary: str) -> None:
        with open(target, "rb") as source:
            info = os.fstat(source.fileno())
            if read_from is not None and (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != read_from:
                raise _ReplacedMeanwhile
            with open(temporary, "wb") as copy:
                shutil.copyfileobj(source, copy)
        shutil.copymode(target, temporary)
        with h5py.File(temporary, "r+") as f:
            if created is not None:
                if "optimizer_weights" in f:  # new-style tf-keras's iteration count alone
                    del f["optimizer_weights"]
                _write_names(f.create_group("optimizer_weights"), "weight_names", created)
            for where, value in writes.items():
                if where in f:
                    f[where][()] = value
                else:
                    f.create_dataset(where, data=value)
            if optimizer_config is not None:
                training_config = json.loads(_text(f.attrs["training_config"]))
                training_config["optimizer_config"]["config"] = optimizer_config
                f.attrs["training_config"] = json.dumps(training_config).encode("utf8")

    checkpoint.replace_file(target, write)
    with contextlib.suppress(OSError):
        checkpoint.fsync_directory(os.path.dirname(target))


