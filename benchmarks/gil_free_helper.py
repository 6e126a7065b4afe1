"""Would a helper thread that never takes the GIL help a step, quiet or beside busy processes?

    python benchmarks/gil_free_helper.py            # 3e5 and 1e6, 2 busy processes; a markdown table
    python benchmarks/gil_free_helper.py --quick    # a small size, short rounds: a smoke test

A prototype, not a way numbaopt runs. Adam, float32, one tensor, the serial build of
numbaopt's own kernel (``numbaopt.kernels.cpu.update_kernel``) over the same chunks, run:

- by the calling thread alone;
- by the calling thread and one helper the way ``numbaopt.threads.Helpers`` runs it: the
  helper watches for a launch in compiled code, then returns to Python, takes the GIL and
  calls the kernel;
- by the calling thread and one helper that stays in compiled code between launches
  (``serve`` below calls the kernel itself), so it never takes the GIL;
- by Numba's team of two (the parallel build).

Every way announces the launch and waits for the chunks as ``numbaopt.threads`` does
(``cpu.announce``, ``cpu.wait``). Each step repeats the same update (the same scalars), which
is all the timing needs. Timed step by step in alternating rounds, quiet, then beside
``--busy`` processes spinning in a Python loop (``busy.busy_processes``).
"""
import argparse
import threading
import time

import numba
import numpy as np

from busy import busy_processes, summary
from numbaopt import devices, optimizers, tuning
from numbaopt.kernels import cpu


class Step:
    """Adam over ``n`` float32 elements, in chunks of ``tuning.CHUNK_ELEMENTS``."""

    def __init__(self, n):
        rng = np.random.default_rng(0)
        self.p, self.g = rng.standard_normal(n).astype(np.float32), (1e-2 * rng.standard_normal(n)).astype(np.float32)
        opt = optimizers.Adam()
        starts = range(0, n, tuning.CHUNK_ELEMENTS)
        self.chunks = np.array([[0, s, min(s + tuning.CHUNK_ELEMENTS, n)] for s in starts], np.int64)
        self.arguments = (devices.CPU.addresses([self.p]), devices.CPU.addresses([self.g]), np.zeros((2, n), np.float32),
                          np.zeros(1, np.int64), self.chunks, (np.float32(1), np.float32(1), np.float32(np.inf)),
                          opt.step_scalars(opt.step_inputs(), np.float32), np.empty(0, np.float32))
        self.serial = cpu.update_kernel(optimizers.Adam.rule, 2, parallel=False)
        self.team = cpu.update_kernel(optimizers.Adam.rule, 2, parallel=True)
        began = cpu.cycles()
        time.sleep(2e-3)
        rate = (cpu.cycles() - began) / 2e-3
        self.watch_cycles, self.join_cycles = int(rate * tuning.HELPER_WATCH_SECONDS), int(rate * tuning.HELPER_JOIN_SECONDS)

    def work(self, workers=1):
        return np.array([0, 0, workers], np.int64)


def _server(kernel):
    """A helper's loop in compiled code: run ``kernel`` at each launch announced in ``signals``
    while launches come within ``budget`` cycles of each other; then return the last seen."""

    @numba.njit(nogil=True)
    def serve(signals, seen, budget, params, grads, slots, offsets, chunks, clip, scalars, like, work):
        while True:
            latest = cpu.watch(signals, seen, budget)
            if latest == seen:
                return seen
            seen = latest
            kernel(params, grads, slots, offsets, chunks, clip, scalars, like, work)

    return serve


class Helper:
    """One helper thread, GIL-free (``native``) or as ``numbaopt.threads`` runs one."""

    def __init__(self, step, native):
        self.step, self.native = step, native
        self.signals, self.wake = np.zeros(1, np.int64), threading.Event()
        self.work = step.work()  # the native helper's kernel arguments are fixed: so is its work
        self.job = None
        self.serve = _server(step.serial) if native else None
        threading.Thread(target=self._loop, daemon=True).start()

    def _loop(self):
        seen = 0
        while True:
            if self.native:
                seen = self.serve(self.signals, seen, self.step.watch_cycles, *self.step.arguments, self.work)
            else:
                latest = cpu.watch(self.signals, seen, self.step.watch_cycles)
                if latest != seen:
                    seen = latest
                    job = self.job
                    if job is not None:
                        self.step.serial(*job)
                    continue
            self.wake.wait()
            self.wake.clear()

    def run(self):
        step = self.step
        if self.native:
            work = self.work
            work[:2] = 0  # the last launch's chunks are all done: nothing claims from it any more
        else:
            work = step.work()
            self.job = (*step.arguments, work)
        self.wake.set()
        cpu.announce(self.signals, work, step.join_cycles)
        step.serial(*step.arguments, work)
        cpu.wait(work, len(step.chunks))
        self.job = None


def ways(step):
    python, native = Helper(step, native=False), Helper(step, native=True)
    return {
        "calling thread alone": lambda: step.serial(*step.arguments, step.work()),
        "one helper taking the GIL per launch": python.run,
        "one helper that never takes the GIL": native.run,
        "Numba's team of two": lambda: step.team(*step.arguments, step.work(2)),
    }


def rounds(runs, n_rounds, steps_per_round):
    samples = {name: [] for name in runs}
    for r in range(n_rounds + 1):
        for name, run in runs.items():
            for _ in range(steps_per_round):
                began = time.perf_counter()
                run()
                if r:  # the first round warms up
                    samples[name].append(time.perf_counter() - began)
    return {name: summary(times) for name, times in samples.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=float, nargs="+", default=[3e5, 1e6])
    parser.add_argument("--busy", type=int, default=2, help="busy processes beside the step")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=100, help="steps per way per round")
    parser.add_argument("--quick", action="store_true", help="3e5 elements, 2 rounds of 10 steps")
    args = parser.parse_args()
    if args.quick:
        args.sizes, args.rounds, args.steps = [3e5], 2, 10
    numba.set_num_threads(min(2, numba.config.NUMBA_NUM_THREADS))
    print("| size | way | quiet median | busy median | busy p90 | busy mean |")
    print("|---|---|---|---|---|---|")
    for size in args.sizes:
        runs = ways(Step(int(size)))
        quiet = rounds(runs, args.rounds, args.steps)
        with busy_processes(args.busy, limit=120):
            busy = rounds(runs, args.rounds, args.steps)
        for name in runs:
            q, b = quiet[name], busy[name]
            print(f"| {size:.0e} | {name} | {q['median_ms']:.3g} ms | {b['median_ms']:.3g} ms | {b['p90_ms']:.3g} ms "
                  f"| {b['mean_ms']:.3g} ms |", flush=True)


if __name__ == "__main__":
    main()
