"""Whole-step times of numbaopt alone: a tiny step, 1000 x 1000, 1e7 and clipnorm over 200 tensors.

    python benchmarks/step_times.py        # one JSON line of medians, in seconds

A quick before/after check for changes to the step: run it for both trees, alternating, on
a quiet machine. The comparisons with peers are ``suite.py``'s.
"""
import json
import statistics
import time

import numpy as np

from numbaopt import optimizers

#: label -> (optimizer, tensor sizes, clipnorm)
CASES = {
    "Adam 35 f32": ("Adam", [35], None),
    "SGD 35 f32": ("SGD", [35], None),
    "Adam 1000x1000 f32": ("Adam", [1000] * 1000, None),
    "Adam 1e7 f32": ("Adam", [10_000_000], None),
    "Adadelta 1e7 f32": ("Adadelta", [10_000_000], None),
    "Adam+clipnorm 200x250k f32": ("Adam", [250_000] * 200, 1.0),
}


def step_time(name, sizes, clipnorm, min_time=1.5):
    """The median seconds of one ``apply_gradients``, timed in batches of at least 5 ms."""
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    grads = [(rng.standard_normal(n) * 1e-3).astype(np.float32) for n in sizes]
    opt = getattr(optimizers, name)(**({"clipnorm": clipnorm} if clipnorm else {}))
    pairs = list(zip(grads, params))
    for _ in range(3):
        opt.apply_gradients(pairs)
    start = time.perf_counter()
    opt.apply_gradients(pairs)
    batch = max(1, int(0.005 / max(time.perf_counter() - start, 1e-7)))
    samples = []
    began = time.perf_counter()
    while len(samples) < 5 or time.perf_counter() - began < min_time:
        start = time.perf_counter()
        for _ in range(batch):
            opt.apply_gradients(pairs)
        samples.append((time.perf_counter() - start) / batch)
    return statistics.median(samples)


if __name__ == "__main__":
    print(json.dumps({label: step_time(*case) for label, case in CASES.items()}))
