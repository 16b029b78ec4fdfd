"""Ultralytics driven offline and quiet, for importing a ``.pt`` checkpoint.

Left to itself, ``YOLO(...).export()`` pip-installs what it misses into the user's environment
(its AutoUpdate), writes ``~/.config/Ultralytics/settings.json`` with ``"sync": true`` (usage
events sent to Google Analytics when online), prints ANSI colour codes into logs, and ends with
"Predict: yolo predict model=/tmp/..." pointing at a file edgeseg deletes. Inside
:func:`quiet_ultralytics` it is offline (no events, no downloads), installs nothing (a missing
requirement is reported as missing), keeps its settings in the conversion's work folder, and
reports only errors, without colour.
"""

from __future__ import annotations

import logging
import os
import re
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from importlib import metadata
from pathlib import Path
from typing import Any

# where a CPU machine gets torch without pulling the multi-GB CUDA build from PyPI
TORCH_CPU_INDEX = "https://download.pytorch.org/whl/cpu"
TORCH_INSTALL = f"pip install torch torchvision --index-url {TORCH_CPU_INDEX}"
ULTRALYTICS_INSTALL = f"{TORCH_INSTALL}, then pip install ultralytics"

# read by Ultralytics when it is imported
ENV = {"YOLO_OFFLINE": "1", "YOLO_AUTOINSTALL": "False", "YOLO_VERBOSE": "False"}

_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _plain(*parts: Any) -> str:
    """Ultralytics' ``colorstr`` without the colour: the text alone."""
    return str(parts[-1]) if parts else ""


def _installed(requirement: str) -> bool:
    name = re.split(r"[<>=!~\[; ]", requirement.strip(), maxsplit=1)[0]
    try:
        metadata.version(name)
        return True
    except metadata.PackageNotFoundError:
        return False


def _check_requirements(requirements: Any = (), exclude: Any = (), install: bool = True, cmds: str = "",
                        constrain: Any = ()) -> bool:
    """Ultralytics' ``check_requirements`` that installs nothing: True when all are present. An
    optional extra (onnxslim) then stays unused, as Ultralytics does when its AutoUpdate fails."""
    reqs = [requirements] if isinstance(requirements, (str, Path)) else list(requirements)
    if any(isinstance(r, Path) for r in reqs):  # a requirements.txt: Ultralytics' own, installed with it
        return True
    return all(_installed(str(r)) for r in reqs if str(r).strip() and str(r) not in exclude)


def _patch(modules: dict[str, Any], name: str, new: Any, saved: list) -> None:
    """Replace ``name`` in every loaded Ultralytics module that imported it (``from x import name``)."""
    for mod_name, mod in list(modules.items()):
        if mod_name.partition(".")[0] == "ultralytics" and mod is not None and hasattr(mod, name):
            old = getattr(mod, name)
            if callable(old) and old is not new:
                saved.append((mod, name, old))
                setattr(mod, name, new)


@contextmanager
def quiet_ultralytics(workdir: Path) -> Iterator[Any]:
    """Yield Ultralytics' ``YOLO`` class, imported and running offline, silent and installing
    nothing; ``workdir`` (deleted after the conversion) holds the settings it writes.
    Raises ImportError when Ultralytics is not installed."""
    cfg = Path(workdir) / "ultralytics-settings"
    cfg.mkdir(parents=True, exist_ok=True)
    env = dict(ENV, YOLO_CONFIG_DIR=str(cfg), MPLCONFIGDIR=str(cfg / "matplotlib"))
    before = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    saved: list = []
    logger = None
    level = None
    try:
        import ultralytics.utils as uu
        from ultralytics import YOLO
        from ultralytics.utils import checks

        # in a process that imported Ultralytics before, the environment came too late: the
        # module-level switches are set as well
        for mod, attr, value in ((uu, "ONLINE", False), (checks, "ONLINE", False), (uu, "AUTOINSTALL", False),
                                 (checks, "AUTOINSTALL", False)):
            if hasattr(mod, attr):
                saved.append((mod, attr, getattr(mod, attr)))
                setattr(mod, attr, value)
        events = getattr(sys.modules.get("ultralytics.utils.events"), "events", None)
        if events is not None and getattr(events, "enabled", False):
            saved.append((events, "enabled", True))
            events.enabled = False
        _patch(sys.modules, "check_requirements", _check_requirements, saved)
        _patch(sys.modules, "colorstr", _plain, saved)
        logger = getattr(uu, "LOGGER", None)
        if logger is not None:
            level = logger.level
            logger.setLevel(logging.ERROR)
        yield YOLO
    finally:
        for mod, attr, value in reversed(saved):
            setattr(mod, attr, value)
        if logger is not None and level is not None:
            logger.setLevel(level)
        for k, v in before.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
