"""``numbaopt.keras3`` optimizers written back into Keras 3 and tf-keras new-style model files.

The import (``keras3_files``) in reverse: the file is read and checked as for an import,
``laid_out`` gives its variables in Keras's order with the optimizer's values (the step
count, the learning rate, the averages and accumulators, the slots through
``keras_slot_variables``, the scalar state), and each value goes into the dataset the
import read it from, in the file's own format and optimizer generation:

* an ``.h5`` (Keras 3's, or tf-keras's with a new-style optimizer): ``optimizer_weights``
  and ``model_weights`` are written in place in a copy of the file (one saved before the
  first step gets the optimizer weights Keras's ``build`` makes, in its order);
* a ``.keras`` zip: ``model.weights.h5`` is rewritten and the zip written again with every
  other member as it was (``config.json`` too, unless the settings changed). A Keras 3
  ``LossScaleOptimizer`` keeps its inner optimizer's variables twice there (after its own
  four in ``optimizer/vars``, and in ``optimizer/inner_optimizer/vars``): both are written;
  the loss scale's own variables (its scale and step counter) are left as they were.

Everything is checked before anything is written (ValueError naming the mismatch), and the
file is replaced atomically (``checkpoint.replace_file``).
"""
from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt import keras_weights
from numbaopt.checkpoint import CheckpointError
from numbaopt.keras3.base import Keras3Optimizer
from numbaopt.keras3_files import GENERATION_NAMES, Entry, Keras3File, Values, laid_out, optimizer_from
from numbaopt.keras_reading import Stored, text, write_names

#: The variables a Keras 3 ``LossScaleOptimizer`` keeps before its inner optimizer's in
#: ``optimizer/vars`` of a ``.keras`` file: its iteration, learning rate, step counter and scale.
LOSS_SCALE_VARIABLES = 4

#: Settings that are no numbers of the update: the name (Keras's variable paths carry it, so
#: the file's is kept), numbaopt's device and tf-keras flavour (checked as the generation).
_NOT_SETTINGS = ("name", "device", "tf_keras", "slot_dtype", "stochastic_rounding")


class ReplacedMeanwhile(Exception):
    """The file an export read was replaced before the export copied it."""


def prepared(
    optimizer: Keras3Optimizer, found: Keras3File, parameters: Mapping[str, npt.ArrayLike] | None,
    read_from: tuple[int, int, int, int] | None,
) -> Callable[[str, str], None]:
    """Check ``optimizer`` (and ``parameters``) against the file ``found`` describes and
    return ``write(target, temporary)``, which writes the new file; ValueError naming the
    first mismatch, before anything is written."""
    where = f"{found.path}"
    if type(optimizer) is not found.optimizer_class:
        raise ValueError(f"{where} holds a {GENERATION_NAMES[found.generation]} {found.keras_class}; "
                         f"cannot write a {type(optimizer).__module__}.{type(optimizer).__name__} into it")
    tf_keras = bool(optimizer.get_config().get("tf_keras"))
    if tf_keras != (found.generation == "new"):
        raise ValueError(f"{where} holds a {GENERATION_NAMES[found.generation]}, but the optimizer has "
                         f"tf_keras={tf_keras}: the two compute some things otherwise (docs/keras3.md)")
    if optimizer.checkpoint_config().get("numbaopt_exclude_from_weight_decay") or getattr(optimizer, "_excluded_ids", None):
        raise ValueError(f"{where}: the optimizer excludes parameters from weight decay, which Keras does not save "
                         f"(exclude_from_weight_decay): Keras would decay them after loading the file")
    names = found.names
    params = [found.weights[n].value for n in names]
    theirs = found.optimizer_class.from_config(dict(found.arguments))
    ours_layout = laid_out(optimizer, found.generation, names, params, None)
    file_layout = laid_out(theirs, found.generation, names, params, None)
    if [(e.kind, e.shape, e.dtype) for e, _ in ours_layout] != [(e.kind, e.shape, e.dtype) for e, _ in file_layout]:
        ours_config, file_config = optimizer.get_config(), theirs.get_config()
        differ = [f"{k}={file_config.get(k)!r} in the file, {ours_config.get(k)!r} in the optimizer"
                  for k in sorted(set(ours_config) | set(file_config))
                  if k not in _NOT_SETTINGS and ours_config.get(k) != file_config.get(k)]
        raise ValueError(f"{where}: the optimizer keeps other variables than the file's {found.keras_class} "
                         f"({'; '.join(differ) or 'other settings'})")
    config = exported_config(optimizer, found)
    values = _values(optimizer, found, params)
    entries = laid_out(optimizer, found.generation, names, params, values)
    fresh = not found.slots and not found.arrays and len(found.variables) < len(entries)
    weight_names = None  # an .h5 file's new list of optimizer weights, where export lays them out
    if fresh:
        if found.loss_scaled:
            raise ValueError(f"{where} was saved before the first step and holds no slots yet; export lays them out "
                             f"in a file without a LossScaleOptimizer only (take a step in Keras and save first)")
        if found.format == "keras":
            holder = found.variables[0].rsplit("/", 1)[0] if found.variables else "optimizer/vars"
            paths = [f"{holder}/{i}" for i in range(len(entries))]
        else:
            weight_names = _h5_weight_names(found, [entry for entry, _ in entries])
            paths = [f"optimizer_weights/{name}" for name in weight_names]
    else:
        if len(found.variables) != len(entries):
            raise ValueError(f"{where} holds {len(found.variables)} optimizer variables, the optimizer {len(entries)}")
        paths = list(found.variables)
    writes: dict[str, npt.NDArray[Any]] = {}
    stored = {s.path: s.value for s in (found.iterations, found.learning_rate) if s is not None}
    for path, (entry, value) in zip(paths, entries):
        assert value is not None  # laid out with values
        writes[path] = _fitting(value, entry, path, stored.get(path))
    for name, given in (parameters or {}).items():
        if name not in found.weights:
            raise ValueError(f"parameters: {name!r} is no trainable variable of {where} "
                             f"(it has {', '.join(found.weights)})")
        writes[found.weights[name].path] = _fitting(given, _like(found.weights[name]), f"parameters[{name!r}]", None)

    def write(target: str, temporary: str) -> None:
        with open(target, "rb") as source:
            info = os.fstat(source.fileno())
            if read_from is not None and (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != read_from:
                raise ReplacedMeanwhile
            if found.format == "keras":
                _write_zip(source, temporary, writes, config, found.loss_scaled)
            else:
                with open(temporary, "wb") as copy:
                    shutil.copyfileobj(source, copy)
                _write_h5(temporary, writes, config, found.loss_scaled, weight_names)
        shutil.copymode(target, temporary)

    return write


def _like(stored: Stored) -> Entry:
    return Entry(stored.path, "parameter", -1, stored.value.shape, stored.value.dtype)


def _fitting(value: npt.ArrayLike, entry: Entry, what: str, stored: npt.NDArray[Any] | None) -> npt.NDArray[Any]:
    """``value`` as the file keeps it: the same shape and dtype (a step count in the file's integer type)."""
    array = np.asarray(value)
    if entry.kind == "iteration":
        dtype = stored.dtype if stored is not None else np.dtype(np.int64)  # int32 under JAX and torch
        if not np.iinfo(dtype).min <= int(array) <= np.iinfo(dtype).max:
            raise ValueError(f"{what}: the step count {int(array)} does not fit the file's {dtype}")
        return np.array(int(array), dtype)
    if array.shape != entry.shape:
        raise ValueError(f"{what} has shape {array.shape}, but the file's {entry.path} has shape {entry.shape}")
    if array.dtype != entry.dtype:
        raise ValueError(f"{what} has dtype {array.dtype}, but the file's {entry.path} has dtype {entry.dtype}")
    return np.array(array, order="C", copy=True)


def _values(optimizer: Keras3Optimizer, found: Keras3File, params: list[npt.NDArray[Any]]) -> Values:
    """The optimizer's state, per parameter in the file's order (matched by name where the
    optimizer has names, else by position); a state not yet built is what Keras builds."""
    state = keras_weights.values(optimizer, optimizer.state())
    arrays = optimizer.checkpoint_arrays()
    averages = [arrays[k] for k in sorted(arrays) if k.startswith("average.")]
    accumulators = [arrays[k] for k in sorted(arrays) if k.startswith("gradient_accumulator.")]
    slots = {kind: list(state.slots[kind]) for kind in optimizer.slot_names if kind in state.slots}
    counts = {len(v) for v in (*slots.values(), averages, accumulators) if v}
    names = optimizer.parameter_names
    if names is not None:
        if set(names) != set(found.names) or len(names) != len(found.names):
            missing = [n for n in found.names if n not in names]
            extra = [n for n in names if n not in found.names]
            raise ValueError(f"the optimizer's parameter names do not match {found.path}'s trainable variables: the "
                             f"file's {missing} are not among the optimizer's, the optimizer's {extra} not in the file")
        order = [names.index(n) for n in found.names]
    else:
        order = list(range(len(found.names)))
    if counts - {len(found.names)}:
        raise ValueError(f"the optimizer has state for {max(counts - {len(found.names)})} parameters, but {found.path} "
                         f"has {len(found.names)} trainable variables ({', '.join(found.names)})")

    slots = {kind: [v[i] for i in order] for kind, v in slots.items()}
    averages, accumulators = [[v[i] for i in order] if v else [] for v in (averages, accumulators)]
    if optimizer.slot_names and not slots:  # not built yet: the slots as Keras's build starts them
        initial = optimizer.initial_slots([np.array(p) for p in params])
        slots = {slot.name: list(initial[slot.name]) if initial else
                 [np.zeros(slot.shape_of(p.shape), slot.dtype_of(p.dtype)) for p in params] for slot in optimizer.slots}
    config = optimizer.get_config()
    if config["use_ema"] and not averages:  # Keras 3 starts them at zero, tf-keras at the parameters
        averages = [np.array(p) if config.get("tf_keras") else np.zeros_like(p) for p in params]
    if config["gradient_accumulation_steps"] and not accumulators:
        accumulators = [np.zeros_like(p) for p in params]
    calls = int(arrays.get("calls", optimizer.iterations))
    return Values(calls, optimizer.learning_rate, averages, accumulators, slots, dict(state.scalars))


def exported_config(optimizer: Keras3Optimizer, found: Keras3File) -> dict[str, Any] | None:
    """The file's optimizer config with the optimizer's settings, or None where they are the
    file's already (the name excepted: the file's is kept). A setting the file's Keras has no
    key for is written only at its default; otherwise a ValueError."""
    ours = _settings(optimizer.get_config())
    if ours == _settings(dict(found.arguments)):
        return None
    config = dict(found.keras_config)
    defaults = {h.name: h.default for h in type(optimizer).hyperparameters}
    for key, value in ours.items():
        if key in config:
            config[key] = value
        elif value != defaults.get(key):
            raise ValueError(f"{found.path}: the {GENERATION_NAMES[found.generation]} {found.keras_class} has no "
                             f"setting {key}; cannot write {key}={value!r}")
    description = {"class_name": found.keras_class, "config": config}
    rebuilt = optimizer_from(description, found.generation, "the exported config", stepped=False)[0]
    if _settings(rebuilt.get_config()) != ours:
        raise ValueError(f"{found.path}: Keras's {found.keras_class} cannot express {ours}")
    return config


def _settings(config: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in config.items() if k not in _NOT_SETTINGS}


def _set_config(training: dict[str, Any], key: str, config: dict[str, Any], loss_scaled: bool) -> None:
    """Put the optimizer's ``config`` into a model's ``compile_config`` or ``training_config``."""
    description = training[key]
    if loss_scaled:
        description = description["config"]["inner_optimizer"]
    description["config"] = config


def _h5_weight_names(found: Keras3File, entries: list[Entry]) -> list[str]:
    """The names of the optimizer weights an ``.h5`` saved before the first step gets: the
    file's own (its step count, Keras 3's learning rate), then Keras's paths of the others
    (``adam/dense_kernel_momentum``; tf-keras's end in ``:0``), made unique where Keras
    gives two variables one name (Adafactor's ``r`` and ``c``). Keras reads them by position."""
    names = [path.removeprefix("optimizer_weights/") for path in found.variables]
    suffix = ":0" if found.generation == "new" else ""
    for entry in entries[len(names):]:
        name, n = f"{entry.path}{suffix}", 1
        while name in names:
            name, n = f"{entry.path}_{n}{suffix}", n + 1
        names.append(name)
    return names


def _write_h5(temporary: str, writes: Mapping[str, npt.NDArray[Any]], config: dict[str, Any] | None, loss_scaled: bool,
              weight_names: list[str] | None) -> None:
    import h5py

    with h5py.File(temporary, "r+") as f:
        if weight_names is not None:
            weights_group = f.require_group("optimizer_weights")
            for key in [key for key in weights_group.attrs if key.startswith("weight_names")]:
                del weights_group.attrs[key]
            write_names(weights_group, "weight_names", weight_names)
        for where, value in writes.items():
            if where in f:
                f[where][()] = value
            else:  # laid out in a file saved before the first step
                f.create_dataset(where, data=value)
        if config is not None:
            training = json.loads(text(f.attrs["training_config"]))
            _set_config(training, "optimizer_config", config, loss_scaled)
            f.attrs["training_config"] = json.dumps(training).encode("utf8")


def _write_zip(source: Any, temporary: str, writes: Mapping[str, npt.NDArray[Any]], config: dict[str, Any] | None,
               loss_scaled: bool) -> None:
    """The ``.keras`` zip again, with ``model.weights.h5`` written and (``config``) ``config.json``."""
    import h5py

    with zipfile.ZipFile(source) as archive, zipfile.ZipFile(temporary, "w") as copy:
        for info in archive.infolist():
            data = archive.read(info)
            if info.filename == "model.weights.h5":
                data = _written_weights(h5py, data, writes, loss_scaled)
            elif info.filename == "config.json" and config is not None:
                model = json.loads(data)
                if isinstance(model["compile_config"]["optimizer"], str):  # compile(optimizer="adam")
                    model["compile_config"]["optimizer"] = {"class_name": model["compile_config"]["optimizer"]}
                _set_config(model["compile_config"], "optimizer", config, loss_scaled)
                data = json.dumps(model).encode("utf8")
            copy.writestr(info, data)


def _written_weights(h5py: Any, data: bytes, writes: Mapping[str, npt.NDArray[Any]], loss_scaled: bool) -> bytes:
    buffer = io.BytesIO(data)
    with h5py.File(buffer, "r+") as f:
        for where, value in writes.items():
            if where in f:
                f[where][()] = value
            else:  # laid out in a file saved before the first step
                f.create_dataset(where, data=value)
            if loss_scaled and where.startswith("optimizer/inner_optimizer/vars/"):
                # the loss scale's own copy, after its own variables; Keras reads the inner one
                outer = f"optimizer/vars/{int(where.rsplit('/', 1)[1]) + LOSS_SCALE_VARIABLES}"
                if outer not in f or f[outer].shape != value.shape or f[outer].dtype != value.dtype:
                    raise CheckpointError(f"model.weights.h5 has no {outer} like {where}: not the copy a "
                                          f"LossScaleOptimizer keeps")
                f[outer][()] = value
    return buffer.getvalue()
