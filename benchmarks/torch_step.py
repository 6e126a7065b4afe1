"""numbaopt.torch's step against torch's own Adam and against numbaopt's NumPy API.

    python benchmarks/torch_step.py            # one JSON line: medians in ms and the ratios
    python benchmarks/torch_step.py --quick    # short timings, small sizes: a smoke test
    python benchmarks/torch_step.py --threads 1    # both libraries on one thread

Two cases, each measured in one process in alternating rounds (``suite.measure``), so that
load from elsewhere hits every contender alike:

* ``mlp``: the parameters of an MLP, 20 float32 tensors (64x32, 32, 32x10, 10 and eight
  256x256 weights with their biases): ``numbaopt.torch.Adam.step()`` against
  ``torch.optim.Adam(fused=True)`` and ``(foreach=True)``. Small tensors: the per-step
  Python cost matters here.
* ``1e7``: one tensor of 1e7 float32: ``numbaopt.torch.Adam.step()`` against
  ``numbaopt.optimizers.Adam().apply_gradients`` on NumPy views of the same memory.
"""
import argparse
import json
import sys

import torch

import numbaopt.torch as nt
from numbaopt import optimizers
from suite import measure

MLP = [(64, 32), (32,), (32, 10), (10,)] + [(256, 256), (256,)] * 8
BIG = [(10_000_000,)]


def tensors(shapes, seed=0):
    """Parameters with gradients, as after ``backward()``."""
    generator = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=generator)) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator) * 1e-3
    return params


def mlp_steps():
    steps = {"numbaopt.torch": nt.Adam(tensors(MLP)).step}
    for variant in ("fused", "foreach"):
        steps[f"torch-{variant}"] = torch.optim.Adam(tensors(MLP), **{variant: True}).step
    return steps


def big_steps(shapes=BIG):
    params = tensors(shapes)
    core = optimizers.Adam()
    pairs = [(p.grad.numpy(), p.detach().numpy()) for p in params]
    return {"numbaopt.torch": nt.Adam(params).step, "numpy-api": lambda: core.apply_gradients(pairs)}


def run(quick=False):
    min_time = 0.1 if quick else 3.0
    mlp = measure(mlp_steps(), min_time, rounds=5)
    big = measure(big_steps([(100_000,)] if quick else BIG), min_time, rounds=5)
    ms = {case: {k: v * 1e3 for k, v in timed.items()} for case, timed in (("mlp", mlp), ("1e7", big))}
    return {
        "ms": ms,
        "threads": {"torch": torch.get_num_threads(), "numba": __import__("numba").get_num_threads()},
        "mlp_numbaopt_over_fused": mlp["numbaopt.torch"] / mlp["torch-fused"],
        "mlp_foreach_over_numbaopt": mlp["torch-foreach"] / mlp["numbaopt.torch"],
        "1e7_numbaopt_torch_over_numpy_api": big["numbaopt.torch"] / big["numpy-api"],
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="short timings, a small tensor instead of 1e7")
    parser.add_argument("--threads", type=int, help="threads for torch and Numba alike (default: their own defaults)")
    args = parser.parse_args(argv)
    if args.threads:
        import numba

        torch.set_num_threads(args.threads)
        numba.set_num_threads(args.threads)
    print(json.dumps(run(args.quick)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
