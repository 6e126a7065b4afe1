"""Before and after: whole-step times of two numbaopt trees, in alternating rounds.

    python benchmarks/step_compare.py OLD_TREE NEW_TREE [--rounds 3]

Each round runs the cases once in a fresh process per tree (the tree first on
``PYTHONPATH``, its own Numba cache), old then new, so that load from elsewhere hits both
alike; a case's figure in a round is the median of 9 timed batches. Prints one markdown
row per case: the median over the rounds of each tree, and their ratio. A tree is any
checkout, e.g. ``git worktree add --detach ../before <commit>``.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

#: label -> (optimizer, tensor sizes)
CASES = {
    "Adam, one tensor of 35 float32 (us)": ("Adam", [35]),
    "Nadam, an MLP's 20 tensors (us)": ("Nadam", [784 * 256, 256] + [256 * 256, 256] * 8 + [2560, 10]),
    "Adam, 1000 x 1000 (us)": ("Adam", [1000] * 1000),
    "Adam, 1000 one-element tensors (us)": ("Adam", [1] * 1000),
    "Adam, one tensor of 1e7 (us)": ("Adam", [10_000_000]),
}


def step_time(name, sizes, batch_seconds=0.2):
    """The median seconds of one ``apply_gradients`` over 9 batches of about ``batch_seconds``."""
    from numbaopt import optimizers

    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    pairs = list(zip([rng.standard_normal(n).astype(np.float32) * np.float32(1e-3) for n in sizes], params))
    opt = getattr(optimizers, name)()
    for _ in range(20):
        opt.apply_gradients(pairs)
    start = time.perf_counter()
    opt.apply_gradients(pairs)
    repeats = max(5, int(batch_seconds / max(time.perf_counter() - start, 1e-6)))
    times = []
    for _ in range(9):
        start = time.perf_counter()
        for _ in range(repeats):
            opt.apply_gradients(pairs)
        times.append((time.perf_counter() - start) / repeats)
    return statistics.median(times)


def run_tree(tree, cache):
    """The cases in a new process importing numbaopt from ``tree``: ``{label: microseconds}``."""
    env = dict(os.environ, PYTHONPATH=os.path.abspath(tree), NUMBA_CACHE_DIR=cache)
    output = subprocess.run([sys.executable, __file__, "--measure"], env=env, cwd=tree, check=True,
                            capture_output=True, text=True).stdout
    return json.loads(output.strip().splitlines()[-1])


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("trees", nargs="*", help="the old and the new tree")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--measure", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.measure:
        print(json.dumps({label: step_time(*case) * 1e6 for label, case in CASES.items()}))
        return
    old, new = args.trees
    figures = {old: [], new: []}
    with tempfile.TemporaryDirectory() as caches:
        for _ in range(args.rounds):
            for tree in (old, new):
                figures[tree].append(run_tree(tree, os.path.join(caches, str(list(figures).index(tree)))))
    print("| case | before | after | after / before |\n|---|---|---|---|")
    for label in CASES:
        before = statistics.median(r[label] for r in figures[old])
        after = statistics.median(r[label] for r in figures[new])
        print(f"| {label} | {before:.3g} | {after:.3g} | {after / before:.2f} |")


if __name__ == "__main__":
    main()
