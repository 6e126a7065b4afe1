"""Many small tensors: numbaopt's Adam step against torch's fused and foreach Adam, and
numbaopt's cost per tensor.

    python benchmarks/many_tensors.py      # one JSON object: medians (s) and ratios

Cases: 1000 tensors of 1000 float32, and an MLP's 20 tensors (784x256, 256, 256x256 ...).
The libraries are measured in alternating rounds in this one process (``suite.measure``),
so that load from elsewhere hits them alike; torch comes from ``numbaopt[bench]`` and is
reported as missing without it. The cost per tensor is (step over 1000 tensors of one
element - step over one tensor of one element) / 999: the work a step does per tensor
beyond its elements (checks, addresses, kernel bookkeeping).
"""
import json
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import peers  # noqa: E402
from suite import measure  # noqa: E402

CASES = {
    "1000 x 1000": [1000] * 1000,
    "MLP, 20 tensors": [784 * 256, 256] + [256 * 256, 256] * 8 + [256 * 10, 10],
}
LIBRARIES = ("numbaopt", "torch-fused", "torch-foreach")


def _inputs(sizes):
    rng = np.random.default_rng(0)
    params = [rng.standard_normal(n, dtype=np.float32) for n in sizes]
    grads = [rng.standard_normal(n, dtype=np.float32) * np.float32(1e-3) for n in sizes]
    return params, grads


def compare(sizes, min_time=3.0, rounds=3):
    """Median step time of each library, and torch's times over numbaopt's."""
    steps = {}
    for library in LIBRARIES:
        params, grads = _inputs(sizes)
        try:
            steps[library] = peers.build(library, "Adam", params, grads)
        except (peers.Missing, peers.Unsupported) as error:
            print(f"{library}: {error}", file=sys.stderr)
    times = measure(steps, min_time, rounds)
    ratios = {f"{name} / numbaopt": times[name] / times["numbaopt"] for name in times if name != "numbaopt"}
    return {"median step (s)": times, **ratios}


def cost_per_tensor(count=1000, repeats=2000):
    """Seconds per tensor of a step, beyond the elements' own work."""

    def median_step(n):
        step = peers.build("numbaopt", "Adam", *_inputs([1] * n))
        for _ in range(5):
            step()
        samples = []
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            samples.append(time.perf_counter() - start)
        return statistics.median(samples)

    one, many = median_step(1), median_step(count)
    return {"step, 1 tensor (s)": one, f"step, {count} tensors (s)": many, "per tensor (s)": (many - one) / (count - 1)}


if __name__ == "__main__":
    results = {label: compare(sizes) for label, sizes in CASES.items()}
    results["cost per tensor"] = cost_per_tensor()
    print(json.dumps(results, indent=2))
