"""Turn the suite's results into the Markdown tables and the plot of ``docs/benchmarks.md``.

``write(results, folder)`` replaces the part of ``folder/benchmarks.md`` between the
``results`` markers (the hand-written text around them stays), creating the file if it is
not there, and draws ``benchmarks.png`` when matplotlib is installed.
"""
import sys
from pathlib import Path

from numbaopt import optimizers

BEGIN, END = "<!-- results:begin -->", "<!-- results:end -->"
LIBRARIES = ("numbaopt", "roofline", "torch-fused", "torch-foreach", "optax", "tf_keras", "numpy")


def _find(rows, **where):
    for row in rows:
        if all(row.get(k) == v for k, v in where.items()):
            return row
    return None


def _ms(rows, **where):
    row = _find(rows, **where)
    return row["ms"] if row and row["status"] == "ok" else None


def targets(results):
    """The speed targets: (what, measured, goal, met) rows; measured None when not in this run."""
    steps = results["steps"]
    big = dict(kind="steps", case="5e7", dtype="float32")
    adam = _ms(steps, optimizer="Adam", library="numbaopt", **big)
    torch = _ms(steps, optimizer="Adam", library="torch-fused", **big)
    roof = _ms(steps, optimizer="Adam", library="roofline", **big)
    out = [
        ("Adam f32, N=5e7: torch fused time / numbaopt time", torch / adam if adam and torch else None, 1.0),
        ("Adam f32, N=5e7: fraction of the roofline's bandwidth", roof / adam if adam and roof else None, 0.95),
    ]
    for name in (cls.__name__ for cls in optimizers.rule_based() if cls.__name__ != "Adam"):
        ours = _ms(steps, optimizer=name, library="numbaopt", **big)
        own_roof = _ms(steps, optimizer=name, library="roofline", **big)
        out.append((f"{name} f32, N=5e7: fraction of its roofline", own_roof / ours if ours and own_roof else None, 0.90))
    clip = dict(kind="clip", case="200 tensors, 5e7", dtype="float32", optimizer="Adam")
    ours, torch = _ms(steps, library="numbaopt", **clip), _ms(steps, library="torch-fused", **clip)
    out.append(("Adam + clipnorm f32, 200 tensors, 5e7: (clip_grad_norm_ + torch fused) / numbaopt",
                torch / ours if ours and torch else None, 1.3))
    small = dict(kind="steps", case="1000 x 1000", dtype="float32", optimizer="Adam")
    ours, torch = _ms(steps, library="numbaopt", **small), _ms(steps, library="torch-fused", **small)
    out.append(("Adam f32, 1000 x 1000: torch fused time / numbaopt time", torch / ours if ours and torch else None, 8.0))
    torch_step = results.get("torch_step", {})
    out.append(("numbaopt.torch Adam, MLP of 20 tensors: time / torch fused time, at most",
                torch_step.get("mlp_numbaopt_over_fused"), 1.0))
    out.append(("numbaopt.torch Adam, 1e7 f32: time / NumPy API time, at most",
                torch_step.get("1e7_numbaopt_torch_over_numpy_api"), 1.05))
    startup = results.get("startup", {})
    out.append(("`import numbaopt` (s), at most", startup.get("import_numbaopt_s"), 0.3))
    out.append(("first step, new process, warm cache (s), at most", startup.get("first_step_warm_cache_s"), 1.0))
    rows = []
    for what, value, goal in out:
        at_most = "at most" in what
        met = None if value is None else (value <= goal if at_most else value >= goal)
        rows.append((what.replace(", at most", ""), value, ("≤ " if at_most else "≥ ") + f"{goal:g}", met))
    return rows


def _fmt(ms):
    if ms is None:
        return "–"
    return f"{ms:.3g}" if ms < 100 else f"{ms:.0f}"


def markdown(results):
    m = results["machine"]
    lines = [
        f"Machine: **{m['cpu']}**, {m['cores']} cores, Numba threads {m['numba_threads']}, "
        f"Python {m['python']}, {m['platform']}. Load average (1 min) {results['load_before']:.2f} "
        f"before, {results['load_after']:.2f} after; {results['mode']} run, {results['seconds']:.0f} s.",
        "",
        "Versions: " + ", ".join(f"{k} {v or 'missing'}" for k, v in results["versions"].items()) + ".",
        "",
        "### Targets",
        "",
        "| target | measured | goal | met |",
        "|---|---|---|---|",
    ]
    for what, value, goal, met in targets(results):
        shown = "not in this run" if value is None else f"{value:.3f}"
        lines.append(f"| {what} | {shown} | {goal} | {'–' if met is None else ('yes' if met else 'no')} |")
    steps = results["steps"]
    present = [lib for lib in LIBRARIES if any(r["library"] == lib for r in steps)]
    missing = sorted({r["library"] for r in steps if r["status"] == "missing"})
    lines += ["", "### Step time (ms, median)", ""]
    if missing:
        lines += [f"Not installed, so not measured: {', '.join(missing)}.", ""]
    lines += ["`% roof`: the roofline's time over numbaopt's, the fraction of the attainable bandwidth "
              "numbaopt reaches; `GB/s`: numbaopt's effective bandwidth. `n/s`: the peer has no such "
              "optimizer or variant.", ""]
    seen = []
    for row in steps:
        key = (row["kind"], row["case"], row["dtype"])
        if key not in seen:
            seen.append(key)
    for kind, case, dtype in seen:
        title = f"Adam with clipnorm={1.0:g}, {case}" if kind == "clip" else case
        n = _find(steps, kind=kind, case=case)["n"]
        lines += [f"**{title}, {dtype}** ({n:,} parameters)", "",
                  "| optimizer | " + " | ".join(present) + " | % roof | GB/s |",
                  "|---|" + "---|" * (len(present) + 2)]
        for optimizer in dict.fromkeys(r["optimizer"] for r in steps if (r["kind"], r["case"]) == (kind, case)):
            cells = []
            for lib in present:
                row = _find(steps, kind=kind, case=case, dtype=dtype, optimizer=optimizer, library=lib)
                status = row["status"] if row else "missing"
                cells.append(_fmt(row["ms"]) if status == "ok" else {"unsupported": "n/s", "error": "error"}.get(status, "–"))
            ours = _find(steps, kind=kind, case=case, dtype=dtype, optimizer=optimizer, library="numbaopt")
            roof = _ms(steps, kind=kind, case=case, dtype=dtype, optimizer=optimizer, library="roofline")
            frac = f"{100 * roof / ours['ms']:.0f}" if ours and ours["status"] == "ok" and roof else "–"
            bw = f"{ours['gb_per_s']:.1f}" if ours and ours["status"] == "ok" else "–"
            lines.append(f"| {optimizer} | " + " | ".join(cells) + f" | {frac} | {bw} |")
        lines.append("")
    torch_step = results.get("torch_step", {})
    if torch_step.get("status") == "ok":
        lines += ["### numbaopt.torch (ms, median; benchmarks/torch_step.py)", "",
                  "| case | " + " | ".join(torch_step["ms"]["mlp"]) + " |", "|---|" + "---|" * len(torch_step["ms"]["mlp"]),
                  "| MLP, 20 tensors, f32 | " + " | ".join(_fmt(v) for v in torch_step["ms"]["mlp"].values()) + " |", "",
                  "| case | " + " | ".join(torch_step["ms"]["1e7"]) + " |", "|---|" + "---|" * len(torch_step["ms"]["1e7"]),
                  "| one tensor, f32 | " + " | ".join(_fmt(v) for v in torch_step["ms"]["1e7"].values()) + " |", ""]
    s = results.get("startup", {})
    lines += ["### Start-up (s, median of new processes)", "", "| what | s |", "|---|---|"]
    for key, label in (("import_numbaopt_s", "`import numbaopt; import numbaopt.optimizers`"),
                       ("import_numba_s", "`import numba` alone, for comparison"),
                       ("first_step_cold_cache_s", "first `apply_gradients` (Adam), empty compile cache"),
                       ("first_step_warm_cache_s", "first `apply_gradients` (Adam), warm compile cache")):
        if key in s:
            lines.append(f"| {label} | {s[key]:.3f} |")
    errors = [r for r in steps if r["status"] == "error"]
    if errors:
        lines += ["", "Errors: " + "; ".join(f"{r['library']} {r['optimizer']} {r['case']}: {r['note']}" for r in errors)]
    return "\n".join(lines) + "\n"


def plot(results, path):
    """Time per step against N (single tensors, float32), one panel per optimizer."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot", file=sys.stderr)
        return False
    rows = [r for r in results["steps"] if r["kind"] == "steps" and r["tensors"] == 1 and r["dtype"] == "float32"]
    optimizers = list(dict.fromkeys(r["optimizer"] for r in rows))
    fig, axes = plt.subplots(2, 4, figsize=(16, 8), sharex=True)
    for ax, optimizer in zip(axes.flat, optimizers):
        for lib in LIBRARIES:
            points = sorted((r["n"], r["ms"]) for r in rows
                            if r["optimizer"] == optimizer and r["library"] == lib and r["status"] == "ok")
            if points:
                # One colour per library in every panel, whichever peers lack the optimizer.
                ax.plot(*zip(*points), "--" if lib == "roofline" else "-o", label=lib, markersize=3,
                        color=f"C{LIBRARIES.index(lib)}")
        ax.set(xscale="log", yscale="log", title=f"{optimizer}, float32", xlabel="parameters N")
        ax.grid(True, which="both", alpha=0.3)
    axes.flat[0].set_ylabel("ms per step (median)")
    axes.flat[4].set_ylabel("ms per step (median)")
    legend = {}
    for ax in axes.flat:
        for handle, label in zip(*ax.get_legend_handles_labels()):
            legend.setdefault(label, handle)
    axes.flat[-1].axis("off")
    axes.flat[-1].legend(legend.values(), legend.keys(), loc="center")
    fig.suptitle(f"One optimizer step, one tensor: {results['machine']['cpu']}, {results['machine']['cores']} cores")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return True


def write(results, folder):
    folder = Path(folder)
    body = markdown(results)
    if plot(results, folder / "benchmarks.png"):
        body += "\n![Step time against N, per library](benchmarks.png)\n"
    page = folder / "benchmarks.md"
    text = page.read_text() if page.exists() else f"# Benchmarks\n\n{BEGIN}\n{END}\n"
    if BEGIN not in text or END not in text:
        text = text.rstrip("\n") + f"\n\n{BEGIN}\n{END}\n"
    head, rest = text.split(BEGIN, 1)
    tail = rest.split(END, 1)[1]
    page.write_text(f"{head}{BEGIN}\n{body}{END}{tail}")
