"""Sharded checkpoints without MPI: a set written by hand the way ShardedOptimizer writes it
(shard files saved by ``save_optimizer``, then the index) loads whole, shows in ``numbaopt
inspect``, and every damaged or mixed set is a CheckpointError. Also: numbaopt without mpi4py."""
import json
import os
import subprocess
import sys

import numpy as np
import pytest

import numbaopt
from numbaopt import cli, optimizers, sharded_checkpoint
from numbaopt.checkpoint import CheckpointError, Parameter

from tests.cases import DTYPES, NAMES, SHAPES, gradient_steps, make_params


def stepped(name, dtype, steps=3):
    opt = getattr(optimizers, name)(clipnorm=1.0)
    params = make_params(dtype)
    for grads in gradient_steps(steps=steps, dtype=dtype):
        opt.apply_gradients(zip(grads, params), names=[f"w{i}" for i in range(len(params))])
    return opt


def write_set(path, opt, cuts, files=None, ranges=None):
    """Save ``opt``'s state as shards: shard k holds flat elements [cuts[k][i], cuts[k+1][i]) of parameter i."""
    state = opt.state()
    cls = type(opt)
    sizes = [a.size for a in state.slots[cls.slot_names[0]]]
    bounds = [[0] * len(sizes)] + [list(c) for c in cuts] + [sizes]
    records = []
    for k in range(len(bounds) - 1):
        spans = [(bounds[k][i], bounds[k + 1][i]) for i in range(len(sizes))]
        shard = cls(**opt.checkpoint_config())
        weights = [np.array(state.iterations)] + [np.array(state.scalars[n]) for n, _ in cls.scalar_state]
        weights += [a.reshape(-1)[s:e].copy() for kind in cls.slot_names for a, (s, e) in zip(state.slots[kind], spans)]
        shard.set_weights(weights)
        name = (files or {}).get(k, sharded_checkpoint.shard_file_name(str(path), "0123456789ab", k, len(bounds) - 1))
        numbaopt.save_optimizer(shard, path.parent / name)
        records.append(sharded_checkpoint.ShardRecord(name, tuple((ranges or {}).get(k, spans)),
                                                      sharded_checkpoint.shard_digest(str(path.parent / name))))
    first = state.slots[cls.slot_names[0]]
    parameters = [Parameter(n, a.shape, a.dtype.name) for n, a in zip(state.names, first)]
    header = {"class_name": cls.__name__, "config": json.dumps(opt.checkpoint_config(), sort_keys=True),
              "iterations": state.iterations, "scalar_state": json.dumps(state.scalars, sort_keys=True)}
    sharded_checkpoint.write_index(str(path), header, parameters, records)


#: Cuts into SHAPES' parameters (sizes 1, 5, 12, 24): a shard boundary inside tensors, an empty shard.
CUTS = [(1, 2, 0, 0), (1, 5, 7, 0), (1, 5, 7, 0)]


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("name", NAMES)
def test_a_sharded_set_loads_whole_bitwise(tmp_path, name, dtype):
    opt = stepped(name, dtype)
    path = tmp_path / "ck.h5"
    write_set(path, opt, CUTS)
    whole = numbaopt.load_optimizer(path)
    assert type(whole) is type(opt) and whole.parameter_names == opt.parameter_names
    for a, b in zip(whole.get_weights(), opt.get_weights(), strict=True):
        assert a.dtype == b.dtype and a.tobytes() == b.tobytes()
    assert whole.get_config() == opt.get_config()


def test_inspect_reads_a_sharded_checkpoint(tmp_path, capsys):
    opt = stepped("Adam", np.float32)
    write_set(tmp_path / "ck.h5", opt, CUTS)
    assert cli.main(["inspect", str(tmp_path / "ck.h5")]) == 0
    out = capsys.readouterr().out
    assert "class       Adam" in out and "iterations  3" in out and "3 w3" in out


def _damage_missing(path):
    os.unlink(path.parent / sharded_checkpoint.read_index(path).shards[1].file)


def _damage_mixed(path):
    index = sharded_checkpoint.read_index(path)
    other = path.parent / "other.h5"
    write_set(other, stepped("Adam", np.float32, steps=4), CUTS)
    os.replace(other.parent / sharded_checkpoint.read_index(other).shards[1].file, path.parent / index.shards[1].file)


def _damage_index(path):
    import h5py

    with h5py.File(path, "r+") as f:
        f.attrs["iterations"] = 7


DAMAGES = {
    "missing shard": (_damage_missing, "missing"),
    "shard from another save": (_damage_mixed, "mixed"),
    "index edited": (_damage_index, "corrupted"),
}


@pytest.mark.parametrize("damage", DAMAGES)
def test_a_damaged_or_mixed_set_is_refused(tmp_path, damage):
    path = tmp_path / "ck.h5"
    write_set(path, stepped("Adam", np.float32), CUTS)
    change, expected = DAMAGES[damage]
    change(path)
    with pytest.raises(CheckpointError, match=expected):
        numbaopt.load_optimizer(path)
    assert cli.main(["inspect", str(path)]) == 1


@pytest.mark.parametrize("files, ranges, expected", [
    ({1: "../outside.h5"}, None, "not a file name"),
    (None, {1: [(2, 2), (2, 5), (0, 7), (0, 0)]}, "cover it in order"),
])
def test_an_index_that_points_outside_or_does_not_tile_is_refused(tmp_path, files, ranges, expected):
    (tmp_path / "sub").mkdir()
    path = tmp_path / "sub" / "ck.h5"
    opt = stepped("Adam", np.float32)
    if files:
        write_set(path, opt, CUTS)  # then a valid index naming a file outside the folder
        index = sharded_checkpoint.read_index(path)
        shards = list(index.shards)
        shards[1] = shards[1]._replace(file=files[1])
        header = {"class_name": "Adam", "config": json.dumps(index.config, sort_keys=True),
                  "iterations": index.iterations, "scalar_state": json.dumps(index.scalars)}
        sharded_checkpoint.write_index(str(path), header, index.parameters, shards)
    else:
        write_set(path, opt, CUTS, ranges=ranges)
    with pytest.raises(CheckpointError, match=expected):
        numbaopt.load_optimizer(path)


def test_every_shape_is_covered():
    assert [int(np.prod(s)) for s in SHAPES] == [1, 5, 12, 24]  # CUTS are written for these sizes


def _run(code):
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


def test_numbaopt_works_without_mpi4py_and_distributed_names_the_extra():
    result = _run(
        "import sys; sys.modules['mpi4py'] = None\n"
        "import numbaopt, numbaopt.checkpoint, numbaopt.loading\n"
        "assert 'mpi4py' not in [m for m in sys.modules if sys.modules[m] is not None]\n"
        "try:\n    import numbaopt.distributed\n"
        "except ImportError as error:\n    print('ImportError:', error)\n"
    )
    assert result.returncode == 0, result.stderr
    assert "ImportError:" in result.stdout and '"mpi" extra' in result.stdout and "[mpi]" in result.stdout


def test_loading_with_comm_needs_the_extra():
    result = _run(
        "import sys; sys.modules['mpi4py'] = None\n"
        "import numbaopt\n"
        "try:\n    numbaopt.load_optimizer('x.h5', comm=object())\n"
        "except ImportError as error:\n    print('ImportError:', error)\n"
    )
    assert "ImportError:" in result.stdout and "[mpi]" in result.stdout, result.stderr
