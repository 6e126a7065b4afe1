"""Reading a Keras model file in a child process: a crash of the HDF5 library on a damaged
file becomes a ``CheckpointError`` instead of the end of the user's process.

A Keras ``.h5`` file has no checksums on its metadata, and the HDF5 library crashes the
process (a segmentation fault) or loops forever on some damage, such as a flipped byte in
the heap of its name lists. ``isolated(read, path)`` runs ``read(path)`` in a forked child,
with a time limit, and returns its result or raises its exception here.
"""
from __future__ import annotations

import faulthandler
import os
import pickle
import select
import signal
import time
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

from numbaopt import threads
from numbaopt.checkpoint import CheckpointError

_T = TypeVar("_T")


def _patience(path: str) -> float:
    """Seconds a child may take to read ``path``: a minute, and a second per 20 MB beyond."""
    return 60.0 + os.path.getsize(path) / 20e6


def read_until_done(fd: int, pid: int, seconds: float) -> bytes:
    """Everything the child writes to ``fd``; the child is killed if it takes longer than
    ``seconds`` (HDF5 can loop forever on some damage), which leaves the data incomplete."""
    deadline = time.monotonic() + seconds
    chunks: list[bytes] = []
    with os.fdopen(fd, "rb", buffering=0) as pipe:
        while True:
            left = deadline - time.monotonic()
            ready = select.select([pipe], [], [], max(left, 0.0))[0] if left > 0 else []
            if not ready:
                os.kill(pid, signal.SIGKILL)
                return b""
            chunk = pipe.read(2**16)
            if not chunk:
                return b"".join(chunks)
            chunks.append(chunk)


def isolated(read: Callable[[str], _T], path: str) -> _T:
    """``read(path)`` in a forked child process, where POSIX allows it, returning its result or
    raising its exception here; a crash or hang of the child is a CheckpointError. Without ``os.fork``, or
    with other Python threads running (one could hold h5py's lock as the child starts; the
    helpers of ``numbaopt.threads`` hold none), the file is read in this process.
    """
    if not hasattr(os, "fork") or not threads.others_are_helpers():
        return read(path)
    readable, writable = os.pipe()
    with warnings.catch_warnings():  # Python 3.12+ warns of native threads (Numba's); the child uses none
        warnings.simplefilter("ignore", DeprecationWarning)
        pid = os.fork()
    if pid == 0:  # the child: read, send the outcome, exit without running the parent's cleanup
        status = 0
        try:
            faulthandler.disable()
            os.close(readable)
            try:
                outcome: tuple[bool, Any] = (True, read(path))
            except Exception as error:  # noqa: BLE001  (raised again in the parent)
                outcome = (False, error)
            with os.fdopen(writable, "wb") as pipe:
                pickle.dump(outcome, pipe, protocol=pickle.HIGHEST_PROTOCOL)
        except BaseException:
            status = 1
        finally:
            os._exit(status)
    os.close(writable)
    try:
        data = read_until_done(readable, pid, _patience(path))
    except BaseException:  # interrupted (KeyboardInterrupt, say): no child left running, no zombie
        _reaped(pid, kill=True)
        raise
    code = _reaped(pid)
    try:
        if code not in (0, None):
            raise ValueError("no outcome")
        succeeded, value = pickle.loads(data)  # written by the child above: arrays, strings, our exceptions
    except Exception:  # noqa: BLE001  (the child died before it could say)
        how = "unknown status" if code is None else f"signal {-code}" if code < 0 else f"status {code}"
        raise CheckpointError(f"the HDF5 library crashed or hung reading the file ({how}): it is damaged") from None
    if not succeeded:
        raise value
    return value  # type: ignore[no-any-return]  # pickle gives Any; the child returned read's _T


def _reaped(pid: int, kill: bool = False) -> int | None:
    """Wait for the child ``pid`` (killed first with ``kill``: a read that was interrupted)
    and return its exit code as ``os.waitstatus_to_exitcode`` gives it, or None where the
    process reaps its own children (``SIGCHLD`` ignored, or a handler that waits for them,
    as servers and job runners have): then the status is gone, and the child's outcome is
    what it wrote to the pipe."""
    try:
        if kill:
            os.kill(pid, signal.SIGKILL)
        _, status = os.waitpid(pid, 0)
    except (ChildProcessError, ProcessLookupError):
        return None
    return os.waitstatus_to_exitcode(status)

