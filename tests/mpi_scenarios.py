"""What tests/test_distributed_mpi.py runs on every rank of an MPI job.

Run as ``mpiexec -n R python -m mpi4py mpi_scenarios.py SCENARIO FOLDER``: a failed
assertion on any rank is an uncaught exception, which ``-m mpi4py`` turns into an abort
of the whole job (a non-zero exit), so no rank is left waiting in a collective.

Every rank computes every rank's gradients (seeded by rank and step), so each can run the
reference: one ordinary optimizer fed ``(((g_0 + g_1) + ...) + g_{R-1}) / R``.
"""
import json
import os
import sys

import numpy as np
from mpi4py import MPI

import numbaopt
from numbaopt import optimizers, sharded_checkpoint, tuning
from numbaopt.distributed import ShardedOptimizer

COMM = MPI.COMM_WORLD
RANK, R = COMM.Get_rank(), COMM.Get_size()
NAMES = [cls.__name__ for cls in optimizers.rule_based()]

#: Shapes with a scalar, tensors split over ranks and a tensor of many chunks (tuning.CHUNK_ELEMENTS = 7).
SHAPES = [(), (5,), (3, 4), (2, 3, 2, 2), (41,), (3, 30)]
OPTIONS = {"defaults": {}, "clipnorm": {"clipnorm": 1.0}, "clipvalue": {"clipvalue": 0.05},
           "both-clips": {"clipnorm": 1.0, "clipvalue": 0.05}, "decay": {"decay": 0.05}}


def gradients(step, rank, shapes, dtypes, scale=0.3):
    rng = np.random.default_rng(1000 * step + rank)
    return [(scale * rng.normal(size=s)).astype(d) for s, d in zip(shapes, dtypes)]


def averaged(step, shapes, dtypes, n_ranks=R):
    """The defined average of the ranks' gradients, in the parameters' dtypes."""
    every = [gradients(step, r, shapes, dtypes) for r in range(n_ranks)]
    out = []
    for i, d in enumerate(dtypes):
        total = every[0][i].copy()
        for r in range(1, n_ranks):
            total = total + every[r][i]
        out.append(total / np.dtype(d).type(n_ranks))
    return out


def parameters(shapes, dtypes, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.normal(size=s).astype(d) for s, d in zip(shapes, dtypes)]


def assert_same(sharded, single, params, reference, what):
    """Bitwise: the parameters, and the gathered state against the single optimizer's."""
    for i, (p, q) in enumerate(zip(params, reference)):
        assert p.dtype == q.dtype and p.tobytes() == q.tobytes(), f"{what}: parameter {i} differs on rank {RANK}"
    state, expected = sharded.gathered_state(), single.state()
    assert state.iterations == expected.iterations == sharded.iterations, what
    weights = sharded.get_weights()
    assert len(weights) == len(single.get_weights()) and all(
        a.tobytes() == b.tobytes() for a, b in zip(weights, single.get_weights())), what
    assert state.scalars == expected.scalars, what
    assert sorted(state.slots) == sorted(expected.slots), what
    for kind in expected.slots:
        for i, (a, b) in enumerate(zip(state.slots[kind], expected.slots[kind], strict=True)):
            assert a.shape == b.shape and a.tobytes() == b.tobytes(), f"{what}: slot {kind}[{i}] differs"


def run_both(sharded, single, params, reference, shapes, dtypes, steps, first=0, names=None):
    for step in range(first, first + steps):
        sharded.apply_gradients(zip(gradients(step, RANK, shapes, dtypes), params), names=names)
        single.apply_gradients(zip(averaged(step, shapes, dtypes), reference), names=names)
        assert_same(sharded, single, params, reference, f"step {step}")


# ---------------------------------------------------------------------- scenarios


def parity(folder):
    """Every optimizer, option set and dtype (and both dtypes at once): bitwise equal."""
    tuning.CHUNK_ELEMENTS = 7
    layouts = {"float32": [np.float32] * len(SHAPES), "float64": [np.float64] * len(SHAPES),
               "mixed": [np.float64, np.float32] * (len(SHAPES) // 2)}
    for name in NAMES:
        cls = getattr(optimizers, name)
        declared = {h.name for h in cls.hyperparameters} | {"clipnorm", "clipvalue"}
        for option, kwargs in OPTIONS.items():
            if not set(kwargs) <= declared:
                continue
            for layout, dtypes in layouts.items():
                if layout == "mixed" and option not in ("defaults", "both-clips"):
                    continue
                params, reference = parameters(SHAPES, dtypes), parameters(SHAPES, dtypes)
                sharded, single = ShardedOptimizer(cls(**kwargs), COMM), cls(**kwargs)
                try:
                    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=4)
                except AssertionError as error:
                    raise AssertionError(f"{name} {option} {layout}: {error}") from error
    # The default chunk size, on tensors of several chunks each, with clipnorm: the norm's order.
    tuning.CHUNK_ELEMENTS = 1 << 15
    shapes, dtypes = [(70_001,), (3,), (40_000,)], [np.float32, np.float64, np.float32]
    params, reference = parameters(shapes, dtypes), parameters(shapes, dtypes)
    sharded, single = ShardedOptimizer(optimizers.Adam(clipnorm=1.0), COMM), optimizers.Adam(clipnorm=1.0)
    run_both(sharded, single, params, reference, shapes, dtypes, steps=3)
    # Fewer chunks than ranks: some ranks own nothing, and still take part.
    shapes, dtypes = [(), (3,)], [np.float32, np.float64]
    params, reference = parameters(shapes, dtypes), parameters(shapes, dtypes)
    sharded, single = ShardedOptimizer(optimizers.RMSprop(clipnorm=0.1), COMM), optimizers.RMSprop(clipnorm=0.1)
    run_both(sharded, single, params, reference, shapes, dtypes, steps=2)
    # Names are recorded and checked as in the single optimizer; Nadam's schedule and decay.
    names = [f"layer{i}" for i in range(len(SHAPES))]
    dtypes = [np.float32] * len(SHAPES)
    params, reference = parameters(SHAPES, dtypes), parameters(SHAPES, dtypes)
    sharded, single = ShardedOptimizer(optimizers.Nadam(clipnorm=1.0), COMM), optimizers.Nadam(clipnorm=1.0)
    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=3, names=names)
    assert sharded.parameter_names == single.parameter_names == tuple(names)
    # An optimizer that already has state shards it, and goes on as the single one.
    f64 = [np.float64] * len(SHAPES)
    earlier = optimizers.Adamax(clipnorm=1.0)
    ahead = parameters(SHAPES, f64)
    for step in range(2):
        earlier.apply_gradients(zip(averaged(step, SHAPES, f64), ahead))
    copy = optimizers.Adamax(clipnorm=1.0)
    copy.set_weights(earlier.get_weights())
    run_both(ShardedOptimizer(copy, COMM), earlier, [p.copy() for p in ahead], ahead, SHAPES, f64, steps=2, first=2)
    # A schedule: assigning lr on every rank takes effect at the next step, as on one process.
    sharded.lr = single.lr = 0.0005
    assert sharded.lr == 0.0005
    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=2, first=3, names=names)


def keras3_parity(folder):
    """Every Keras 3 optimizer of the registry (``keras3_cases.py``), at its defaults and at
    each of its settings away from them, float32 and float64: bitwise one optimizer fed the
    averaged gradients. Keras 3's processing around the update (clipping, EMA,
    accumulation, loss scale, schedules, exclusions by name) cannot split into shards: every
    rank refuses it alike, and nothing changes."""
    import keras3_cases  # beside this file, as the tests package is not on the path here

    from numbaopt.keras3 import schedules

    tuning.CHUNK_ELEMENTS = 7
    names = [f"layer{i}/kernel" for i in range(len(SHAPES))]
    for case, name, kwargs in keras3_cases.configurations():
        cls = keras3_cases.CLASSES[name]
        if name == "Muon":  # routes by Keras paths, orthogonalizes whole matrices: refused when wrapped
            expect_everywhere(ValueError, lambda: ShardedOptimizer(cls(**kwargs), COMM), "not by parts")
            continue
        for dtype in (np.float32, np.float64):
            dtypes = [dtype] * len(SHAPES)
            params, reference = parameters(SHAPES, dtypes), parameters(SHAPES, dtypes)
            sharded, single = ShardedOptimizer(cls(**kwargs), COMM), cls(**kwargs)
            try:
                run_both(sharded, single, params, reference, SHAPES, dtypes, steps=4, names=names)
            except AssertionError as error:
                raise AssertionError(f"{case} {np.dtype(dtype).name}: {error}") from error
    refused = [({"clipnorm": 1.0}, "clipnorm"), ({"global_clipnorm": 1.0}, "global_clipnorm"),
               ({"clipvalue": 0.1}, "clipvalue"), ({"use_ema": True}, "use_ema"),
               ({"gradient_accumulation_steps": 2}, "gradient_accumulation_steps"),
               ({"loss_scale_factor": 4.0}, "loss_scale_factor"),
               ({"learning_rate": schedules.ExponentialDecay(0.01, 10, 0.9)}, "schedule")]
    for name, cls in keras3_cases.CLASSES.items():
        for kwargs, contains in refused:
            expect_everywhere(ValueError, lambda: ShardedOptimizer(cls(**kwargs), COMM),
                              "not by parts" if name == "Muon" else contains)
        inner = cls(weight_decay=0.01)
        inner.exclude_from_weight_decay(var_names=["layer1"])
        expect_everywhere(ValueError, lambda: ShardedOptimizer(inner, COMM),
                          "not by parts" if name == "Muon" else "exclude_from_weight_decay")


def expect_everywhere(kind, call, contains):
    """``call()`` raises ``kind`` on every rank, with the same message, naming ``contains``."""
    try:
        call()
    except kind as error:
        message = str(error)
    else:
        raise AssertionError(f"rank {RANK}: no {kind.__name__}")
    messages = COMM.allgather(message)
    assert len(set(messages)) == 1, f"the ranks raised different messages: {messages}"
    assert contains in message, message
    return message


def faults(folder):
    """A rank that differs makes every rank raise the same error; nothing changes."""
    tuning.CHUNK_ELEMENTS = 7
    dtypes = [np.float32] * len(SHAPES)
    params, reference = parameters(SHAPES, dtypes), parameters(SHAPES, dtypes)
    sharded, single = ShardedOptimizer(optimizers.Adam(clipnorm=1.0), COMM), optimizers.Adam(clipnorm=1.0)
    names = [f"w{i}" for i in range(len(SHAPES))]
    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=2, names=names)
    last = R - 1
    grads = gradients(2, RANK, SHAPES, dtypes)
    pairs = list(zip(grads, params))

    def only_last(bad, good):
        return bad if RANK == last else good

    if R > 1:
        other = [np.ones(4, np.float32), np.zeros(4, np.float32)]
        expect_everywhere(ValueError, lambda: sharded.apply_gradients(only_last(pairs[:-1], pairs)),
                          "parameter count")
        expect_everywhere(ValueError, lambda: sharded.apply_gradients(only_last(pairs[:-1] + [tuple(other)], pairs)), "shape")
        cast = [(g.astype(np.float64), p.astype(np.float64)) for g, p in pairs]
        expect_everywhere(ValueError, lambda: sharded.apply_gradients(only_last(cast, pairs)), "dtypes")
        renamed = names[:-1] + ["other"]
        expect_everywhere(ValueError, lambda: sharded.apply_gradients(pairs, names=only_last(renamed, names)), f"rank {last}")
        sharded_lr = sharded.lr
        if RANK == last:
            sharded.lr = 0.5
        expect_everywhere(ValueError, lambda: sharded.apply_gradients(pairs, names=names), "the optimizer")
        sharded.lr = sharded_lr
    # A call one rank's own checks refuse: the same exception class and message everywhere.
    none_gradient = [(None, params[0])] + pairs[1:]
    expect_everywhere(ValueError, lambda: sharded.apply_gradients(only_last(none_gradient, pairs)), "gradient 0 is None")
    expect_everywhere(TypeError, lambda: sharded.apply_gradients(only_last([("abc", params[0])] + pairs[1:], pairs)), "gradient 0")
    # The same wrong layout on every rank: the bound state refuses it, everywhere alike.
    expect_everywhere(ValueError, lambda: sharded.apply_gradients(pairs[:-1]), "parameters")
    # Overflowing and NaN gradients on one rank, under np.seterr(all="raise"): IEEE
    # arithmetic on every rank, as on one process (no rank raises alone).
    huge = [np.full(s, np.finfo(np.float32).max, np.float32) for s in SHAPES]  # their sum overflows
    extreme = ShardedOptimizer(optimizers.SGD(), COMM)
    extreme_params = parameters(SHAPES, dtypes)
    with np.errstate(all="raise"):
        extreme.apply_gradients(zip(huge, extreme_params))
        extreme.apply_gradients(zip([np.full(s, np.nan, np.float32) for s in SHAPES], extreme_params))
    assert extreme.iterations == 2
    # Nothing changed: the next good steps still match the reference bitwise.
    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=2, first=2, names=names)
    try:
        ShardedOptimizer(optimizers.TFOptimizer.__new__(optimizers.TFOptimizer), COMM)
    except TypeError as error:
        assert "cannot be sharded" in str(error), error
    else:
        raise AssertionError("TFOptimizer was sharded")


def save(folder):
    """K steps, save (sharded, and the reference as an ordinary file), then resume on R
    ranks: bitwise the uninterrupted run."""
    tuning.CHUNK_ELEMENTS = 7
    dtypes = [np.float32, np.float64] * (len(SHAPES) // 2)
    names = [f"p{i}" for i in range(len(SHAPES))]
    params, reference = parameters(SHAPES, dtypes), parameters(SHAPES, dtypes)
    sharded, single = ShardedOptimizer(optimizers.Nadam(clipnorm=1.0, clipvalue=0.05), COMM), \
        optimizers.Nadam(clipnorm=1.0, clipvalue=0.05)
    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=3, names=names)
    path = os.path.join(folder, f"sharded{R}.h5")
    numbaopt.save_optimizer(sharded, path)
    first_set = sharded_checkpoint.read_index(path).shards
    # Saving again replaces the set: the previous files are gone.
    numbaopt.save_optimizer(sharded, path)
    COMM.Barrier()
    shards = sorted(f for f in os.listdir(folder) if f.startswith(f"sharded{R}.h5."))
    assert shards == sorted(s.file for s in sharded_checkpoint.read_index(path).shards), shards
    assert not {s.file for s in first_set} & set(shards)
    if RANK == 0:
        numbaopt.save_optimizer(single, os.path.join(folder, f"whole{R}.h5"))
        np.savez(os.path.join(folder, f"params{R}.npz"), *reference)
    COMM.Barrier()
    resumed = numbaopt.load_optimizer(path, comm=COMM)
    assert isinstance(resumed, ShardedOptimizer) and resumed.parameter_names == tuple(names)
    copies = [p.copy() for p in params]
    run_both(sharded, single, params, reference, SHAPES, dtypes, steps=2, first=3, names=names)
    for step in (3, 4):
        resumed.apply_gradients(zip(gradients(step, RANK, SHAPES, dtypes), copies), names=names)
    assert_same(resumed, single, copies, reference, "resumed")


def load(folder):
    """Every set saved by ``save`` on any rank count, loaded on R ranks (resharded) and
    whole, continues bitwise like the single optimizer loaded from it."""
    tuning.CHUNK_ELEMENTS = 7
    dtypes = [np.float32, np.float64] * (len(SHAPES) // 2)
    sets = sorted(f for f in os.listdir(folder) if f.startswith(("sharded", "whole")) and f.count(".") == 1)
    assert sets, "no checkpoints to load"
    for name in sets:
        saved_on = int(name.removeprefix("sharded").removeprefix("whole").removesuffix(".h5"))
        path = os.path.join(folder, name)
        with np.load(os.path.join(folder, f"params{saved_on}.npz")) as f:
            start = [f[f"arr_{i}"] for i in range(len(SHAPES))]
        sharded = numbaopt.load_optimizer(path, comm=COMM)
        single = numbaopt.load_optimizer(path)
        assert not isinstance(single, ShardedOptimizer) and sharded.iterations == single.iterations == 3
        assert sharded.parameter_names == single.parameter_names
        params, reference = [a.copy() for a in start], [a.copy() for a in start]
        try:
            run_both(sharded, single, params, reference, SHAPES, dtypes, steps=2, first=3,
                     names=list(single.parameter_names or []) or None)
        except AssertionError as error:
            raise AssertionError(f"{name} on {R} ranks: {error}") from error


def shaped(folder):
    """State of other shapes (``tests/extending_shapes.py``: factored, per-tensor) shards by
    whole tensors: bitwise equal to one optimizer, gathered, saved on R ranks, loaded on R
    ranks and whole, and continued."""
    import extending_shapes  # beside this file, as the tests package is not on the path here

    tuning.CHUNK_ELEMENTS = 7
    shapes = SHAPES + [(0, 3), (2, 3, 4)]
    for cls in extending_shapes.declare():
        for dtype in (np.float32, np.float64):
            dtypes = [dtype] * len(shapes)
            params, reference = parameters(shapes, dtypes), parameters(shapes, dtypes)
            sharded, single = ShardedOptimizer(cls(clipnorm=1.0), COMM), cls(clipnorm=1.0)
            what = f"{cls.__name__} {np.dtype(dtype).name}"
            try:
                run_both(sharded, single, params, reference, shapes, dtypes, steps=3)
                path = os.path.join(folder, f"{cls.__name__}-{np.dtype(dtype).name}-{R}.h5")
                numbaopt.save_optimizer(sharded, path)
                resumed, whole = numbaopt.load_optimizer(path, comm=COMM), numbaopt.load_optimizer(path)
                copies, whole_params = [p.copy() for p in params], [p.copy() for p in params]
                run_both(sharded, single, params, reference, shapes, dtypes, steps=2, first=3)
                for step in (3, 4):
                    resumed.apply_gradients(zip(gradients(step, RANK, shapes, dtypes), copies))
                    whole.apply_gradients(zip(averaged(step, shapes, dtypes), whole_params))
                assert_same(resumed, single, copies, reference, "resumed")
                assert all(a.tobytes() == b.tobytes() for a, b in zip(whole_params, reference)), "loaded whole"
            except AssertionError as error:
                raise AssertionError(f"{what}: {error}") from error


def memory(folder):
    """16-bit parameters and slot storage (``slot_dtype``): 8-bit slots shard by whole
    tensors (a block starts at its tensor's first element), the others by elements; bitwise
    equal to one optimizer, saved on R ranks and loaded whole."""
    import ml_dtypes

    from numbaopt import keras3

    tuning.CHUNK_ELEMENTS = 7
    shapes = SHAPES + [(700,)]
    for cls, slot_dtype, dtype in [(optimizers.Adam, "q8", np.float32), (optimizers.Adam, "bfloat16", np.float16),
                                   (keras3.Adam, "q8", ml_dtypes.bfloat16), (optimizers.RMSprop, None, ml_dtypes.bfloat16)]:
        dtypes = [dtype] * len(shapes)
        params, reference = parameters(shapes, dtypes), parameters(shapes, dtypes)
        settings = {"slot_dtype": slot_dtype, "stochastic_rounding": True}
        sharded, single = ShardedOptimizer(cls(**settings), COMM), cls(**settings)
        what = f"{cls.__name__} {slot_dtype} {np.dtype(dtype).name}"
        try:
            run_both(sharded, single, params, reference, shapes, dtypes, steps=3)
            if cls.family == "keras3":
                continue  # sharded checkpoints hold Keras 2.0's family only
            path = os.path.join(folder, f"memory-{cls.__name__}-{slot_dtype}-{np.dtype(dtype).name}-{R}.h5")
            numbaopt.save_optimizer(sharded, path)
            whole, whole_params = numbaopt.load_optimizer(path), [p.copy() for p in params]
            run_both(sharded, single, params, reference, shapes, dtypes, steps=1, first=3)
            whole.apply_gradients(zip(averaged(3, shapes, dtypes), whole_params))
            assert all(a.tobytes() == b.tobytes() for a, b in zip(whole_params, reference)), "loaded whole"
        except AssertionError as error:
            raise AssertionError(f"{what}: {error}") from error


def crash(folder):
    """A save that fails after the shard files are written, before the index is replaced,
    leaves the previous set loadable and no new files behind; a damaged set is refused."""
    tuning.CHUNK_ELEMENTS = 7
    dtypes = [np.float32] * len(SHAPES)
    params = parameters(SHAPES, dtypes)
    sharded = ShardedOptimizer(optimizers.Adam(), COMM)
    sharded.apply_gradients(zip(gradients(0, RANK, SHAPES, dtypes), params))
    path = os.path.join(folder, "crash.h5")
    # Before its first step an optimizer saves and loads its iterations and settings only.
    fresh = ShardedOptimizer(optimizers.SGD(momentum=0.5), COMM)
    numbaopt.save_optimizer(fresh, path)
    assert numbaopt.load_optimizer(path).get_config()["momentum"] == 0.5
    again = numbaopt.load_optimizer(path, comm=COMM)
    again.apply_gradients(zip(gradients(0, RANK, SHAPES, dtypes), [p.copy() for p in params]))
    assert again.iterations == 1
    numbaopt.save_optimizer(sharded, path)
    COMM.Barrier()
    before = sorted(os.listdir(folder))
    sharded.apply_gradients(zip(gradients(1, RANK, SHAPES, dtypes), params))

    def fail(*args, **kwargs):
        raise OSError("simulated crash before the index is replaced")

    write_index = sharded_checkpoint.write_index
    sharded_checkpoint.write_index = fail
    try:
        expect_everywhere(OSError, lambda: numbaopt.save_optimizer(sharded, path), "simulated crash")
    finally:
        sharded_checkpoint.write_index = write_index
    COMM.Barrier()
    assert sorted(os.listdir(folder)) == before, (before, sorted(os.listdir(folder)))
    assert numbaopt.load_optimizer(path).iterations == 1
    assert numbaopt.load_optimizer(path, comm=COMM).iterations == 1
    # A save killed before its index leaves its shard files; the next save removes them.
    orphan = os.path.join(folder, sharded_checkpoint.shard_file_name(path, "ffffffffffff", RANK, R))
    with open(orphan, "wb"):
        pass
    COMM.Barrier()
    numbaopt.save_optimizer(sharded, path)
    COMM.Barrier()
    assert not os.path.exists(orphan) and numbaopt.load_optimizer(path).iterations == 2
    # One shard file replaced by another save's: the set is refused on every rank.
    if R > 1:
        index = sharded_checkpoint.read_index(path)
        other = os.path.join(folder, "other.h5")
        sharded.apply_gradients(zip(gradients(2, RANK, SHAPES, dtypes), params))  # another state
        numbaopt.save_optimizer(sharded, other)
        COMM.Barrier()
        if RANK == 0:
            replacement = sharded_checkpoint.read_index(other).shards[R - 1].file
            os.replace(os.path.join(folder, replacement), os.path.join(folder, index.shards[R - 1].file))
        COMM.Barrier()
        expect_everywhere(numbaopt.CheckpointError, lambda: numbaopt.load_optimizer(path, comm=COMM), "mixed")
        try:
            numbaopt.load_optimizer(path)
        except numbaopt.CheckpointError as error:
            assert "mixed" in str(error)
        else:
            raise AssertionError("a mixed set loaded whole")


def dies(folder):
    """The last rank exits in the middle of the run: mpiexec ends the job (a non-zero exit, no hang)."""
    params = parameters(SHAPES, [np.float32] * len(SHAPES))
    sharded = ShardedOptimizer(optimizers.Adam(), COMM)
    if RANK == R - 1:
        os._exit(3)
    sharded.apply_gradients(zip(gradients(0, RANK, SHAPES, [np.float32] * len(SHAPES)), params))


def forged(folder):
    """Forged index files loaded with ``comm=`` (issue 21 item 11): one declaring a 2**40-element
    parameter, one listing 20,000 missing shard files (the review's 200,000: the same refusal,
    in a tenth of the time to parse). Both are refused at once, on every
    rank, as the whole load refuses them, before any rank allocates for them."""
    import json
    import time

    from numbaopt.checkpoint import Parameter

    params = parameters(SHAPES, [np.float32] * len(SHAPES))
    sharded = ShardedOptimizer(optimizers.Adam(), COMM)
    sharded.apply_gradients(zip(gradients(0, RANK, SHAPES, [np.float32] * len(SHAPES)), params))
    real = os.path.join(folder, "real.h5")
    numbaopt.save_optimizer(sharded, real)
    huge, many = os.path.join(folder, "huge.h5"), os.path.join(folder, "many.h5")
    if RANK == 0:
        index = sharded_checkpoint.read_index(real)
        header = {"class_name": index.class_name, "config": json.dumps(index.config, sort_keys=True),
                  "iterations": index.iterations, "scalar_state": json.dumps(index.scalars, sort_keys=True)}
        first = index.shards[0]
        sharded_checkpoint.write_index(huge, header, [Parameter(None, (2**40,), "float32")],
                                       [sharded_checkpoint.ShardRecord(first.file, ((0, 2**40),), first.sha256)])
        ends = [(b, b) for _, b in index.shards[-1].ranges]
        missing = [sharded_checkpoint.ShardRecord(f"missing{k}.h5", tuple(ends), "0" * 64) for k in range(20_000)]
        sharded_checkpoint.write_index(many, header, list(index.parameters), list(index.shards) + missing)
    COMM.Barrier()
    for path, words in ((huge, "6 parameters, but the index has 1"),
                        (many, "shard file missing")):
        start = time.monotonic()
        expect_everywhere(numbaopt.CheckpointError, lambda: numbaopt.load_optimizer(path, comm=COMM), words)
        expect_everywhere(numbaopt.CheckpointError, lambda: numbaopt.load_optimizer(path), words)
        assert time.monotonic() - start < 30, f"{path} took {time.monotonic() - start:.1f} s to refuse"


def exits_cleanly(folder):
    """The last rank leaves with status 0 while the others are inside a step (issue 21 item 14):
    with MPICH the job ends, mpiexec exits 0, and the completion marker is what tells."""
    params = parameters(SHAPES, [np.float32] * len(SHAPES))
    sharded = ShardedOptimizer(optimizers.Adam(), COMM, timeout=60)
    if RANK == R - 1:
        import time

        time.sleep(0.5)  # the others are inside apply_gradients, waiting for this rank
        os._exit(0)
    sharded.apply_gradients(zip(gradients(0, RANK, SHAPES, [np.float32] * len(SHAPES)), params))
    COMM.Barrier()
    if RANK == 0:
        with open(os.path.join(folder, "run-complete"), "w") as marker:
            marker.write("ok\n")


def hangs(folder):
    """The last rank never joins the step: with a timeout the others abort the job."""
    import time

    params = parameters(SHAPES, [np.float32] * len(SHAPES))
    sharded = ShardedOptimizer(optimizers.Adam(), COMM, timeout=3)
    if RANK == R - 1:
        time.sleep(600)
    sharded.apply_gradients(zip(gradients(0, RANK, SHAPES, [np.float32] * len(SHAPES)), params))


def shares(folder):
    """Without NUMBA_NUM_THREADS, a rank's steps use at most its share of the machine's CPUs
    (the launcher says how many ranks it started here), and a step with the global norm on
    that many threads is bitwise the reference's."""
    import numba

    from numbaopt import threads

    assert "NUMBA_NUM_THREADS" not in os.environ
    assert threads.local_processes() == R
    share = max(1, threads.available_cpus() // R)
    assert threads.max_threads(numba.config.NUMBA_NUM_THREADS) == min(numba.config.NUMBA_NUM_THREADS, share)
    shapes, dtypes = [(70_000,), (3, 30)], [np.float32, np.float32]
    params, reference = parameters(shapes, dtypes), parameters(shapes, dtypes)
    sharded, single = ShardedOptimizer(optimizers.Adam(clipnorm=1.0), COMM), optimizers.Adam(clipnorm=1.0)
    run_both(sharded, single, params, reference, shapes, dtypes, steps=3)


if __name__ == "__main__":
    scenario, folder = sys.argv[1], sys.argv[2]
    globals()[scenario](folder)
    COMM.Barrier()
    if RANK == 0:
        print(json.dumps({"scenario": scenario, "ranks": R, "ok": True}))
