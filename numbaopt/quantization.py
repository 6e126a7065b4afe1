"""8-bit block-wise quantization of optimizer state (``slot_dtype="q8"``).

As bitsandbytes' 8-bit optimizers (Dettmers et al., *8-bit Optimizers via Block-wise
Quantization*, 2022), each slot of each parameter is cut into blocks of ``BLOCK``
elements; a block keeps one float32 scale, its largest magnitude (absmax), and one byte
per element, the code of ``x / absmax`` in a fixed 256-value map with a dynamic exponent.
A slot that is never negative (Adam's second moment; ``Slot(..., sign="nonnegative")``)
uses the unsigned map, any other slot the signed one.

The maps are 8-bit floats of 15 binades below 1 (``values``). A signed code is the sign
bit, 4 exponent and 3 mantissa bits of the value (down to 2**-15 of absmax); an unsigned
code is 4 exponent and 4 mantissa bits of the value's square root over the absmax's
(``staged``, ``inverse_scale``: down to 2**-30 of absmax, as a second moment is a squared
gradient, twice the range). Code 0 is zero, below that the value flushes to zero, and the
top codes above 1 hold NaN. Within a binade a value keeps a relative error of at most 1/16.
Unlike bitsandbytes' tree of decades, such a code is found and read by integer arithmetic
on the float32 bits, with no table: the CPU loops vectorise, and a step takes 1.1-1.2 times
the float32 step's time, where a table search took five. The root costs nothing in Adam's
kernels: their rule has just computed it.

A nonnegative slot rounds stochastically: up or down to a neighbouring code with the
probabilities that make the expected root ``sqrt(x)``, from random bits of the step's seed
and the element (``random_for``: the same on any device and thread count; a resumed run is
the uninterrupted one). Rounding to nearest freezes such a slow average: Adam's second moment
moves by 0.1% a step (beta_2 = 0.999), far less than half a code's width, so it stayed at its
value of the first hundred steps while Adam's bias correction kept growing, and the steps grew
with it: 8-13% lower loss than float32 on the digits MLP (docs/benchmarks.md). Why the root:
random rounding spreads the stored value around float32's (some 22%), and Adam divides by
its root, a convex function, so a value unbiased itself made the steps 1.9% larger on
average and the loss 1.05% lower than float32's; unbiased in the root, the value sits a
little higher, which offsets most of it: steps 0.6% larger, loss 0.3% lower
(``benchmarks/rounding_noise.py``, ``benchmarks/memory.py``).
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
bitsandbytes' map, those of format 4 unsigned codes of the value itself (5 exponent and
3 mantissa bits); ``from_format`` converts them (``earlier_values``).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt.halves import random_bits, to_bfloat16, to_bfloat16_stochastic

#: Elements per block: one float32 scale each.
BLOCK = 256

#: The checkpoint format (``numbaopt.checkpoint``) that introduced today's codes; those of
#: earlier formats convert (``from_format``).
FORMAT = 5

#: The checkpoint formats whose 8-bit codes differ from today's and convert (``earlier_values``).
EARLIER_FORMATS = (3, 4)

#: The host form of a quantized slot: per block, its codes and its scale.
HOST_DTYPE = np.dtype([("codes", np.uint8, (BLOCK,)), ("absmax", np.float32)])

#: The signs a slot may declare: ``signed`` (any value) or ``nonnegative``; a slot's map
#: is its sign's index here (``map_index``), the ``row`` of ``encode`` and ``decode``.
SIGNS = ("signed", "nonnegative")

#: The map whose codes round by random bits (``rounding``): the unsigned one.
RANDOM_ROW = SIGNS.index("nonnegative")

#: Mantissa bits of a code, per map (signed, nonnegative): the float32 bits of the value,
#: or of its root, are rounded at bit ``23 - MANTISSA[row]``.
MANTISSA = (3, 4)

# The arithmetic is on int32, every intermediate cast back to it (``np.int32(...)``): Numba
# widens integer arithmetic to 64 bits, and the casts let LLVM narrow it again to 32-bit
# lanes, twice as many a vector. Per map (signed, nonnegative): ``_BASE`` is the float32 bits,
# shifted by ``_SHIFT``, of code 0 (code ``q`` > 0 has bits ``(q + base) << _SHIFT``; code 1
# is 2**-15, the root's in the unsigned map); ``_ONE`` is the code of 1.0, the largest value a
# block holds.
_SHIFT_SIGNED, _SHIFT_NONNEGATIVE = np.int32(23 - MANTISSA[0]), np.int32(23 - MANTISSA[1])
_BASE_SIGNED, _BASE_NONNEGATIVE = np.int32(((127 - 15) << MANTISSA[0]) - 1), np.int32(((127 - 15) << MANTISSA[1]) - 1)
_ONE_SIGNED, _ONE_NONNEGATIVE = np.int32(15 << MANTISSA[0] | 1), np.int32(15 << MANTISSA[1] | 1)
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


def staged(x: float, row: Any) -> Any:
    """What a block stages of a slot value ``x`` (float32) of map ``row`` to encode: ``x``
    itself (signed map) or its square root (unsigned map; a negative value's is 0, a
    negative infinity's NaN). Adam's rules compute the same root of their new second
    moment, so a kernel that stages it next to the rule computes it once."""
    x = np.float32(x)
    if row == 0:
        return x
    if x < 0:
        return np.float32(0) if x > -np.inf else np.float32(np.nan)
    return np.float32(math.sqrt(x))


def inverse_scale(absmax: Any, row: Any) -> Any:
    """What a block's staged values are multiplied by to encode (``encode``'s ``y``): the
    inverse of its absmax (signed map), or of the absmax's root (unsigned map); 0 for a
    block of absmax 0."""
    if absmax <= 0:
        return np.float32(0)
    return np.float32(1) / (absmax if row == 0 else np.float32(math.sqrt(absmax)))


def encode(y: float, row: Any, random: Any) -> Any:
    """The code (uint8) of ``y`` in map ``row``: a staged value times its block's inverse
    scale (``staged``, ``inverse_scale``: in [-1, 1]). Its float32 magnitude's bits below
    the mantissa's plus the top bits of ``random`` (uint32), cut; ``NEAREST`` rounds to
    nearest. Beyond 1 stays 1; NaN and infinity get the NaN code; a negative value in the
    unsigned map, 0."""
    bits = np.float32(y).view(np.int32)
    magnitude = np.int32(bits & _ABS)
    signed = row == 0
    base = _BASE_SIGNED if signed else _BASE_NONNEGATIVE
    one = _ONE_SIGNED if signed else _ONE_NONNEGATIVE
    shift = _SHIFT_SIGNED if signed else _SHIFT_NONNEGATIVE
    noise = np.int32(np.uint32(random) >> np.uint32(32 - shift))
    rounded = np.int32(np.int32(min(magnitude, _INF) + noise) >> shift)
    code = np.int32(min(max(np.int32(rounded - base), np.int32(0)), one))
    if magnitude >= _INF:
        code = _NAN_SIGNED if signed else _NAN_NONNEGATIVE
    elif signed:
        code = np.int32(code | np.int32(np.int32(bits >> np.int32(24)) & np.int32(0x80)))
    elif bits < 0:
        code = np.int32(0)
    return np.uint8(code)


def decode(code: Any, row: Any) -> Any:
    """The float32 value of ``code`` in map ``row`` (in [-1, 1], or NaN): an unsigned code's
    root squared, which is exact (5 significant bits)."""
    c = np.int32(code)
    signed = row == 0
    q = np.int32(c & np.int32(0x7F)) if signed else c
    base = _BASE_SIGNED if signed else _BASE_NONNEGATIVE
    one = _ONE_SIGNED if signed else _ONE_NONNEGATIVE
    shift = _SHIFT_SIGNED if signed else _SHIFT_NONNEGATIVE
    bits = np.int32(np.int32(q + base) << shift) if q > 0 else np.int32(0)
    if q > one:
        bits = _QUIET_NAN
    elif signed and c > np.int32(0x7F):
        bits = np.int32(bits | _SIGN_BIT)
    x = np.int32(bits).view(np.float32)
    return x if signed else np.float32(x * x)


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
ELEMENT_FUNCTIONS = (staged, inverse_scale, encode, decode, rounding, random_stream, random_word, random_half)


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


def scaled(rows: npt.NDArray[np.float32], absmax: npt.NDArray[np.float32], sign: str) -> npt.NDArray[np.float32]:
    """``staged`` times ``inverse_scale`` over blocks of float32 values (``rows``, one
    ``absmax`` each): what ``codes_of`` takes, bitwise the kernels' (the same float32
    operations, each correctly rounded)."""
    rows, absmax = np.asarray(rows, np.float32), np.asarray(absmax, np.float32)
    with np.errstate(divide="ignore", invalid="ignore"):
        if sign == "signed":
            inverse, staged_ = np.where(absmax > 0, np.float32(1) / absmax, np.float32(0)), rows
        else:
            inverse = np.where(absmax > 0, np.float32(1) / np.sqrt(absmax), np.float32(0))
            staged_ = np.where(rows < 0, np.where(rows > -np.inf, np.float32(0), np.float32(np.nan)), np.sqrt(rows))
        out: npt.NDArray[np.float32] = staged_.astype(np.float32) * inverse.astype(np.float32)[:, None]
    return out


def codes_of(y: npt.NDArray[np.float32], sign: str, random: npt.NDArray[np.uint32] | None = None) -> npt.NDArray[np.uint8]:
    """``encode`` over an array ``y`` of ``scaled`` values: the same codes, bitwise, by NumPy;
    rounded by ``random`` (uint32 per element), or to nearest."""
    row = map_index(sign)
    signed = row == 0
    bits = np.asarray(y, np.float32).view(np.int32)
    magnitude = bits & _ABS
    shift = _SHIFT_SIGNED if signed else _SHIFT_NONNEGATIVE
    noise = np.broadcast_to(NEAREST if random is None else np.asarray(random, np.uint32), bits.shape)
    rounded = (np.minimum(magnitude, _INF) + (noise >> np.uint32(32 - shift)).astype(np.int32)) >> shift
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
    with np.errstate(invalid="ignore"):
        return codes_of(scaled(rows, absmax, sign), sign)


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


def earlier_values(sign: str, version: int) -> npt.NDArray[np.float32]:
    """The 256 values, by code, of the map of ``sign`` in checkpoints of format ``version``
    (3 or 4). Format 3: bitsandbytes' ``create_dynamic_map(signed, 7, 8)``, sorted, as
    float32 (computed in float64). Format 4: today's signed map; an unsigned code was the
    value's own 5 exponent and 3 mantissa bits, down to 2**-31 (codes above 249 NaN)."""
    if version not in EARLIER_FORMATS:
        raise ValueError(f"8-bit codes of checkpoint format {version}: only formats {EARLIER_FORMATS} had other codes than today's")
    signed = sign == "signed"
    if version == 4:
        if signed:
            return values(sign)
        q = np.arange(256, dtype=np.int32)
        bits = np.where(q > 0, (q + ((127 - 31) << 3) - 1) << 20, 0).astype(np.int32)
        return np.where(q > 249, np.float32(np.nan), bits.view(np.float32))
    mapped = [0.0, 1.0]
    for i in range(7):
        items = 2**i + 1 if signed else 2 ** (i + 1) + 1
        boundaries = np.linspace(0.1, 1, items)
        means = (boundaries[:-1] + boundaries[1:]) / 2.0
        mapped += list(10.0 ** (i - 6) * means)
        if signed:
            mapped += list(-(10.0 ** (i - 6)) * means)
    return np.sort(np.array(mapped, np.float32))


def from_format(host: npt.NDArray[Any], sign: str, version: int) -> npt.NDArray[Any]:
    """A slot in host form with codes of a checkpoint of format ``version`` (3 or 4:
    ``earlier_values``), in today's codes: its values decoded, then rounded to nearest, block
    by block (each keeps its absmax)."""
    decoded = earlier_values(sign, version)[host["codes"]] * host["absmax"][:, None]
    out = np.array(host, HOST_DTYPE)
    out["codes"] = _codes_over(decoded.astype(np.float32), host["absmax"], sign)
    return out
