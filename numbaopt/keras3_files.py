"""Keras 3 and tf-keras new-style optimizers in model files, read into ``numbaopt.keras3``.

A Keras 3 model file (``.keras``, or Keras 3's ``.h5``) and a tf-keras file with a
new-style optimizer (``tf_keras.optimizers``, in ``.h5`` or ``.keras``) hold the
optimizer's config and its variables in the order of Keras's ``optimizer.variables``:
the step count, the learning rate (Keras 3, a float one), the weights' averages
(``use_ema``), the gradient accumulators, the slots as ``build`` adds them, and extras
such as Nadam's ``u_product``. ``numbaopt.keras3``'s optimizer of the same class lists
the same variables (``keras_variables``), so reading is mechanical: build the optimizer
from the file's config (a setting numbaopt cannot reproduce is refused here, before any
structure is looked at), lay out the variables it keeps for the model's trainable
variables (``layout``), and take the file's variables one by one, checking each shape.

A ``LossScaleOptimizer`` (mixed precision) holds its inner optimizer's state, which is
what is imported: numbaopt takes the unscaled gradients. Keras 3 ``.keras`` files store
that state twice (``optimizer/vars`` after the loss scale's own variables, and
``optimizer/inner_optimizer/vars``); Keras reads the second copy, and so does numbaopt.
"""
from __future__ import annotations

import io
import re
import zipfile
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt.checkpoint import CheckpointError
from numbaopt.keras3 import naming, schedules
from numbaopt.keras3.base import Keras3Optimizer
from numbaopt.keras_reading import (
    LARGEST_JSON, Refused, Stored, class_and_config, dataset, group, json_text, names_attribute, reading, zip_member,
)
from numbaopt.registry import optimizer_class
from numbaopt.state import OptimizerState

#: The generations this module reads, in words.
GENERATION_NAMES = {
    "keras3": "Keras 3 optimizer",
    "new": "tf-keras new-style optimizer (tf_keras.optimizers)",
}

#: Modules a Keras 3 file records for Keras's own optimizers: ``keras.optimizers``, and under
#: the torch backend (and others) the backend's subclass of the same name.
_STOCK_MODULES = ("keras.optimizers", "keras.src.optimizers")
_BACKEND_MODULE = re.compile(r"keras\.src\.backend\.\w+\.optimizers(\.\w+)?")

#: Layers whose variables are not all trainable, and which of their variables are:
#: ``BatchNormalization`` keeps gamma (``scale``) and beta (``center``) trainable, then the
#: moving mean and variance; ``Normalization`` keeps only statistics.
_NON_TRAINABLE_LAYERS = ("Normalization",)

#: Sub-objects of a layer holding layers, in the order Keras tracks them (``Bidirectional``'s
#: forward layer before its backward one); others follow in the file's order.
_SUBLAYER_ORDER = ("cell", "forward_layer", "backward_layer", "layer")


class Keras3File(NamedTuple):
    """What a Keras 3 or tf-keras new-style model file holds about its optimizer, checked."""

    path: str
    generation: str  # "keras3" or "new"
    format: str  # "keras" (a zip) or "h5"
    keras_class: str
    keras_config: dict[str, Any]  # the optimizer's config as Keras wrote it
    loss_scaled: bool  # saved inside a LossScaleOptimizer (its inner state is read)
    arguments: dict[str, Any]  # the numbaopt.keras3 optimizer's config (from_config)
    iterations: Stored | None  # Keras's step count; None before the first step
    learning_rate: Stored | None  # Keras 3's learning-rate variable (a float learning rate)
    scalars: dict[str, Stored]  # scalar state (Nadam's u_product) by name
    names: tuple[str, ...]  # the trainable variables, in slot order
    weights: dict[str, Stored]  # their values by name
    slots: dict[str, list[Stored]]  # slot kind -> one per parameter (path "" where Keras keeps none)
    arrays: dict[str, Stored]  # averages and gradient accumulators, as ``checkpoint_arrays`` names them
    variables: tuple[str, ...]  # the dataset paths of the optimizer's variables, in Keras's order

    @property
    def optimizer_class(self) -> type[Keras3Optimizer]:
        cls: type[Keras3Optimizer] = optimizer_class(self.keras_class, family="keras3")
        return cls


class Weight(NamedTuple):
    """A model variable read from the file: its name, value, and whether the model trains it
    (None where the file does not say)."""

    name: str
    stored: Stored
    trainable: bool | None


class Entry(NamedTuple):
    """One of the variables the optimizer keeps, in Keras's order: what it holds (``kind``:
    ``iteration``, ``learning_rate``, ``average``, ``gradient_accumulator``, a slot kind,
    or ``scalar:<name>``), for which parameter, and its Keras path, shape and dtype."""

    path: str
    kind: str
    parameter: int  # -1: none
    shape: tuple[int, ...]
    dtype: np.dtype[Any]


# ------------------------------------------------------------------ the optimizer


def optimizer_from(
    description: object, generation: str, where: str, stepped: bool = True
) -> tuple[Keras3Optimizer, str, dict[str, Any], bool]:
    """The numbaopt.keras3 optimizer a file's optimizer description builds, its Keras class,
    its config, and whether it sat inside a LossScaleOptimizer. ValueError (``Refused``)
    naming the class or setting numbaopt cannot reproduce; CheckpointError for a config
    that is no optimizer's. ``stepped``: whether the file holds state beyond the step count."""
    class_name, config = class_and_config(description, where)
    loss_scaled = class_name in ("LossScaleOptimizer", "LossScaleOptimizerV3")
    if loss_scaled:
        if generation == "new":
            raise Refused(f"cannot import the tf-keras {class_name}: numbaopt imports the inner state of Keras 3's "
                          f"LossScaleOptimizer only; tf-keras keeps its loss scale and inner optimizer otherwise")
        description = config.get("inner_optimizer")
        class_name, config = class_and_config(description, f"{where}'s inner_optimizer")
    _check_stock(description, class_name, generation)
    keras_class = class_name.removeprefix("Custom>") if generation == "new" else class_name
    try:
        cls = optimizer_class(keras_class, family="keras3")
    except ValueError:
        raise Refused(f"cannot import the optimizer class {class_name!r} ({GENERATION_NAMES[generation]}): "
                      f"numbaopt.keras3 has no such class; a custom or other class is not imported") from None
    if generation == "new" and stepped and cls.tf_keras_file_refused:
        raise Refused(f"cannot import the tf-keras new-style {keras_class}: {cls.tf_keras_file_refused}")
    learning_rate = config.get("learning_rate")
    if isinstance(learning_rate, str):
        raise Refused(f"the {keras_class}'s learning rate is the Python function {learning_rate!r}: user code, not imported")
    if isinstance(learning_rate, dict):
        schedule = learning_rate.get("class_name")
        if schedule not in schedules.SCHEDULES or learning_rate.get("registered_name") not in (None, schedule):
            raise Refused(f"the {keras_class} uses the learning-rate schedule {schedule!r} "
                          f"(module {learning_rate.get('module')!r}), a custom schedule class: user code, not imported")
    if generation == "new" and config.get("is_legacy_optimizer"):
        raise CheckpointError(f"{where} says is_legacy_optimizer: true in a new-style config")
    arguments = {key: value for key, value in config.items()}
    if generation == "new":
        arguments.setdefault("is_legacy_optimizer", False)  # from_config reads tf-keras's flavour from its keys
    try:
        optimizer = cls.from_config(arguments)
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{where} holds a config Keras's {keras_class} does not take: {error}") from error
    return optimizer, keras_class, config, loss_scaled


def _check_stock(description: Any, class_name: str, generation: str) -> None:
    """Refuse a class from another module than Keras's (a subclass, or a registered custom class)."""
    module, registered = description.get("module"), description.get("registered_name")
    if generation == "new":
        stock = module in (None, "keras.optimizers") and registered in (None, class_name)
    else:  # a Keras 3 .h5 file records no module
        stock = (module in (None, *_STOCK_MODULES) and registered in (None, class_name)) or (
            isinstance(module, str) and _BACKEND_MODULE.fullmatch(module) is not None and registered in (None, class_name))
    if not stock:
        raise Refused(f"cannot import the optimizer class {class_name!r} from module {module!r} "
                      f"(registered as {registered!r}): a custom optimizer class is user code, not imported")


# ---------------------------------------------------------------------- layout


class Values(NamedTuple):
    """The state an export writes, per parameter in the file's order (``laid_out``)."""

    calls: int  # Keras's step count (``iterations``)
    learning_rate: float  # the float32 learning rate of the next step
    averages: Sequence[npt.NDArray[Any]]  # use_ema
    accumulators: Sequence[npt.NDArray[Any]]  # gradient accumulation
    slots: Mapping[str, Sequence[npt.NDArray[Any]]]  # slot kind -> one per parameter
    scalars: Mapping[str, float]  # scalar state (Nadam's u_product)


def layout(optimizer: Keras3Optimizer, generation: str, names: Sequence[str], params: Sequence[npt.NDArray[Any]]) -> list[Entry]:
    """The variables ``optimizer`` keeps for parameters ``params`` (named ``names``), in the
    order of Keras's ``optimizer.variables`` (``keras_variables``); ``generation`` "new":
    tf-keras's new-style optimizer, which keeps no learning-rate variable, no gradient
    accumulators and no ``u_product``, and builds SGD's momentum even at momentum 0."""
    return [entry for entry, _ in laid_out(optimizer, generation, names, params, None)]


def laid_out(
    optimizer: Keras3Optimizer, generation: str, names: Sequence[str], params: Sequence[npt.NDArray[Any]],
    values: Values | None,
) -> list[tuple[Entry, npt.NDArray[Any] | None]]:
    """``layout``'s entries, each with its value from ``values`` (None without): the import
    in reverse, for an export. A slot tf-keras builds that has no effect is zeros."""
    name = optimizer.name
    config = optimizer.get_config()
    out: list[tuple[Entry, npt.NDArray[Any] | None]] = [
        (Entry(f"{name}/iteration", "iteration", -1, (), np.dtype(np.int64)), None if values is None else np.array(values.calls, np.int64))]
    if generation == "keras3" and not isinstance(config["learning_rate"], dict):
        out.append((Entry(f"{name}/learning_rate", "learning_rate", -1, (), np.dtype(np.float32)),
                    None if values is None else np.array(values.learning_rate, np.float32)))
    kinds = ["average"] if config["use_ema"] else []
    if generation == "keras3" and config["gradient_accumulation_steps"]:
        kinds.append("gradient_accumulator")
    for kind in kinds:
        per_parameter = None if values is None else values.averages if kind == "average" else values.accumulators
        out += [(Entry(naming.slot_path(name, n, kind), kind, i, p.shape, p.dtype), None if per_parameter is None else per_parameter[i])
                for i, (n, p) in enumerate(zip(names, params))]
    declared = {slot.name: slot for slot in optimizer.slots}
    groups = type(optimizer).keras_build or (optimizer.slot_names,)
    unused = [slot for slot in type(optimizer).tf_keras_unused_slots if slot.name not in declared]
    if generation == "new" and unused:  # read from the file, then dropped
        groups = groups + (tuple(slot.name for slot in unused),)
        declared = {**declared, **{slot.name: slot for slot in unused}}
    for group_kinds in groups:
        present = [kind for kind in group_kinds if kind in declared]
        for i, (n, p) in enumerate(zip(names, params)):
            for kind in present:
                slot = declared[kind]
                zeros = np.zeros(slot.shape_of(p.shape), slot.dtype_of(p.dtype))
                variables = optimizer.keras_slot_variables(kind, n, zeros)
                held: list[Any] = [None] * len(variables)
                if values is not None and kind in values.slots:
                    held = [v for _, v in optimizer.keras_slot_variables(kind, n, values.slots[kind][i])]
                elif values is not None:  # tf-keras's slot without effect at these settings
                    held = [v for _, v in variables]
                if len(held) != len(variables):
                    raise ValueError(f"{type(optimizer).__name__}'s slot {kind} of {n!r} does not fit that parameter")
                out += [(Entry(path, kind, i, tuple(keras_value.shape), keras_value.dtype), value)
                        for (path, keras_value), value in zip(variables, held)]
    if generation == "keras3" and optimizer.scalar_state and params:
        extras = optimizer.keras_extra_variables({s: v for s, v in optimizer.scalar_state})
        for (path, _), (scalar, _) in zip(extras, optimizer.scalar_state):
            value = None if values is None else np.array(values.scalars[scalar], params[0].dtype)
            out.append((Entry(path, f"scalar:{scalar}", -1, (), params[0].dtype), value))
    return out


# ------------------------------------------------------------------ the state


def read_state(
    path: str, generation: str, file_format: str, description: Any, where: str, weights: Sequence[Weight],
    variables: Sequence[Stored], variable_names: Sequence[str] | None,
) -> Keras3File:
    """The checked optimizer state of a file: ``description`` its optimizer's (``module``,
    ``class_name``, ``config``), ``weights`` the model's variables in the model's order,
    ``variables`` the optimizer's in Keras's order (named ``variable_names`` where the file names them)."""
    optimizer, keras_class, config, loss_scaled = optimizer_from(description, generation, where, _stepped(variables))
    trainable = _trainable(weights, optimizer, generation, variable_names)
    names = tuple(w.name for w in trainable)
    values = [w.stored.value for w in trainable]
    for w in trainable:
        if w.stored.value.dtype.kind != "f":
            raise CheckpointError(f"{w.stored.path} has dtype {w.stored.value.dtype}, not a float")
    entries = layout(optimizer, generation, names, values)
    fresh = not _stepped(variables)
    if fresh:  # saved before the first step: Keras builds the rest then
        entries = entries[: 1 + (generation == "keras3" and entries[1:2] != [] and entries[1].kind == "learning_rate")]
        variables = variables[: len(entries)]
    if len(variables) != len(entries):
        raise CheckpointError(
            f"the file holds {len(variables)} optimizer variables, but {keras_class} at these settings keeps "
            f"{len(entries)} for the {len(names)} trainable variables found in the model ({', '.join(names) or 'none'})"
        )
    slots: dict[str, list[Stored]] = {
        slot.name: [Stored("", np.zeros(slot.shape_of(v.shape), slot.dtype_of(v.dtype))) for v in values]
        for slot in optimizer.slots
    }
    iterations = learning_rate = None
    scalars: dict[str, Stored] = {}
    arrays: dict[str, Stored] = {}
    for entry, stored, i in zip(entries, variables, range(len(entries))):
        value = stored.value
        expected = f"{entry.dtype}{list(entry.shape)}"
        if entry.kind == "iteration" and value.shape == () and value.dtype.kind in "iu":
            pass  # int64 on TensorFlow, int32 on JAX and torch
        elif value.shape != entry.shape or value.dtype != entry.dtype:
            raise CheckpointError(f"{stored.path} is {value.dtype}{list(value.shape)}, but {keras_class}'s variable "
                                  f"{entry.path} there is {expected}")
        if variable_names is not None and generation == "keras3" and not variable_names[i].endswith(entry.path):
            raise CheckpointError(f"{stored.path} is named {variable_names[i]!r}, where {keras_class} keeps {entry.path!r}")
        if entry.kind == "iteration":
            if not 0 <= int(value) < 2**63:
                raise CheckpointError(f"{stored.path} is not an iteration count: {value!r:.60}")
            iterations = stored
        elif entry.kind == "learning_rate":
            if not np.isfinite(value) or value < 0:
                raise CheckpointError(f"{stored.path} is not a learning rate: {value!r:.60}")
            learning_rate = stored
        elif entry.kind.startswith("scalar:"):
            scalars[entry.kind.removeprefix("scalar:")] = stored
        elif entry.kind in ("average", "gradient_accumulator"):
            arrays[f"{entry.kind}.{entry.parameter:06d}"] = stored
        elif entry.kind in slots:
            like = slots[entry.kind][entry.parameter].value
            slots[entry.kind][entry.parameter] = Stored(stored.path, value.astype(like.dtype).reshape(like.shape))
        # else: a slot tf-keras builds that has no effect at these settings (SGD's momentum at 0)
    if fresh:
        slots, arrays = {}, {}
    weight_values = {w.name: w.stored for w in trainable}
    return Keras3File(path, generation, file_format, keras_class, config, loss_scaled, optimizer.get_config(),
                      iterations, learning_rate, scalars, names, weight_values, slots, arrays,
                      tuple(s.path for s in variables))


def _stepped(variables: Sequence[Stored]) -> bool:
    """Whether the optimizer has taken a step: its variables go beyond the step count and learning rate."""
    return len(variables) > 2 or (len(variables) == 2 and variables[1].value.shape != ())


def _trainable(weights: Sequence[Weight], optimizer: Keras3Optimizer, generation: str,
               variable_names: Sequence[str] | None) -> list[Weight]:
    """The model's trainable variables: those the optimizer's named variables refer to, where
    the file names them and holds some; otherwise as the layers say (``Weight.trainable``)."""
    if variable_names is not None:
        def refers(weight: str) -> bool:
            if generation == "new":
                return any(v.endswith(f"/{weight}") for v in variable_names)
            mangled = f"/{weight.replace('/', '_')}_"  # Keras 3 names a slot <optimizer>/<path with _>_<slot>
            return any(mangled in v for v in variable_names)

        named = [w for w in weights if refers(w.name)]
        if named:
            return named
    return [w for w in weights if w.trainable is not False]


def build(found: Keras3File) -> tuple[Keras3Optimizer, dict[str, npt.NDArray[Any]]]:
    """The numbaopt.keras3 optimizer a checked file describes, with its state loaded, and the parameters."""
    optimizer = found.optimizer_class.from_config(dict(found.arguments))
    params = {name: np.array(found.weights[name].value, order="C", copy=True) for name in found.names}
    if found.iterations is None or not found.slots and not found.arrays and int(found.iterations.value) == 0:
        return optimizer, params
    calls = int(found.iterations.value)
    steps = found.arguments.get("gradient_accumulation_steps") or 1
    state = OptimizerState(
        iterations=calls // steps,
        scalars={name: float(found.scalars[name].value) if name in found.scalars else float(default)
                 for name, default in optimizer.scalar_state},
        slots={kind: [np.array(s.value, copy=True) for s in stored] for kind, stored in found.slots.items()},
        names=found.names if optimizer.slot_names else None,  # names bind to slots; a slot-free one takes them at its step
        parameters=tuple((p.shape, p.dtype.name) for p in params.values()),
    )
    try:
        optimizer.load_state(state)
        arrays = {key: np.array(s.value, copy=True) for key, s in found.arrays.items()}
        arrays["calls"] = np.array(calls, np.int64)
        optimizer.load_checkpoint_arrays(arrays)
        if found.names and optimizer.slot_names:
            optimizer.set_parameter_names(found.names)
        if found.learning_rate is not None:
            setattr(optimizer, "learning_rate", float(found.learning_rate.value))  # Keras's variable, set as a user does
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{found.path}: the optimizer's variables do not fit {found.keras_class}: {error}") from error
    optimizer.set_state_origin(f"importing the Keras model file {found.path}")
    return optimizer, params


# ------------------------------------------------------------------- .keras files


class ZipParts(NamedTuple):
    """A ``.keras`` zip's parts: which Keras wrote it, the model config, the weights file's bytes."""

    keras_version: str
    model_config: dict[str, Any]
    weights: bytes


def zip_parts(path: str) -> ZipParts:
    with reading("the zip"), zipfile.ZipFile(path) as archive:
        config_text = zip_member(archive, "config.json", LARGEST_JSON)
        weights_bytes = zip_member(archive, "model.weights.h5")
        metadata_text = zip_member(archive, "metadata.json", LARGEST_JSON) if "metadata.json" in archive.namelist() else b"{}"
    metadata = json_text(metadata_text, "metadata.json")
    version = metadata.get("keras_version")
    return ZipParts(version if isinstance(version, str) else "", json_text(config_text, "config.json"), weights_bytes)


def zip_optimizer(parts: ZipParts) -> tuple[str, Any]:
    """The generation ("keras3", "new" or "legacy") and the optimizer description of a ``.keras`` file."""
    compile_config = parts.model_config.get("compile_config")
    if not isinstance(compile_config, dict) or compile_config.get("optimizer") is None:
        raise CheckpointError("config.json has no compile_config with an optimizer: the model was saved without one "
                              "(saved before model.compile)")
    description = compile_config["optimizer"]
    if isinstance(description, str):  # compile(optimizer="adam") before a step, in some versions
        description = {"class_name": description, "config": {}}
    if not isinstance(description, dict):
        raise CheckpointError("config.json's optimizer is not an object")
    config = description.get("config")
    tf_keras = parts.keras_version.startswith("2.") or (isinstance(config, dict) and "is_legacy_optimizer" in config)
    if not tf_keras:
        return "keras3", description
    legacy = description.get("module") == "keras.optimizers.legacy" or (isinstance(config, dict) and config.get("is_legacy_optimizer") is True)
    return ("legacy" if legacy else "new"), description


def read_zip(path: str, parts: ZipParts, generation: str, description: Any) -> Keras3File:
    """A ``.keras`` file's optimizer state (Keras 3, or tf-keras's new-style optimizer)."""
    import h5py

    with reading("model.weights.h5"):
        f = h5py.File(io.BytesIO(parts.weights), "r")
    with f, reading("model.weights.h5"):
        weights = zip_weights(f, parts.model_config)
        opt_group = group(f, "optimizer")
        inner = group(opt_group, "inner_optimizer") if opt_group is not None else None
        holder = inner if inner is not None else opt_group  # Keras reads the inner optimizer's copy
        prefix = "optimizer/inner_optimizer" if inner is not None else "optimizer"
        variables = numbered(holder, f"{prefix}/vars") if holder is not None else []
    return read_state(path, generation, "keras", description, "config.json's optimizer", weights, variables, None)


def numbered(parent: Any, where: str) -> list[Stored]:
    """The datasets ``0``, ``1``, ... of ``parent``'s group ``vars``, as Keras's saving writes a list of variables."""
    holder = group(parent, "vars")
    if holder is None:
        return []
    with reading(where):
        keys = list(holder)
    if sorted(keys, key=lambda k: (len(k), k)) != [str(i) for i in range(len(keys))]:
        raise CheckpointError(f"{where} holds {sorted(keys)[:5]}..., not variables numbered 0, 1, ...")
    return [Stored(f"{where}/{i}", dataset(holder, str(i), f"{where}/{i}")) for i in range(len(keys))]


def zip_weights(f: Any, model_config: Mapping[str, Any]) -> list[Weight]:
    """Every variable of the model in a ``.keras`` weights file, in the order of the model's
    ``weights``, named by its path in the file (``layers/dense/vars/0``)."""
    inner = model_config.get("config")
    layers = inner.get("layers") if isinstance(inner, dict) else None
    if not isinstance(layers, list):
        raise CheckpointError("config.json lists no layers")
    found: list[Weight] = []
    _walk_layers(group(f, "layers"), "layers", layers, True, found)
    return found


def _walk_layers(container: Any, where: str, layers: list[Any], trainable: bool, found: list[Weight]) -> None:
    used: dict[str, int] = {}
    for layer in layers:
        if not isinstance(layer, dict) or not isinstance(layer.get("class_name"), str) or not isinstance(layer.get("config"), dict):
            raise CheckpointError(f"config.json has a layer without class_name and config under {where}")
        class_name, config = layer["class_name"], layer["config"]
        key = naming.snake_case(class_name)
        if key in used:  # Keras's saving numbers the layers of a class: dense, dense_1, ...
            used[key] += 1
            key = f"{key}_{used[key]}"
        else:
            used[key] = 0
        sub = group(container, key) if container is not None else None
        if sub is None:
            continue  # a layer without variables
        _walk_layer(sub, f"{where}/{key}", class_name, config, trainable and config.get("trainable", True) is not False, found)


def _walk_layer(holder: Any, where: str, class_name: str, config: Mapping[str, Any], trainable: bool, found: list[Weight]) -> None:
    own = numbered(holder, f"{where}/vars")
    n_trainable = len(own)
    if class_name == "BatchNormalization":
        n_trainable = int(config.get("scale", True) is not False) + int(config.get("center", True) is not False)
    elif class_name in _NON_TRAINABLE_LAYERS:
        n_trainable = 0
    for i, stored in enumerate(own):
        if stored.value.dtype.kind != "f":
            raise CheckpointError(f"{stored.path} has dtype {stored.value.dtype}, not a float")
        found.append(Weight(stored.path, stored, trainable and i < n_trainable))
    with reading(where):
        keys = [k for k in holder if k != "vars"]
    if "layers" in keys and isinstance(config.get("layers"), list):
        _walk_layers(group(holder, "layers"), f"{where}/layers", config["layers"], trainable, found)
    rest = [k for k in _SUBLAYER_ORDER if k in keys] + [k for k in keys if k not in _SUBLAYER_ORDER and k != "layers"]
    for key in rest:
        sub = group(holder, key)
        if sub is not None:
            inner = config.get(key) if isinstance(config.get(key), dict) else {}
            sub_class = inner.get("class_name", "") if isinstance(inner, dict) else ""
            sub_config = inner.get("config", {}) if isinstance(inner, dict) else {}
            _walk_layer(sub, f"{where}/{key}", sub_class if isinstance(sub_class, str) else "",
                        sub_config if isinstance(sub_config, dict) else {}, trainable, found)


# --------------------------------------------------------------------- .h5 files


def read_h5(path: str, f: Any, generation: str, description: Any, model_weights: Mapping[str, Stored]) -> Keras3File:
    """A tf-keras new-style or Keras 3 ``.h5`` file's optimizer state: ``model_weights`` the model's
    variables by name, in the file's order."""
    opt_group = group(f, "optimizer_weights")
    names: list[str] = []
    variables: list[Stored] = []
    if opt_group is not None:
        names = names_attribute(opt_group, "weight_names", "optimizer_weights")
        variables = [Stored(f"optimizer_weights/{n}", dataset(opt_group, n, f"optimizer_weights/{n}")) for n in names]
    class_name = description.get("class_name") if isinstance(description, dict) else None
    if class_name in ("LossScaleOptimizer",) and len(names) >= 4:  # its own iteration, learning rate, step counter, scale
        names, variables = names[4:], variables[4:]
    weights = [Weight(name, stored, None if not name.rsplit("/", 1)[-1].startswith("moving_") else False)
               for name, stored in model_weights.items()]
    return read_state(path, generation, "h5", description, "training_config's optimizer_config", weights, variables, names)
