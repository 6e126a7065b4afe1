"""``python -m numbaopt.parity [PATH] [--device cpu|cuda] [--json]``: ``numbaopt parity``."""
import sys

from numbaopt.cli import main

if __name__ == "__main__":
    sys.exit(main(["parity", *sys.argv[1:]]))
