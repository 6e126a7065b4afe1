"""What every reader of Keras model files shares: checked reading of HDF5, zip and JSON.

Each helper turns what h5py, zipfile, JSON or NumPy raise on a damaged file into a
``CheckpointError`` naming the place, and reads only data stored plainly in the file
(no external links, no filters): the format readers (``keras_files``, ``keras3_files``)
build on them.
"""
from __future__ import annotations

import contextlib
import json
import math
import zipfile
from collections.abc import Iterator
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from numbaopt import checkpoint
from numbaopt.checkpoint import CheckpointError


#: The largest JSON text read from a file's attribute or config.json; a model's config is kilobytes.
LARGEST_JSON = 16 * 2**20


#: Deflate cannot compress more than about 1032:1, so a zip member declaring more is not a real one.
LARGEST_ZIP_RATIO = 1100


class Stored(NamedTuple):
    """A value read from the file, and the path of its dataset (where an export writes it)."""

    path: str  # the dataset's path in the HDF5 file (in model.weights.h5 for a .keras file)
    value: npt.NDArray[Any]


class Refused(ValueError):
    """A file's optimizer that numbaopt does not reproduce: passes through ``reading`` as the ValueError it is."""


@contextlib.contextmanager
def reading(where: str) -> Iterator[None]:
    """Turn whatever h5py, zipfile, JSON or NumPy raise on a damaged file into a CheckpointError naming ``where``."""
    try:
        yield
    except (CheckpointError, Refused):
        raise
    except (OSError, KeyError, IndexError, ValueError, TypeError, RuntimeError, UnicodeError, EOFError,
            zipfile.BadZipFile, zipfile.LargeZipFile) as error:
        raise CheckpointError(f"cannot read {where}: {error}") from error


def json_attribute(f: Any, key: str) -> dict[str, Any]:
    where = f"attribute {key}"
    with reading(where):
        value = f.attrs[key]
        if isinstance(value, np.ndarray) and value.shape == ():
            value = value[()]
        if isinstance(value, bytes):
            value = value.decode("utf8")
        if not isinstance(value, str):
            raise CheckpointError(f"{where} is not a string")
        return json_text(value, where)


def json_text(text: str | bytes, where: str) -> dict[str, Any]:
    if len(text) > LARGEST_JSON:
        raise CheckpointError(f"{where} is {len(text)} bytes long; a Keras config is far smaller")
    with reading(where):
        value = json.loads(text)
    if not isinstance(value, dict):
        raise CheckpointError(f"{where} is not a JSON object")
    return value


def class_and_config(description: object, where: str) -> tuple[str, dict[str, Any]]:
    if not isinstance(description, dict):
        raise CheckpointError(f"{where} is missing or not an object: the model was saved without an optimizer")
    class_name, config = description.get("class_name"), description.get("config")
    if not isinstance(class_name, str) or not isinstance(config, dict):
        raise CheckpointError(f"{where} has no class_name string and config object")
    check_finite(config, where)
    return class_name, config


def check_finite(value: object, where: str) -> None:
    """Every number of a config is finite: NaN or an infinity there is damage, not a setting.
    (A loop, not recursion: a config nested deeper than Python's recursion limit is still only data.)"""
    pending: list[tuple[object, str]] = [(value, where)]
    while pending:
        item, place = pending.pop()
        if isinstance(item, float) and not math.isfinite(item):
            raise CheckpointError(f"{place} holds {item!r}")
        if isinstance(item, dict):
            pending += [(v, f"{place}, key {k!r}") for k, v in item.items()]
        elif isinstance(item, list):
            pending += [(v, place) for v in item]


def group(parent: Any, key: str) -> Any:
    """A subgroup stored in this file, or None when absent."""
    with reading(key):
        if key not in parent:
            return None
    return checkpoint.stored_member(parent, key, key, group=True)


def names_attribute(group: Any, key: str, where: str) -> list[str]:
    """A list-of-names attribute as tf-keras writes it, split into ``key0``, ``key1``... when long."""
    with reading(f"attribute {key} on {where}"):
        if key in group.attrs:
            chunks = [group.attrs[key]]
        else:
            chunks = []
            while f"{key}{len(chunks)}" in group.attrs:
                chunks.append(group.attrs[f"{key}{len(chunks)}"])
        names: list[str] = []
        for chunk in chunks:
            values = np.asarray(chunk)
            if values.ndim != 1 and values.size:
                raise CheckpointError(f"attribute {key} on {where} is not a list of names")
            for value in values.ravel().tolist():
                if isinstance(value, bytes):
                    value = value.decode("utf8")
                if not isinstance(value, str):
                    raise CheckpointError(f"attribute {key} on {where} holds {value!r:.40}, not a name")
                names.append(value)
    if len(set(names)) != len(names):  # each name would be read again: a small file could fill the memory
        raise CheckpointError(f"attribute {key} on {where} names an entry twice")
    return names


def dataset(parent: Any, key: str, where: str) -> npt.NDArray[Any]:
    """The value of a dataset stored plainly in this file."""
    dataset = checkpoint.stored_member(parent, key, where, group=False)
    with reading(where):
        if dataset.dtype.kind not in "fiu" or dataset.dtype.itemsize > 8:
            raise CheckpointError(f"{where} has dtype {dataset.dtype}, not a number")
    checkpoint.check_stored_plainly(dataset, where)  # contiguous, unfiltered: no more bytes than the file holds
    with reading(where):
        return np.asarray(dataset[()])


def zip_member(archive: zipfile.ZipFile, name: str, limit: int | None = None) -> bytes:
    """The member ``name``, decompressed; a CheckpointError as soon as it is larger than
    ``limit`` bytes (as its header declares it, or as it decompresses: a header can lie)."""
    try:
        info = archive.getinfo(name)
    except KeyError:
        raise CheckpointError(f"the zip has no {name}: not a Keras 3 .keras file") from None
    if info.file_size > LARGEST_ZIP_RATIO * info.compress_size + 2**20:
        raise CheckpointError(f"{name} claims {info.file_size} bytes from {info.compress_size}: not a real zip member")
    if limit is None:
        return archive.read(info)
    too_large = CheckpointError(f"{name} is larger than {limit} bytes: not a model's config")
    if info.file_size > limit:
        raise too_large
    with archive.open(info) as member:
        data = member.read(limit + 1)
    if len(data) > limit:
        raise too_large
    return data


#: tf-keras splits a list attribute into numbered parts above this many bytes (HDF5's object header limit).
ATTRIBUTE_LIMIT = 64512


def write_names(group: Any, key: str, names: list[str]) -> None:
    """A list of names as tf-keras writes it (``save_attributes_to_hdf5_group``): UTF-8 strings
    in one attribute, or in ``key0``, ``key1``... when they would pass the object header limit."""
    size = sum(len(name.encode("utf8")) for name in names)
    parts = 1
    while size / parts > ATTRIBUTE_LIMIT:
        parts += 1
    if parts == 1:
        group.attrs[key] = names
    else:
        for i, part in enumerate(np.array_split(np.asarray(names, dtype=object), parts)):
            group.attrs[f"{key}{i}"] = part.tolist()


def text(value: Any) -> str:
    if isinstance(value, np.ndarray):
        value = value[()]
    return value.decode("utf8") if isinstance(value, bytes) else str(value)
