"""How to install an optional extra (``keras``, ``cuda``, ...), said the way that works for
how this numbaopt was installed: from an index, from a folder, or as a source tree
(editable, or on ``sys.path``). The errors about a missing extra use it."""
from __future__ import annotations

import json
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
    return f'pip install "numbaopt[{extra}]"'


def _installed_from() -> Path | None:
    """The local folder numbaopt was installed from (pip records it), or None (an index)."""
    try:
        text = metadata.distribution("numbaopt").read_text("direct_url.json")
        record = json.loads(text) if text else {}
    except (metadata.PackageNotFoundError, ValueError):
        return None
    url = urlparse(record.get("url", ""))
    return Path(unquote(url.path)) if url.scheme == "file" and "dir_info" in record else None
