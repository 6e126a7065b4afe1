"""Checkpoints: exact resume in a new process, parameter names, bad and hostile files, inspect.

The crash-safety test (SIGKILL during saves) is in ``test_checkpoint_kill.py``.
"""
import functools
import hashlib
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import h5py
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import numbaopt
from numbaopt import checkpoint, optimizers, quantization, registry
from numbaopt.checkpoint import CheckpointError, load_optimizer, save_optimizer
from numbaopt.cli import main as cli_main
from tests.cases import DTYPES, NAMES, SHAPES, gradient_steps, make_params, option_sets

ROOT = Path(__file__).resolve().parents[1]
STEPS = 6
SPLITS = (0, 2, STEPS)  # k steps before the save, STEPS - k after the load
PARAM_NAMES = [f"layer{i}/w" for i in range(len(SHAPES))]


class ArrayAdam(optimizers.Adam):
    """Adam that keeps extra state in checkpoint arrays, as ``TFOptimizer`` does, without TensorFlow."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.extra = {}

    def checkpoint_arrays(self):
        return dict(self.extra)

    def load_checkpoint_arrays(self, arrays):
        if "table" in arrays and arrays["table"].shape != (2, 3):
            raise ValueError(f"table must have shape (2, 3), got {arrays['table'].shape}")
        self.extra = dict(arrays)


def extra_arrays():
    """One array of each form a format-2 file holds: 0-d, empty, several dtypes; named out of
    alphabetical order, so that keeping the saved order is tested."""
    return {"step_count": np.array(7, np.int64), "table": np.arange(6, dtype=np.int32).reshape(2, 3) - 2,
            "history": np.linspace(-1, 1, 5, dtype=np.float32), "averages": np.full(4, 0.1),
            "empty": np.zeros(0, np.float32)}


@pytest.fixture(autouse=True)
def registered(monkeypatch):
    """``ArrayAdam`` in numbaopt's registry for the test: a checkpoint names only registered classes."""
    monkeypatch.setitem(registry._CLASSES, "arrayadam", ArrayAdam)


def run_steps(opt, params, dtype, first, last):
    for grads in gradient_steps(steps=STEPS)[first:last]:
        opt.apply_gradients(zip([g.astype(dtype) for g in grads], params), names=PARAM_NAMES)


def assert_same_state(ours, theirs):
    """Bitwise equality of two OptimizerStates (iterations, scalar state, every slot, names)."""
    assert ours.iterations == theirs.iterations
    assert ours.scalars == theirs.scalars
    assert ours.names == theirs.names
    assert sorted(ours.slots) == sorted(theirs.slots)
    for kind in ours.slots:
        assert len(ours.slots[kind]) == len(theirs.slots[kind])
        for a, b in zip(ours.slots[kind], theirs.slots[kind]):
            assert a.dtype == b.dtype and a.shape == b.shape
            assert a.tobytes() == b.tobytes(), kind


# ------------------------------------------------------------- exact resume

RESUME_CASES = [
    (name, np.dtype(dtype).name, option, kwargs, k)
    for name in NAMES for dtype in DTYPES for option, kwargs in option_sets(name) for k in SPLITS
]

RESUME_CHILD = """
import json, sys
import numpy as np
import numbaopt
from tests.test_checkpoint import run_steps, STEPS
for case in json.load(open(sys.argv[1])):
    opt = numbaopt.load_optimizer(case["checkpoint"])
    with np.load(case["params"], allow_pickle=False) as data:
        params = [data[f"p{i}"] for i in range(len(data.files))]
    run_steps(opt, params, np.dtype(case["dtype"]).type, case["k"], STEPS)
    numbaopt.save_optimizer(opt, case["result"])
    np.savez(case["result_params"], *params)
"""


@pytest.fixture(scope="module")
def resumed(tmp_path_factory):
    """Every resume case: k steps here, saved; loaded and finished by one new process."""
    folder = tmp_path_factory.mktemp("resume")
    manifest = []
    for index, (name, dtype, option, kwargs, k) in enumerate(RESUME_CASES):
        params = make_params(dtype)
        opt = getattr(optimizers, name)(**kwargs)
        run_steps(opt, params, np.dtype(dtype).type, 0, k)
        save_optimizer(opt, folder / f"{index}.h5")
        np.savez(folder / f"{index}-params.npz", **{f"p{i}": p for i, p in enumerate(params)})
        manifest.append({"checkpoint": str(folder / f"{index}.h5"), "params": str(folder / f"{index}-params.npz"),
                         "dtype": dtype, "k": k, "result": str(folder / f"{index}-result.h5"),
                         "result_params": str(folder / f"{index}-result.npz")})
    (folder / "manifest.json").write_text(json.dumps(manifest))
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", RESUME_CHILD, str(folder / "manifest.json")],
                         cwd=ROOT, env=env, capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    return manifest


@pytest.mark.parametrize(
    "index", range(len(RESUME_CASES)),
    ids=[f"{n.lower()}-{d}-{o}-k{k}" for n, d, o, _, k in RESUME_CASES],
)
def test_resume_in_a_new_process_is_bitwise_exact(resumed, index):
    name, dtype, _, kwargs, _ = RESUME_CASES[index]
    params = make_params(dtype)
    uninterrupted = getattr(optimizers, name)(**kwargs)
    run_steps(uninterrupted, params, np.dtype(dtype).type, 0, STEPS)

    case = resumed[index]
    with np.load(case["result_params"], allow_pickle=False) as data:
        for i, p in enumerate(params):
            assert data[f"arr_{i}"].tobytes() == p.tobytes(), f"parameter {i}"
    assert_same_state(load_optimizer(case["result"]).state(), uninterrupted.state())


@pytest.mark.parametrize("dtype", DTYPES, ids=lambda d: np.dtype(d).name)
@pytest.mark.parametrize("name", NAMES)
def test_round_trip_keeps_the_whole_state(tmp_path, name, dtype):
    params = make_params(dtype)
    opt = getattr(optimizers, name)(clipnorm=2.0, clipvalue=0.3)
    run_steps(opt, params, dtype, 0, 3)
    save_optimizer(opt, tmp_path / "ckpt.h5")
    loaded = load_optimizer(tmp_path / "ckpt.h5")
    assert type(loaded) is type(opt) and loaded.get_config() == opt.get_config()
    assert_same_state(loaded.state(), opt.state())


def test_an_optimizer_without_steps_or_names_round_trips(tmp_path):
    save_optimizer(optimizers.Nadam(lr=0.01), tmp_path / "fresh.h5")
    loaded = load_optimizer(tmp_path / "fresh.h5")
    assert loaded.get_config() == optimizers.Nadam(lr=0.01).get_config()
    assert_same_state(loaded.state(), optimizers.Nadam().state())


# ----------------------------------------------------------------- names


def named_checkpoint(tmp_path):
    params = make_params(np.float64)
    opt = optimizers.Adam()
    run_steps(opt, params, np.float64, 0, 2)
    save_optimizer(opt, tmp_path / "named.h5")
    return load_optimizer(tmp_path / "named.h5"), params


@pytest.mark.parametrize(
    "names, match",
    [
        (PARAM_NAMES[::-1], "another order"),
        (["embedding"] + PARAM_NAMES[1:], r"new \['embedding'\], missing \['layer0/w'\]"),
        (PARAM_NAMES[:1] * len(PARAM_NAMES), "distinct"),
        (PARAM_NAMES[:-1], "3 parameter names for 4 parameters"),
    ],
    ids=["reordered", "renamed", "duplicate", "too-few"],
)
def test_names_that_differ_from_the_checkpoint_are_refused_and_change_nothing(tmp_path, names, match):
    opt, params = named_checkpoint(tmp_path)
    before, params_before = opt.state(), [p.copy() for p in params]
    grads = gradient_steps(steps=1)[0]
    with pytest.raises(ValueError, match=match):
        opt.apply_gradients(zip(grads, params), names=names)
    assert_same_state(opt.state(), before)
    assert all(p.tobytes() == q.tobytes() for p, q in zip(params, params_before))


def test_names_are_optional_and_can_be_accepted_on_purpose(tmp_path):
    opt, params = named_checkpoint(tmp_path)
    grads = gradient_steps(steps=1)[0]
    opt.apply_gradients(zip(grads, params))  # no names: no check
    renamed = [f"model/{n}" for n in PARAM_NAMES]
    opt.set_parameter_names(renamed)
    opt.apply_gradients(zip(grads, params), names=renamed)
    save_optimizer(opt, tmp_path / "renamed.h5")
    assert load_optimizer(tmp_path / "renamed.h5").state().names == tuple(renamed)


def test_unnamed_checkpoints_have_no_names(tmp_path):
    params = make_params(np.float32)
    opt = optimizers.SGD(momentum=0.5)
    opt.apply_gradients(zip([g.astype(np.float32) for g in gradient_steps(steps=1)[0]], params))
    save_optimizer(opt, tmp_path / "unnamed.h5")
    with h5py.File(tmp_path / "unnamed.h5") as f:
        assert "name" not in f["parameters/0"].attrs
    assert load_optimizer(tmp_path / "unnamed.h5").state().names is None


# --------------------------------------------------------- saving refusals


def test_a_failed_save_keeps_the_previous_file_and_leaves_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    opt, params = named_checkpoint(tmp_path)
    save_optimizer(opt, path)
    before = path.read_bytes()
    run_steps(opt, params, np.float64, 2, 3)

    def broken_write(filename, *args):
        Path(filename).write_bytes(b"half a checkpoint")
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint, "_write", broken_write)
    with pytest.raises(OSError, match="disk full"):
        save_optimizer(opt, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.h5", "named.h5"]


class Unregistered(optimizers.Adam):
    pass


@pytest.mark.parametrize("obj, match", [(object(), "needs a numbaopt optimizer"),
                                         (Unregistered(), "not one of numbaopt's registered")],
                         ids=["not-an-optimizer", "unregistered-subclass"])
def test_save_refuses_what_cannot_be_loaded(tmp_path, obj, match):
    with pytest.raises(TypeError, match=match):
        save_optimizer(obj, tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


# ---------------------------------------------------------- bad files


def good_optimizer():
    """A small Nadam after two named steps: two dtypes, a 0-d and an empty parameter."""
    params = [np.linspace(-1, 1, 12).reshape(3, 4), np.float32(0.5) * np.ones(5, np.float32),
              np.zeros((), np.float64), np.zeros((0, 2), np.float32)]
    opt = optimizers.Nadam(clipnorm=1.0)
    for step in range(2):
        grads = [np.full_like(p, 0.1 * (step + 1) + 0.01 * i) for i, p in enumerate(params)]
        opt.apply_gradients(zip(grads, params), names=["w", "b", "s", "e"])
    return opt


@functools.lru_cache(maxsize=None)
def good_checkpoint_bytes():
    """``good_optimizer()`` saved, as bytes: the seed of every bad file."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "good.h5")
        save_optimizer(good_optimizer(), path)
        return Path(path).read_bytes()


def reference_state():
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "good.h5")
        path.write_bytes(good_checkpoint_bytes())
        return load_optimizer(path).state()


def slot_data_range(raw, dataset="parameters/0/ms"):
    """Where the bytes of a slot's data lie in the file ``raw``."""
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "f.h5")
        path.write_bytes(raw)
        with h5py.File(path) as f:
            ds = f[dataset]
            return ds.id.get_offset(), ds.id.get_offset() + ds.id.get_storage_size()


def redigest(f):
    """Recompute every digest after an edit, so the edit itself is what the loader meets."""
    for i in range(int(f.attrs["n_parameters"])):
        for kind, dataset in f[f"parameters/{i}"].items():
            dataset.attrs["sha256"] = checkpoint._array_digest(np.asarray(dataset[()]))
    header = {k: (int(v) if isinstance(v, np.integer) else v) for k, v in f.attrs.items()
              if k not in ("sha256", "n_parameters")}
    parameters, digests = [], []
    for i in range(int(f.attrs["n_parameters"])):
        g = f[f"parameters/{i}"]
        parameters.append(checkpoint.Parameter(g.attrs.get("name"), tuple(json.loads(g.attrs["shape"])), g.attrs["dtype"]))
        digests.append({kind: g[kind].attrs["sha256"] for kind in json.loads(f.attrs["slot_names"])})
    records = []
    for name in json.loads(f.attrs["array_names"]):
        data = np.asarray(f["arrays"][name][()])
        f["arrays"][name].attrs["sha256"] = checkpoint._array_digest(data)
        records.append(checkpoint._array_record(name, data.shape, data.dtype.name, checkpoint._array_digest(data)))
    f.attrs["sha256"] = checkpoint._manifest_digest(header, parameters, digests, records)


def edit(change, digest=True, seed=None):
    """A bad-file maker: the good checkpoint (or ``seed()``), then ``change(h5py.File)``, then the digests."""
    def make(path):
        path.write_bytes((seed or good_checkpoint_bytes)())
        with h5py.File(path, "r+") as f:
            change(f)
            if digest:
                redigest(f)
    return make


def flip_slot_byte(path, seed=good_checkpoint_bytes, dataset="parameters/0/ms"):
    raw = bytearray(seed())
    start, stop = slot_data_range(bytes(raw), dataset)
    raw[(start + stop) // 2] ^= 0x10
    path.write_bytes(bytes(raw))


def foreign_hdf5(path):
    with h5py.File(path, "w") as f:
        f["weights"] = np.ones(3)
        f.attrs["format"] = "keras"


def replace_dataset(data):
    def change(f):
        del f["parameters/0/vs"]
        f["parameters/0/vs"] = data
    return change


def external_link(f):
    del f["parameters/1"]
    f["parameters/1"] = h5py.ExternalLink("/etc/passwd", "/")


BAD_FILES = {
    "missing": (lambda path: None, "no such file"),
    "empty": (lambda path: path.write_bytes(b""), "empty"),
    "not-hdf5": (lambda path: path.write_text('{"class_name": "Adam"}'), "not an HDF5 file"),
    "truncated": (lambda path: path.write_bytes(good_checkpoint_bytes()[: len(good_checkpoint_bytes()) // 2]), "truncated"),
    "flipped-slot-byte": (flip_slot_byte, "/parameters/0/ms is corrupted"),
    "foreign-hdf5": (foreign_hdf5, "not a numbaopt checkpoint"),
    "future-version": (edit(lambda f: f.attrs.modify("format_version", 6)), "format version 6.*reads versions 1 to 5"),
    "edited-header": (edit(lambda f: f.attrs.modify("iterations", 99), digest=False), "header is corrupted"),
    "wrong-slot-shape": (edit(replace_dataset(np.zeros((4, 3)))), r"/parameters/0/vs has shape \(4, 3\).*\(3, 4\)"),
    "wrong-slot-dtype": (edit(replace_dataset(np.zeros((3, 4), np.int64))), "/parameters/0/vs has dtype int64"),
    "chunked-slot": (edit(lambda f: (f["parameters/0"].__delitem__("vs"),
                                     f["parameters/0"].create_dataset("vs", data=np.zeros((3, 4)), chunks=(1, 4)))),
                     "/parameters/0/vs is not stored contiguously"),
    "missing-slot": (edit(lambda f: f["parameters/2"].__delitem__("ms"), digest=False), r"/parameters/2 holds datasets \['vs'\]"),
    "extra-parameter": (edit(lambda f: f.attrs.modify("n_parameters", 5), digest=False), "/parameters holds .*expected groups 0 to 4"),
    "external-link": (edit(external_link, digest=False), "/parameters/1 is a ExternalLink"),
    "class-from-a-module": (edit(lambda f: f.attrs.modify("class_name", "subprocess.Popen")),
                            "class_name on / names no numbaopt optimizer.*subprocess.Popen"),
    "base-class": (edit(lambda f: f.attrs.modify("class_name", "Optimizer")), "names no numbaopt optimizer"),
    "other-class": (edit(lambda f: f.attrs.modify("class_name", "Adagrad")), "Adagrad has slots"),
    "config-not-json": (edit(lambda f: f.attrs.modify("config", "__import__('os').system('true')")), "attribute config on /"),
    "config-refused": (edit(lambda f: f.attrs.modify("config", '{"lr": -1}')), "cannot rebuild Nadam.*lr must be >= 0"),
    "scalar-state-missing": (edit(lambda f: f.attrs.modify("scalar_state", "{}")), r"scalar_state on / has \[\]"),
    "negative-iterations": (edit(lambda f: f.attrs.modify("iterations", -3)), "iterations on / is negative"),
    "iterations-as-text": (edit(lambda f: f.attrs.__setitem__("iterations", "3")), "iterations on / should be an integer"),
}


@pytest.mark.parametrize("case", BAD_FILES)
def test_bad_files_raise_checkpoint_error_naming_what_and_where(tmp_path, case):
    make, match = BAD_FILES[case]
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(CheckpointError, match=match) as error:
        load_optimizer(path)
    assert str(path) in str(error.value)
    if case != "config-refused":  # inspect reads the file; only building the optimizer checks the config
        assert cli_main(["inspect", str(path)]) == 1


def test_checkpoint_error_is_the_public_one():
    assert numbaopt.CheckpointError is CheckpointError
    assert numbaopt.save_optimizer is save_optimizer
    # numbaopt.load_optimizer also reads sharded checkpoints; ordinary ones go to checkpoint's.
    assert numbaopt.load_optimizer is numbaopt.loading.load_optimizer


CORRUPTION_SETTINGS = settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
                               deadline=None)


@CORRUPTION_SETTINGS
@given(length=st.integers(0, len(good_checkpoint_bytes()) - 1))
def test_corpus_every_truncation_is_refused(length):
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "cut.h5")
        path.write_bytes(good_checkpoint_bytes()[:length])
        with pytest.raises(CheckpointError):
            load_optimizer(path)


@CORRUPTION_SETTINGS
@given(flips=st.lists(st.tuples(st.floats(0, 1, exclude_max=True), st.integers(1, 255)), min_size=1, max_size=4))
def test_corpus_flipped_bytes_are_refused_or_harmless(flips):
    """Anywhere in the file: a CheckpointError, or (bytes HDF5 never reads) the same state."""
    raw = bytearray(good_checkpoint_bytes())
    for where, mask in flips:
        raw[int(where * len(raw))] ^= mask
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "flipped.h5")
        path.write_bytes(bytes(raw))
        try:
            state = load_optimizer(path).state()
        except CheckpointError:
            return
    assert_same_state(state, reference_state())


@CORRUPTION_SETTINGS
@given(data=st.data())
def test_corpus_flipped_bytes_in_slot_data_are_always_refused(data):
    raw = bytearray(good_checkpoint_bytes())
    dataset = data.draw(st.sampled_from(["parameters/0/ms", "parameters/0/vs", "parameters/1/ms", "parameters/2/vs"]))
    start, stop = slot_data_range(bytes(raw), dataset)
    position = data.draw(st.integers(start, stop - 1))
    raw[position] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "flipped.h5")
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=f"/{dataset} is corrupted"):
            load_optimizer(path)


# ------------------------------------------------- the optimizer's own arrays


def good_array_optimizer():
    """A small ``ArrayAdam`` after two named steps, holding ``extra_arrays()``."""
    params = [np.linspace(-1, 1, 6).reshape(2, 3), np.ones(4, np.float32)]
    opt = ArrayAdam(lr=0.01)
    for step in range(2):
        opt.apply_gradients(zip([np.full_like(p, 0.1 * (step + 1)) for p in params], params), names=["w", "b"])
    opt.extra = extra_arrays()
    return opt


@functools.lru_cache(maxsize=None)
def good_array_checkpoint_bytes():
    """``good_array_optimizer()`` saved, as bytes: the seed of the bad files with arrays."""
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "good.h5")
        save_optimizer(good_array_optimizer(), path)
        return Path(path).read_bytes()


def assert_same_arrays(ours, theirs):
    """The same names in the same order, each array with the same dtype, shape and bytes."""
    assert list(ours) == list(theirs)
    for name in ours:
        assert ours[name].dtype == theirs[name].dtype and ours[name].shape == theirs[name].shape, name
        assert ours[name].tobytes() == theirs[name].tobytes(), name


def test_optimizer_arrays_round_trip_in_order_with_their_dtypes(tmp_path):
    path = tmp_path / "arrays.h5"
    path.write_bytes(good_array_checkpoint_bytes())
    loaded, expected = load_optimizer(path), good_array_optimizer()
    assert_same_arrays(loaded.extra, extra_arrays())
    assert_same_state(loaded.state(), expected.state())
    with h5py.File(path) as f:
        assert json.loads(f.attrs["array_names"]) == list(extra_arrays())
        assert f["arrays/table"].dtype == np.int32 and f["arrays/step_count"].shape == ()
        data = np.asarray(f["arrays/history"][()])
        assert f["arrays/history"].attrs["sha256"] == hashlib.sha256(data.astype("<f4").tobytes()).hexdigest()


@pytest.mark.parametrize("dtype", checkpoint.ARRAY_DTYPES)
def test_every_allowed_array_dtype_round_trips(tmp_path, dtype):
    info = np.finfo(dtype) if np.dtype(dtype).kind == "f" else np.iinfo(dtype)
    opt = ArrayAdam()
    opt.extra = {"extremes": np.array([info.min, 0, info.max], dtype)}
    save_optimizer(opt, tmp_path / "x.h5")
    assert_same_arrays(load_optimizer(tmp_path / "x.h5").extra, opt.extra)


@pytest.mark.parametrize(
    "arrays, error, match",
    [
        ([np.zeros(2)], TypeError, "must return a dict of name -> array, got list"),
        ({1: np.zeros(2)}, TypeError, "array names are strings, got 1"),
        ({"a/b": np.zeros(2)}, ValueError, "'a/b' is not a valid array name"),
        ({".": np.zeros(2)}, ValueError, "'.' is not a valid array name"),
        ({"": np.zeros(2)}, ValueError, "'' is not a valid array name"),
        ({"x": np.array([None, 1])}, TypeError, "array 'x' has dtype object"),
        ({"x": np.zeros(2, np.complex128)}, TypeError, "array 'x' has dtype complex128"),
        ({"x": np.zeros(2, bool)}, TypeError, "array 'x' has dtype bool"),
        ({"x": np.array(["abc"])}, TypeError, "array 'x' has dtype <U3"),
    ],
    ids=["not-a-dict", "name-not-text", "name-with-slash", "name-dot", "name-empty",
         "object-dtype", "complex-dtype", "bool-dtype", "text-dtype"],
)
def test_save_refuses_arrays_a_load_could_not_read(tmp_path, arrays, error, match):
    opt = ArrayAdam()
    opt.checkpoint_arrays = lambda: arrays  # as given, not copied into a dict by ArrayAdam
    with pytest.raises(error, match=f"ArrayAdam.checkpoint_arrays\\(\\).*{match}"):
        save_optimizer(opt, tmp_path / "x.h5")
    assert list(tmp_path.iterdir()) == []


def replace_array(data):
    def change(f):
        del f["arrays/history"]
        f["arrays/history"] = data
    return change


def array_edit(change, digest=True):
    return edit(change, digest, seed=good_array_checkpoint_bytes)


def array_names(names):
    return lambda f: f.attrs.modify("array_names", json.dumps(names))


#: Bad files whose subject is /arrays; "load only" cases are files ``inspect`` reads fine,
#: refused only by the optimizer they would build.
BAD_ARRAY_FILES = {
    "flipped-array-byte": (lambda path: flip_slot_byte(path, good_array_checkpoint_bytes, "arrays/history"),
                           "/arrays/history is corrupted"),
    "flipped-0d-array-byte": (lambda path: flip_slot_byte(path, good_array_checkpoint_bytes, "arrays/step_count"),
                              "/arrays/step_count is corrupted"),
    "truncated": (lambda path: path.write_bytes(good_array_checkpoint_bytes()[:-200]), "truncated"),
    "complex-array": (array_edit(replace_array(np.zeros(5, np.complex64))), "/arrays/history has dtype complex64"),
    "bool-array": (array_edit(replace_array(np.zeros(5, bool))), "/arrays/history has dtype bool"),
    "text-array": (array_edit(replace_array(np.array([b"abc"] * 5))), "/arrays/history has dtype [|]S3"),
    "chunked-array": (array_edit(lambda f: (f["arrays"].__delitem__("history"),
                                            f["arrays"].create_dataset("history", data=np.zeros(5, np.float32), chunks=(2,)))),
                      "/arrays/history is not stored contiguously"),
    "missing-array": (array_edit(lambda f: f["arrays"].__delitem__("table"), digest=False),
                      r"/arrays holds datasets \['averages', 'empty', 'history', 'step_count'\], expected array_names"),
    "unlisted-array": (array_edit(lambda f: f["arrays"].create_dataset("more", data=np.zeros(2)), digest=False),
                       r"/arrays holds datasets \['averages', 'empty', 'history', 'more', .*expected array_names"),
    "external-link-array": (array_edit(lambda f: (f["arrays"].__delitem__("history"),
                                                  f["arrays"].__setitem__("history", h5py.ExternalLink("/etc/passwd", "/"))),
                                       digest=False), "/arrays/history is a ExternalLink"),
    "arrays-group-missing": (array_edit(lambda f: f.__delitem__("arrays"), digest=False), "/arrays is missing"),
    "array-name-with-slash": (array_edit(array_names(["table/x"]), digest=False), "'table/x' is not a valid array name"),
    "array-name-twice": (array_edit(array_names(["table", "table"]), digest=False), "lists a name twice"),
    "array-names-not-json": (array_edit(lambda f: f.attrs.modify("array_names", "table"), digest=False),
                             "attribute array_names on /"),
    "array-names-missing": (array_edit(lambda f: f.attrs.__delitem__("array_names"), digest=False),
                            "attribute array_names on / is missing"),
    "array-names-reordered": (array_edit(array_names(sorted(extra_arrays())), digest=False), "header is corrupted"),
    "array-refused-by-its-class": (array_edit(lambda f: (f["arrays"].__delitem__("table"),
                                                         f["arrays"].__setitem__("table", np.zeros(6, np.int32)))),
                                   r"cannot rebuild ArrayAdam.*table must have shape \(2, 3\)"),
    "arrays-for-a-class-without": (array_edit(lambda f: f.attrs.modify("class_name", "Adam")),
                                   r"cannot rebuild Adam.*keeps no checkpoint arrays, got \['averages'"),
}
LOAD_ONLY = ("array-refused-by-its-class", "arrays-for-a-class-without")


@pytest.mark.parametrize("case", BAD_ARRAY_FILES)
def test_bad_arrays_raise_checkpoint_error_naming_what_and_where(tmp_path, case):
    make, match = BAD_ARRAY_FILES[case]
    path = tmp_path / "bad.h5"
    make(path)
    with pytest.raises(CheckpointError, match=match) as error:
        load_optimizer(path)
    assert str(path) in str(error.value)
    assert cli_main(["inspect", str(path)]) == (0 if case in LOAD_ONLY else 1)


@CORRUPTION_SETTINGS
@given(data=st.data())
def test_corpus_every_truncation_of_a_file_with_arrays_is_refused(data):
    raw = good_array_checkpoint_bytes()
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "cut.h5")
        path.write_bytes(raw[:data.draw(st.integers(0, len(raw) - 1))])
        with pytest.raises(CheckpointError):
            load_optimizer(path)


@CORRUPTION_SETTINGS
@given(data=st.data())
def test_corpus_flipped_bytes_in_array_data_are_always_refused(data):
    raw = bytearray(good_array_checkpoint_bytes())
    name = data.draw(st.sampled_from(["step_count", "table", "history", "averages"]))
    start, stop = slot_data_range(bytes(raw), f"arrays/{name}")
    raw[data.draw(st.integers(start, stop - 1))] ^= data.draw(st.integers(1, 255))
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder, "flipped.h5")
        path.write_bytes(bytes(raw))
        with pytest.raises(CheckpointError, match=f"/arrays/{name} is corrupted"):
            load_optimizer(path)


# ------------------------------------------------------------------ format


def test_format_records_what_the_documentation_promises(tmp_path):
    path = tmp_path / "good.h5"
    path.write_bytes(good_checkpoint_bytes())
    with h5py.File(path) as f:
        assert f.attrs["format"] == checkpoint.FORMAT and f.attrs["format_version"] == 5
        assert json.loads(f.attrs["slots"]) == [{"name": n, "shape": "element", "dtype": None} for n in ("ms", "vs")]
        assert f.attrs["array_names"] == "[]" and len(f["arrays"]) == 0
        assert f.attrs["numbaopt_version"] == numbaopt.__version__
        assert f.attrs["class_name"] == "Nadam" and int(f.attrs["iterations"]) == 2
        assert json.loads(f.attrs["scalar_state"])["m_schedule"] == reference_state().scalars["m_schedule"]
        assert json.loads(f["parameters/0"].attrs["shape"]) == [3, 4] and f["parameters/0"].attrs["dtype"] == "float64"
        assert f["parameters/1"].attrs["name"] == "b" and f["parameters/1/ms"].dtype == np.float32
        data = np.asarray(f["parameters/1/vs"][()])
        assert f["parameters/1/vs"].attrs["sha256"] == hashlib.sha256(data.astype("<f4").tobytes()).hexdigest()


def test_checkpoint_format_1_still_loads():
    """The compatibility promise: a file written by numbaopt 0.1.0 (format 1) loads forever."""
    path = ROOT / "tests" / "data" / "checkpoint-v1.h5"
    assert checkpoint.read_checkpoint(path).format_version == 1 and checkpoint.read_checkpoint(path).arrays == {}
    loaded = load_optimizer(path)
    assert loaded.get_config() == good_optimizer().get_config()
    assert_same_state(loaded.state(), good_optimizer().state())


def test_checkpoint_format_2_still_loads():
    """The compatibility promise for format 2, the first with /arrays: ``good_array_optimizer()``
    saved by numbaopt 0.1.0 (``tests/data/checkpoint-v2.h5``)."""
    path = ROOT / "tests" / "data" / "checkpoint-v2.h5"
    assert checkpoint.read_checkpoint(path).format_version == 2
    loaded, expected = load_optimizer(path), good_array_optimizer()
    assert type(loaded) is ArrayAdam and loaded.get_config() == expected.get_config()
    assert_same_state(loaded.state(), expected.state())
    assert_same_arrays(loaded.extra, expected.extra)


def test_checkpoint_format_3_still_loads():
    """The compatibility promise for format 3, the first with slot declarations:
    ``good_optimizer()`` saved by numbaopt 0.1.0 (``tests/data/checkpoint-v3.h5``)."""
    path = ROOT / "tests" / "data" / "checkpoint-v3.h5"
    assert checkpoint.read_checkpoint(path).format_version == 3
    loaded = load_optimizer(path)
    assert loaded.get_config() == good_optimizer().get_config()
    assert_same_state(loaded.state(), good_optimizer().state())


@pytest.mark.parametrize("version, saved_by", [(3, "e8dab86"), (4, "380f8eb")])
def test_earlier_8_bit_state_converts_to_todays_codes(version, saved_by):
    """Format 3 held codes of bitsandbytes' map, format 4 the unsigned codes of the value
    itself (``quantization.earlier_values``): Adam with 8-bit slots saved by numbaopt 0.1.0 at
    ``saved_by`` (``tests/data/checkpoint-v{version}-q8.h5``) loads with each value rounded to
    today's nearest code, each block keeping its absmax, and steps on."""
    path = ROOT / "tests" / "data" / f"checkpoint-v{version}-q8.h5"
    assert checkpoint.read_checkpoint(path).format_version == version
    with h5py.File(path) as f:
        saved = {kind: [np.asarray(f["parameters"][str(i)][kind][()]) for i in range(2)] for kind in ("ms", "vs")}
    loaded = load_optimizer(path)
    assert loaded.get_config()["slot_dtype"] == "q8" and loaded.iterations == 3
    for slot in loaded.slots:
        for host, old in zip(loaded.state().slots[slot.name], saved[slot.name]):
            assert np.array_equal(host["absmax"], old["absmax"])
            assert host.tobytes() == quantization.from_format(old, slot.sign, version).tobytes()
            decoded = quantization.earlier_values(slot.sign, version)[old["codes"]] * old["absmax"][:, None]
            back = quantization.values(slot.sign)[host["codes"]] * host["absmax"][:, None]
            assert np.all(np.abs(back - decoded) <= np.abs(decoded) / 15 + old["absmax"][:, None] * 2.0**-15)
            if version == 4 and slot.sign == "nonnegative":
                assert not np.array_equal(host["codes"], old["codes"])  # the map changed: the codes did
    state, shapes = loaded.state(), [(30, 20), (300,)]
    reference = type(loaded)(**{**loaded.get_config(), "slot_dtype": "float32"})
    reference.load_state(state._replace(slots={slot.name: [quantization.dequantize(a, shape, slot.sign) for a, shape in
                                                           zip(state.slots[slot.name], shapes)] for slot in loaded.slots}))
    params, expected = [np.zeros(s, np.float32) for s in shapes], [np.zeros(s, np.float32) for s in shapes]
    loaded.apply_gradients([(np.ones_like(p), p) for p in params])
    reference.apply_gradients([(np.ones_like(p), p) for p in expected])
    assert loaded.iterations == 4 and all(np.array_equal(p, e) and np.any(p != 0) for p, e in zip(params, expected))


# ----------------------------------------------------------------- inspect


def test_inspect_prints_class_config_iterations_and_a_slot_table(tmp_path, capsys):
    path = tmp_path / "good.h5"
    path.write_bytes(good_checkpoint_bytes())
    assert cli_main(["inspect", str(path)]) == 0
    out = capsys.readouterr().out
    state = reference_state()
    assert "class       Nadam" in out and "iterations  2" in out and '"clipnorm": 1.0' in out
    assert f"m_schedule  {state.scalars['m_schedule']!r}" in out
    rows = [line.split() for line in out.splitlines() if line.startswith(("0 w", "1 b", "2 s", "3 e"))]
    assert len(rows) == 4 * 2
    vs = state.slots["vs"][0]
    assert ["0", "w", "vs", "(3,", "4)", "float64", f"{vs.min():.6g}", f"{vs.max():.6g}", f"{vs.mean():.6g}"] in rows
    assert ["3", "e", "ms", "(0,", "2)", "float32", "-", "-", "-"] in rows


def test_inspect_prints_a_table_of_the_optimizer_arrays(tmp_path, capsys):
    path = tmp_path / "arrays.h5"
    path.write_bytes(good_array_checkpoint_bytes())
    assert cli_main(["inspect", str(path)]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["array", "shape", "dtype", "min", "max", "mean"] in rows
    assert ["table", "(2,", "3)", "int32", "-2", "3", "0.5"] in rows
    assert ["step_count", "()", "int64", "7", "7", "7"] in rows
    assert ["empty", "(0,)", "float32", "-", "-", "-"] in rows


def test_inspect_command_exits_non_zero_with_the_message(tmp_path):
    path = tmp_path / "bad.h5"
    path.write_text("not a checkpoint")
    run = subprocess.run([sys.executable, "-m", "numbaopt", "inspect", str(path)], capture_output=True, text=True)
    assert run.returncode == 1
    assert f"{path}: not an HDF5 file" in run.stderr
