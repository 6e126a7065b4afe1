"""8-bit block-wise quantization of optimizer state (``slot_dtype="q8"``).

As bitsandbytes' 8-bit optimizers (Dettmers et al., *8-bit Optimizers via Block-wise
Quantization*, 2022), each slot of each parameter is cut into blocks of ``BLOCK``
elements; a block keeps one float32 scale, its largest magnitude (absmax), and one byte
per element, the code of ``x / absmax`` in a fixed 256-value map with a dynamic exponent.
A slot that is never negative (Adam's second moment; ``Slot(..., sign="nonnegative")``)
uses the unsigned map, any other slot the signed one.

The maps are 8-bit floats below 1 (``values``): a code is, from the top, the sign bit
(signed map only), then the exponent and ``MANTISSA`` = 3 mantissa bits. The signed map
keeps 15 binades below 1 (down to 2**-15 of absmax), the unsigned one 31 (2**-31: a
second moment is a squared gradient, twice the range); code 0 is zero, below that the value
flushes to zero, and the top codes above 1 hold NaN. Within a binade a value keeps a
relative error of at most 1/16. Unlike bitsandbytes' tree of decades, such a code is
found and read by integer arithmetic on the float32 bits, with no table: the CPU loops
vectorise, and a step takes 1.15-1.2 times the float32 step's time, where a table search took five.

A nonnegative slot rounds stochastically: up or down to a neighbouring code with the
probabilities that make the expected value ``x``, from random bits of the step's seed and the
element (``random_for``: the same on any device and thread count; a resumed run is the
uninterrupted one). Rounding to nearest freezes such a slow average: Adam's second moment
moves by 0.1% a step (beta_2 = 0.999), far less than half a code's width, so it stayed at its
value of the first hundred steps while Adam's bias correction kept growing, and the steps grew
with it: 8-13% lower loss than float32 on the digits MLP (docs/benchmarks.md), within 1% now.
A signed slot (a momentum, whose steps are large against a code's width) rounds to nearest:
random rounding there only added noise. Values stored from the host (``quantize``:
``set_weights``, loading a float32 state) round to nearest, which needs no seed. bfloat16
slots round by the same random bits (``bfloat16_slot``), for the same reason.

Blocks of 256 elements, as torchao's and bitsandbytes' (0.50; its paper used 2048): an
outlier spoils the precision of its block only, the scales cost 4 / 256 bytes per
element (2.03 bytes per parameter for Adam's two slots), and a block is one CUDA thread
block, whose threads share the absmax.

A quantized slot's host form (``state()``, checkpoints) is an array of ``HOST_DTYPE``
records, one per block: the block's codes and its absmax. ``get_weights`` and Keras
files see the dequantized float32 values. Checkpoints of format 3 held codes of
bitsandbytes' map (``legacy_values``); ``from_legacy`` converts them.
"""
from __future__ import annotations

import functools
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.halves import random_bits, to_bfloat16, to_bfloat16_stochastic

#: Elements per block: one float32 scale each.
BLOCK = 256

#: The host form of a quantized slot: per block, its codes and its scale.
HOST_DTYPE = np.dtype([("codes", np.uint8, (BLOCK,)), ("absmax", np.float32)])

#: The signs a slot may declare: ``signed`` (any value) or ``nonnegative``; a slot's map
#: is its sign's index here (``map_index``), the ``row`` of ``encode`` and ``decode``.
SIGNS = ("signed", "nonnegative")

#: The map whose codes round by random bits (``rounding``): the unsigned one.
RANDOM_ROW = SIGNS.index("nonnegative")

#: Mantissa bits of a code: the float32 bits are rounded at bit ``23 - MANTISSA``.
MANTISSA = 3

# The arithmetic is on int32, every intermediate cast back to it (``np.int32(...)``): Numba
# widens integer arithmetic to 64 bits, and the casts let LLVM narrow it again to 32-bit
# lanes, twice as many a vector. Per map (signed, nonnegative): ``_BASE`` is the float32 bits, shifted by
# ``_SHIFT``, of code 0 (code ``q`` > 0 has bits ``(q + base) << _SHIFT``; code 1 is 2**-15
# or 2**-31); ``_ONE`` is the code of 1.0, the largest value a block holds.
_SHIFT = np.int32(23 - MANTISSA)
_BASE_SIGNED, _BASE_NONNEGATIVE = np.int32(((127 - 15) << MANTISSA) - 1), np.int32(((127 - 31) << MANTISSA) - 1)
_ONE_SIGNED, _ONE_NONNEGATIVE = np.int32(15 << MANTISSA | 1), np.int32(31 << MANTISSA | 1)
_NAN_SIGNED, _NAN_NONNEGATIVE = np.int32(0x7F), np.int32(0xFF)
_ABS, _INF, _QUIET_NAN = np.int32(0x7FFFFFFF), np.int32(0x7F800000), np.int32(0x7FC00000)
_SIGN_BIT = np.int32(-0x80000000)

#: The smallest absmax a block keeps: below it (a subnormal float32) ``1 / absmax`` would
#: overflow, so such a block is stored as zeros, where its values would flush to anyway.
SMALLEST_ABSMAX = np.float32(2.0**-126)

#: The random bits that round to nearest (ties away from zero): half a code's width.
NEAREST = np.uint32(0x80000000)


def map_index(sign: str) -> int:
    """The map (``row`` of ``encode`` and ``decode``) of a slot of ``sign``."""
    return SIGNS.index(sign)


def encode(y: float, row: Any, random: Any) -> Any:
    """The code (uint8) of ``y``, a slot value over its block's absmax (in [-1, 1]), in map
    ``row``: its float32 bits below the mantissa's plus the top bits of ``random`` (uint32),
    cut; ``NEAREST`` rounds to nearest. Beyond 1 stays 1; NaN and infinity get the NaN code;
    a negative value in the unsigned map, 0."""
    bits = np.float32(y).view(np.int32)
    magnitude = np.int32(bits & _ABS)
    signed = row == 0
    base = _BASE_SIGNED if signed else _BASE_NONNEGATIVE
    one = _ONE_SIGNED if signed else _ONE_NONNEGATIVE
    noise = np.int32(np.uint32(random) >> np.uint32(32 - 23 + MANTISSA))
    rounded = np.int32(np.int32(min(magnitude, _INF) + noise) >> _SHIFT)
    code = np.int32(min(max(np.int32(rounded - base), np.int32(0)), one))
    if magnitude >= _INF:
        code = _NAN_SIGNED if signed else _NAN_NONNEGATIVE
    elif signed:
        code = np.int32(code | np.int32(np.int32(bits >> np.int32(24)) & np.int32(0x80)))
    elif bits < 0:
        code = np.int32(0)
    return np.uint8(code)


def decode(code: Any, row: Any) -> Any:
    """The float32 value of ``code`` in map ``row`` (in [-1, 1], or NaN)."""
    c = np.int32(code)
    signed = row == 0
    q = np.int32(c & np.int32(0x7F)) if signed else c
    base = _BASE_SIGNED if signed else _BASE_NONNEGATIVE
    one = _ONE_SIGNED if signed else _ONE_NONNEGATIVE
    bits = np.int32(np.int32(q + base) << _SHIFT) if q > 0 else np.int32(0)
    if q > one:
        bits = _QUIET_NAN
    elif signed and c > np.int32(0x7F):
        bits = np.int32(bits | _SIGN_BIT)
    return np.int32(bits).view(np.float32)


def random_stream(seed: Any, slot: Any, index: Any) -> Any:
    """The stream (uint32) of the random words of slot kind ``slot`` under the step's
    ``seed``, for the elements whose ``index >> 32`` is this one's (every element of a
    block): ``halves.random_bits`` of another stream than the parameters'."""
    return random_bits(seed + np.uint64(slot + 1) * np.uint64(0xD1B54A32D192ED03), index >> np.uint64(32))


def random_word(stream: Any, pair: Any) -> Any:
    """32 random bits (uint32) for the two elements of ``stream`` whose index has the low 32
    bits ``2 * pair`` and ``2 * pair + 1``: mixed with the stream by a 32-bit hash (Wellons'
    "lowbias32"), all 32-bit arithmetic, which the CPU loops run many elements a vector (a
    64-bit hash, 4). One hash for two elements: the hashes were a tenth of an 8-bit step."""
    x = np.uint32(np.uint32(pair) ^ stream)
    x = np.uint32(x ^ (x >> np.uint32(16)))
    x = np.uint32(x * np.uint32(0x7FEB352D))
    x = np.uint32(x ^ (x >> np.uint32(15)))
    x = np.uint32(x * np.uint32(0x846CA68B))
    return np.uint32(x ^ (x >> np.uint32(16)))


def random_half(word: Any, low: Any) -> Any:
    """The random bits (uint32, the low 16 zero) of the element whose index has the low 32
    bits ``low`` in its pair's ``word``: the low half for an even element, the high half for
    an odd one. Sixteen bits are plenty: a code's width over 65536 is 2e-6 of a value."""
    odd = np.uint32(np.uint32(low) & np.uint32(1))
    return np.uint32(np.uint32(word << np.uint32(16 - 16 * odd)) & np.uint32(0xFFFF0000))


def rounding(row: Any, random: Any) -> Any:
    """The bits ``encode`` rounds a value of map ``row`` by: the slot's ``random`` bits for
    the unsigned map (slow averages of squares, which rounding to nearest freezes),
    ``NEAREST`` for the signed one (a momentum's steps are large against its code width:
    its random rounding only added noise, 0.7% on the digits MLP's loss)."""
    return random if row == RANDOM_ROW else NEAREST


def random_for(seed: Any, slot: Any, index: Any) -> Any:
    """The random bits of element ``index`` of slot kind ``slot`` (``rounding``)."""
    low = np.uint32(index & np.uint64(0xFFFFFFFF))
    return random_half(random_word(random_stream(seed, slot, index), np.uint32(low >> np.uint32(1))), low)


#: What the kernels compile (with the ``halves`` functions they call).
ELEMENT_FUNCTIONS = (encode, decode, rounding, random_stream, random_word, random_half)


def native_slot(x: float, row: Any, random: Any) -> Any:
    """``x`` stored in a float32 or float64 slot: as it is."""
    return x


def bfloat16_slot(x: float, row: Any, random: Any) -> Any:
    """``x`` stored in a bfloat16 slot (``slot_dtype="bfloat16"``) of map ``row``'s sign: a
    nonnegative one rounds stochastically by the top 16 bits of its ``random`` bits
    (``random_for``), as an 8-bit one does, a signed one to nearest even. To nearest, the
    second moment froze as 8-bit codes did: a bfloat16 value is 0.4-0.8% wide, Adam's second
    moment moves 0.1% a step, and the digits MLP ended 4.9% above float32's loss (16 seeds)."""
    return to_bfloat16_stochastic(x, random >> np.uint32(16)) if row == RANDOM_ROW else to_bfloat16(x)


#: How the kernels store an element of a slot of each 16- or 32-bit storage, from the
#: slot's map (its sign) and its random bits (``random_for``); 8-bit slots are ``encode``'s.
SLOT_WRITERS = {"native": native_slot, "bfloat16": bfloat16_slot}


@functools.cache
def values(sign: str) -> npt.NDArray[np.float32]:
    """The 256 values of the map of ``sign``, by code (read-only; made on first use)."""
    row = map_index(sign)
    out = np.array([decode(np.uint8(code), row) for code in range(256)], np.float32)
    out.flags.writeable = False
    return out


def blocks(size: int) -> int:
    """The number of blocks of a slot of ``size`` elements."""
    return -(-int(size) // BLOCK)


def codes_of(normalised: npt.NDArray[np.float32], sign: str, random: npt.NDArray[np.uint32] | None = None) -> npt.NDArray[np.uint8]:
    """``encode`` over an array of values over their absmax: the same codes, bitwise,
    by NumPy; rounded by ``random`` (uint32 per element), or to nearest."""
    row = map_index(sign)
    signed = row == 0
    bits = np.asarray(normalised, np.float32).view(np.int32)
    magnitude = bits & _ABS
    noise = np.broadcast_to(NEAREST if random is None else np.asarray(random, np.uint32), bits.shape)
    rounded = (np.minimum(magnitude, _INF) + (noise >> np.uint32(32 - 23 + MANTISSA)).astype(np.int32)) >> _SHIFT
    base = _BASE_SIGNED if signed else _BASE_NONNEGATIVE
    code = np.clip(rounded - base, 0, _ONE_SIGNED if signed else _ONE_NONNEGATIVE).astype(np.int32)
    if signed:
        code |= (bits >> 24) & 0x80
    else:
        code[bits < 0] = 0
    code[magnitude >= _INF] = _NAN_SIGNED if signed else _NAN_NONNEGATIVE
    out: npt.NDArray[np.uint8] = code.astype(np.uint8)
    return out


def _codes_over(rows: npt.NDArray[np.float32], absmax: npt.NDArray[np.float32], sign: str) -> npt.NDArray[np.uint8]:
    """The codes, rounded to nearest, of ``rows`` (blocks of float32 values) over their
    blocks' ``absmax`` (0: the block's codes are of zeros, NaN of NaN)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        inverse = np.where(absmax > 0, np.float32(1) / absmax, np.float32(0)).astype(np.float32)
        return codes_of(rows * inverse[:, None], sign)


def quantize(values_: npt.ArrayLike, sign: str) -> npt.NDArray[Any]:
    """``values_`` (any shape; read as float32) in host form, rounded to nearest:
    ``blocks(size)`` records of ``HOST_DTYPE``. The padding past the last element holds
    code 0, as new storage does. NaN and infinity are passed over by the absmax (and stored
    as NaN), and a subnormal absmax stores its block as zeros, as the kernels do."""
    flat = np.asarray(values_, np.float32).reshape(-1)
    padded = np.zeros(blocks(flat.size) * BLOCK, np.float32)
    padded[: flat.size] = flat
    rows = padded.reshape(-1, BLOCK)
    magnitudes = np.abs(rows)
    absmax = np.max(np.where(np.isfinite(magnitudes), magnitudes, 0), axis=1, initial=np.float32(0)).astype(np.float32)
    absmax[absmax < SMALLEST_ABSMAX] = 0
    codes = _codes_over(rows, absmax, sign)
    codes.reshape(-1)[flat.size:] = 0
    out = np.zeros(rows.shape[0], HOST_DTYPE)
    out["codes"], out["absmax"] = codes, absmax
    return out


def dequantize(host: npt.NDArray[Any], shape: tuple[int, ...], sign: str) -> npt.NDArray[np.float32]:
    """The float32 values of a slot of ``shape`` held in host form ``host``."""
    size = int(np.prod(shape, dtype=np.int64))
    codes = host["codes"].reshape(-1)[:size]
    scales = np.repeat(host["absmax"], BLOCK)[:size]
    with np.errstate(invalid="ignore"):
        out: npt.NDArray[np.float32] = (values(sign)[codes] * scales).reshape(shape)
    return out


def legacy_values(sign: str) -> npt.NDArray[np.float32]:
    """The 256 values, by code, of the map checkpoints of format 3 used: bitsandbytes'
    ``create_dynamic_map(signed, 7, 8)``, sorted, as float32 (computed in float64)."""
    signed = sign == "signed"
    mapped = [0.0, 1.0]
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        boundaries = np.linspace(0.1, 1, items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        mapped += list(10.0 ** (i - 6) * means)
        if signed:
            mapped += list(-(10.0 ** (i - 6)) * means)
    return np.sort(np.array(mapped, np.float32))


def from_legacy(host: npt.NDArray[Any], sign: str) -> npt.NDArray[Any]:
    """A slot in host form with codes of ``legacy_values`` (format 3), in today's codes:
    its values decoded, then rounded to nearest, block by block (each keeps its absmax)."""
    decoded = legacy_values(sign)[host["codes"]] * host["absmax"][:, None]
    out = np.array(host, HOST_DTYPE)
    out["codes"] = _codes_over(decoded.astype(np.float32), host["absmax"], sign)
    return out
