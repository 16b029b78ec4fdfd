"""Write evenly spaced frames of a video (or camera recording) as a calibration folder.

    python calibration/sample_frames.py deployment.mp4 calib/ --every 2.0 [--max 300]
"""

from __future__ import annotations

import argparse
import math
from pathlib import Path

import cv2


def sample(video: Path, out: Path, every_s: float = 2.0, max_frames: int = 300) -> int:
    """One frame per ``every_s`` seconds (at most ``max_frames``), spread evenly over the video by
    the same reader ``edgeseg convert --calib video.mp4`` uses."""
    from edgeseg.convert.calibration import video_frames

    cap = cv2.VideoCapture(str(video))
    if not cap.isOpened():
        raise SystemExit(f"error: {video}: cannot open this video; re-encode it as H.264 MP4")
    fps = cap.get(cv2.CAP_PROP_FPS) or 30.0
    total = int(cap.get(cv2.CAP_PROP_FRAME_COUNT))
    cap.release()
    count = min(max_frames, max(math.ceil(total / max(every_s * fps, 1.0)), 1))
    out.mkdir(parents=True, exist_ok=True)
    return len(video_frames(video, count, out))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("video", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--every", type=float, default=2.0, help="seconds between frames")
    ap.add_argument("--max", type=int, default=300)
    a = ap.parse_args()
    print(f"{sample(a.video, a.out, a.every, a.max)} frames -> {a.out}")


if __name__ == "__main__":
    main()
