"""The documentation agrees with the registry: a page per optimizer, its signature and defaults."""
import re
from pathlib import Path

import pytest

from numbaopt import optimizers
from tests.cases import NAMES

DOCS = Path(__file__).resolve().parent.parent / "docs"


def documented_signature(cls):
    """The call line a page shows: the declared arguments, then clipnorm and clipvalue."""
    arguments = [f"{h.name}={h.default!r}" for h in cls.hyperparameters] + ["clipnorm=None", "clipvalue=None"]
    return f"numbaopt.optimizers.{cls.__name__}({', '.join(arguments)})"


@pytest.mark.parametrize("name", NAMES)
def test_every_optimizer_has_a_page_with_its_signature_and_defaults(name):
    cls = getattr(optimizers, name)
    page = DOCS / "optimizers" / f"{name.lower()}.md"
    assert page.exists(), f"no documentation page for {name}: write {page.relative_to(DOCS.parent)}"
    text = page.read_text()
    assert documented_signature(cls) in text
    for h in cls.hyperparameters:
        assert re.search(rf"^\| `{h.name}` \| `{re.escape(repr(h.default))}` \|", text, re.M), (name, h.name)


def test_every_page_is_an_optimizer():
    pages = {p.stem for p in (DOCS / "optimizers").glob("*.md")}
    assert pages == {name.lower() for name in NAMES}


@pytest.mark.parametrize("name", NAMES)
def test_signature_shows_every_argument(name):
    import inspect

    cls = getattr(optimizers, name)
    parameters = inspect.signature(cls).parameters
    assert [h.name for h in cls.hyperparameters] == list(parameters)[: len(cls.hyperparameters)]
    assert {"clipnorm", "clipvalue", "device"} <= set(parameters)
