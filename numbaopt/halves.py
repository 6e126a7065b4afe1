"""16-bit floats (bfloat16 and float16) as the kernels read and write them.

Numba has no bfloat16, and its float16 does not run on both devices alike, so 16-bit
memory is viewed as ``uint16`` and converted here, by integer arithmetic on the float32
bits: plain Python functions, compiled for the CPU and for CUDA like the optimizers' rules
(and run as Python under the CUDA simulator). A 16-bit parameter is read into float32,
updated in float32 and rounded once, to nearest even, when it is stored; NaN stays NaN.

``ml_dtypes`` (the ``bfloat16`` extra) gives NumPy its bfloat16 dtype; numbaopt needs it
only for bfloat16 arrays, and imports it only when asked (``bfloat16``).

Stochastic rounding replaces the last rounding by a random one whose expected value is
the float32 result: the random bits come from a counter-based hash of (seed, step, element),
so a run is the same on any number of threads, and a resumed run is the uninterrupted one.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from numbaopt.extras import install_command

#: The 16-bit float formats a parameter or a slot may have, by dtype name.
FORMATS = ("bfloat16", "float16")


def bfloat16() -> np.dtype[Any]:
    """NumPy's bfloat16 dtype (from ml_dtypes), or an ImportError naming the extra to install."""
    try:
        import ml_dtypes
    except ImportError:
        raise ImportError(
            f"bfloat16 arrays need ml_dtypes, which is not installed; install the bfloat16 extra: {install_command('bfloat16')}"
        ) from None
    dtype: np.dtype[Any] = np.dtype(ml_dtypes.bfloat16)
    return dtype


def as_dtype(dtype: Any) -> np.dtype[Any]:
    """``np.dtype(dtype)``, where the name ``"bfloat16"`` imports ml_dtypes first (a checkpoint
    or a state records dtypes by name)."""
    return bfloat16() if isinstance(dtype, str) and dtype == "bfloat16" else np.dtype(dtype)


def format_of(dtype: Any) -> str | None:
    """``"bfloat16"`` or ``"float16"`` for a 16-bit float dtype (or its name), None for any other."""
    try:
        return _FORMATS[dtype]
    except (KeyError, TypeError):  # a dtype not seen yet, or an unhashable description of one
        name = dtype if isinstance(dtype, str) else np.dtype(dtype).name
        found = name if name in FORMATS else None
        if isinstance(dtype, (str, np.dtype)):
            _FORMATS[dtype] = found
        return found


#: ``format_of`` by dtype, as found: a step asks for every group, and NumPy's
#: ``dtype.name`` takes microseconds.
_FORMATS: dict[Any, str | None] = {}


def compute_dtype(dtype: Any) -> np.dtype[Any]:
    """The dtype a step of parameters of ``dtype`` computes in (and keeps default slots
    in): float32 for a 16-bit float, the dtype itself otherwise."""
    if isinstance(dtype, np.dtype) and dtype in _NATIVE:
        return dtype  # the usual case, per step
    return np.dtype(np.float32) if format_of(dtype) else as_dtype(dtype)


_NATIVE = (np.dtype(np.float32), np.dtype(np.float64))


# ------------------------------------------------------------- element conversions
#
# Integer constants are typed (np.uint32) on purpose: Numba adds an unsigned and a signed
# integer as float64, which would not round-trip the bits.

_SIGN = np.uint32(0x80000000)
_ABS = np.uint32(0x7FFFFFFF)
_INF = np.uint32(0x7F800000)


def bits_of(x: float) -> Any:
    """The bits of ``float32(x)`` as a uint32."""
    return np.float32(x).view(np.uint32)


def float_of(bits: Any) -> Any:
    """The float32 whose bits are ``bits`` (a uint32)."""
    return np.uint32(bits).view(np.float32)


def same(x: Any) -> Any:
    """A value read or stored as it is (float32 and float64 memory)."""
    return x


def from_bfloat16(h: Any) -> Any:
    """The float32 value of the bfloat16 bits ``h``: exact (bfloat16 is float32's top half)."""
    return float_of(np.uint32(h) << np.uint32(16))


def to_bfloat16(x: float) -> Any:
    """``x`` rounded to bfloat16 (to nearest, ties to even), as uint16 bits; NaN stays a quiet NaN."""
    bits = bits_of(x)
    if bits & _ABS > _INF:
        return np.uint16((bits >> np.uint32(16)) | np.uint32(0x40))
    rounding = np.uint32(0x7FFF) + ((bits >> np.uint32(16)) & np.uint32(1))
    return np.uint16((bits + rounding) >> np.uint32(16))


def from_float16(h: Any) -> Any:
    """The float32 value of the IEEE float16 bits ``h`` (exact: every float16 is a float32)."""
    h = np.uint32(h)
    sign = (h & np.uint32(0x8000)) << np.uint32(16)
    exponent = (h >> np.uint32(10)) & np.uint32(0x1F)
    mantissa = h & np.uint32(0x3FF)
    if exponent == np.uint32(0x1F):  # infinity or NaN
        return float_of(sign | _INF | (mantissa << np.uint32(13)))
    if exponent == np.uint32(0):  # zero or subnormal: mantissa * 2^-24, exact in float32
        magnitude = np.float32(mantissa) * np.float32(5.9604644775390625e-08)
        return -magnitude if sign else magnitude
    return float_of(sign | ((exponent + np.uint32(112)) << np.uint32(23)) | (mantissa << np.uint32(13)))


def to_float16(x: float) -> Any:
    """``x`` rounded to IEEE float16 (to nearest, ties to even), as uint16 bits; NaN stays NaN."""
    bits = bits_of(x)
    sign = (bits >> np.uint32(16)) & np.uint32(0x8000)
    a = bits & _ABS
    if a > _INF:
        return np.uint16(sign | np.uint32(0x7E00) | ((a >> np.uint32(13)) & np.uint32(0x3FF)))
    if a >= np.uint32(0x477FF000):  # 65520 and above round to infinity
        return np.uint16(sign | np.uint32(0x7C00))
    if a < np.uint32(0x38800000):  # below 2^-14: a float16 subnormal (or zero), in units of 2^-24
        scaled = float_of(a) * np.float32(16777216.0)  # exact: a power of two
        units = np.uint32(scaled)
        rest = scaled - np.float32(units)
        if rest > np.float32(0.5) or (rest == np.float32(0.5) and units & np.uint32(1)):
            units += np.uint32(1)
        return np.uint16(sign | units)
    rounding = np.uint32(0xFFF) + ((a >> np.uint32(13)) & np.uint32(1))
    return np.uint16(sign | ((a + rounding - np.uint32(0x38000000)) >> np.uint32(13)))


# ------------------------------------------------------------- stochastic rounding


def random_bits(seed: Any, index: Any) -> Any:
    """32 random bits for element ``index`` under ``seed`` (both uint64): SplitMix64's
    finaliser of their combination, a counter-based generator (no state to carry)."""
    z = seed * np.uint64(0x9E3779B97F4A7C15) + index * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    z = z ^ (z >> np.uint64(31))
    return np.uint32(z >> np.uint64(32))


def to_bfloat16_stochastic(x: float, random: Any) -> Any:
    """``x`` rounded to bfloat16 up or down with probabilities that make the expected value
    ``float32(x)``: its low 16 bits, plus 16 uniform random bits, carry into the kept half."""
    bits = bits_of(x)
    if bits & _ABS >= _INF:  # infinity stays, NaN stays NaN
        return to_bfloat16(x)
    return np.uint16((bits + (random & np.uint32(0xFFFF))) >> np.uint32(16))


def to_float16_stochastic(x: float, random: Any) -> Any:
    """``x`` rounded to float16 up or down with probabilities that make the expected value
    ``float32(x)``: between the float16 neighbours ``down`` (towards zero) and ``up``,
    ``up`` with probability ``(|x| - |down|) / (|up| - |down|)``."""
    nearest = to_float16(x)
    near = from_float16(nearest)
    if near != near or abs(near) == np.float32(np.inf):  # NaN, or beyond float16's range
        return nearest
    magnitude, x32 = np.float32(abs(near)), np.float32(abs(np.float32(x)))
    down = nearest if magnitude <= x32 else np.uint16(nearest - np.uint16(1))
    up = np.uint16(down + np.uint16(1))
    low, high = abs(from_float16(down)), abs(from_float16(up))
    if x32 == low or high == np.float32(np.inf):
        return down
    u = np.float32(random >> np.uint32(8)) * np.float32(5.9604644775390625e-08)  # uniform in [0, 1), 24 bits
    return up if u * (high - low) < x32 - low else down


# ------------------------------------------------------------- how the kernels store
#
# The kernels store a parameter through one of these, ``store(x, seed, index)``: the seed
# and the element's index in its group feed stochastic rounding, and the others ignore them.


def keep(x: float, seed: Any, index: Any) -> float:
    """``x`` as it is (float32 and float64 memory)."""
    return x


def nearest_bfloat16(x: float, seed: Any, index: Any) -> Any:
    """``x`` to bfloat16, to nearest."""
    return to_bfloat16(x)


def nearest_float16(x: float, seed: Any, index: Any) -> Any:
    """``x`` to float16, to nearest."""
    return to_float16(x)


def stochastic_bfloat16(x: float, seed: Any, index: Any) -> Any:
    """``x`` to bfloat16, stochastically, with the random bits of (``seed``, ``index``)."""
    return to_bfloat16_stochastic(x, random_bits(seed, np.uint64(index)))


def stochastic_float16(x: float, seed: Any, index: Any) -> Any:
    """``x`` to float16, stochastically, with the random bits of (``seed``, ``index``)."""
    return to_float16_stochastic(x, random_bits(seed, np.uint64(index)))


#: How the kernels read an element of each format (``same``: as it is).
READERS = {"native": same, "bfloat16": from_bfloat16, "float16": from_float16}

#: How they store one, by format and whether rounding is stochastic.
WRITERS = {
    ("native", False): keep, ("native", True): keep,
    ("bfloat16", False): nearest_bfloat16, ("bfloat16", True): stochastic_bfloat16,
    ("float16", False): nearest_float16, ("float16", True): stochastic_float16,
}
