"""numbaopt's version (``numbaopt.__version__``): what checkpoints record and ``numbaopt --version`` prints.

A module of its own at the bottom of the layers, so that the modules that write files can
read it without importing the root package (a facade above them all).
"""

VERSION = "0.1.0"
