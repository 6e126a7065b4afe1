"""numbaopt.keras3 against its peers, in one run: medians of step times, and ratios.

    python benchmarks/keras3.py [--n 10000000] [--steps 30] [--json out.json]

Three tables (float32):

* one big tensor of ``--n`` elements: every element-wise Keras 3 optimizer at Keras's
  defaults (SGD also with momentum 0.9), the memory roofline of its traffic (roofline.py's
  bandwidth, measured in this process, times the bytes the step must move), and torch's
  fastest implementation of the same optimizer (fused where torch has one, else foreach);
* the 20 tensors of a small MLP (~0.27 M parameters), the same peers;
* Adafactor and Lamb against optax's (``optax.adafactor``, ``optax.lamb`` under
  ``jax.jit`` with the parameters donated), on a few matrices.

Peers compute their own formulas (torch's epsilon placement, optax's factoring): this
compares speed, not results. A peer not installed is reported as such.
"""
import argparse
import json
import platform
import statistics
import time

import numpy as np

import peers
import roofline
from numbaopt import keras3

#: numbaopt.keras3 settings benchmarked besides the defaults, by row name.
ROWS = {
    "SGD": ("SGD", {}),
    "SGD momentum": ("SGD", {"momentum": 0.9}),
    "RMSprop": ("RMSprop", {}),
    "Adagrad": ("Adagrad", {}),
    "Adadelta": ("Adadelta", {}),
    "Adam": ("Adam", {}),
    "Adam amsgrad": ("Adam", {"amsgrad": True}),
    "AdamW": ("AdamW", {}),
    "Adamax": ("Adamax", {}),
    "Nadam": ("Nadam", {}),
    "Ftrl": ("Ftrl", {}),
    "Lion": ("Lion", {}),
    "ScheduleFreeAdamW": ("ScheduleFreeAdamW", {}),
}

#: The MLP's tensors: 784-256-256-10 with biases, and a few more small layers (20 tensors).
MLP = [(784, 256), (256,), (256, 256), (256,), (256, 10), (10,)] + [(32, 32), (32,)] * 7


def _torch_step(row, params, grads):
    """torch's fastest ``step()`` for the row, and which implementation it is; None if torch has none."""
    try:
        import torch
    except ImportError:
        return None, "torch not installed"
    name, settings = ROWS[row]
    classes = {
        "SGD": lambda ps, **k: torch.optim.SGD(ps, lr=0.01, momentum=settings.get("momentum", 0.0), **k),
        "RMSprop": lambda ps, **k: torch.optim.RMSprop(ps, lr=0.001, alpha=0.9, eps=1e-7, **k),
        "Adagrad": lambda ps, **k: torch.optim.Adagrad(ps, lr=0.001, initial_accumulator_value=0.1, eps=1e-7, **k),
        "Adadelta": lambda ps, **k: torch.optim.Adadelta(ps, lr=0.001, rho=0.95, eps=1e-7, **k),
        "Adam": lambda ps, **k: torch.optim.Adam(ps, lr=0.001, eps=1e-7, amsgrad=settings.get("amsgrad", False), **k),
        "AdamW": lambda ps, **k: torch.optim.AdamW(ps, lr=0.001, eps=1e-7, weight_decay=0.004, **k),
        "Adamax": lambda ps, **k: torch.optim.Adamax(ps, lr=0.001, eps=1e-7, **k),
        "Nadam": lambda ps, **k: torch.optim.NAdam(ps, lr=0.001, eps=1e-7, **k),
    }
    if name not in classes:
        return None, "no such torch.optim optimizer"
    tensors = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    for t, g in zip(tensors, grads):
        t.grad = torch.from_numpy(g.copy())
    for variant in ("fused", "foreach"):
        try:
            opt = classes[name](tensors, **{variant: True})
            opt.step()
            return opt.step, variant
        except (RuntimeError, TypeError, ValueError):
            continue
    return None, "no fused or foreach variant"


def _median_ms(step, steps):
    step()
    step()
    times = []
    for _ in range(steps):
        start = time.perf_counter()
        step()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


def _numbaopt_step(name, settings, params, grads):
    opt = getattr(keras3, name)(**settings)
    pairs = list(zip(grads, params))
    return lambda: opt.apply_gradients(pairs)


def element_wise(shapes, steps, with_roofline, rounds=3):
    """Rows of (optimizer, numbaopt ms, roofline ms, torch ms, torch implementation).

    numbaopt, the roofline and torch run in alternating rounds, so a burst of load from
    elsewhere hits them alike; each figure is the median over every round's steps."""
    rng = np.random.default_rng(0)
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [rng.normal(size=s).astype(np.float32) * 1e-3 for s in shapes]
    n = sum(p.size for p in params)
    roof = roofline.build(2, n, np.float32) if with_roofline else None
    rows = []
    for row, (name, settings) in ROWS.items():
        ours_step = _numbaopt_step(name, settings, [p.copy() for p in params], grads)
        torch_step, variant = _torch_step(row, params, grads)
        times = {"numbaopt": [], "roofline": [], "torch": []}
        for _ in range(rounds):
            for key, step in (("numbaopt", ours_step), ("roofline", roof), ("torch", torch_step)):
                if step is not None:
                    times[key].append(_median_ms(step, max(steps // rounds, 3)))
        ours = statistics.median(times["numbaopt"])
        n_slots = len(getattr(keras3, name)(**settings).slots)
        bound = None
        if times["roofline"]:  # the 2-slot roofline's bandwidth, times this optimizer's bytes
            bandwidth = roofline.bytes_per_element(2, 4) * n / (statistics.median(times["roofline"]) / 1e3)
            bound = roofline.bytes_per_element(n_slots, 4) * n / bandwidth * 1e3
        theirs = statistics.median(times["torch"]) if times["torch"] else None
        rows.append({"optimizer": row, "numbaopt_ms": ours, "roofline_ms": bound, "torch_ms": theirs, "torch": variant})
        print(f"  {row:18s} numbaopt {ours:8.3f} ms  roofline {bound if bound is None else round(bound, 3)!s:>8}  "
              f"torch {theirs if theirs is None else round(theirs, 3)!s:>8} ({variant})", flush=True)
    return rows


def tensor_wise(steps):
    """Adafactor and Lamb (numbaopt.keras3) against optax's under jax.jit."""
    shapes = [(1024, 1024), (1024,), (1024, 256), (256,)]
    rng = np.random.default_rng(0)
    params = [rng.normal(size=s).astype(np.float32) for s in shapes]
    grads = [rng.normal(size=s).astype(np.float32) * 1e-3 for s in shapes]
    rows = []
    for name, optax_name in (("Adafactor", "adafactor"), ("Lamb", "lamb")):
        ours = _median_ms(_numbaopt_step(name, {}, [p.copy() for p in params], grads), steps)
        theirs, note = None, ""
        try:
            import jax
            import optax

            theirs = _median_ms(peers.optax_step(getattr(optax, optax_name)(1e-3), params, grads), steps)
            note = f"optax {optax.__version__}, jax {jax.__version__}"
        except (ImportError, peers.Missing) as error:
            note = f"not installed ({error})"
        rows.append({"optimizer": name, "numbaopt_ms": ours, "optax_ms": theirs, "optax": note})
        print(f"  {name:18s} numbaopt {ours:8.3f} ms  optax {theirs if theirs is None else round(theirs, 3)!s:>8} ({note})", flush=True)
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=10_000_000)
    parser.add_argument("--steps", type=int, default=30)
    parser.add_argument("--json")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, python {platform.python_version()}")
    print(f"one tensor of {args.n:.0e} float32 elements:")
    big = element_wise([(args.n,)], args.steps, True)
    print("MLP, 20 tensors:")
    small = element_wise(MLP, args.steps * 10, False)
    print("tensor-wise, 4 tensors (1.3 M parameters):")
    tensors = tensor_wise(args.steps)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"n": args.n, "big": big, "mlp": small, "tensor_wise": tensors}, f, indent=1)


if __name__ == "__main__":
    main()
