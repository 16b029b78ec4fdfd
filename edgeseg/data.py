"""Finding images and labels on disk: folders, globs and Ultralytics dataset YAML files."""

from __future__ import annotations

import glob
from dataclasses import dataclass
from pathlib import Path

from .errors import EdgesegError

IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp"}


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
        files = [f for f in p.rglob("*") if f.is_file()]
    elif p.is_file():
        files = [p]
    else:
        raise EdgesegError(f"{p}: no such folder or file; pass a folder of images, a glob or a dataset .yaml")
    return sorted(f for f in files if f.suffix.lower() in IMAGE_SUFFIXES)


def _names(v: object) -> list[str]:
    if isinstance(v, dict):
        return [str(v[k]) for k in sorted(v)]
    if isinstance(v, list):
        return [str(x) for x in v]
    return []


def load_dataset(yaml_path: str | Path, split: str = "val") -> Dataset:
    """Read an Ultralytics dataset YAML and return the images of ``split`` (falling back to val/train)."""
    import yaml

    if Path(yaml_path).is_dir():
        return folder_dataset(yaml_path)
    yp = Path(yaml_path)
    if not yp.is_file():
        raise EdgesegError(f"{yp}: no such dataset file; pass an Ultralytics dataset .yaml")
    try:
        cfg = yaml.safe_load(yp.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        raise EdgesegError(f"{yp}: not valid YAML ({str(e).splitlines()[0]}); fix the dataset file") from None
    if not isinstance(cfg, dict):
        raise EdgesegError(f"{yp}: expected a mapping with 'path', 'train', 'val' and 'names'")
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
            images += [Path(ln.strip()) if Path(ln.strip()).is_absolute() else root / ln.strip()
                       for ln in ep.read_text().splitlines() if ln.strip()]
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
