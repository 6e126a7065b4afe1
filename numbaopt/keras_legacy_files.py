"""tf-keras's legacy optimizers (``tf_keras.optimizers.legacy``) in model files, as Keras 2.0's.

tf-keras 2.x keeps the Keras 2.0 optimizers as its legacy ones: their update is Keras
2.0's, so their state imports into ``numbaopt.optimizers`` exactly (as each optimizer
module declares in its ``keras`` attribute, ``numbaopt.declarations``). A ``.h5`` file
holds their state (``optimizer_weights``: ``<opt>/iter:0``, ``<opt>/<variable>/<slot>:0``);
a ``.keras`` file holds only their class and settings. ``read_h5`` and ``read_zip`` read
them, ``build`` makes the optimizer, ``export`` writes a numbaopt optimizer back into a
``.h5``. New-style tf-keras optimizers and Keras 3's are ``numbaopt.keras3_files``'.
"""
from __future__ import annotations

import contextlib
import io
import json
import math
import os
import re
import shutil
import warnings
import zipfile
from collections.abc import Mapping
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt import checkpoint, keras3_export, keras3_files, keras_weights
from numbaopt.checkpoint import CheckpointError
from numbaopt.declarations import KerasClass, keras_description
from numbaopt.keras_reading import (
    Refused,
    Stored,
    class_and_config,
    dataset,
    group,
    names_attribute,
    reading,
    text,
    write_names,
)
from numbaopt.optimizers import Optimizer, rule_based
from numbaopt.registry import optimizer_class

#: The generation in words.
LEGACY = "tf-keras legacy optimizer (tf_keras.optimizers.legacy)"


class KerasStateNotSaved(UserWarning):
    """The file holds the optimizer's class and settings but not its state (tf-keras's legacy
    optimizers in a ``.keras`` file): the imported optimizer starts afresh."""


class KerasOptimizerFile(NamedTuple):
    """What a model file holds about its tf-keras legacy optimizer, checked, as numbaopt sees it."""

    path: str
    keras_class: str
    keras_config: dict[str, Any]  # the optimizer's config as Keras wrote it
    arguments: dict[str, Any]  # numbaopt constructor arguments
    iterations: Stored | None  # None when the file holds no optimizer weights
    scalars: dict[str, Stored]  # numbaopt scalar state (``scalar_state``) by name
    names: tuple[str, ...]  # the parameters, in slot order
    weights: dict[str, Stored]  # the parameters' values by name
    slots: dict[str, list[Stored]]  # numbaopt slot kind -> one per parameter (empty kinds: not in the file)

    @property
    def optimizer_class(self) -> type[Optimizer]:
        cls: type[Optimizer] = optimizer_class(self.keras_class)
        return cls

    @property
    def keras(self) -> KerasClass:
        """What the optimizer declares about tf-keras's legacy class of its name."""
        return keras_description(self.optimizer_class).imported["legacy"]

def build(found: KerasOptimizerFile) -> tuple[Optimizer, dict[str, npt.NDArray[Any]]]:
    """The optimizer ``found`` describes, its state loaded, and the model's trainable weights."""
    if zipfile.is_zipfile(found.path):  # tf-keras keeps no state of a legacy optimizer in a .keras file
        warnings.warn(f"{found.path}: tf-keras saves a legacy optimizer in a .keras file without its state; "
                      f"{found.keras_class} starts afresh (iteration 0, zero slots)", KerasStateNotSaved, stacklevel=3)
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


def read_h5(path: str, f: Any, class_name: str, config: dict[str, Any]) -> KerasOptimizerFile:
    """The legacy optimizer of the open tf-keras ``.h5`` file ``f`` (its class and config read already)."""
    keras = supported(class_name)
    weights_of_model = model_weights(f)
    opt_name = config.get("name", class_name)
    if not isinstance(opt_name, str):
        raise CheckpointError(f"the optimizer's name in training_config is not a string: {opt_name!r:.80}")
    weights_group = group(f, "optimizer_weights")
    iterations: Stored | None = None
    scalars: dict[str, Stored] = {}
    names: tuple[str, ...] = ()
    slots: dict[str, list[Stored]] = {}
    if weights_group is not None:
        iterations, scalars, names, slots = _optimizer_weights(weights_group, opt_name, keras)
    if not names:  # no slots name the trainable variables: Keras records no trainability per weight
        names = tuple(weights_of_model)
    for name in names:
        if name not in weights_of_model:
            raise CheckpointError(f"optimizer_weights has slots for {name!r}, which model_weights does not hold")
    weights = {name: weights_of_model[name] for name in names}
    _check_slot_shapes(names, weights, slots)
    settings = arguments(class_name, config, bool(slots), _is_float64(weights))
    if iterations is not None:
        _check_every_slot(class_name, settings, keras, slots, scalars)
    return KerasOptimizerFile(path, class_name, config, settings, iterations, scalars, names, weights, slots)


def supported(class_name: str) -> KerasClass:
    """What the Keras 2.0 optimizer of the class's name declares about tf-keras's legacy class
    (its slot names...), or a ValueError saying why it is not imported."""
    imported = []
    for cls in rule_based():
        keras = keras_description(cls)
        if cls.__name__ == class_name and "legacy" in keras.imported:
            return keras.imported["legacy"]
        if cls.__name__ == class_name and "legacy" in keras.refused:
            raise Refused(f"cannot import the {LEGACY} {class_name}: {keras.refused['legacy']}, so its update is not Keras 2.0's")
        if "legacy" in keras.imported:
            imported.append(cls.__name__)
    raise Refused(f"cannot import the optimizer class {class_name!r} ({LEGACY}): numbaopt imports only "
                  f"{', '.join(imported)}, whose update is Keras 2.0's; a custom or other class is not imported")


def model_weights(f: Any) -> dict[str, Stored]:
    """Every weight in ``model_weights``, by the name Keras gave it, in the file's order."""
    weights_group = group(f, "model_weights")
    if weights_group is None:
        raise CheckpointError("group model_weights is missing: not a tf-keras model file")
    weights: dict[str, Stored] = {}
    for layer in names_attribute(weights_group, "layer_names", "model_weights"):
        layer_group = group(weights_group, layer)
        if layer_group is None:
            raise CheckpointError(f"model_weights names layer {layer!r}, which it does not hold")
        for name in names_attribute(layer_group, "weight_names", f"model_weights/{layer}"):
            where = f"model_weights/{layer}/{name}"
            value = dataset(layer_group, name, where)
            if value.dtype.kind != "f":
                raise CheckpointError(f"{where} has dtype {value.dtype}, not a float")
            weights[name] = Stored(where, value)
    return weights


def _optimizer_weights(
    weights_group: Any, opt_name: str, keras: KerasClass
) -> tuple[Stored | None, dict[str, Stored], tuple[str, ...], dict[str, list[Stored]]]:
    """iterations, scalar state, parameter names and slots from ``optimizer_weights``."""
    slot_names = keras.slots
    by_keras_name = {keras_name: kind for kind, keras_name in slot_names.items()}
    scalar_names = {f"{opt_name}/{keras_name}:0": (name, keras_name) for name, keras_name in keras.scalars.items()}
    iterations: Stored | None = None
    scalars: dict[str, Stored] = {}
    found: dict[str, dict[str, Stored]] = {kind: {} for kind in slot_names}
    names: list[str] = []
    for weight in names_attribute(weights_group, "weight_names", "optimizer_weights"):
        where = f"optimizer_weights/{weight}"
        value = dataset(weights_group, weight, where)
        if weight == f"{opt_name}/iter:0":
            if value.shape != () or value.dtype.kind not in "iu" or not 0 <= int(value) < 2**63:
                raise CheckpointError(f"{where} is not an iteration count: {value!r:.60}")
            iterations = Stored(where, value)
            continue
        if weight in scalar_names:
            name, keras_name = scalar_names[weight]
            if value.shape != () or value.dtype.kind != "f" or not math.isfinite(float(value)):
                raise CheckpointError(f"{where} is not a {keras_name} (the scalar {name}): {value!r:.60}")
            scalars[name] = Stored(where, value)
            continue
        kind, variable = _slot_of(weight, opt_name, by_keras_name)
        if kind is None:
            raise CheckpointError(f"{where} is no weight of the optimizer {opt_name!r} that numbaopt knows")
        if variable in found[kind]:
            raise CheckpointError(f"{where}: a second {slot_names[kind]} slot for {variable!r}")
        if variable not in names:
            names.append(variable)
        found[kind][variable] = Stored(where, value)
    slots: dict[str, list[Stored]] = {}
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


def _slot_of(weight: str, opt_name: str, by_keras_name: Mapping[str, str]) -> tuple[str | None, str]:
    """(numbaopt slot kind, variable name) of an optimizer weight name ``<opt>/<variable>/<slot>:<n>``, or (None, "")."""
    match = re.fullmatch(r"(.+)/([^/]+)(:\d+)", weight.removeprefix(f"{opt_name}/"))
    if weight.startswith(f"{opt_name}/") and match and match[2] in by_keras_name:
        return by_keras_name[match[2]], match[1] + match[3]
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


def _is_float64(weights: Mapping[str, Stored]) -> bool:
    return any(w.value.dtype == np.float64 for w in weights.values())


def _check_slot_shapes(names: tuple[str, ...], weights: Mapping[str, Stored], slots: Mapping[str, list[Stored]]) -> None:
    for kind, per_parameter in slots.items():
        for name, slot in zip(names, per_parameter):
            weight = weights[name].value
            if slot.value.shape != weight.shape or slot.value.dtype != weight.dtype:
                raise CheckpointError(
                    f"{slot.path} is {slot.value.dtype}{list(slot.value.shape)}, but its variable {name} is "
                    f"{weight.dtype}{list(weight.shape)}"
                )


def read_zip(path: str, parts: keras3_files.ZipParts, description: Any) -> KerasOptimizerFile:
    """The legacy optimizer of a ``.keras`` file, which tf-keras saves without its state: a
    fresh Keras 2.0 optimizer (``iterations`` None) over the trainable weights."""
    import h5py

    class_name, config = class_and_config(description, "config.json's optimizer")
    if description.get("module") not in (None, "keras.optimizers.legacy") or description.get("registered_name") not in (None, class_name):
        raise Refused(f"cannot import the optimizer class {class_name!r} from module {description.get('module')!r}: "
                      f"a custom optimizer class is user code, not imported")
    supported(class_name)
    with reading("model.weights.h5"):
        f = h5py.File(io.BytesIO(parts.weights), "r")
    with f, reading("model.weights.h5"):
        weights = {w.name: w.stored for w in keras3_files.zip_weights(f, parts.model_config) if w.trainable is not False}
    settings = arguments(class_name, config, False, _is_float64(weights))
    return KerasOptimizerFile(path, class_name, config, settings, None, {}, tuple(weights), weights, {})


def arguments(keras_class: str, config: Mapping[str, Any], has_slots: bool, float64: bool) -> dict[str, Any]:
    """numbaopt constructor arguments for a legacy optimizer's config, or a ValueError (``Refused``) naming what numbaopt cannot honour.

    ``float64``: whether the model's weights are float64, where tf-keras rounds some settings
    to float32 on their way into the arithmetic (``tf.cast`` of a Python float goes through
    float32); those are rounded here as TensorFlow rounds them, or refused where Keras uses
    the same setting both rounded and not.
    """
    from numbaopt import keras_config

    config = dict(config)
    where = f"the {LEGACY} {keras_class}"
    cls = optimizer_class(keras_class)
    description = keras_description(cls)
    keras = description.imported["legacy"]
    if float64:
        for key in keras.float32_settings:
            if isinstance(config.get(key), float):
                config[key] = float(np.float32(config[key]))
        if keras.mixed_constant:
            raise Refused(
                f"{where} in a float64 model uses {keras.mixed_constant} "
                f"rounded to float32 in one place and not in another; numbaopt cannot reproduce that exactly"
            )
    if isinstance(config.get("learning_rate"), dict):
        raise Refused(f"{where} uses a learning-rate schedule ({config['learning_rate'].get('class_name')!r}); "
                         f"numbaopt has Keras 2.0's decay only")
    if config.get("global_clipnorm") is not None and config.get("clipvalue") is not None:
        raise Refused(f"{where} sets both global_clipnorm and clipvalue: Keras clips by value first, "
                         f"Keras 2.0 (numbaopt) by norm first, and the two do not commute")
    for key, setting in description.renamed.items():
        if setting in config:  # Keras builds it from the setting's own key then (written by export_keras_optimizer)
            config.pop(key, None)
    for key in description.in_slots:
        if key in config and has_slots:  # the slots in the file already hold it
            del config[key]
    try:
        built = keras_config.keras2_arguments(cls, config)
    except ValueError as error:  # a setting Keras 2.0 lacks, or a value it refuses
        raise Refused(str(error)) from None
    if "learning_rate" in built:
        built["lr"] = built.pop("learning_rate")
    declared = {h.name for h in cls.hyperparameters}
    for key in built:
        if key not in declared | {"clipnorm", "clipvalue", "lr"}:
            raise Refused(f"{where} has the setting {key}={built[key]!r}, which numbaopt's {keras_class} lacks")
    for h in cls.hyperparameters:
        if h.name not in built and h.name != "decay":
            raise CheckpointError(f"the optimizer config lacks {h.name!r}: numbaopt takes no default for it")
    try:
        cls(**built)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"the optimizer config holds a value numbaopt refuses: {error}") from error
    return built


def export(
    optimizer: Optimizer, found: KerasOptimizerFile, parameters: Mapping[str, npt.ArrayLike] | None,
    read_from: tuple[int, int, int, int] | None,
) -> None:
    """Write ``optimizer``'s state (and ``parameters``) into the tf-keras ``.h5`` that ``found``
    was read from (``read_from``: its ``checkpoint.file_identity``), atomically."""
    if zipfile.is_zipfile(found.path):
        raise ValueError(f"{found.path}: tf-keras saves a legacy optimizer in a .keras file without its state, and "
                         f"loads none from it; export writes legacy optimizers into .h5 model files")
    if found.optimizer_class is not type(optimizer):
        raise ValueError(f"{found.path} holds a {found.keras_class} optimizer; cannot write a {type(optimizer).__name__} into it")
    state = keras_weights.values(optimizer, optimizer.state())
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


def _laid_out(
    found: KerasOptimizerFile, optimizer: Optimizer, names: tuple[str, ...] | None
) -> tuple[KerasOptimizerFile, list[str]]:
    """``found`` with the optimizer weights Keras creates for the named parameters, and their
    names in the order Keras lists them: ``<opt>/iter:0``, the scalar state, then each slot
    kind for all variables (``<opt>/<variable>/<slot>:0``). The variables come in the model's order."""
    if names is None:
        raise ValueError(f"{found.path} holds no optimizer weights yet, so the optimizer's parameters must be named "
                         f"(set_parameter_names, or names= in apply_gradients) to say which weights they are")
    unknown = [n for n in names if n not in found.weights]
    if unknown:
        raise ValueError(f"the optimizer's parameters {unknown} are no weights of {found.path}")
    variables = tuple(n for n in found.weights if n in names)
    opt_name = str(found.keras_config.get("name", found.keras_class))
    keras_slots = found.keras.slots
    kinds = [k for k in keras_slots if not _unused_slot(optimizer, k)]

    def slot_path(kind: str, variable: str) -> str:
        match = re.fullmatch(r"(.+)(:\d+)", variable)
        if match is None:
            raise ValueError(f"{found.path}: the weight name {variable!r} lacks the ':0' ending tf-keras gives it")
        return f"{opt_name}/{match[1]}/{keras_slots[kind]}{match[2]}"

    slots = {kind: [Stored(f"optimizer_weights/{slot_path(kind, v)}", found.weights[v].value) for v in variables]
             for kind in kinds}
    weight_names = [f"{opt_name}/iter:0"]
    iterations = Stored(f"optimizer_weights/{weight_names[0]}", np.zeros((), np.int64))
    scalars = {}
    for name, _ in optimizer.scalar_state:  # in the first variable's dtype, as tf-keras keeps it
        weight_names.append(f"{opt_name}/{found.keras.scalars.get(name, name)}:0")
        scalars[name] = Stored(f"optimizer_weights/{weight_names[-1]}", np.zeros((), found.weights[variables[0]].value.dtype))
    weight_names += [slot_path(kind, v) for kind in kinds for v in variables]
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


def _fitting(value: npt.ArrayLike, slot: Stored, what: str) -> npt.NDArray[Any]:
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
        return found.optimizer_class(**arguments(found.keras_class, config, bool(found.slots), float64)).checkpoint_config()

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
                raise ValueError(f"{found.path}: the {LEGACY} has no decay; "
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
    made from that very file, or ``keras3_export.ReplacedMeanwhile`` is raised and nothing is written.
    """
    import h5py

    target = os.path.realpath(path)

    def write(temporary: str) -> None:
        with open(target, "rb") as source:
            info = os.fstat(source.fileno())
            if read_from is not None and (info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns) != read_from:
                raise keras3_export.ReplacedMeanwhile
            with open(temporary, "wb") as copy:
                shutil.copyfileobj(source, copy)
        shutil.copymode(target, temporary)
        with h5py.File(temporary, "r+") as f:
            if created is not None:
                write_names(f.create_group("optimizer_weights"), "weight_names", created)
            for where, value in writes.items():
                if where in f:
                    f[where][()] = value
                else:
                    f.create_dataset(where, data=value)
            if optimizer_config is not None:
                training_config = json.loads(text(f.attrs["training_config"]))
                training_config["optimizer_config"]["config"] = optimizer_config
                f.attrs["training_config"] = json.dumps(training_config).encode("utf8")

    checkpoint.replace_file(target, write)
    with contextlib.suppress(OSError):
        checkpoint.fsync_directory(os.path.dirname(target))


