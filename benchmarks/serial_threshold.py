"""Where a step should stop running on the calling thread: ``tuning.PARALLEL_MIN_ELEMENTS``.

    python benchmarks/serial_threshold.py

Times whole ``apply_gradients`` steps of Adam (float32, one tensor) with every kernel on the
calling thread and with every kernel parallel, alternating the two in rounds, and prints
the medians and the size where parallel starts to win. Run it on a quiet machine.
"""
import statistics
import time

import numpy as np

from numbaopt import optimizers, tuning

SIZES = (1_000, 10_000, 20_000, 35_000, 50_000, 70_000, 100_000, 200_000, 1_000_000)


def step_time(size, parallel, rounds=7):
    tuning.PARALLEL_MIN_ELEMENTS = 0 if parallel else 1 << 62
    param = np.zeros(size, np.float32)
    pairs = [(np.full(size, 1e-3, np.float32), param)]
    opt = optimizers.Adam()
    for _ in range(3):
        opt.apply_gradients(pairs)
    repeats = max(5, 200_000 // size)
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(repeats):
            opt.apply_gradients(pairs)
        samples.append((time.perf_counter() - start) / repeats)
    return statistics.median(samples)


def main():
    print(f"{'elements':>10} {'serial us':>10} {'parallel us':>12}")
    crossover = None
    for size in SIZES:
        serial, parallel = step_time(size, False), step_time(size, True)
        print(f"{size:>10} {serial * 1e6:>10.1f} {parallel * 1e6:>12.1f}")
        if crossover is None and parallel < serial:
            crossover = size
    print(f"parallel wins from about {crossover} elements" if crossover else "serial won at every size")


if __name__ == "__main__":
    main()
