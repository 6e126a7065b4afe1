"""``numbaopt.load_optimizer``: whichever kind of checkpoint a path holds, on one process or sharded.

An ordinary checkpoint loads with ``numbaopt.checkpoint``; a sharded one (an index file,
``numbaopt.sharded_checkpoint``) loads as one ordinary optimizer; with ``comm=`` either kind
loads as a ``numbaopt.distributed.ShardedOptimizer`` over that communicator's ranks.
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from numbaopt import checkpoint, sharded_checkpoint

if TYPE_CHECKING:
    from numbaopt.distributed import ShardedOptimizer
    from numbaopt.optimizers import Optimizer
    from numbaopt.optimizers.tf_optimizer import TFOptimizer


def load_optimizer(
    path: str | os.PathLike[str], comm: Any = None, **options: Any
) -> Optimizer | TFOptimizer | ShardedOptimizer:
    """A new optimizer with the state saved at ``path``; its slots bind at the next step.

    ``comm`` (an mpi4py communicator): load collectively, as a ``ShardedOptimizer`` over its
    ranks, from a sharded checkpoint saved on any number of ranks or from an ordinary one
    (``options``: ``timeout=``, see ``ShardedOptimizer``). Without it, a sharded checkpoint loads whole. ``options`` go to the class's
    ``from_checkpoint_config`` (``TFOptimizer`` needs ``wrapped=``).
    """
    if comm is not None:
        from numbaopt.distributed import ShardedOptimizer

        return ShardedOptimizer.load(path, comm, **options)
    if sharded_checkpoint.is_sharded(path):
        return checkpoint.optimizer_from_checkpoint(sharded_checkpoint.read_whole(path), path, **options)
    return checkpoint.load_optimizer(path, **options)
