"""Sharded checkpoints: one ordinary checkpoint file per rank, named by a small index file.

``numbaopt.distributed.ShardedOptimizer`` saves each rank's shard of the slots with
``save_optimizer`` (each shard file is an ordinary checkpoint of the shard's pieces, one
flat piece per parameter, with its digests), then writes the index: the optimizer's class,
config, iterations and scalar state, the whole parameters (names, shapes, dtypes), and per
shard its file name, the element range of every parameter it holds and its manifest digest.
Reading checks the index like a checkpoint header and every shard file it uses with
``read_checkpoint``; a shard whose digest is not the one the index records belongs to
another save (a mixed set) and is refused. The layout is in ``docs/checkpoint-format.md``.

**A save is atomic as a set.** Shard files get names no earlier save used (a random token),
each written atomically; only when all exist does one rank replace the index atomically,
then remove the previous set's files. A crash at any moment leaves the index naming a
complete set: the previous one or the new one.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import re
import time
import types
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt import registry
from numbaopt.phases import whole_tensors
from numbaopt.checkpoint import (
    INT64_LIMIT,
    TEMPORARY_SUFFIX,
    Checkpoint,
    CheckpointError,
    Parameter,
    check_json_numbers,
    file_identity,
    fsync_directory,
    read_attribute,
    sweep_dead_temporaries,
    temporary_lead,
    read_checkpoint,
    reading,
    replace_file,
)
from numbaopt.version import VERSION

#: The root ``format`` attribute of an index file.
FORMAT = "numbaopt sharded optimizer checkpoint"

#: The index format this version writes and reads.
FORMAT_VERSION = 1

#: What a shard file's name adds to its index's name: the save's token, the rank and the rank count.
_SHARD_TAIL = re.compile(r"\.[0-9a-f]{12}\.rank\d+-of-\d+\.h5")
_SHARD_TEMPORARY = re.compile(r"\.[0-9a-f]{12}\.rank\d+-of-\d+\.h5(?=\.)")


class ShardRecord(NamedTuple):
    """One shard file of a set, as its index records it."""

    file: str  # the file's name, in the index's folder
    ranges: tuple[tuple[int, int], ...]  # per parameter: the flat element range [start, stop) it holds
    sha256: str  # the shard file's manifest digest (its root sha256 attribute)


class ShardedIndex(NamedTuple):
    """The checked content of an index file."""

    path: str
    numbaopt_version: str
    class_name: str
    config: dict[str, Any]
    iterations: int
    scalars: dict[str, float]
    parameters: tuple[Parameter, ...]  # the whole parameters
    shards: tuple[ShardRecord, ...]  # in rank order; their ranges tile every parameter


# ---------------------------------------------------------------------- writing


def shard_file_name(index_path: str, token: str, rank: int, n_ranks: int) -> str:
    """The name of rank ``rank``'s shard file in the save ``token`` to ``index_path``."""
    return f"{os.path.basename(index_path)}.{token}.rank{rank:04d}-of-{n_ranks:04d}.h5"


def shard_digest(path: str) -> str:
    """The manifest digest of the shard file just written at ``path`` (its root sha256 attribute)."""
    import h5py

    with reading("the shard file"), h5py.File(path, "r") as f:
        return str(read_attribute(f, "sha256", str))


def write_index(path: str, header: Mapping[str, Any], parameters: Sequence[Parameter], shards: Sequence[ShardRecord]) -> None:
    """Replace the index at ``path`` atomically, then remove the shard files of earlier saves.

    ``header`` holds class_name, config (JSON text), iterations and scalar_state (JSON text).
    Every shard file must already be complete: the index is the last thing a save changes.
    """
    import h5py

    attributes = _index_attributes(header, parameters, shards)
    folder = os.path.dirname(path)

    def write(temporary: str) -> None:
        with h5py.File(temporary, "w", libver=("v110", "v110")) as f:
            f.attrs.update(attributes)
            f.attrs["sha256"] = _index_digest(attributes)

    replace_file(path, write)
    # The new set is in place: nothing below may fail the save, whose shard files the
    # ranks would otherwise remove from under the new index.
    try:
        fsync_directory(folder)
    except OSError as error:
        # The previous set stays too: a power loss might still show the previous index.
        warnings.warn(f"{path}: the index was written, but its folder could not be synced ({error}); "
                      f"the previous save's files are kept", RuntimeWarning, stacklevel=2)
        return
    remove_unlisted_shards(path, {shard.file for shard in shards})


def remove_unlisted_shards(path: str, keep: set[str]) -> None:
    """Remove the shard files of saves to ``path`` other than those in ``keep``: the
    previous set, and the files of saves that died before their index was written."""
    folder, name = os.path.split(path)
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if entry not in keep and entry.startswith(name) and _SHARD_TAIL.fullmatch(entry[len(name):]):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, entry))
    sweep_dead_shard_temporaries(path)


def sweep_dead_shard_temporaries(path: str) -> None:
    """Remove the temporaries of shard files of saves to ``path`` whose writers on this host
    died: a rank killed while writing its shard leaves one, named after its save's token,
    which no later save's own sweep (``replace_file``'s, for its new names) would find."""
    folder, name = os.path.split(path)
    leads = set()
    with contextlib.suppress(OSError):
        for entry in os.listdir(folder):
            if entry.startswith(f".{name}.") and entry.endswith(TEMPORARY_SUFFIX):
                shard = _SHARD_TEMPORARY.match(entry[len(name) + 1:])
                if shard is not None:
                    leads.add(temporary_lead(os.path.join(folder, name + shard.group(0))))
    for lead in leads:
        sweep_dead_temporaries(folder, lead)


def _index_attributes(header: Mapping[str, Any], parameters: Sequence[Parameter], shards: Sequence[ShardRecord]) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "numbaopt_version": VERSION,
        "class_name": header["class_name"],
        "config": header["config"],
        "iterations": int(header["iterations"]),
        "scalar_state": header["scalar_state"],
        "parameters": json.dumps([{"name": p.name, "shape": list(p.shape), "dtype": p.dtype} for p in parameters]),
        "shards": json.dumps([{"file": s.file, "ranges": [list(r) for r in s.ranges], "sha256": s.sha256} for s in shards]),
    }


def _index_digest(attributes: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(dict(attributes), sort_keys=True, separators=(",", ":")).encode()).hexdigest()


# ---------------------------------------------------------------------- reading


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is an index file (a sharded checkpoint); False for anything else."""
    import h5py

    try:
        if not os.path.isfile(path) or not h5py.is_hdf5(path):
            return False
        with h5py.File(path, "r") as f:
            return bool(f.attrs.get("format") == FORMAT)
    except (OSError, KeyError, ValueError, TypeError, RuntimeError, UnicodeError):
        return False  # a damaged root group (h5py raises KeyError): the ordinary load names it


def read_any(path: str | os.PathLike[str]) -> Checkpoint:
    """The whole content of the checkpoint at ``path``, sharded or not (``numbaopt inspect``)."""
    return read_whole(path) if is_sharded(path) else read_checkpoint(path)


#: How long a load keeps starting again while saves replace the index under it (seconds):
#: a bound on time, not on attempts, so that saves in quick succession cannot exhaust it.
_SAVED_MEANWHILE_SECONDS = 30.0


def read_whole(path: str | os.PathLike[str]) -> Checkpoint:
    """A sharded checkpoint as one ``Checkpoint``: every shard read, checked and joined.

    A save that replaces the index while the set is read removes the shard files the
    read started from: when a shard is then missing or foreign and the index is no longer
    the one read, the read starts again from the new index (as an ordinary checkpoint,
    replaced atomically, never fails this way); a set that is damaged as it stands raises.
    """
    deadline = time.monotonic() + _SAVED_MEANWHILE_SECONDS
    while True:
        before = file_identity(path)
        index = read_index(path)
        try:
            return _read_whole(index)
        except CheckpointError:
            # The index read is still the one there: the set is bad as it stands.
            if file_identity(path) == before or time.monotonic() > deadline:
                raise


def _read_whole(index: ShardedIndex) -> Checkpoint:
    shards = [read_shard(index, k) for k in range(len(index.shards))]  # every one checked, even empty ones
    whole = [(0, _size(p.shape)) for p in index.parameters]
    cls = registry.optimizer_class(index.class_name)
    # the slots of this config (slot_dtype, Keras 3's variants), not the class's declaration
    by_tensor = whole_tensors(types.SimpleNamespace(slots=cls.declared_slots(index.config), phases=cls.phases))
    slots = slot_pieces(index, whole, [s.ranges for s in index.shards], lambda k: shards[k].slots, by_tensor)
    if not by_tensor:
        slots = {kind: [a.reshape(p.shape) for a, p in zip(arrays, index.parameters)] for kind, arrays in slots.items()}
    version = min(shard.format_version for shard in shards)  # the index lists at least one
    return Checkpoint(version, index.numbaopt_version, index.class_name, index.config, index.iterations, index.scalars,
                      index.parameters, slots, {})


def read_index(path: str | os.PathLike[str]) -> ShardedIndex:
    """The content of the index file at ``path``, checked (not yet the shard files)."""
    import h5py

    path = os.fspath(path)
    try:
        with reading("the index file"), h5py.File(path, "r") as f:
            return _read_index(path, f)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error.__cause__


def _read_index(path: str, f: Any) -> ShardedIndex:
    if read_attribute(f, "format", str, required=False) != FORMAT:
        raise CheckpointError(f"not a sharded numbaopt checkpoint (/ has no attribute format={FORMAT!r})")
    version = read_attribute(f, "format_version", int)
    if version != FORMAT_VERSION:
        raise CheckpointError(f"sharded format version {version}; numbaopt {VERSION} reads version {FORMAT_VERSION}")
    keys = ("numbaopt_version", "class_name", "config", "scalar_state", "parameters", "shards")
    attributes: dict[str, Any] = {key: read_attribute(f, key, str) for key in keys}
    attributes.update(format=FORMAT, format_version=version, iterations=read_attribute(f, "iterations", int))
    if read_attribute(f, "sha256", str) != _index_digest(attributes):
        raise CheckpointError("the index is corrupted: its attributes do not match / sha256")
    try:
        cls = registry.optimizer_class(attributes["class_name"])
    except ValueError as error:
        raise CheckpointError(f"attribute class_name on / names no numbaopt optimizer: {error}") from None
    if cls not in registry.rule_based():
        raise CheckpointError(f"{cls.__name__} cannot be sharded, so no sharded checkpoint holds one")
    config, scalars = _parsed(attributes, "config", dict), _parsed(attributes, "scalar_state", dict)
    if sorted(scalars) != sorted(name for name, _ in cls.scalar_state) or not all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in scalars.values()
    ):
        raise CheckpointError(f"attribute scalar_state on / is {scalars!r:.80}, but {cls.__name__} has {[n for n, _ in cls.scalar_state]}")
    iterations = attributes["iterations"]
    if not 0 <= iterations < INT64_LIMIT:
        raise CheckpointError(f"attribute iterations on / is out of range: {iterations}")
    parameters = _parameters(_parsed(attributes, "parameters", list))
    shards = _shards(_parsed(attributes, "shards", list), parameters)
    return ShardedIndex(path, attributes["numbaopt_version"], cls.__name__, config, iterations,
                        {k: float(v) for k, v in scalars.items()}, parameters, shards)


def _parsed(attributes: Mapping[str, Any], key: str, kind: type[dict[str, Any]] | type[list[Any]]) -> Any:
    with reading(f"attribute {key} on /"):
        value = json.loads(attributes[key])
    if not isinstance(value, kind):
        raise CheckpointError(f"attribute {key} on / should hold a JSON {'object' if kind is dict else 'list'}")
    check_json_numbers(key, value)
    return value


def _is_size(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _parameters(records: list[Any]) -> tuple[Parameter, ...]:
    parameters = []
    for i, record in enumerate(records):
        if not isinstance(record, dict) or sorted(record) != ["dtype", "name", "shape"]:
            raise CheckpointError(f"parameter {i} in attribute parameters on / is not a record of name, shape and dtype")
        name, shape, dtype = record["name"], record["shape"], record["dtype"]
        if not (name is None or (isinstance(name, str) and name)):
            raise CheckpointError(f"parameter {i} in attribute parameters on / has name {name!r:.40}")
        if not isinstance(shape, list) or not all(_is_size(n) for n in shape):
            raise CheckpointError(f"parameter {i} in attribute parameters on / has shape {shape!r:.40}")
        if dtype not in ("float32", "float64", "bfloat16", "float16"):
            raise CheckpointError(f"parameter {i} in attribute parameters on / has dtype {dtype!r:.40}")
        parameters.append(Parameter(name, tuple(shape), dtype))
    names = [p.name for p in parameters]
    if None in names and any(n is not None for n in names):
        raise CheckpointError("some parameters in attribute parameters on / have a name and others do not")
    if None not in names and len(set(names)) != len(names):
        raise CheckpointError("the parameter names in attribute parameters on / are not distinct")
    return tuple(parameters)


def _shards(records: list[Any], parameters: Sequence[Parameter]) -> tuple[ShardRecord, ...]:
    """The shard records, each naming a file in the index's folder, their ranges tiling every parameter."""
    if not records:
        raise CheckpointError("attribute shards on / lists no shard file")
    shards = []
    covered = [0] * len(parameters)  # how far the shards so far cover each parameter
    for k, record in enumerate(records):
        where = f"shard {k} in attribute shards on /"
        if not isinstance(record, dict) or sorted(record) != ["file", "ranges", "sha256"]:
            raise CheckpointError(f"{where} is not a record of file, ranges and sha256")
        file, ranges, digest = record["file"], record["ranges"], record["sha256"]
        if not isinstance(file, str) or not file or file in (".", "..") or os.path.basename(file) != file or "/" in file or "\\" in file:
            raise CheckpointError(f"{where} names {file!r:.60}, not a file name in the index's folder")
        if not isinstance(digest, str):
            raise CheckpointError(f"{where} has no sha256 text")
        if not isinstance(ranges, list) or len(ranges) != len(parameters):
            raise CheckpointError(f"{where} does not give one range per parameter ({len(parameters)})")
        for i, span in enumerate(ranges):
            if not (isinstance(span, list) and len(span) == 2 and all(_is_size(n) for n in span)
                    and span[0] == covered[i] and span[0] <= span[1] <= _size(parameters[i].shape)):
                raise CheckpointError(f"{where} gives parameter {i} the range {span!r:.40}; the shards must "
                                      f"cover it in order from element {covered[i]}")
            covered[i] = span[1]
        shards.append(ShardRecord(file, tuple((a, b) for a, b in ranges), digest))
    for i, parameter in enumerate(parameters):
        if covered[i] != _size(parameter.shape):
            raise CheckpointError(f"the shards cover {covered[i]} of the {_size(parameter.shape)} elements of parameter {i}")
    return tuple(shards)


def read_shard(index: ShardedIndex, k: int) -> Checkpoint:
    """Shard ``k`` of ``index``, read and checked against the index (``CheckpointError`` otherwise)."""
    record = index.shards[k]
    # Beside the index file itself: a save through a symbolic link writes the set beside its target.
    path = os.path.join(os.path.dirname(os.path.realpath(index.path)), record.file)
    if not os.path.isfile(path):
        raise CheckpointError(f"{index.path}: shard file {record.file} is missing")
    try:
        digest = shard_digest(path)
    except CheckpointError as error:
        raise CheckpointError(f"{path}: {error}") from error
    if digest != record.sha256:
        raise CheckpointError(f"{path}: this shard file is not the one the index {index.path} names "
                              f"(its digest differs): a mixed or damaged set")
    shard = read_checkpoint(path)
    ours = (shard.class_name, shard.config, shard.iterations, shard.scalars)
    if ours != (index.class_name, index.config, index.iterations, index.scalars) or shard.arrays:
        raise CheckpointError(f"{path}: its class, config, iterations or scalar state differ from the index {index.path}")
    if len(shard.parameters) != len(index.parameters):
        raise CheckpointError(f"{path}: {len(shard.parameters)} parameters, but the index has {len(index.parameters)}")
    for i, (piece, whole, (a, b)) in enumerate(zip(shard.parameters, index.parameters, record.ranges)):
        # A flat piece of the elements, or the whole parameter in its shape (state that shards by tensor).
        if piece.shape not in ((b - a,), whole.shape if b - a == _size(whole.shape) else (b - a,)) or piece.dtype != whole.dtype:
            raise CheckpointError(f"{path}: parameter {i} holds {piece.shape} {piece.dtype}, but the index "
                                  f"gives it elements {a} to {b} of a {whole.dtype} parameter")
    return shard


def slot_pieces(
    index: ShardedIndex | Checkpoint,
    wanted: Sequence[tuple[int, int]],
    stored: Sequence[Sequence[tuple[int, int]]],
    read: Callable[[int], Mapping[str, Sequence[npt.NDArray[Any]]]],
    whole: bool = False,
) -> dict[str, list[npt.NDArray[Any]]]:
    """Every slot's flat elements ``wanted[i]`` of each parameter, cut from the stored pieces:
    source ``k`` holds elements ``stored[k][i]`` of parameter ``i``, and ``read(k)`` gives its
    slots. Only the sources that hold wanted elements are read.

    With ``whole`` (state that shards by tensor), a parameter is wanted whole or not at all:
    its slots come whole, in their declared shapes, from a source that holds it whole, and a
    parameter not wanted gets the slots of an empty one."""
    cls = registry.optimizer_class(index.class_name)
    if whole:
        return _whole_slot_pieces(cls, index, wanted, stored, read)
    overlapping = {}
    for k, ranges in enumerate(stored):
        overlaps = [(i, max(a, c), min(b, d)) for i, ((a, b), (c, d)) in enumerate(zip(wanted, ranges)) if max(a, c) < min(b, d)]
        if overlaps:
            overlapping[k] = overlaps
    # Every source is read (and checked) before the result is allocated: its size in the
    # index is only a number in a file, the sources hold the data.
    sources = {k: read(k) for k in overlapping}
    declared = cls.declared_slots(index.config)
    out = {slot.name: [np.empty(b - a, slot.dtype_of(p.dtype)) for p, (a, b) in zip(index.parameters, wanted)]
           for slot in declared}
    for k, overlaps in overlapping.items():
        for kind in out:
            for i, start, stop in overlaps:
                source = np.asarray(sources[k][kind][i]).reshape(-1)
                out[kind][i][start - wanted[i][0]: stop - wanted[i][0]] = source[start - stored[k][i][0]: stop - stored[k][i][0]]
    return out


def _whole_slot_pieces(
    cls: type[Any],
    index: ShardedIndex | Checkpoint,
    wanted: Sequence[tuple[int, int]],
    stored: Sequence[Sequence[tuple[int, int]]],
    read: Callable[[int], Mapping[str, Sequence[npt.NDArray[Any]]]],
) -> dict[str, list[npt.NDArray[Any]]]:
    sizes = [_size(p.shape) for p in index.parameters]
    sources: dict[int, list[int]] = {}
    for i, (a, b) in enumerate(wanted):
        if b - a == sizes[i]:
            k = next((k for k, ranges in enumerate(stored) if ranges[i][1] - ranges[i][0] == sizes[i]), None)
            if k is None:
                raise CheckpointError(f"no shard holds parameter {i} whole")
            sources.setdefault(k, []).append(i)
    read_sources = {k: read(k) for k in sources}
    declared = cls.declared_slots(index.config)
    out: dict[str, list[npt.NDArray[Any]]] = {
        slot.name: [np.zeros(slot.shape_of((0,)), slot.dtype_of(p.dtype)) for p in index.parameters] for slot in declared
    }
    for k, members in sources.items():
        for slot in declared:
            for i in members:
                out[slot.name][i] = np.asarray(read_sources[k][slot.name][i])
    return out


def _size(shape: Sequence[int]) -> int:
    return math.prod(shape)  # Python ints: no int64 wraparound
