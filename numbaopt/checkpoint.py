"""HDF5 checkpoints of an optimizer's whole state: ``save_optimizer`` and ``load_optimizer``.

The layout is documented in ``docs/checkpoint-format.md``. Three promises shape this module:

* **A save is atomic.** The file is written under a temporary name in the target's folder,
  flushed and fsynced, then moved over the target with ``os.replace``; a crash at any
  moment leaves either the old checkpoint or the new one at ``path``, never a mix. A
  symbolic link is written through: its target is replaced, the link kept.
  Temporary files of writers that died (SIGKILL, power loss) are removed by the next save
  to the same path on the same host.
* **A checkpoint is data, never code.** The class is looked up by name in numbaopt's
  registry (nothing is imported from a name in the file), the config is JSON, the slots
  are plain float datasets and the optimizer's own arrays (``checkpoint_arrays``) plain
  numeric ones; nothing is unpickled or evaluated.
* **Every load is checked before it is trusted.** A SHA-256 digest of every slot, of every
  optimizer array and of the header detects corruption; shapes, dtypes, slot kinds and
  scalar state are checked against the class; a dataset must be stored in the file itself
  (no links, no external or virtual storage, no filters), and every count is compared with
  the objects the file holds before it is used, so a crafted file cannot make the loader
  read other files or allocate more memory than the file's size. Every number must fit
  what will hold it (JSON numbers finite and within 64 bits, ``iterations`` below 2**63).
  Every failure is a ``CheckpointError`` that names the file and the place in it. The
  digests catch accidents, not forgers: a crafted file with valid digests is still only
  data, checked like any other.
"""
from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import math
import os
import secrets
import socket
import warnings
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt import quantization
from numbaopt import keras3  # noqa: F401  # imports Keras 3's family
from numbaopt import torch_optim  # noqa: F401  # imports torch.optim's family: the registry is complete
from numbaopt.optimizers import Optimizer  # imports every optimizer of Keras 2.0's family
from numbaopt.registry import optimizer_class, qualified_name
from numbaopt.state import OptimizerState, Slot, check_slots
from numbaopt.version import VERSION

if TYPE_CHECKING:
    from numbaopt.optimizers.tf_optimizer import TFOptimizer

# h5py has no type information: its files, groups, datasets and attributes are ``Any`` here.

#: The value of the root ``format`` attribute: what marks an HDF5 file as a numbaopt checkpoint.
FORMAT = "numbaopt optimizer checkpoint"

#: The format this version writes; it reads every version up to this one. Format 3 records
#: each slot's declaration (``slots``: name, shape kind, storage), so a slot's dataset has
#: the shape and dtype its declaration gives; formats 1 and 2 hold slots shaped and typed
#: like their parameters, which is what the declarations of their optimizers give. Formats 4
#: and 5 changed the codes of 8-bit slots (``numbaopt.quantization``: 5 those of nonnegative
#: slots); earlier codes are converted on reading.
FORMAT_VERSION = 5

#: The ending of temporary files; the next save to the same path sweeps those of dead writers.
TEMPORARY_SUFFIX = ".numbaopt-tmp"

#: What a temporary name adds after ``.<file name>.<host>.``: a pid (below 2**31, so at most
#: 10 digits), a dot, 12 random hex digits and the suffix.
_TEMPORARY_TAIL = 10 + 1 + 12 + len(TEMPORARY_SUFFIX)

#: Integers in a checkpoint's JSON and its ``iterations`` are below this (int64's range).
INT64_LIMIT = 2**63

_FLOAT_DTYPES = ("float32", "float64", "bfloat16", "float16")


def _on_disk(array: npt.NDArray[Any]) -> npt.NDArray[Any]:
    """A slot array as a checkpoint stores it, little-endian: bfloat16 as its uint16 bits
    (HDF5 has no bfloat16), an 8-bit slot as its records of codes and absmax."""
    if array.dtype.name == "bfloat16":
        array = array.view(np.uint16)
    return array.astype(array.dtype.newbyteorder("<"), copy=False)


def _stored_dtype(dtype: np.dtype[Any]) -> np.dtype[Any]:
    """The dtype a slot of host ``dtype`` has in the file (``_on_disk``)."""
    return np.dtype("<u2") if dtype.name == "bfloat16" else dtype.newbyteorder("<")


def _from_disk(array: npt.NDArray[Any], dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """The inverse of ``_on_disk``: a stored slot as the host ``dtype`` its declaration gives."""
    if dtype.name == "bfloat16":
        return np.asarray(array, np.uint16).view(dtype)
    return np.asarray(array, dtype=dtype)

#: The dtypes of an optimizer's own arrays (``Optimizer.checkpoint_arrays``): fixed-size
#: numbers that every HDF5 reader maps one way; no strings, objects, booleans or compounds.
ARRAY_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
                "float16", "float32", "float64")


class CheckpointError(Exception):
    """A file that cannot be loaded: unreadable, corrupted, truncated, foreign or incompatible."""


class Parameter(NamedTuple):
    """What a checkpoint records about one parameter: its optional name, shape and dtype."""

    name: str | None  # str, or None when the parameters were not named
    shape: tuple[int, ...]
    dtype: str


class Checkpoint(NamedTuple):
    """The checked content of a checkpoint file, as ``read_checkpoint`` returns it."""

    format_version: int
    numbaopt_version: str
    class_name: str
    config: dict[str, Any]
    iterations: int
    scalars: dict[str, float]
    parameters: tuple[Parameter, ...]  # of Parameter, in parameter order
    slots: dict[str, list[npt.NDArray[Any]]]  # slot kind -> [array per parameter]
    arrays: dict[str, npt.NDArray[Any]]  # the optimizer's own arrays by name, in saved order (empty in format 1)


# ---------------------------------------------------------------------- saving


def save_optimizer(optimizer: Optimizer | TFOptimizer, path: str | os.PathLike[str]) -> None:
    """Write ``optimizer``'s class, config, iterations, scalar state, every slot and its own
    arrays (``checkpoint_arrays()``) to ``path``.

    The file at ``path`` is replaced atomically: a crash leaves the previous file or the new
    one, never a partial file. A symbolic link at ``path`` is kept and its target replaced.
    Works before the first step too (no slots yet).
    """
    save = getattr(type(optimizer), "save_numbaopt_checkpoint", None)
    if save is not None:  # numbaopt.torch optimizers and ShardedOptimizer save themselves
        return save(optimizer, path)  # type: ignore[no-any-return]
    if not isinstance(optimizer, Optimizer):
        raise TypeError(f"save_optimizer needs a numbaopt optimizer, got {type(optimizer).__name__}")
    cls = type(optimizer)
    try:
        registered = optimizer_class(qualified_name(cls))
    except ValueError:
        registered = None
    if registered is not cls:
        raise TypeError(f"{cls.__name__} is not one of numbaopt's registered optimizers, so it could not be loaded back")
    try:
        config_text = json.dumps(optimizer.checkpoint_config(), sort_keys=True, allow_nan=False)
    except (TypeError, ValueError) as error:
        raise TypeError(f"{cls.__name__}'s checkpoint config is not JSON: {error}") from None

    arrays = _checked_arrays(cls.__name__, optimizer.checkpoint_arrays())
    state = optimizer.state()
    slots = {kind: [np.asarray(a, order="C") for a in state.slots.get(kind, [])] for kind in optimizer.slot_names}
    n_params = len(state.parameters) if state.parameters is not None else len(next(iter(slots.values()), []))  # a zero-slot optimizer (Keras 3's SGD) has parameters and no slots
    names = state.names or (None,) * n_params
    if n_params and state.parameters is None:
        raise ValueError(f"{cls.__name__}'s state does not say its parameters' shapes (slots given before a step, "
                         "none shaped like its parameters); take a step first")
    parameters = tuple(Parameter(names[i], tuple(shape), dtype) for i, (shape, dtype) in enumerate(state.parameters or ()))
    header = _header(qualified_name(cls), config_text, state.iterations, state.scalars, optimizer.slots, list(arrays))
    digests = [{kind: _array_digest(slots[kind][i]) for kind in optimizer.slot_names} for i in range(n_params)]
    records = [_array_record(name, array.shape, array.dtype.name, _array_digest(array)) for name, array in arrays.items()]

    path = os.fspath(path)
    target = os.path.realpath(path)  # through a symbolic link, so that os.replace keeps the link
    folder = os.path.dirname(target)
    if not os.path.isdir(folder):
        raise FileNotFoundError(errno.ENOENT, f"cannot save a checkpoint there: {folder} is not an existing folder",
                                path)
    replace_file(target, lambda temporary: _write(temporary, header, parameters, slots, digests, arrays, records))
    try:
        _fsync_directory(folder)
    except OSError as error:
        # The new file is in place and complete; only its survival of a power loss is in doubt.
        warnings.warn(
            f"{path}: the checkpoint was written, but its folder {folder} could not be synced ({error}); "
            f"a power loss now might still show the previous file",
            RuntimeWarning, stacklevel=2,
        )


def _checked_arrays(class_name: str, arrays: object) -> dict[str, npt.NDArray[Any]]:
    """``checkpoint_arrays()``'s result as ``{name: C-contiguous array}``, or a TypeError / ValueError.

    Checked before anything is written, so an optimizer that returns something a load could
    not read back fails at the save, not at the load.
    """
    if not isinstance(arrays, dict):
        raise TypeError(f"{class_name}.checkpoint_arrays() must return a dict of name -> array, got {type(arrays).__name__}")
    checked: dict[str, npt.NDArray[Any]] = {}
    for name, array in arrays.items():
        if not isinstance(name, str):
            raise TypeError(f"{class_name}.checkpoint_arrays(): array names are strings, got {name!r}")
        _check_array_name(name, ValueError, f"{class_name}.checkpoint_arrays()")
        array = np.asarray(array, order="C")
        if array.dtype.name not in ARRAY_DTYPES:
            raise TypeError(
                f"{class_name}.checkpoint_arrays(): array {name!r} has dtype {array.dtype}; "
                f"a checkpoint stores {', '.join(ARRAY_DTYPES)}"
            )
        checked[name] = array
    return checked


def _check_array_name(name: str, error: type[Exception], where: str) -> None:
    """An HDF5 link name that means one dataset in /arrays: not empty, no ``/``, not ``.``."""
    if not name or "/" in name or name == ".":
        raise error(f"{where}: {name!r} is not a valid array name (a non-empty name without '/', not '.')")


def _array_record(name: str, shape: Sequence[int], dtype: str, digest: str) -> dict[str, Any]:
    """What the manifest digest records about one optimizer array."""
    return {"name": name, "shape": list(shape), "dtype": dtype, "sha256": digest}


def _header(
    class_name: str,
    config_text: str,
    iterations: int,
    scalars: Mapping[str, float],
    declared: Iterable[Slot],
    array_names: Iterable[str],
) -> dict[str, Any]:
    """The root attributes, as they are written (and read back for the digest)."""
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "numbaopt_version": VERSION,
        "class_name": class_name,
        "config": config_text,
        "iterations": int(iterations),
        # JSON keeps a float64 exactly: Python writes the shortest repr that reads back the same.
        "scalar_state": json.dumps({k: float(v) for k, v in scalars.items()}, sort_keys=True),
        "slot_names": json.dumps([slot.name for slot in declared]),
        "slots": json.dumps([slot.describe() for slot in declared]),
        "array_names": json.dumps(list(array_names)),
    }


def _write(
    filename: str,
    header: dict[str, Any],
    parameters: Sequence[Parameter],
    slots: Mapping[str, Sequence[npt.NDArray[Any]]],
    digests: Sequence[Mapping[str, str]],
    arrays: Mapping[str, npt.NDArray[Any]],
    records: Sequence[Mapping[str, Any]],
) -> None:
    import h5py

    # HDF5 1.10's file format checksums its own metadata (superblock, object headers, indexes),
    # so damage outside the slot data is detected by the library itself; the upper bound keeps
    # the written format the same whichever HDF5 is installed.
    with h5py.File(filename, "w", libver=("v110", "v110")) as f:
        f.attrs.update(header)
        f.attrs["n_parameters"] = len(parameters)
        group = f.create_group("parameters")
        for i, parameter in enumerate(parameters):
            g = group.create_group(str(i))
            if parameter.name is not None:
                g.attrs["name"] = parameter.name
            g.attrs["shape"] = json.dumps(list(parameter.shape))
            g.attrs["dtype"] = parameter.dtype
            for kind, per_parameter in slots.items():
                array = per_parameter[i]
                dataset = g.create_dataset(kind, data=_on_disk(array))
                dataset.attrs["sha256"] = digests[i][kind]
        group = f.create_group("arrays")
        for (name, array), record in zip(arrays.items(), records):
            dataset = group.create_dataset(name, data=array.astype(array.dtype.newbyteorder("<"), copy=False))
            dataset.attrs["sha256"] = record["sha256"]
        f.attrs["sha256"] = _manifest_digest(header, parameters, digests, records)
        f.flush()


def _array_digest(array: npt.NDArray[Any]) -> str:
    """SHA-256 of an array's little-endian bytes (the same on every machine)."""
    data = np.ascontiguousarray(_on_disk(array))
    # An ndarray is a buffer; NumPy's stubs say so (``__buffer__``) for Python >= 3.12 only.
    return hashlib.sha256(data.reshape(-1).view(np.uint8)).hexdigest()  # type: ignore[arg-type, unused-ignore]


def _manifest_digest(
    header: Mapping[str, Any],
    parameters: Iterable[Parameter],
    digests: Iterable[Mapping[str, str]],
    arrays: Sequence[Mapping[str, Any]] | None = None,
) -> str:
    """SHA-256 over everything but the slot and array data, which enter through their digests.

    ``arrays`` is the list of ``_array_record``s (format 2), or None for a format-1 file,
    whose manifest has no ``arrays`` key.
    """
    manifest = dict(header, parameters=[
        {"name": p.name, "shape": list(p.shape), "dtype": p.dtype, "sha256": d} for p, d in zip(parameters, digests)
    ])
    if arrays is not None:
        manifest["arrays"] = arrays
    return hashlib.sha256(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def file_identity(path: str | os.PathLike[str]) -> tuple[int, int, int, int] | None:
    """What tells one version of a file from the next (a replacement is a new file), or None
    where there is none: readers that must not mix two versions compare it before and after."""
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns


def replace_file(target: str, write: Callable[[str], None]) -> None:
    """Make a new file beside ``target`` with ``write(temporary)``, flush it to the disk and
    move it over ``target`` (a real path, not a link): a crash at any point leaves the
    previous file or the new one, never a partial one. Temporaries of processes that died
    while writing are swept first. Syncing the folder is the caller's (what a failed sync
    means differs: checkpoints, index files, Keras model files)."""
    folder = os.path.dirname(target)
    lead = temporary_lead(target)
    sweep_dead_temporaries(folder, lead)
    temporary = _create_temporary(folder, lead)
    try:
        write(temporary)
        _fsync(temporary)
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def temporary_lead(target: str) -> str:
    """How the name of every temporary file for ``target`` begins: ``.<file name>.<host>.``.

    Where a name that long could pass the file system's limit on a name's length, the first
    16 hex digits of the file name's SHA-256 stand in for it, so that a file whose own name
    is near the limit can still be saved, and the sweep still finds its temporaries.
    """
    folder, name = os.path.split(target)
    host = socket.gethostname()
    if len(os.fsencode(f".{name}.{host}.")) + _TEMPORARY_TAIL > _longest_name(folder):
        name = hashlib.sha256(os.fsencode(name)).hexdigest()[:16]
    return f".{name}.{host}."


def _longest_name(folder: str) -> int:
    """The longest file name, in bytes, that ``folder``'s file system takes (255 where it cannot say)."""
    with contextlib.suppress(AttributeError, OSError, ValueError):  # Windows has no pathconf
        limit = os.pathconf(folder, "PC_NAME_MAX")
        if limit > 0:
            return limit
    return 255


def _create_temporary(folder: str, lead: str) -> str:
    """A new empty file ``<lead><pid>.<random>.numbaopt-tmp`` in ``folder``.

    The host (in ``lead``) and pid tell the next save whether its writer is dead. Unlike ``mkstemp``
    (mode 0600) it is created with mode 0666 less the umask, like any file the user writes.
    """
    while True:
        temporary = os.path.join(folder, f"{lead}{os.getpid()}.{secrets.token_hex(6)}{TEMPORARY_SUFFIX}")
        try:
            os.close(os.open(temporary, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
        except FileExistsError:
            continue
        return temporary


def sweep_dead_temporaries(folder: str, lead: str) -> None:
    """Remove the temporary files in ``folder`` named ``<lead><pid>...`` whose writers on this host died.

    Only on POSIX, where ``os.kill(pid, 0)`` asks whether a process exists (on Windows it
    would end it). A live writer's file is left alone, so concurrent savers do not collide;
    so is a file whose pid is not one this module writes, as that may be no temporary of ours.
    """
    if os.name != "posix":
        return
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if not (entry.startswith(lead) and entry.endswith(TEMPORARY_SUFFIX)):
                continue
            pid = entry[len(lead):].split(".", 1)[0]
            if _is_pid(pid) and not _process_exists(int(pid)):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))


def _is_pid(text: str) -> bool:
    """Whether ``text`` is a process id as ``_create_temporary`` writes it: ASCII digits, 1 to 2**31 - 1.

    ``str.isdigit`` alone accepts digits such as ``²`` that ``int`` refuses, and ``os.kill``
    refuses numbers beyond a C int.
    """
    return text.isascii() and text.isdigit() and 0 < int(text) < 2**31


def _process_exists(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


def _fsync(filename: str) -> None:
    fd = os.open(filename, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_directory(folder: str) -> None:
    """Make the rename itself durable (POSIX); Windows cannot open a folder for fsync."""
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


#: The sync ``save_optimizer`` calls: a name of this module's own, so that a checkpoint's
#: folder sync can fail (in a test) while the other writers' does not.
_fsync_directory = fsync_directory


# --------------------------------------------------------------------- loading


def load_optimizer(path: str | os.PathLike[str], **options: Any) -> Optimizer | TFOptimizer:
    """A new optimizer with the state saved at ``path``; its slots bind at the next step.

    ``options`` go to the class's ``from_checkpoint_config`` (``TFOptimizer`` needs
    ``wrapped=``, the TensorFlow optimizer to drive); the optimizer's own arrays go to its
    ``load_checkpoint_arrays``. The next ``apply_gradients`` checks
    the parameters' count, shapes and dtypes, and their names when both sides have them.
    """
    return optimizer_from_checkpoint(read_checkpoint(path), path, **options)


def optimizer_from_checkpoint(checkpoint: Checkpoint, path: str | os.PathLike[str], **options: Any) -> Optimizer | TFOptimizer:
    """A new optimizer with the state of ``checkpoint``, read from ``path`` (named in errors);
    ``load_optimizer`` after the read, and the sharded checkpoints' loader after theirs."""
    cls = optimizer_class(checkpoint.class_name)
    names = [p.name for p in checkpoint.parameters]
    try:
        optimizer: Optimizer | TFOptimizer = cls.from_checkpoint_config(checkpoint.config, **options)
        optimizer.load_state(OptimizerState(
            checkpoint.iterations, dict(checkpoint.scalars), {kind: list(checkpoint.slots[kind]) for kind in optimizer.slot_names},
            parameters=tuple((p.shape, p.dtype) for p in checkpoint.parameters) if checkpoint.parameters else None,
        ))
        optimizer.load_checkpoint_arrays(dict(checkpoint.arrays))
        optimizer.set_state_origin(f"loading the checkpoint {path}")
        if names and names[0] is not None:
            optimizer.set_parameter_names(names)  # type: ignore[arg-type]  # all named: _read checked all or none
    except (TypeError, ValueError) as error:
        raise CheckpointError(f"{path}: cannot rebuild {cls.__name__} from the checkpoint: {error}") from error
    return optimizer


def read_checkpoint(path: str | os.PathLike[str]) -> Checkpoint:
    """The content of the checkpoint at ``path``, fully checked, as a ``Checkpoint``."""
    import h5py

    path = os.fspath(path)
    try:
        if not os.path.isfile(path):
            raise CheckpointError("no such file" if not os.path.exists(path) else "not a regular file")
        with reading("the file"):  # removed since (a sharded save replacing its set): an OSError
            size = os.path.getsize(path)
        if size == 0:
            raise CheckpointError("the file is empty (0 bytes)")
        with reading("the file"):
            is_hdf5 = h5py.is_hdf5(path)
        if not is_hdf5:
            raise CheckpointError(f"not an HDF5 file ({size} bytes without an HDF5 signature)")
        with reading("the file"):
            f = h5py.File(path, "r")
        with f:
            return _read(f)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error.__cause__


@contextlib.contextmanager
def reading(where: str) -> Iterator[None]:
    """Turn whatever h5py, JSON or NumPy raise on a damaged file into a CheckpointError naming ``where``."""
    try:
        yield
    except CheckpointError:
        raise
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeError) as error:
        raise CheckpointError(f"cannot read {where}: {error}") from error


def _read(f: Any) -> Checkpoint:
    format_name = read_attribute(f, "format", str, required=False)
    if format_name != FORMAT:
        raise CheckpointError(f"an HDF5 file but not a numbaopt checkpoint (/ has no attribute format={FORMAT!r})")
    version = read_attribute(f, "format_version", int)
    if version > FORMAT_VERSION or version < 1:
        raise CheckpointError(
            f"format version {version} (attribute format_version on /); numbaopt {VERSION} "
            f"reads versions 1 to {FORMAT_VERSION}: a newer numbaopt wrote this file"
        )
    header = {
        "format": format_name,
        "format_version": version,
        "numbaopt_version": read_attribute(f, "numbaopt_version", str),
        "class_name": read_attribute(f, "class_name", str),
        "config": read_attribute(f, "config", str),
        "iterations": read_attribute(f, "iterations", int),
        "scalar_state": read_attribute(f, "scalar_state", str),
        "slot_names": read_attribute(f, "slot_names", str),
    }
    records: list[dict[str, Any]] | None = None  # format 1 has no /arrays
    if version >= 3:
        header["slots"] = read_attribute(f, "slots", str)
    if version >= 2:
        header["array_names"] = read_attribute(f, "array_names", str)
        records = _read_array_records(f, _json(header, "array_names", list))
    declared = _declared_slots(header)
    n_params = read_attribute(f, "n_parameters", int)
    parameters, digests = _read_parameters(f, n_params, declared)
    if read_attribute(f, "sha256", str) != _manifest_digest(header, parameters, digests, records):
        raise CheckpointError("the header is corrupted: the attributes of /, /parameters and /arrays do not match / sha256")

    try:
        cls = optimizer_class(header["class_name"])
    except ValueError as error:
        raise CheckpointError(f"attribute class_name on / names no numbaopt optimizer: {error}") from None
    config = _json(header, "config", dict)
    if issubclass(cls, Optimizer) and "device" in config:
        raise CheckpointError(
            f"attribute config on / holds \"device\": {config['device']!r:.40}, which save_optimizer never writes: "
            f"a checkpoint is device-free (choose the device after loading, e.g. opt.device = 'cuda')"
        )
    scalars = _json(header, "scalar_state", dict)
    slot_names = [slot.name for slot in declared]
    expected = cls.declared_slots(config)
    if slot_names != [slot.name for slot in expected]:
        raise CheckpointError(f"attribute slot_names on / is {slot_names}, but {cls.__name__} has slots {[s.name for s in expected]}")
    if version >= 3 and [s.describe() for s in declared] != [s.describe() for s in expected]:
        raise CheckpointError(f"attribute slots on / declares {[s.describe() for s in declared]}, "
                              f"but {cls.__name__} declares {[s.describe() for s in expected]}")
    expected_scalars = sorted(name for name, _ in cls.scalar_state)
    if sorted(scalars) != expected_scalars:
        raise CheckpointError(f"attribute scalar_state on / has {sorted(scalars)}, but {cls.__name__} has {expected_scalars}")
    for name, value in scalars.items():
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise CheckpointError(f"scalar state {name} in attribute scalar_state on / is not a finite number: {value!r}")
    iterations = header["iterations"]
    if not 0 <= iterations < INT64_LIMIT:
        raise CheckpointError(
            f"attribute iterations on / is {'negative' if iterations < 0 else 'too large'}: {iterations} "
            f"(a step count is 0 to 2**63 - 1)"
        )
    names = [p.name for p in parameters]
    if None in names and any(n is not None for n in names):
        raise CheckpointError("some parameters in /parameters have a name attribute and others do not")
    if None not in names and len(set(names)) != len(names):
        raise CheckpointError("the name attributes in /parameters are not distinct")

    slots: dict[str, list[npt.NDArray[Any]]] = {kind: [] for kind in slot_names}
    for i, parameter in enumerate(parameters):
        for slot in declared:
            kind = slot.name
            where = f"/parameters/{i}/{kind}"
            with reading(where):
                array = f["parameters"][str(i)][kind][()]
            array = _from_disk(array, slot.dtype_of(parameter.dtype))
            if _array_digest(array) != digests[i][kind]:
                raise CheckpointError(f"{where} is corrupted: its data does not match its sha256 attribute")
            if version < quantization.FORMAT and slot.dtype == "q8":
                array = quantization.from_format(array, slot.sign, version)
            slots[kind].append(array)
    arrays: dict[str, npt.NDArray[Any]] = {}
    for record in records or []:
        where = f"/arrays/{record['name']}"
        with reading(where):
            array = f["arrays"][record["name"]][()]
        array = np.asarray(array, dtype=record["dtype"])
        if _array_digest(array) != record["sha256"]:
            raise CheckpointError(f"{where} is corrupted: its data does not match its sha256 attribute")
        arrays[record["name"]] = array
    return Checkpoint(version, header["numbaopt_version"], qualified_name(cls), config, header["iterations"],
                      {k: float(v) for k, v in scalars.items()}, tuple(parameters), slots, arrays)


def _read_array_records(f: Any, names: list[str]) -> list[dict[str, Any]]:
    """The ``_array_record`` of every dataset in /arrays (format 2), each checked before it is read."""
    for name in names:
        _check_array_name(name, CheckpointError, "attribute array_names on /")
    if len(set(names)) != len(names):
        raise CheckpointError(f"attribute array_names on / lists a name twice: {_preview(names)}")
    group = stored_member(f, "arrays", "/arrays", group=True)
    with reading("/arrays"):
        members = sorted(group.keys())
    if members != sorted(names):
        raise CheckpointError(f"/arrays holds datasets {_preview(members)}, expected array_names {_preview(sorted(names))}")
    records = []
    for name in names:
        where = f"/arrays/{name}"
        dataset = stored_member(group, name, where, group=False)
        with reading(where):
            dtype = dataset.dtype
        if dtype.name not in ARRAY_DTYPES:
            raise CheckpointError(f"{where} has dtype {dtype}; a checkpoint's arrays are {', '.join(ARRAY_DTYPES)}")
        check_stored_plainly(dataset, where)
        records.append(_array_record(name, dataset.shape, dtype.name, read_attribute(dataset, "sha256", str, where=where)))
    return records


def _declared_slots(header: Mapping[str, Any]) -> list[Slot]:
    """The slot declarations a checkpoint records (format 3), or those its slot names mean
    (formats 1 and 2: slots shaped and typed like their parameters)."""
    names = _json(header, "slot_names", list)
    if not all(isinstance(name, str) for name in names) or len(set(names)) != len(names):
        raise CheckpointError(f"attribute slot_names on / is not a list of distinct names: {_preview(names)}")
    if "slots" not in header:
        return [Slot(name) for name in names]
    with reading("attribute slots on /"):
        recorded = json.loads(header["slots"])
    if not isinstance(recorded, list):
        raise CheckpointError(f"attribute slots on / should hold a JSON list of slot declarations, got {header['slots']!r:.80}")
    declared = []
    for record in recorded:
        if (not isinstance(record, dict) or sorted(set(record) - {"sign"}) != ["dtype", "name", "shape"]
                or not all(isinstance(record[key], str) for key in ("name", "shape"))
                or not isinstance(record["dtype"], (str, type(None))) or not isinstance(record.get("sign", ""), str)):
            raise CheckpointError(f"attribute slots on / holds {record!r:.80}, not a slot declaration")
        slot = Slot(record["name"], record["shape"], record["dtype"], record.get("sign", "signed"))
        try:
            check_slots("the checkpoint", (slot,))
        except TypeError as error:
            raise CheckpointError(f"attribute slots on /: {error}") from None
        declared.append(slot)
    if [slot.name for slot in declared] != names:
        raise CheckpointError(f"attribute slots on / names {[s.name for s in declared]}, but slot_names is {names}")
    return declared


def _read_parameters(f: Any, n_params: int, declared: Sequence[Slot]) -> tuple[list[Parameter], list[dict[str, str]]]:
    """Each parameter's record and slot digests, with every dataset checked before it is read."""
    if n_params < 0:
        raise CheckpointError(f"attribute n_parameters on / is negative: {n_params}")
    group = stored_member(f, "parameters", "/parameters", group=True)
    with reading("/parameters"):
        members = sorted(group.keys())
    # The count first: n_parameters is only a number in the file, the members are what it holds.
    if len(members) != n_params or members != sorted(str(i) for i in range(n_params)):
        raise CheckpointError(f"/parameters holds {_preview(members)}, expected groups 0 to {n_params - 1} (n_parameters = {n_params})")
    parameters, digests = [], []
    for i in range(n_params):
        where = f"/parameters/{i}"
        g = stored_member(group, str(i), where, group=True)
        name = read_attribute(g, "name", str, required=False, where=where)
        shape_text = read_attribute(g, "shape", str, where=where)
        with reading(f"attribute shape on {where}"):
            shape = json.loads(shape_text)
        if not isinstance(shape, list) or not all(isinstance(n, int) and not isinstance(n, bool) and n >= 0 for n in shape):
            raise CheckpointError(f"attribute shape on {where} is not a list of sizes: {shape_text!r}")
        dtype = read_attribute(g, "dtype", str, where=where)
        if dtype not in _FLOAT_DTYPES:
            raise CheckpointError(f"attribute dtype on {where} is {dtype!r}, expected one of {', '.join(_FLOAT_DTYPES)}")
        with reading(where):
            kinds = sorted(g.keys())
        slot_names = [slot.name for slot in declared]
        if kinds != sorted(slot_names):
            raise CheckpointError(f"{where} holds datasets {_preview(kinds)}, expected the slots {sorted(slot_names)}")
        slot_digests = {}
        for slot in declared:
            kind = slot.name
            dataset = stored_member(g, kind, f"{where}/{kind}", group=False)
            _check_dataset(dataset, slot.shape_of(tuple(shape)), slot.dtype_of(dtype), f"{where}/{kind}")
            slot_digests[kind] = read_attribute(dataset, "sha256", str, where=f"{where}/{kind}")
        parameters.append(Parameter(name, tuple(shape), dtype))
        digests.append(slot_digests)
    return parameters, digests


def stored_member(parent: Any, key: str, where: str, group: bool) -> Any:
    """A group or dataset stored in this file: hard links only, so nothing points elsewhere."""
    import h5py

    with reading(where):
        link = parent.get(key, getlink=True)
        if link is None:
            raise CheckpointError(f"{where} is missing")
        if not isinstance(link, h5py.HardLink):
            raise CheckpointError(f"{where} is a {type(link).__name__}; numbaopt reads only data stored in the file itself")
        obj = parent[key]
    kind = h5py.Group if group else h5py.Dataset
    if not isinstance(obj, kind):
        raise CheckpointError(f"{where} is not a{' group' if group else ' dataset'}")
    return obj


def _check_dataset(dataset: Any, shape: tuple[int, ...], dtype: np.dtype[Any], where: str) -> None:
    """The slot's shape and dtype are what its declaration gives for its parameter, and its
    bytes lie plainly in this file."""
    with reading(where):
        if dataset.shape != shape:
            raise CheckpointError(f"{where} has shape {dataset.shape}, but its parameter has shape {shape}")
        stored = _stored_dtype(dtype)
        if dataset.dtype.newbyteorder("<") != stored if stored.kind == "V" else (
                dataset.dtype.kind != stored.kind or dataset.dtype.itemsize != stored.itemsize):
            raise CheckpointError(f"{where} has dtype {dataset.dtype}, but its declaration keeps it as {dtype}")
    check_stored_plainly(dataset, where)


def check_stored_plainly(dataset: Any, where: str) -> None:
    """The dataset's bytes lie contiguously in this file and are exactly as many as its shape needs,
    so reading it touches no other file and allocates no more than the file holds."""
    with reading(where):
        if dataset.is_virtual or dataset.external or dataset.chunks is not None:
            raise CheckpointError(f"{where} is not stored contiguously in this file (virtual, external or chunked)")
        shape, dtype = dataset.shape, dataset.dtype
        expected = math.prod(shape) * dtype.itemsize  # Python ints: no int64 wraparound to 0
        stored = dataset.id.get_storage_size()
        if expected and stored != expected:
            raise CheckpointError(f"{where} stores {stored} bytes, but shape {shape} {dtype} needs {expected}")


def read_attribute(obj: Any, key: str, kind: type[str] | type[int], required: bool = True, where: str = "/") -> Any:
    """An attribute of ``obj`` of Python type ``kind`` (str or int), or a CheckpointError naming it."""
    with reading(f"attribute {key} on {where}"):
        if key not in obj.attrs:
            if required:
                raise CheckpointError(f"attribute {key} on {where} is missing")
            return None
        value = obj.attrs[key]
    if kind is str and isinstance(value, str):
        return value
    if kind is int and isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_)):
        return int(value)
    raise CheckpointError(f"attribute {key} on {where} should be {'a string' if kind is str else 'an integer'}, got {value!r:.80}")


def _json(header: Mapping[str, Any], key: str, kind: type[dict[str, Any]] | type[list[str]]) -> Any:
    with reading(f"attribute {key} on /"):
        value = json.loads(header[key])
    if not isinstance(value, kind) or (kind is list and not all(isinstance(v, str) for v in value)):
        what = "object" if kind is dict else "list of strings"
        raise CheckpointError(f"attribute {key} on / should hold a JSON {what}, got {header[key]!r:.80}")
    check_json_numbers(key, value)
    return value


def check_json_numbers(key: str, value: object) -> None:
    """Every number in the JSON of attribute ``key`` is finite, and every integer fits in 64 bits.

    As ``save_optimizer`` writes them: a 10**400 or a 1e400 (inf) would otherwise pass the
    checks and overflow later, far from the file (``float(10**400)``, ``np.int64``).
    """
    pending: list[tuple[object, tuple[Any, ...]]] = [(value, ())]  # (value, its place as nested (parent place, key or index) pairs)
    while pending:
        value, place = pending.pop()
        if isinstance(value, (dict, list)):
            items = value.items() if isinstance(value, dict) else enumerate(value)
            pending += [(item, (place, index)) for index, item in items]
        elif (isinstance(value, float) and not math.isfinite(value)) or (
            isinstance(value, int) and not isinstance(value, bool) and not -INT64_LIMIT <= value < INT64_LIMIT
        ):
            where = ""
            while place:
                place, index = place
                where = f"[{index!r}]{where}"
            raise CheckpointError(
                f"attribute {key} on / holds {key}{where} = {value!r:.40}, out of range "
                f"(a checkpoint's numbers are finite, its integers within 64 bits)"
            )


def _preview(items: Sequence[Any], limit: int = 8) -> str:
    shown = ", ".join(repr(item) for item in items[:limit])
    return f"[{shown}{', ...' if len(items) > limit else ''}]"
