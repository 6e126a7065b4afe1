"""The benchmark suite's quick mode, as a smoke test: it runs end to end and reports.

No timing is asserted: this machine's speed is not what the test is about. Peers that are
not installed (the test environment has none) must be reported as missing, not fail.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

SUITE = Path(__file__).resolve().parents[1] / "benchmarks" / "suite.py"


def test_quick_suite_runs_and_reports(tmp_path):
    run = subprocess.run(
        [sys.executable, str(SUITE), "--quick", "--out", str(tmp_path), "--optimizers", "Adam", "SGD",
         "--libraries", "numbaopt", "numpy", "torch-fused"],
        capture_output=True, text=True, timeout=600,
    )
    assert run.returncode == 0, run.stderr
    assert "[1/" in run.stderr  # progress is shown
    results = json.loads((tmp_path / "benchmarks.json").read_text())
    assert results["machine"]["cores"] >= 1 and results["machine"]["cpu"]
    rows = results["steps"]
    cases = {(r["kind"], r["case"], r["dtype"]) for r in rows}
    assert len(cases) == 3 * 2 + 1  # three step cases in two dtypes, and the clipnorm case
    for kind, case, dtype in cases:
        for optimizer in ("Adam",) if kind == "clip" else ("Adam", "SGD"):
            found = {r["library"]: r for r in rows
                     if (r["kind"], r["case"], r["dtype"], r["optimizer"]) == (kind, case, dtype, optimizer)}
            assert set(found) == {"numbaopt", "numpy", "torch-fused", "roofline"}
            for library in ("numbaopt", "numpy", "roofline"):
                assert found[library]["status"] == "ok" and found[library]["ms"] > 0
            assert found["torch-fused"]["status"] in ("ok", "missing", "unsupported")
    startup = results["startup"]
    assert set(startup) == {"import_numbaopt_s", "import_numba_s", "first_step_cold_cache_s", "first_step_warm_cache_s"}
    page = (tmp_path / "benchmarks.md").read_text()
    assert "<!-- results:begin -->" in page and "### Targets" in page and "| Adam |" in page


@pytest.mark.torch
def test_the_load_benchmark_runs_reports_and_stops_its_busy_processes():
    pytest.importorskip("torch")
    script = SUITE.parent / "load.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--busy", "1", "--seconds", "0.02", "--rounds", "1",
                          "--limit", "120"], capture_output=True, text=True, timeout=600, cwd=script.parent)
    assert run.returncode == 0, run.stderr
    results = json.loads(run.stdout.strip().splitlines()[-1])
    assert set(results["cases"]) == {"1e6", "1e7", "MLP"}
    assert "| 1e6 | numbaopt |" in run.stdout and "busy / quiet median" in run.stdout
    assert len(results["busy_pids"]) == 3
    for pid in results["busy_pids"]:
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)


def test_the_keras3_benchmark_measures_every_keras3_optimizer(tmp_path):
    """Every registered Keras 3 optimizer is in one of its tables, but Muon, whose matrix
    step is NumPy's BLAS (numbaopt.keras3.muon)."""
    from numbaopt import keras3, registry  # noqa: F401 - keras3 registers its family

    script = SUITE.parent / "keras3.py"
    out = tmp_path / "keras3.json"
    run = subprocess.run([sys.executable, str(script), "--n", "2000", "--steps", "6", "--json", str(out)],
                         capture_output=True, text=True, timeout=600, cwd=script.parent)
    assert run.returncode == 0, run.stderr
    results = json.loads(out.read_text())
    measured = {row["optimizer"].split()[0] for row in results["big"] + results["tensor_wise"]}
    assert measured == {cls.__name__ for cls in registry.rule_based("keras3")} - {"Muon"}
    for row in results["big"]:
        assert row["numbaopt_ms"] > 0 and row["roofline_ms"] > 0


def test_the_ways_benchmark_times_each_way_quiet_and_busy():
    script = SUITE.parent / "ways.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--busy", "1"], capture_output=True, text=True,
                         timeout=600, cwd=script.parent)
    assert run.returncode == 0, run.stderr
    rows = [line for line in run.stdout.splitlines() if line.startswith("| 1e+05") or line.startswith("| 3e+05")]
    assert len(rows) == 6 and all(line.count(" ms") == 6 for line in rows)
    assert {"calling thread alone", "calling thread and helpers", "Numba's team"} <= {r.split(" | ")[1] for r in rows}


def test_the_memory_benchmark_runs_quickly_and_reports_each_seed(tmp_path):
    script = SUITE.parent / "memory.py"
    run = subprocess.run([sys.executable, str(script), "--quick", "--seeds", "2", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=900, cwd=script.parent)
    assert run.returncode == 0, run.stderr
    results = json.loads((tmp_path / "memory.json").read_text())
    assert 2.0 < results["state_bytes_per_parameter"]["q8"] <= 2.1
    convergence = results["convergence"]
    if convergence["status"] == "ok":  # scikit-learn ships the digits
        assert all(len(finals) == 2 for finals in convergence["final_by_seed"].values())
        assert "| q8 slots |" in run.stdout


def test_the_rounding_noise_model_finds_larger_steps_with_8_bit_state():
    script = SUITE.parent / "rounding_noise.py"
    run = subprocess.run([sys.executable, str(script), "--quick"], capture_output=True, text=True, timeout=300,
                         cwd=script.parent)
    assert run.returncode == 0, run.stderr
    rows = {line.split("|")[1].strip(): [float(cell) for cell in line.split("|")[2:4]]
            for line in run.stdout.splitlines() if line.startswith("| unbiased")}
    (value_spread, value_factor), (root_spread, root_factor) = rows["unbiased in the value (format 4)"], rows["unbiased in the root (today)"]
    assert 0.05 < value_spread < 0.5 and 0.05 < root_spread < 0.5
    assert 1.0 < root_factor < value_factor < 1.1  # rounding in the root leaves the steps nearer float32's
