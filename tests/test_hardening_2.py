"""Hardening II (issue 21): each defect of the second adversarial review, kept fixed by its
reproducer. Steps that could crash the interpreter before the fix run in a child process,
so that a crash fails the test instead of ending the run.
"""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from numbaopt import devices, optimizers
from numbaopt.kernels import object_layout

ROOT = Path(__file__).resolve().parent.parent


def run_child(code, *args, timeout=120):
    """Run ``code`` in a fresh interpreter; its last stdout line, parsed as JSON."""
    run = subprocess.run([sys.executable, "-c", textwrap.dedent(code), *map(str, args)], cwd=ROOT,
                         capture_output=True, text=True, timeout=timeout)
    assert run.returncode == 0, f"exit status {run.returncode}\n{run.stderr[-3000:]}"
    return json.loads(run.stdout.splitlines()[-1])


# ------------------------------------------------ items 1-3: the fast path's memory safety


PROXIES = """
import json, sys, weakref
import numpy as np
from numbaopt import optimizers

class Liar:
    '''Says it is an ndarray (``__class__``), and forwards everything to one.'''
    def __init__(self, array):
        object.__setattr__(self, "_array", array)
    @property
    def __class__(self):
        return np.ndarray
    def __getattr__(self, name):
        return getattr(object.__getattribute__(self, "_array"), name)

def wrap(kind, array):
    if kind == "weakref.proxy":
        return weakref.proxy(array)
    if kind == "wrapt.ObjectProxy":
        import wrapt
        return wrapt.ObjectProxy(array)
    return Liar(array)

kind, bound = sys.argv[1], sys.argv[2] == "bound"
params = [np.zeros(1000), np.zeros(3)]
grads = [np.ones(1000), np.ones(3)]
opt = optimizers.SGD(momentum=0.5)
if bound:
    opt.apply_gradients(zip(grads, params))
before = [p.copy() for p in params], [w.copy() for w in opt.get_weights()]
outcome = []
for _ in range(2):
    try:
        opt.apply_gradients([(grads[0], params[0]), (grads[1], wrap(kind, params[1]))])
        outcome.append("stepped")
    except TypeError as error:
        outcome.append(str(error))
unchanged = all((a == b).all() for a, b in zip(before[0], params)) and (
    all((a == b).all() for a, b in zip(before[1], opt.get_weights())))
# a proxy as a gradient is read once, into a copy: the step is the plain one's
plain, proxied = [np.zeros(1000), np.zeros(3)], [np.zeros(1000), np.zeros(3)]
optimizers.SGD().apply_gradients(zip(grads, plain))
optimizers.SGD().apply_gradients([(grads[0], proxied[0]), (wrap(kind, grads[1]), proxied[1])])
same = all(a.tobytes() == b.tobytes() for a, b in zip(plain, proxied))
print(json.dumps([outcome, unchanged, same]))
"""


def _proxy_kinds():
    kinds = ["weakref.proxy", "__class__ liar"]
    try:
        import wrapt  # noqa: F401  # comes with TensorFlow; in the test extra
        kinds.append("wrapt.ObjectProxy")
    except ImportError:
        kinds.append(pytest.param("wrapt.ObjectProxy", marks=pytest.mark.skip(reason="wrapt is not installed")))
    return kinds


@pytest.mark.parametrize("bound", ["unbound", "bound"])
@pytest.mark.parametrize("kind", _proxy_kinds())
def test_an_object_that_passes_isinstance_ndarray_is_refused_not_read(kind, bound):
    """Item 1: the step read the proxy object's memory as an ndarray's and wrote where it
    pointed (a segfault, or an update that went elsewhere). Now a TypeError names it, and
    nothing changes; as a gradient, it is read through NumPy into a copy."""
    outcome, unchanged, same = run_child(PROXIES, kind, bound)
    assert len(outcome) == 2 and all("parameter 1 is a " in o and "isinstance" in o for o in outcome), outcome
    assert unchanged and same


RACE = """
import json, threading, time, sys
import numpy as np
from numbaopt import optimizers

n, mode = int(sys.argv[1]), sys.argv[2]
params = [np.zeros(n, np.float32), np.zeros(7, np.float32)]
pairs = [(np.ones(n, np.float32), params[0]), (np.ones(7, np.float32), params[1])]
opt = optimizers.SGD(lr=1.0)
opt.apply_gradients(pairs)  # binds the slots: every later step takes the fast path
stop = time.monotonic() + 1.5

def mutate():
    while time.monotonic() < stop:
        if mode == "clear":
            pairs.clear()
            pairs.extend([(np.ones(n, np.float32), params[0]), (np.ones(7, np.float32), params[1])])
            time.sleep(0)  # the step runs while the list is full, mostly
        else:
            pairs[0] = (np.ones(n, np.float32), params[0])  # the old gradient is freed
            pairs[1] = (np.ones(7, np.float32), params[1])

thread = threading.Thread(target=mutate)
thread.start()
steps = refused = 0
while time.monotonic() < stop:
    try:
        opt.apply_gradients(pairs)
        steps += 1
    except ValueError:  # a cleared or half-refilled list: the checks name it
        refused += 1
thread.join()
# every element of every gradient is one, with lr 1: each parameter is -(its steps), exactly
exact = all(np.isfinite(p).all() and (p == p[0]).all() for p in params) and float(params[1][0]) == -(steps + 1)
print(json.dumps([steps, refused, exact]))
"""


@pytest.mark.parametrize("mode", ["replace", "clear"])
@pytest.mark.parametrize("n", [4096, 10**6])
def test_a_pairs_list_changed_by_another_thread_during_steps_is_safe(n, mode):
    """Item 2: only raw addresses were kept, and the user's list was read in place: a
    gradient replaced or cleared by another thread was read from freed memory (NaN) or
    the process crashed. The step now reads a list of its own, which holds every array."""
    steps, refused, exact = run_child(RACE, n, mode)
    assert steps > 0 and exact, (steps, refused)


LYING_SHAPE = """
import json
import numpy as np
from numbaopt import optimizers

class Liar(np.ndarray):
    shape = property(lambda self: (1000,))  # the truth is 3 elements

opt = optimizers.Adam()
params, grads = [np.zeros(1000)], [np.ones(1000)]
opt.apply_gradients(zip(grads, params))
small = np.zeros(3)
guard = np.zeros(10**6)  # memory an out-of-bounds write would land in, maybe
outcome = []
try:
    opt.apply_gradients([(np.ones(1000), small.view(Liar))])
    outcome.append("stepped")
except ValueError as error:
    outcome.append(str(error))
fresh = np.zeros(3)
optimizers.SGD().apply_gradients([(np.ones(3), fresh.view(Liar))])  # unbound: its true shape
print(json.dumps([outcome, small.tolist(), fresh.tolist(), bool((guard == 0).all())]))
"""


def test_an_ndarray_subclass_whose_shape_lies_is_taken_by_its_true_shape():
    """Item 3: the slow path believed a subclass's Python ``shape`` and wrote 1000 elements
    into 3. A subclass is now viewed as an exact ndarray, its shape read by NumPy."""
    outcome, small, fresh, guard_untouched = run_child(LYING_SHAPE)
    assert outcome == ["gradient 0 has shape (1000,), but its parameter has shape (3,)"]
    assert small == [0.0] * 3 and fresh == [-0.01] * 3 and guard_untouched


def test_data_addresses_refuse_everything_but_exact_ndarrays():
    """The fast path's address reader reads an object only when its type is np.ndarray."""

    class Subclass(np.ndarray):
        pass

    import weakref

    a = np.zeros(3)
    assert devices.CPU.addresses([a, a[1:]]).tolist() == [a.ctypes.data, a[1:].ctypes.data]
    for other in (a.view(Subclass), weakref.proxy(a), [1.0], None):
        with pytest.raises(TypeError, match="array 1 is a .*not exactly a NumPy array"):
            devices.CPU.addresses([a, other])


def test_a_free_threaded_python_takes_the_checked_path(monkeypatch):
    """Without the GIL nothing keeps an object still while the fast path reads it."""
    assert object_layout.object_fields() is not None
    monkeypatch.setattr(sys, "_is_gil_enabled", lambda: False, raising=False)
    assert object_layout.object_fields() is None
    assert devices.CPU.pair_reader([(3,)], [np.dtype(np.float64)]) is None
    a = np.zeros(3)
    assert devices.CPU.addresses([a]).tolist() == [a.ctypes.data]
    with pytest.raises(TypeError, match="not exactly a NumPy array"):
        devices.CPU.addresses([a.view(np.matrix)])
    opt, params = optimizers.Adam(), [np.zeros(3), np.zeros(2)]
    for _ in range(2):
        opt.apply_gradients(zip([np.ones(3), np.ones(2)], params))
    assert opt._slots.layout._read_pairs is None
    reference, same = optimizers.Adam(), [np.zeros(3), np.zeros(2)]
    monkeypatch.undo()
    for _ in range(2):
        reference.apply_gradients(zip([np.ones(3), np.ones(2)], same))
    assert all(a.tobytes() == b.tobytes() for a, b in zip(params, same))


def test_the_caller_list_is_never_the_one_the_step_reads():
    from numbaopt.step_checks import listed_pairs

    pairs = [(np.ones(3), np.zeros(3))]
    assert listed_pairs(pairs) == pairs and listed_pairs(pairs) is not pairs


# ------------------------------------------------------ item 4: damaged root groups


def _flipped_checkpoint(tmp_path, position=100, bit=0):
    """A checkpoint with one bit flipped in its root group's object header: h5py raises
    KeyError ("incorrect metadata checksum") when its attributes are read."""
    import numbaopt

    opt = optimizers.Adam()
    params = [np.zeros(3), np.zeros((2, 2))]
    opt.apply_gradients(zip([np.ones(3), np.ones((2, 2))], params))
    path = tmp_path / "damaged.h5"
    numbaopt.save_optimizer(opt, path)
    data = bytearray(path.read_bytes())
    data[position] ^= 1 << bit
    path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("position", [100, 104, 109])
def test_a_damaged_root_group_is_a_checkpoint_error_everywhere(tmp_path, position, capsys):
    """Item 4: ``numbaopt.load_optimizer`` let h5py's KeyError escape (the sharded-or-not
    check did not catch it), and ``numbaopt inspect`` printed a traceback."""
    import numbaopt
    from numbaopt import checkpoint
    from numbaopt.checkpoint_report import main as inspect_main

    path = _flipped_checkpoint(tmp_path, position)
    with pytest.raises(numbaopt.CheckpointError) as direct:
        checkpoint.load_optimizer(path)
    with pytest.raises(numbaopt.CheckpointError) as facade:
        numbaopt.load_optimizer(path)
    assert str(facade.value) == str(direct.value) and str(path) in str(facade.value)
    assert inspect_main(path) == 1
    assert capsys.readouterr().err.strip() == f"numbaopt inspect: {facade.value}"


# ------------------------------------------------ item 5: inspect opens only regular files


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="needs FIFOs")
@pytest.mark.parametrize("kind", ["fifo", "/dev/zero"])
def test_inspect_refuses_what_is_not_a_regular_file_at_once(tmp_path, kind):
    """Item 5: ``numbaopt inspect`` asked zipfile first: it blocked forever on a FIFO and read
    ``/dev/zero`` until the memory was gone."""
    if kind == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:
        path = Path("/dev/zero")
        if not path.exists():
            pytest.skip("no /dev/zero")
    run = subprocess.run([sys.executable, "-m", "numbaopt", "inspect", str(path)], cwd=ROOT, capture_output=True,
                         text=True, timeout=60)
    assert run.returncode == 1 and run.stdout == ""
    assert run.stderr.strip() == f"numbaopt inspect: {path}: not a regular file"


# ------------------------------------------- item 6: processes that reap their own children


SIGCHLD_CHILD = """
import json, os, signal, sys
import numbaopt
from numbaopt import keras_isolation

path, mode = sys.argv[1], sys.argv[2]
if mode == "ignored":
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
elif mode == "reaping handler":
    def reap(signum, frame):
        try:
            while os.waitpid(-1, os.WNOHANG)[0]:
                pass
        except ChildProcessError:
            pass
    signal.signal(signal.SIGCHLD, reap)
results = []
for _ in range(5):
    try:
        optimizer, params = numbaopt.import_keras_optimizer(path)
        results.append(type(optimizer).__name__)
    except Exception as error:
        results.append(f"{type(error).__name__}: {error}")
# an interrupted read kills and reaps its child: no zombie, nothing left running
signal.signal(signal.SIGCHLD, signal.SIG_DFL)
def interrupted(fd, pid, seconds):
    raise KeyboardInterrupt
keras_isolation.read_until_done = interrupted
try:
    numbaopt.import_keras_optimizer(path)
except KeyboardInterrupt:
    pass
try:
    left = os.waitpid(-1, os.WNOHANG)
except ChildProcessError:
    left = None
print(json.dumps([results, left]))
"""


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the isolated read forks")
@pytest.mark.parametrize("mode", ["default", "ignored", "reaping handler"])
def test_importing_a_keras_file_works_whoever_reaps_children(mode):
    """Item 6: with SIGCHLD ignored or a reaping handler, ``import_keras_optimizer`` raised
    ChildProcessError on a good file (20 of 20); an interrupted read left a zombie."""
    results, left = run_child(SIGCHLD_CHILD, ROOT / "fixtures" / "keras_files" / "legacy_adam.h5", mode)
    assert results == ["Adam"] * 5
    assert left is None, f"a child was left: {left}"


# ------------------------------------------------ items 7, 8, 12: sharded checkpoints


def _sharded_set(folder):
    from tests.test_sharded_checkpoint import CUTS, stepped, write_set

    opt = stepped("Adam", np.float32)
    path = folder / "ck.h5"
    write_set(path, opt, CUTS)
    return opt, path


def test_a_sharded_checkpoint_saved_through_a_link_loads_through_it(tmp_path):
    """Item 7: the shards are written beside the link's target (the save resolves it) but
    were looked up beside the link."""
    import numbaopt

    (tmp_path / "real").mkdir()
    (tmp_path / "links").mkdir()
    opt, path = _sharded_set(tmp_path / "real")
    link = tmp_path / "links" / "latest.h5"
    link.symlink_to(path)
    loaded = numbaopt.load_optimizer(link)
    assert all(a.tobytes() == b.tobytes() for a, b in zip(loaded.get_weights(), opt.get_weights()))


def test_a_dead_ranks_shard_temporary_is_swept_by_the_next_save(tmp_path):
    """Item 8: a rank killed while writing its shard left a shard-sized temporary named
    after its save's token, which no later save swept."""
    from numbaopt import checkpoint, sharded_checkpoint
    from tests.test_sharded_checkpoint import CUTS, write_set

    opt, path = _sharded_set(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", ""])
    dead.wait()
    alive = os.getpid()
    shard = sharded_checkpoint.shard_file_name(str(path), "fedcba987654", 1, 4)
    lead = checkpoint.temporary_lead(str(tmp_path / shard))
    left = [tmp_path / f"{lead}{pid}.0123456789ab{checkpoint.TEMPORARY_SUFFIX}" for pid in (dead.pid, alive)]
    for file in left:
        file.write_bytes(b"\0" * 4096)
    write_set(path, opt, CUTS)  # the next save
    assert not left[0].exists(), "the dead writer's temporary was left"
    assert left[1].exists(), "a live writer's temporary must be left alone"


def test_loading_a_sharded_checkpoint_while_it_is_saved_never_fails(tmp_path):
    """Item 12: a load that read the index just before a save replaced it found the old
    shard files gone ("shard file ... missing") in 7 of 32 loads."""
    import threading
    import time

    import numbaopt
    from tests.test_sharded_checkpoint import CUTS, write_set

    opt, path = _sharded_set(tmp_path)
    stop = time.monotonic() + 3.0
    failures = []

    def save_again():
        from numbaopt import sharded_checkpoint

        while time.monotonic() < stop:  # each save a new token, as ShardedOptimizer's
            token = os.urandom(6).hex()
            write_set(path, opt, CUTS, files={k: sharded_checkpoint.shard_file_name(str(path), token, k, 4)
                                              for k in range(4)})

    saver = threading.Thread(target=save_again)
    saver.start()
    loads = 0
    try:
        while time.monotonic() < stop:
            try:
                numbaopt.load_optimizer(path)
                loads += 1
            except numbaopt.CheckpointError as error:
                failures.append(str(error))
    finally:
        saver.join()
    assert loads > 0 and not failures, failures[:3]


# ------------------------------------------------ item 9: torch's negation bit, meta tensors


@pytest.mark.torch
def test_a_negative_view_gradient_steps_with_its_true_sign():
    """Item 9: ``numbaopt.torch`` read a negative view's memory as it is (the update had the
    wrong sign), where the core API refused the same gradient. Both read it resolved now."""
    torch = pytest.importorskip("torch")
    import numbaopt.torch as nt

    results = []
    for negative_view in (False, True):
        p = torch.zeros(4, dtype=torch.float64, requires_grad=True)
        opt = nt.SGD([p], lr=0.1)
        g = torch.tensor([1.0, -2.0, 3.0, -4.0], dtype=torch.float64)
        p.grad = torch._neg_view(-g) if negative_view else g
        opt.step()
        core = np.zeros(4)
        optimizers.SGD(lr=0.1).apply_gradients([(torch._neg_view(-g) if negative_view else g, core)])
        results.append((p.detach().numpy().tolist(), core.tolist()))
    expected = (0.0 - 0.1 * np.array([1.0, -2.0, 3.0, -4.0])).tolist()
    assert results[0] == results[1] == (expected, expected)


@pytest.mark.torch
def test_meta_and_negative_view_parameters_raise_the_documented_errors():
    """Item 9: they raised torch's RuntimeError from ``.numpy()``."""
    torch = pytest.importorskip("torch")
    import numbaopt.torch as nt

    meta = torch.zeros(3, device="meta")
    with pytest.raises(TypeError, match="parameter 0 is a torch tensor on the meta device"):
        optimizers.SGD().apply_gradients([(np.ones(3), meta)])
    base = torch.zeros(3, dtype=torch.float64)
    negative = torch._neg_view(base)
    with pytest.raises(ValueError, match="parameter 0 is a negative view"):
        optimizers.SGD().apply_gradients([(np.ones(3), negative)])
    p = torch.nn.Parameter(torch.zeros(3, device="meta"))
    p.grad = torch.ones(3, device="meta")
    opt = nt.SGD([p])
    opt.step()  # as torch.optim's: meta tensors have shapes, no values (tests/test_torch_behaviours.py)
    assert opt.iterations == 0 and p.is_meta
    assert (base == 0).all()


# ------------------------------------------------ item 17: a closed pipe ends quietly


@pytest.mark.skipif(os.name != "posix", reason="a POSIX pipe")
def test_numbaopt_parity_into_a_closed_pipe_ends_quietly():
    """Item 17: ``numbaopt parity --json | head`` ended in a BrokenPipeError traceback, status 1."""
    child = subprocess.Popen([sys.executable, "-m", "numbaopt", "parity", "--json"], cwd=ROOT,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    child.stdout.close()  # the reader goes before the table comes, as ``head`` goes after its lines
    _, err = child.communicate(timeout=600)
    assert b"Traceback" not in err and b"BrokenPipeError" not in err, err.decode()[-2000:]
    assert child.returncode == 141  # what a shell shows for a tool that SIGPIPE ended


# ------------------------------------------- items 15, 16, 18: as a new user finds them


def _doc(name):
    return (ROOT / name).read_text()


def test_the_keras_porting_example_runs_on_current_tf_keras():
    """Item 15: ``keras.optimizers.Adam(lr=..., decay=...)`` is the new-style optimizer on
    tf-keras 2.11+, which refuses ``decay``; Keras 2's is the legacy one."""
    section = _doc("docs/torch.md").split("## Porting a Keras model")[1].split("\n## ")[0]
    assert "keras.optimizers.Adam(" not in section.replace("legacy.Adam(", "")
    assert "tf_keras.optimizers.legacy.Adam(learning_rate=1e-3, decay=1e-4" in section


def test_the_distributed_example_makes_its_folder():
    """Item 15: ``save_optimizer(opt, "ckpt/opt.h5")`` failed unless ``ckpt/`` existed."""
    text = _doc("docs/distributed.md")
    example = text.split("```python", 1)[1].split("```", 1)[0]
    assert example.index('os.makedirs("ckpt", exist_ok=True)') < example.index('save_optimizer(opt, "ckpt/opt.h5")')


def test_the_site_home_page_has_the_virtual_environment_and_every_page():
    """Item 15: docs/index.md showed the two commands without the virtual environment, and
    its contents left out PyTorch and MPI."""
    text = _doc("docs/index.md")
    assert text.count("python3 -m venv .venv && . .venv/bin/activate") == 2
    assert "(torch.md)" in text and "(distributed.md)" in text
    for page in sorted(p.name for p in (ROOT / "docs").glob("*.md")):
        if page != "index.md":
            assert f"({page})" in text, f"docs/index.md does not list {page}"


def test_mkdocs_yml_is_at_the_root():
    """Item 16: ``mkdocs build`` / ``mkdocs serve`` from the root failed: the config was in
    docs/mkdocs/. Everything that names it names the root one."""
    config = _doc("mkdocs.yml")
    assert "\ndocs_dir: docs\n" in config and "paths: [.]" in config
    assert not (ROOT / "docs" / "mkdocs").exists()
    for name in ("tox.ini", "README.md", "docs/index.md", "docs/architecture.md"):
        assert "docs/mkdocs" not in _doc(name), name
    assert "-f {toxinidir}/mkdocs.yml" in _doc("tox.ini")


def test_install_hints_never_name_an_index_numbaopt_is_not_on():
    """Item 18: the hints said ``pip install "numbaopt[mpi]"``, which cannot work while
    numbaopt is on no package index."""
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]:
        assert 'install "numbaopt[' not in page.read_text(), page.name
    from numbaopt import extras

    assert "numbaopt[" not in extras.install_command("mpi")


NO_TORCH = """
import json, sys
sys.modules["torch"] = None  # as if PyTorch were not installed
try:
    import numbaopt.torch
except ImportError as error:
    print(json.dumps([type(error).__name__, str(error), error.name]))
"""


def test_importing_numbaopt_torch_without_torch_names_the_extra():
    """Item 18: the error said only "No module named 'torch'"."""
    kind, message, name = run_child(NO_TORCH)
    assert kind == "ModuleNotFoundError" and name == "torch"
    assert "numbaopt.torch needs PyTorch (the torch extra)" in message and "pip install" in message and "[torch]" in message


# ------------------------------------------------ item 13: a .keras config's size limit


def test_a_huge_keras_config_is_refused_before_it_is_decompressed(tmp_path):
    """Item 13: a 0.31 MB .keras file took the reader to 937 MB: the 16 MB limit on
    config.json applied after decompressing all of it."""
    import tracemalloc
    import zipfile

    from numbaopt import keras_files

    good = ROOT / "fixtures" / "keras_files" / "keras3_adam.keras"
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(good) as source, zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as bomb:
        bomb.writestr("model.weights.h5", source.read("model.weights.h5"))
        bomb.writestr("config.json", b'{"pad": "' + b" " * (200 * 2**20) + b'"}')
    assert path.stat().st_size < 2**20
    tracemalloc.start()
    try:
        with pytest.raises(keras_files.CheckpointError, match="config.json is larger than 16777216 bytes"):
            keras_files._read_zip(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 40 * 2**20, peak


# ------------------------------------------------ item 10: concurrent exports into one file


def test_concurrent_exports_into_one_file_never_mix(tmp_path):
    """Item 10: two concurrent ``export_keras_optimizer`` calls into one .h5 could leave a
    file holding one export's learning rate with the other's slots and iterations."""
    import shutil
    import threading
    import time

    import numbaopt

    path = tmp_path / "model.h5"
    shutil.copyfile(ROOT / "fixtures" / "keras_files" / "legacy_adam.h5", path)
    base, _ = numbaopt.import_keras_optimizer(path)
    exports = {}
    for label, lr, fill, iterations in (("same lr", base.lr, 1.0, 11), ("new lr", base.lr * 2, 2.0, 22)):
        opt, _ = numbaopt.import_keras_optimizer(path)
        weights = opt.get_weights()
        opt.set_weights([np.array(iterations, weights[0].dtype)] + [np.full_like(w, fill) for w in weights[1:]])
        opt.lr = lr
        exports[label] = opt
    expected = {(float(o.lr), o.iterations, float(o.get_weights()[1].reshape(-1)[0])) for o in exports.values()}
    stop = time.monotonic() + 3.0
    errors = []

    def export(opt):
        while time.monotonic() < stop:
            try:
                numbaopt.export_keras_optimizer(opt, path)
            except Exception as error:  # noqa: BLE001  (reported below)
                errors.append(repr(error))

    threads = [threading.Thread(target=export, args=(opt,)) for opt in exports.values()]
    for thread in threads:
        thread.start()
    seen = []
    try:
        while time.monotonic() < stop:
            opt, _ = numbaopt.import_keras_optimizer(path)
            if opt.iterations != base.iterations:
                seen.append((float(opt.lr), opt.iterations, float(opt.get_weights()[1].reshape(-1)[0])))
    finally:
        for thread in threads:
            thread.join()
    assert not errors, errors[:3]
    assert seen and set(seen) <= expected, sorted(set(seen) - expected)[:3]


def test_the_faults_section_says_what_a_rank_leaving_with_status_0_does():
    """Item 14: a half-finished step must never look like success. MPI cannot tell (the
    ranks are killed where no code of theirs runs), so the docs say precisely what happens
    and what to do; ``tests/test_distributed_mpi.py`` checks that MPICH still does it."""
    section = _doc("docs/distributed.md").split("### A rank that exits with status 0")[1].split("\n## ")[0]
    for words in ("os._exit(0)", "`mpiexec` itself\nexits with status 0", "with or without `timeout=`",
                  "numbaopt cannot tell", "atomic as a set", "comm.Barrier()", "run-complete"):
        assert words in section, words
