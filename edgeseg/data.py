"""Finding images and labels on disk: folders, globs and Ultralytics dataset YAML files."""

from __future__ import annotations

import glob
import logging
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import EdgesegError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}
MAX_YAML_BYTES = 1 << 20  # a dataset description is a few hundred bytes; 1 MB holds 20000 class names
MAX_YAML_NODES = 200_000

log = logging.getLogger("edgeseg.data")


def regular_files(paths: Iterable[Path], on_skip: Callable[[str], None] | None = None) -> list[Path]:
    """The paths that are regular files (through symlinks), sorted. A FIFO would block the read
    forever, a device never ends, a dangling link or a link loop cannot be read: each is skipped
    with a warning instead of hanging or ending the run."""
    warn = on_skip or (lambda msg: log.warning("%s", msg))
    out = []
    for p in paths:
        try:
            mode = os.stat(p).st_mode
        except OSError as e:
            warn(f"{p}: skipped ({'a dangling link' if os.path.islink(p) and e.errno == 2 else e.strerror})")
            continue
        if stat.S_ISREG(mode):
            out.append(p)
        elif not stat.S_ISDIR(mode):
            kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) \
                else "a socket" if stat.S_ISSOCK(mode) else "not a regular file"
            warn(f"{p}: skipped ({kind}, not an image file)")
    return sorted(out)


@dataclass
class Dataset:
    """An Ultralytics-format dataset split: images, their label files and class names."""

    yaml_path: Path
    images: list[Path]
    names: list[str]

    def label_path(self, image: Path) -> Path:
        # Ultralytics convention: .../images/x.jpg -> .../labels/x.txt
        parts = list(image.parts)
        for i in range(len(parts) - 1, -1, -1):
            if parts[i] == "images":
                parts[i] = "labels"
                break
        return Path(*parts).with_suffix(".txt")


def list_images(path: str | Path) -> list[Path]:
    """Images in a folder (recursively), matching a glob, or a single image; sorted by path."""
    p = Path(path)
    if any(ch in str(path) for ch in "*?["):
        files = [Path(f) for f in glob.glob(str(path), recursive=True)]
    elif p.is_dir():
        files = list(p.rglob("*"))
    elif p.is_file():
        files = [p]
    else:
        raise EdgesegError(f"{p}: no such folder or file; pass a folder of images, a glob or a dataset .yaml")
    return regular_files(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES)


def _names(v: object) -> list[str]:
    if isinstance(v, dict):
        return [str(v[k]) for k in sorted(v)]
    if isinstance(v, list):
        return [str(x) for x in v]
    return []


def _safe_yaml(text: str) -> Any:
    """YAML without aliases: ``*a`` repeated inside ``&a`` lists grows exponentially (a few hundred
    bytes expand to billions of nodes), so a dataset file may not use them at all."""
    import yaml

    class Loader(yaml.SafeLoader):
        nodes = 0

        def compose_node(self, parent: Any, index: Any) -> Any:
            if self.check_event(yaml.AliasEvent):
                ev = self.peek_event()
                raise yaml.composer.ComposerError(None, None, f"uses the alias *{ev.anchor}, which edgeseg does not "
                                                  "expand; write the value out", ev.start_mark)
            Loader.nodes += 1
            if Loader.nodes > MAX_YAML_NODES:
                raise yaml.composer.ComposerError(None, None, f"more than {MAX_YAML_NODES} values",
                                                  self.peek_event().start_mark)
            return super().compose_node(parent, index)

    return yaml.load(text, Loader=Loader)  # noqa: S506 - a SafeLoader subclass


def _check_dataset(cfg: dict, yp: Path) -> None:
    """The fields edgeseg reads, with their types: one line naming the field, never a traceback."""
    def bad(field: str, want: str) -> EdgesegError:
        return EdgesegError(f"{yp}: '{field}' must be {want} (got {type(cfg[field]).__name__}); fix the dataset file")

    if cfg.get("path") is not None and not isinstance(cfg["path"], str):
        raise bad("path", "a folder path")
    for k in ("train", "val", "test"):
        v = cfg.get(k)
        if v is not None and not isinstance(v, str) and not (isinstance(v, list)
                                                             and all(isinstance(x, str) for x in v)):
            raise bad(k, "a path or a list of paths")
    names = cfg.get("names")
    if names is not None:
        if isinstance(names, dict):
            if not all(isinstance(k, int) and not isinstance(k, bool) and 0 <= k < 100_000 for k in names):
                raise EdgesegError(f"{yp}: 'names' keys must be class ids 0, 1, 2 ...; fix the dataset file")
            if not all(isinstance(v, (str, int, float)) for v in names.values()):
                raise EdgesegError(f"{yp}: 'names' values must be class names; fix the dataset file")
        elif not (isinstance(names, list) and all(isinstance(v, (str, int, float)) for v in names)):
            raise bad("names", "a list of class names or a mapping id: name")
    nc = cfg.get("nc")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or not 0 < nc < 100_000):
        raise EdgesegError(f"{yp}: 'nc' must be a positive number of classes; fix the dataset file")


def load_dataset(yaml_path: str | Path, split: str = "val") -> Dataset:
    """Read an Ultralytics dataset YAML and return the images of ``split`` (falling back to val/train)."""
    import yaml

    if Path(yaml_path).is_dir():
        return folder_dataset(yaml_path)
    yp = Path(yaml_path)
    if not yp.is_file():
        raise EdgesegError(f"{yp}: no such dataset file; pass an Ultralytics dataset .yaml")
    if yp.stat().st_size > MAX_YAML_BYTES:
        raise EdgesegError(f"{yp}: {yp.stat().st_size} bytes is too large for a dataset file "
                           f"(at most {MAX_YAML_BYTES}); pass an Ultralytics dataset .yaml")
    try:
        cfg = _safe_yaml(yp.read_text(encoding="utf-8")) or {}
    except UnicodeDecodeError:
        raise EdgesegError(f"{yp}: not UTF-8 text; save the dataset file as UTF-8") from None
    except (yaml.YAMLError, RecursionError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise EdgesegError(f"{yp}: not a usable dataset YAML ({first}); fix the dataset file") from None
    if not isinstance(cfg, dict):
        raise EdgesegError(f"{yp}: expected a mapping with 'path', 'train', 'val' and 'names'")
    _check_dataset(cfg, yp)
    root = Path(cfg.get("path") or ".")
    if not root.is_absolute():
        root = (yp.parent / root).resolve()
    entry = cfg.get(split) or cfg.get("val") or cfg.get("train")
    if not entry:
        raise EdgesegError(f"{yp}: no '{split}' entry; add `{split}: images/folder`")
    images: list[Path] = []
    for e in entry if isinstance(entry, list) else [entry]:
        ep = Path(e)
        ep = ep if ep.is_absolute() else root / ep
        if ep.suffix == ".txt" and ep.is_file():
            try:
                lines = ep.read_text(encoding="utf-8").splitlines()
            except UnicodeDecodeError:
                raise EdgesegError(f"{ep}: not UTF-8 text; save the image list as UTF-8") from None
            images += [Path(ln.strip()) if Path(ln.strip()).is_absolute() else root / ln.strip()
                       for ln in lines if ln.strip()]
        else:
            images += list_images(ep)
    return Dataset(yp, sorted(images), _names(cfg.get("names")))


def folder_dataset(folder: str | Path) -> Dataset:
    """A dataset given as its images folder, as Ultralytics lays one out (``val/images`` with
    ``val/labels`` beside it; or labels next to the images). Class ids are the model's own."""
    images = list_images(folder)
    if not images:
        raise EdgesegError(f"{folder}: folder has no images; pass a val images folder (labels beside it, in "
                           "../labels) or a dataset .yaml")
    return Dataset(Path(folder), images, [])
