"""Measuring beside busy processes (``load.py``, ``ways.py``): the processes, each spinning in
a Python loop until a time limit, whatever happens to the process that started it, and the
summary of single-step times."""
import atexit
import contextlib
import statistics
import subprocess
import sys
import time

#: A busy process: a Python loop that ends by itself after argv[1] seconds.
BUSY = "import sys, time\nend = time.monotonic() + float(sys.argv[1])\nwhile time.monotonic() < end:\n    pass\n"


@contextlib.contextmanager
def busy_processes(count, limit):
    """``count`` processes spinning on the CPU for at most ``limit`` seconds; killed on exit."""
    processes = [subprocess.Popen([sys.executable, "-c", BUSY, str(limit)]) for _ in range(count)]

    def stop():
        for process in processes:
            if process.poll() is None:
                process.kill()
            process.wait()

    atexit.register(stop)
    try:
        time.sleep(0.3)  # let the scheduler see them
        yield processes
    finally:
        stop()
        atexit.unregister(stop)


def summary(times):
    """Median, 90th percentile and mean of single-step ``times`` (seconds), in milliseconds."""
    ordered = sorted(times)
    return {"median_ms": statistics.median(ordered) * 1e3,
            "p90_ms": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))] * 1e3,
            "mean_ms": statistics.fmean(ordered) * 1e3,
            "steps": len(ordered)}
