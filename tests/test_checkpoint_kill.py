"""Crash safety: a process that saves in a loop is killed with SIGKILL at random moments.

After every kill the file at the path must load and hold one of the states the process was
saving, and at most the dead writer's temporary file may be left (the next save removes
it). ``NUMBAOPT_KILL_TESTS`` sets the number of kills (CI: the default, 20).
"""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from numbaopt import optimizers
from numbaopt.checkpoint import TEMPORARY_SUFFIX, load_optimizer, save_optimizer

KILLS = int(os.environ.get("NUMBAOPT_KILL_TESTS", "20"))
SIZE = 250_000  # big enough that a save takes a few milliseconds, so kills land inside saves

# State number i: iterations i, every "ms" slot filled with i and every "vs" slot with -i.
SAVER = """
import sys
import numpy as np
import numbaopt
from numbaopt import optimizers

path, i = sys.argv[1], int(sys.argv[2])
while True:
    opt = optimizers.Adam()
    opt.set_weights([np.array(i), np.full(%d, i, np.float32), np.full(3, i, np.float64),
                     np.full(%d, -i, np.float32), np.full(3, -i, np.float64)])
    numbaopt.save_optimizer(opt, path)
    print(i, flush=True)
    i += 1
""" % (SIZE, SIZE)


def expected_slots(i):
    return {"ms": [np.full(SIZE, i, np.float32), np.full(3, i, np.float64)],
            "vs": [np.full(SIZE, -i, np.float32), np.full(3, -i, np.float64)]}


def temporaries(folder):
    return [name for name in os.listdir(folder) if name.endswith(TEMPORARY_SUFFIX)]


@pytest.mark.skipif(os.name != "posix", reason="SIGKILL and the sweep of dead writers' files are POSIX")
def test_sigkill_during_saves_never_leaves_a_partial_file(tmp_path):
    path = tmp_path / "ckpt.h5"
    rng = random.Random(0)
    for kill in range(KILLS):
        first = kill * 1_000_000
        child = subprocess.Popen([sys.executable, "-c", SAVER, str(path), str(first)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            line = child.stdout.readline()  # the first save is complete: the file exists
            assert line, child.stderr.read()
            time.sleep(rng.uniform(0, 0.05))
            child.send_signal(signal.SIGKILL)
        finally:
            child.kill()
            child.wait()
        reported = [int(line)] + [int(n) for n in child.stdout.read().split()]
        child.stdout.close()
        child.stderr.close()

        state = load_optimizer(path).state()
        # The save in progress at the kill may have been renamed into place before it could report.
        assert first <= state.iterations <= reported[-1] + 1
        for kind, arrays in expected_slots(state.iterations).items():
            for ours, expected in zip(state.slots[kind], arrays):
                assert ours.dtype == expected.dtype and np.array_equal(ours, expected)
        assert len(temporaries(tmp_path)) <= 1, temporaries(tmp_path)

    save_optimizer(optimizers.Adam(), path)  # sweeps the last dead writer's temporary file
    assert temporaries(tmp_path) == []
