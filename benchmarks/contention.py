"""How much a busy machine slows a step: one busy-looping process beside the benchmark.

    python benchmarks/contention.py

For a small MLP (10 layers of 64 x 64 weights and 64 biases: 20 tensors, 41,600 floats)
and for one tensor of 1e7 floats, times Adam steps (float32) on a quiet machine and with
one process spinning on a core, for numbaopt as it is (small steps on the calling thread,
``tuning.PARALLEL_MIN_ELEMENTS``), numbaopt forced parallel, and torch's fused Adam when
torch is installed. Prints medians and the slowdown (busy / quiet) of each.
"""
import statistics
import subprocess
import sys
import time

import numpy as np

from numbaopt import optimizers, tuning

MLP = [64 * 64, 64] * 10
LARGE = [10_000_000]


def _numbaopt_step(sizes, parallel_from):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    pairs = list(zip([np.full(n, 1e-3, np.float32) for n in sizes], params))
    opt = optimizers.Adam()

    def step():
        tuning.PARALLEL_MIN_ELEMENTS = parallel_from
        opt.apply_gradients(pairs)

    return step


def _torch_step(sizes):
    try:
        import torch
    except ImportError:
        return None
    params = [torch.nn.Parameter(torch.randn(n)) for n in sizes]
    for p in params:
        p.grad = torch.full_like(p, 1e-3)
    opt = torch.optim.Adam(params, lr=1e-3, fused=True)
    return opt.step


def median_time(step, min_time=2.0):
    for _ in range(3):
        step()
    samples, began = [], time.perf_counter()
    while len(samples) < 20 or time.perf_counter() - began < min_time:
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def main():
    default = tuning.PARALLEL_MIN_ELEMENTS
    for label, sizes in (("MLP, 20 tensors", MLP), ("1e7", LARGE)):
        steps = {
            "numbaopt": _numbaopt_step(sizes, default),
            "numbaopt forced parallel": _numbaopt_step(sizes, 0),
            "torch fused": _torch_step(sizes),
        }
        for name, step in steps.items():
            if step is None:
                print(f"{label:16s} {name:26s} not installed")
                continue
            quiet = median_time(step)
            busy_process = subprocess.Popen([sys.executable, "-c", "while True: pass"])
            try:
                time.sleep(0.5)
                busy = median_time(step)
            finally:
                busy_process.kill()
                busy_process.wait()
            print(f"{label:16s} {name:26s} quiet {quiet * 1e6:9.1f} us  busy {busy * 1e6:9.1f} us  "
                  f"slowdown {busy / quiet:5.2f}x")


if __name__ == "__main__":
    main()
