"""The bundle: model file(s) plus ``edgeseg.json``, the only thing that crosses to the device.

Saved atomically (built in a temporary sibling folder, then renamed into place) and verified on
load (schema, types, paths inside the bundle, SHA-256 of every file) before any runtime opens it.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

from . import __version__
from .errors import EdgesegError

MANIFEST = "edgeseg.json"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 4 << 20

ROLES = {"box_dfl", "cls_logits", "coef", "protos", "det", "logits", "labels"}


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@dataclass
class Manifest:
    """Everything a runtime needs to feed a bundle's model and read its outputs."""

    target: str
    precision: str
    runtime: str
    model_files: list[str]
    input: dict[str, Any]
    head: dict[str, Any]
    names: list[str]
    outputs: list[dict[str, Any]]
    source: dict[str, Any] = field(default_factory=dict)
    profile: dict[str, Any] = field(default_factory=dict)
    quantization: dict[str, Any] = field(default_factory=dict)
    toolchain: dict[str, str] = field(default_factory=dict)
    fidelity: dict[str, Any] = field(default_factory=dict)
    files: dict[str, str] = field(default_factory=dict)
    format_version: int = FORMAT_VERSION
    edgeseg_version: str = __version__

    @property
    def input_hw(self) -> tuple[int, int]:
        return int(self.input["height"]), int(self.input["width"])

    def to_json(self) -> str:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        return json.dumps(d, indent=2, sort_keys=False)

    @classmethod
    def from_dict(cls, d: Any, where: str) -> "Manifest":
        def bad(msg: str) -> EdgesegError:
            return EdgesegError(f"{where}: {msg}; rebuild the bundle with `edgeseg convert`")

        if not isinstance(d, dict):
            raise bad("manifest is not a JSON object")
        fv = d.get("format_version")
        if fv != FORMAT_VERSION:
            raise bad(f"format_version {fv!r} is not supported (this edgeseg reads {FORMAT_VERSION})")
        types = {"target": str, "precision": str, "runtime": str, "model_files": list, "input": dict,
                 "head": dict, "names": list, "outputs": list, "files": dict}
        for k, t in types.items():
            if not isinstance(d.get(k), t):
                raise bad(f"field '{k}' is missing or not a {t.__name__}")
        for k in ("height", "width"):
            v = d["input"].get(k)
            if not isinstance(v, int) or not 1 <= v <= 8192:
                raise bad(f"input.{k} must be an integer in 1..8192")
        if not all(isinstance(n, str) for n in d["names"]):
            raise bad("names must be strings")
        for o in d["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str) or o.get("role") not in ROLES:
                raise bad(f"output entry {o!r} needs a name and a role in {sorted(ROLES)}")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise bad(f"unknown fields {sorted(unknown)}")
        return cls(**d)


def _inside(root: Path, rel: str, where: str) -> Path:
    p = (root / rel).resolve()
    if os.path.isabs(rel) or root.resolve() not in p.parents:
        raise EdgesegError(f"{where}: file path {rel!r} points outside the bundle; the bundle is not trusted")
    return p


@dataclass
class Bundle:
    path: Path
    manifest: Manifest

    def file(self, name: str) -> Path:
        return _inside(self.path, name, str(self.path / MANIFEST))

    @classmethod
    def load(cls, path: str | os.PathLike, verify: bool = True) -> "Bundle":
        root = Path(path)
        mpath = root / MANIFEST
        if not root.is_dir():
            raise EdgesegError(f"{root}: no such bundle folder; create one with `edgeseg convert MODEL --target ...`")
        if not mpath.is_file():
            raise EdgesegError(f"{mpath}: missing; {root} is not an edgeseg bundle (create one with `edgeseg convert`)")
        if mpath.stat().st_size > MAX_MANIFEST_BYTES:
            raise EdgesegError(f"{mpath}: manifest larger than {MAX_MANIFEST_BYTES} bytes; not an edgeseg bundle")
        try:
            d = json.loads(mpath.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise EdgesegError(f"{mpath}: not valid JSON ({e}); rebuild the bundle with `edgeseg convert`") from None
        m = Manifest.from_dict(d, str(mpath))
        b = cls(root, m)
        for rel in m.model_files:
            if rel not in m.files:
                raise EdgesegError(f"{mpath}: model file {rel!r} has no hash; rebuild the bundle")
        if verify:
            for rel, digest in m.files.items():
                p = _inside(root, rel, str(mpath))
                if not p.is_file():
                    raise EdgesegError(f"{p}: missing from the bundle; copy the whole bundle folder again")
                if sha256_file(p) != digest:
                    raise EdgesegError(f"{p}: SHA-256 does not match the manifest (corrupt or modified); "
                                       "copy the bundle again or rebuild it")
        return b


@contextmanager
def atomic_bundle_dir(out: Path, overwrite: bool = True) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename.

    On any failure the temporary folder is removed and ``out`` is left as it was. Two writers
    racing for the same ``out`` never interleave files: each builds its own folder.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.exists() and not overwrite:
        raise EdgesegError(f"{out}: already exists; pass --overwrite or choose another --out")
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".partial", dir=out.parent))
    try:
        yield tmp
        old = None
        if out.exists():
            if not (out / MANIFEST).is_file():
                raise EdgesegError(f"{out}: exists and is not an edgeseg bundle; refusing to replace it, choose another --out")
            old = out.with_name(f".{out.name}.old.{os.getpid()}")
            os.rename(out, old)
        try:
            os.rename(tmp, out)
        except OSError:
            if old is not None:
                os.rename(old, out)
            raise
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash every model file in ``folder`` into the manifest, then write it."""
    manifest.files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            manifest.files[p.relative_to(folder).as_posix()] = sha256_file(p)
    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")
