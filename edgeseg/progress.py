"""Progress of long loops: a live bar on a terminal, plain lines in a log.

Rich's bar draws nothing until it finishes when stderr is a file or a pipe (``make demo > log``
showed a blank line after half a minute), so there one line is printed every few seconds instead:
what, how many done, elapsed, ETA.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Iterable, Iterator, Sized
from typing import TextIO, TypeVar

T = TypeVar("T")

LINE_EVERY_S = 5.0  # how often a piped log gets a progress line


def track(items: Iterable[T], what: str, unit: str = "images", total: int | None = None,
          stream: TextIO | None = None, every_s: float = LINE_EVERY_S) -> Iterator[T]:
    """Yield ``items``, showing how far along they are on ``stream`` (stderr by default)."""
    out = stream or sys.stderr
    n = total if total is not None else (len(items) if isinstance(items, Sized) else None)
    if out.isatty():
        from rich.console import Console
        from rich.progress import track as rich_track

        yield from rich_track(items, total=n, description=f"{what} ({n} {unit})" if n else what, transient=True,
                              console=Console(file=out))
        return
    t0 = time.monotonic()
    last = t0
    for done, item in enumerate(items, 1):
        yield item
        now = time.monotonic()
        if now - last >= every_s or done == n:
            last = now
            out.write(progress_line(what, done, n, now - t0, unit) + "\n")
            out.flush()


def progress_line(what: str, done: int, total: int | None, elapsed_s: float, unit: str = "images") -> str:
    """``calibration: 14/56 images, 4 s, about 12 s left``"""
    line = f"{what}: {done}{f'/{total}' if total else ''} {unit}, {elapsed_s:.0f} s"
    if total and done < total and done > 0:
        line += f", about {elapsed_s / done * (total - done):.0f} s left"
    return line
