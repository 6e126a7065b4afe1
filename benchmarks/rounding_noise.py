"""Why 8-bit Adam state ends about 1% below float32's loss: the noise of the second moment.

    python benchmarks/rounding_noise.py            # 20,000 elements, 6,000 steps (a few seconds)
    python benchmarks/rounding_noise.py --quick    # a smoke test

Adam's second moment ``v`` moves by ``1 - beta_2`` = 0.1% a step, far less than a code's
width in the unsigned map (1/16 to 1/8 of a value), so its codes round stochastically
(``numbaopt.quantization``): unbiased, but each step jumps to a neighbouring code now and
then, and a jump decays only as fast as ``v`` forgets (a thousand steps). Here ``v`` is
kept twice over the same gradients, in float32 and as q8 codes rounded as the kernels
round them (random bits of the same width), and the script prints the spread of the q8
value around the float32 one and the mean of ``sqrt(v32 / vq)``: the factor by which an
Adam step with q8 state is larger on average (Jensen's inequality: ``1 / sqrt`` is
convex, so noise that leaves ``v`` unbiased still makes its steps larger).
"""
import argparse

import numpy as np

from numbaopt import quantization


def second_moments(n, steps, beta_2, seed=0):
    """The float32 and q8 second moments over ``steps`` steps of gradients of ``n`` elements,
    each of its own scale; the statistics of the last half of the steps."""
    rng = np.random.default_rng(seed)
    scale = rng.uniform(0.5, 2, n).astype(np.float32)
    beta_2 = np.float32(beta_2)
    v32, vq = np.zeros(n, np.float32), np.zeros(n, np.float32)
    values = quantization.values("nonnegative")
    factors, spreads = [], []
    for t in range(steps):
        g = rng.standard_normal(n).astype(np.float32) * scale
        v32 = beta_2 * v32 + (1 - beta_2) * g * g
        x = beta_2 * vq + (1 - beta_2) * g * g
        absmax = np.float32(max(x.max(), quantization.SMALLEST_ABSMAX))  # one block: its scale does not matter here
        random = rng.integers(0, 2**32, n, dtype=np.uint64).astype(np.uint32) & np.uint32(0xFFFF0000)  # 16 bits
        vq = values[quantization.codes_of(x / absmax, "nonnegative", random)] * absmax
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
    result = second_moments(args.n, args.steps, args.beta_2)
    print(f"q8 second moment over {args.steps} steps of {args.n} elements, beta_2 {args.beta_2}:")
    print(f"  relative spread of the q8 value around the float32 one: {result['relative_spread']:.3f}")
    print(f"  mean of sqrt(v32 / vq), the q8 step over the float32 one: {result['step_factor']:.4f}")


if __name__ == "__main__":
    main()
