"""Where the pipeline does each stage: a file's frames are letterboxed by the capture stage, so the
inference stage only infers (its speed is the pipeline's bound); a live frame, which may yet be
dropped, is letterboxed only once the inference stage takes it."""

import threading
import time

import numpy as np
import pytest

from edgeseg.runtime.decode import FrameResult
from edgeseg.runtime.pipeline import run_pipeline
from edgeseg.runtime.sources import Frame, Source


class Recorder:
    def __init__(self):
        self.pre_threads: list[str] = []
        self.infer_threads: list[str] = []

    def preprocess(self, img):
        self.pre_threads.append(threading.current_thread().name)
        time.sleep(0.002)
        return img.astype(np.float32), None

    def infer(self, x):
        self.infer_threads.append(threading.current_thread().name)
        return {"x": x}

    def decode(self, outs, lb):
        return FrameResult(4, 4)


@pytest.mark.parametrize("live", [False, True])
def test_preprocessing_runs_in_the_capture_stage_for_files_only(live):
    class Src(Source):
        name = "frames"

        def __iter__(self):
            for i in range(20):
                time.sleep(0.001 if live else 0)
                yield Frame(i, np.full((4, 4, 3), i, np.uint8), time.time(), self.name)

    Src.live = live
    model = Recorder()
    st = run_pipeline(model, Src(), [], annotate=False)
    assert st.frames == len(model.infer_threads) > 0
    assert set(model.infer_threads) == {"edgeseg-infer"}
    assert set(model.pre_threads) == {"edgeseg-infer" if live else "edgeseg-capture"}
    assert min(st.stage_ms["preprocess"]) >= 2.0  # still timed where it ran
