"""Checkpoint size and save / load times for a 10-million-parameter Adam.

    python benchmarks/checkpoint_io.py [--params 10000000] [--repeats 5] [--dtype float32]

Writes into a temporary folder on the current file system's temp dir (``TMPDIR``): the
fsync of a save costs what that disk costs. Load is ``load_optimizer`` (read, digest
checks, a new Adam with pending slots); "load + bind" adds the first step, which copies
the slots into the optimizer's buffers.
"""
import argparse
import os
import statistics
import tempfile
import time

import numpy as np

import numbaopt
from numbaopt import optimizers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    args = parser.parse_args()

    rng = np.random.default_rng(0)
    # A model-like split: one big matrix, a few smaller tensors.
    sizes = [args.params - 3 * 1000 - 1000, 3 * 1000, 1000]
    params = [rng.normal(size=n).astype(args.dtype) for n in sizes]
    opt = optimizers.Adam()
    opt.apply_gradients([(rng.normal(size=p.shape).astype(args.dtype), p) for p in params])

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "adam.h5")
        saves, loads, binds = [], [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            numbaopt.save_optimizer(opt, path)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            loaded = numbaopt.load_optimizer(path)
            loads.append(time.perf_counter() - start)
            grads = [np.zeros_like(p) for p in params]
            start = time.perf_counter()
            loaded.apply_gradients(zip(grads, [p.copy() for p in params]))
            binds.append(time.perf_counter() - start)
        size = os.path.getsize(path)

    slot_bytes = 2 * sum(p.nbytes for p in params)
    print(f"Adam, {args.params:,} {args.dtype} parameters, 2 slots ({slot_bytes / 1e6:.1f} MB of slot data)")
    print(f"checkpoint size   {size / 1e6:.2f} MB ({size - slot_bytes:,} bytes of metadata)")
    print(f"save              {statistics.median(saves) * 1e3:.0f} ms (median of {args.repeats}; min {min(saves) * 1e3:.0f})")
    print(f"load              {statistics.median(loads) * 1e3:.0f} ms (median of {args.repeats}; min {min(loads) * 1e3:.0f})")
    print(f"first step after  {statistics.median(binds) * 1e3:.0f} ms (binds the slots, then one Adam step)")


if __name__ == "__main__":
    main()
