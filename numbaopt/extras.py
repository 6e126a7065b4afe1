"""How to install an optional extra (``keras``, ``cuda``, ...), said the way that works for
how this numbaopt was installed: from an index, from a folder, or as a source tree
(editable, or on ``sys.path``). The errors about a missing extra use it."""
from __future__ import annotations

import json
import re
from importlib import metadata
from pathlib import Path
from urllib.parse import unquote, urlparse

#: The folder above the package: a source tree when it holds pyproject.toml.
_TREE = Path(__file__).resolve().parent.parent


def install_command(extra: str) -> str:
    """The ``pip install`` command that adds ``extra`` to this numbaopt."""
    if (_TREE / "pyproject.toml").exists():
        return f'pip install -e "{_TREE}[{extra}]"'
    folder = _installed_from()
    if folder is not None:
        return f'pip install "{folder}[{extra}]"'
    # Installed from a wheel: numbaopt is on no package index, so "numbaopt[extra]" cannot
    # work. The extra's own packages can, as can the extra from a checkout.
    packages = " ".join(f'"{r}"' for r in _extra_requirements(extra))
    checkout = f'from a numbaopt checkout: pip install ".[{extra}]"'
    return f"pip install {packages} (or, {checkout})" if packages else checkout


def _extra_requirements(extra: str) -> list[str]:
    """The requirements of ``extra`` as the installed numbaopt's metadata lists them."""
    try:
        requires = metadata.requires("numbaopt") or []
    except metadata.PackageNotFoundError:
        return []
    marker = re.compile(rf"""extra\s*==\s*["']{re.escape(extra)}["']""")
    return [r.split(";", 1)[0].strip() for r in requires if ";" in r and marker.search(r.split(";", 1)[1])]


def _installed_from() -> Path | None:
    """The local folder numbaopt was installed from (pip records it), or None (an index)."""
    try:
        text = metadata.distribution("numbaopt").read_text("direct_url.json")
        record = json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError):
        return None
    url = urlparse(record.get("url", ""))
    return Path(unquote(url.path)) if url.scheme == "file" and "dir_info" in record else None
