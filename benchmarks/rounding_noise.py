"""Why 8-bit Adam state ends near float32's loss only when its second moment rounds in the root.

    python benchmarks/rounding_noise.py            # 20,000 elements, 6,000 steps (some 10 seconds)
    python benchmarks/rounding_noise.py --quick    # a smoke test

Adam's second moment ``v`` moves by ``1 - beta_2`` = 0.1% a step, far less than a code's
width in the unsigned map (1/16 to 1/8 of a value), so its codes round stochastically
(``numbaopt.quantization``), and each step jumps to a neighbouring code now and then; a
jump decays only as fast as ``v`` forgets (a thousand steps). Here ``v`` is kept over the
same gradients in float32 and as q8 codes, rounded two ways with random bits of the
kernels' width:

* unbiased in the value, on format 4's map (the value's own 5 exponent and 3 mantissa
  bits): the q8 value spreads some 22% around the float32 one, and as ``1 / sqrt`` is
  convex (Jensen's inequality), Adam's steps come out 1.8-1.9% larger on average;
* unbiased in the root, as the kernels round today (4 exponent and 4 mantissa bits of
  ``sqrt(v)``): the same spread, but the value sits a little higher (unbiased roots square
  to a larger mean), which offsets most of it: 0.6%.

The script prints, for each, the spread of the q8 value around the float32 one and the
mean of ``sqrt(v32 / vq)``: the factor by which an Adam step with q8 state is larger.
"""
import argparse

import numpy as np

from numbaopt import quantization


def _value_rounding(x, absmax, random):
    """``x`` (one block) stored on format 4's unsigned map over ``absmax``, rounded up with
    the probability that makes the expected value ``x``: by ``random`` (uint32, top 16 bits)."""
    grid = quantization.earlier_values("nonnegative", 4)[:250]
    y = x / absmax
    low = np.clip(np.searchsorted(grid, y, side="right") - 1, 0, grid.size - 2)
    share = (y - grid[low]) / (grid[low + 1] - grid[low])
    return grid[low + (random / 2.0**32 < share)] * absmax


def _root_rounding(x, absmax, random):
    """``x`` (one block) stored as today's codes over ``absmax``, as the kernels round them."""
    scaled = quantization.scaled(x[None, :], np.float32([absmax]), "nonnegative")[0]
    return quantization.values("nonnegative")[quantization.codes_of(scaled, "nonnegative", random)] * absmax


ROUNDINGS = {"unbiased in the value (format 4)": _value_rounding, "unbiased in the root (today)": _root_rounding}


def second_moments(n, steps, beta_2, rounding, seed=0):
    """The float32 and q8 second moments over ``steps`` steps of gradients of ``n`` elements,
    each of its own scale, the q8 one stored by ``rounding``; the statistics of the last half
    of the steps."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2, n).astype(np.float32)
    beta_2 = np.float32(beta_2)
    v32, vq = np.zeros(n, np.float32), np.zeros(n, np.float32)
    factors, spreads = [], []
    for t in range(steps):
        g = rng.standard_normal(n).astype(np.float32) * scale
        v32 = beta_2 * v32 + (1 - beta_2) * g * g
        x = beta_2 * vq + (1 - beta_2) * g * g
        absmax = np.float32(max(x.max(), quantization.SMALLEST_ABSMAX))  # one block: its scale does not matter here
        random = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) & np.uint32(0xFFFF0000)  # 16 bits
        vq = rounding(x, absmax, random).astype(np.float32)
        if t >= steps // 2:
            factors.append(float(np.mean(np.sqrt(v32 / vq))))
            spreads.append(float(np.std(vq / v32 - 1)))
    return {"step_factor": float(np.mean(factors)), "relative_spread": float(np.mean(spreads))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=20_000)
    parser.add_argument("--steps", type=int, default=6_000)
    parser.add_argument("--beta-2", type=float, default=0.999)
    parser.add_argument("--quick", action="store_true", help="2,000 elements, 600 steps")
    args = parser.parse_args()
    if args.quick:
        args.n, args.steps = 2_000, 600
    print(f"q8 second moment over {args.steps} steps of {args.n} elements, beta_2 {args.beta_2}:\n")
    print("| rounding | spread of the q8 value around float32's | mean sqrt(v32 / vq): q8 step over float32's |")
    print("|---|---:|---:|")
    for name, rounding in ROUNDINGS.items():
        result = second_moments(args.n, args.steps, args.beta_2, rounding)
        print(f"| {name} | {result['relative_spread']:.3f} | {result['step_factor']:.4f} |")


if __name__ == "__main__":
    main()
