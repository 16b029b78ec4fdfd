"""Semantic segmentation: [N,C,H,W] logits (argmax, or a threshold on one channel) or [N,H,W] labels.

Device half; the graph half is :mod:`.graph`.
"""

from __future__ import annotations

from ..base import Head


class SemanticHead(Head):
    name = "semantic"
    kind = "semantic"

    def decoder(self, spec: dict, outputs: list[dict], names: list[str], input_hw: tuple[int, int]):
        from ...runtime.decode import SemanticDecoder

        return SemanticDecoder(spec, outputs, names, input_hw)

    def dud(self, report: dict) -> str | None:
        agree = report.get("pixel_agreement")
        if agree is not None and agree < 0.5:
            return f"its label maps agree with FP32 on only {agree:.0%} of the pixels"
        return super().dud(report)


HEAD = SemanticHead()
