"""Sony IMX500 (Raspberry Pi AI Camera): the network runs in the sensor; frames arrive with its outputs.

On the Pi, picamera2's ``IMX500`` helper loads ``network.rpk`` into the sensor and each captured
request carries the output tensors (``CnnOutputTensor``, already dequantized to float32) and the
crop the sensor fed the network (``ScalerCrop``). So the camera *is* the backend here:
:class:`Imx500Camera` is a source whose frames carry their outputs and the mapping from network
input to frame pixels; the pipeline skips preprocessing and inference for them and decodes with
edgeseg's decoder (DFL, NMS, masks run on the Pi). ``network.rpk`` is made from the bundle's
``packerOut.zip`` by ``imx500-package`` (Raspberry Pi OS ``imx500-tools``) on first run.

Off the Pi, a bundle converted here replays the MCT-quantized model's recorded outputs, so that
``edgeseg eval`` scores what the quantized network computed.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from ...errors import EdgesegError, ToolchainMissing
from ..preprocess import Letterbox
from ..sources import Frame, Source, import_picamera2, retry_with_backoff
from . import Backend, ReplayBackend, Requirement, has_recorded_outputs

log = logging.getLogger(__name__)

# the network runs in the sensor: camera size and frame rate are options of `run --camera` instead
OPTIONS: dict = {}

PACKAGE_TOOL = "imx500-package"
INSTALL = "sudo apt install imx500-all python3-picamera2 (Raspberry Pi OS; venv with --system-site-packages)"
# without it, bundles converted on this host replay the outputs recorded at conversion
REQUIRES = Requirement("picamera2", "picamera2",
                       "sudo apt install imx500-all python3-picamera2 (Raspberry Pi OS, AI Camera)", replay=True)


def orient(a: np.ndarray, shape: list[int], name: str) -> np.ndarray:
    """One sensor output as the manifest's ``shape``.

    The sensor reports each tensor's dimensions fastest-first and picamera2 reads the data in
    Fortran order, so a tensor can arrive transposed; the shapes tell which (every edgeseg IMX500
    output has distinct dimensions after the batch).
    """
    want = tuple(shape[1:]) if len(shape) > 1 and shape[0] == 1 else tuple(shape)
    a = np.asarray(a, dtype=np.float32)
    if a.ndim == len(want) + 1 and a.shape[0] == 1:
        a = a[0]
    if a.shape == want:
        return a[None]
    if a.shape == want[::-1]:
        return np.ascontiguousarray(a.T)[None]
    raise EdgesegError(f"IMX500 output '{name}' has shape {a.shape}, expected {want}: the sensor runs a "
                       "different network than this bundle's; package this bundle's packerOut.zip again")


def sensor_mapping(roi: Any, input_wh: tuple[int, int],
                   frame_wh: tuple[int, int]) -> Letterbox:
    """The network input's place in the frame, as the Letterbox the decoder undoes.

    ``roi`` = (x, y, w, h) of the whole input tensor in frame pixels (picamera2's
    ``convert_inference_coords((0, 0, 1, 1), ...)``). The sensor crops and scales without padding,
    so the offsets are negative pads; x and y scale separately when the aspect is not preserved.
    """
    # picamera2 returns a libcamera Rectangle (older releases: an (x, y, w, h) tuple)
    if hasattr(roi, "width"):
        roi = (roi.x, roi.y, roi.width, roi.height)
    x, y, w, h = (float(v) for v in roi)
    if w <= 0 or h <= 0:
        raise EdgesegError(f"IMX500 reported an empty inference region {roi}")
    iw, ih = input_wh
    sx, sy = iw / w, ih / h
    return Letterbox(sx, sy, -x * sx, -y * sy, int(frame_wh[0]), int(frame_wh[1]), iw, ih)  # type: ignore[arg-type]


def network_rpk(bundle) -> Path:
    """``network.rpk`` for the bundle: packaged next to packerOut.zip once, on the Pi."""
    packer = bundle.file(bundle.manifest.model_files[0])
    rpk = packer.with_name("network.rpk")
    if rpk.is_file() and rpk.stat().st_mtime >= packer.stat().st_mtime:
        return rpk
    tool = shutil.which(PACKAGE_TOOL)
    if tool is None:
        raise ToolchainMissing(f"{packer}: needs {PACKAGE_TOOL} to make network.rpk ({INSTALL}), or run once: "
                               f"{PACKAGE_TOOL} -i {packer} -o {packer.parent}")
    out = packer.parent / ".rpk-work"
    shutil.rmtree(out, ignore_errors=True)
    r = subprocess.run([tool, "-i", str(packer), "-o", str(out)], capture_output=True, text=True)
    made = out / "network.rpk"
    if r.returncode != 0 or not made.is_file():
        shutil.rmtree(out, ignore_errors=True)
        said = (r.stderr or r.stdout).strip().splitlines()
        raise EdgesegError(f"{packer}: {PACKAGE_TOOL} failed "
                           f"(exit {r.returncode}: {said[-1] if said else 'no output'}); "
                           f"run it by hand for its whole log: {PACKAGE_TOOL} -i {packer} -o {packer.parent}")
    made.replace(rpk)  # atomic: a half-written rpk is never loaded
    shutil.rmtree(out, ignore_errors=True)
    return rpk


class Imx500Camera(Source):
    """The AI Camera as a source: each frame carries the sensor network's outputs."""

    live = True

    def __init__(self, bundle, width: int | None = None, height: int | None = None, fps: float | None = None,
                 aspect: str = "preserve", picamera2_module: Any = None, retries: int = 10, backoff: float = 0.5,
                 on_event: Callable[[str], None] | None = None):
        if picamera2_module is None:
            try:
                picamera2_module = import_picamera2(devices=True)  # the Pi's libcamera binding
            except ToolchainMissing:
                raise ToolchainMissing(f"{bundle.path}: the IMX500 runs on a Raspberry Pi with the AI Camera; "
                                       f"install {INSTALL}") from None
        pc = picamera2_module
        self.name = "imx500"
        self.outputs = bundle.manifest.outputs
        rpk = network_rpk(bundle)
        try:
            # IMX500() must exist before Picamera2(): it loads the network firmware into the sensor
            self.imx = pc.devices.IMX500(str(rpk))
            self.cam = pc.Picamera2(self.imx.camera_num)
        except (RuntimeError, IndexError, OSError) as e:  # no sensor node, no camera, firmware refused
            raise EdgesegError(f"--camera: no Raspberry Pi AI Camera (IMX500) found ({e}); check the ribbon cable "
                               "and `rpicam-hello --list-cameras`; a bundle for another camera needs another "
                               "target") from None
        self.preserve_aspect = aspect == "preserve"
        self.fps = float(fps or 30)
        cfg = self.cam.create_preview_configuration(main={"size": (width or 640, height or 480), "format": "RGB888"},
                                                    controls={"FrameRate": self.fps}, buffer_count=12)
        self.imx.show_network_fw_progress_bar()
        self._start_stream(cfg)
        self.cfg = cfg
        self.input_wh = tuple(int(v) for v in self.imx.get_input_size())
        self.retries, self.backoff, self.reconnects, self._closed = retries, backoff, 0, False
        self.on_event = on_event or (lambda msg: log.warning("%s", msg))

    def _start_stream(self, cfg: Any) -> None:
        self.cam.start(cfg)
        if self.preserve_aspect:  # once the camera runs, as picamera2's own IMX500 demos do
            self.imx.set_auto_aspect_ratio()

    def _restart(self, why: str) -> bool:
        # the imx500 driver keeps the network firmware and uploads it again at stream start
        # (raspberrypi/linux#7323), so restarting the stream is enough; no IMX500() again
        def reopen() -> bool:
            try:
                self.cam.stop()
            except Exception:  # noqa: BLE001 - a stalled camera may fail to stop as well
                pass
            try:
                self._start_stream(self.cfg)
            except Exception:  # noqa: BLE001
                return False
            return True

        return retry_with_backoff(self, why, "restarting the camera", "restarted", reopen)

    def __iter__(self) -> Iterator[Frame]:
        i = 0
        while not self._closed:
            try:
                req = self.cam.capture_request()
            except Exception as e:  # noqa: BLE001 - libcamera reports a lost camera in several ways
                if not self._restart(f"capture failed ({type(e).__name__}: {e})"):
                    return
                continue
            try:
                img = np.ascontiguousarray(req.make_array("main")[:, :, :3])
                md = req.get_metadata()
            finally:
                req.release()
            arrays = self.imx.get_outputs(md, add_batch=False)
            if arrays is None:  # the network is still loading, or the sensor skipped this frame
                continue
            if len(arrays) != len(self.outputs):
                raise EdgesegError(f"the IMX500 sent {len(arrays)} outputs, this bundle expects {len(self.outputs)}")
            outs = {o["name"]: orient(a, o["shape"], o["name"]) for o, a in zip(self.outputs, arrays)}
            roi = self.imx.convert_inference_coords((0.0, 0.0, 1.0, 1.0), md, self.cam)
            lb = sensor_mapping(roi, self.input_wh, (img.shape[1], img.shape[0]))
            yield Frame(i, img, time.time(), self.name, outputs=outs, mapping=lb)
            i += 1

    def close(self) -> None:
        self._closed = True
        try:
            self.cam.stop()
            self.cam.close()  # libcamera holds the camera until then: a second open would fail
        except Exception:  # noqa: BLE001 - a lost camera may fail to stop as well
            pass


class Imx500Backend(Backend):
    """On the Pi: inference happens in the sensor, so ``run`` is never reached for camera frames."""

    name = "imx500"
    camera = Imx500Camera

    def run(self, x: np.ndarray) -> dict[str, np.ndarray]:
        raise EdgesegError(f"{self.bundle.path}: an IMX500 bundle runs inside the camera; use --camera 0 "
                           "(files and streams cannot be fed to the sensor's network)")


class ReplayImx500Backend(ReplayBackend):
    """Host stand-in: the MCT-quantized network's outputs recorded at conversion."""

    name = "imx500-replay"


def BACKEND(bundle, **options: Any) -> Backend:  # noqa: N802 - the registry's factory name
    try:
        import_picamera2()  # present on Raspberry Pi OS only; a numpy mismatch is reported, not skipped
        return Imx500Backend(bundle, **options)
    except ToolchainMissing:
        pass
    if has_recorded_outputs(bundle):
        return ReplayImx500Backend(bundle, **options)
    raise ToolchainMissing(f"{bundle.path}: IMX500 bundles run on a Raspberry Pi with the AI Camera ({INSTALL}); "
                           "on this machine only bundles converted here can be evaluated (recorded outputs)")
