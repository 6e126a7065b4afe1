"""Handing launches to helper threads in compiled code (``numbaopt.kernels.handoff``)."""
import ctypes
import subprocess
import sys
import threading

import numpy as np
import pytest
from numba import njit

from numbaopt import threads
from numbaopt.kernels import handoff

pytestmark = pytest.mark.skipif(not handoff.AVAILABLE, reason="helpers need Linux's futex")


@njit(nogil=True, cache=True)
def _record(matrix, column, numbers, flag, out, work):
    """Writes what it was given into ``out``: the packet must carry every value exactly."""
    out[0] = matrix[1, 2]
    out[1] = column[3]
    out[2] = numbers[0]
    out[3] = numbers[1][0]
    out[4] = numbers[1][1]
    out[5] = flag
    out[6] = matrix.shape[0] * 100 + matrix.shape[1]
    out[7] = work[0]


def _arguments():
    matrix = np.arange(12, dtype=np.float32).reshape(3, 4)
    numbers = (np.float32(1.25), (np.uint64(2**63 + 5), -7))
    return (matrix, np.linspace(0, 1, 5), numbers, True, np.zeros(8), np.array([9, 0, 1], np.int64))


@njit
def _pack(packet, arguments):
    handoff._pack(packet, arguments)


def test_a_packet_carries_every_argument_bitwise():
    arguments = _arguments()
    hand = handoff.launcher(_record, arguments)
    assert hand is not None and hand.words == 1 + (1 + 4) + (1 + 2) + 3 + 1 + (1 + 2) + (1 + 2)
    trampoline, kernel = hand.addresses
    packet = np.zeros(hand.words, np.int64)
    _pack(packet, (kernel, arguments))
    ctypes.CFUNCTYPE(None, ctypes.c_int64)(trampoline)(packet.ctypes.data)  # as a helper calls it
    expected = np.zeros(8)
    _record(*arguments[:4], expected, arguments[5])
    out = arguments[4]
    assert out.tobytes() == expected.tobytes()
    assert list(out) == [6.0, 0.75, 1.25, float(np.float64(np.uint64(2**63 + 5))), -7.0, 1.0, 304.0, 9.0]


def test_what_cannot_travel_in_a_packet_runs_without_helpers():
    strided = (np.zeros(10)[::2], np.array([0, 0, 1], np.int64))
    assert handoff.launcher(_record, strided) is None
    plain = _arguments()
    assert handoff.launcher(lambda *a: None, plain) is None
    untyped = (object(), np.array([0, 0, 1], np.int64))
    assert handoff.launcher(_record, untyped) is None


@njit(nogil=True, cache=True)
def _two_chunks(seen_together, budget, work):
    """Claims chunks; holding chunk 0, waits up to ``budget`` cycles for another thread to
    claim chunk 1, and records whether one did."""
    c = handoff.fetch_add(work, handoff.CLAIMED, 1)
    while c < 2:
        if c == 0:
            start = handoff.cycles()
            while handoff.atomic_load(work, handoff.CLAIMED) < 2 and handoff.cycles() - start < budget:
                pass
            seen_together[0] = handoff.atomic_load(work, handoff.CLAIMED) >= 2
        handoff.fetch_add(work, handoff.DONE, 1)
        c = handoff.fetch_add(work, handoff.CLAIMED, 1)


def _masks():
    return np.zeros((2, handoff.MASK_WORDS), np.int64)


def test_a_helper_takes_a_chunk_while_the_calling_thread_holds_another():
    if handoff.cycles() == 0:
        pytest.skip("no cycle counter to time the wait with")
    signals = np.zeros(handoff.SIGNALS, np.int64)
    helper = threading.Thread(target=handoff.serve, args=(signals, 0, 0, _masks()), daemon=True)  # it sleeps between launches
    helper.start()
    threads._HELPER_THREADS.add(helper)  # it lives on, asleep, as numbaopt's own do (forks beside it are safe)
    seen = np.zeros(1, np.bool_)
    for _ in range(3):  # a helper woken from its sleep comes within microseconds; allow for a busy machine
        seen[0] = False
        arguments = (seen, 10**10, np.array([0, 0, 1], np.int64))
        hand = handoff.launcher(_two_chunks, arguments)
        handoff.launch(signals, np.zeros(hand.words, np.int64), hand.addresses, 1, 2, arguments)
        assert list(arguments[-1][:2]) == [4, 2] and signals[handoff.ACTIVE] == 0
        if seen[0]:
            break
    assert seen[0]


_LATE_HELPER = """
import time
import threading
import numpy as np
from numbaopt.kernels import handoff

signals = np.zeros(handoff.SIGNALS, np.int64)
threading.Thread(target=handoff.serve, args=(signals, 0, 10**12, np.zeros((2, handoff.MASK_WORDS), np.int64)),
                 daemon=True).start()  # it watches
time.sleep(0.05)
# A launch announced but closed (OPEN 0), its packet and trampoline gone (address 0): a
# helper that read them would crash the process.
signals[handoff.WANTED] = 1
signals[handoff.LAUNCHES] += 1
time.sleep(0.05)
assert signals[handoff.ACTIVE] == 0
print("untouched")
"""


def test_a_helper_that_sees_a_closed_launch_touches_nothing_of_it():
    done = subprocess.run([sys.executable, "-c", _LATE_HELPER], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "untouched"


@njit
def _move_off(masks):
    before = handoff._getcpu()
    handoff._leave_cpu(before, masks)
    return before, handoff._getcpu()


def test_a_helper_leaves_the_calling_threads_cpu_and_keeps_its_affinity():
    import os

    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("one CPU: nowhere to go")
    before, after = _move_off(np.zeros((2, handoff.MASK_WORDS), np.int64))
    assert before in allowed and after in allowed and after != before
    assert os.sched_getaffinity(0) == allowed
