"""The benchmark suite: numbaopt against every peer, the roofline, and start-up costs.

    python benchmarks/suite.py            # the full suite: docs/benchmarks.{md,json,png}
    python benchmarks/suite.py --quick    # tiny sizes, a smoke test (benchmarks/results/quick)

Each measurement group (one case, one dtype) runs in a process of its own, so that
every group starts from the same memory and thread state, and a library's thread pools
or allocations do not leak into the next group. Inside a group, numbaopt, the roofline
and torch's fused optimizer are measured in alternating rounds (the comparisons the
targets are about), the other peers one after the other; every figure is the median of
repeated steps after warm-up. Peers come from ``pip install 'numbaopt[bench]'`` plus the
``keras`` extra for tf_keras; one that is not installed is reported as missing.
"""
import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from numbaopt import optimizers

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
OPTIMIZERS = tuple(cls.__name__ for cls in optimizers.rule_based())
SLOTS = {cls.__name__: len(cls.slot_names) for cls in optimizers.rule_based()}
#: Measured in alternating rounds, in one process: the comparisons the targets rest on.
INTERLEAVED = ("numbaopt", "roofline", "torch-fused")
CLIPNORM = 1.0  # below the gradients' global norm at every size: every step clips


def cases(quick):
    """(label, tensor sizes) of the step groups."""
    if quick:
        return [("1e3", [1000]), ("1e4", [10_000]), ("20 x 500", [500] * 20)]
    single = [(f"1e{k}", [10**k]) for k in (5, 6, 7)] + [("5e7", [50_000_000])]
    return single + [("200 tensors, 5e7", [250_000] * 200), ("1000 x 1000", [1000] * 1000)]


def clip_case(quick):
    return ("20 x 500", [500] * 20) if quick else ("200 tensors, 5e7", [250_000] * 200)


# ---------------------------------------------------------------- in a group


def measure(steps, min_time, rounds):
    """Median seconds per call of each ``steps[name]()``, after two warm-up calls.

    Calls are timed in batches of at least 2 ms (a single call of a small step is close to
    the timer's noise); ``rounds`` > 1 alternates the steps, so that a burst of load from
    elsewhere hits all of them alike.
    """
    samples = {name: [] for name in steps}
    batch = {}
    for name, step in steps.items():
        step()
        start = time.perf_counter()
        step()
        batch[name] = max(1, int(0.002 / max(time.perf_counter() - start, 1e-7)))
    for _ in range(rounds):
        for name, step in steps.items():
            began = time.perf_counter()
            while len(samples[name]) < 3 or time.perf_counter() - began < min_time / rounds:
                start = time.perf_counter()
                for _ in range(batch[name]):
                    step()
                samples[name].append((time.perf_counter() - start) / batch[name])
    return {name: statistics.median(s) for name, s in samples.items()}


def _inputs(sizes, dtype, seed=0):
    import numpy as np

    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(n, dtype=dtype) for n in sizes]
    grads = [rng.standard_normal(n, dtype=dtype) * dtype(1e-3) for n in sizes]
    return params, grads


def _build_all(libraries, optimizer, params, grads, clipnorm, results):
    """``{library: step}`` for those that build; missing and unsupported ones noted in ``results``."""
    import peers

    built = {}
    for library in libraries:
        try:
            built[library] = peers.build(library, optimizer, params, grads, clipnorm)
        except peers.Missing as error:
            results[library] = {"status": "missing", "note": str(error)}
        except peers.Unsupported as error:
            results[library] = {"status": "unsupported", "note": str(error)}
    return built


def run_group(spec):
    """Measure one group (``spec`` from ``main``); returns its rows."""
    import gc

    import numpy as np

    import peers
    import roofline

    dtype = np.dtype(spec["dtype"]).type
    sizes = spec["sizes"]
    params, grads = _inputs(sizes, dtype)
    total = int(sum(sizes))
    rows = []
    for optimizer in spec["optimizers"]:
        clip = spec["kind"] == "clip"
        results = {}
        roof_steps = {"roofline": roofline.build(SLOTS[optimizer], total, dtype)}
        if clip:
            roof_steps["roofline-read"] = roofline.build(0, total, dtype)
        first = [lib for lib in spec["libraries"] if lib in INTERLEAVED]
        rest = [lib for lib in spec["libraries"] if lib not in INTERLEAVED]
        built = _build_all(first, optimizer, params, grads, CLIPNORM if clip else None, results)
        timed = measure({**built, **roof_steps}, spec["min_time"], rounds=3)
        if clip:  # the clip roofline: one read of the gradients, then the update's traffic
            timed["roofline"] += timed.pop("roofline-read")
        del built, roof_steps
        gc.collect()
        for library in rest:
            step = _build_all([library], optimizer, params, grads, CLIPNORM if clip else None, results)
            if step:
                try:
                    timed.update(measure(step, spec["min_time"], rounds=1))
                except Exception as error:  # a peer failing at run time is reported, not fatal
                    results[library] = {"status": "error", "note": f"{type(error).__name__}: {error}"}
            del step
            gc.collect()
        for library, seconds in timed.items():
            results[library] = {"status": "ok", "ms": seconds * 1e3}
        itemsize = np.dtype(dtype).itemsize
        moved = roofline.bytes_per_element(SLOTS[optimizer], itemsize) * total
        if clip:
            moved += itemsize * total
        for library in [*spec["libraries"], "roofline"]:
            row = {"case": spec["case"], "kind": spec["kind"], "tensors": len(sizes), "n": total,
                   "dtype": spec["dtype"], "optimizer": optimizer, "library": library, **results[library]}
            if row["status"] == "ok":
                row["gb_per_s"] = moved / (row["ms"] * 1e-3) / 1e9
            rows.append(row)
        shown = ", ".join(
            f"{lib} {r['ms']:.3g} ms" if r["status"] == "ok" else f"{lib} {r['status']}" for lib, r in results.items()
        )
        print(f"    {optimizer}: {shown}", file=sys.stderr, flush=True)
    return rows


# ------------------------------------------------------------------ start-up


_FIRST_STEP = """
import time
start = time.perf_counter()
import numpy as np
from numbaopt import optimizers
imported = time.perf_counter()
p, g = np.zeros(1000, np.float32), np.ones(1000, np.float32)
optimizers.Adam().apply_gradients([(g, p)])
done = time.perf_counter()
print(imported - start, done - imported)
"""


def _python(code, env=None):
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return [float(x) for x in out.stdout.split()]


def run_startup(repeats):
    """Seconds to import numbaopt (and Numba alone), and of the first step in a new process."""
    timer = "import time; s = time.perf_counter(); import {}; print(time.perf_counter() - s)"
    result = {
        "import_numbaopt_s": statistics.median(
            _python(timer.format("numbaopt, numbaopt.optimizers"))[0] for _ in range(repeats)
        ),
        "import_numba_s": statistics.median(_python(timer.format("numba"))[0] for _ in range(repeats)),
    }
    with tempfile.TemporaryDirectory() as cache:
        env = dict(os.environ, NUMBA_CACHE_DIR=cache)
        result["first_step_cold_cache_s"] = _python(_FIRST_STEP, env)[1]
        result["first_step_warm_cache_s"] = statistics.median(_python(_FIRST_STEP, env)[1] for _ in range(repeats))
    return result


# ------------------------------------------------------------- numbaopt.torch


def run_torch_step(quick, libraries):
    """``torch_step.py``'s results (numbaopt.torch against torch's Adam and the NumPy API),
    in a process of its own; ``{"status": "missing"}`` without torch or the torch peers."""
    import importlib.util

    if not any(lib.startswith("torch") for lib in libraries) or importlib.util.find_spec("torch") is None:
        return {"status": "missing"}
    print("    numbaopt.torch: torch_step.py", file=sys.stderr, flush=True)
    child = subprocess.run([sys.executable, str(HERE / "torch_step.py"), *(["--quick"] if quick else [])],
                           stdout=subprocess.PIPE, text=True, check=True)
    return {"status": "ok", **json.loads(child.stdout.strip().splitlines()[-1])}


# ------------------------------------------------------------------- the run


def machine():
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numba

    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "numba_threads": numba.config.NUMBA_NUM_THREADS,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def _load():
    return os.getloadavg()[0] if hasattr(os, "getloadavg") else None


def groups(quick, libraries, names=OPTIMIZERS):
    dtypes = ("float32", "float64")
    min_time = 0.02 if quick else 0.6
    out = [
        {"kind": "steps", "case": label, "sizes": sizes, "dtype": dtype, "optimizers": list(names),
         "libraries": libraries, "min_time": min_time}
        for label, sizes in cases(quick)
        for dtype in dtypes
    ]
    label, sizes = clip_case(quick)
    if "Adam" not in names:
        return out
    out.append({"kind": "clip", "case": label, "sizes": sizes, "dtype": "float32", "optimizers": ["Adam"],
                "libraries": libraries, "min_time": min_time})
    return out


def main(argv=None):
    import peers

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes and short timings: a smoke test")
    parser.add_argument("--out", type=Path, help="folder for benchmarks.json, .md and .png "
                        "(default: docs/, or benchmarks/results/quick with --quick)")
    parser.add_argument("--libraries", nargs="+", default=list(peers.LIBRARIES), choices=peers.LIBRARIES)
    parser.add_argument("--optimizers", nargs="+", default=list(OPTIMIZERS), choices=OPTIMIZERS)
    parser.add_argument("--group", help=argparse.SUPPRESS)  # a child process: run one group, print JSON
    args = parser.parse_args(argv)
    if args.group:
        print(json.dumps(run_group(json.loads(args.group))))
        return 0
    out = args.out or (HERE / "results" / "quick" if args.quick else ROOT / "docs")
    out.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    results = {"mode": "quick" if args.quick else "full", "machine": machine(), "versions": peers.versions(),
               "load_before": _load(), "steps": []}
    todo = groups(args.quick, list(args.libraries), args.optimizers)
    for k, spec in enumerate(todo, 1):
        print(f"[{k}/{len(todo) + 1}] {spec['kind']} {spec['case']} {spec['dtype']}", file=sys.stderr, flush=True)
        child = subprocess.run([sys.executable, str(Path(__file__)), "--group", json.dumps(spec)],
                               stdout=subprocess.PIPE, text=True, check=True)
        results["steps"] += json.loads(child.stdout.strip().splitlines()[-1])
    results["torch_step"] = run_torch_step(args.quick, args.libraries)
    print(f"[{len(todo) + 1}/{len(todo) + 1}] start-up", file=sys.stderr, flush=True)
    results["startup"] = run_startup(1 if args.quick else 5)
    results["load_after"] = _load()
    results["seconds"] = time.perf_counter() - started
    (out / "benchmarks.json").write_text(json.dumps(results, indent=1) + "\n")
    import report

    report.write(results, out)
    print(f"done in {results['seconds']:.0f} s: {out / 'benchmarks.json'}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
