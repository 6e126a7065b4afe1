"""Each way a CPU step can run (``numbaopt.threads.Way``), forced on every step, beside busy processes.

    python benchmarks/ways.py                 # 1e6 and 1e7, 2 busy processes; a markdown table
    python benchmarks/ways.py --quick         # small sizes, short rounds: a smoke test

Adam, float32, one tensor. The ways: the calling thread alone, the calling thread with
helper threads, and Numba's team, on every thread numbaopt may use. Each is forced by
making every ``Chooser`` pick it, and timed step by step in alternating rounds, first on the
machine as it is ("quiet"), then beside ``--busy`` processes spinning in a Python loop
(``busy.busy_processes``). Medians, 90th percentiles and means of single steps: what the
chooser picks from.
"""
import argparse
import time

import numba
import numpy as np

from busy import busy_processes, summary
from numbaopt import optimizers, threads


def forced(way):
    """Make every chooser pick ``way`` (or, with fewer threads on its ladder, the most of that kind)."""
    def pick(self, now):
        return max((i for i, w in enumerate(self.ladder) if w.threads <= way.threads and w.team == way.team), default=0)

    threads.Chooser.pick = pick


def rounds(step, ways, n_rounds, steps_per_round):
    samples = {name: [] for name in ways}
    for r in range(n_rounds + 1):
        for name, way in ways.items():
            forced(way)
            for _ in range(steps_per_round):
                began = time.perf_counter()
                step()
                if r:  # the first round warms up
                    samples[name].append(time.perf_counter() - began)
    return samples


KEYS = ("median_ms", "p90_ms", "mean_ms")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2)
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args()
    sizes = (100_000, 300_000) if args.quick else (1_000_000, 10_000_000)
    threads.reset()
    cap = threads.max_threads(numba.get_num_threads())
    ways = {"calling thread alone": threads.Way(1, False), "calling thread and helpers": threads.Way(cap, False),
            "Numba's team": threads.Way(cap, True)}
    print(f"| size | way ({cap} threads) | quiet median | p90 | mean | busy median | p90 | mean |")
    print("|---|---|---|---|---|---|---|---|")
    for size in sizes:
        grad, param = np.linspace(-1, 1, size, dtype=np.float32), np.zeros(size, np.float32)
        opt = optimizers.Adam()
        step = lambda: opt.apply_gradients([(grad, param)])  # noqa: E731
        per_round = 10 if args.quick else max(50, int(3e8 // size))
        n_rounds = 2 if args.quick else 4
        quiet = rounds(step, ways, n_rounds, per_round)
        with busy_processes(args.busy, 300.0):
            busy = rounds(step, ways, n_rounds, per_round)
        for name in ways:
            times = [summary(quiet[name])[k] for k in KEYS] + [summary(busy[name])[k] for k in KEYS]
            print(f"| {size:.0e} | {name} | " + " | ".join(f"{v:.3g} ms" for v in times) + " |")


if __name__ == "__main__":
    main()
