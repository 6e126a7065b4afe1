"""How close numbaopt.torch.optim's optimizers stay to torch.optim's single-tensor step.

    python benchmarks/torch_optim_parity.py        # a Markdown table, one row per optimizer

For every registered torch.optim optimizer, every combination of its flags, at its defaults
and at one setting of its own away from them: 50 steps of both optimizers over three
tensors in two param groups (``lr`` 1e-3 and 3e-3), each tensor without a gradient every
fourth step, float64 and float32. Reported per optimizer, over all its runs: the largest
float64 error (per element, relative to torch's value), the largest float32 error (of the
whole tensor, relative to its norm), and how many runs ended bitwise equal.
(``tests/test_torch_optim_parity.py`` asserts the bounds: 1e-13 and 1e-6.)
"""
import itertools

import numpy as np
import torch

import numbaopt.torch.optim as nto
from numbaopt import registry

#: One setting per optimizer away from its defaults.
SETTINGS = {
    "SGD": {"momentum": 0.9, "dampening": 0.2, "weight_decay": 0.01}, "Adam": {"weight_decay": 0.1},
    "AdamW": {"betas": (0.3, 0.9)}, "Adamax": {"weight_decay": 0.1}, "NAdam": {"weight_decay": 0.1, "momentum_decay": 0.01},
    "RAdam": {"weight_decay": 0.1}, "RMSprop": {"momentum": 0.5, "weight_decay": 0.01},
    "Rprop": {"etas": (0.3, 1.5), "step_sizes": (1e-3, 0.1)},
    "Adagrad": {"lr_decay": 0.01, "initial_accumulator_value": 0.1, "weight_decay": 0.01},
    "Adadelta": {"weight_decay": 0.1, "rho": 0.5}, "ASGD": {"t0": 5, "lambd": 0.01, "weight_decay": 0.01},
    "Adafactor": {"weight_decay": 0.1, "eps": (1e-20, 1e-3), "d": 1.5, "beta2_decay": -0.5},
}
SHAPES = [(5, 3), (4,), (2, 3, 2)]


def run(name, kwargs, dtype, steps=50):
    """The parameters of numbaopt's and torch's optimizer after ``steps`` steps (None where torch refuses ``kwargs``)."""
    rng = np.random.default_rng(0)
    values = [rng.normal(size=s).astype(dtype) for s in SHAPES]
    params = [[torch.tensor(v.copy(), requires_grad=True) for v in values] for _ in range(2)]
    groups = [[{"params": ps[:2]}, {"params": ps[2:], "lr": 0.003}] for ps in params]
    try:
        theirs = getattr(torch.optim, name)(groups[1], foreach=False, **kwargs)
    except ValueError:
        return None
    ours = getattr(nto, name)(groups[0], **kwargs)
    for step in range(steps):
        for j, (a, b) in enumerate(zip(*params)):
            if (step + j) % 4 == 3:
                a.grad = b.grad = None
            else:
                g = rng.normal(size=a.shape).astype(dtype)
                a.grad, b.grad = torch.tensor(g), torch.tensor(g)
        ours.step()
        theirs.step()
    return [[p.detach().numpy() for p in ps] for ps in params]


def errors(name):
    cls = registry.optimizer_class(f"torch_optim.{name}")
    flags = [a.name for a in cls.arguments if a.kind == "flag"]
    worst = {np.float64: 0.0, np.float32: 0.0}
    runs = equal = 0
    for values in itertools.product((False, True), repeat=len(flags)):
        for setting in ({}, SETTINGS[name]):
            kwargs = {**setting, **dict(zip(flags, values))}
            for dtype in worst:
                result = run(name, kwargs, dtype)
                if result is None:
                    continue
                ours, theirs = result
                runs += 1
                equal += all(np.array_equal(a, b) for a, b in zip(ours, theirs))
                for a, b in zip(ours, theirs):
                    if dtype is np.float64:
                        error = float(np.max(np.abs(a - b) / np.maximum(np.abs(b), np.finfo(dtype).tiny)))
                    else:
                        error = float(np.linalg.norm(a - b) / np.linalg.norm(b))
                    worst[dtype] = max(worst[dtype], error)
    return flags, runs, equal, worst


def main():
    print("| optimizer | flags combined | runs | bitwise equal | float64, largest relative error | float32, largest norm-wise error |")
    print("|---|---|---:|---:|---:|---:|")
    for cls in registry.rule_based("torch_optim"):
        flags, runs, equal, worst = errors(cls.__name__)
        print(f"| {cls.__name__} | {', '.join(flags)} | {runs} | {equal} | {worst[np.float64]:.1e} | {worst[np.float32]:.1e} |")
    print(f"\ntorch {torch.__version__}")


if __name__ == "__main__":
    main()
