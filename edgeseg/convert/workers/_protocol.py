"""The one contract between edgeseg and a worker: a spec file in, a result file out.

    <env>/bin/python WORKER.py SPEC.json

The worker's job fills ``result``; whatever it raises becomes ``result["error"]`` (one line, the
traceback goes to the log), and the result file is written either way so that edgeseg reports the
failure instead of a missing file. Imported by the workers from their own folder, never by edgeseg.
"""

from __future__ import annotations

import json
import sys
import traceback
from collections.abc import Callable


def run(job: Callable[[dict, dict], None]) -> None:
    with open(sys.argv[1]) as f:
        spec = json.load(f)
    result: dict = {}
    try:
        job(spec, result)
    except BaseException as e:  # noqa: BLE001 - reported to edgeseg through the result file
        traceback.print_exc()
        msg = str(e).strip()
        result["error"] = f"{type(e).__name__}: {msg.splitlines()[-1] if msg else ''}"
    with open(spec["result"], "w") as f:
        json.dump(result, f)
