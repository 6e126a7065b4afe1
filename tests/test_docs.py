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


# ----------------------------------------------------------------------------- numbaopt.keras3
#: Keras 3.15's optimizers, each with a page docs/keras3/<name>.md; the family registers them
#: as their modules land (a page may come before its class, never after).
KERAS3_NAMES = ("SGD", "RMSprop", "Adagrad", "Adadelta", "Adam", "AdamW", "Adamax", "Nadam", "Ftrl", "Lion", "Lamb",
                "Adafactor", "Muon", "ScheduleFreeAdamW")


def keras3_classes():
    import numbaopt.keras3  # noqa: F401  (importing the family registers its classes)
    from numbaopt import registry

    return registry.registered("keras3")


def keras3_signature(cls):
    """The call line a Keras 3 page shows: every argument in Keras's positional order."""
    return f"numbaopt.keras3.{cls.__name__}({', '.join(f'{h.name}={h.default!r}' for h in cls.hyperparameters)})"


@pytest.mark.parametrize("cls", keras3_classes(), ids=lambda cls: cls.__name__)
def test_every_keras3_optimizer_has_a_page_with_its_signature_and_defaults(cls):
    page = DOCS / "keras3" / f"{cls.__name__.lower()}.md"
    assert page.exists(), f"no documentation page for keras3.{cls.__name__}: write {page.relative_to(DOCS.parent)}"
    text = page.read_text()
    assert keras3_signature(cls) in text, f"{page.name}: the signature is not {keras3_signature(cls)}"
    rows = re.findall(r"^\| `(\w+)` \| `([^`]*)` \|", text, re.M)
    assert rows == [(h.name, repr(h.default)) for h in cls.hyperparameters], f"{page.name}: the argument table"


def test_every_keras3_page_is_a_keras3_optimizer():
    pages = {p.stem for p in (DOCS / "keras3").glob("*.md")}
    assert pages == {name.lower() for name in KERAS3_NAMES}
    assert {cls.__name__ for cls in keras3_classes()} <= set(KERAS3_NAMES)


def test_the_keras3_pages_are_in_the_site_navigation():
    nav = (DOCS.parent / "mkdocs.yml").read_text()
    for page in ["keras3.md", "choosing-keras2-or-keras3.md"] + [f"keras3/{n.lower()}.md" for n in KERAS3_NAMES]:
        assert f": {page}\n" in nav, page
