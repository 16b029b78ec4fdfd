"""Silence native libraries that print banners on stdout (it would corrupt piped JSON output)."""

from __future__ import annotations

import os
import sys
from contextlib import contextmanager
from typing import Iterator


@contextmanager
def native_stdout_silenced() -> Iterator[None]:
    """Point file descriptor 1 at /dev/null for the duration (Python's own prints included)."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
