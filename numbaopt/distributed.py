"""Optimizer state sharded over the ranks of an MPI job (ZeRO stage 1): ``ShardedOptimizer``.

Every rank holds the whole parameters and computes its own gradients; the optimizer's slots
are split over the ranks. A step:

1. agrees on the call: one small allgather of each rank's description of it (parameter
   count, shapes, dtypes, names, settings, step count, or the error its own checks raised),
   so a rank that passes something else makes every rank raise the same error, before any
   data moves;
2. reduce-scatters the gradients: an ``Alltoallv`` sends every rank the gradients of its
   shard, which it adds up in rank order and divides by the rank count, in the parameters'
   dtype: ``(((g_0 + g_1) + g_2) + ...) / R``, element by element, whatever MPI would do;
3. for clipnorm, allgathers the float64 sums of squares of the global norm's chunks (a
   shard is whole chunks of the single-process chunk table) and adds them in the
   single-process order;
4. updates its shard with a core optimizer bound to its pieces of the parameters (the
   same kernels and scalars, and that norm), then allgathers the updated pieces.

So a run on any number of ranks is bitwise equal to one optimizer fed the averaged
gradients. ``docs/distributed.md`` explains the costs and what happens when a rank dies.
"""
from __future__ import annotations

import contextlib
import hashlib
import json
import math
import os
import secrets
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from numbaopt import devices, keras_weights, sharded_checkpoint, slots, tuning
from numbaopt.checkpoint import CheckpointError, Parameter, read_checkpoint, save_optimizer
from numbaopt.extras import install_command
from numbaopt.optimizers import Optimizer, registered, rule_based
from numbaopt.optimizers.base import ALIASES
from numbaopt.phases import whole_tensors
from numbaopt.state import OptimizerState, Slot
from numbaopt.registry import family_of, optimizer_class
from numbaopt.step_checks import checked_arrays, checked_names, listed_pairs, names_tuple, split_pairs

try:
    from mpi4py import MPI
except ImportError as error:
    raise ImportError(
        f'numbaopt.distributed needs the "mpi" extra (mpi4py and an MPI library): {install_command("mpi")}'
    ) from error

#: Byte alignment of every piece in the exchange buffers (float64's).
_ALIGN = 8
#: Seconds a rank that aborts the job waits after saying why, so that the launcher forwards it.
_ABORT_GRACE_S = 0.5

_Ranges = list[tuple[int, int]]  # per parameter: a flat element range [start, stop)


def partition(sizes: Sequence[int], n_ranks: int, chunk: int) -> list[_Ranges]:
    """``ranges[rank][i]``: the elements of parameter ``i`` that ``rank`` owns.

    The parameters' elements, in order, are cut into the chunks of the single-process chunk
    table (``slots.chunk_table``), and each rank gets a contiguous run of whole chunks,
    balanced by elements. A rank may own nothing of a parameter (an empty range) or nothing
    at all (more ranks than chunks).
    """
    return _ranges(sizes, slots.chunk_table(sizes, chunk), _first_chunks(slots.chunk_table(sizes, chunk), n_ranks))


def _first_chunks(table: npt.NDArray[np.int64], n_ranks: int, whole_tensors: bool = False) -> npt.NDArray[np.int64]:
    """The first chunk (row of ``table``) of each rank, and the row count: a chunk goes to the
    rank its middle element falls to when the elements are split evenly; with
    ``whole_tensors``, every chunk of a tensor goes where the tensor's middle element falls."""
    lengths = table[:, 2] - table[:, 1]
    middles = np.cumsum(lengths) - lengths / 2
    if whole_tensors and len(table):
        ends = np.cumsum(lengths)
        tensors = table[:, 0]
        first_of = np.searchsorted(tensors, tensors, side="left")
        last_of = np.searchsorted(tensors, tensors, side="right") - 1
        middles = ((ends[first_of] - lengths[first_of]) + ends[last_of]) / 2
    owners = np.minimum((middles * n_ranks / max(int(lengths.sum()), 1)).astype(np.int64), n_ranks - 1)
    return np.searchsorted(owners, np.arange(n_ranks + 1), side="left").astype(np.int64)


def _owned(whole: bool, size: int, a: int, b: int) -> bool:
    """Whether a rank holds the parameter whole (in its shape) rather than a flat piece."""
    return whole and b - a == size


def _ranges(sizes: Sequence[int], table: npt.NDArray[np.int64], firsts: npt.NDArray[np.int64]) -> list[_Ranges]:
    """Each rank's element range of every parameter, from its first chunks ``firsts``."""
    lengths = table[:, 2] - table[:, 1]
    bounds = np.concatenate([[0], np.cumsum(lengths)])[firsts].tolist()  # rank r: flat elements [bounds[r], bounds[r + 1])
    starts = np.concatenate([[0], np.cumsum(sizes)]).tolist()
    return [
        [(min(max(lo - s, 0), n), min(max(hi - s, 0), n)) for s, n in zip(starts, sizes)]
        for lo, hi in zip(bounds[:-1], bounds[1:])
    ]


class _Plan:
    """Where every element goes in a step, for one layout of parameters and one communicator."""

    def __init__(self, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]], n_ranks: int, rank: int,
                 whole: bool = False) -> None:
        self.shapes, self.dtypes = tuple(shapes), tuple(dtypes)
        self.sizes = [int(np.prod(s, dtype=np.int64)) for s in shapes]
        self.chunk = tuning.CHUNK_ELEMENTS
        self.whole = whole  # each tensor on one rank, in its shape (state that shards by tensor)
        table = slots.chunk_table(self.sizes, self.chunk)
        firsts = _first_chunks(table, n_ranks, whole)
        self.ranges = _ranges(self.sizes, table, firsts)
        self.mine = self.ranges[rank]
        self.rank, self.n_ranks = rank, n_ranks
        # Rank q's segment of an exchange buffer: its non-empty pieces, each aligned.
        self.pieces: list[list[tuple[int, int, int, int]]] = []  # per rank: (parameter, start, stop, byte offset)
        segment_bytes = []
        for ranges in self.ranges:
            offset, pieces = 0, []
            for i, (a, b) in enumerate(ranges):
                if b > a:
                    pieces.append((i, a, b, offset))
                    offset += -(-(b - a) * self.dtypes[i].itemsize // _ALIGN) * _ALIGN
            self.pieces.append(pieces)
            segment_bytes.append(offset)
        self.segment_bytes = np.array(segment_bytes, np.int64)
        self.displacements = np.concatenate([[0], np.cumsum(self.segment_bytes)[:-1]]).astype(np.int64)
        self.total_bytes = int(self.segment_bytes.sum())
        self.elements = sum(b - a for a, b in self.mine)
        # The global norm: the dtype group of every chunk (groups in order of first use, as
        # in ``SlotStore``), how many chunks each rank sums, and this rank's by group.
        self.groups = list(dict.fromkeys(self.dtypes))
        self.chunk_groups = np.array([self.groups.index(self.dtypes[t]) for t in table[:, 0]], np.int64)
        self.chunk_counts = np.diff(firsts)
        self.chunk_displacements = firsts[:-1]
        mine = table[firsts[rank]: firsts[rank + 1]].tolist()
        self.my_chunks = []  # per group: (its parameters with a piece here, chunk rows within those pieces, positions)
        for dtype in self.groups:
            members = [i for i, (a, b) in enumerate(self.mine) if b > a and self.dtypes[i] == dtype]
            rows = [(members.index(t), s - self.mine[t][0], e - self.mine[t][0], position)
                    for position, (t, s, e) in enumerate(mine) if self.dtypes[t] == dtype]
            self.my_chunks.append((members, np.array([r[:3] for r in rows], np.int64).reshape(-1, 3),
                                   np.array([r[3] for r in rows], np.int64)))
        self.n_my_chunks = len(mine)

    def owned(self, i: int, ranges: Sequence[tuple[int, int]] | None = None) -> bool:
        """Whether parameter ``i`` lives whole, in its shape, in a shard of ``ranges`` (this rank's)."""
        a, b = (self.mine if ranges is None else ranges)[i]
        return _owned(self.whole, self.sizes[i], a, b)

    def pieces_of(self, arrays: Sequence[npt.NDArray[Any]], ranges: Sequence[tuple[int, int]] | None = None) -> list[npt.NDArray[Any]]:
        """The pieces of ``arrays`` (the parameters, or anything of their shapes) in a shard of
        ``ranges``: flat element ranges, or the whole array for a tensor owned whole."""
        ranges = self.mine if ranges is None else ranges
        return [a if self.owned(i, ranges) else a.reshape(-1)[s:e] for i, (a, (s, e)) in enumerate(zip(arrays, ranges))]


class ShardedOptimizer:
    """A numbaopt optimizer whose state is sharded over the ranks of ``comm`` (ZeRO stage 1).

    ``optimizer`` gives the class and settings (and its state, if it has any); it is not
    used afterwards. Every rank calls every method together (they are collective), with
    its own gradients and its full replica of the same parameters. CPU (NumPy) parameters only.

    ``timeout`` (seconds, or None to wait as long as MPI does: forever) bounds every
    collective call of this optimizer: a rank still waiting for the others after that long
    prints which call it was in and aborts the whole MPI job (``MPI_Abort``).
    """

    def __init__(self, optimizer: Optimizer, comm: Any, *, timeout: float | None = None) -> None:
        if not isinstance(optimizer, Optimizer) or type(optimizer) not in rule_based(family_of(type(optimizer))):
            name = type(optimizer).__name__
            if type(optimizer) in registered():
                raise TypeError(f"{name} cannot be sharded: its state is the wrapped optimizer's own variables, not slots split by element")
            raise TypeError(f"ShardedOptimizer needs one of numbaopt's optimizers ({', '.join(c.__name__ for c in rule_based())}), got {name}")
        optimizer.check_part_stepping()  # what a shard of a step cannot do, refused before anything starts
        _check_comm_and_timeout(comm, timeout)
        if optimizer.get_config().get("device") == "cuda":
            raise ValueError("ShardedOptimizer steps NumPy parameters on the CPU; the optimizer has device='cuda'")
        state = optimizer.state()
        shapes = dtypes = None
        if state.slots and state.parameters is not None:
            shapes, dtypes = [shape for shape, _ in state.parameters], [np.dtype(d) for _, d in state.parameters]
        cls = type(optimizer)
        self._setup(cls, optimizer.checkpoint_config(), comm, timeout, state.iterations, state.scalars,
                    shapes, dtypes, state.names,
                    lambda plan: {slot.name: _slot_pieces(plan, slot, state.slots[slot.name]) for slot in optimizer.slots})

    def _setup(self, cls: type[Optimizer], config: dict[str, Any], comm: Any, timeout: float | None,
               iterations: int, scalars: dict[str, float],
               shapes: Sequence[tuple[int, ...]] | None, dtypes: Sequence[np.dtype[Any]] | None,
               names: Sequence[str] | None, pieces: Callable[[_Plan], Mapping[str, Sequence[npt.NDArray[Any]]]]) -> None:
        """Bind to ``comm`` with this state; ``pieces(plan)`` gives the slots' pieces of this rank."""
        self._comm = comm
        self._timeout = timeout
        self._lock = threading.RLock()
        self._inner = cls.from_checkpoint_config(config)
        self._names = tuple(names) if names is not None else None
        self._plan: _Plan | None = None
        self._buffers: tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]] | None = None
        own: Mapping[str, Sequence[npt.NDArray[Any]]] = {}
        parameters = None
        if shapes is not None and dtypes is not None:
            plan = self._plan = _Plan(shapes, [np.dtype(d) for d in dtypes], comm.Get_size(), comm.Get_rank(), whole_tensors(self._inner))
            own = pieces(plan)
            parameters = tuple((tuple(shape) if plan.owned(i) else (b - a,), plan.dtypes[i].name)
                               for i, (shape, (a, b)) in enumerate(zip(plan.shapes, plan.mine)))
        self._inner.load_state(OptimizerState(iterations, dict(scalars), {k: list(v) for k, v in own.items()}, None, parameters))

    # ------------------------------------------------------------------ the public face

    @property
    def comm(self) -> Any:
        """The communicator whose ranks share the state."""
        return self._comm

    @property
    def iterations(self) -> int:
        """The number of steps applied so far."""
        return self._inner.iterations

    @property
    def parameter_names(self) -> tuple[str, ...] | None:
        """The recorded parameter names, or None (as ``Optimizer.parameter_names``)."""
        return self._names

    def set_parameter_names(self, names: Sequence[str]) -> None:
        """Record names for the parameters (as ``Optimizer.set_parameter_names``)."""
        if self._plan is None:
            raise ValueError("set_parameter_names: no parameters yet; pass names= to apply_gradients instead")
        self._names = names_tuple(names, len(self._plan.shapes))

    def get_config(self) -> dict[str, Any]:
        """The wrapped optimizer's config."""
        return self._inner.get_config()

    def __getattr__(self, name: str) -> Any:
        # Hyperparameters read as on the optimizer (opt.lr, opt.clipnorm).
        inner = self.__dict__.get("_inner")
        if inner is not None and (name in type(inner).settable or name in ALIASES):
            return getattr(inner, name)
        raise AttributeError(f"{type(self).__name__} has no attribute {name!r}")

    def __setattr__(self, name: str, value: Any) -> None:
        # Assigning a hyperparameter (a schedule's opt.lr = ...) sets it on this rank's shard;
        # every rank must assign the same value, which the next step checks.
        if not name.startswith("_") and "_inner" in self.__dict__:
            setattr(self._inner, name, value)
        else:
            super().__setattr__(name, value)

    def __repr__(self) -> str:
        return f"ShardedOptimizer({self._inner!r}, rank {self._comm.Get_rank()} of {self._comm.Get_size()})"

    @property
    def state_nbytes(self) -> int:
        """Bytes of optimizer state (slots) this rank holds: its shard."""
        weights = self._inner.get_weights()
        return sum(w.nbytes for w in weights[1 + len(type(self._inner).scalar_state):])

    @property
    def buffer_nbytes(self) -> int:
        """Bytes of the exchange buffers this rank keeps between steps (0 before the first)."""
        return sum(b.nbytes for b in self._buffers) if self._buffers is not None else 0

    # ------------------------------------------------------------------ the step

    def apply_gradients(self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None = None) -> None:
        """One step (collective): average the ranks' gradients, update this rank's shard,
        and leave every rank with the whole updated parameters, in place.

        Every rank passes its own gradients and the same parameters (count, shapes, dtypes,
        names). Anything one rank refuses, or any difference between the ranks, raises the
        same exception on every rank before anything changes.
        """
        with self._collective("apply_gradients"):
            grads, params, names = self._agreed_call(grads_and_vars, names)
            plan = self._plan
            assert plan is not None  # bound by _agreed_call
            averaged = self._reduce_scatter(plan, grads)
            norm = self._global_norm(plan, averaged) if self._inner.get_config().get("clipnorm") else None
            flat_params = [p.reshape(-1) for p in params]
            own_pieces = plan.pieces_of(params)
            averaged = [g.reshape(p.shape) for g, p in zip(averaged, own_pieces)]
            self._inner.apply_shard(zip(averaged, own_pieces), norm)
            self._all_gather(plan, flat_params)
            if names is not None:
                self._names = names

    def _reduce_scatter(self, plan: _Plan, grads: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
        """This rank's pieces of the averaged gradients (empty where it owns nothing): every
        rank's pieces arrive by one ``Alltoallv`` and are added in rank order, then divided."""
        send, receive = self._exchange_buffers(plan)
        flats = [g.reshape(-1) for g in grads]
        for q, pieces in enumerate(plan.pieces):
            for i, a, b, offset in pieces:
                _view(send, plan.displacements[q] + offset, b - a, plan.dtypes[i])[...] = flats[i][a:b]
        n_ranks, size = plan.n_ranks, int(plan.segment_bytes[plan.rank])
        self._comm.Alltoallv([send, (plan.segment_bytes, plan.displacements), MPI.BYTE],
                             [receive, ([size] * n_ranks, [size * s for s in range(n_ranks)]), MPI.BYTE])
        averaged = [np.empty(0, d) for d in plan.dtypes]
        # IEEE arithmetic whatever the user's error state: an overflow raised on the one rank
        # that owns the elements would leave the others waiting in the next collective.
        with np.errstate(all="ignore"):
            for i, a, b, offset in plan.pieces[plan.rank]:
                total = _view(receive, offset, b - a, plan.dtypes[i])  # rank 0's, then the sum in place
                for s in range(1, n_ranks):
                    np.add(total, _view(receive, s * size + offset, b - a, plan.dtypes[i]), out=total)
                np.divide(total, plan.dtypes[i].type(n_ranks), out=total)
                averaged[i] = total
        return averaged

    def _all_gather(self, plan: _Plan, flat_params: Sequence[npt.NDArray[Any]]) -> None:
        """Give every rank the other ranks' updated pieces: one in-place ``Allgatherv``."""
        send, _ = self._exchange_buffers(plan)
        for i, a, b, offset in plan.pieces[plan.rank]:
            _view(send, plan.displacements[plan.rank] + offset, b - a, plan.dtypes[i])[...] = flat_params[i][a:b]
        self._comm.Allgatherv(MPI.IN_PLACE, [send, (plan.segment_bytes, plan.displacements), MPI.BYTE])
        for q, pieces in enumerate(plan.pieces):
            if q != plan.rank:
                for i, a, b, offset in pieces:
                    flat_params[i][a:b] = _view(send, plan.displacements[q] + offset, b - a, plan.dtypes[i])

    @contextlib.contextmanager
    def _collective(self, what: str) -> Iterator[None]:
        """One collective call: under this rank's lock, and the watchdog when there is a timeout."""
        with self._lock, _watchdog(self._comm, self._timeout, what):
            yield

    def _agreed_call(
        self, grads_and_vars: Iterable[tuple[npt.ArrayLike, Any]], names: Sequence[str] | None
    ) -> tuple[list[npt.NDArray[Any]], list[npt.NDArray[Any]], tuple[str, ...] | None]:
        """The call's checked gradients, parameters and names, once every rank agrees on them."""
        problem: tuple[str, str] | None = None
        grads: list[Any] = []
        params: list[Any] = []
        checked: tuple[str, ...] | None = None
        try:
            grads, params = split_pairs(listed_pairs(grads_and_vars))
            grads, params = checked_arrays(grads, params, devices.CPU)
            devices.CPU.check_distinct(params)
            checked = checked_names(names, len(params), self._names)
        except (TypeError, ValueError) as error:
            problem = (type(error).__name__, str(error))
        description = None if problem else self._description(params, checked)
        digest = hashlib.sha256(repr(description).encode()).hexdigest()
        reports = self._comm.allgather((problem, digest))
        _raise_first_problem(reports)
        if len({d for _, d in reports}) > 1:
            descriptions = self._comm.allgather(description)
            raise ValueError(_disagreement(descriptions))
        # Every rank holds the same description now, so the checks below end alike on all.
        shapes, dtypes = tuple(p.shape for p in params), tuple(p.dtype for p in params)
        if self._plan is None:
            self._plan = _Plan(shapes, dtypes, self._comm.Get_size(), self._comm.Get_rank(), whole_tensors(self._inner))
        else:
            _check_layout(self._plan, shapes, dtypes)
        if self._buffers is None:  # the first step: the buffers may not fit on some rank
            problem = None
            try:
                self._exchange_buffers(self._plan)
            except MemoryError as error:
                problem = ("MemoryError", f"cannot allocate the exchange buffers: {error}")
            _raise_first_problem(self._comm.allgather((problem, None)))
        return grads, params, checked

    def _description(self, params: Sequence[npt.NDArray[Any]], names: tuple[str, ...] | None) -> dict[str, Any]:
        """What every rank must agree on for a step, by field."""
        plan = self._plan
        return {
            "the parameter count": len(params),
            "the parameter shapes": [p.shape for p in params],
            "the parameter dtypes": [p.dtype.name for p in params],
            "the parameter names": names,
            "the recorded parameter names": self._names,
            "the optimizer": json.dumps(self._inner.checkpoint_config(), sort_keys=True),
            "the step count": self._inner.iterations,
            "the bound layout": None if plan is None else (plan.shapes, [d.name for d in plan.dtypes]),
            "tuning.CHUNK_ELEMENTS": tuning.CHUNK_ELEMENTS,
        }

    def _exchange_buffers(self, plan: _Plan) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
        """The send (and allgather) buffer of every rank's segment, and the receive buffer of
        every rank's copy of this rank's segment; kept from step to step."""
        if self._buffers is None:
            self._buffers = (np.empty(plan.total_bytes, np.uint8),
                             np.empty(int(plan.segment_bytes[plan.rank]) * plan.n_ranks, np.uint8))
        return self._buffers

    def _global_norm(self, plan: _Plan, averaged: Sequence[npt.NDArray[Any]]) -> float:
        """The single-process global norm of the averaged gradients: this rank's chunk sums,
        allgathered, then added group by group in the single-process order."""
        own = np.zeros(plan.n_my_chunks, np.float64)
        parallel = plan.elements >= tuning.PARALLEL_MIN_ELEMENTS
        for dtype, (members, table, positions) in zip(plan.groups, plan.my_chunks):
            if len(table):
                addresses = devices.CPU.addresses([averaged[i] for i in members])
                own[positions] = slots.chunk_sums(devices.CPU, addresses, table, np.empty((1, 1), dtype), parallel)
        every = np.empty(len(plan.chunk_groups), np.float64)
        self._comm.Allgatherv(own, [every, (plan.chunk_counts, plan.chunk_displacements), MPI.DOUBLE])
        total = 0.0
        for g in range(len(plan.groups)):
            total += float(np.sum(every[plan.chunk_groups == g]))
        return float(np.sqrt(total))

    # ------------------------------------------------------------------ the state

    def gathered_state(self) -> OptimizerState:
        """The whole state, gathered from every rank (collective): the ``state()`` the
        single-process optimizer would have. For checks and small models."""
        with self._collective("gathered_state"):
            local = self._inner.state()
            every = self._comm.allgather(local.slots)
            plan = self._plan
            if plan is None:
                return OptimizerState(local.iterations, local.scalars, {}, self._names)
            owners = [next((r for r in range(plan.n_ranks) if plan.owned(i, plan.ranges[r])), 0) for i in range(len(plan.shapes))]
            whole = {
                slot.name: [every[owners[i]][slot.name][i] if plan.whole
                            else np.concatenate([shard[slot.name][i] for shard in every]).reshape(shape)
                            for i, shape in enumerate(plan.shapes)]
                for slot in self._inner.slots
            }
            parameters = tuple((shape, dtype.name) for shape, dtype in zip(plan.shapes, plan.dtypes))
            return OptimizerState(local.iterations, local.scalars, whole, self._names, parameters)

    def get_weights(self) -> list[npt.NDArray[Any]]:
        """The whole state as ``Optimizer.get_weights`` lists it (collective: ``gathered_state``)."""
        return keras_weights.build(self._inner, self.gathered_state())  # the instance: its settings choose the slots (amsgrad)

    def save_numbaopt_checkpoint(self, path: str | os.PathLike[str]) -> None:
        """Save the sharded state to ``path`` (collective; ``numbaopt.save_optimizer`` calls it).

        Each rank writes its shard file beside ``path``, then rank 0 replaces the index at
        ``path``; every rank returns, or raises the same error, once the set is complete.
        The folder must be one that every rank sees (a shared file system).
        """
        with self._collective("save_optimizer"):
            comm, rank = self._comm, self._comm.Get_rank()
            target = os.path.realpath(os.fspath(path))
            token = comm.bcast(secrets.token_hex(6) if rank == 0 else None, root=0)
            shard = os.path.join(os.path.dirname(target), sharded_checkpoint.shard_file_name(target, token, rank, comm.Get_size()))
            problem: tuple[str, str] | None = None
            digest = ""
            try:
                if not os.path.isdir(os.path.dirname(target)):
                    raise FileNotFoundError(f"cannot save a checkpoint there: {os.path.dirname(target)} is not an existing folder")
                save_optimizer(self._inner, shard)
                digest = sharded_checkpoint.shard_digest(shard)
            except (OSError, TypeError, ValueError, CheckpointError) as error:
                problem = (type(error).__name__, str(error))
            reports = comm.allgather((problem, os.fspath(path), digest))
            try:
                _raise_first_problem([(p, t) for p, t, _ in reports])
                if len({t for _, t, _ in reports}) > 1:
                    raise ValueError(f"save: the ranks name different files: {sorted({t for _, t, _ in reports})}")
                outcome = None
                if rank == 0:
                    try:
                        self._write_index(target, token, [d for _, _, d in reports])
                    except (OSError, ValueError, TypeError) as error:
                        outcome = (type(error).__name__, str(error))
                _raise_first_problem([(comm.bcast(outcome, root=0), None)])
            except BaseException:
                if os.path.exists(shard):
                    os.unlink(shard)
                raise

    def _write_index(self, target: str, token: str, digests: Sequence[str]) -> None:
        """Rank 0's part of a save: check that every shard file is there, then the index."""
        n_ranks = self._comm.Get_size()
        folder = os.path.dirname(target)
        files = [sharded_checkpoint.shard_file_name(target, token, r, n_ranks) for r in range(n_ranks)]
        missing = [f for f in files if not os.path.isfile(os.path.join(folder, f))]
        if missing:
            raise FileNotFoundError(f"save: rank 0 does not see the shard files {missing[:3]} in {folder}; "
                                    "the ranks must save to a folder they all see")
        plan = self._plan
        shapes, dtypes = (plan.shapes, [d.name for d in plan.dtypes]) if plan is not None else ((), [])
        names = self._names or (None,) * len(shapes)
        parameters = [Parameter(n, tuple(s), d) for n, s, d in zip(names, shapes, dtypes)]
        ranges = plan.ranges if plan is not None else [[] for _ in range(n_ranks)]
        header = {
            "class_name": type(self._inner).__name__,
            "config": json.dumps(self._inner.checkpoint_config(), sort_keys=True, allow_nan=False),
            "iterations": self._inner.iterations,
            "scalar_state": json.dumps(self._inner.state().scalars, sort_keys=True),
        }
        shards = [sharded_checkpoint.ShardRecord(f, tuple(r), d) for f, r, d in zip(files, ranges, digests)]
        sharded_checkpoint.write_index(target, header, parameters, shards)

    @classmethod
    def load(cls, path: str | os.PathLike[str], comm: Any, *, timeout: float | None = None) -> ShardedOptimizer:
        """A sharded optimizer with the state saved at ``path`` (collective): a sharded
        checkpoint saved on any number of ranks, or an ordinary one. Each rank reads only
        the shard files that hold its new shard. Any rank's failure raises ``CheckpointError``
        on every rank. ``timeout`` as for the constructor."""
        _check_comm_and_timeout(comm, timeout)
        self = cls.__new__(cls)
        problem = None
        checked: dict[int, Any] = {}
        try:
            _check_shards(os.fspath(path), comm, checked)
        except CheckpointError as error:
            problem = ("CheckpointError", str(error))
        # Every shard is checked by some rank, and every rank knows the outcome, before any
        # rank allocates for the sizes the index declares: it is only a number in a file.
        with _watchdog(comm, timeout, "loading a checkpoint"):
            _raise_first_problem(comm.allgather((problem, None)))
        try:
            self._load(os.fspath(path), comm, timeout, checked)
        except CheckpointError as error:
            problem = ("CheckpointError", str(error))
        with _watchdog(comm, timeout, "loading a checkpoint"):
            _raise_first_problem(comm.allgather((problem, None)))
        return self

    def _load(self, path: str, comm: Any, timeout: float | None, checked: dict[int, Any] | None = None) -> None:
        if sharded_checkpoint.is_sharded(path):
            index = sharded_checkpoint.read_index(path)
            source: Any = index
            stored: list[Sequence[tuple[int, int]]] = [s.ranges for s in index.shards]
            def read(k: int) -> Any:
                found = (checked or {}).pop(k, None)  # read and checked by ``_check_shards``
                return found if found is not None else sharded_checkpoint.read_shard(index, k).slots
        else:
            whole = read_checkpoint(path)
            source = whole
            if optimizer_class(whole.class_name) not in rule_based():
                raise CheckpointError(f"{path}: {whole.class_name} cannot be sharded")
            stored = [[(0, int(np.prod(p.shape, dtype=np.int64))) for p in whole.parameters]]
            def read(k: int) -> Any:
                return whole.slots
        shapes = [p.shape for p in source.parameters]
        dtypes = [np.dtype(p.dtype) for p in source.parameters]
        names = [p.name for p in source.parameters]
        cls = optimizer_class(source.class_name)
        try:
            self._setup(cls, source.config, comm, timeout, source.iterations, source.scalars,
                        shapes if source.parameters else None, dtypes, names if names and names[0] is not None else None,
                        lambda plan: sharded_checkpoint.slot_pieces(source, plan.mine, stored, read, plan.whole))
        except (TypeError, ValueError) as error:
            raise CheckpointError(f"{path}: cannot rebuild {source.class_name} from the checkpoint: {error}") from error


def _slot_pieces(plan: _Plan, slot: Slot, arrays: Sequence[npt.NDArray[Any]]) -> list[npt.NDArray[Any]]:
    """This rank's pieces of one slot, from the whole slot arrays: element ranges, or the
    whole array of a tensor owned whole (and an empty stand-in for one owned elsewhere)."""
    if not plan.whole:
        return plan.pieces_of(arrays)
    return [a if plan.owned(i) else np.zeros(slot.shape_of((0,)), a.dtype) for i, a in enumerate(arrays)]


def _check_shards(path: str, comm: Any, checked: dict[int, Any]) -> None:
    """Check this rank's share of a sharded checkpoint's shard files (shard ``k`` on rank
    ``k % size``: every one of them on some rank, as a whole load checks them all), keeping
    their slots in ``checked``; nothing for an ordinary checkpoint."""
    if not sharded_checkpoint.is_sharded(path):
        return
    index = sharded_checkpoint.read_index(path)
    for k in range(comm.Get_rank(), len(index.shards), comm.Get_size()):
        checked[k] = sharded_checkpoint.read_shard(index, k).slots


def _check_comm_and_timeout(comm: Any, timeout: float | None) -> None:
    if not isinstance(comm, MPI.Intracomm):
        raise TypeError(f"comm must be an mpi4py intracommunicator (MPI.COMM_WORLD, say), got {type(comm).__name__}")
    if timeout is not None and (isinstance(timeout, bool) or not isinstance(timeout, (int, float)) or not 0 < timeout < math.inf):
        raise ValueError(f"timeout must be a positive number of seconds or None, got {timeout!r}")


@contextlib.contextmanager
def _watchdog(comm: Any, timeout: float | None, what: str) -> Iterator[None]:
    """Abort the MPI job if the block lasts more than ``timeout`` seconds: MPI's collectives
    have no timeout of their own, so a rank that never joins would keep the others waiting."""
    if timeout is None:
        yield
        return
    timer = threading.Timer(timeout, _abort, args=(comm, timeout, what))
    timer.daemon = True
    timer.start()
    try:
        yield
    finally:
        timer.cancel()


def _abort(comm: Any, timeout: float, what: str) -> None:
    """Say why on stderr, give the launcher a moment to forward it (an abort kills the
    processes that forward output, and can lose what they have not yet read), then abort."""
    sys.stderr.write(f"numbaopt.distributed: rank {comm.Get_rank()} of {comm.Get_size()} waited more than {timeout} s "
                     f"in {what} (collective): aborting the MPI job\n")
    sys.stderr.flush()
    time.sleep(_ABORT_GRACE_S)
    comm.Abort(1)


def _view(buffer: npt.NDArray[np.uint8], offset: int, count: int, dtype: np.dtype[Any]) -> npt.NDArray[Any]:
    """``count`` elements of ``dtype`` at byte ``offset`` of ``buffer``."""
    return buffer[offset: offset + count * dtype.itemsize].view(dtype)


_ERRORS: dict[str, type[Exception]] = {"TypeError": TypeError, "ValueError": ValueError, "CheckpointError": CheckpointError,
                                       "FileNotFoundError": FileNotFoundError, "MemoryError": MemoryError}


def _raise_first_problem(reports: Sequence[tuple[tuple[str, str] | None, Any]]) -> None:
    """Raise, on every rank alike, the first problem a rank reported (rank order)."""
    for rank, (problem, _) in enumerate(reports):
        if problem is not None:
            kind, message = problem
            where = f"rank {rank} of {len(reports)}: " if len(reports) > 1 else ""
            raise _ERRORS.get(kind, OSError)(f"{where}{message}")


def _disagreement(descriptions: Sequence[dict[str, Any]]) -> str:
    """What the ranks disagree on, as precisely as the descriptions say."""
    first = descriptions[0]
    for rank, other in enumerate(descriptions[1:], start=1):
        for field, value in first.items():
            if other[field] == value:
                continue
            if isinstance(value, list) and isinstance(other[field], list) and len(value) == len(other[field]):
                i = next(i for i, (a, b) in enumerate(zip(value, other[field])) if a != b)
                detail = f"parameter {i} has {value[i]} on rank 0 but {other[field][i]} on rank {rank}"
            else:
                detail = f"rank 0 has {value!r:.200} but rank {rank} has {other[field]!r:.200}"
            return (f"the ranks disagree on {field}: {detail}. Every rank must pass the same parameters "
                    f"(count, shapes, dtypes, names) to the same optimizer state and settings")
    return "the ranks disagree on the step"


def _check_layout(plan: _Plan, shapes: Sequence[tuple[int, ...]], dtypes: Sequence[np.dtype[Any]]) -> None:
    """Raise unless the parameters are those the state was made for (as ``Layout.check``)."""
    if len(shapes) != len(plan.shapes):
        raise ValueError(f"apply_gradients got {len(shapes)} parameters, but the state was made for {len(plan.shapes)}")
    for i, (shape, dtype) in enumerate(zip(shapes, dtypes)):
        if shape != plan.shapes[i]:
            raise ValueError(f"parameter {i} has shape {shape}, but its state has shape {plan.shapes[i]}")
        if dtype != plan.dtypes[i]:
            raise TypeError(f"parameter {i} has dtype {dtype}, but its state has dtype {plan.dtypes[i]}")
