"""The import layers of numbaopt: each module imports only from the layers below its own,
and only the public names of other modules.

Read from the source (every ``import``, also inside functions, and ``importlib``
calls with a literal name), so an import cycle or an upward import fails here even when
it is hidden in a function body. The root package ``numbaopt`` is a lazy facade over the
layers; only the command line, at the top, may import it (for ``__version__``).
"""
import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "numbaopt"

#: Bottom to top. A module may import modules of its own layer that come before it in
#: the list, and any module of a lower layer.
LAYERS = (
    ("numbaopt.version", "numbaopt.tuning", "numbaopt.extras", "numbaopt.clipping", "numbaopt.schedules",
     "numbaopt.hyperparameters", "numbaopt.registry", "numbaopt.halves", "numbaopt.quantization", "numbaopt.state", "numbaopt.phases", "numbaopt.declarations",
     "numbaopt.keras_config", "numbaopt.keras_weights", "numbaopt.step_checks"),
    ("numbaopt.kernels", "numbaopt.kernels.handoff", "numbaopt.kernels.cpu", "numbaopt.kernels.cuda", "numbaopt.kernels.object_layout",
     "numbaopt.threads"),
    ("numbaopt.devices", "numbaopt.slots"),
    ("numbaopt.optimizers.step", "numbaopt.optimizers.base"),
    ("numbaopt.optimizers.adadelta", "numbaopt.optimizers.adagrad", "numbaopt.optimizers.adam",
     "numbaopt.optimizers.adamax", "numbaopt.optimizers.nadam", "numbaopt.optimizers.rmsprop",
     "numbaopt.optimizers.sgd", "numbaopt.optimizers.tf_optimizer", "numbaopt.optimizers"),
    ("numbaopt.keras3.schedules", "numbaopt.keras3.naming", "numbaopt.keras3.gradients", "numbaopt.keras3.base",
     "numbaopt.keras3.sgd", "numbaopt.keras3.rmsprop", "numbaopt.keras3.adagrad", "numbaopt.keras3.adadelta",
     "numbaopt.keras3.adam", "numbaopt.keras3.adamw", "numbaopt.keras3.adamax", "numbaopt.keras3.nadam",
     "numbaopt.keras3.ftrl", "numbaopt.keras3.lion", "numbaopt.keras3.schedule_free_adamw", "numbaopt.keras3.lamb",
     "numbaopt.keras3.adafactor", "numbaopt.keras3.muon", "numbaopt.keras3"),
    ("numbaopt.torch_optim.base", "numbaopt.torch_optim.elements", "numbaopt.torch_optim.sgd", "numbaopt.torch_optim.adam", "numbaopt.torch_optim.adamw",
     "numbaopt.torch_optim.adamax", "numbaopt.torch_optim.nadam", "numbaopt.torch_optim.radam", "numbaopt.torch_optim.rmsprop",
     "numbaopt.torch_optim.rprop", "numbaopt.torch_optim.adagrad", "numbaopt.torch_optim.adadelta", "numbaopt.torch_optim.asgd",
     "numbaopt.torch_optim.adafactor", "numbaopt.torch_optim"),
    ("numbaopt.checkpoint", "numbaopt.keras_reading", "numbaopt.keras_isolation", "numbaopt.keras3_files", "numbaopt.keras3_export",
     "numbaopt.keras_legacy_files", "numbaopt.keras_files", "numbaopt.sharded_checkpoint", "numbaopt.checkpoint_report", "numbaopt.layouts",
     "numbaopt.parity.fixtures", "numbaopt.parity.replays", "numbaopt.parity.report", "numbaopt.parity"),
    ("numbaopt.distributed", "numbaopt.loading"),
    ("numbaopt.torch.arguments", "numbaopt.torch.betas", "numbaopt.torch.working", "numbaopt.torch.stored", "numbaopt.torch.states", "numbaopt.torch.optimizer", "numbaopt.torch", "numbaopt.torch.keras3", "numbaopt.torch.optim"),
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
    for module in ("numbaopt.kernels", "numbaopt.kernels.handoff", "numbaopt.kernels.cpu", "numbaopt.kernels.cuda",
                   "numbaopt.kernels.object_layout"):
        assert not {m for m in imports(module) if m.startswith("numbaopt.optimizers")}


# ------------------------------------------------------------- no back doors

#: The top layer, which alone may import the root package (the facade over every layer).
TOP = set(LAYERS[-1])

#: Private names another module still reads, as (module, name). Keep this empty.
PRIVATE_EXEMPT: set[tuple[str, str]] = set()

#: Private attributes of other libraries' objects that share a name with one of numbaopt's
#: (the check below goes by name, not by type).
NOT_OURS = {
    ("numbaopt.optimizers.tf_optimizer", "_create_slots"),  # a TensorFlow optimizer's own hook
}


def _private(name):
    return name.startswith("_") and not (name.startswith("__") and name.endswith("__"))


def _trees():
    return {module: ast.parse(path.read_text()) for module, path in MODULES.items()}


TREES = _trees()


def defined_private_names(tree):
    """The private names a module defines: functions, classes, assigned names and attributes."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {name for name in names if _private(name)}


DEFINED = {module: defined_private_names(tree) for module, tree in TREES.items()}


def _module_aliases(module, tree):
    """Names bound in ``module`` to numbaopt modules: ``import numbaopt.x as y``, ``from numbaopt import x``."""
    aliases = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] == "numbaopt":
                    aliases[alias.asname or alias.name.split(".")[0]] = alias.name if alias.asname else "numbaopt"
        elif isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if not node.level else ".".join(module.split(".")[: -node.level] + [node.module])
            for alias in node.names:
                if f"{base}.{alias.name}" in MODULES:
                    aliases[alias.asname or alias.name] = f"{base}.{alias.name}"
    return aliases


def private_uses(module):
    """Where ``module`` reaches for another module's private names, as (line, name, how)."""
    tree = TREES[module]
    aliases = _module_aliases(module, tree)
    others = set().union(*(names for other, names in DEFINED.items() if other != module))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module:
            base = node.module if not node.level else ".".join(module.split(".")[: -node.level] + [node.module])
            if base.split(".")[0] == "numbaopt" and _resolve(base) != module:
                found += [(node.lineno, a.name, f"from {base} import {a.name}") for a in node.names if _private(a.name)]
        elif isinstance(node, ast.Attribute) and _private(node.attr):
            value = node.value
            if isinstance(value, ast.Name) and value.id in aliases and aliases[value.id] != module:
                found.append((node.lineno, node.attr, f"{ast.unparse(node)} (a private name of {aliases[value.id]})"))
            elif isinstance(value, ast.Attribute) and ast.unparse(value).split(".")[0] in aliases:
                found.append((node.lineno, node.attr, f"{ast.unparse(node)} (a private name of a numbaopt module)"))
            elif not (isinstance(value, ast.Name) and value.id in ("self", "cls")) and not (
                isinstance(value, ast.Call) and getattr(value.func, "id", None) in ("super", "type")
                and (not value.args or getattr(value.args[0], "id", None) in ("self", "cls"))
            ):
                # another object's private attribute: another module's, unless this one defines the name
                if node.attr in others and node.attr not in DEFINED[module]:
                    found.append((node.lineno, node.attr, f"{ast.unparse(node)} (defined in another module)"))
    return [(line, name, how) for line, name, how in found if (module, name) not in PRIVATE_EXEMPT | NOT_OURS]


@pytest.mark.parametrize("module", sorted(RANK))
def test_no_module_uses_another_modules_private_names(module):
    """A module reaches another only through its public names (``from numbaopt.x import _y``,
    ``x._y`` and ``obj._y`` where ``_y`` is another module's fail); a helper that two modules
    need is public in the lower one."""
    uses = private_uses(module)
    assert not uses, f"{module} uses private names of other modules: " + "; ".join(
        f"line {line}: {how}" for line, _, how in sorted(uses))


@pytest.mark.parametrize("module", sorted(set(RANK) - TOP))
def test_no_lower_layer_imports_the_root_package(module):
    """The root package is a facade over every layer (``numbaopt.save_optimizer``, ...): a
    module below the top that imports it, or a name from it, reaches above its own layer."""
    roots = []
    for node in ast.walk(TREES[module]):
        if isinstance(node, ast.Import):
            roots += [f"line {node.lineno}: import numbaopt" for alias in node.names if alias.name == "numbaopt"]
        elif isinstance(node, ast.ImportFrom) and node.module == "numbaopt" and not node.level:
            roots += [f"line {node.lineno}: from numbaopt import {alias.name}" for alias in node.names
                      if f"numbaopt.{alias.name}" not in MODULES]
    assert not roots, f"{module} imports the root package: {roots}"


def test_the_back_door_checks_see_a_back_door():
    """The checks above find what they look for (on made-up source)."""
    source = (
        "import numbaopt\n"
        "from numbaopt import checkpoint\n"
        "from numbaopt.checkpoint import _reading\n"
        "checkpoint._fsync_directory('.')\n"
        "def f(opt):\n    return opt._apply_gradients\n"
    )
    TREES["numbaopt.checkpoint_report"], saved = ast.parse(source), TREES["numbaopt.checkpoint_report"]
    try:
        names = {name for _, name, _ in private_uses("numbaopt.checkpoint_report")}
        with pytest.raises(AssertionError, match="import numbaopt"):
            test_no_lower_layer_imports_the_root_package("numbaopt.checkpoint_report")
    finally:
        TREES["numbaopt.checkpoint_report"] = saved
    assert names == {"_reading", "_fsync_directory", "_apply_gradients"}
