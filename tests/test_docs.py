"""The commands the README and the examples show use flags the command line really has."""

import re
import shlex

import pytest
from conftest import ROOT
from typer.main import get_command

from edgeseg.cli import app

DOCS = [ROOT / "README.md", ROOT / "calibration" / "README.md", *sorted((ROOT / "examples").rglob("*.md")),
        *sorted((ROOT / "examples").rglob("*.sh"))]


def _commands():
    for doc in DOCS:
        for n, line in enumerate(doc.read_text(encoding="utf-8").splitlines(), 1):
            for m in re.finditer(r"edgeseg (convert|run|eval|bench|doctor)\b([^`#|]*)", line):
                yield f"{doc.relative_to(ROOT)}:{n}", m.group(1), m.group(2)


CASES = list(_commands())


def test_the_docs_show_commands():
    assert len(CASES) > 30 and {c for _, c, _ in CASES} == {"convert", "run", "eval", "bench", "doctor"}


@pytest.mark.parametrize("where,command,rest", CASES, ids=[w for w, _, _ in CASES])
def test_documented_flags_exist(where, command, rest):
    sub = get_command(app).commands[command]
    flags = {o for p in sub.params for o in (*p.opts, *p.secondary_opts)}
    try:
        words = shlex.split(rest.replace("\\", " "))
    except ValueError:  # an unbalanced quote in prose: the flags are still whitespace-separated
        words = rest.split()
    used = {w.split("=")[0] for w in words if re.fullmatch(r"--?[a-z][a-z0-9-]*(=.*)?", w)}
    assert used <= flags, f"{where}: `edgeseg {command}` has no {sorted(used - flags)}"
