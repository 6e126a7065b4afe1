"""Optimizer memory: 16-bit parameters and 8-bit state against float32, and against torchao and bitsandbytes.

    python benchmarks/memory.py [--n 5e7] [--rounds 3] [--steps 600] [--seeds 1] [--out docs] [--quick]

Four measurements of Adam, each printed as a markdown table and kept in ``OUT/memory.json``:

* state bytes per parameter (``state()``'s arrays over the parameter count);
* peak resident memory of a process that steps ``n`` parameters, each configuration in a
  fresh process (``VmHWM``, reset once the parameters and gradients are made): the whole
  process, and above what it held with the parameters and gradients alone (what the
  optimizer adds, its state and any temporaries of a step);
* step time at ``n`` parameters, numbaopt's float32 slots against its 8-bit ones, and
  torchao's and bitsandbytes' ``AdamW8bit`` and torch's fused ``AdamW`` where installed:
  the median of the timed steps of ``--rounds`` processes per configuration, started in
  alternating rounds, so that a machine that gets busier or quieter during the run weighs
  on every configuration alike;
* convergence: a 64-128-10 MLP on the handwritten digits scikit-learn ships as a CSV
  (read as a file, no scikit-learn import), trained with float32 parameters and slots, with
  bfloat16 parameters and float32 slots, with bfloat16 slots, and with 8-bit slots (also
  beside bfloat16 parameters); the loss curves go to
  ``OUT/memory.png`` when matplotlib is installed.

Peers that are not installed are reported as missing. Timings are medians on whatever
machine runs this; compare the ratios measured in one run.
"""
import argparse
import gzip
import importlib.util
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

#: The configurations of the peak-memory and step-time runs: (library, parameter dtype, slot_dtype).
CONFIGS = {
    "numbaopt float32": ("numbaopt", "float32", None),
    "numbaopt q8": ("numbaopt", "float32", "q8"),
    "numbaopt bfloat16 + q8": ("numbaopt", "bfloat16", "q8"),
    "torch AdamW (fused)": ("torch", "float32", None),
    "torchao AdamW8bit": ("torchao", "float32", "q8"),
    "bitsandbytes AdamW8bit": ("bitsandbytes", "float32", "q8"),
}


def _status_kib(field: str) -> int:
    """``VmRSS`` (resident now) or ``VmHWM`` (its peak) of this process, in KiB (Linux)."""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":"))


def _current_kib() -> int:
    """Resident memory now; the peak is reset to it (``/proc/self/clear_refs``), so that what
    setting up the arrays took and freed does not count as the step's."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return _status_kib("VmRSS")


def _numbaopt_step(dtype, slot_dtype, n):
    from numbaopt.optimizers import Adam

    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    # Numba and the kernels loaded first: what stays is the memory of the step itself.
    Adam(slot_dtype=slot_dtype).apply_gradients([(np.ones(1000, dtype), np.ones(1000, dtype))])
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n, dtype=np.float32).astype(dtype)
    g = (rng.standard_normal(n, dtype=np.float32) * 1e-3).astype(dtype)
    base = _current_kib()
    opt = Adam(lr=1e-3, slot_dtype=slot_dtype)
    return base, lambda: opt.apply_gradients([(g, p)])


def _torch_step(library, n):
    import torch

    def make(size):
        p = torch.nn.Parameter(torch.randn(size))
        p.grad = torch.randn(size) * 1e-3
        if library == "torchao":
            from torchao.optim import AdamW8bit

            return p, AdamW8bit([p], lr=1e-3, weight_decay=0.0)
        if library == "bitsandbytes":  # its CPU backend (0.50): blocks of 256, as torchao's
            import bitsandbytes

            return p, bitsandbytes.optim.AdamW8bit([p], lr=1e-3, weight_decay=0.0)
        return p, torch.optim.AdamW([p], lr=1e-3, weight_decay=0.0, fused=True)

    torch.manual_seed(0)
    make(4096)[1].step()  # torch (and torch.compile, for torchao) loaded first, as numbaopt's kernels
    p, opt = make(n)
    base = _current_kib()  # with the parameters and gradients; the state comes at the first step
    return base, opt.step


def measure_one(name, n, steps):
    """In this process: the step of configuration ``name`` over ``n`` parameters."""
    library, dtype, slot_dtype = CONFIGS[name]
    base, step = _numbaopt_step(dtype, slot_dtype, n) if library == "numbaopt" else _torch_step(library, n)
    for _ in range(3):
        step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    peak = _status_kib("VmHWM")
    return {"peak_mib": peak / 1024, "above_params_mib": (peak - base) / 1024, "times_ms": [1e3 * t for t in times]}


def available(name):
    library = CONFIGS[name][0]
    return library == "numbaopt" or importlib.util.find_spec(library) is not None


def run_each(n, steps, rounds):
    """Each configuration in fresh processes, ``rounds`` of them in alternating rounds: its
    own peak (the largest of the rounds', each kept), and the median step over every round's
    timed steps."""
    results = {name: {"status": "ok", "peak_mib": 0.0, "above_params_mib": 0.0, "above_params_by_round": [], "times_ms": []}
               for name in CONFIGS}
    for _ in range(rounds):
        for name, row in results.items():
            if row["status"] != "ok":
                continue
            if not available(name):
                results[name] = {"status": "missing"}
                continue
            command = [sys.executable, __file__, "--one", name, "--n", str(n), "--timed", str(steps)]
            run = subprocess.run(command, capture_output=True, text=True, timeout=3600)
            if run.returncode != 0:
                results[name] = {"status": "failed", "error": run.stderr.strip().splitlines()[-1:]}
                continue
            one = json.loads(run.stdout.strip().splitlines()[-1])
            row["peak_mib"], row["above_params_mib"] = max(row["peak_mib"], one["peak_mib"]), max(row["above_params_mib"], one["above_params_mib"])
            row["above_params_by_round"].append(one["above_params_mib"])
            row["times_ms"] += one["times_ms"]
    for row in results.values():
        if row["status"] == "ok":
            row["ms"] = statistics.median(row["times_ms"])
    return results


def state_bytes(n):
    """Bytes of Adam's state per parameter, as ``state()`` holds it, per slot storage."""
    from numbaopt.optimizers import Adam

    out = {}
    for slot_dtype in (None, "bfloat16", "q8"):
        opt, p = Adam(slot_dtype=slot_dtype), np.zeros(n, np.float32)
        opt.apply_gradients([(np.ones(n, np.float32), p)])
        out[str(slot_dtype or "float32")] = sum(a.nbytes for a in sum(opt.state().slots.values(), [])) / n
    return out


# ------------------------------------------------------------------ convergence


def digits():
    """The 1797 8x8 digits scikit-learn ships (``sklearn/datasets/data/digits.csv.gz``),
    read as a file: features scaled to [0, 1], labels."""
    spec = importlib.util.find_spec("sklearn")
    if spec is None or spec.origin is None:
        return None
    path = Path(spec.origin).parent / "datasets" / "data" / "digits.csv.gz"
    with gzip.open(path, "rt") as f:
        data = np.loadtxt(f, delimiter=",", dtype=np.float32)
    return data[:, :-1] / 16.0, data[:, -1].astype(np.int64)


def train(x, y, dtype, slot_dtype, steps, batch=128, seed=0, stochastic=False):
    """A 64-128-10 tanh MLP with softmax cross-entropy, Adam(lr=3e-3), minibatches of
    ``batch``; the parameters in ``dtype`` (the forward and backward passes in float32
    from their values, the gradients rounded to ``dtype``). Returns the training loss
    over the whole set every 10 steps."""
    from numbaopt.optimizers import Adam

    if dtype == "bfloat16":
        import ml_dtypes

        dtype = ml_dtypes.bfloat16
    rng = np.random.default_rng(seed)
    shapes = [(64, 128), (128,), (128, 10), (10,)]
    params = [(rng.standard_normal(s) * (np.sqrt(1 / s[0]) if len(s) == 2 else 0)).astype(np.float32).astype(dtype)
              for s in shapes]
    opt = Adam(lr=3e-3, slot_dtype=slot_dtype, stochastic_rounding=stochastic)

    def loss_and_grads(xb, yb):
        w1, b1, w2, b2 = (p.astype(np.float32) for p in params)
        h = np.tanh(xb @ w1 + b1)
        z = h @ w2 + b2
        z -= z.max(axis=1, keepdims=True)
        probabilities = np.exp(z) / np.exp(z).sum(axis=1, keepdims=True)
        loss = -np.mean(np.log(probabilities[np.arange(len(yb)), yb] + 1e-12))
        dz = probabilities
        dz[np.arange(len(yb)), yb] -= 1
        dz /= len(yb)
        dh = (dz @ w2.T) * (1 - h * h)
        return loss, [xb.T @ dh, dh.sum(0), h.T @ dz, dz.sum(0)]

    curve = []
    for step in range(steps):
        if step % 10 == 0:
            curve.append(float(loss_and_grads(x, y)[0]))
        at = rng.integers(0, len(y), batch)
        _, grads = loss_and_grads(x[at], y[at])
        opt.apply_gradients(zip([g.astype(dtype) for g in grads], params))
    curve.append(float(loss_and_grads(x, y)[0]))
    return curve


def convergence(steps, seeds=1):
    """The training-loss curves of each storage configuration (the plot shows seed 0's) and
    their final losses for each of ``seeds`` seeds (initial weights and minibatches)."""
    data = digits()
    if data is None:
        return {"status": "missing (scikit-learn, for its digits CSV)"}
    x, y = data
    runs = {
        "float32": ("float32", None, False),
        "bfloat16 parameters, float32 slots": ("bfloat16", None, False),
        "bfloat16 slots": ("float32", "bfloat16", False),
        "q8 slots": ("float32", "q8", False),
        "bfloat16 parameters, q8 slots, stochastic rounding": ("bfloat16", "q8", True),
    }
    by_seed = {name: [train(x, y, dtype, slot_dtype, steps, seed=seed, stochastic=stochastic) for seed in range(seeds)]
               for name, (dtype, slot_dtype, stochastic) in runs.items()}
    return {"status": "ok", "steps": steps, "every": 10, "curves": {name: c[0] for name, c in by_seed.items()},
            "final": {name: c[0][-1] for name, c in by_seed.items()},
            "final_by_seed": {name: [curve[-1] for curve in c] for name, c in by_seed.items()}}


def plot(result, path):
    if importlib.util.find_spec("matplotlib") is None or result.get("status") != "ok":
        return False
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(7, 4))
    for name, curve in result["curves"].items():
        axis.plot(np.arange(len(curve)) * result["every"], curve, label=name, linewidth=1.2)
    axis.set_yscale("log")
    axis.set_xlabel("step")
    axis.set_ylabel("training loss (whole set)")
    axis.set_title("Adam on the digits MLP: float32, bfloat16 parameters, 8-bit state")
    axis.legend()
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    return True


def convergence_table(result, steps, seeds):
    """Print the final losses of ``convergence`` as a markdown table; whether it ran."""
    if result["status"] != "ok":
        print(f"\nconvergence: {result['status']}")
        return False
    final = result["final_by_seed"]
    print(f"\n| digits MLP, {steps} steps | final training loss, seed 0 to {seeds - 1} "
          "| mean over float32's |\n|---|---|---:|")
    for name, values in final.items():
        ratio = statistics.fmean(values) / statistics.fmean(final["float32"])
        print(f"| {name} | {', '.join(f'{v:.4f}' for v in values)} | {ratio:.4f} |")
    return True


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=float, default=5e7, help="parameters of the memory and time runs")
    parser.add_argument("--timed", type=int, default=9, help="timed steps per configuration and round")
    parser.add_argument("--rounds", type=int, default=3, help="processes per configuration, in alternating rounds")
    parser.add_argument("--steps", type=int, default=600, help="training steps of the convergence runs")
    parser.add_argument("--seeds", type=int, default=1, help="seeds of the convergence runs (final losses of each)")
    parser.add_argument("--out", default="docs", help="folder for memory.json and memory.png")
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--convergence-only", action="store_true",
                        help="only the convergence table (many seeds, quickly); writes nothing")
    parser.add_argument("--one", help=argparse.SUPPRESS)  # a child process: one configuration
    args = parser.parse_args()
    n = int(args.n)
    if args.one:
        print(json.dumps(measure_one(args.one, n, args.timed)))
        return
    if args.quick:
        n, args.timed, args.rounds, args.steps = 100_000, 3, 1, 30
    if args.convergence_only:
        convergence_table(convergence(args.steps, args.seeds), args.steps, args.seeds)
        return
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    results = {"n": n, "state_bytes_per_parameter": state_bytes(1 << 20)}
    print("| slot storage | state bytes per parameter |\n|---|---:|")
    for name, value in results["state_bytes_per_parameter"].items():
        print(f"| {name} | {value:.4f} |")
    results["steps"] = run_each(n, args.timed, args.rounds)
    float32 = results["steps"]["numbaopt float32"]
    print(f"\n| Adam over {n:.0e} parameters | peak RSS (MiB) | above parameters and gradients (MiB) | step (ms) "
          "| over float32 |\n|---|---:|---:|---:|---:|")
    for name, row in results["steps"].items():
        if row["status"] == "ok":
            ratio = row["ms"] / float32["ms"] if float32["status"] == "ok" else float("nan")
            print(f"| {name} | {row['peak_mib']:.0f} | {row['above_params_mib']:.0f} | {row['ms']:.1f} | {ratio:.2f} |")
        else:
            print(f"| {name} | {row['status']} | | |")
    results["convergence"] = convergence(args.steps, args.seeds)
    if convergence_table(results["convergence"], args.steps, args.seeds):
        results["plot"] = plot(results["convergence"], out / "memory.png")
    (out / "memory.json").write_text(json.dumps(results, indent=1) + "\n")


if __name__ == "__main__":
    main()
