"""The parity report: a table or JSON of replay results, and ``run_parity``, the whole job."""
from __future__ import annotations

import json
import math
import os
import sys
from collections.abc import Callable, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from numbaopt.parity.fixtures import default_fixture_dir, load_fixtures
from numbaopt.parity.replays import TOLERANCE, replay, routes_of

if TYPE_CHECKING:
    from numbaopt.parity.fixtures import Fixture, Keras3Fixture
    from numbaopt.parity.replays import Result


def _format_error(x: float) -> str:
    return "inf" if x == math.inf else f"{x:.2e}"


def format_table(results: Sequence[Result]) -> str:
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
    fmt: Callable[[Sequence[str]], str] = lambda row: "  ".join(c.rjust(w) if i in right else c.ljust(w)  # noqa: E731
                                for i, (c, w) in enumerate(zip(row, widths))).rstrip()
    lines = [fmt(headers), fmt(["-" * w for w in widths])]
    lines += [fmt(row) for row in rows]
    for r in results:
        if not r.passed:
            where = r.error or f"step {r.worst_step}, {r.worst_tensor}"
            lines.append(f"FAIL {r.optimizer}/{r.case}/{r.dtype} ({r.config}): {where}")
    return "\n".join(lines)


def summary(results: Sequence[Result]) -> str:
    """One line: how many replays passed, and the worst error per dtype."""
    failed = [r for r in results if not r.passed]
    cases = {(r.file, r.optimizer, r.case, r.dtype) for r in results}
    worst: dict[str, float] = {}
    for r in results:
        worst[r.dtype] = max(worst.get(r.dtype, 0.0), r.max_error)
    worst_text = ", ".join(f"{d} {_format_error(e)} (tolerance {TOLERANCE[d]:.0e})"
                           for d, e in sorted(worst.items()))
    status = "PASSED" if not failed else f"FAILED ({len(failed)} failed)"
    return (f"parity {status}: {len(results) - len(failed)}/{len(results)} replays of "
            f"{len(cases)} Keras fixture cases within tolerance; worst error {worst_text}")


class Progress:
    """Progress of a parity run on ``stream`` (stderr): a bar redrawn in place on a terminal,
    a line per fixture otherwise (a log, CI), so a long run never looks stuck."""

    def __init__(self, total: int, stream: TextIO) -> None:
        self.total, self.done, self.stream = total, 0, stream
        self.bar = stream.isatty() if hasattr(stream, "isatty") else False

    def advance(self, fixture: Fixture | Keras3Fixture, results: Sequence[Result]) -> None:
        self.done += 1
        verdict = "ok" if all(r.passed for r in results) else "FAIL"
        if self.bar:
            filled = 30 * self.done // self.total
            end = "\n" if self.done == self.total else ""
            print(f"\r[{'#' * filled}{'.' * (30 - filled)}] {self.done}/{self.total} {fixture.label:<40.40}",
                  end=end, file=self.stream, flush=True)
        else:
            print(f"parity {self.done}/{self.total} {fixture.label} {verdict}", file=self.stream, flush=True)


def run_parity(
    path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    as_json: bool = False,
    out: TextIO | None = None,
    err: TextIO | None = None,
) -> int:
    """Replay every fixture and print the table (or JSON) on ``out``, progress and errors on
    ``err``; the exit status: 0 all passed, 1 a replay failed, 2 nothing could be replayed
    (no fixtures, no CUDA)."""
    out = out or sys.stdout
    err = err or sys.stderr
    try:
        if device == "cuda":
            from numba import cuda

            if not cuda.is_available():
                raise RuntimeError("--device cuda: no usable CUDA GPU (numba.cuda.is_available() is False)")
        fixtures = load_fixtures(path)
    except (FileNotFoundError, RuntimeError, ValueError, OSError) as exc:
        print(f"numbaopt parity: {exc}", file=err)
        if as_json:
            print(json.dumps({"ok": False, "error": str(exc), "results": []}), file=out)
        return 2
    progress = Progress(len(fixtures), err)
    results = []
    for fixture in fixtures:
        replays = [replay(fixture, route, device) for route in routes_of(fixture)]
        results += replays
        progress.advance(fixture, replays)
    ok = all(r.passed for r in results)
    if as_json:
        versions = fixtures[0].versions if fixtures else {}
        by_family = {fx.family: fx.versions for fx in reversed(fixtures)}
        doc = {
            "ok": ok,
            "device": device,
            "fixtures": str(Path(path) if path is not None else default_fixture_dir()),
            "reference": versions,
            "references": by_family,
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
