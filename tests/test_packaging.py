"""The package that runs is the one users install: every module and data file of the tree.

Under tox (``NUMBAOPT_TEST_INSTALLED=1``) the tests import the installed wheel from outside
the checkout; this checks that they do, and that the wheel holds every file of the
source tree that the package needs, so a file left out of it fails here.
"""
import os
from pathlib import Path

import numbaopt

TREE = Path(__file__).resolve().parent.parent
SOURCE = TREE / "numbaopt"
INSTALLED = Path(numbaopt.__file__).resolve().parent


def test_under_tox_the_installed_package_is_tested():
    if os.environ.get("NUMBAOPT_TEST_INSTALLED"):
        assert INSTALLED != SOURCE.resolve(), f"tests import {INSTALLED}, the checkout, not the installed wheel"


def test_the_installed_package_holds_every_module_of_the_tree():
    def modules(root):
        return {p.relative_to(root).as_posix() for p in root.rglob("*.py") if "__pycache__" not in p.parts}

    assert modules(SOURCE) <= modules(INSTALLED)


def test_the_installed_package_holds_the_fixtures():
    shipped = {p.name for p in (TREE / "fixtures").glob("*.h5")}
    installed = INSTALLED / "fixtures" if (INSTALLED / "fixtures").is_dir() else TREE / "fixtures"
    assert shipped and shipped <= {p.name for p in installed.glob("*.h5")}
    keras3 = {p.name for p in (TREE / "fixtures" / "keras3").glob("*.h5")}
    assert keras3 and keras3 <= {p.name for p in installed.glob("keras3/*.h5")}
    assert not (INSTALLED / "fixtures" / "capture.py").exists()  # the capture script is not a module
