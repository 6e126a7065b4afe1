"""On a GPU: numbaopt's CUDA kernels against torch.optim's fused and foreach AdamW.

    python benchmarks/cuda_step.py            # one JSON line: medians in ms, GB/s, ratios
    python benchmarks/cuda_step.py --quick    # small sizes and short timings: a smoke test

Float32 parameters on the GPU, AdamW (lr 1e-3, weight decay 1e-2). Contenders, each
stepping parameters of its own, measured in alternating rounds in one process
(``suite.measure``, every call followed by a device synchronisation, so a median is the
step's whole latency):

- ``numbaopt``: ``numbaopt.torch.optim.AdamW`` on the CUDA tensors;
- ``numbaopt-core``: ``numbaopt.keras3.AdamW`` on Numba device arrays (the core API, no torch);
- ``numbaopt-bf16`` / ``numbaopt-q8``: ``numbaopt.torch.optim.AdamW`` with ``slot_dtype``
  bfloat16 and q8 (8-bit block-wise state);
- ``torch-fused`` / ``torch-foreach``: ``torch.optim.AdamW(fused=True)`` / ``(foreach=True)``;
- ``copy``: ``dst.copy_(src)`` of the bytes a float32 AdamW step moves (parameter,
  gradient and two slots read, parameter and two slots written: 28 bytes per element), the
  bandwidth ceiling.

``GB/s`` counts those 28 bytes per element (for q8 and bf16 state as well, so that their
figure is comparable: it is the float32 step's traffic over the time taken).
"""
import argparse
import json
import statistics
import time

import numpy as np
import torch
from numba import cuda

import numbaopt.keras3 as k3
import numbaopt.torch.optim as nto

BYTES_PER_ELEMENT = 28
MLP = [(64, 32), (32,), (32, 10), (10,)] + [(256, 256), (256,)] * 8


def cases(quick):
    if quick:
        return {"1e5": [(100_000,)], "mlp": MLP}
    return {"mlp": MLP, "1e6": [(1_000_000,)], "1e7": [(10_000_000,)], "5e7": [(50_000_000,)],
            "200x1e6": [(1000, 1000)] * 200}


def synchronize():
    torch.cuda.synchronize()
    cuda.synchronize()


def tensors(shapes, seed=0):
    generator = torch.Generator(device="cuda").manual_seed(seed)
    params = [torch.nn.Parameter(torch.randn(*s, generator=generator, device="cuda")) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, generator=generator, device="cuda") * 1e-3
    return params


def core_step(shapes):
    params = [cuda.as_cuda_array(p.detach()) for p in tensors(shapes)]
    grads = [cuda.as_cuda_array(torch.randn(p.shape, device="cuda") * 1e-3) for p in params]
    opt = k3.AdamW(learning_rate=1e-3, weight_decay=1e-2)
    pairs = list(zip(grads, params))
    return lambda: opt.apply_gradients(pairs)


def copy_step(elements):
    half = BYTES_PER_ELEMENT * elements // 8  # float32 elements read (and as many written)
    src, dst = torch.empty(half, device="cuda"), torch.empty(half, device="cuda")
    return lambda: dst.copy_(src)


def synchronized(step):
    def call():
        step()
        synchronize()
    return call


def measure(steps, min_time, rounds=5):
    """Median seconds per synchronised call of each step, in alternating rounds."""
    samples = {name: [] for name in steps}
    for step in steps.values():
        for _ in range(3):
            step()
    for _ in range(rounds):
        for name, step in steps.items():
            began = time.perf_counter()
            while len(samples[name]) < 5 or time.perf_counter() - began < min_time / rounds:
                start = time.perf_counter()
                step()
                samples[name].append(time.perf_counter() - start)
    return {name: statistics.median(s) for name, s in samples.items()}


def measure_case(shapes, min_time):
    elements = int(sum(np.prod(s) for s in shapes))
    makers = {
        "numbaopt": lambda: nto.AdamW(tensors(shapes), weight_decay=1e-2).step,
        "numbaopt-core": lambda: core_step(shapes),
        "numbaopt-bf16": lambda: nto.AdamW(tensors(shapes), weight_decay=1e-2, slot_dtype="bfloat16").step,
        "numbaopt-q8": lambda: nto.AdamW(tensors(shapes), weight_decay=1e-2, slot_dtype="q8").step,
        "torch-fused": lambda: torch.optim.AdamW(tensors(shapes), weight_decay=1e-2, fused=True).step,
        "torch-foreach": lambda: torch.optim.AdamW(tensors(shapes), weight_decay=1e-2, foreach=True).step,
        "copy": lambda: copy_step(elements),
    }
    steps, failed = {}, {}
    for name, make in makers.items():
        try:
            step = synchronized(make())
            step()
            steps[name] = step
        except Exception as error:  # a contender that fails is reported, the others still run
            failed[name] = f"{type(error).__name__}: {error}"
    medians = measure(steps, min_time)

    def ratio(a, b):
        return round(medians[a] / medians[b], 3) if a in medians and b in medians else None

    fastest_torch = "torch-fused" if ratio("torch-fused", "torch-foreach") <= 1 else "torch-foreach"
    return {
        "failed": failed,
        "elements": elements,
        "ms": {name: round(t * 1e3, 4) for name, t in medians.items()},
        "GB/s": {name: round(BYTES_PER_ELEMENT * elements / t / 1e9, 1) for name, t in medians.items()},
        "numbaopt_over_fastest_torch": ratio("numbaopt", fastest_torch),
        "core_over_fastest_torch": ratio("numbaopt-core", fastest_torch),
        "q8_over_float32": ratio("numbaopt-q8", "numbaopt"),
        "bf16_over_float32": ratio("numbaopt-bf16", "numbaopt"),
        "numbaopt_over_copy": ratio("numbaopt", "copy"),
    }


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="small sizes, short timings")
    args = parser.parse_args(argv)
    min_time = 0.2 if args.quick else 1.0
    results = {"gpu": torch.cuda.get_device_name(), "torch": torch.__version__,
               "numba_cuda": __import__("numba_cuda").__version__ if _has("numba_cuda") else None}
    for name, shapes in cases(args.quick).items():
        results[name] = measure_case(shapes, min_time)
        print(json.dumps({name: results[name]}), flush=True)
    print(json.dumps(results))
    return 0


def _has(module):
    import importlib.util

    return importlib.util.find_spec(module) is not None


if __name__ == "__main__":
    raise SystemExit(main())
