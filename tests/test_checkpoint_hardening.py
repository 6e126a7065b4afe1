"""Checkpoints against an adversarial review: bounded loads of crafted files, forgeries with
valid digests, and saves next to odd files, under long names, through links and into
folders that fail. Every bad file is a ``CheckpointError`` naming what and where, which
``numbaopt inspect`` prints without a traceback.
"""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from numbaopt import checkpoint, optimizers
from numbaopt.checkpoint import TEMPORARY_SUFFIX, CheckpointError, load_optimizer, save_optimizer
from numbaopt.cli import main as cli_main
from tests.test_checkpoint import edit

ROOT = Path(__file__).resolve().parents[1]
posix_only = pytest.mark.skipif(os.name != "posix", reason="POSIX: symbolic links, pids, the sweep of dead writers")


def assert_refused(path, match, capsys):
    """``load_optimizer`` raises a CheckpointError matching ``match`` and naming the file;
    ``numbaopt inspect`` prints it as one line, no traceback, and exits with status 1."""
    with pytest.raises(CheckpointError, match=match) as error:
        load_optimizer(path)
    assert str(path) in str(error.value)
    capsys.readouterr()
    assert cli_main(["inspect", str(path)]) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"numbaopt inspect: {path}: ") and "Traceback" not in err


def adam_after_one_step(shape=(3,)):
    opt = optimizers.Adam()
    opt.apply_gradients([(np.ones(shape), np.zeros(shape))])
    return opt


# ------------------------------------------------- 1. bounded: counts from the file

BOUNDED_CHILD = """
import json, sys, time, tracemalloc, resource
import h5py  # imported before tracemalloc starts: the load's allocations only
from numbaopt.checkpoint import CheckpointError, load_optimizer
from numbaopt.checkpoint_report import main as inspect_main

# A regression must fail here, not exhaust the machine: 1 GiB more address space at most.
with open("/proc/self/status") as status:
    size = next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmSize:"))
resource.setrlimit(resource.RLIMIT_AS, (size + 2**30, resource.getrlimit(resource.RLIMIT_AS)[1]))
path = sys.argv[1]
tracemalloc.start()
start = time.perf_counter()
try:
    load_optimizer(path)
except CheckpointError as error:
    message = str(error)
else:
    message = "loaded"
assert inspect_main(path) == 1
print(json.dumps([message, time.perf_counter() - start, tracemalloc.get_traced_memory()[1]]))
"""


@posix_only
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status to cap the memory")
@pytest.mark.parametrize("n_parameters", [10**7, 2**40, 2**63 - 1], ids=["1e7", "2^40", "2^63-1"])
def test_a_huge_parameter_count_is_refused_at_once(tmp_path, n_parameters):
    """Before the fix, 10**7 took seconds and hundreds of MB, 2**40 all the memory there is:
    a list of that many group names was built before comparing with the groups present."""
    path = tmp_path / "huge.h5"
    edit(lambda f: f.attrs.modify("n_parameters", n_parameters), digest=False)(path)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    run = subprocess.run([sys.executable, "-c", BOUNDED_CHILD, str(path)], cwd=ROOT, env=env,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-3000:]
    message, seconds, peak = json.loads(run.stdout.splitlines()[-1])
    assert f"/parameters holds ['0', '1', '2', '3'], expected groups 0 to {n_parameters - 1}" in message
    assert str(path) in message
    assert seconds < 0.5 and peak < 2**20, (seconds, peak)  # both load and inspect


# ------------------------------------- 2. forgeries with valid digests: only CheckpointError


def set_attribute(key, value):
    return lambda f: f.attrs.__setitem__(key, value)  # a new attribute: modify would keep the old type


def set_config(key, text):
    """Change one config entry to the JSON ``text`` (10**400 cannot pass through Python's json)."""
    def change(f):
        config = json.loads(f.attrs["config"])
        config[key] = "PLACEHOLDER"
        f.attrs.modify("config", json.dumps(config, sort_keys=True).replace('"PLACEHOLDER"', text))
    return change


def set_scalar_state(text):
    return set_attribute("scalar_state", '{"m_schedule": %s}' % text)


FORGERIES = {
    "config-int-1e400": (set_config("lr", "1" + "0" * 400), r"attribute config on / holds config\['lr'\] = 1000"),
    "config-float-1e400": (set_config("beta_1", "1e400"), r"config\['beta_1'\] = inf, out of range"),
    "config-nan": (set_config("clipnorm", "NaN"), r"config\['clipnorm'\] = nan, out of range"),
    "config-nested-int": (set_config("schedule_decay", "[1, {\"a\": -%s}]" % ("9" * 30)),
                          r"config\['schedule_decay'\]\[1\]\['a'\] = -999"),
    "iterations-uint64-max": (set_attribute("iterations", np.uint64(2**64 - 1)),
                              r"attribute iterations on / is too large: 18446744073709551615"),
    "iterations-2^63": (set_attribute("iterations", np.uint64(2**63)), "iterations on / is too large: 9223372036854775808"),
    "m-schedule-int-1e400": (set_scalar_state("1" + "0" * 400),
                             r"attribute scalar_state on / holds scalar_state\['m_schedule'\] = 1000"),
    "m-schedule-1e400": (set_scalar_state("1e400"), r"scalar_state\['m_schedule'\] = inf, out of range"),
    "m-schedule-infinity": (set_scalar_state("Infinity"), r"scalar_state\['m_schedule'\] = inf, out of range"),
}


@pytest.mark.parametrize("case", FORGERIES)
def test_forged_numbers_with_valid_digests_are_checkpoint_errors(tmp_path, capsys, case):
    change, match = FORGERIES[case]
    path = tmp_path / "forged.h5"
    edit(change)(path)  # digests recomputed: only the value itself is wrong
    assert_refused(path, match, capsys)


def test_the_largest_step_count_still_loads(tmp_path):
    path = tmp_path / "old.h5"
    edit(set_attribute("iterations", np.int64(2**63 - 1)))(path)
    assert load_optimizer(path).iterations == 2**63 - 1


# ------------------------------------------------------------ 14. device-free


@pytest.mark.parametrize("device", ["cuda", "cpu", None])
def test_a_device_in_the_config_is_refused_at_load(tmp_path, capsys, device):
    path = tmp_path / "device.h5"
    edit(set_config("device", json.dumps(device)))(path)
    assert_refused(path, "attribute config on / holds \"device\".*a checkpoint is device-free", capsys)


# ------------------------------------------------------ 13. where loaded state came from


def test_a_first_step_of_other_shapes_names_the_checkpoint(tmp_path):
    path = tmp_path / "adam.h5"
    save_optimizer(adam_after_one_step((3,)), path)
    opt = load_optimizer(path)
    with pytest.raises(ValueError, match=f"the first step after loading the checkpoint {path}.*ms.*\\(3,\\)") as error:
        opt.apply_gradients([(np.ones(4), np.zeros(4))])
    assert "set_weights" not in str(error.value)


# ------------------------------------------------------- 4. the sweep of dead writers


@posix_only
@pytest.mark.parametrize("pid", ["99999999999999999999", "2147483648", "²", "0", "-5", "12a"])
def test_a_stray_temporary_with_an_impossible_pid_is_left_alone(tmp_path, pid):
    path = tmp_path / "ckpt.h5"
    stray = tmp_path / f".ckpt.h5.{checkpoint.socket.gethostname()}.{pid}.x{TEMPORARY_SUFFIX}"
    stray.write_bytes(b"")
    save_optimizer(adam_after_one_step(), path)
    assert load_optimizer(path).iterations == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([stray.name, "ckpt.h5"])


# ---------------------------------------------------------- 5. long file names


def dead_pid():
    """The pid of a process that has ended (and was reaped)."""
    child = subprocess.Popen([sys.executable, "-c", ""])
    child.wait()
    return child.pid


@posix_only
@pytest.mark.parametrize("length", [243, 255])
def test_a_file_name_near_the_limit_saves_and_its_temporaries_are_swept(tmp_path, length):
    limit = os.pathconf(tmp_path, "PC_NAME_MAX")
    name = "é" * (length // 2) + "x" * (length % 2)  # é is two bytes in UTF-8
    assert len(os.fsencode(name)) == length <= limit
    path = tmp_path / name
    save_optimizer(adam_after_one_step(), path)
    assert load_optimizer(path).iterations == 1
    # A writer of this file that died: the next save must find its temporary under the short name.
    lead = checkpoint.temporary_lead(str(path))
    assert len(os.fsencode(lead)) + checkpoint._TEMPORARY_TAIL <= limit and name not in lead
    dead = tmp_path / f"{lead}{dead_pid()}.abcdef012345{TEMPORARY_SUFFIX}"
    dead.write_bytes(b"half a checkpoint")
    save_optimizer(adam_after_one_step(), path)
    assert [p.name for p in tmp_path.iterdir()] == [name]


def test_a_short_file_name_keeps_its_readable_temporary_name(tmp_path):
    assert checkpoint.temporary_lead(str(tmp_path / "ckpt.h5")) == f".ckpt.h5.{checkpoint.socket.gethostname()}."


# ------------------------------------------------------------- 6. symbolic links


@posix_only
def test_a_save_through_a_symbolic_link_replaces_its_target_and_keeps_the_link(tmp_path):
    (tmp_path / "real").mkdir()
    target = tmp_path / "real" / "ckpt.h5"
    save_optimizer(optimizers.Adam(), target)
    link = tmp_path / "latest.h5"
    link.symlink_to(target)
    save_optimizer(adam_after_one_step(), link)
    assert link.is_symlink() and os.readlink(link) == str(target)
    assert load_optimizer(target).iterations == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["latest.h5", "real"]
    assert [p.name for p in (tmp_path / "real").iterdir()] == ["ckpt.h5"]


@posix_only
def test_a_save_through_a_dangling_link_creates_its_target(tmp_path):
    link = tmp_path / "latest.h5"
    link.symlink_to("ckpt.h5")
    save_optimizer(adam_after_one_step(), link)
    assert link.is_symlink() and load_optimizer(tmp_path / "ckpt.h5").iterations == 1


# ------------------------------------------------- 7. the folder's fsync after the rename


def test_a_failed_folder_sync_warns_but_the_save_succeeded(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.h5"
    save_optimizer(optimizers.Adam(), path)

    def failing_fsync_directory(folder):
        raise OSError(5, "Input/output error")

    monkeypatch.setattr(checkpoint, "_fsync_directory", failing_fsync_directory)
    with pytest.warns(RuntimeWarning, match=f"{path}: the checkpoint was written, but its folder .* could not be "
                                            f"synced .*Input/output error.*might still show the previous file"):
        save_optimizer(adam_after_one_step(), path)
    assert load_optimizer(path).iterations == 1
    assert [p.name for p in tmp_path.iterdir()] == ["ckpt.h5"]


def test_a_save_that_syncs_its_folder_gives_no_warning(tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        save_optimizer(adam_after_one_step(), tmp_path / "ckpt.h5")


# -------------------------------------------------------------- 8. a missing folder


def test_a_save_into_a_missing_folder_names_the_path_given(tmp_path):
    path = tmp_path / "no" / "such" / "ckpt.h5"
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'no' / 'such'} is not an existing folder") as error:
        save_optimizer(optimizers.Adam(), path)
    assert error.value.filename == str(path) and TEMPORARY_SUFFIX not in str(error.value)
    assert list(tmp_path.iterdir()) == []


def test_a_save_below_a_file_says_it_is_not_a_folder(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(FileNotFoundError, match=f"{tmp_path / 'file'} is not an existing folder"):
        save_optimizer(optimizers.Adam(), tmp_path / "file" / "ckpt.h5")
