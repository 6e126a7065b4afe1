"""The ``numbaopt`` command: ``numbaopt parity`` replays the Keras fixtures,
``numbaopt inspect PATH`` shows a checkpoint."""
import argparse
import importlib
import sys

#: Modules that each register one subcommand with ``add_parser(subparsers)``.
COMMAND_MODULES = ("numbaopt.parity", "numbaopt.inspect")


def main(argv=None):
    """Run ``numbaopt COMMAND ...``; returns the exit status."""
    parser = argparse.ArgumentParser(
        prog="numbaopt", description="Keras 2.0 optimizers as Numba kernels: parity check and checkpoint tools."
    )
    subparsers = parser.add_subparsers(dest="command", required=True)
    for module in COMMAND_MODULES:
        importlib.import_module(module).add_parser(subparsers)
    args = parser.parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
