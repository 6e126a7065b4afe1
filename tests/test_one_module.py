"""An optimizer's knowledge lives in its own module, and the rest of numbaopt reads it.

Outside the families' packages (``numbaopt/optimizers/``, ``numbaopt/keras3/``) no code names an optimizer: Keras files, later Keras
configs and the torch adapter read what each class declares (``numbaopt.declarations``)
and list the classes from the registry. So the toy AMSGrad of ``tests/test_extending.py``,
declared inside a test, is a torch optimizer and a Keras class with no other edit.
"""
import ast
import io
import pickle
import re
import tokenize
from pathlib import Path

import numpy as np
import pytest

from numbaopt import checkpoint, keras3, keras_legacy_files, optimizers, registry  # noqa: F401 - keras3 registers its family
from numbaopt.declarations import KerasClass, KerasDescription
from tests.test_extending import amsgrad  # noqa: F401 - the fixture: the toy, registered for one test

PACKAGE = Path(__file__).resolve().parent.parent / "numbaopt"


def _docstring_lines(source):
    """The first lines of the module's, classes' and functions' docstrings."""
    lines = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                lines.add(first.lineno)
    return lines


def optimizer_names_in(source, names):
    """Where code (a name, or a string that is not a docstring) names one of ``names``:
    comments and docstrings may give an optimizer as an example."""
    pattern = re.compile(r"\b(" + "|".join(map(re.escape, sorted(names))) + r")\b")
    docstrings = _docstring_lines(source)
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.NAME and token.string in names:
            found.append((token.start[0], token.string))
        elif token.type == tokenize.STRING and token.start[0] not in docstrings and pattern.search(token.string):
            found.append((token.start[0], token.string))
    return found


#: The packages of the optimizer families: their modules are the optimizers.
FAMILY_PACKAGES = {family: ("optimizers" if family == "keras2" else family) for family in registry.FAMILIES}


def test_no_module_outside_the_optimizers_names_an_optimizer():
    classes = [cls for family in registry.FAMILIES for cls in registry.rule_based(family)]
    names = {cls.__name__ for cls in classes} | {cls.__module__.rsplit(".", 1)[1] for cls in classes}
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.relative_to(PACKAGE).parts[0] not in FAMILY_PACKAGES.values():
            found.update({f"{path.relative_to(PACKAGE)}:{line}": text for line, text in
                          optimizer_names_in(path.read_text(), names)})
    assert not found, f"declare it in the optimizer's module (numbaopt.declarations) instead: {found}"


def test_the_name_check_sees_a_name():
    source = '"""Adam, in a docstring."""\nfrom numbaopt.optimizers import adam  # Adam\nSLOTS = {"Adam": "m"}\n'
    assert optimizer_names_in(source, {"Adam", "adam"}) == [(2, "adam"), (3, '"Adam"')]


def test_a_new_optimizer_is_a_keras_class_by_its_declaration(amsgrad, monkeypatch):  # noqa: F811
    description = KerasDescription(imported={"legacy": KerasClass({"ms": "m", "vs": "v", "v_maxes": "vhat"})},
                                    refused={"legacy": "its toy reason"})
    monkeypatch.setattr(amsgrad, "keras", description, raising=False)
    assert keras_legacy_files.supported("AMSGrad").slots == {"ms": "m", "vs": "v", "v_maxes": "vhat"}
    with pytest.raises(ValueError, match="imports only .*AMSGrad"):
        keras_legacy_files.supported("Other")
    monkeypatch.setattr(amsgrad, "keras", description._replace(imported={}), raising=False)
    with pytest.raises(ValueError, match="AMSGrad: its toy reason"):
        keras_legacy_files.supported("AMSGrad")


@pytest.mark.torch
def test_a_new_optimizer_is_a_torch_optimizer_with_no_edit(amsgrad, tmp_path):  # noqa: F811
    torch = pytest.importorskip("torch")
    import numbaopt.torch as nt
    from numbaopt.torch import AMSGrad

    assert AMSGrad is nt.AMSGrad and AMSGrad.core is amsgrad
    assert issubclass(AMSGrad, nt.TorchOptimizer) and (AMSGrad.__module__, AMSGrad.__qualname__) == ("numbaopt.torch", "AMSGrad")
    assert "AMSGrad" in nt.__all__ and "AMSGrad" in dir(nt)

    rng = np.random.default_rng(0)
    values = [rng.normal(size=shape) for shape in [(3, 4), (4,)]]
    grads = [[rng.normal(size=v.shape) for v in values] for _ in range(3)]
    tensors = [torch.tensor(v, requires_grad=True) for v in values]
    arrays = [v.copy() for v in values]
    opt, core = AMSGrad(tensors, lr=0.02, clipnorm=1.0), amsgrad(lr=0.02, clipnorm=1.0)
    for step in grads:
        for t, g in zip(tensors, step):
            t.grad = torch.tensor(g)
        opt.step()
        core.apply_gradients(zip(step, arrays))
    for t, a in zip(tensors, arrays):
        assert t.detach().numpy().tobytes() == a.tobytes()

    assert pickle.loads(pickle.dumps(AMSGrad)) is AMSGrad  # found by name (the toy core itself is local)

    checkpoint.save_optimizer(core, tmp_path / "amsgrad.h5")
    loaded = nt.load_optimizer(tmp_path / "amsgrad.h5", [torch.tensor(v) for v in values])
    assert type(loaded) is AMSGrad and loaded.iterations == 3
