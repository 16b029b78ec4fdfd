"""The bundle: model file(s) plus ``edgeseg.json``, the only thing that crosses to the device.

Saved atomically (built in a temporary sibling folder, then renamed into place) and verified on
load (schema, types, paths inside the bundle, SHA-256 of every file) before any runtime opens it.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .errors import EdgesegError
from .heads import HEAD_TYPES  # light (no onnx): the one list of head families

MANIFEST = "edgeseg.json"
FORMAT_VERSION = 1
MAX_MANIFEST_BYTES = 4 << 20

ROLES = {"box_dfl", "cls_logits", "coef", "protos", "det", "logits", "labels"}


def max_threads() -> int:
    """The most runtime threads worth asking for here: more only costs memory (each has a stack
    and scratch buffers), never speed."""
    return min(256, 4 * (os.cpu_count() or 1))


def check_threads(value: Any, where: str) -> None:
    """``threads`` from a flag, a runtime option or a manifest: 0 (the runtime's default) up to
    :func:`max_threads`."""
    top = max_threads()
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= top:
        raise EdgesegError(f"{where}: threads {value!r} is outside 0..{top} (4 per CPU on this machine, at most 256); "
                           "pass fewer threads")


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
    def from_dict(cls, d: Any, where: str) -> Manifest:
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
        optional = {"source": dict, "profile": dict, "quantization": dict, "toolchain": dict, "fidelity": dict,
                    "edgeseg_version": str}
        for k, t in optional.items():
            if k in d and not isinstance(d[k], t):
                raise bad(f"field '{k}' is not a {t.__name__}")
        if not d["model_files"] or not all(isinstance(f, str) for f in d["model_files"]):
            raise bad("model_files must be a non-empty list of file names")
        if not all(isinstance(k, str) and isinstance(v, str) and len(v) == 64 for k, v in d["files"].items()):
            raise bad("files must map names to SHA-256 hex digests")
        if not isinstance(d["head"].get("type"), str):
            raise bad("head.type is missing")
        if d["head"]["type"] in ("yolo-seg", "yolo26-seg"):
            for k in ("num_classes", "num_masks"):
                if not isinstance(d["head"].get(k), int) or not 0 < d["head"][k] <= 10000:
                    raise bad(f"head.{k} must be a positive integer")
            if d["head"].get("layout") not in ("split", "concat", "end2end"):
                raise bad("head.layout must be 'split', 'concat' or 'end2end'")
        for k in ("height", "width"):
            v = d["input"].get(k)
            if not isinstance(v, int) or not 1 <= v <= 8192:
                raise bad(f"input.{k} must be an integer in 1..8192")
        if not all(isinstance(n, str) for n in d["names"]):
            raise bad("names must be strings")
        if not d["outputs"]:
            raise bad("outputs is empty")
        for o in d["outputs"]:
            if not isinstance(o, dict) or not isinstance(o.get("name"), str) or str(o.get("role")) not in ROLES:
                raise bad(f"output entry {str(o)[:80]} needs a name and a role in {sorted(ROLES)}")
            shape = o.get("shape")
            if shape is not None and (not isinstance(shape, list)
                                      or not all(isinstance(v, int) and v > 0 for v in shape)):
                raise bad(f"output '{o['name']}' has an invalid shape")
            q = o.get("quant")
            if q is not None and (not isinstance(q, dict) or not isinstance(q.get("scale"), (int, float))
                                  or not isinstance(q.get("zero_point"), int)):
                raise bad(f"output '{o['name']}' has invalid quantization parameters")
        known = set(cls.__dataclass_fields__)
        unknown = set(d) - known
        if unknown:
            raise bad(f"unknown fields {sorted(unknown)}")
        _check_ranges(d, bad)
        return cls(**d)


PRECISIONS = {"int8", "int8w", "fp16", "fp32"}  # every precision a target profile offers


def _finite(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _check_ranges(d: dict, bad: Any) -> None:
    """What the type checks above leave open: sizes, ranges and cross-references, so that a
    hostile or damaged manifest fails here in one line and not as a traceback in a runtime."""
    head, inp = d["head"], d["input"]
    if head["type"] not in HEAD_TYPES:
        raise bad(f"head.type {head['type'][:40]!r} is not one of {sorted(HEAD_TYPES)}")
    if len(d["names"]) > 100_000 or any(len(n) > 1000 for n in d["names"]):
        raise bad("names: too many or too long")
    if d["precision"] not in PRECISIONS:
        raise bad(f"precision {d['precision'][:40]!r} is not one of {sorted(PRECISIONS)}")
    from .runtime.backends import runtime_names  # here: that package imports this module

    if d["runtime"] not in runtime_names():
        raise bad(f"runtime {d['runtime'][:40]!r} is not one of {', '.join(runtime_names())}")
    missing = [f for f in d["model_files"] if f not in d["files"]]
    if missing:
        raise bad(f"files has no digest for the model file {missing[0][:80]!r}")
    nc = head.get("num_classes")
    if nc is not None and (not isinstance(nc, int) or isinstance(nc, bool) or not 0 < nc <= 100_000):
        raise bad("head.num_classes must be a positive integer")
    if head["type"] != "semantic" and isinstance(nc, int) and len(d["names"]) != nc:
        raise bad(f"names has {len(d['names'])} entries but head.num_classes is {nc}")
    for k in ("scale",):
        if k in inp and (not _finite(inp[k]) or inp[k] <= 0):
            raise bad(f"input.{k} must be a positive number")
    for k in ("mean", "std"):
        v = inp.get(k)
        if v is not None and (not isinstance(v, list) or len(v) != 3 or not all(_finite(x) for x in v)
                              or (k == "std" and any(x == 0 for x in v))):
            raise bad(f"input.{k} must be three numbers" + (", none zero" if k == "std" else ""))
    for k in ("layout", "dtype", "color", "name"):
        if k in inp and not isinstance(inp[k], str):
            raise bad(f"input.{k} must be a string")
    if "letterbox" in inp and not isinstance(inp["letterbox"], (dict, bool, type(None))):
        raise bad("input.letterbox must be an object")
    if len(d["outputs"]) > 64 or len(d["files"]) > 10_000 or len(d["model_files"]) > 64:
        raise bad("too many outputs or files for a model bundle")
    for o in d["outputs"]:
        shape = o.get("shape")
        if shape is not None and (len(shape) > 8 or any(v > 1 << 24 for v in shape)):
            raise bad(f"output '{o['name']}' has an implausible shape")
        q = o.get("quant")
        if q is not None and (not _finite(q["scale"]) or q["scale"] <= 0
                              or not -(1 << 31) <= q["zero_point"] < 1 << 31):
            raise bad(f"output '{o['name']}' has invalid quantization parameters")
    for f in d["model_files"]:
        if not f or len(f) > 255 or f.startswith("/"):
            raise bad(f"model file name {f[:40]!r} is not a file name inside the bundle")
    hexdigits = set("0123456789abcdef")
    if not all(isinstance(v, str) and len(v) == 64 and set(v) <= hexdigits for v in d["files"].values()):
        raise bad("files must map names to SHA-256 hex digests")
    ro = d.get("profile", {}).get("runtime_options", {})
    if not isinstance(ro, dict):
        raise bad("profile.runtime_options must be an object")
    if "threads" in ro:
        try:
            check_threads(ro["threads"], "profile.runtime_options")
        except EdgesegError as e:
            raise bad(str(e).split(": ", 1)[1].split(";")[0]) from None


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
    def load(cls, path: str | os.PathLike, verify: bool = True) -> Bundle:
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
        except RecursionError:
            raise EdgesegError(f"{mpath}: nested too deeply to be a manifest; rebuild the bundle with "
                               "`edgeseg convert`") from None
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


PARTIAL_TAG = "edgeseg-partial"  # in the names of folders being built: ".NAME.edgeseg-partial-PID-XXXX"
_PARTIAL_RE = re.compile(r"^\..+\." + PARTIAL_TAG + r"-(\d+)-[A-Za-z0-9_]+$")
_WORK_RE = re.compile(r"^edgeseg-(?:convert|import|calib)-(\d+)-[A-Za-z0-9_]+$")
# files a bundle holds beyond those its manifest hashes (written after the manifest)
UNHASHED = {MANIFEST, "toolchain.log"}


def bundle_problem(out: Path) -> str | None:
    """Why ``out`` is not a folder edgeseg may replace, or None when it is an edgeseg bundle: a
    valid manifest and nothing in the folder that the manifest does not account for."""
    mpath = out / MANIFEST
    if out.is_symlink() or not out.is_dir():
        return "it is not a folder"
    if not mpath.is_file() or mpath.stat().st_size > MAX_MANIFEST_BYTES:
        return f"it holds no {MANIFEST}"
    try:
        m = Manifest.from_dict(json.loads(mpath.read_text(encoding="utf-8")), str(mpath))
    except (UnicodeDecodeError, ValueError, RecursionError, EdgesegError):
        return f"its {MANIFEST} is not a valid edgeseg manifest"
    for p in out.rglob("*"):
        rel = p.relative_to(out).as_posix()
        if p.is_symlink() or (p.is_file() and rel not in m.files and rel not in UNHASHED):
            return f"{rel} is not part of the bundle"
        if not p.is_file() and not p.is_dir():
            return f"{rel} is not part of the bundle"
    return None


def check_out(out: Path, force: bool) -> None:
    """Refuse an existing ``out`` before any work: only with ``force``, and only an edgeseg bundle.
    A bundle that a killed ``--force`` conversion had moved aside is put back first."""
    put_back_aside(out)
    if not (out.exists() or out.is_symlink()):
        return
    if not force:
        raise EdgesegError(f"{out}: already exists; pass --force to replace this bundle, or choose another --out")
    why = bundle_problem(out)
    if why is not None:
        raise EdgesegError(f"{out}: exists and is not an edgeseg bundle ({why}); refusing to replace it, "
                           "choose another --out")


def put_back_aside(out: Path) -> Path | None:
    """Replacing a bundle renames it to ``.NAME.old.PID``, renames the new one in, then removes the old
    one: a kill -9 between the renames leaves the user with no bundle at ``out``. The newest bundle so
    left by a dead process goes back to ``out``; when ``out`` already holds one, what is left aside is
    what the replacement would have removed. Returns the folder put back, if any."""
    out = Path(out)
    pattern = re.compile(r"^\." + re.escape(out.name) + r"\.old\.(\d+)$")
    uid = os.getuid() if hasattr(os, "getuid") else None
    left = []
    try:
        entries = list(os.scandir(out.parent))
    except OSError:
        return None
    for e in entries:
        m = pattern.match(e.name)
        try:
            if (not m or not e.is_dir(follow_symlinks=False) or _alive(int(m.group(1)))
                    or (uid is not None and e.stat(follow_symlinks=False).st_uid != uid)
                    or bundle_problem(Path(e.path)) is not None):
                continue
            left.append((e.stat(follow_symlinks=False).st_mtime, Path(e.path)))
        except OSError:
            continue
    put = None
    for _, p in sorted(left, reverse=True):
        if put is None and not (out.exists() or out.is_symlink()):
            try:
                os.rename(p, out)
                put = out
                continue
            except OSError:
                pass  # another process put one back first
        shutil.rmtree(p, ignore_errors=True)
    return put


def remove_stale(parent: Path, pattern: re.Pattern = _PARTIAL_RE) -> list[Path]:
    """Folders a dead conversion left in ``parent``: provably edgeseg's (their names carry the tag and
    the pid of the process that made them, which is gone) and owned by this user. A live
    conversion's folders are never touched."""
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    uid = os.getuid() if hasattr(os, "getuid") else None
    for e in entries:
        m = pattern.match(e.name)
        if not m or not e.is_dir(follow_symlinks=False):
            continue
        try:
            if uid is not None and e.stat(follow_symlinks=False).st_uid != uid:
                continue
        except OSError:
            continue
        pid = int(m.group(1))
        if pid == os.getpid() or _alive(pid):
            continue
        shutil.rmtree(e.path, ignore_errors=True)
        removed.append(Path(e.path))
    return removed


def work_dir(kind: str = "convert") -> Path:
    """A private temporary folder for one conversion, named so that the next conversion can tell it
    was left by a dead process and remove it (a kill -9 runs no cleanup)."""
    tmp = Path(tempfile.gettempdir())
    remove_stale(tmp, _WORK_RE)
    return Path(tempfile.mkdtemp(prefix=f"edgeseg-{kind}-{os.getpid()}-", dir=tmp))


@contextmanager
def atomic_bundle_dir(out: Path, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder next to ``out``; on success it replaces ``out`` in one rename.

    ``out`` must not exist, or (``overwrite``) be an edgeseg bundle: a folder of the user's is never
    replaced. On any failure the temporary folder is removed and ``out`` is left as it was. Two
    writers racing for the same ``out`` never interleave files: each builds its own folder; what a
    killed writer left is removed by the next one.
    """
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    check_out(out, overwrite)
    lock = _take_lock(out)
    remove_stale(out.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.{PARTIAL_TAG}-{os.getpid()}-", dir=out.parent))
    try:
        yield tmp
        # mkdtemp makes the folder private (0700); a finished bundle gets the user's usual mode
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        old = None
        if out.exists() or out.is_symlink():
            check_out(out, overwrite)  # again: it may have appeared or changed during the conversion
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
    finally:
        lock.unlink(missing_ok=True)


def _take_lock(out: Path) -> Path:
    """One writer per bundle folder: a second conversion into the same --out fails at once."""
    lock = out.with_name(f".{out.name}.lock")
    for _ in range(2):
        try:
            fd = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            try:
                pid = int(lock.read_text().strip() or 0)
            except (OSError, ValueError):
                pid = 0
            if pid and _alive(pid):
                raise EdgesegError(f"{out}: another conversion (pid {pid}) is writing this bundle; wait for it "
                                   "or choose another --out") from None
            lock.unlink(missing_ok=True)  # left by a process that died: take it over
            continue
        with os.fdopen(fd, "w") as f:
            f.write(str(os.getpid()))
        return lock
    raise EdgesegError(f"{lock}: cannot take the bundle lock; remove this file if no conversion is running")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def write_manifest(folder: Path, manifest: Manifest) -> None:
    """Hash every model file in ``folder`` into the manifest, then write it."""
    manifest.files = {}
    for p in sorted(folder.rglob("*")):
        if p.is_file() and p.name != MANIFEST:
            manifest.files[p.relative_to(folder).as_posix()] = sha256_file(p)
    (folder / MANIFEST).write_text(manifest.to_json(), encoding="utf-8")


def refuse_inputs(output: str | os.PathLike, inputs: list[str | os.PathLike | None], flag: str) -> None:
    """An output path that is one of the inputs (or holds one) would truncate or delete it: refuse."""
    out = Path(output).resolve()
    for i in inputs:
        if i is None or "://" in str(i):
            continue
        p = Path(i).resolve()
        if p == out or out in p.parents:
            what = "is" if p == out else "holds"
            raise EdgesegError(f"{output}: {flag} {what} an input of this command ({i}); writing there would "
                               f"destroy it; choose another {flag}")


def check_outputs(bundle: Bundle, outputs: dict[str, Any]) -> None:
    """The model's outputs are the ones the manifest describes (names, element counts): else a
    model file was replaced by another whose hash was written into the manifest."""
    where = bundle.path / MANIFEST
    for o in bundle.manifest.outputs:
        got = outputs.get(o["name"])
        if got is None:
            raise EdgesegError(f"{where}: the model has no output '{o['name']}' (it has {sorted(outputs)[:8]}); "
                               "the model file does not belong to this manifest: rebuild the bundle")
        shape = o.get("shape")
        size = getattr(got, "size", None)
        if shape and size is not None and size != _product(shape):
            got_shape = list(getattr(got, "shape", []))
            raise EdgesegError(f"{where}: output '{o['name']}' has shape {got_shape}, the manifest says {shape}; "
                               "the model file does not belong to this manifest: rebuild the bundle")


def _product(shape: list[int]) -> int:
    n = 1
    for v in shape:
        n *= v
    return n
