"""``python -m numbaopt``: the ``numbaopt`` command."""
import sys

from numbaopt.cli import main

if __name__ == "__main__":
    sys.exit(main())
