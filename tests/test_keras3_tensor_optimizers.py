"""Keras 3's optimizers with per-tensor state: Lamb, Adafactor and Muon against slow,
obvious NumPy references of Keras 3's ``update_step`` (no Keras needed).

The references follow Keras's source op by op in the parameter's dtype, with the constants
rounded where Keras on TensorFlow rounds them; they sum with NumPy's own order, so float32
agrees to rounding, float64 to about 1e-13.
"""
import numpy as np
import pytest

from numbaopt import checkpoint, keras3, tuning
from tests.cases import DTYPES, relative_error

#: name -> shape: a 2-D wide and a 2-D tall matrix, a vector, a 3-D tensor, an embedding, a scalar.
PARAMS = {
    "dense/kernel": (3, 4), "dense/bias": (4,), "dense_1/kernel": (6, 3), "conv/kernel": (2, 3, 4),
    "embedding/embeddings": (5, 3), "scale/gamma": (),
}
NAMES = list(PARAMS)
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-12}
STEPS = 6


def f32(x, kind):
    """``ops.cast(python_float, dtype)`` on TensorFlow: through float32."""
    return kind(np.float32(x))


def make(dtype, seed=0, steps=STEPS, shapes=PARAMS):
    rng = np.random.default_rng(seed)
    params = [rng.normal(size=s).astype(dtype) for s in shapes.values()]
    grads = [[rng.normal(size=s).astype(dtype) for s in shapes.values()] for _ in range(steps)]
    return params, grads


def decayed(p, wd, lr, kind):
    return p if wd is None else p - p * f32(wd, kind) * f32(lr, kind)


# ------------------------------------------------------------------ references


def lamb_reference(params, grads, excluded=(), learning_rate=0.001, beta_1=0.9, beta_2=0.999, epsilon=1e-7,
                   weight_decay=None):
    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    for step, gs in enumerate(grads):
        for i, g in enumerate(gs):
            p, kind = params[i], params[i].dtype.type
            lr, t = kind(np.float32(learning_rate)), kind(step + 1)
            p = decayed(p, None if NAMES[i] in excluded else weight_decay, learning_rate, kind)
            m[i] = m[i] + (g - m[i]) * kind(1 - beta_1)
            v[i] = v[i] + (g * g - v[i]) * kind(1 - beta_2)
            update = (m[i] / (kind(1) - f32(beta_1, kind) ** t)) / (
                np.sqrt(v[i] / (kind(1) - f32(beta_2, kind) ** t)) + kind(epsilon))
            w_norm, u_norm = np.sqrt(np.sum(p.astype(np.float64) ** 2)), np.sqrt(np.sum(update.astype(np.float64) ** 2))
            ratio = kind(w_norm / u_norm) if w_norm > 0 and u_norm > 0 else kind(1)
            params[i] = p - ratio * lr * update
    return params, {"momentum": m, "velocity": v}


def _rms(x):
    return np.sqrt(np.mean(np.square(x.astype(np.float64)))).astype(x.dtype)


def adafactor_reference(params, grads, learning_rate=0.001, beta_2_decay=-0.8, epsilon_1=1e-30, epsilon_2=1e-3,
                        clip_threshold=1.0, weight_decay=None):
    params = [p.copy() for p in params]
    r = [np.zeros(p.shape[:-1], p.dtype) if p.ndim >= 2 else None for p in params]
    c = [np.zeros(p.shape[:-2] + p.shape[-1:], p.dtype) if p.ndim >= 2 else None for p in params]
    v = [np.zeros_like(p) for p in params]
    for step, gs in enumerate(grads):
        for i, g in enumerate(gs):
            p, kind = params[i], params[i].dtype.type
            lr, t, one = kind(np.float32(learning_rate)), kind(step + 1), kind(1)
            p = decayed(p, weight_decay, learning_rate, kind)
            rho_t = min(lr, one / np.sqrt(t))
            alpha_t = max(f32(epsilon_2, kind), _rms(p)) * rho_t
            s = g * g + kind(epsilon_1)
            beta_2_t = one - t ** kind(beta_2_decay)
            if p.ndim >= 2:
                r[i] = beta_2_t * r[i] + (one - beta_2_t) * np.mean(s.astype(np.float64), axis=-1).astype(kind)
                c[i] = beta_2_t * c[i] + (one - beta_2_t) * np.mean(s.astype(np.float64), axis=-2).astype(kind)
                mean_r = np.mean(r[i].astype(np.float64), axis=-1, keepdims=True).astype(kind)
                v[i] = np.expand_dims(r[i] / mean_r, -1) * np.expand_dims(c[i], -2)
            else:
                v[i] = beta_2_t * v[i] + (one - beta_2_t) * s
            u = g / np.sqrt(v[i])
            u_hat = u / max(one, _rms(u) / kind(clip_threshold))
            params[i] = p - alpha_t * u_hat
    return params, {"r": r, "c": c, "velocity": v}


def _matmul(a, b):
    """The matrix product as a loop (the reference does not trust BLAS), sums in float64."""
    out = np.zeros((a.shape[0], b.shape[1]), a.dtype)
    for i in range(a.shape[0]):
        for j in range(b.shape[1]):
            out[i, j] = sum(float(a[i, k]) * float(b[k, j]) for k in range(a.shape[1]))
    return out


def muon_reference(params, grads, names=NAMES, excluded=(), learning_rate=0.001, adam_beta_1=0.9, adam_beta_2=0.999,
                   adam_weight_decay=0.004, epsilon=1e-7, weight_decay=0.004, exclude_layers=(),
                   exclude_embeddings=True, muon_a=3.4445, muon_b=-4.7750, muon_c=2.0315, adam_lr_ratio=1,
                   momentum=0.95, ns_steps=5, nesterov=True, rms_rate=0.2):
    import re

    params = [p.copy() for p in params]
    m = [np.zeros_like(p) for p in params]
    v = [np.zeros_like(p) for p in params]
    adamw = [p.ndim != 2 or (exclude_embeddings and "embedding" in n.lower())
             or any(re.search(k, n) for k in exclude_layers) for p, n in zip(params, names)]
    for step, gs in enumerate(grads):
        for i, g in enumerate(gs):
            p, kind = params[i], params[i].dtype.type
            lr, t = kind(np.float32(learning_rate)), kind(step + 1)
            decay = None if names[i].split("/")[-1] in excluded else (adam_weight_decay if adamw[i] else weight_decay)
            p = decayed(p, decay, learning_rate, kind)
            if adamw[i]:
                lr_a = kind(np.float32(learning_rate) * np.float32(adam_lr_ratio))
                alpha = lr_a * np.sqrt(kind(1) - f32(adam_beta_2, kind) ** t) / (kind(1) - f32(adam_beta_1, kind) ** t)
                m[i] = m[i] + (g - m[i]) * kind(1 - adam_beta_1)
                v[i] = v[i] + (g * g - v[i]) * kind(1 - adam_beta_2)
                params[i] = p - (m[i] * alpha) / (np.sqrt(v[i]) + kind(epsilon))
                continue
            m[i] = m[i] + (g + m[i] * kind(momentum - 1))
            x = g + kind(momentum) * m[i] if nesterov else m[i].copy()
            tall = x.shape[0] > x.shape[1]
            if tall:
                x = x.T.copy()
            x = x / (kind(np.sqrt(np.sum(x.astype(np.float64) ** 2))) + kind(1e-7))
            for _ in range(ns_steps):
                gram = _matmul(x, x.T)
                x = kind(muon_a) * x + _matmul(kind(muon_b) * gram + _matmul(kind(muon_c) * gram, gram), x)
            if tall:
                x = x.T.copy()
            update = lr * x
            if rms_rate is not None:
                update = update * kind(np.sqrt(np.float32(max(x.shape)))) * kind(rms_rate)
            params[i] = p - update
    return params, {"momentum": m, "velocity": v}


# ------------------------------------------------------------------ cases

CASES = {
    "lamb": (keras3.Lamb, lamb_reference, {}),
    "lamb-decay": (keras3.Lamb, lamb_reference, {"learning_rate": 0.01, "weight_decay": 0.05, "beta_1": 0.8, "epsilon": 1e-3}),
    "adafactor": (keras3.Adafactor, adafactor_reference, {"learning_rate": 0.01}),
    "adafactor-settings": (keras3.Adafactor, adafactor_reference, {
        "learning_rate": 0.05, "clip_threshold": 0.5, "epsilon_1": 1e-3, "epsilon_2": 0.1, "beta_2_decay": -0.5,
        "weight_decay": 0.01}),
    "muon": (keras3.Muon, muon_reference, {"learning_rate": 0.01}),
    "muon-settings": (keras3.Muon, muon_reference, {
        "learning_rate": 0.02, "nesterov": False, "ns_steps": 3, "rms_rate": None, "adam_lr_ratio": 0.1,
        "exclude_layers": ["dense_1"], "exclude_embeddings": False, "weight_decay": 0.1, "adam_weight_decay": None,
        "momentum": 0.9, "adam_beta_1": 0.8}),
}


def run(cls, kwargs, dtype, to_device=list, to_host=list, excluded=(), steps=STEPS, shapes=PARAMS):
    params, grads = make(dtype, steps=steps, shapes=shapes)
    initial = [p.copy() for p in params]
    opt = cls(**kwargs)
    if excluded:
        opt.exclude_from_weight_decay(var_names=list(excluded))
    on_device = to_device(params)
    for step in grads:
        opt.apply_gradients(zip(to_device(step), on_device), names=list(shapes))
    return opt, to_host(on_device), initial, grads


def assert_matches(opt, params, expected, slots, dtype):
    for name, p, r in zip(NAMES, params, expected):
        assert p.dtype == dtype
        assert relative_error(p, r) <= TOLERANCE[dtype], name
    state = opt.state()
    for kind, arrays in slots.items():
        for name, ours, theirs in zip(NAMES, state.slots[kind], arrays):
            if theirs is not None:
                assert relative_error(ours, theirs) <= TOLERANCE[dtype], (kind, name)


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", list(CASES))
def test_matches_the_reference(case, dtype):
    cls, reference, kwargs = CASES[case]
    opt, params, initial, grads = run(cls, kwargs, dtype)
    expected, slots = reference(initial, grads, **kwargs)
    assert_matches(opt, params, expected, slots, dtype)
    assert opt.iterations == STEPS


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
def test_weight_decay_exclusions_by_name(dtype):
    """Lamb matches the path plus ":0" (the tf.Variable name); Muon its short name only."""
    opt, params, initial, grads = run(keras3.Lamb, {"weight_decay": 0.05, "learning_rate": 0.01}, dtype, excluded=["dense"])
    expected, _ = lamb_reference(initial, grads, excluded=("dense/kernel", "dense/bias", "dense_1/kernel"),
                                 weight_decay=0.05, learning_rate=0.01)
    assert all(relative_error(p, r) <= TOLERANCE[dtype] for p, r in zip(params, expected))
    for patterns, short in ((["dense"], ()), (["kernel"], ("kernel",))):
        kwargs = {"weight_decay": 0.1, "adam_weight_decay": 0.05, "learning_rate": 0.01}
        opt, params, initial, grads = run(keras3.Muon, kwargs, dtype, excluded=patterns)
        expected, _ = muon_reference(initial, grads, excluded=short, **kwargs)
        assert all(relative_error(p, r) <= TOLERANCE[dtype] for p, r in zip(params, expected)), patterns


def test_muon_without_a_gradient_leaves_its_parameter_and_momentum():
    params, grads = make(np.float32, steps=2)
    opt = keras3.Muon(learning_rate=0.01)
    opt.apply_gradients(zip(grads[0], params), names=NAMES)
    before = [p.copy() for p in params]
    momentum = [m.copy() for m in opt.state().slots["momentum"]]
    opt.apply_gradients(zip([None] + grads[1][1:], params), names=NAMES)
    assert params[0].tobytes() == before[0].tobytes()
    assert opt.state().slots["momentum"][0].tobytes() == momentum[0].tobytes()
    assert all(a.tobytes() != b.tobytes() for a, b in zip(params[1:], before[1:]))


def test_muon_layer_exclusions_need_names():
    params, grads = make(np.float32, steps=1)
    with pytest.raises(ValueError, match="names="):
        keras3.Muon(exclude_layers=["dense"]).apply_gradients(zip(grads[0], params))
    assert keras3.Muon(exclude_layers=None).get_config()["exclude_layers"] == []


def test_keras_variables_are_keras_3s():
    """Paths and order of Keras 3.15's ``optimizer.variables`` (as Keras on TensorFlow builds them)."""
    shapes = {"dense/kernel": (3, 4), "dense/bias": (4,), "embedding/embeddings": (5, 3)}
    seen = {}
    for cls in (keras3.Lamb, keras3.Adafactor, keras3.Muon):
        opt, *_ = run(cls, {"name": "opt"}, np.float32, steps=1, shapes=shapes)
        seen[cls.__name__] = [(path, value.shape, value.dtype.name) for path, value in opt.keras_variables()]
    head = [("opt/iteration", (), "int64"), ("opt/learning_rate", (), "float32")]
    assert seen["Lamb"] == head + [
        (f"opt/{p}_{slot}", s, "float32") for p, s in (("dense_kernel", (3, 4)), ("dense_bias", (4,)),
                                                       ("embedding_embeddings", (5, 3))) for slot in ("momentum", "velocity")]
    assert seen["Adafactor"] == head + [
        ("opt/kernel", (3,), "float32"), ("opt/kernel", (4,), "float32"), ("opt/dense_kernel_velocity", (3, 4), "float32"),
        ("opt/bias", (), "int32"), ("opt/bias", (), "int32"), ("opt/dense_bias_velocity", (4,), "float32"),
        ("opt/embeddings", (5,), "float32"), ("opt/embeddings", (3,), "float32"),
        ("opt/embedding_embeddings_velocity", (5, 3), "float32"),
    ]
    assert seen["Muon"] == head + [
        ("opt/dense_kernel_momentum", (3, 4), "float32"), ("opt/dense_bias_momentum", (4,), "float32"),
        ("opt/dense_bias_velocity", (4,), "float32"), ("opt/embedding_embeddings_momentum", (5, 3), "float32"),
        ("opt/embedding_embeddings_velocity", (5, 3), "float32"),
    ]


def test_configs_round_trip():
    for cls, _, kwargs in CASES.values():
        opt = cls(**kwargs)
        again = keras3.deserialize(keras3.serialize(opt))
        assert type(again) is cls and again.get_config() == opt.get_config()
    assert list(keras3.Muon().get_config())[-3:] == ["exclude_embeddings", "adam_weight_decay", "rms_rate"]


@pytest.mark.parametrize("case", ["lamb-decay", "adafactor-settings", "muon"])
def test_the_same_for_any_thread_count(case, monkeypatch):
    cls, _, kwargs = CASES[case]
    results = []
    for threshold in (0, 1 << 40):  # every step parallel, then every step on one thread
        monkeypatch.setattr(tuning, "PARALLEL_MIN_ELEMENTS", threshold)
        opt, params, _, _ = run(cls, kwargs, np.float32)
        results.append([p.tobytes() for p in params] + [a.tobytes() for v in opt.state().slots.values() for a in v])
    assert results[0] == results[1]


@pytest.mark.parametrize("case", ["lamb-decay", "adafactor-settings", "muon-settings"])
def test_a_checkpoint_continues_bitwise(case, tmp_path):
    cls, _, kwargs = CASES[case]
    opt, params, _, _ = run(cls, kwargs, np.float64, steps=3)
    checkpoint.save_optimizer(opt, tmp_path / "opt.h5")
    loaded = checkpoint.load_optimizer(tmp_path / "opt.h5")
    copies = [p.copy() for p in params]
    _, grads = make(np.float64, seed=5, steps=2)
    for step in grads:
        opt.apply_gradients(zip(step, params), names=NAMES)
        loaded.apply_gradients(zip(step, copies), names=NAMES)
    assert [p.tobytes() for p in params] == [p.tobytes() for p in copies]


@pytest.fixture
def on_cuda(monkeypatch):
    """Device arguments for CUDA arrays, with blocks and chunks small enough that tiny
    tensors span several."""
    from numba import cuda

    monkeypatch.setattr(tuning, "CUDA_THREADS_PER_BLOCK", 4)
    monkeypatch.setattr(tuning, "CHUNK_ELEMENTS", 8)
    return {"to_device": lambda arrays: [cuda.to_device(a) for a in arrays],
            "to_host": lambda arrays: [a.copy_to_host() for a in arrays]}


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("case", ["lamb-decay", "adafactor-settings", "muon"])
def test_runs_on_cuda(case, dtype, on_cuda):
    cls, reference, kwargs = CASES[case]
    opt, params, initial, grads = run(cls, kwargs, dtype, steps=2, **on_cuda)
    expected, slots = reference(initial, grads, **kwargs)
    assert_matches(opt, params, expected, slots, dtype)


def test_muon_refuses_steps_by_parts_or_shards():
    params, grads = make(np.float32, steps=1)
    with pytest.raises(ValueError, match="apply_gradients"):
        keras3.Muon().apply_gradient_parts(grads[0], params, [({}, [0])])
    with pytest.raises(ValueError, match="apply_gradients"):
        keras3.Muon().apply_shard(zip(grads[0], params), None)


@pytest.mark.torch
@pytest.mark.parametrize("case", ["lamb-decay", "adafactor-settings"])
def test_runs_bitwise_through_the_torch_adapter(case):
    torch = pytest.importorskip("torch")
    from numbaopt.torch import keras3 as torch_keras3

    cls, _, kwargs = CASES[case]
    shapes = {k: v for k, v in PARAMS.items()}
    params, grads = make(np.float64, steps=3, shapes=shapes)
    tensors = [torch.nn.Parameter(torch.tensor(p.copy())) for p in params]
    opt, core = getattr(torch_keras3, cls.__name__)(tensors, **kwargs), cls(**kwargs)
    for step in grads:
        for t, g in zip(tensors, step):
            t.grad = torch.tensor(g)
        opt.step()
        core.apply_gradients(zip(step, params))
    assert [t.detach().numpy().tobytes() for t in tensors] == [p.tobytes() for p in params]
