"""ShardedOptimizer (ZeRO stage 1) against plain data parallelism, per rank: state bytes,
step time and bytes sent per step.

    mpiexec -n R python benchmarks/distributed.py [--sizes 1e7 5e7] [--steps 5]

(with ``NUMBA_NUM_THREADS=1`` when the ranks share the cores). Rank 0 prints one JSON line
per size. Both sides run Adam over the same float32 parameters (ten tensors) from the same
gradients:

* ``sharded``: ``ShardedOptimizer.apply_gradients`` (Alltoallv of the gradients, the
  rank's shard of the update, Allgatherv of the updated parameters);
* ``data parallel``: the gradients copied into one flat buffer, ``Allreduce`` (MPI's sum,
  in place), divided by R, then a full Adam replica's step on every rank.

Bytes sent are computed from what each side hands MPI (the payload that must leave a rank,
as ring algorithms move it), not counted on the wire: ``(R-1)/R`` of the gradients for the
exchange, as much again for the allgather; MPI's Allreduce moves ``2 (R-1)/R`` of them
(reduce-scatter then allgather). Timings are medians of ``--steps`` steps after two warm-ups,
the slowest rank's; ``*_alone_ms`` are MPI's collectives alone over the gradients' bytes.
"""
import argparse
import json
import statistics
import time

import numpy as np
from mpi4py import MPI

from numbaopt import optimizers
from numbaopt.distributed import ShardedOptimizer

COMM = MPI.COMM_WORLD
RANK, R = COMM.Get_rank(), COMM.Get_size()
TENSORS = 10


def timed(step, steps):
    for _ in range(2):
        step()
    samples = []
    for _ in range(steps):
        COMM.Barrier()
        start = time.perf_counter()
        step()
        samples.append(time.perf_counter() - start)
    # A step ends when the slowest rank's does.
    return max(COMM.allgather(statistics.median(samples)))


def measure(size, steps):
    rng = np.random.default_rng(RANK)
    sizes = [size // TENSORS] * TENSORS
    grads = [(rng.standard_normal(n) * 1e-3).astype(np.float32) for n in sizes]
    params = [np.random.default_rng(0).standard_normal(n).astype(np.float32) for n in sizes]
    grad_bytes = sum(g.nbytes for g in grads)

    sharded = ShardedOptimizer(optimizers.Adam(), COMM)
    sharded_s = timed(lambda: sharded.apply_gradients(zip(grads, params)), steps)
    sharded_state = sharded.state_nbytes
    sharded_buffers = sharded.buffer_nbytes
    del sharded

    replica = optimizers.Adam()
    flat = np.empty(sum(sizes), np.float32)
    views = np.split(flat, np.cumsum(sizes)[:-1])

    def data_parallel():
        for view, g in zip(views, grads):
            view[...] = g
        COMM.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM)
        np.divide(flat, np.float32(R), out=flat)
        replica.apply_gradients(zip(views, params))

    data_parallel_s = timed(data_parallel, steps)
    # The bare collectives over the same bytes, in even segments: what MPI itself takes.
    segment = grad_bytes // R
    counts = ([segment] * R, [segment * r for r in range(R)])
    send, receive = np.zeros(segment * R, np.uint8), np.empty(segment * R, np.uint8)
    collectives = {
        "alltoallv": timed(lambda: COMM.Alltoallv([send, counts, MPI.BYTE], [receive, counts, MPI.BYTE]), steps),
        "allgatherv": timed(lambda: COMM.Allgatherv(MPI.IN_PLACE, [send, counts, MPI.BYTE]), steps),
        "allreduce": timed(lambda: COMM.Allreduce(MPI.IN_PLACE, flat, op=MPI.SUM), steps),
    }
    replica_state = sum(w.nbytes for w in replica.get_weights()[1:])
    exchange = grad_bytes * (R - 1) / R
    return {
        "parameters": size, "ranks": R,
        "sharded_step_ms": round(sharded_s * 1e3, 1), "data_parallel_step_ms": round(data_parallel_s * 1e3, 1),
        "sharded_state_mb_per_rank": round(max(COMM.allgather(sharded_state)) / 1e6, 1),
        "data_parallel_state_mb_per_rank": round(replica_state / 1e6, 1),
        "sharded_buffers_mb_per_rank": round(max(COMM.allgather(sharded_buffers)) / 1e6, 1),
        "data_parallel_buffers_mb_per_rank": round(flat.nbytes / 1e6, 1),
        "sharded_sent_mb_per_rank": round(2 * exchange / 1e6, 1),
        "data_parallel_sent_mb_per_rank": round(2 * exchange / 1e6, 1),
        **{f"{name}_alone_ms": round(seconds * 1e3, 1) for name, seconds in collectives.items()},
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", nargs="+", type=float, default=[1e7, 5e7])
    parser.add_argument("--steps", type=int, default=5)
    args = parser.parse_args()
    for size in args.sizes:
        result = measure(int(size), args.steps)
        if RANK == 0:
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
