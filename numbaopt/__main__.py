import sys

from numbaopt.cli import main

sys.exit(main())
