"""Isolated toolchain environments: a venv per toolchain, created once and cached.

Vendor toolchains pin versions that clash with the core (rknn-toolkit2 wants numpy <= 1.26,
onnx <= 1.18, torch <= 2.4, protobuf <= 4.25). Each lives in its own venv under
``~/.cache/edgeseg/envs/<name>-<digest of its requirements>``; edgeseg drives a worker script
in it as a subprocess with a JSON contract, so the user still types one command. A marker file
is written only after every install step succeeded: a half-built env is rebuilt, never used.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import platform
import shutil
import subprocess
import sys
import venv
from dataclasses import dataclass
from pathlib import Path

from ..errors import EdgesegError
from ..runtime.replay import cache_root

MARKER = "edgeseg-env.json"


@dataclass(frozen=True)
class EnvSpec:
    name: str
    steps: tuple[tuple[str, ...], ...]  # each step is one `pip install` argument list

    @property
    def digest(self) -> str:
        # The CPU architecture too: a home folder shared by an x86 host and an ARM board (NFS) must
        # not hand one machine the other's compiled wheels.
        key = [self.name, self.steps, sys.version_info[:2], platform.machine()]
        return hashlib.sha256(json.dumps(key).encode()).hexdigest()[:12]

    @property
    def path(self) -> Path:
        return cache_root() / "envs" / f"{self.name}-{self.digest}"

    @property
    def python(self) -> Path:
        return self.path / "bin" / "python"

    def ready(self) -> bool:
        return (self.path / MARKER).is_file() and self.python.exists()

    def create(self, log=print) -> Path:
        """Build the env (a few minutes the first time); reuse it afterwards."""
        if self.ready():
            return self.python
        # Two conversions starting at once on a new machine would each wipe the other's half-built
        # env: the second waits for the first and then finds the env ready.
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path.with_name(self.path.name + ".lock"), "w") as lock:
            try:
                fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another edgeseg to finish creating the {self.name} environment in {self.path}")
                fcntl.flock(lock, fcntl.LOCK_EX)
            if self.ready():
                return self.python
            return self._build(log)

    def _build(self, log) -> Path:
        log(f"creating the {self.name} toolchain environment in {self.path} (once; cached afterwards)")
        # Built in place (console scripts hard-code their interpreter's path, so a venv cannot be
        # renamed afterwards); the marker written last is what makes it usable.
        tmp = self.path
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.parent.mkdir(parents=True, exist_ok=True)
        venv.EnvBuilder(with_pip=True, symlinks=True).create(tmp)
        logfile = tmp / "install.log"
        py = tmp / "bin" / "python"
        for step in self.steps:
            with open(logfile, "a") as out:
                out.write(f"$ pip install {' '.join(step)}\n")
                out.flush()
                r = subprocess.run([str(py), "-m", "pip", "install", "--disable-pip-version-check", *step],
                                   stdout=out, stderr=subprocess.STDOUT)
            if r.returncode != 0:
                kept = self.path.with_name(self.path.name + ".failed.log")  # the env itself is removed
                shutil.copyfile(logfile, kept)
                shutil.rmtree(tmp, ignore_errors=True)
                raise EdgesegError(f"{kept}: creating the {self.name} environment failed at "
                                   f"`pip install {' '.join(step)}`; see this log")
        (tmp / MARKER).write_text(json.dumps({"name": self.name, "steps": self.steps}))
        return self.python


def run_json(argv: list[str], spec: dict, workdir: Path, log: Path, what: str, timeout: int = 7200,
             env: dict | None = None) -> dict:
    """Run ``argv + [spec.json]`` in a child process (JSON in, JSON out; output appended to ``log``).

    The child writes ``{"error": ...}`` (or its results) to ``spec["result"]``; a failure or a
    child that dies raises one EdgesegError pointing at the kept log.
    """
    tag = spec.get("op", "run")
    spec_path, result_path = workdir / f"spec_{tag}.json", workdir / f"result_{tag}.json"
    spec_path.write_text(json.dumps(dict(spec, result=str(result_path))))
    with open(log, "a", encoding="utf-8") as out:
        p = subprocess.run([*argv, str(spec_path)], stdout=out, stderr=subprocess.STDOUT, cwd=workdir,
                           timeout=timeout, env=env)
    if not result_path.is_file():
        raise EdgesegError(f"{log}: {what} died (exit {p.returncode}); see this log, which is kept")
    res = json.loads(result_path.read_text())
    if res.get("error"):
        raise EdgesegError(f"{log}: {what} failed: {res['error']}; see this log, which is kept")
    return res


def run_worker(env: EnvSpec, module_file: Path, spec: dict, workdir: Path, log: Path, timeout: int = 7200) -> dict:
    """Run ``module_file`` with the isolated env's Python on ``spec``."""
    return run_json([str(env.python), str(module_file)], spec, workdir, log, f"the {env.name} toolchain", timeout,
                    env={**os.environ, "PYTHONNOUSERSITE": "1"})
