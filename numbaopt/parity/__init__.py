"""Replay the golden fixtures recorded from real Keras and compare, step by step.

Each fixture case (``docs/fixtures.md``) holds a run of a tf-keras legacy optimizer set up
to compute Keras 2.0's arithmetic: the initial parameters, the gradients of every step,
and the parameters and slots Keras had after every step. A replay rebuilds the optimizer
with ``numbaopt.optimizers.deserialize`` and applies the same gradients; it is done twice
per case:

* ``keras2``: from the Keras-2.0-style config (what numbaopt's ``get_config`` gives), fed
  the unclipped gradients, so numbaopt's own clipping is exercised;
* ``tf-keras``: from the config Keras's own ``get_config()`` returned, fed the gradients
  the Keras optimizer itself received (where the capture composed Keras 2.0's global-norm
  clipping outside the optimizer, those are the clipped ones; see ``docs/parity.md``).

After every step every parameter and every slot is compared with a relative error
``max|ours - keras| / max|keras|`` per tensor, which must stay within 1e-5 (float32) or
1e-10 (float64). ``iterations`` must match exactly. HDF5 is read with h5py only;
TensorFlow is not needed.

The Keras 3 fixtures (``fixtures/keras3/``, recorded from Keras 3.15 on TensorFlow) check
``numbaopt.keras3``: each is replayed once, route ``keras3``, from Keras's own
``serialize()`` output; parameters, ``learning_rate`` and ``iterations`` are compared after
every step and ``keras_variables()`` after the last, with the same tolerances.

One module per job: ``fixtures`` reads them, ``replays`` replays one, ``report`` prints the
table or JSON; the ``numbaopt parity`` command is in ``numbaopt.cli``.
"""
from numbaopt.parity.fixtures import FORMAT_VERSION, Fixture, Keras3Fixture, default_fixture_dir, fixture_files, load_fixtures
from numbaopt.parity.replays import (
    KERAS3_ROUTES, ROUTES, TOLERANCE, Result, build_optimizer, relative_error, replay, replay_keras3, routes_of, run_all,
)
from numbaopt.parity.report import format_table, run_parity, summary

__all__ = [
    "FORMAT_VERSION", "Fixture", "Keras3Fixture", "default_fixture_dir", "fixture_files", "load_fixtures",
    "KERAS3_ROUTES", "ROUTES", "TOLERANCE", "Result", "build_optimizer", "relative_error", "replay",
    "replay_keras3", "routes_of", "run_all",
    "format_table", "run_parity", "summary",
]
