"""The pip command that adds an extra (a runtime, a toolchain) to *this* edgeseg.

edgeseg is installed from a clone (``pip install -e ".[host]"``) or a folder copied to a board as
often as from an index, and ``pip install "edgeseg[ncnn]"`` only works in the last case; from a
clone it fails with "no matching distribution", or installs whatever else carries the name. So
every install hint names the source this edgeseg came from.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from urllib.parse import unquote, urlparse


def source_of(tree: Path, direct_url: str | None) -> tuple[str, bool] | None:
    """(folder, editable) for an edgeseg whose package folder sits in ``tree`` and whose install
    record (``direct_url.json``, PEP 610) is ``direct_url``; None for an index install."""
    if (tree / "pyproject.toml").is_file() and (tree / "edgeseg" / "__init__.py").is_file():
        return str(tree), True  # running from a checkout (editable install or PYTHONPATH)
    info = json.loads(direct_url) if direct_url else {}
    url = urlparse(info.get("url", ""))
    if url.scheme != "file" or "dir_info" not in info:
        return None  # an index, or an archive URL: the name is what pip knows
    return unquote(url.path), bool(info["dir_info"].get("editable"))


@lru_cache(maxsize=1)
def installed_from() -> tuple[str, bool] | None:
    try:
        import importlib.metadata as md

        direct_url = md.distribution("edgeseg").read_text("direct_url.json")
    except Exception:  # noqa: BLE001 - no install record (PYTHONPATH): the tree alone decides
        direct_url = None
    return source_of(Path(__file__).resolve().parents[1], direct_url)


def pip_extra(extra: str) -> str:
    """``pip install ...`` that adds ``extra`` (e.g. ``ncnn``, ``host``) to this edgeseg."""
    src = installed_from()
    if src is None:
        return f'pip install "edgeseg[{extra}]"'
    folder, editable = src
    return f'pip install {"-e " if editable else ""}"{folder}[{extra}]"'
