"""Optimizer state in Keras model files: ``import_keras_optimizer`` and ``export_keras_optimizer``.

``model.save`` writes the optimizer's class, config and every slot into the model file:
a tf-keras ``.h5`` (attribute ``training_config``, groups ``optimizer_weights`` and
``model_weights``) or a ``.keras`` zip (``config.json`` and ``model.weights.h5``). This
module finds which Keras wrote the file and hands it to the reader of its optimizer
generation: ``keras_legacy_files`` for tf-keras's legacy optimizers (Keras 2.0's update,
into ``numbaopt.optimizers``), ``keras3_files`` for tf-keras's new-style optimizers and
Keras 3's (into ``numbaopt.keras3``; ``keras3_export`` writes them back). Every read runs
in a child process (``keras_isolation``). The page ``docs/keras-files.md`` says what is
supported.

Two promises, as for checkpoints:

* **Only what numbaopt reproduces exactly.** A class or setting whose arithmetic differs
  is refused with a ValueError that names it, never turned into a silently different
  optimizer.
* **A file is data.** Class names are looked up in numbaopt's registry, nothing named
  in a file is imported or run, every dataset is checked before it is read, and every
  damaged, truncated or foreign file raises ``CheckpointError``.
"""
from __future__ import annotations

import contextlib
import os
import random
import threading
import time
import zipfile
from collections.abc import Mapping
from typing import Any, TypeVar

import numpy.typing as npt

from numbaopt import checkpoint, halves, keras3_export, keras3_files, keras_legacy_files, keras_weights
from numbaopt.checkpoint import CheckpointError
from numbaopt.keras3.base import Keras3Optimizer
from numbaopt.keras3_files import GENERATION_NAMES, Keras3File
from numbaopt.keras_isolation import isolated
from numbaopt.keras_legacy_files import LEGACY, KerasOptimizerFile, KerasStateNotSaved
from numbaopt.keras_reading import class_and_config, json_attribute, reading, text
from numbaopt.optimizers import Optimizer

__all__ = ["KerasOptimizerFile", "KerasStateNotSaved", "describe", "export_keras_optimizer", "import_keras_optimizer",
           "is_keras_file", "read_keras_file"]

_AnyOptimizer = TypeVar("_AnyOptimizer", Optimizer, Keras3Optimizer)


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
    return keras_legacy_files.build(found)


def read_keras_file(path: str | os.PathLike[str]) -> KerasOptimizerFile | Keras3File:
    """The optimizer state of the Keras model file at ``path``, checked (see ``import_keras_optimizer``)."""
    path = os.fspath(path)
    try:
        if not os.path.isfile(path):
            raise CheckpointError("no such file" if not os.path.exists(path) else "not a regular file")
        if zipfile.is_zipfile(path):
            return isolated(_read_zip, path)
        return isolated(_read_h5, path)
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
        return zipfile.is_zipfile(path) or isolated(_has_keras_attributes, path)
    return False



def _has_keras_attributes(path: str) -> bool:
    import h5py

    if not h5py.is_hdf5(path):
        return False
    with h5py.File(path, "r") as f:
        return "training_config" in f.attrs or "model_weights" in f


def describe(found: KerasOptimizerFile | Keras3File) -> str:
    """Which Keras wrote the file, in words."""
    suffix = ".keras" if zipfile.is_zipfile(found.path) else ".h5"
    if isinstance(found, KerasOptimizerFile):
        words = f"tf-keras {suffix} model file, {LEGACY}"
        return words + (" (tf-keras saves no state for it in a .keras file: it starts afresh)" if suffix == ".keras" else "")
    words = f"{'Keras 3' if found.generation == 'keras3' else 'tf-keras'} {suffix} model file, {GENERATION_NAMES[found.generation]}"
    return words + (" in a LossScaleOptimizer (its inner state)" if found.loss_scaled else "")


def _read_h5(path: str) -> KerasOptimizerFile | Keras3File:
    """A ``.h5`` model file, by the generation of its optimizer."""
    import h5py

    with reading("the file"):
        if not h5py.is_hdf5(path):
            raise CheckpointError("neither an HDF5 file nor a zip (.keras): not a Keras model file")
        f = h5py.File(path, "r")
    with f, reading("the file"):  # the places below name themselves; this catches what a damaged file raises elsewhere
        if "training_config" not in f.attrs:
            raise CheckpointError("no attribute training_config: not a Keras model file saved with its optimizer "
                                  "(model.save after model.compile)")
        optimizer_config = json_attribute(f, "training_config").get("optimizer_config")
        class_name, config = class_and_config(optimizer_config, "training_config's optimizer_config")
        version = text(f.attrs["keras_version"]) if "keras_version" in f.attrs else ""
        if version.startswith("3.") or "inner_optimizer" in config:
            return keras3_files.read_h5(path, f, "keras3", optimizer_config, keras_legacy_files.model_weights(f))
        if config.get("is_legacy_optimizer") is False:
            return keras3_files.read_h5(path, f, "new", optimizer_config, keras_legacy_files.model_weights(f))
        return keras_legacy_files.read_h5(path, f, class_name, config)


def _read_zip(path: str) -> KerasOptimizerFile | Keras3File:
    """A ``.keras`` model file, by the generation of its optimizer."""
    parts = keras3_files.zip_parts(path)
    generation, description = keras3_files.zip_optimizer(parts)
    if generation == "legacy":
        return keras_legacy_files.read_zip(path, parts, description)
    return keras3_files.read_zip(path, parts, generation, description)


# ----------------------------------------------------------------------- export


def export_keras_optimizer(
    optimizer: Optimizer | Keras3Optimizer, path: str | os.PathLike[str], parameters: Mapping[str, npt.ArrayLike] | None = None,
    *, dequantize: bool = False,
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

    Keras holds its optimizer variables as float arrays: slots kept in 8 bits
    (``slot_dtype="q8"``) are refused unless ``dequantize=True``, which writes their
    dequantized float values (the 8-bit state itself lives in numbaopt's checkpoints).
    bfloat16 slots are written as their values, which float32 holds exactly.
    """
    with _export_lock(path):  # this process's exports to one file take turns
        _export(optimizer, path, parameters, dequantize)


def _export(optimizer: Optimizer | Keras3Optimizer, path: str | os.PathLike[str],
            parameters: Mapping[str, npt.ArrayLike] | None, dequantize: bool) -> None:
    """``export_keras_optimizer``, under its lock."""
    if isinstance(optimizer, Keras3Optimizer):
        pass
    elif not isinstance(optimizer, Optimizer) or getattr(type(optimizer), "rule", None) is None:
        raise TypeError(f"export_keras_optimizer needs one of numbaopt's Keras 2.0 or numbaopt.keras3 optimizers, "
                        f"got {type(optimizer).__name__}")
    if parameters is not None and not isinstance(parameters, Mapping):
        raise TypeError(f"parameters must be a dict of variable name -> array (as import_keras_optimizer "
                        f"returns), got {type(parameters).__name__}")
    if any(slot.dtype == "q8" for slot in getattr(optimizer, "slots", ())) and not dequantize:
        raise ValueError(
            f"{type(optimizer).__name__} keeps its slots in 8 bits (slot_dtype='q8'), which a Keras file cannot hold; "
            "export_keras_optimizer(..., dequantize=True) writes their dequantized float values instead, and "
            "numbaopt.save_optimizer keeps the 8-bit state itself"
        )
    optimizer = _as_keras_keeps_it(optimizer)
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
            keras_legacy_files.export(optimizer, found, parameters, read_from)
    except keras3_export.ReplacedMeanwhile:
        # Another process's export replaced the file after this one read it: start again
        # from that file, so that no file holds one export's settings with another's slots,
        # after a random pause that grows with the attempts (two exports never retry in step).
        _EXPORTS.depth = getattr(_EXPORTS, "depth", 0) + 1
        try:
            if _EXPORTS.depth > _EXPORT_ATTEMPTS:
                raise CheckpointError(f"{found.path}: other exports kept replacing the file; nothing was written") from None
            time.sleep(random.uniform(0, 0.001 * _EXPORTS.depth))
            _export(optimizer, path, parameters, dequantize)
        finally:
            _EXPORTS.depth -= 1


def _as_keras_keeps_it(optimizer: _AnyOptimizer) -> _AnyOptimizer:
    """``optimizer`` itself, or where it keeps numbaopt's own settings (``slot_dtype``,
    ``stochastic_rounding``) a twin without them, holding its state as float values."""
    memory = ("slot_dtype", "stochastic_rounding")
    config = optimizer.checkpoint_config()
    if not any(key in config for key in memory):
        return optimizer
    twin = type(optimizer).from_checkpoint_config({k: v for k, v in config.items() if k not in memory})
    state = keras_weights.values(optimizer, optimizer.state())
    if state.parameters is not None:  # float32 values, in the dtype the twin keeps for each parameter
        kept = [halves.compute_dtype(halves.as_dtype(dtype)) for _, dtype in state.parameters]
        state = state._replace(slots={kind: [a.astype(d) for a, d in zip(arrays, kept)] for kind, arrays in state.slots.items()})
    twin.load_state(state)
    return twin


#: How many times an export starts again while other exports replace the file under it.
_EXPORT_ATTEMPTS = 20
_EXPORTS = threading.local()
_EXPORT_LOCKS: dict[str, threading.RLock] = {}
_EXPORT_LOCKS_GUARD = threading.Lock()


def _export_lock(path: str | os.PathLike[str]) -> Any:
    """The lock of the file at ``path`` (by its real path) for this process's exports."""
    with _EXPORT_LOCKS_GUARD:
        return _EXPORT_LOCKS.setdefault(os.path.realpath(path), threading.RLock())
