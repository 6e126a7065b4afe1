"""Busy processes beside a measurement (``load.py``, ``ways.py``): each spins in a Python loop
and stops by itself after a time limit, whatever happens to the process that started it."""
import atexit
import contextlib
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
