"""A step on a busy machine: numbaopt and torch's fused Adam with busy processes beside them.

    python benchmarks/load.py                 # 2 busy processes; a markdown table and a JSON line
    python benchmarks/load.py --busy 3        # another number of busy processes
    python benchmarks/load.py --quick         # small sizes, short rounds: a smoke test

Adam, float32, three cases: one tensor of 1e6, one of 1e7, and the 20 tensors of an MLP
(``torch_step.MLP``, 528,746 parameters). Contenders, measured in one process in
alternating rounds so that load from elsewhere hits them alike: numbaopt's NumPy API,
``numbaopt.torch.Adam``, and ``torch.optim.Adam(fused=True)`` on 1 and on 2 torch threads
(the faster of the two is "torch fused"), and numbaopt with ``tuning.ADAPTIVE_THREADS``
off, every parallel step on every thread of Numba's team, as before issue 24. Each contender is timed step by step, first on
the machine as it is ("quiet"), then with ``--busy`` processes spinning in a Python loop
("busy"); the table gives medians and 90th percentiles of single steps (and the busy mean,
what a training run's time is made of), and the goals of issue 24: busy median <= 3x quiet
median, busy median <= torch fused's, busy p90 <= 1.5x torch fused's p90.

The busy processes stop by themselves after ``--limit`` seconds whatever happens to this
one, and are killed when the measurement ends (``finally``, and at exit).
"""
import argparse
import json
import os
import sys
import time

import torch

import numbaopt.torch as nt
from numbaopt import optimizers, threads, tuning
from busy import busy_processes, summary
from torch_step import MLP, tensors

CASES = {"1e6": [(1_000_000,)], "1e7": [(10_000_000,)], "MLP": MLP}
QUICK_CASES = {"1e6": [(100_000,)], "1e7": [(300_000,)], "MLP": MLP[:4]}

def contenders(shapes):
    """name -> (step, torch threads or None)."""
    params = tensors(shapes)
    core = optimizers.Adam()
    pairs = [(p.grad.numpy(), p.detach().numpy()) for p in params]
    fused = torch.optim.Adam(tensors(shapes), fused=True)
    fixed = optimizers.Adam()
    fixed_pairs = [(p.grad.numpy(), p.detach().numpy()) for p in tensors(shapes)]

    def every_thread():  # numbaopt before issue 24: every parallel step on all threads
        tuning.ADAPTIVE_THREADS = False
        try:
            fixed.apply_gradients(fixed_pairs)
        finally:
            tuning.ADAPTIVE_THREADS = True

    return {
        "numbaopt": (lambda: core.apply_gradients(pairs), None),
        "numbaopt, every thread": (every_thread, None),
        "numbaopt.torch": (nt.Adam(tensors(shapes)).step, None),
        "torch fused, 1 thread": (fused.step, 1),
        "torch fused, 2 threads": (fused.step, 2),
    }


def rounds(steps, seconds, n_rounds, warmup):
    """Single-step times (s) of each contender, in ``n_rounds`` alternating rounds of
    ``seconds`` each, after ``warmup`` seconds of steps each."""
    threads = torch.get_num_threads()
    samples = {name: [] for name in steps}
    try:
        for r in range(n_rounds + 1):
            for name, (step, torch_threads) in steps.items():
                torch.set_num_threads(torch_threads or threads)
                began = time.perf_counter()
                budget = warmup if r == 0 else seconds
                while time.perf_counter() - began < budget:
                    start = time.perf_counter()
                    step()
                    if r:
                        samples[name].append(time.perf_counter() - start)
    finally:
        torch.set_num_threads(threads)
    return samples


def run(busy=2, quick=False, seconds=None, n_rounds=4, limit=300.0):
    seconds = seconds or (0.05 if quick else 0.5)
    warmup = 0.05 if quick else 0.5
    results = {"busy_processes": busy, "load_before": os.getloadavg()[0], "cases": {}, "busy_pids": []}
    for case, shapes in (QUICK_CASES if quick else CASES).items():
        steps = contenders(shapes)
        quiet = rounds(steps, seconds, n_rounds, warmup)
        with busy_processes(busy, limit) as processes:
            results["busy_pids"] += [p.pid for p in processes]
            loaded = rounds(steps, seconds, n_rounds, warmup)
        results["cases"][case] = {
            name: {"quiet": summary(quiet[name]), "busy": summary(loaded[name])} for name in steps
        }
        print(f"{case}: done, load {os.getloadavg()[0]:.2f}", file=sys.stderr)
    results["load_after"] = os.getloadavg()[0]
    results["ways_chosen"] = {f"{getattr(k[0], '__name__', k[0])} {k[1]} ~2^{k[2] - 1} chunks": c.way._asdict()
                                 for k, c in threads.choosers().items()}
    return results


def goals(case):
    """The issue's three ratios for numbaopt (and numbaopt.torch) in one case."""
    torch_busy = min((case[k]["busy"] for k in case if k.startswith("torch fused")), key=lambda s: s["median_ms"])
    out = {}
    for name in ("numbaopt", "numbaopt.torch"):
        quiet, busy = case[name]["quiet"], case[name]["busy"]
        out[name] = {
            "busy/quiet median": busy["median_ms"] / quiet["median_ms"],
            "median/torch fused": busy["median_ms"] / torch_busy["median_ms"],
            "p90/torch fused p90": busy["p90_ms"] / torch_busy["p90_ms"],
            "mean/torch fused mean": busy["mean_ms"] / torch_busy["mean_ms"],
        }
    return out


def table(results):
    lines = [f"{results['busy_processes']} busy processes; load average (1 min) "
             f"{results['load_before']:.2f} before, {results['load_after']:.2f} after",
             "",
             "| case | contender | quiet median | quiet p90 | busy median | busy p90 | busy mean |",
             "|---|---|---|---|---|---|---|"]
    for case, timed in results["cases"].items():
        for name, t in timed.items():
            lines.append(f"| {case} | {name} | {t['quiet']['median_ms']:.3g} ms | {t['quiet']['p90_ms']:.3g} ms "
                         f"| {t['busy']['median_ms']:.3g} ms | {t['busy']['p90_ms']:.3g} ms | {t['busy']['mean_ms']:.3g} ms |")
    lines += ["", "| case | contender | busy / quiet median (<= 3) | busy median / torch fused's (<= 1) "
              "| busy p90 / torch fused's (<= 1.5) | busy mean / torch fused's |", "|---|---|---|---|---|---|"]
    for case, timed in results["cases"].items():
        for name, ratios in goals(timed).items():
            lines.append(f"| {case} | {name} | " + " | ".join(f"{v:.2f}" for v in ratios.values()) + " |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--busy", type=int, default=2, help="busy processes (default 2)")
    parser.add_argument("--quick", action="store_true", help="small sizes, short rounds")
    parser.add_argument("--seconds", type=float, help="seconds per contender and round")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--limit", type=float, default=300.0, help="the busy processes stop after this (s)")
    args = parser.parse_args()
    results = run(args.busy, args.quick, args.seconds, args.rounds, args.limit)
    print(table(results))
    print(json.dumps(results))


if __name__ == "__main__":
    main()
