"""Replay the golden fixtures recorded from real Keras and compare, step by step.

Each fixture case (``docs/fixtures.md``) holds a run of a tf-keras legacy optimizer set up
to compute Keras 2.0's arithmetic: the initial parameters, the gradients of every step,
and the parameters and slots Keras had after every step. A replay rebuilds the optimizer
with ``numbaopt.optimizers.deserialize`` and applies the same gradients; it is done twice
per case:

* ``keras2``: from the Keras-2.0-style config (what numbaopt's ``get_config`` gives), fed
  the unclipped gradients, so numbaopt's own clipping is exercised;
* ``tf-keras``: from the config Keras's own ``get_config()`` returned, fed the gradients
  the Keras optimizer itself received (where the capture composed Keras 2.0's global-norm
  clipping outside the optimizer, those are the clipped ones; see ``docs/parity.md``).

After every step every parameter and every slot is compared with a relative error
``max|ours - keras| / max|keras|`` per tensor, which must stay within 1e-5 (float32) or
1e-10 (float64). ``iterations`` must match exactly. This module reads HDF5 with h5py only;
TensorFlow is not needed.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

#: Tolerance on the max relative error per tensor, by parameter dtype.
TOLERANCE = {"float32": 1e-5, "float64": 1e-10}

#: The two ways a case is replayed (see the module docstring).
ROUTES = ("keras2", "tf-keras")

#: Highest fixture format this module reads.
FORMAT_VERSION = 1


@dataclass
class Fixture:
    """One recorded case, read into memory."""

    file: str
    group: str
    optimizer: str
    case: str
    dtype: str
    steps: int
    keras2_config: dict
    keras_config: dict
    clipping: str
    param_names: list
    param_shapes: list
    slot_names: list
    params: np.ndarray  # (steps + 1, P): initial, then after each step, flattened
    grads: np.ndarray  # (steps, P): unclipped
    applied_grads: np.ndarray | None  # (steps, P): what Keras's optimizer received, if composed
    slots: np.ndarray  # (steps, n_slots, P)
    iterations: np.ndarray  # (steps,)
    m_schedule: np.ndarray | None  # (steps,), Nadam only
    versions: dict = field(default_factory=dict)

    @property
    def label(self):
        return f"{self.optimizer}/{self.case}/{self.dtype}"

    def unflatten(self, flat):
        """A list of C-contiguous arrays, one per parameter, copied out of a flat vector."""
        out, offset = [], 0
        for shape in self.param_shapes:
            size = int(np.prod(shape, dtype=np.int64))
            out.append(np.array(flat[offset:offset + size].reshape(shape), dtype=self.dtype, order="C"))
            offset += size
        return out


@dataclass
class Result:
    """The outcome of one replay."""

    optimizer: str
    case: str
    dtype: str
    config: str  # a member of ROUTES
    steps: int
    max_error: float
    tolerance: float
    passed: bool
    worst_step: int | None = None  # 1-based step where max_error occurred
    worst_tensor: str | None = None
    error: str | None = None  # an exception that stopped the replay
    file: str = ""


# ------------------------------------------------------------------------- loading


def default_fixture_dir():
    """The shipped fixtures: ``$NUMBAOPT_FIXTURES``; else ``fixtures/`` inside the package,
    beside it (a source checkout or an editable install), or in the working directory."""
    env = os.environ.get("NUMBAOPT_FIXTURES")
    if env:
        return Path(env)
    here = Path(__file__).resolve().parent
    candidates = (here / "fixtures", here.parent / "fixtures", Path.cwd() / "fixtures")
    for candidate in candidates:
        if any(candidate.glob("*.h5")):
            return candidate
    return candidates[1]


def fixture_files(path=None):
    """The ``.h5`` files at ``path`` (a file or a folder; default the shipped fixtures)."""
    path = Path(path) if path is not None else default_fixture_dir()
    if path.is_file():
        return [path]
    if path.is_dir():
        files = sorted(path.glob("*.h5"))
        if files:
            return files
    raise FileNotFoundError(f"no fixture files (*.h5) at {path}")


def _attr(v):
    if isinstance(v, bytes):
        return v.decode()
    if isinstance(v, np.generic):
        return v.item()
    return v


def load_fixtures(path=None):
    """Every case in the fixture files at ``path``, as ``Fixture`` objects, in file order."""
    import h5py

    fixtures = []
    for file in fixture_files(path):
        try:
            fixtures += _read_fixture_file(h5py, file)
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{file}: not a numbaopt fixture file (missing or bad {exc})") from None
    return fixtures


def _read_fixture_file(h5py, file):
    """The cases of one fixture file (a ValueError when it is not one)."""
    fixtures = []
    with h5py.File(file, "r") as f:
        meta = {k: _attr(v) for k, v in f.attrs.items()}
        if "capture_script" not in meta or "format_version" not in meta:
            raise ValueError(f"{file}: not a numbaopt fixture file (no capture_script and format_version attributes)")
        if int(meta.get("format_version", 0)) > FORMAT_VERSION:
            raise ValueError(f"{file}: fixture format {meta['format_version']} is newer than "
                             f"this numbaopt reads ({FORMAT_VERSION})")
        for name, grp in f.items():
            a = {k: _attr(v) for k, v in grp.attrs.items()}
            d = {k: ds[()] for k, ds in grp.items()}
            fixtures.append(Fixture(
                file=str(file), group=name, optimizer=a["optimizer"], case=a["case"],
                dtype=a["dtype"], steps=int(a["steps"]),
                keras2_config=json.loads(a["keras2_config"]),
                keras_config=json.loads(a["keras_config"]),
                clipping=a["clipping"],
                param_names=json.loads(a["param_names"]),
                param_shapes=[tuple(s) for s in json.loads(a["param_shapes"])],
                slot_names=json.loads(a["slot_names"]),
                params=d["params"], grads=d["grads"], applied_grads=d.get("applied_grads"),
                slots=d["slots"], iterations=d["iterations"], m_schedule=d.get("m_schedule"),
                versions={k: v for k, v in meta.items() if k.endswith("_version")},
            ))
    return fixtures


# -------------------------------------------------------------------------- replay


def relative_error(ours, keras):
    """``max|ours - keras| / max|keras|`` over a tensor, in float64.

    Values below the smallest normal number of the reference's dtype count as zero on both
    sides, and the denominator is floored at that number: TensorFlow's CPU kernels flush
    denormals to zero, so Keras records 0 where numbaopt keeps, say, a float32 run's Nadam
    ``m_schedule`` (which underflows after about 110 steps) as a tiny float64; below the
    normal range a float has no relative precision to compare anyway.
    """
    keras = np.asarray(keras)
    ours = np.asarray(ours)
    if ours.shape != keras.shape:
        return math.inf
    if ours.size == 0:
        return 0.0
    tiny = float(np.finfo(keras.dtype if keras.dtype.kind == "f" else np.float64).tiny)
    k = keras.astype(np.float64)
    o = ours.astype(np.float64)
    if not (np.all(np.isfinite(o)) and np.all(np.isfinite(k))):
        return 0.0 if np.array_equal(o, k, equal_nan=True) else math.inf
    k = np.where(np.abs(k) < tiny, 0.0, k)
    o = np.where(np.abs(o) < tiny, 0.0, o)
    return float(np.abs(o - k).max() / max(float(np.abs(k).max()), tiny))


def _to_device(arrays, device):
    if device == "cpu":
        return arrays
    from numba import cuda

    return [cuda.to_device(a) for a in arrays]


def _host(x):
    if hasattr(x, "copy_to_host"):
        return x.copy_to_host()
    if hasattr(x, "get") and not isinstance(x, np.ndarray):  # CuPy
        return x.get()
    return np.asarray(x)


def build_optimizer(fixture, route):
    """The numbaopt optimizer for ``fixture`` as ``route`` describes it."""
    from numbaopt import optimizers

    config = fixture.keras2_config if route == "keras2" else fixture.keras_config
    return optimizers.deserialize({"class_name": fixture.optimizer, "config": dict(config)})


def replay(fixture, route="keras2", device="cpu"):
    """Replay ``fixture`` through numbaopt and return a ``Result``."""
    tol = TOLERANCE[fixture.dtype]
    result = Result(fixture.optimizer, fixture.case, fixture.dtype, route, fixture.steps,
                    0.0, tol, False, file=fixture.file)
    if route == "keras2" or fixture.clipping != "composed":
        grads_all = fixture.grads
    else:
        grads_all = fixture.applied_grads
    try:
        opt = build_optimizer(fixture, route)
        slot_names = list(getattr(opt, "slot_names", fixture.slot_names))
        if slot_names != list(fixture.slot_names):
            raise ValueError(f"slot kinds {slot_names} differ from the fixture's {fixture.slot_names}")
        n = len(fixture.param_shapes)
        has_schedule = fixture.m_schedule is not None
        params = _to_device(fixture.unflatten(fixture.params[0]), device)
        worst = (0.0, None, None)

        def check(step, label, ours, keras):
            nonlocal worst
            err = relative_error(ours, keras)
            if err > worst[0]:
                worst = (err, step, label)

        for step in range(fixture.steps):
            grads = _to_device(fixture.unflatten(grads_all[step]), device)
            opt.apply_gradients(list(zip(grads, params)))
            ref_params = fixture.unflatten(fixture.params[step + 1])
            for i in range(n):
                check(step + 1, f"param {fixture.param_names[i]}", _host(params[i]), ref_params[i])
            weights = [_host(w) for w in opt.get_weights()]
            expected_len = 1 + int(has_schedule) + len(slot_names) * n
            if len(weights) != expected_len:
                raise ValueError(f"get_weights gave {len(weights)} arrays, expected {expected_len}")
            iterations = int(np.asarray(weights[0]).reshape(()))
            if iterations != int(fixture.iterations[step]) or iterations != opt.iterations:
                worst = (math.inf, step + 1,
                         f"iterations {iterations} (attribute {opt.iterations}), Keras {fixture.iterations[step]}")
            offset = 1
            if has_schedule:
                check(step + 1, "m_schedule", weights[1], fixture.m_schedule[step])
                offset = 2
            for k, kind in enumerate(slot_names):
                ref = fixture.unflatten(fixture.slots[step, k])
                for i in range(n):
                    check(step + 1, f"{kind} {fixture.param_names[i]}", weights[offset + k * n + i], ref[i])
        result.max_error, result.worst_step, result.worst_tensor = worst
        result.passed = result.max_error <= tol
    except Exception as exc:  # a replay that cannot run is a failed replay, reported as such
        result.max_error = math.inf
        result.error = f"{type(exc).__name__}: {exc}"
        result.passed = False
    return result


def run_all(path=None, device="cpu", routes=ROUTES):
    """Replay every case at ``path`` by every route; a list of ``Result``."""
    return [replay(fx, route, device) for fx in load_fixtures(path) for route in routes]


# ---------------------------------------------------------------------- reporting


def _format_error(x):
    return "inf" if x == math.inf else f"{x:.2e}"


def format_table(results):
    """The results as a fixed-width text table, one row per replay."""
    headers = ("optimizer", "case", "dtype", "config", "steps", "max error", "tolerance", "verdict")
    rows = []
    for r in results:
        verdict = "ok" if r.passed else "FAIL"
        rows.append((r.optimizer, r.case, r.dtype, r.config, str(r.steps),
                     _format_error(r.max_error), f"{r.tolerance:.0e}", verdict))
    widths = [max(len(h), *(len(row[i]) for row in rows)) if rows else len(h)
              for i, h in enumerate(headers)]
    right = {4, 5, 6}
    fmt = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    for r in results:
        if not r.passed:
            where = r.error or f"step {r.worst_step}, {r.worst_tensor}"
            lines.append(f"FAIL {r.optimizer}/{r.case}/{r.dtype} ({r.config}): {where}")
    return "\n".join(lines)


def summary(results):
    """One line: how many replays passed, and the worst error per dtype."""
    failed = [r for r in results if not r.passed]
    cases = {(r.file, r.optimizer, r.case, r.dtype) for r in results}
    worst = {}
    for r in results:
        worst[r.dtype] = max(worst.get(r.dtype, 0.0), r.max_error)
    worst_text = ", ".join(f"{d} {_format_error(e)} (tolerance {TOLERANCE[d]:.0e})"
                           for d, e in sorted(worst.items()))
    status = "PASSED" if not failed else f"FAILED ({len(failed)} failed)"
    return (f"parity {status}: {len(results) - len(failed)}/{len(results)} replays of "
            f"{len(cases)} Keras fixture cases within tolerance; worst error {worst_text}")


def run_parity(path=None, device="cpu", as_json=False, out=None):
    """Replay every fixture and print the table (or JSON); the exit status: 0 all passed,
    1 a replay failed, 2 nothing could be replayed (no fixtures, no CUDA)."""
    out = out or sys.stdout
    try:
        if device == "cuda":
            from numba import cuda

            if not cuda.is_available():
                raise RuntimeError("--device cuda: no usable CUDA GPU (numba.cuda.is_available() is False)")
        results = run_all(path, device)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "results": []}), file=out)
        else:
            print(f"numbaopt parity: {exc}", file=out)
        return 2
    ok = all(r.passed for r in results)
    if as_json:
        fixtures = load_fixtures(path)
        versions = fixtures[0].versions if fixtures else {}
        doc = {
            "ok": ok,
            "device": device,
            "fixtures": str(Path(path) if path is not None else default_fixture_dir()),
            "reference": versions,
            "tolerance": TOLERANCE,
            "passed": sum(r.passed for r in results),
            "failed": sum(not r.passed for r in results),
            "summary": summary(results),
            "results": [{k: (None if isinstance(v, float) and math.isinf(v) else v)
                         for k, v in asdict(r).items()} for r in results],
        }
        print(json.dumps(doc, indent=1), file=out)
    else:
        print(format_table(results), file=out)
        print(summary(results), file=out)
    return 0 if ok else 1


# --------------------------------------------------------------------------- CLI

DESCRIPTION = ("Replay the golden fixtures recorded from real Keras (tf-keras legacy optimizers "
               "set up for Keras 2.0 arithmetic) through numbaopt and compare parameters and "
               "slots after every step.")


def _configure(parser):
    parser.add_argument("path", nargs="?", default=None,
                        help="a fixture file or folder (default: the shipped fixtures)")
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the parameters live during the replay (default: cpu)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=main_parity)
    return parser


def add_parser(subparsers):
    """Register ``parity`` on an ``argparse`` subparsers object; ``args.func(args)`` runs it."""
    return _configure(subparsers.add_parser("parity", help="check numbaopt against the Keras fixtures",
                                            description=DESCRIPTION))


def main_parity(args):
    """Run from parsed arguments (``path``, ``device``, ``json``); returns the exit status."""
    return run_parity(args.path, device=args.device, as_json=args.json)


def main(argv=None):
    """``python -m numbaopt.parity [PATH] [--device cpu|cuda] [--json]``."""
    args = _configure(argparse.ArgumentParser(prog="numbaopt parity", description=DESCRIPTION)).parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
