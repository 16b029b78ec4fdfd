"""A check run when a bundle is loaded: one known input, compared per output role with FP32.

MNN keeps a tensor's int8 parameters on the tensor; when a model gives one tensor two sets (two
quantized convolutions reaching it through concats with different ranges), each load picks one
by memory address and runs without an error, detecting less (measured: class-score cosine 0.63
instead of 0.995 for one YOLOv8n-seg file, depending only on the loading process's arguments).
edgeseg's own MNN calibration gives such tensors one range (``convert.toolchains.mnn.int8.shared_ranges``),
but bundles made by MNN's own tool cannot be fixed that way, so bundles of such runtimes carry a
probe (a letterboxed frame from the held-back calibration images and the FP32 model's outputs for
it). A load that does not reproduce it is reported and reopened; after ``ATTEMPTS`` the last one
is used with a warning that says what to do, never silently.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np

PROBE_FILE = "load_check.npz"
MIN_COSINE = 0.97  # healthy loads measured at 0.98 or more per role; bad ones 0.60-0.98 (class, proto)
ATTEMPTS = 3


def write_probe(folder: Path, frame: np.ndarray, reference: dict[str, np.ndarray], manifest) -> None:
    """Store ``frame`` (already letterboxed to the input size) and the FP32 role vectors for it."""
    from ..fidelity import role_vectors

    roles = role_vectors(reference, manifest)
    np.savez_compressed(folder / PROBE_FILE, frame=frame,
                        **{f"ref_{k}": v.astype(np.float16) for k, v in roles.items()})


def probe_cosines(bundle, run: Callable[[np.ndarray], dict[str, np.ndarray]]) -> dict[str, float] | None:
    """Cosine per role between this load's outputs on the probe and the stored FP32 ones."""
    from ..fidelity import cosine, role_vectors
    from .preprocess import InputSpec, preprocess

    path = bundle.path / PROBE_FILE
    if not path.is_file():
        return None
    m = bundle.manifest
    with np.load(path) as z:
        frame = z["frame"]
        refs = {k[4:]: z[k].astype(np.float64) for k in z.files if k.startswith("ref_")}
    x, _ = preprocess(frame, InputSpec.from_dict(m.input))
    got = role_vectors(run(x), m)
    return {k: round(cosine(got[k], refs[k]), 5) for k in refs if k in got}


def open_checked(bundle, open_once: Callable[[], object], log: Callable[[str], None] | None = None):
    """``open_once()`` until its outputs on the probe follow FP32 (at most ``ATTEMPTS`` times)."""
    log = log or (lambda msg: print(msg, file=sys.stderr))
    for attempt in range(1, ATTEMPTS + 1):
        backend = open_once()
        cos = probe_cosines(bundle, backend.run)  # type: ignore[attr-defined]
        if not cos or min(cos.values()) >= MIN_COSINE:  # no float role to compare (a labels output): nothing to check
            return backend
        if attempt < ATTEMPTS:
            log(f"warning: {bundle.path}: load {attempt} of the {bundle.manifest.runtime} runtime computes far from "
                f"the model on its probe (cosine {cos}); reopening")
            backend.close()  # type: ignore[attr-defined]
    log(f"warning: {bundle.path}: the {bundle.manifest.runtime} runtime did not reproduce the model in {ATTEMPTS} "
        f"loads (probe cosine {cos}); detections will be degraded: convert with --option int8_tool=edgeseg, or "
        "use an FP16 or int8w bundle")
    return backend
