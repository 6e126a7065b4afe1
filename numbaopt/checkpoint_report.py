"""What a checkpoint holds, after the same checks as a load: ``numbaopt inspect PATH``.

Prints the class, config, iterations and scalar state, then one row per slot of every
parameter (parameter, slot, shape, dtype, min, max, mean), then one row per array the
optimizer keeps beside its slots (``checkpoint_arrays``, e.g. ``TFOptimizer``'s). A file that ``load_optimizer``
would refuse makes it print the ``CheckpointError`` message and exit with status 1.
It reads the file only: no optimizer is built and no kernel is compiled.

A Keras model file (tf-keras ``.h5``, Keras 3 ``.keras``) shows the optimizer state that
``numbaopt.import_keras_optimizer`` would load from it (``keras_report``), or why it would not.
"""
from __future__ import annotations

import json
import os
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt import keras_files
from numbaopt.checkpoint import Checkpoint, CheckpointError
from numbaopt.keras3_files import Keras3File
from numbaopt.sharded_checkpoint import read_any

def main(path: str | os.PathLike[str]) -> int:
    """Print the report for the checkpoint or Keras model file at ``path``; returns the exit
    status (1 for a bad file, or a Keras optimizer numbaopt would not import)."""
    try:
        if keras_files.is_keras_file(path):
            print(keras_report(keras_files.read_keras_file(path)))
            return 0
        checkpoint = read_any(path)  # an ordinary checkpoint, or a sharded one read whole
    except (CheckpointError, ValueError) as error:
        print(f"numbaopt inspect: {error}", file=sys.stderr)
        return 1
    print(report(checkpoint))
    return 0


def keras_report(found: keras_files.KerasOptimizerFile | Keras3File) -> str:
    """The text ``numbaopt inspect`` prints for a Keras model file's optimizer."""
    lines = [
        f"keras file  {keras_files.describe(found)}",
        f"class       {found.keras_class} (numbaopt {found.optimizer_class.__name__})",
        f"config      {json.dumps(found.arguments, sort_keys=True)}",
        f"iterations  {0 if found.iterations is None else int(found.iterations.value)}",
    ]
    for name, slot in found.scalars.items():
        lines.append(f"{name:<11} {float(slot.value)!r}")
    lines.append(f"parameters  {len(found.names)}")
    rows: list[tuple[str, ...]] = [("parameter", "slot", "shape", "dtype", "min", "max", "mean")]
    for i, name in enumerate(found.names):
        weight = found.weights[name].value
        rows.append((f"{i} {name}", "(weight)", str(weight.shape), weight.dtype.name, *_statistics(weight)))
        for kind, slots in found.slots.items():
            rows.append((f"{i} {name}", kind, str(weight.shape), weight.dtype.name, *_statistics(slots[i].value)))
    return "\n".join(lines + _table(rows))


def report(checkpoint: Checkpoint) -> str:
    """The text ``numbaopt inspect`` prints for a ``Checkpoint``."""
    lines = [
        f"class       {checkpoint.class_name}",
        f"config      {json.dumps(checkpoint.config, sort_keys=True)}",
        f"iterations  {checkpoint.iterations}",
    ]
    for name, value in checkpoint.scalars.items():
        lines.append(f"{name:<11} {value!r}")
    lines.append(f"format      version {checkpoint.format_version}, written by numbaopt {checkpoint.numbaopt_version}")
    lines.append(f"parameters  {len(checkpoint.parameters)}")
    if not checkpoint.parameters and checkpoint.arrays:
        lines.append(f"(no slots: {checkpoint.class_name} keeps its state in the arrays below)")
    elif not checkpoint.parameters:
        lines.append("(no slots: the optimizer had taken no step)")
    else:
        rows: list[tuple[str, ...]] = [("parameter", "slot", "shape", "dtype", "min", "max", "mean")]
        for i, parameter in enumerate(checkpoint.parameters):
            label = str(i) if parameter.name is None else f"{i} {parameter.name}"
            for kind, arrays in checkpoint.slots.items():
                slot = arrays[i]  # shaped and typed as its declaration gives for the parameter
                rows.append((label, kind, str(slot.shape), slot.dtype.name, *_statistics(slot)))
        lines += _table(rows)
    if checkpoint.arrays:
        rows = [("array", "shape", "dtype", "min", "max", "mean")]
        for name, array in checkpoint.arrays.items():
            rows.append((name, str(array.shape), array.dtype.name, *_statistics(array)))
        lines += _table(rows)
    return "\n".join(lines)


def _table(rows: Sequence[Sequence[str]]) -> list[str]:
    """A blank line, then ``rows`` as left-aligned columns."""
    widths = [max(len(row[c]) for row in rows) for c in range(len(rows[0]))]
    return [""] + ["  ".join(cell.ljust(w) for cell, w in zip(row, widths)).rstrip() for row in rows]


def _statistics(array: npt.NDArray[Any]) -> tuple[str, str, str]:
    """min, max and mean as text; the mean is summed in float64, an empty slot shows dashes."""
    if array.size == 0:
        return "-", "-", "-"
    return f"{array.min():.6g}", f"{array.max():.6g}", f"{np.mean(array, dtype=np.float64):.6g}"
