"""Small steps on the calling thread, and one optimizer shared by several threads."""
import threading

import numpy as np
import pytest

from numbaopt import optimizers, tuning
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

    calls = []
    real = cpu.update_kernel
    monkeypatch.setattr(cpu, "update_kernel", lambda rule, n, parallel=True: calls.append(parallel) or real(rule, n, parallel))
    opt = optimizers.SGD()
    opt.apply_gradients([(np.ones(10), np.zeros(10))])
    big = np.zeros(tuning.PARALLEL_MIN_ELEMENTS)
    optimizers.SGD().apply_gradients([(np.ones_like(big), big)])
    assert calls == [False, True]


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
