"""numbaopt is a typed package (PEP 561): it ships ``py.typed``, and its public API is annotated.

``mypy`` (strict, configured in pyproject.toml; ``tox -e types``) checks the types
themselves; this only checks, quickly and without mypy, that the marker is installed with
the package and that no public function or method has lost an annotation. Annotations are
read with ``inspect.signature`` rather than resolved: some name types imported for the
type checker only.
"""
import inspect
from pathlib import Path

import pytest

import numbaopt
from numbaopt import checkpoint, checkpoint_report, cli, optimizers, parity
from numbaopt.optimizers import Optimizer, OptimizerState
from numbaopt.optimizers.tf_optimizer import TFOptimizer

#: The methods and properties of the optimizer API, on ``Optimizer`` and ``TFOptimizer``.
METHODS = (
    "apply_gradients", "get_config", "from_config", "get_weights", "set_weights", "state",
    "set_parameter_names", "set_state_origin", "checkpoint_config", "from_checkpoint_config",
    "checkpoint_arrays", "load_checkpoint_arrays", "__init__",
)
PROPERTIES = ("iterations", "parameter_names")

FUNCTIONS = [
    optimizers.serialize, optimizers.deserialize, optimizers.get, optimizers.registered, optimizers.rule_based,
    checkpoint.save_optimizer, checkpoint.load_optimizer, checkpoint.read_checkpoint,
    checkpoint_report.main, checkpoint_report.report,
    cli.main, cli.parser,
    *(getattr(parity, name) for name in parity.__all__ if inspect.isfunction(getattr(parity, name))),
]


def _callables():
    """``(label, function)`` for every public function and method checked here."""
    found = [(f"{f.__module__}.{f.__qualname__}", f) for f in FUNCTIONS]
    for cls in (Optimizer, TFOptimizer):
        found += [(f"{cls.__name__}.{name}", getattr(cls, name)) for name in METHODS]
        found += [(f"{cls.__name__}.{name}", getattr(cls, name).fget) for name in PROPERTIES]
    for cls in optimizers.rule_based():
        found.append((f"{cls.__name__}.step_scalars", cls.step_scalars))
        found.append((f"{cls.__name__}.rule", cls.rule))
    return found


def test_the_package_ships_py_typed():
    # The installed package's folder: under tox, the wheel's, so the marker must be in the wheel.
    assert (Path(numbaopt.__file__).resolve().parent / "py.typed").is_file()


def test_the_api_list_is_complete():
    assert {"build_optimizer", "replay", "run_all", "run_parity", "load_fixtures"} <= {
        f.__name__ for f in FUNCTIONS
    }
    assert len(optimizers.rule_based()) >= 7


@pytest.mark.parametrize("label, function", _callables(), ids=[label for label, _ in _callables()])
def test_every_parameter_and_return_is_annotated(label, function):
    signature = inspect.signature(function)
    missing = [
        name for name, parameter in signature.parameters.items()
        if name not in ("self", "cls") and parameter.annotation is inspect.Parameter.empty
    ]
    assert not missing, f"{label}: no annotation for {missing}"
    assert signature.return_annotation is not inspect.Signature.empty, f"{label}: no return annotation"


def test_the_declarations_and_the_state_are_annotated():
    declared = set(Optimizer.__annotations__)
    assert {"hyperparameters", "slot_names", "scalar_state", "keras2_iterations", "rule"} <= declared
    assert set(OptimizerState._fields) <= set(OptimizerState.__annotations__)
    assert set(checkpoint.Checkpoint._fields) <= set(checkpoint.Checkpoint.__annotations__)


def test_the_constructor_signature_is_still_the_declared_one():
    """Annotating ``Optimizer`` keeps the per-class ``__signature__`` (``help``, IDEs, the docs)."""
    for cls in optimizers.rule_based():
        parameters = list(inspect.signature(cls).parameters)
        assert parameters[: len(cls.hyperparameters)] == [h.name for h in cls.hyperparameters]
