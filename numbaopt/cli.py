"""The ``numbaopt`` command: ``numbaopt parity`` replays the Keras fixtures,
``numbaopt inspect PATH`` shows a checkpoint.

The top layer: it only parses arguments and calls the library (``numbaopt.parity``,
``numbaopt.checkpoint_report``), which it imports when a subcommand runs.
"""
from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numbaopt

PARITY = (
    "Replay the golden fixtures recorded from real Keras (tf-keras legacy optimizers set up "
    "for Keras 2.0 arithmetic; Keras 3 optimizers for numbaopt.keras3) through numbaopt and "
    "compare parameters and optimizer state after every step."
)
INSPECT = ("Show the class, config, iterations and slots of a numbaopt checkpoint (HDF5), "
           "or the optimizer state of a Keras model file (tf-keras .h5, Keras 3 .keras).")


def _parity(args: argparse.Namespace) -> int:
    from numbaopt.parity import run_parity

    return run_parity(args.path, device=args.device, as_json=args.json)


def _inspect(args: argparse.Namespace) -> int:
    from numbaopt import checkpoint_report

    return checkpoint_report.main(args.path)


def parser() -> argparse.ArgumentParser:
    """The argument parser of ``numbaopt``; each subcommand sets ``func(args)`` -> exit status."""
    top = argparse.ArgumentParser(
        prog="numbaopt", description="Keras 2.0 optimizers as Numba kernels: parity check and checkpoint tools."
    )
    top.add_argument("--version", action="version", version=f"numbaopt {numbaopt.__version__}")
    subparsers = top.add_subparsers(dest="command", required=True)

    parity = subparsers.add_parser("parity", help="check numbaopt against the Keras fixtures", description=PARITY)
    parity.add_argument("path", nargs="?", default=None, help="a fixture file or folder, with its keras3/ folder (default: the shipped fixtures)")
    parity.add_argument("--device", choices=("cpu", "cuda"), default="cpu",
                        help="where the parameters live during the replay (default: cpu)")
    parity.add_argument("--json", action="store_true",
                        help="print JSON instead of a table (progress and errors still go to stderr)")
    parity.set_defaults(func=_parity)

    inspect = subparsers.add_parser("inspect", help="show what a checkpoint holds", description=INSPECT)
    inspect.add_argument("path", help="a checkpoint written by numbaopt.save_optimizer, or a Keras model file")
    inspect.set_defaults(func=_inspect)
    return top


#: The exit status of a command whose reader closed its output (``numbaopt parity --json | head``):
#: what a shell reports for a Unix tool that SIGPIPE ended, 128 + 13.
CLOSED_PIPE_STATUS = 141


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``numbaopt COMMAND ...``; returns the exit status.

    A reader that closes the output early (``| head``) ends the command quietly, as it ends
    a Unix tool: no traceback, status 141."""
    args = parser().parse_args(argv)
    try:
        status: int = args.func(args)
        sys.stdout.flush()
    except BrokenPipeError:
        _quiet_stdout()
        return CLOSED_PIPE_STATUS
    return status


def _quiet_stdout() -> None:
    """Point stdout at the null device, so that the flush at exit finds no closed pipe to complain of."""
    import os

    with open(os.devnull, "wb") as null:
        try:
            os.dup2(null.fileno(), sys.stdout.fileno())
        except (OSError, ValueError):  # stdout replaced by an object without a descriptor
            pass


if __name__ == "__main__":
    sys.exit(main())
