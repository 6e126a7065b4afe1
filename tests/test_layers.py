"""The import layers of numbaopt: each module imports only from the layers below its own.

Read from the source (every ``import``, also inside functions, and ``importlib``
calls with a literal name), so an import cycle or an upward import fails here even when
it is hidden in a function body. The root package ``numbaopt`` is a lazy facade that
imports nothing when it loads, so importing it (for ``__version__``) is no dependency.
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "numbaopt"

#: Bottom to top. A module may import modules of its own layer that come before it in
#: the list, and any module of a lower layer.
LAYERS = (
    ("numbaopt.tuning", "numbaopt.extras", "numbaopt.clipping", "numbaopt.schedules", "numbaopt.registry",
     "numbaopt.keras_config", "numbaopt.keras_weights", "numbaopt.step_checks"),
    ("numbaopt.kernels", "numbaopt.kernels.cpu", "numbaopt.kernels.cuda", "numbaopt.kernels.object_layout"),
    ("numbaopt.devices", "numbaopt.slots"),
    ("numbaopt.optimizers.base",),
    ("numbaopt.optimizers.adadelta", "numbaopt.optimizers.adagrad", "numbaopt.optimizers.adam",
     "numbaopt.optimizers.adamax", "numbaopt.optimizers.nadam", "numbaopt.optimizers.rmsprop",
     "numbaopt.optimizers.sgd", "numbaopt.optimizers.tf_optimizer", "numbaopt.optimizers"),
    ("numbaopt.checkpoint", "numbaopt.keras_files", "numbaopt.sharded_checkpoint", "numbaopt.checkpoint_report",
     "numbaopt.parity.fixtures", "numbaopt.parity.replays", "numbaopt.parity.report", "numbaopt.parity"),
    ("numbaopt.distributed", "numbaopt.loading"),
    ("numbaopt.torch.optimizer", "numbaopt.torch"),
    ("numbaopt.cli", "numbaopt.__main__", "numbaopt.parity.__main__"),
)

RANK = {module: (layer, position) for layer, modules in enumerate(LAYERS) for position, module in enumerate(modules)}


def module_name(path):
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name):
    """The numbaopt module ``name`` refers to: itself, or the package that defines it."""
    while name not in MODULES and "." in name:
        name = name.rsplit(".", 1)[0]
    return name


def imports(module):
    """The numbaopt modules ``module`` imports anywhere in its source."""
    tree = ast.parse(MODULES[module].read_text())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if not node.level else ".".join(module.split(".")[: -node.level] + [node.module])
            names = [f"{base}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"
              and node.args and isinstance(node.args[0], ast.Constant)):
            names = [node.args[0].value]
        else:
            continue
        found |= {_resolve(n) for n in names if n.split(".")[0] == "numbaopt"}
    return found - {"numbaopt", module}


def test_every_module_has_a_layer():
    assert set(MODULES) - {"numbaopt"} == set(RANK), "place new modules in LAYERS"


@pytest.mark.parametrize("module", sorted(RANK))
def test_imports_point_down(module):
    upward = sorted(target for target in imports(module) if RANK[target] >= RANK[module])
    assert not upward, f"{module} imports {upward}, which are not below it"


def test_kernels_never_import_an_optimizer():
    """The rules come down to the kernels as arguments: adding an optimizer touches no kernel code."""
    for module in ("numbaopt.kernels", "numbaopt.kernels.cpu", "numbaopt.kernels.cuda", "numbaopt.kernels.object_layout"):
        assert not {m for m in imports(module) if m.startswith("numbaopt.optimizers")}
