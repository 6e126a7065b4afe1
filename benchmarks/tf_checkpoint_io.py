"""Checkpoint size and save / load times for a TFOptimizer around a legacy tf-keras Adam.

    python benchmarks/tf_checkpoint_io.py [--params 1000000] [--repeats 5]

Needs the ``keras`` extra. The wrapped optimizer's variables (its step count and two
float32 slots) are the checkpoint's optimizer arrays; the size should be that of the
slots plus a few kilobytes. Load is ``load_optimizer`` with ``wrapped=`` a fresh Adam (the
variables are checked and assigned at the next step, which this does not time).
"""
import argparse
import os
import statistics
import tempfile
import time

import h5py
import numpy as np

import numbaopt
from numbaopt import optimizers


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", type=int, default=1_000_000)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()

    import tf_keras

    rng = np.random.default_rng(0)
    params = [rng.normal(size=n).astype(np.float32) for n in (args.params - 1000, 1000)]
    opt = optimizers.TFOptimizer(tf_keras.optimizers.legacy.Adam(1e-3))
    opt.apply_gradients([(rng.normal(size=p.shape).astype(np.float32), p) for p in params])

    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "tf.h5")
        saves, loads = [], []
        for _ in range(args.repeats):
            start = time.perf_counter()
            numbaopt.save_optimizer(opt, path)
            saves.append(time.perf_counter() - start)
            start = time.perf_counter()
            numbaopt.load_optimizer(path, wrapped=tf_keras.optimizers.legacy.Adam(1e-3))
            loads.append(time.perf_counter() - start)
        size = os.path.getsize(path)
        with h5py.File(path) as f:
            config_chars = len(f.attrs["config"])

    slot_bytes = 2 * sum(p.nbytes for p in params)
    print(f"TFOptimizer(legacy Adam), {args.params:,} float32 parameters ({slot_bytes / 1e6:.1f} MB of slot data)")
    print(f"checkpoint size   {size / 1e6:.2f} MB (config attribute: {config_chars:,} characters)")
    print(f"save              {statistics.median(saves) * 1e3:.0f} ms (median of {args.repeats}; min {min(saves) * 1e3:.0f})")
    print(f"load              {statistics.median(loads) * 1e3:.0f} ms (median of {args.repeats}; min {min(loads) * 1e3:.0f})")


if __name__ == "__main__":
    main()
