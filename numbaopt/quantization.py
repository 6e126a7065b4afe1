"""8-bit block-wise quantization of optimizer state (``slot_dtype="q8"``).

The scheme is bitsandbytes' (Dettmers et al., *8-bit Optimizers via Block-wise
Quantization*, 2022): each slot of each parameter is cut into blocks of ``BLOCK``
elements; a block keeps one float32 scale, its largest magnitude (absmax), and one byte
per element, the index of the value of a fixed 256-entry map nearest to ``x / absmax``.
A slot that is never negative (Adam's second moment; ``Slot(..., sign="nonnegative")``)
uses the unsigned map, whose 256 values all lie in [0, 1]; any other slot the signed map.

The maps are bitsandbytes' ``create_dynamic_map`` (8 bits, 7 exponent bits): a dynamic
exponent, one decade per leading zero, then a linear fraction, so magnitudes from 1e-7 to
1 keep a relative error of a few percent. Blocks of 256 elements, as torchao's low-bit
optimizers (bitsandbytes uses 2048): an outlier spoils the precision of its block only,
the scales cost 4 / 256 bytes per element (2.03 bytes per parameter for Adam's two
slots), and a block is one CUDA thread block, whose threads share the absmax.

Rounding is to the nearest map value, ties to the lower code: the code is the number of
thresholds (the float32 midpoints of neighbouring map values) below ``x``. The kernels
find it with one lookup in a table (indexed by the top 16 bits of ``x``, a bfloat16
bucket, which holds at most one threshold) and one comparison; the host functions here
and the tests' reference search the thresholds: the same codes, bitwise.

A quantized slot's host form (``state()``, checkpoints) is an array of ``HOST_DTYPE``
records, one per block: the block's codes and its absmax. ``get_weights`` and Keras
files see the dequantized float32 values.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

#: Elements per block: one float32 scale each.
BLOCK = 256

#: The host form of a quantized slot: per block, its codes and its scale.
HOST_DTYPE = np.dtype([("codes", np.uint8, (BLOCK,)), ("absmax", np.float32)])

#: The signs a slot may declare: ``signed`` (any value) or ``nonnegative``.
SIGNS = ("signed", "nonnegative")


def dynamic_map(signed: bool) -> npt.NDArray[np.float32]:
    """The 256 values of bitsandbytes' ``create_dynamic_map(signed, 7, 8)``, sorted, as
    float32 (computed in float64, rounded once)."""
    values = [0.0, 1.0]
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        boundaries = np.linspace(0.1, 1, items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        values += list(10.0 ** (i - 6) * means)
        if signed:
            values += list(-(10.0 ** (i - 6)) * means)
    mapped = np.sort(np.array(values, np.float32))
    assert mapped.size == 256 and np.unique(mapped).size == 256
    return mapped


def _thresholds(values: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """The 255 float32 midpoints of neighbouring ``values``, then +inf (the kernels may read one past)."""
    middle = (values[:-1] + values[1:]) / np.float32(2)
    return np.append(middle, np.float32(np.inf)).astype(np.float32)


def _table(thresholds: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Per top-16-bit pattern of a float32 ``x``: the number of thresholds below the
    smallest float32 of that bucket. A bucket holds at most one threshold (checked), so
    ``code = table[bucket] + (x > thresholds[table[bucket]])``."""
    buckets = np.arange(1 << 16, dtype=np.uint32) << np.uint32(16)
    negative = buckets >= np.uint32(0x80000000)
    lowest = np.where(negative, buckets | np.uint32(0xFFFF), buckets).view(np.float32)
    highest = np.where(negative, buckets, buckets | np.uint32(0xFFFF)).view(np.float32)
    finite = thresholds[:-1]
    with np.errstate(invalid="ignore"):
        below_lowest = np.searchsorted(finite, lowest, side="left")
        below_highest = np.searchsorted(finite, highest, side="left")
    ordered = ~np.isnan(lowest)
    assert np.all(below_highest[ordered] - below_lowest[ordered] <= 1)
    return np.where(ordered, below_lowest, 0).astype(np.uint8)


@functools.cache
def scheme() -> tuple[npt.NDArray[np.float32], npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """The maps (row 0 signed, row 1 nonnegative, as ``map_index``), their thresholds
    (each row padded with +inf to 256 entries) and the kernels' lookup tables (``_table``).
    Made on first use: ``import numbaopt.optimizers`` stays fast."""
    maps = np.stack([dynamic_map(True), dynamic_map(False)])
    thresholds = np.stack([_thresholds(row) for row in maps])
    tables = np.stack([_table(row) for row in thresholds])
    for array in (maps, thresholds, tables):
        array.flags.writeable = False
    return maps, thresholds, tables


def map_index(sign: str) -> int:
    """The row of the maps of ``scheme`` for a slot of ``sign``."""
    return SIGNS.index(sign)


def blocks(size: int) -> int:
    """The number of blocks of a slot of ``size`` elements."""
    return -(-int(size) // BLOCK)


def quantize(values: npt.ArrayLike, sign: str) -> npt.NDArray[Any]:
    """``values`` (any shape; read as float32) in host form: ``blocks(size)`` records of
    ``HOST_DTYPE``. The padding past the last element holds code 0, as new storage does."""
    flat = np.asarray(values, np.float32).reshape(-1)
    k = map_index(sign)
    padded = np.zeros(blocks(flat.size) * BLOCK, np.float32)
    padded[: flat.size] = flat
    rows = padded.reshape(-1, BLOCK)
    absmax = np.max(np.abs(rows), axis=1, initial=np.float32(0)).astype(np.float32)
    with np.errstate(divide="ignore"):
        inverse = np.where(absmax > 0, np.float32(1) / absmax, np.float32(0)).astype(np.float32)
    normalised = rows * inverse[:, None]
    codes = np.searchsorted(scheme()[1][k][:-1], normalised, side="left").astype(np.uint8)
    codes.reshape(-1)[flat.size:] = 0
    out = np.zeros(rows.shape[0], HOST_DTYPE)
    out["codes"], out["absmax"] = codes, absmax
    return out


def dequantize(host: npt.NDArray[Any], shape: tuple[int, ...], sign: str) -> npt.NDArray[np.float32]:
    """The float32 values of a slot of ``shape`` held in host form ``host``."""
    size = int(np.prod(shape, dtype=np.int64))
    codes = host["codes"].reshape(-1)[:size]
    scales = np.repeat(host["absmax"], BLOCK)[:size]
    values: npt.NDArray[np.float32] = (scheme()[0][map_index(sign)][codes] * scales).reshape(shape)
    return values
