"""numbaopt.layouts: Keras's and PyTorch's layouts of a layer's weights, and the optimizer
state moved with them: a run goes on bitwise in the other layout."""
import numpy as np
import pytest

from numbaopt import keras3, layouts, optimizers

SHAPES = {"dense": (3, 4), "conv1d": (5, 3, 4), "conv2d": (2, 3, 3, 4), "conv3d": (2, 2, 3, 3, 4), "same": (4,)}
TORCH = {"dense": (4, 3), "conv1d": (4, 3, 5), "conv2d": (4, 3, 2, 3), "conv3d": (4, 3, 2, 2, 3), "same": (4,)}


@pytest.mark.parametrize("kind", list(SHAPES))
def test_weights_go_to_torch_and_back(kind):
    keras = np.random.default_rng(0).normal(size=SHAPES[kind])
    torch_layout = layouts.to_torch(keras, kind)
    assert torch_layout.shape == TORCH[kind] and torch_layout.flags.c_contiguous
    assert np.array_equal(layouts.to_keras(torch_layout, kind), keras)
    if kind == "dense":  # nn.Linear's weight is the kernel transposed
        assert np.array_equal(torch_layout, keras.T)
    if kind == "conv2d":  # HWIO -> OIHW
        assert torch_layout[1, 2, 0, 1] == keras[0, 1, 2, 1]


def test_bad_kinds_and_ranks_are_refused():
    with pytest.raises(ValueError, match="unknown layout kind 'linear'"):
        layouts.to_torch(np.zeros((2, 2)), "linear")
    with pytest.raises(ValueError, match="a dense kernel has 2 axes, got an array of 3"):
        layouts.to_torch(np.zeros((2, 2, 2)), "dense")


def _steps(opt, params, kinds, steps, to_torch):
    """``steps`` seeded steps of ``opt`` on ``params`` (in Keras's layout, moved when ``to_torch``)."""
    for s in range(steps):
        rng = np.random.default_rng(100 + s)
        grads = [rng.normal(size=p.shape).astype(p.dtype) for p in params]
        if to_torch:
            grads = [layouts.to_torch(g, k) for g, k in zip(grads, kinds)]
        opt.apply_gradients(zip(grads, params))


@pytest.mark.parametrize("make", [
    lambda: optimizers.Adam(lr=0.01),
    lambda: keras3.AdamW(learning_rate=0.01, use_ema=True),
    lambda: keras3.RMSprop(momentum=0.5, centered=True),
], ids=["keras2-adam", "keras3-adamw-ema", "keras3-rmsprop"])
def test_a_run_goes_on_bitwise_in_torchs_layout(make):
    kinds = ["dense", "same", "conv2d"]
    rng = np.random.default_rng(0)
    start = [rng.normal(size=SHAPES[k]).astype(np.float32) for k in kinds]
    keras_run, params = make(), [p.copy() for p in start]
    _steps(keras_run, params, kinds, 3, False)
    moved = layouts.to_torch_optimizer(keras_run, kinds)
    torch_params = [layouts.to_torch(p, k) for p, k in zip(params, kinds)]
    _steps(keras_run, params, kinds, 3, False)  # the Keras-layout run goes on ...
    for s in range(3):  # ... and the moved one on the same gradients, transposed
        rng = np.random.default_rng(100 + s)
        grads = [layouts.to_torch(rng.normal(size=p.shape).astype(p.dtype), k) for p, k in zip(params, kinds)]
        moved.apply_gradients(zip(grads, torch_params))
    for p, q, k in zip(params, torch_params, kinds):
        assert np.array_equal(layouts.to_torch(p, k), q)
    back = layouts.to_keras_optimizer(moved, kinds)
    for kind_slots, ours in zip(back.state().slots.values(), keras_run.state().slots.values()):
        assert all(np.array_equal(a, b) for a, b in zip(kind_slots, ours))
    assert back.iterations == keras_run.iterations


def test_factored_slots_are_refused_and_state_is_needed():
    opt = keras3.Adafactor()
    with pytest.raises(ValueError, match="no state bound to parameters"):
        layouts.to_torch_optimizer(opt, ["dense"])
    opt.apply_gradients([(np.ones((3, 4), np.float32), np.ones((3, 4), np.float32))])
    with pytest.raises(ValueError, match="the r slot is kept per row, not per element"):
        layouts.to_torch_optimizer(opt, ["dense"])
    with pytest.raises(ValueError, match="got 2 layout kinds for the 1 parameters"):
        layouts.to_torch_optimizer(opt, ["same", "same"])
