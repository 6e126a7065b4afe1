"""16-bit parameters and slot storage (``slot_dtype``): conversions, the 8-bit scheme, the
kernels against NumPy references of the same arithmetic, stochastic rounding, checkpoints.

Run over every element-wise optimizer of both families (the registry), each with the
settings the other tests use (``keras3_cases.CUSTOM``).
"""
import math
import os
import tempfile

import numba
import numpy as np
import pytest

ml_dtypes = pytest.importorskip("ml_dtypes")

from numbaopt import halves, quantization, registry, tuning  # noqa: E402
from numbaopt.checkpoint import load_optimizer, save_optimizer  # noqa: E402
from numbaopt.kernels import with_helpers  # noqa: E402
from numbaopt.state import OptimizerState  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
HALVES = {"bfloat16": BF16, "float16": np.dtype(np.float16)}

#: Every optimizer whose slots can be quantized: an element rule, every family.
QUANTIZABLE = [cls for family in registry.FAMILIES for cls in registry.rule_based(family)
               if "q8" in cls.slot_dtypes and not cls.phases]
#: And those that keep their slots as declared (tensor passes, host-side updates).
NOT_QUANTIZABLE = [cls for family in registry.FAMILIES for cls in registry.rule_based(family) if cls not in QUANTIZABLE]
SHAPES = [(300,), (3, 4), (), (517,)]


def _id(cls):
    return registry.qualified_name(cls).replace(".", "-").lower()


def _settings(cls):
    """Settings away from the defaults where the optimizer has them (SGD's momentum, so it keeps a slot)."""
    if cls.family == "keras3":
        from tests.keras3_cases import CUSTOM
        return dict(CUSTOM.get(cls.__name__, [{}])[0])
    from tests.cases import non_default
    return non_default(cls)


def _steps(shapes, dtype, n=3, seed=1):
    rng = np.random.default_rng(seed)
    return [[(0.5 * rng.standard_normal(s)).astype(dtype) for s in shapes] for _ in range(n)]


def _params(shapes, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _bits(arrays):
    return [a.tobytes() for a in arrays]


@pytest.fixture(scope="module")
def converters():
    """The element conversions of ``numbaopt.halves``, compiled as the kernels compile them,
    applied to arrays."""
    compiled = {}

    @numba.njit
    def apply(values, function, out):
        for i in range(values.size):
            out[i] = function(values[i])

    def converter(name, out_dtype):
        if name not in compiled:
            compiled[name] = numba.njit(with_helpers(getattr(halves, name), numba.njit, {}))
        return lambda values: (apply(values, compiled[name], out := np.empty(values.size, out_dtype)), out)[1]

    return converter


# ---------------------------------------------------------------- 16-bit conversions


@pytest.mark.parametrize("form", sorted(HALVES))
def test_every_16_bit_value_reads_exactly(converters, form):
    every = np.arange(1 << 16, dtype=np.uint16)
    ours = converters(f"from_{form}", np.float32)(every)
    reference = every.view(HALVES[form]).astype(np.float32)
    assert np.array_equal(ours, reference, equal_nan=True)
    assert np.array_equal(ours[~np.isnan(ours)].view(np.uint32), reference[~np.isnan(reference)].view(np.uint32))


@pytest.mark.parametrize("form", sorted(HALVES))
def test_float32_rounds_to_nearest_even_as_numpy(converters, form):
    rng = np.random.default_rng(3)
    x = (rng.standard_normal(200_000) * 10.0 ** rng.integers(-10, 7, 200_000)).astype(np.float32)
    edges = np.array([0, -0.0, np.inf, -np.inf, np.nan, 65504, 65519.99, 65520, 6e-8, 2.98e-8, 3e-8, 3.4e38], np.float32)
    # every float32 halfway between two neighbouring 16-bit values: ties go to even
    halfway = (np.arange(0, 1 << 15, 7, dtype=np.uint32) << np.uint32(16 if form == "bfloat16" else 13))
    halfway |= np.uint32(0x8000 if form == "bfloat16" else 0x1000)
    x = np.concatenate([x, edges, halfway.view(np.float32)])
    x = x[~np.isnan(x) | (x != x)]
    ours = converters(f"to_{form}", np.uint16)(x)
    with np.errstate(over="ignore", invalid="ignore"):
        reference = x.astype(HALVES[form]).view(np.uint16)
    numbers = ~np.isnan(x)
    assert np.array_equal(ours[numbers], reference[numbers])
    assert np.isnan(ours[~numbers].view(HALVES[form]).astype(np.float32)).all()


@pytest.mark.parametrize("form", sorted(HALVES))
def test_stochastic_rounding_is_unbiased_and_picks_a_neighbour(form):
    function = numba.njit(with_helpers(halves.WRITERS[form, True], numba.njit, {}))

    @numba.njit
    def draws(x, seed, n, out):
        for i in range(n):
            out[i] = function(x, seed, i)

    for x in (np.float32(1.0 + 2.0**-9 + 2.0**-12), np.float32(-3.3e-3), np.float32(1e-6)):
        out = np.empty(200_000, np.uint16)
        draws(x, np.uint64(7), out.size, out)
        values = out.view(HALVES[form]).astype(np.float64)
        lower, upper = np.unique(values)[[0, -1]]
        assert len(np.unique(values)) <= 2 and lower <= x <= upper
        share = (x - lower) / (upper - lower) if upper > lower else 0.0
        spread = 5 * np.sqrt(share * (1 - share) / out.size) * (upper - lower) + 1e-12
        assert abs(values.mean() - np.float64(x)) <= spread
        again = np.empty_like(out)
        draws(x, np.uint64(7), out.size, again)
        assert np.array_equal(out, again)  # a function of (seed, index) alone


# ---------------------------------------------------------------- the 8-bit scheme


def reference_codes(normalised, sign, random=None):
    """The codes of scaled values (``reference_scaled``), from the scheme's definition: the
    float32 magnitude's bits, plus the top 20 or 19 bits of ``random`` (half a code's width:
    to nearest), cut below 3 or 4 mantissa bits (signed or unsigned map); then counted from
    code 1's bits (2**-15), at most the code of 1, the sign in bit 7; NaN and infinity the
    NaN code. Plain Python integers."""
    codes = []
    mantissa, one = (3, 121) if sign == "signed" else (4, 241)
    for y, r in zip(np.asarray(normalised, np.float32).reshape(-1), np.broadcast_to(np.uint32(0x80000000) if random is None else random, np.shape(normalised)).reshape(-1)):
        bits = int(np.float32(y).view(np.uint32))
        magnitude = bits & 0x7FFFFFFF
        if magnitude >= 0x7F800000:
            codes.append(0x7F if sign == "signed" else 0xFF)
            continue
        rounded = (magnitude + (int(r) >> (9 + mantissa))) >> (23 - mantissa)
        code = min(max(rounded - ((127 - 15 << mantissa) - 1), 0), one)
        if sign == "signed":
            code |= 0x80 if bits >> 31 else 0
        elif bits >> 31:
            code = 0
        codes.append(code)
    return np.array(codes, np.uint8).reshape(np.shape(normalised))


def reference_scaled(block, absmax, sign):
    """A block's float32 values as they are encoded: times the inverse of its absmax
    (signed), or their square roots times the inverse of the absmax's (unsigned; a negative
    value's root is 0, minus infinity's NaN); times 0 for an absmax of 0. Element by element
    in Python, each float64 result of one operation rounded to float32, which is the
    correctly rounded float32 operation."""
    f32 = np.float32
    if absmax > 0:
        inverse = f32(1.0 / float(absmax if sign == "signed" else f32(math.sqrt(absmax))))
    else:
        inverse = f32(0)
    out = []
    for x in np.asarray(block, np.float32).reshape(-1):
        if sign == "nonnegative":
            x = f32(math.sqrt(x)) if x >= 0 else (f32(0) if x > -np.inf else f32(np.nan))
        out.append(f32(float(x) * float(inverse)))
    return np.array(out, np.float32)


def reference_quantize(values, sign, seed=None, slot=0, tensor=0):
    """A block at a time: absmax (NaN passed over), then ``reference_codes`` of each value
    over it: a nonnegative slot's rounded by the kernels' random bits for (``seed``,
    ``slot``, the element of ``tensor``), a signed slot's, or any without a seed, to nearest."""
    flat = np.asarray(values, np.float32).reshape(-1)
    out = np.zeros(quantization.blocks(flat.size), quantization.HOST_DTYPE)
    for b in range(out.size):
        block = flat[b * quantization.BLOCK : (b + 1) * quantization.BLOCK]
        finite = np.abs(block)[np.isfinite(block)]
        absmax = np.float32(np.max(finite, initial=np.float32(0)))
        absmax = absmax if absmax >= 2.0**-126 else np.float32(0)  # a subnormal absmax: zeros
        random = None
        if seed is not None and sign == "nonnegative":
            index = np.uint64(tensor << 40) + np.arange(b * quantization.BLOCK, b * quantization.BLOCK + block.size, dtype=np.uint64)
            with np.errstate(over="ignore"):
                random = np.asarray(quantization.random_for(np.uint64(seed), slot, index), np.uint32)
        out["codes"][b, : block.size] = reference_codes(reference_scaled(block, absmax, sign), sign, random)
        out["absmax"][b] = absmax
    return out


SPECIAL = np.array([0, -0.0, 1, -1, 1.0000001, -1.0000001, 2.0**-15, 2.0**-16, 2.0**-31, 2.0**-32, 1e-30, np.inf, -np.inf,
                    np.nan, -np.nan, 0.999, -0.5], np.float32)


@pytest.mark.parametrize("sign", quantization.SIGNS)
def test_the_codes_are_the_schemes_definition(sign):
    """``codes_of`` (NumPy, the host) and ``encode`` (what the kernels compile) agree with
    the plain-integer definition, to nearest and with random bits, on values of every
    binade and the special ones; ``decode`` reads back each code's value."""
    rng = np.random.default_rng(5)
    y = (rng.uniform(-1, 1, 20_000) * 2.0 ** -rng.integers(0, 40, 20_000)).astype(np.float32)
    y = np.concatenate([y, SPECIAL])
    random = rng.integers(0, 2**32, y.size, dtype=np.uint64).astype(np.uint32)
    row = quantization.map_index(sign)
    for r in (None, random):
        expected = reference_codes(y, sign, r)
        assert np.array_equal(quantization.codes_of(y, sign, r), expected)
        noise = np.broadcast_to(quantization.NEAREST if r is None else r, y.shape)
        assert np.array_equal([quantization.encode(np.float32(v), row, np.uint32(n)) for v, n in zip(y[::7], noise[::7])], expected[::7])
    values = quantization.values(sign)
    finite = ~np.isnan(values)
    coded = values[finite] if sign == "signed" else np.sqrt(values[finite])  # a square, exactly
    assert np.array_equal(quantization.codes_of(coded, sign), np.arange(256)[finite])  # each value is its own code
    assert values[121 if sign == "signed" else 241] == 1 and np.max(values[finite]) == 1
    assert np.min(np.abs(values[finite & (values != 0)])) == (2.0**-15 if sign == "signed" else 2.0**-30)
    assert np.all(np.diff(values[: 122 if sign == "signed" else 242]) > 0)  # codes 0 to 1 in order


@pytest.mark.parametrize("sign", quantization.SIGNS)
def test_scaled_values_are_the_schemes_definition(sign):
    """``scaled`` (NumPy, the host) and ``staged`` times ``inverse_scale`` (what the kernels
    compile) agree with float32 arithmetic one operation at a time, on blocks of every scale
    and the special values."""
    rng = np.random.default_rng(6)
    row = quantization.map_index(sign)
    for absmax in np.float32([1.5, 3e-30, 7.25e12, 2.0**-126, 0]):
        block = (rng.uniform(-1, 1, 300) * absmax).astype(np.float32)
        block = np.concatenate([block if sign == "signed" else np.abs(block), SPECIAL])
        expected = reference_scaled(block, absmax, sign)
        with np.errstate(invalid="ignore", over="ignore"):
            host = quantization.scaled(block[None, :], np.float32([absmax]), sign)[0]
            kernels = np.array([quantization.staged(x, row) * quantization.inverse_scale(absmax, row) for x in block], np.float32)
        for ours in (host, kernels):  # the same bits, but for a NaN's (any NaN gets the NaN code)
            nan = np.isnan(expected)
            assert np.array_equal(np.isnan(ours), nan) and ours[~nan].tobytes() == expected[~nan].tobytes()


@pytest.mark.parametrize("sign", quantization.SIGNS)
def test_stochastic_codes_are_unbiased(sign):
    """Over many random draws the code of a scaled ``y`` averages ``y``: the value in the
    signed map, the root in the unsigned one (what Adam divides by). A slow average that
    moves by less than half a code still moves (why the kernels round so)."""
    rng = np.random.default_rng(9)
    values = quantization.values(sign).astype(np.float64)
    coded = values if sign == "signed" else np.sqrt(values)
    for y in np.float32([0.3, 0.0071, 0.9993, 2.0**-14 * 1.3]):
        random = rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32)
        codes = quantization.codes_of(np.full(random.size, y, np.float32), sign, random)
        down, up = quantization.codes_of(np.float32([y, y]), sign, np.uint32([0, 2**32 - 1]))
        assert set(np.unique(codes)) == {down, up} and coded[down] < y < coded[up]  # a neighbour either way
        assert np.mean(coded[codes]) == pytest.approx(float(y), rel=2e-3)


@pytest.mark.parametrize("sign", quantization.SIGNS)
def test_quantize_round_trip_within_the_maps_error_per_block(sign):
    rng = np.random.default_rng(2)
    values = rng.standard_normal(5000).astype(np.float32) * 10.0 ** rng.integers(-6, 3, 5000)
    values[1000:1300] = 0  # a block of zeros
    if sign == "nonnegative":
        values = np.abs(values)
    host = quantization.quantize(values, sign)
    assert host.dtype == quantization.HOST_DTYPE and host.shape == (quantization.blocks(values.size),)
    assert host.tobytes() == reference_quantize(values, sign).tobytes()
    back = quantization.dequantize(host, values.shape, sign)
    bottom = 2.0**-15 if sign == "signed" else 2.0**-30
    for b in range(host.size):
        block = slice(b * quantization.BLOCK, (b + 1) * quantization.BLOCK)
        error = np.abs(back[block] - values[block])
        # within 1/16 of the value (half a code of 3 mantissa bits, or of 4 of the root:
        # 1/32 of the root, (1 + 1/32)**2 - 1 of the value), or below the smallest code
        relative = 1 / 16 if sign == "signed" else (1 + 1 / 32) ** 2 - 1
        assert np.all(error <= np.maximum(np.abs(values[block]) * relative, host["absmax"][b] * bottom) * (1 + 1e-6))
    assert not back[1024:1280].any()
    assert np.array_equal(quantization.quantize(back, sign)["codes"], host["codes"])


@pytest.mark.parametrize("version", [3, 4])
@pytest.mark.parametrize("sign", quantization.SIGNS)
def test_earlier_formats_codes_convert_to_the_nearest_code(sign, version):
    rng = np.random.default_rng(4)
    earlier = np.zeros(3, quantization.HOST_DTYPE)
    earlier["codes"] = rng.integers(0, 256, earlier["codes"].shape)
    earlier["absmax"] = [0, 1.5, 3e-4]
    converted = quantization.from_format(earlier, sign, version)
    decoded = quantization.earlier_values(sign, version)[earlier["codes"]] * earlier["absmax"][:, None]
    assert np.array_equal(converted["absmax"], earlier["absmax"])
    for b in range(3):
        scaled = reference_scaled(decoded[b].astype(np.float32), earlier["absmax"][b], sign)
        assert np.array_equal(converted["codes"][b], reference_codes(scaled, sign))


def test_format_4_unsigned_map_was_the_values_own_bits():
    """Format 4's unsigned codes, as ``earlier_values`` reads them: 5 exponent and 3 mantissa
    bits of the value, code 1 at 2**-31, code 249 at 1, NaN above (as numbaopt at 380f8eb)."""
    old = quantization.earlier_values("nonnegative", 4)
    assert old[0] == 0 and old[1] == 2.0**-31 and old[249] == 1 and np.all(np.isnan(old[250:]))
    assert np.all(np.diff(old[:250]) > 0) and np.all(np.diff(np.log2(old[1:250:8])) == 1)


# ---------------------------------------------------------------- the kernels


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")  # the simulator's NumPy scalars meet the NaN
@pytest.mark.parametrize("device", ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def test_a_non_finite_or_tiny_value_spoils_nothing_else(device):
    """NaN and infinity in 8-bit state are NaN in their own element only (the absmax passes
    them over), and a block whose absmax is subnormal (a momentum decayed over hundreds of
    steps of zero gradients) stores zeros, not the NaN of ``0 * (1 / absmax)``."""
    opt = registry.optimizer_class("Adam")(lr=0.01, slot_dtype="q8")
    param = np.ones(3 * quantization.BLOCK, np.float32)
    small = np.zeros(param.size, np.float32)
    small[1 : quantization.BLOCK] = 1.2e-38  # block 0: a normal absmax, 1 / absmax overflows after 14 steps of decay
    opt.set_weights([np.int64(5), small, small])
    grad = np.zeros_like(param)
    grad[quantization.BLOCK :] = 0.1
    spoilt = grad.copy()
    spoilt[[300, 600]], spoilt[301] = np.nan, np.inf
    if device == "cuda":
        from numba import cuda

        on_device = cuda.to_device(param)
        for g in [grad] * 19 + [spoilt]:
            opt.apply_gradients([(cuda.to_device(g), on_device)])
        param = on_device.copy_to_host()
    else:
        for g in [grad] * 19 + [spoilt]:
            opt.apply_gradients([(g, param)])
    spoiled = np.zeros(param.size, bool)
    spoiled[[300, 301, 600]] = True
    assert np.all(np.isnan(param[spoiled])) and np.all(np.isfinite(param[~spoiled]))
    for slot in opt.slots:
        host = opt.state().slots[slot.name][0]
        values = quantization.dequantize(host, param.shape, slot.sign)
        assert np.all(np.isnan(values[spoiled])) and np.all(np.isfinite(values[~spoiled]))
        assert np.all(np.isfinite(host["absmax"]))
    ms = opt.state().slots["ms"][0]  # 0.9 ** 19 of its first absmax: subnormal, stored as zeros
    assert ms["absmax"][0] == 0 and not ms["codes"][0].any()



def _rounded(arrays, dtype):
    return [np.asarray(a, np.float32).astype(dtype) for a in arrays]


@pytest.mark.parametrize("form", sorted(HALVES))
@pytest.mark.parametrize("cls", QUANTIZABLE, ids=_id)
def test_16_bit_parameters_step_as_float32_rounded_once(cls, form):
    """A 16-bit step is the float32 step of the same values (float32 slots, the same
    gradients widened), its parameters rounded to the nearest 16-bit value once."""
    dtype = HALVES[form]
    ours, reference = cls(**_settings(cls)), cls(**_settings(cls))
    params = _params(SHAPES, dtype)
    for grads in _steps(SHAPES, dtype):
        wide = [p.astype(np.float32) for p in params]
        reference.apply_gradients(zip([g.astype(np.float32) for g in grads], wide))
        ours.apply_gradients(zip(grads, params))
        assert _bits(params) == _bits(_rounded(wide, dtype))
        assert _bits(sum(ours.state().slots.values(), [])) == _bits(sum(reference.state().slots.values(), []))


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("cls", QUANTIZABLE, ids=_id)
def test_q8_step_is_the_numpy_reference_of_the_scheme(cls, dtype):
    """Each step: the 8-bit state decoded, the optimizer's own float32-slot step, then the
    new slots quantized by ``reference_quantize``: bitwise the 8-bit kernel's state."""
    ours = cls(slot_dtype="q8", **_settings(cls))
    params = _params(SHAPES, dtype)
    for grads in _steps(SHAPES, dtype, n=3):
        before = ours.state()
        reference = cls(slot_dtype="float32", **_settings(cls))
        if before.slots:
            slots = {slot.name: [quantization.dequantize(a, s, slot.sign) for a, s in zip(before.slots[slot.name], SHAPES)]
                     for slot in ours.slots}
            reference.load_state(before._replace(slots=slots))
            reference.load_checkpoint_arrays(ours.checkpoint_arrays())  # torch.optim's per-parameter steps
        expected = [p.copy() for p in params]
        reference.apply_gradients(zip(grads, expected))
        ours.apply_gradients(zip(grads, params))
        assert _bits(params) == _bits(expected)
        after = reference.state().slots
        seed = before.iterations * 0x10001  # one group: its first parameter is 0 (``SlotStore._run_stored``)
        for k, slot in enumerate(ours.slots):
            for j, (ours_host, values) in enumerate(zip(ours.state().slots[slot.name], after[slot.name])):
                assert ours_host.tobytes() == reference_quantize(values, slot.sign, seed, k, j).tobytes()


def reference_bfloat16(values, sign, seed, slot, tensor):
    """``values`` stored in a bfloat16 slot: a signed slot's to nearest even (NumPy's cast), a
    nonnegative slot's stochastically, its float32 bits plus the top 16 of the kernels'
    random bits for (``seed``, ``slot``, the element of ``tensor``), cut; infinity and NaN
    as they are."""
    flat = np.asarray(values, np.float32).reshape(-1)
    nearest = flat.astype(BF16).view(np.uint16)
    if sign == "signed":
        return nearest
    index = np.uint64(tensor << 40) + np.arange(flat.size, dtype=np.uint64)
    with np.errstate(over="ignore"):
        random = np.asarray(quantization.random_for(np.uint64(seed), slot, index), np.uint32) >> np.uint32(16)
    bits = flat.view(np.uint32).astype(np.uint64)
    rounded = ((bits + random) >> np.uint64(16)).astype(np.uint16)
    return np.where(np.isfinite(flat), rounded, nearest)


#: The optimizers whose slots may be stored in bfloat16, by the element loops.
BFLOAT16_SLOTS = [cls for cls in QUANTIZABLE if "bfloat16" in cls.slot_dtypes]


@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["float32", "bfloat16"])
@pytest.mark.parametrize("cls", BFLOAT16_SLOTS, ids=_id)
def test_bfloat16_slots_store_the_float32_step_by_their_sign(cls, dtype):
    """Each step: the optimizer's own float32-slot step from the bfloat16 state, each new
    slot then stored by ``reference_bfloat16``: a second moment rounded stochastically (to
    nearest it froze, and the digits MLP ended 4.9% above float32's loss), a momentum to
    nearest: bitwise the kernel's state, and the parameters the float32 step's."""
    ours = cls(slot_dtype="bfloat16", **_settings(cls))
    params = _params(SHAPES, dtype)
    first, *steps = _steps(SHAPES, dtype, n=4)
    ours.apply_gradients(zip(first, params))  # the slots made (an initial value is stored in bfloat16 too)
    for grads in steps:
        before = ours.state()
        reference = cls(slot_dtype="float32", **_settings(cls))
        reference.load_state(before._replace(slots={k: [a.astype(np.float32) for a in v] for k, v in before.slots.items()}))
        reference.load_checkpoint_arrays(ours.checkpoint_arrays())  # torch.optim's per-parameter steps
        expected = [p.copy() for p in params]
        reference.apply_gradients(zip(grads, expected))
        ours.apply_gradients(zip(grads, params))
        assert _bits(params) == _bits(expected)
        seed = before.iterations * 0x10001  # one group: its first parameter is 0 (``SlotStore._run_stored``)
        for k, slot in enumerate(ours.slots):
            stored, values = ours.state().slots[slot.name], reference.state().slots[slot.name]
            for j, (a, v) in enumerate(zip(stored, values)):
                assert a.view(np.uint16).reshape(-1).tobytes() == reference_bfloat16(v, slot.sign, seed, k, j).tobytes()
            if slot.sign == "nonnegative":  # rounded randomly: not every value is the nearest one
                assert any(a.tobytes() != np.asarray(v, np.float32).astype(BF16).tobytes() for a, v in zip(stored, values))


@pytest.mark.parametrize("slot_dtype, dtype", [("q8", BF16), ("bfloat16", np.float32), ("bfloat16", BF16)],
                         ids=["q8-bfloat16", "bfloat16-float32", "bfloat16-bfloat16"])
def test_stored_slots_do_not_depend_on_the_thread_count(monkeypatch, slot_dtype, dtype):
    """One thread (the serial build) or Numba's team (the parallel build): the same bits."""
    cls = registry.optimizer_class("Adam")
    size = tuning.PARALLEL_MIN_ELEMENTS * 2 + 77
    monkeypatch.setattr(tuning, "ADAPTIVE_THREADS", False)
    results = []
    for threads in (1, numba.config.NUMBA_NUM_THREADS):
        numba.set_num_threads(threads)
        try:
            opt = cls(slot_dtype=slot_dtype, stochastic_rounding=True)
            params = _params([(size,)], dtype)
            for grads in _steps([(size,)], dtype, n=2):
                opt.apply_gradients(zip(grads, params))
            results.append((_bits(params), [a.tobytes() for a in opt.state().slots["vs"]]))
        finally:
            numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    assert results[0] == results[1]


def test_stochastic_rounding_is_seeded_by_the_step_count():
    cls = registry.optimizer_class("Adam")
    steps = _steps(SHAPES, BF16, n=4)
    runs = []
    for _ in range(2):
        opt, params = cls(lr=0.01, stochastic_rounding=True), _params(SHAPES, BF16)
        for grads in steps:
            opt.apply_gradients(zip(grads, params))
        runs.append(_bits(params))
    nearest, params = cls(lr=0.01), _params(SHAPES, BF16)
    for grads in steps:
        nearest.apply_gradients(zip(grads, params))
    assert runs[0] == runs[1] and runs[0] != _bits(params)


# ---------------------------------------------------------------- settings and state


@pytest.mark.parametrize("cls", NOT_QUANTIZABLE, ids=_id)
def test_an_optimizer_that_cannot_quantize_names_slot_dtype(cls):
    with pytest.raises(ValueError, match="slot_dtype"):
        cls(slot_dtype="q8")


def test_slot_dtype_is_checked_and_fixed():
    cls = registry.optimizer_class("Adam")
    with pytest.raises(ValueError, match="slot_dtype"):
        cls(slot_dtype="int8")
    opt = cls(slot_dtype="q8")
    with pytest.raises(AttributeError, match="slot_dtype"):
        opt.slot_dtype = "float32"
    assert opt.get_config()["slot_dtype"] == "q8" and "slot_dtype" not in cls().get_config()


@pytest.mark.parametrize("given, name", [(np.float32, "float32"), (np.dtype("float32"), "float32"),
                                         (ml_dtypes.bfloat16, "bfloat16"), ("bfloat16", "bfloat16")])
def test_slot_dtype_takes_a_dtype_and_keeps_its_name(given, name):
    """A NumPy dtype (or ml_dtypes' bfloat16) means the slot_dtype of its name, which the
    config holds, so that a config records the same optimizer whichever was given."""
    cls = registry.optimizer_class("Adam")
    assert cls(slot_dtype=given).get_config()["slot_dtype"] == name


@pytest.mark.parametrize("given", [np.float16, np.float64, np.dtype("int8"), float, "Q8", b"q8", "f4", object()])
def test_slot_dtype_refuses_what_is_not_one_by_name(given):
    with pytest.raises(ValueError, match="slot_dtype must be None or one of"):
        registry.optimizer_class("Adam")(slot_dtype=given)


@pytest.mark.parametrize("slot_dtype", [None, "float32", "bfloat16", "q8"])
@pytest.mark.parametrize("cls", [registry.optimizer_class("Adam"), registry.optimizer_class("keras3.Adam"), registry.optimizer_class("keras3.Adagrad")], ids=_id)
@pytest.mark.parametrize("dtype", [np.float32, BF16, np.float16], ids=["float32", "bfloat16", "float16"])
def test_a_checkpoint_resumes_bitwise(cls, slot_dtype, dtype):
    steps = _steps(SHAPES, dtype, n=4)
    opt, params = cls(slot_dtype=slot_dtype, stochastic_rounding=True), _params(SHAPES, dtype)
    for grads in steps[:2]:
        opt.apply_gradients(zip(grads, params))
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "state.h5")
        save_optimizer(opt, path)
        resumed = load_optimizer(path)
    copies = [p.copy() for p in params]
    for grads in steps[2:]:
        opt.apply_gradients(zip(grads, params))
        resumed.apply_gradients(zip(grads, copies))
    assert _bits(params) == _bits(copies)
    assert [a.tobytes() for a in sum(opt.state().slots.values(), [])] == \
           [a.tobytes() for a in sum(resumed.state().slots.values(), [])]


@pytest.mark.parametrize("slot_dtype", ["bfloat16", "q8"])
def test_get_weights_gives_float32_values_and_set_weights_stores_them(slot_dtype):
    cls = registry.optimizer_class("Adam")
    opt, params = cls(slot_dtype=slot_dtype), _params(SHAPES, np.float32)
    for grads in _steps(SHAPES, np.float32, n=2):
        opt.apply_gradients(zip(grads, params))
    weights = opt.get_weights()
    assert all(w.dtype == np.float32 and w.shape == s for w, s in zip(weights[1:], SHAPES * 2))
    again = cls(slot_dtype=slot_dtype)
    again.set_weights(weights)
    again.apply_gradients(zip(_steps(SHAPES, np.float32, n=1)[0], [p.copy() for p in params]))
    state = again.state()
    assert state.slots["ms"][0].dtype == opt.state().slots["ms"][0].dtype


def test_quantized_state_is_about_two_bytes_per_parameter():
    cls = registry.optimizer_class("Adam")
    opt, params = cls(slot_dtype="q8"), _params([(1 << 20,)], np.float32)
    opt.apply_gradients(zip(_steps([(1 << 20,)], np.float32, n=1)[0], params))
    stored = sum(a.nbytes for a in sum(opt.state().slots.values(), []))
    assert stored / params[0].size == pytest.approx(2 * (1 + 4 / quantization.BLOCK))


def test_a_bad_state_is_refused_before_anything_changes():
    cls = registry.optimizer_class("Adam")
    opt, params = cls(slot_dtype="q8"), _params(SHAPES, np.float32)
    opt.apply_gradients(zip(_steps(SHAPES, np.float32, n=1)[0], params))
    state = opt.state()
    wrong = {k: [np.zeros(a.size + 1, a.dtype) for a in v] for k, v in state.slots.items()}
    with pytest.raises(ValueError):
        opt.load_state(OptimizerState(5, {}, wrong))
    assert opt.iterations == 1 and _bits(sum(opt.state().slots.values(), [])) == _bits(sum(state.slots.values(), []))


# ---------------------------------------------------------------- CUDA


@pytest.mark.cuda
@pytest.mark.parametrize("slot_dtype", ["bfloat16", "q8", None])
@pytest.mark.parametrize("dtype", [np.float32, np.float16], ids=["float32", "float16"])
@pytest.mark.parametrize("cls", [registry.optimizer_class("Adam"), registry.optimizer_class("keras3.Adam")], ids=_id)
def test_cuda_steps_as_the_cpu(cls, dtype, slot_dtype, monkeypatch):
    """The CUDA kernels against the CPU's: bitwise under the simulator (a GPU contracts
    multiply-adds, so there the 16-bit results may differ by a rounding)."""
    from numba import cuda

    from numbaopt.kernels.cuda import SIMULATOR

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 8)
    monkeypatch.setattr(tuning, "CUDA_BLOCKS_PER_SM", 2)
    settings = {"amsgrad": True} if cls.family == "keras3" else {"clipnorm": 1.0}
    shapes = [(600,), (3, 4), ()]
    host, device = cls(slot_dtype=slot_dtype, stochastic_rounding=True, **settings), cls(
        slot_dtype=slot_dtype, stochastic_rounding=True, **settings)
    params = _params(shapes, dtype)
    on_device = [cuda.to_device(p) for p in params]
    for grads in _steps(shapes, dtype, n=2):
        host.apply_gradients(zip(grads, params))
        device.apply_gradients(zip([cuda.to_device(g) for g in grads], on_device))
    if SIMULATOR:
        assert _bits(params) == _bits([p.copy_to_host() for p in on_device])
        assert [a.tobytes() for a in sum(host.state().slots.values(), [])] == \
               [a.tobytes() for a in sum(device.state().slots.values(), [])]
    else:
        for ours, theirs in zip(params, on_device):
            np.testing.assert_allclose(ours.astype(np.float32), theirs.copy_to_host().astype(np.float32), rtol=1e-2, atol=1e-2)


# ---------------------------------------------------------------- Keras files


@pytest.mark.parametrize("case", ["k3_adam", "legacy_adam"])
def test_export_refuses_8_bit_state_unless_dequantized(case, tmp_path):
    """A Keras file holds float variables: 8-bit slots go in only as their values, when asked."""
    import numbaopt
    from tests.test_keras_files import copy_of, recorded

    imported, params = numbaopt.import_keras_optimizer(recorded(case)[0])
    opt = type(imported).from_config({**imported.get_config(), "slot_dtype": "q8"})
    grads = recorded(case)[3][0]
    opt.apply_gradients(zip(grads, params.values()), names=list(params))
    path = copy_of(case, tmp_path)
    before = path.read_bytes()
    with pytest.raises(ValueError, match="dequantize=True"):
        numbaopt.export_keras_optimizer(opt, path, parameters=params)
    assert path.read_bytes() == before
    numbaopt.export_keras_optimizer(opt, path, parameters=params, dequantize=True)
    again, _ = numbaopt.import_keras_optimizer(path)
    for ours, theirs in zip(opt.get_weights()[1:], again.get_weights()[1:]):
        assert np.array_equal(ours, theirs.astype(ours.dtype))


# ---------------------------------------------------------------- the documentation


def test_the_memory_page_example_runs():
    from pathlib import Path

    page = (Path(__file__).resolve().parent.parent / "docs" / "memory.md").read_text()
    exec(compile(page.split("```python\n", 1)[1].split("```", 1)[0], "docs/memory.md", "exec"), {})


def test_bfloat16_without_ml_dtypes_names_the_extra(monkeypatch):
    monkeypatch.setitem(__import__("sys").modules, "ml_dtypes", None)
    with pytest.raises(ImportError, match="bfloat16 extra"):
        registry.optimizer_class("Adam")(slot_dtype="bfloat16")


@pytest.mark.torch
@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_torch_cpu_tensors_of_16_bits_update_in_place(dtype):
    """The core takes a 16-bit CPU tensor as a view of its memory (bfloat16: its bits as
    ml_dtypes' bfloat16): the tensor itself changes, as the NumPy array of the same values would."""
    torch = pytest.importorskip("torch")
    values = _params([(40, 3)], HALVES[dtype])[0]
    grads = _steps([(40, 3)], HALVES[dtype], n=1)[0][0]
    as_torch = {"bfloat16": torch.bfloat16, "float16": torch.float16}[dtype]
    tensor = torch.from_numpy(values.view(np.int16).copy()).view(as_torch)
    gradient = torch.from_numpy(grads.view(np.int16).copy()).view(as_torch)
    cls = registry.optimizer_class("Adam")
    cls(slot_dtype="q8").apply_gradients([(gradient, tensor)])
    cls(slot_dtype="q8").apply_gradients([(grads, values)])
    assert tensor.view(torch.int16).numpy().tobytes() == values.view(np.int16).tobytes()
