"""Where targets come from: edgeseg's own tree, and the folders on ``EDGESEG_PLUGIN_PATH``.

A target is one profile, one toolchain and one backend, each found by looking, not by a list kept
by hand. A plugin folder has the same layout as edgeseg's tree::

    my_plugin/
      targets/mytarget.toml       profile: toolchain = "mytool", runtime = "myrt"
      toolchains/mytool/__init__.py   (or mytool.py) defining TOOLCHAIN (a convert.toolchains.Toolchain)
      backends/myrt.py            defining REQUIRES, OPTIONS and BACKEND (a runtime.backends.Backend)

``EDGESEG_PLUGIN_PATH=/path/to/my_plugin[:/another]``: its toolchains and backends join the
packages ``edgeseg.convert.toolchains`` and ``edgeseg.runtime.backends`` (their ``__path__`` is
extended), so they import edgeseg's base classes with ``from edgeseg.convert.toolchains import ...``
or relatively (``from .. import Toolchain``), and every command sees the target. The code in a
plugin folder runs in every edgeseg process started with that variable: only list folders you trust.
"""

from __future__ import annotations

import os
import pkgutil
from collections.abc import MutableSequence
from pathlib import Path

ENV = "EDGESEG_PLUGIN_PATH"


def plugin_dirs() -> list[Path]:
    return [Path(p).expanduser().resolve() for p in os.environ.get(ENV, "").split(os.pathsep) if p.strip()]


def extend_path(package_path: MutableSequence[str], sub: str) -> None:
    """Add each plugin folder's ``sub`` folder to a package's ``__path__`` (once)."""
    for d in plugin_dirs():
        p = str(d / sub)
        if (d / sub).is_dir() and p not in package_path:
            package_path.append(p)


def module_names(package_path: MutableSequence[str], sub: str) -> list[str]:
    """The public modules and subpackages of a package, plugin folders included, sorted."""
    extend_path(package_path, sub)
    return sorted({m.name for m in pkgutil.iter_modules(list(package_path)) if not m.name.startswith("_")})
