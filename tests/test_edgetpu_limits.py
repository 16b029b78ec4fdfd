"""Coral's per-op limits, one case each way: the op view the predictor builds from the flatbuffer
(options, input shapes, constant inputs, output shapes), checked without converting a model."""

import json
from types import SimpleNamespace as NS

import numpy as np
import pytest
from conftest import FIXTURES

from edgeseg.convert.edgetpu import EDGETPU_OPS, LIMITS

# Coral's published table as data (source and revision inside), not edgeseg's predictor
CORAL = json.loads((FIXTURES / "coral_edgetpu_supported_ops.json").read_text())


def view(inputs, consts=None, outputs=None, **options):
    return NS(options=NS(**options), inputs=[np.array(s) for s in inputs],
              consts=consts or [None] * len(inputs), outputs=[np.array(s) for s in (outputs or [])])


CASES = [
    # (op, view, refused?)
    ("SOFTMAX", view([[1, 1000]]), False),  # a classifier's softmax: one axis
    ("SOFTMAX", view([[1, 2, 100, 100]]), True),  # YOLO11's attention map
    ("SOFTMAX", view([[1, 20000]]), True),  # over 16,000 elements
    ("STRIDED_SLICE", view([[1, 8, 8, 32]] * 4, [None, None, None, np.array([1, 1, 1, 1])]), False),
    ("STRIDED_SLICE", view([[1, 8, 8, 32]] * 4, [None, None, None, np.array([1, 2, 2, 1])]), True),
    ("STRIDED_SLICE", view([[1, 8, 8, 32]] * 4, [None, None, None, np.array([1, 1, 1, 1])], ellipsisMask=1), True),
    ("CONCATENATION", view([[1, 8, 8, 16]] * 2, fusedActivationFunction=0), False),
    ("CONCATENATION", view([[1, 8, 8, 16]] * 2, fusedActivationFunction=1), True),
    ("CONCATENATION", view([[1, 8, 8, 16]] * 2, [None, np.zeros((1, 8, 8, 16))]), False),  # a zero pad
    ("CONCATENATION", view([[1, 8, 8, 16]] * 2, [None, np.ones((1, 8, 8, 16))]), True),
    ("MAX_POOL_2D", view([[1, 8, 8, 16]], fusedActivationFunction=3), True),
    ("CONV_2D", view([[1, 8, 8, 16]], dilationHFactor=2, dilationWFactor=2), False),
    ("CONV_2D", view([[1, 8, 8, 16]], dilationHFactor=1, dilationWFactor=2), True),
    ("PAD", view([[1, 8, 8, 16], [4, 2]], [None, np.array([[0, 0], [1, 1], [1, 1], [0, 0]])]), False),
    ("PAD", view([[1, 8, 8, 16], [4, 2]], [None, np.array([[1, 0], [1, 1], [1, 1], [0, 0]])]), True),
    ("MEAN", view([[1, 8, 8, 16], [2]], [None, np.array([1, 2])]), False),
    ("MEAN", view([[2, 8, 8, 16], [1]], [None, np.array([0])]), True),
    ("MEAN", view([[1, 8, 8, 6], [1]], [None, np.array([-1])]), True),  # channel reduction of 6
    ("SUM", view([[1, 100, 100, 32], [1]], [None, np.array([3])]), False),
    ("SUM", view([[4, 100, 32], [1]], [None, np.array([0])]), True),
    ("SQUEEZE", view([[1, 5, 10]], squeezeDims=[0]), False),
    ("SQUEEZE", view([[5, 1, 10]], squeezeDims=[1]), True),
    ("FULLY_CONNECTED", view([[1, 64]], outputs=[[1, 10]]), False),
    ("FULLY_CONNECTED", view([[1, 4, 64]], outputs=[[1, 4, 10]]), True),
    ("PACK", view([[8, 16]], axis=0), True),
]


@pytest.mark.parametrize("op,v,refused", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_coral_limit(op, v, refused):
    why = LIMITS[op](v)
    assert bool(why) is refused, why
    assert why is None or isinstance(why, str)


def test_every_op_in_corals_table_is_an_edgetpu_op():
    listed = {r["builtin"] for r in CORAL["ops"]}
    assert len(listed) == 28 and not listed - EDGETPU_OPS, sorted(listed - EDGETPU_OPS)


@pytest.mark.parametrize("op", [r["builtin"] for r in CORAL["ops"] if "No fused activation function" in r["limitations"]])
def test_ops_coral_lists_without_fused_activation(op):
    assert LIMITS[op](view([[1, 8, 8, 16]] * 2, fusedActivationFunction=0)) is None
    assert LIMITS[op](view([[1, 8, 8, 16]] * 2, fusedActivationFunction=1))  # RELU fused in: refused
