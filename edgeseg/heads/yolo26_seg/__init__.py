"""YOLO26 instance segmentation: no DFL (reg_max 1), one-to-many and one-to-one heads.

The default export keeps the one-to-many head (decoded with NMS, as Ultralytics' predict does
for it); an end-to-end export (``end2end=True``) keeps the one-to-one head the model was trained
to use NMS-free, decoded with Ultralytics' top-k and no NMS. Device half; graph half in :mod:`.graph`.
"""

from __future__ import annotations

from ..yolo_seg import YoloSegHead


class Yolo26SegHead(YoloSegHead):
    name = "yolo26-seg"
    refines = "yolo-seg"


HEAD = Yolo26SegHead()
