"""Start-up costs per optimizer: ``import numbaopt``, and the first ``apply_gradients`` in a
new process with an empty and with a warm compile cache.

    python benchmarks/startup.py

Every figure comes from a fresh subprocess; each optimizer gets a compile cache of its own
(``NUMBA_CACHE_DIR`` in a temporary folder), first empty, then warm.
"""
import os
import statistics
import subprocess
import sys
import tempfile

from numbaopt import optimizers

NAMES = tuple(cls.__name__ for cls in optimizers.rule_based())

IMPORT = "import time; t = time.perf_counter(); import numbaopt; from numbaopt import optimizers; print(time.perf_counter() - t)"

FIRST_STEP = """
import sys, time
import numpy as np
from numbaopt import optimizers
params = [np.zeros(1000, np.float32)]
opt = getattr(optimizers, sys.argv[1])()
t = time.perf_counter()
opt.apply_gradients(zip([np.ones(1000, np.float32)], params))
print(time.perf_counter() - t)
"""


def seconds(code, *args, env=None):
    return float(subprocess.check_output([sys.executable, "-c", code, *args], env=env))


def main():
    imports = [seconds(IMPORT) for _ in range(7)]
    print(f"import numbaopt: {statistics.median(imports) * 1e3:.0f} ms (median of 7)")
    print(f"{'optimizer':10s} {'cold cache':>11s} {'warm cache':>11s}")
    for name in NAMES:
        with tempfile.TemporaryDirectory() as cache:
            env = dict(os.environ, NUMBA_CACHE_DIR=cache)
            cold = seconds(FIRST_STEP, name, env=env)
            warm = statistics.median(seconds(FIRST_STEP, name, env=env) for _ in range(3))
        print(f"{name:10s} {cold:10.2f}s {warm:10.2f}s")


if __name__ == "__main__":
    main()
