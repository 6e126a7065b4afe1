"""numbaopt.torch.optim.AdamW against torch.optim.AdamW(fused=True) and (foreach=True).

    python benchmarks/torch_optim.py            # one JSON line: medians in ms, ratios, state bytes
    python benchmarks/torch_optim.py --quick    # short timings, small sizes: a smoke test
    python benchmarks/torch_optim.py --scale 0.25   # the large cases at a quarter of their elements

Three cases of float32 parameters, each measured in one process in alternating rounds
(``suite.measure``): ``mlp``, the 20 tensors of an MLP (small: the per-step Python cost
matters); ``200x1e6``, 200 tensors of 1000x1000; ``5e7``, one tensor of 5e7 elements.
Each contender steps parameters of its own. The ratio is numbaopt's median over the
fastest torch variant's (goal: at most 1.0). ``state_bytes`` is the memory of the optimizer
state after a step: torch's ``state`` tensors, numbaopt's slots and per-parameter scalars.
"""
import argparse
import json

import numpy as np
import torch

import numbaopt.torch.optim as nto
from suite import measure
from torch_step import MLP, tensors


def cases(scale):
    side = int(round(1000 * scale ** 0.5))
    return {"mlp": MLP, "200x1e6": [(side, side)] * 200, "5e7": [(int(5e7 * scale),)]}


def state_bytes(opt):
    """Bytes of the optimizer state torch's ``state_dict`` reports (slots and scalars)."""
    state = opt.state_dict()["state"]
    return sum(v.numel() * v.element_size() for entry in state.values() for v in entry.values() if torch.is_tensor(v))


def measure_case(shapes, min_time):
    optimizers = {
        "numbaopt": nto.AdamW(tensors(shapes)),
        "torch-fused": torch.optim.AdamW(tensors(shapes), fused=True),
        "torch-foreach": torch.optim.AdamW(tensors(shapes), foreach=True),
    }
    medians = measure({name: opt.step for name, opt in optimizers.items()}, min_time, rounds=5)
    fastest = min(medians["torch-fused"], medians["torch-foreach"])
    return {
        "ms": {name: value * 1e3 for name, value in medians.items()},
        "numbaopt_over_fastest_torch": medians["numbaopt"] / fastest,
        "state_bytes": {name: state_bytes(opt) for name, opt in optimizers.items()},
    }


def run(quick=False, scale=1.0):
    min_time = 0.1 if quick else 3.0
    results = {}
    for name, shapes in cases(0.001 if quick else scale).items():
        results[name] = measure_case(shapes, min_time)
    return {"scale": 0.001 if quick else scale, "threads": {"torch": torch.get_num_threads(), "numba": __import__("numba").get_num_threads()},
            "cases": results, "elements": {name: int(sum(np.prod(s) for s in shapes)) for name, shapes in cases(scale).items()}}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings, small sizes")
    parser.add_argument("--scale", type=float, default=1.0, help="fraction of the large cases' elements")
    args = parser.parse_args(argv)
    print(json.dumps(run(args.quick, args.scale)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
