"""How a CPU step runs: on Numba's team, on the calling thread with helpers, or alone;
chosen from the measured times of the choices.

Why. A parallel region of Numba's threading layers ends when every thread of its team
has done its share. When the machine has more runnable threads than cores (other
processes, data-loading workers, torch's own OpenMP pool in the same process, MPI ranks
sharing a node), one of those threads is often off its core, and the whole step waits for
its next time slice: measured on a 2-core machine with two busy processes beside it, a
step of 1e6 float32 went from 0.3 ms to 16 ms, while the same step on the calling thread
alone took 0.5 ms (issue 24, ``benchmarks/load.py``). On a quiet machine the team is the
fastest. Nothing cheap predicts which way wins (the load average lags by a minute and sees
the whole host from inside a container), so each step measures it.

Three ways (``Way``). Numba's team: the parallel build of the kernel under
``numba.set_num_threads``, restored afterwards. The calling thread with ``Helpers``: the
other build, run by the calling thread and by helper threads that claim chunks one at a
time while they are free (``numbaopt.kernels.cpu``), so the step never waits for a thread
that is off its core, only for the few chunks helpers hold. Helpers never take the GIL
(``numbaopt.kernels.handoff``): on a quiet machine they are as fast as the team, and on a
busy one a step uses the cores it can get and never waits a time slice for one it cannot
(``benchmarks/ways.py``). And the calling thread alone.

What. Per kind of launch (an update rule, or the global norm's sums), dtype and size class
(the number of chunks, rounded down to a power of two), a ``Chooser`` keeps the last few
times per chunk of each way on a ladder (one thread; 2, 4, ..., cap threads with helpers;
the same on the team) and runs the fastest. It starts at the top (every thread of the
team, the quiet-machine choice) and now and then tries the others: at once after a switch
or when the chosen way gets ``tuning.THREADS_SLOWDOWN`` times slower than its best,
otherwise after a doubling number of steps, and never more often than lets the time the
tries lose stay under ``tuning.THREADS_PROBE_BUDGET`` of the time that passes. A way that
wins two tries in a row becomes the choice. A step that waits a time slice now and then
loses to one that never waits, so on a machine that is busy at all most steps run on the
calling thread, helped where helpers pay.

Results never depend on the choice: every chunk is updated by one thread with the same
code, and the global norm adds per-chunk sums in a fixed order (``tests/test_threads.py``).

The cap is the most threads a step may use: the calling thread's ``numba.get_num_threads()``
(``NUMBA_NUM_THREADS``, or what the program set with ``numba.set_num_threads``), and,
unless ``NUMBA_NUM_THREADS`` is set explicitly, no more than the CPUs this process may run
on (its affinity mask and its cgroup's CPU quota) shared by the processes an MPI launcher
started on this machine. numbaopt sets no environment variable: the threading layer and
OpenMP's wait policy stay what Numba and the user chose.

Imports Numba only when a parallel step is planned (``import numbaopt`` does not).
"""
from __future__ import annotations

import contextlib
import math
import os
import threading
import time
import weakref
from collections.abc import Callable, Hashable
from typing import Any, NamedTuple

import numpy as np

from numbaopt import tuning

#: Recent samples kept per thread count; the estimate is their median.
_SAMPLES = 3
#: A tried count replaces the chosen one only when it is this much faster, this many
#: tries in a row (a lone fast step on a busy machine is often luck).
_MARGIN = 0.9
_WINS = 2
#: Seconds between two tries of a count at most, whatever its last try lost (one try that
#: met a pause of the whole machine must not pin the choice for minutes).
_MAX_WAIT = 10.0


def _median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


class Way(NamedTuple):
    """How a CPU launch runs: on ``threads`` threads, Numba's team of them (``team``, the
    parallel build of the kernel) or the calling thread and ``threads - 1`` ``Helpers``."""

    threads: int
    team: bool


def ladder(cap: int, helpers: bool = True) -> tuple[Way, ...]:
    """The ways a chooser picks from: one thread; then powers of two below ``cap``, and
    ``cap``, with helpers (where ``helpers`` can run) and on Numba's team; every thread of
    the team last."""
    counts = [1]
    while counts[-1] * 2 < cap:
        counts.append(counts[-1] * 2)
    if cap > 1:
        counts.append(cap)
    helped = tuple(Way(n, False) for n in counts[1:]) if helpers else ()
    return (Way(1, False), *helped, *(Way(n, True) for n in counts[1:]))


class Chooser:
    """The way to run one kind of launch, from measured times (see the module's doc).

    ``pick(now)`` gives the index on ``ladder`` to run; ``record(index, seconds, chunks,
    now)`` tells how long that launch took. ``now`` is ``time.perf_counter()``; tests pass
    their own clock.
    """

    def __init__(self, ways: tuple[Way, ...]) -> None:
        self.ladder = ways
        n = len(ways)
        self.current = n - 1
        self.times: list[list[float]] = [[] for _ in range(n)]  # recent seconds per chunk
        self.seen = [False] * n  # the first launch of each count compiles or starts the pool
        self.best = math.inf  # the chosen count's best time per chunk since it was chosen
        self.interval = [1] * n  # steps between tries of each count, doubling while it loses
        self.tried_step = [0] * n
        self.tried_at = [-math.inf] * n
        self.loss = [0.0] * n  # seconds its last try lost against the chosen count
        self.wins = [0] * n  # tries in a row that beat the chosen count
        self.steps = 0
        # No count is due for a try before this step and this time (the usual step
        # returns after two comparisons). Steps from several Python threads may race on
        # these statistics; a race perturbs a measurement, never a result.
        self.due_step = 0
        self.due_at = -math.inf

    def _schedule(self) -> None:
        budget = tuning.THREADS_PROBE_BUDGET / max(1, len(self.ladder) - 1)
        others = [i for i in range(len(self.ladder)) if i != self.current]
        # Every other count, not only the neighbours: a slow plateau (8 and 16 threads
        # where 4 cores are free) would hide the better count beyond it.
        self.due_step = min((self.tried_step[i] + self.interval[i] for i in others), default=1 << 62)
        self.due_at = min((self.tried_at[i] + min(self.loss[i] / budget, _MAX_WAIT) for i in others), default=math.inf)

    def pick(self, now: float) -> int:
        self.steps += 1
        if self.steps < self.due_step or now < self.due_at or not self.times[self.current]:
            return self.current
        budget = tuning.THREADS_PROBE_BUDGET / max(1, len(self.ladder) - 1)
        for i in range(len(self.ladder)):
            if (i != self.current and self.steps - self.tried_step[i] >= self.interval[i]
                    and now - self.tried_at[i] >= min(self.loss[i] / budget, _MAX_WAIT)):
                self.tried_step[i], self.tried_at[i] = self.steps, now
                self._schedule()
                return i
        return self.current

    def record(self, index: int, seconds: float, chunks: int, now: float) -> None:
        per_chunk = seconds / max(chunks, 1)
        if not self.seen[index]:
            self.seen[index] = True
            return
        if index == self.current:
            recent = self.times[index]
            recent.append(per_chunk)
            if len(recent) > _SAMPLES:
                del recent[0]
            if per_chunk < self.best:
                self.best = per_chunk
            if len(recent) == _SAMPLES:
                typical = _median(recent)
                if typical > tuning.THREADS_SLOWDOWN * self.best:
                    # Conditions changed: try the other counts soon, within the budget.
                    self.interval = [1] * len(self.ladder)
                    self.best = typical
                    self._schedule()
            return
        recent = self.times[self.current]
        typical = _median(recent) if recent else math.inf
        if per_chunk < _MARGIN * typical:
            self.wins[index] += 1
            if self.wins[index] < _WINS:  # one fast step may be luck: try it again at once
                self.interval[index], self.tried_step[index] = 1, self.steps
            else:
                previous, self.current = self.current, index
                self.times[index] = [per_chunk]
                self.best = per_chunk
                self.interval, self.loss = [1] * len(self.ladder), [0.0] * len(self.ladder)
                self.wins = [0] * len(self.ladder)
                self.tried_step[previous] = self.steps
        else:
            self.wins[index] = 0
            self.interval[index] = min(2 * self.interval[index], tuning.THREADS_PROBE_MAX_STEPS)
            self.loss[index] = max(0.0, seconds - typical * chunks)
        self._schedule()

    @property
    def way(self) -> Way:
        """The way chosen now."""
        return self.ladder[self.current]


#: Every helper thread started, by any ``Helpers`` (``others_are_helpers``).
_HELPER_THREADS: weakref.WeakSet[threading.Thread] = weakref.WeakSet()


class Helpers:
    """Threads that join a CPU launch while they are free: the chunks are claimed one at a
    time (``numbaopt.kernels.cpu``), so the calling thread never waits for a helper that
    is off its core, only for the chunks helpers already hold. Helpers live in compiled
    code and never take the GIL (``numbaopt.kernels.handoff``, which also says where they
    can run): a helper that has run a launch watches for the next one for
    ``tuning.HELPER_WATCH_SECONDS`` (the next launch of a step comes within microseconds),
    then sleeps until one is announced. Started when a launch first asks for them; a
    forked child starts its own. One launch at a time: a launch that finds the helpers
    busy with another thread's runs on its calling thread alone."""

    def __init__(self) -> None:
        self._lock = threading.Lock()  # held by the launch the helpers serve
        self.threads: list[threading.Thread] = []
        self._signals = np.zeros(0, np.int64)
        self._packet = np.zeros(0, np.int64)
        self._watch_cycles = 0

    def run(self, kernel: Callable[..., None], arguments: tuple[Any, ...], work: Any, helpers: int, chunks: int) -> None:
        """``kernel(*arguments, work)`` on the calling thread and up to ``helpers`` others;
        returns once all ``chunks`` are done."""
        from numbaopt.kernels import handoff

        full = (*arguments, work)
        hand = handoff.launcher(kernel, full)
        if hand is None or not self._lock.acquire(blocking=False):
            kernel(*full)
            return
        try:
            if len(self.threads) < helpers:
                self._start(helpers)
            if len(self._packet) < hand.words:
                self._packet = np.zeros(hand.words, np.int64)
            handoff.launch(self._signals, self._packet, hand.addresses, helpers, chunks, full)
        finally:
            self._lock.release()

    def _start(self, helpers: int) -> None:
        from numbaopt.kernels import handoff

        if not self.threads:
            self._signals = np.zeros(handoff.SIGNALS, np.int64)
            self._watch_cycles = _spin_cycles()
        while len(self.threads) < helpers:
            masks = np.zeros((2, handoff.MASK_WORDS), np.int64)
            thread = threading.Thread(target=handoff.serve, args=(self._signals, len(self.threads), self._watch_cycles, masks),
                                      name="numbaopt-helper", daemon=True)
            thread.start()
            self.threads.append(thread)
            _HELPER_THREADS.add(thread)


def _spin_cycles() -> int:
    """``tuning.HELPER_WATCH_SECONDS`` in cycles of the counter helpers' spins read, whose
    rate is measured here (a few gigahertz on x86; where there is none, 0: helpers then
    sleep between launches)."""
    from numbaopt.kernels import handoff

    began, first = time.perf_counter(), handoff.cycles()
    time.sleep(2e-3)
    rate = (handoff.cycles() - first) / (time.perf_counter() - began)
    return int(rate * tuning.HELPER_WATCH_SECONDS)


HELPERS = Helpers()


def others_are_helpers() -> bool:
    """Whether every other Python thread of the process is a helper (of any ``Helpers``).
    Helpers run numbaopt's own kernels and wait on their own signals, and a forked child
    starts its own, so a fork is as safe beside them as beside no thread
    (``numbaopt.keras_isolation`` forks)."""
    current = threading.current_thread()
    return all(thread is current or thread in _HELPER_THREADS for thread in threading.enumerate())


def _forget_helpers_after_fork() -> None:
    """A forked child has none of its parent's threads."""
    global HELPERS
    HELPERS = Helpers()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_helpers_after_fork)


class _Turns:
    """The launches that must take turns. CUDA launches: the reductions share their device
    buffers (``numbaopt.kernels.cuda``). Launches on Numba's team, until the first has shown
    which threading layer Numba chose: its "workqueue" layer (where neither OpenMP nor TBB
    is present, as on macOS wheels) aborts the process when two Python threads launch
    parallel kernels at once; OpenMP and TBB take concurrent launches."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.team_is_threadsafe = False

    def for_team(self) -> contextlib.AbstractContextManager[Any]:
        return contextlib.nullcontext() if self.team_is_threadsafe else self.lock

    def launched_team(self) -> None:
        if not self.team_is_threadsafe:
            import numba

            self.team_is_threadsafe = numba.threading_layer() in ("omp", "tbb")


_TURNS = _Turns()


class Launch:
    """One kernel launch over ``chunks`` chunks (or tensors): ``run(kernel, arguments)``.

    ``parallel`` says which build of the kernel to pass: Numba's team's, or the other. On
    the CPU, ``run`` calls ``kernel(*arguments, work)`` the ``way`` its ``Chooser`` picked and
    reports the time; on a device, ``kernel(*arguments)``."""

    __slots__ = ("way", "parallel", "device", "_chooser", "_index", "_chunks", "_own")

    def __init__(self, way: Way = Way(1, False), chooser: Chooser | None = None, index: int = 0, chunks: int = 0,
                 own: int = 0, device: bool = False) -> None:
        self.way, self.parallel, self.device = way, way.team or device, device
        self._chooser, self._index, self._chunks = chooser, index, chunks
        self._own = own  # the calling thread's Numba thread count, restored after a team launch

    def run(self, kernel: Callable[..., None], arguments: tuple[Any, ...]) -> None:
        if self.device:
            with _TURNS.lock:
                kernel(*arguments)
            return
        threads, team = self.way
        work = np.array([0, 0, threads if team else 1], np.int64)
        began = time.perf_counter()
        if team:
            with _TURNS.for_team():
                self._run_on_team(kernel, (*arguments, work), threads)
            _TURNS.launched_team()
        elif threads > 1:
            HELPERS.run(kernel, arguments, work, threads - 1, self._chunks)
        else:
            kernel(*arguments, work)
        if self._chooser is not None:
            now = time.perf_counter()
            self._chooser.record(self._index, now - began, self._chunks, now)

    def _run_on_team(self, kernel: Callable[..., None], arguments: tuple[Any, ...], threads: int) -> None:
        if self._own == threads:
            kernel(*arguments)
            return
        import numba

        numba.set_num_threads(threads)
        try:
            kernel(*arguments)
        finally:
            numba.set_num_threads(self._own)


#: The launches that choose nothing: on the calling thread alone, and on a device.
SERIAL = Launch()
DEVICE = Launch(device=True)

_CHOOSERS: dict[Hashable, Chooser] = {}
_CPU_LIMIT: list[int] = []  # available_cpus() // local_processes(), or none; computed once


def plan(device: str, parallel: bool, kind: Hashable, dtype: Any, chunks: int) -> Launch:
    """How to launch a kernel of ``kind`` (an update rule, ``"norm"``) over ``chunks`` chunks
    of ``dtype`` on ``device``, whose caller would run it ``parallel``-ly (on more than the
    calling thread): on how many threads. Only parallel CPU launches choose."""
    if device != "cpu":
        return DEVICE
    if not parallel:
        return SERIAL
    own = _NUM_THREADS[0]() if _NUM_THREADS else _num_threads()
    top = min(own, _CPU_LIMIT[0] if _CPU_LIMIT else max_threads(own), chunks)
    if top <= 1:
        return SERIAL
    if not tuning.ADAPTIVE_THREADS:
        return Launch(Way(top, True), None, 0, chunks, own)
    key = (kind, dtype, chunks.bit_length(), top)
    chooser = _CHOOSERS.get(key)
    if chooser is None:
        if len(_CHOOSERS) >= 256:  # kinds and sizes come and go; a few recur every step
            _CHOOSERS.clear()
        from numbaopt.kernels import handoff

        chooser = _CHOOSERS[key] = Chooser(ladder(top, handoff.AVAILABLE))
    index = chooser.pick(time.perf_counter())
    return Launch(chooser.ladder[index], chooser, index, chunks, own)


_NUM_THREADS: list[Callable[[], int]] = []


def _num_threads() -> int:
    """``numba.get_num_threads()``: the calling thread's Numba thread count. Once the pool
    has started, the threading layer's own function, without the public one's check that
    the pool is started (a microsecond per launch); the public one where Numba has none."""
    if not _NUM_THREADS:
        import numba
        from numba.np.ufunc import parallel

        numba.get_num_threads()  # starts the pool
        direct = getattr(parallel, "_get_num_threads", None)
        _NUM_THREADS.append(direct if callable(direct) else numba.get_num_threads)
    return int(_NUM_THREADS[0]())


def max_threads(own: int) -> int:
    """The most threads a step may use, given the calling thread's Numba thread count ``own``."""
    if not _CPU_LIMIT:  # read once: Numba reads NUMBA_NUM_THREADS once too
        explicit = bool(os.environ.get("NUMBA_NUM_THREADS", "").strip())  # the user's number
        _CPU_LIMIT.append(1 << 30 if explicit else max(1, available_cpus() // local_processes()))
    return min(own, _CPU_LIMIT[0])


def available_cpus() -> int:
    """The CPUs this process may run on: its affinity mask, and its cgroup's CPU quota."""
    try:
        count = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not on Linux
        count = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        count = min(count, max(1, math.ceil(quota)))
    return max(1, count)


def cgroup_cpu_quota(root: str = "/sys/fs/cgroup") -> float | None:
    """The CPU quota of this process's cgroup in CPUs (``docker --cpus``, a Kubernetes
    limit), or None when there is none or it cannot be read. cgroup v2 (``cpu.max``) and v1
    (``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``), read at the root of the mounted
    hierarchy, which is the container's own."""
    try:
        with open(os.path.join(root, "cpu.max")) as f:
            quota, period = f.read().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        with open(os.path.join(root, "cpu", "cpu.cfs_quota_us")) as f:
            quota_us = int(f.read())
        with open(os.path.join(root, "cpu", "cpu.cfs_period_us")) as f:
            period_us = int(f.read())
        return None if quota_us <= 0 or period_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


#: Environment variables in which MPI launchers tell a process how many ranks they started
#: on its machine: MPICH's Hydra, Open MPI, MVAPICH.
LOCAL_RANKS_VARIABLES = ("MPI_LOCALNRANKS", "OMPI_COMM_WORLD_LOCAL_SIZE", "MV2_COMM_WORLD_LOCAL_SIZE")


def local_processes() -> int:
    """The processes an MPI launcher started on this machine (1 outside one): ranks that
    share a machine share its CPUs, so each starts from its share."""
    for name in LOCAL_RANKS_VARIABLES:
        try:
            return max(1, int(os.environ[name]))
        except (KeyError, ValueError):
            continue
    return 1


def reset() -> None:
    """Forget every measurement and the CPU limit (tests; a process whose CPUs changed)."""
    _CHOOSERS.clear()
    _CPU_LIMIT.clear()


def choosers() -> dict[Hashable, Chooser]:
    """The choosers by key ``(kind, dtype, size class, cap)``: what a step would run now."""
    return dict(_CHOOSERS)
