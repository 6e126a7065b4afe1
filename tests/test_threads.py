"""Small steps on the calling thread, and one optimizer shared by several threads."""
import subprocess
import sys
import threading

import numpy as np
import pytest

from numbaopt import optimizers, threads, tuning
from tests.cases import DTYPES, NAMES, gradient_steps, make_params

SHAPES = [(), (7,), (3, 50), (40_000,)]  # 40,158 elements: several chunks of 8,192


def _run(name, dtype, clip, threshold, monkeypatch):
    monkeypatch.setattr(tuning, "PARALLEL_MIN_ELEMENTS", threshold)
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 8192)
    opt = getattr(optimizers, name)(**clip)
    params = make_params(dtype, SHAPES)
    for grads in gradient_steps(SHAPES, steps=6):
        opt.apply_gradients(zip([g.astype(dtype) for g in grads], params))
    return params + opt.get_weights()


@pytest.mark.parametrize("clip", [{}, {"clipnorm": 1.0}, {"clipvalue": 0.05}, {"clipnorm": 1.0, "clipvalue": 0.05}],
                         ids=["no-clip", "clipnorm", "clipvalue", "both"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES)
def test_the_serial_and_the_parallel_path_give_bitwise_the_same_step(name, dtype, clip, monkeypatch):
    serial = _run(name, dtype, clip, threshold=10**9, monkeypatch=monkeypatch)
    parallel = _run(name, dtype, clip, threshold=0, monkeypatch=monkeypatch)
    for a, b in zip(serial, parallel, strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_small_step_takes_the_serial_kernel_and_a_large_one_the_parallel(monkeypatch):
    from numbaopt.kernels import cpu

    threads.reset()  # a fresh chooser starts on every thread
    calls = []
    real = cpu.update_kernel
    monkeypatch.setattr(cpu, "update_kernel", lambda rule, n, parallel=True: calls.append(parallel) or real(rule, n, parallel))
    opt = optimizers.SGD()
    opt.apply_gradients([(np.ones(10), np.zeros(10))])
    big = np.zeros(tuning.PARALLEL_MIN_ELEMENTS)
    optimizers.SGD().apply_gradients([(np.ones_like(big), big)])
    import numba

    several = threads.max_threads(numba.get_num_threads()) > 1  # with one thread, serial is the parallel
    assert calls == [False, several]


@pytest.mark.parametrize("size", [100, 200_000], ids=["serial", "parallel"])
def test_one_optimizer_stepped_from_two_threads_ends_where_sequential_steps_do(size):
    """Each apply_gradients is atomic: two threads x 50 steps = 100 steps, none lost."""
    grad = np.linspace(-1, 1, size)

    def steps(opt, param, n):
        for _ in range(n):
            opt.apply_gradients([(grad, param)])

    shared, shared_param = optimizers.Adam(), np.zeros(size)
    threads = [threading.Thread(target=steps, args=(shared, shared_param, 50)) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    alone, alone_param = optimizers.Adam(), np.zeros(size)
    steps(alone, alone_param, 100)
    assert shared.iterations == 100
    assert shared_param.tobytes() == alone_param.tobytes()
    for a, b in zip(shared.get_weights(), alone.get_weights()):
        assert a.tobytes() == b.tobytes()


def test_a_save_while_another_thread_steps_holds_a_step_boundary(tmp_path):
    """The state a save reads is taken under the optimizer's lock: iterations, the scalar
    state and every slot belong to the same step."""
    from numbaopt import load_optimizer, save_optimizer

    size = 50_000
    opt, param = optimizers.Nadam(), np.zeros(size)
    grad = np.ones(size)

    def stepping():
        for _ in range(200):
            opt.apply_gradients([(grad, param)])

    worker = threading.Thread(target=stepping)
    worker.start()
    try:
        for k in range(5):
            save_optimizer(opt, tmp_path / "opt.h5")
            saved = load_optimizer(tmp_path / "opt.h5")
            # Replaying the saved number of steps from scratch gives exactly the saved state.
            replay, replay_param = optimizers.Nadam(), np.zeros(size)
            for _ in range(saved.iterations):
                replay.apply_gradients([(grad, replay_param)])
            for a, b in zip(saved.get_weights(), replay.get_weights()):
                assert a.tobytes() == b.tobytes(), k
    finally:
        worker.join()


# ---------------------------------------------------------------- the thread count (issue 24)


class _Clock:
    def __init__(self):
        self.now = 0.0


def _drive(chooser, clock, cost, steps, chunks=32):
    """``steps`` steps of ``chooser``; ``cost(way)`` is a step's time. Returns the ways run."""
    ran = []
    for _ in range(steps):
        index = chooser.pick(clock.now)
        seconds = cost(chooser.ladder[index])
        clock.now += seconds + 1e-3  # the rest of a training step
        chooser.record(index, seconds, chunks, clock.now)
        ran.append(chooser.ladder[index])
    return ran


SERIAL, HELPED, TEAM = threads.Way(1, False), threads.Way(2, False), threads.Way(2, True)


def _quiet(way):  # Numba's team is the fastest way on a quiet machine
    return 0.8e-3 if way.threads == 1 else 0.4e-3 if way.team else 0.5e-3


def _busy(way):  # beside busy processes, a team waits for time slices; helpers join when free
    return 16e-3 if way.team else 0.5e-3 if way.threads == 1 else 0.4e-3


def test_the_ladder_of_ways():
    W = threads.Way
    assert threads.ladder(1) == (SERIAL,)
    assert threads.ladder(2) == (SERIAL, HELPED, TEAM)
    assert threads.ladder(6) == (SERIAL, HELPED, W(4, False), W(6, False), TEAM, W(4, True), W(6, True))
    assert [w.threads for w in threads.ladder(8)] == [1, 2, 4, 8, 2, 4, 8]


def test_a_chooser_keeps_every_thread_of_the_team_on_a_quiet_machine():
    chooser, clock = threads.Chooser(threads.ladder(2)), _Clock()
    ran = _drive(chooser, clock, _quiet, 2000)
    assert chooser.way == TEAM
    assert ran[-1000:].count(TEAM) >= 990  # rare tries of the others


def test_a_chooser_leaves_the_team_under_load_and_comes_back_when_it_ends():
    chooser, clock = threads.Chooser(threads.ladder(2)), _Clock()
    _drive(chooser, clock, _quiet, 300)
    ran = _drive(chooser, clock, _busy, 2000)
    assert chooser.way == HELPED
    assert ran[:10].count(TEAM) <= 6 and TEAM not in ran[8:10]  # it notices within a few steps
    tries = ran[100:].count(TEAM)
    assert tries * 16e-3 <= 2 * tuning.THREADS_PROBE_BUDGET * clock.now  # tries lose little time
    assert tries <= 0.05 * len(ran[100:])  # so the 90th percentile never sees them
    ran = _drive(chooser, clock, _quiet, 4 * tuning.THREADS_PROBE_MAX_STEPS)  # about 3 s
    assert chooser.way == TEAM
    assert ran[-50:].count(TEAM) >= 45


def test_a_chooser_climbs_a_longer_ladder_to_the_best_way():
    def cost(way):  # four cores free: more threads help up to four, then wait for time slices
        n = way.threads
        return (8e-3 / n if n <= 4 else 20e-3) * (1 if way.team else 1.3)

    chooser, clock = threads.Chooser(threads.ladder(16)), _Clock()
    _drive(chooser, clock, cost, 300)
    assert chooser.way == threads.Way(4, True)


def _forced(way, monkeypatch):
    """Every chooser picks ``way`` (or, with fewer threads, the most it has of that kind)."""
    def pick(self, now):
        return max((i for i, w in enumerate(self.ladder) if w.threads <= way.threads and w.team == way.team), default=0)

    monkeypatch.setattr(threads.Chooser, "pick", pick)


def _run_forced(way, monkeypatch, name="Adam", dtype=np.float32, clip=None):
    """``_run`` with every launch of a parallel size taking ``way``."""
    threads.reset()
    _forced(way, monkeypatch)
    return _run(name, dtype, {"clipnorm": 1.0} if clip is None else clip, threshold=0, monkeypatch=monkeypatch)


@pytest.mark.parametrize("clip", [{}, {"clipnorm": 1.0}], ids=["no-clip", "clipnorm"])
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", ["Adam", "Nadam", "SGD"])
def test_every_way_gives_bitwise_the_same_step(name, dtype, clip, monkeypatch):
    import numba

    results = []
    most = numba.config.NUMBA_NUM_THREADS
    for way in (SERIAL, HELPED, TEAM, threads.Way(most, False), threads.Way(most, True)):
        results.append(_run_forced(way, monkeypatch, name, dtype, clip))
    for other in results[1:]:
        for a, b in zip(results[0], other, strict=True):
            assert a.tobytes() == b.tobytes()


def test_a_step_that_slows_down_under_load_leaves_the_team_with_the_same_results(monkeypatch):
    """Simulated load: the clock the policy reads runs 20 ms during every launch on Numba's team."""
    import numba

    from numbaopt.kernels import cpu

    threads.reset()
    if threads.max_threads(numba.get_num_threads()) < 2:
        pytest.skip("one CPU: every step is serial already")

    clock = _Clock()
    real_kernel = cpu.update_kernel
    launched = []

    def update_kernel(rule, n, parallel=True):
        kernel = real_kernel(rule, n, parallel)

        def timed(*args):
            kernel(*args)
            clock.now += 20e-3 if parallel else 0.5e-3
            launched.append(parallel)
        return timed

    monkeypatch.setattr(cpu, "update_kernel", update_kernel)
    monkeypatch.setattr(threads.time, "perf_counter", lambda: clock.now)
    threads.reset()
    size = 4 * tuning.CHUNK_ELEMENTS
    grad, param, opt = np.linspace(-1, 1, size), np.zeros(size), optimizers.Adam()
    for _ in range(60):
        opt.apply_gradients([(grad, param)])
        clock.now += 1e-3
    assert launched[:2] == [True, True]  # every thread of the team at first
    assert launched[-40:].count(True) <= 2  # then the calling thread, helped or alone
    monkeypatch.undo()
    threads.reset()
    alone, alone_param = optimizers.Adam(), np.zeros(size)
    for _ in range(60):
        alone.apply_gradients([(grad, alone_param)])
    assert param.tobytes() == alone_param.tobytes()
    for a, b in zip(opt.get_weights(), alone.get_weights(), strict=True):
        assert a.tobytes() == b.tobytes()


def test_a_launch_on_a_smaller_team_sets_numba_for_it_and_restores_the_callers_count():
    import numba

    before = numba.get_num_threads()
    if before < 2:
        pytest.skip("one Numba thread: nothing fewer to run on")
    seen = []
    launch = threads.Launch(threads.Way(1, True), None, 0, 1, before)
    assert launch.parallel
    launch.run(lambda work: seen.append((numba.get_num_threads(), list(work))), ())
    assert seen == [(1, [0, 0, 1])] and numba.get_num_threads() == before

    def fails(work):
        raise RuntimeError("a kernel that fails")

    with pytest.raises(RuntimeError):
        launch.run(fails, ())
    assert numba.get_num_threads() == before


def test_the_callers_numba_thread_count_is_the_most_a_step_uses(monkeypatch):
    import numba

    threads.reset()
    before = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        assert threads.plan("cpu", True, "norm", np.float64, 64) is threads.SERIAL
    finally:
        numba.set_num_threads(before)


def test_small_steps_and_cuda_launches_choose_nothing():
    assert threads.plan("cpu", False, "norm", np.float64, 64) is threads.SERIAL
    assert threads.plan("cuda", True, "norm", np.float64, 64) is threads.DEVICE


def test_without_adaptation_a_step_uses_every_thread_it_may(monkeypatch):
    import numba

    monkeypatch.setattr(tuning, "ADAPTIVE_THREADS", False)
    launch = threads.plan("cpu", True, "norm", np.float64, 1024)
    assert launch.way == threads.Way(threads.max_threads(numba.get_num_threads()), True)
    assert not threads.choosers() or all(key[0] != "norm" or key[2] != 11 for key in threads.choosers())


def test_the_cap_is_the_cpus_shared_by_the_ranks_on_this_machine(monkeypatch):
    monkeypatch.delenv("NUMBA_NUM_THREADS", raising=False)
    monkeypatch.setattr(threads, "available_cpus", lambda: 8)
    for name in threads.LOCAL_RANKS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    threads.reset()
    assert threads.max_threads(64) == 8
    assert threads.max_threads(4) == 4
    monkeypatch.setenv("MPI_LOCALNRANKS", "4")
    threads.reset()
    assert threads.max_threads(64) == 2
    monkeypatch.setenv("MPI_LOCALNRANKS", "16")
    threads.reset()
    assert threads.max_threads(64) == 1
    threads.reset()


def test_an_explicit_numba_num_threads_is_the_users_number(monkeypatch):
    monkeypatch.setenv("NUMBA_NUM_THREADS", "6")
    monkeypatch.setenv("MPI_LOCALNRANKS", "4")
    monkeypatch.setattr(threads, "available_cpus", lambda: 2)
    threads.reset()
    assert threads.max_threads(6) == 6
    threads.reset()


@pytest.mark.parametrize("version", ["v1", "v2"])
def test_the_cgroup_cpu_quota(version, tmp_path):
    if version == "v2":
        (tmp_path / "cpu.max").write_text("max 100000\n")
        assert threads.cgroup_cpu_quota(str(tmp_path)) is None
        (tmp_path / "cpu.max").write_text("150000 100000\n")
    else:
        (tmp_path / "cpu").mkdir()
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
        (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
        assert threads.cgroup_cpu_quota(str(tmp_path)) is None
        (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("150000\n")
    assert threads.cgroup_cpu_quota(str(tmp_path)) == 1.5
    assert threads.cgroup_cpu_quota(str(tmp_path / "absent")) is None


def test_numbaopt_sets_no_environment_variable_and_imports_numba_only_to_step():
    code = (
        "import os, sys\n"
        "before = dict(os.environ)\n"
        "import numbaopt, numbaopt.threads, numbaopt.slots\n"
        "from numbaopt import optimizers\n"
        "assert 'numba' not in sys.modules, 'imported numba'\n"
        "import numpy as np\n"
        "p = np.zeros(1 << 17, np.float32)\n"
        "optimizers.Adam().apply_gradients([(np.ones_like(p), p)])\n"
        "assert 'numba' in sys.modules\n"
        "assert dict(os.environ) == before, 'changed the environment'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=300)


_LAYER_RUN = (
    "import hashlib, numpy as np, numba\n"
    "from numbaopt import optimizers, threads\n"
    "size = 200_000\n"
    "grad, param, opt = np.linspace(-1, 1, size), np.zeros(size), optimizers.Adam(clipnorm=1.0)\n"
    "for _ in range(5):\n"
    "    opt.apply_gradients([(grad, param)])\n"
    "print(numba.threading_layer(), hashlib.sha256(param.tobytes()).hexdigest())\n"
)


def test_the_users_threading_layer_is_kept_and_gives_the_same_step():
    import hashlib
    import os

    size = 200_000
    grad, param, opt = np.linspace(-1, 1, size), np.zeros(size), optimizers.Adam(clipnorm=1.0)
    for _ in range(5):
        opt.apply_gradients([(grad, param)])
    env = dict(os.environ, NUMBA_THREADING_LAYER="workqueue")
    out = subprocess.run([sys.executable, "-c", _LAYER_RUN], check=True, timeout=300, env=env,
                         capture_output=True, text=True).stdout.split()
    assert out == ["workqueue", hashlib.sha256(param.tobytes()).hexdigest()]


@pytest.mark.torch
def test_the_torch_optimizers_choose_their_thread_count_the_same_way(monkeypatch):
    torch = pytest.importorskip("torch")
    import numbaopt.torch as nt
    from numbaopt.optimizers.adam import adam_rule

    threads.reset()
    param = torch.nn.Parameter(torch.zeros(4 * tuning.CHUNK_ELEMENTS))
    param.grad = torch.ones_like(param)
    opt = nt.Adam([param])
    for _ in range(3):
        opt.step()
    import numba

    if threads.max_threads(numba.get_num_threads()) > 1:  # else every step is serial, nothing to choose
        assert [key[:3] for key in threads.choosers()] == [(adam_rule, np.dtype(np.float32), 3)]
    _forced(SERIAL, monkeypatch)
    threads.reset()
    serial = torch.nn.Parameter(torch.zeros(4 * tuning.CHUNK_ELEMENTS))
    serial.grad = torch.ones_like(serial)
    serial_opt = nt.Adam([serial])
    for _ in range(3):
        serial_opt.step()
    assert torch.equal(param, serial)


def test_one_try_that_met_a_pause_does_not_pin_the_choice():
    chooser, clock = threads.Chooser(threads.ladder(2)), _Clock()
    _drive(chooser, clock, _busy, 300)
    assert chooser.way == HELPED
    index = chooser.pick(clock.now)
    while chooser.ladder[index] != TEAM:  # run steps until the next try of the team
        chooser.record(index, _busy(chooser.ladder[index]), 32, clock.now)
        clock.now += 1.5e-3
        index = chooser.pick(clock.now)
    clock.now += 5.0
    chooser.record(index, 5.0, 32, clock.now)  # that try met a five-second pause
    _drive(chooser, clock, _quiet, 12_000)  # 12,000 quiet steps: about 17 s
    assert chooser.way == TEAM


# ---------------------------------------------------------------- helper threads (issue 24)




def _same(a, b):
    return all(x.tobytes() == y.tobytes() for x, y in zip(a, b, strict=True))


def test_launches_from_two_threads_at_once_share_the_helpers_and_step_as_one_at_a_time(monkeypatch):
    alone = _run_forced(SERIAL, monkeypatch)
    results, errors = [None] * 4, []

    def step(k):
        try:
            results[k] = _run_forced(HELPED, monkeypatch)
        except Exception as error:  # noqa: BLE001 - reported below
            errors.append(error)

    workers = [threading.Thread(target=step, args=(k,)) for k in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert not errors
    assert all(_same(alone, result) for result in results)


def test_a_launch_whose_helpers_never_come_is_done_by_the_calling_thread(monkeypatch):
    from numbaopt.kernels import handoff

    alone = _run_forced(SERIAL, monkeypatch)
    absent = threads.Helpers()
    monkeypatch.setattr(handoff, "serve", lambda signals, number, budget, masks: None)  # started, and gone at once
    monkeypatch.setattr(threads, "HELPERS", absent)
    assert _same(alone, _run_forced(threads.Way(4, False), monkeypatch))
    assert absent.threads and absent._signals[handoff.LAUNCHES] > 0  # the launches were announced


def test_a_helper_that_runs_a_launch_after_it_ended_changes_nothing():
    from numbaopt.kernels import cpu

    size = 5 * 8192
    param, grad = np.ones(size), np.full(size, 0.5)
    chunks = np.array([[0, k * 8192, (k + 1) * 8192] for k in range(5)], np.int64)
    opt = optimizers.SGD(momentum=0.9)
    kernel = cpu.update_kernel(opt.rule, len(opt.slot_names), False)
    arguments = (np.array([param.ctypes.data]), np.array([grad.ctypes.data]), np.zeros((len(opt.slot_names), size)),
                 np.zeros(1, np.int64), chunks, (1.0, 1.0, np.inf), opt.step_scalars(opt.step_inputs(), np.float64),
                 np.empty(0))
    work = np.array([0, 0, 1], np.int64)
    threads.HELPERS.run(kernel, arguments, work, 1, len(chunks))
    after = param.copy()
    assert not np.array_equal(after, np.ones(size)) and list(work[1:]) == [5, 1]
    kernel(*arguments, work)  # a late helper: every chunk is claimed already
    assert param.tobytes() == after.tobytes()


def _fork_and_step(queue, monkeypatch):
    stepped = _run_forced(HELPED, monkeypatch)
    queue.put(([a.tobytes() for a in stepped], len(threads.HELPERS.threads)))


@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's")
def test_a_forked_child_steps_with_helpers_of_its_own(monkeypatch):
    import multiprocessing

    expected = _run_forced(HELPED, monkeypatch)  # the parent's helpers are running
    assert threads.HELPERS.threads
    context = multiprocessing.get_context("fork")
    queue = context.Queue()
    child = context.Process(target=_fork_and_step, args=(queue, monkeypatch))
    child.start()
    stepped, helpers = queue.get(timeout=120)
    child.join(timeout=60)
    assert child.exitcode == 0 and helpers >= 1  # its own
    assert stepped == [a.tobytes() for a in expected]


@pytest.mark.skipif(sys.platform != "linux", reason="fork is Linux's")
def test_a_keras_file_is_still_read_in_a_forked_child_beside_the_helpers(monkeypatch, tmp_path):
    import os

    from numbaopt import keras_isolation

    _run_forced(HELPED, monkeypatch)
    assert threads.HELPERS.threads and threads.others_are_helpers()
    path = tmp_path / "file.h5"
    path.write_bytes(b"")
    assert keras_isolation.isolated(lambda p: os.getpid(), str(path)) != os.getpid()
    other = threading.Thread(target=threading.Event().wait, args=(2,))
    other.start()
    assert not threads.others_are_helpers()  # another thread could hold h5py's lock
    other.join()


def test_helpers_that_never_spin_still_join_and_give_the_same_step(monkeypatch):
    """Where there is no cycle counter to time spins with (``kernels.handoff.cycles`` gives 0),
    helpers sleep between launches and are woken for each."""
    alone = _run_forced(SERIAL, monkeypatch)
    monkeypatch.setattr(threads, "_spin_cycles", lambda: 0)
    sleeping = threads.Helpers()
    monkeypatch.setattr(threads, "HELPERS", sleeping)
    assert _same(alone, _run_forced(HELPED, monkeypatch))
    assert len(sleeping.threads) == 1
    monkeypatch.undo()
    assert threads.others_are_helpers()  # the replaced instance's helper is still a helper
