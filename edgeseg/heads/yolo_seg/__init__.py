"""YOLOv8 / YOLO11 (and YOLO12, YOLOv9) instance segmentation: DFL boxes, NMS.

Device half; the graph half is :mod:`.graph`.
"""

from __future__ import annotations

from ..base import Head


class YoloSegHead(Head):
    name = "yolo-seg"
    kind = "instances"

    def splittable(self, spec: dict) -> bool:
        return spec.get("layout") in ("concat", "end2end")

    def split(self, model, spec: dict, roles: list[dict]):
        return self._graph().split(model, spec, roles)

    def decoder(self, spec: dict, outputs: list[dict], names: list[str], input_hw: tuple[int, int]):
        from ...runtime.decode import YoloSegDecoder

        return YoloSegDecoder(spec, outputs, names, input_hw)

    def concat_classes(self, spec: dict) -> int | None:
        return int(spec["num_classes"]) if spec.get("layout") == "concat" else None

    def dud(self, report: dict) -> str | None:
        cos = report.get("cosine", {})
        if "cls" in cos and cos["cls"] < 0.2:
            return f"class scores lost their signal (cosine {cos['cls']} with FP32)"
        if report.get("detections_fp32") and not report.get("detections_converted"):
            return (f"it detects nothing on {report.get('images')} held-back images where FP32 finds "
                    f"{report['detections_fp32']} objects")
        kept = report.get("detections_kept")
        if report.get("detections_fp32", 0) >= 5 and kept is not None and kept < 0.5:
            return f"it keeps only {kept:.0%} of the FP32 detections on {report.get('images')} held-back images"
        return super().dud(report)


HEAD = YoloSegHead()
