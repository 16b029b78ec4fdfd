"""Coral's per-op limits, one case each way: the op view the predictor builds from the flatbuffer
(options, input shapes, constant inputs, output shapes), checked without converting a model."""

import json
from types import SimpleNamespace as NS

import numpy as np
import pytest
from conftest import FIXTURES

from edgeseg.convert.toolchains.tflite.edgetpu import EDGETPU_OPS, LIMITS

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


NO_FUSED_ACTIVATION = [r["builtin"] for r in CORAL["ops"] if "No fused activation function" in r["limitations"]]


@pytest.mark.parametrize("op", NO_FUSED_ACTIVATION)
def test_ops_coral_lists_without_fused_activation(op):
    assert LIMITS[op](view([[1, 8, 8, 16]] * 2, fusedActivationFunction=0)) is None
    assert LIMITS[op](view([[1, 8, 8, 16]] * 2, fusedActivationFunction=1))  # RELU fused in: refused


# edgetpu_compiler's output as Coral's own people posted it: with -s, from a Coral maintainer in
# https://github.com/google-coral/edgetpu/issues/60 (the first rows of its op table, verbatim) ...
COMPILER_LOG_S = """Edge TPU Compiler version 2.1.302470888

Model compiled successfully in 12264 ms.

Input model: model2.tflite
Input size: 8.11MiB
Output model: model2_edgetpu.tflite
Output size: 9.47MiB
On-chip memory used for caching model parameters: 6.86MiB
On-chip memory remaining for caching model parameters: 7.75KiB
Off-chip memory used for streaming uncached model parameters: 1.22MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 93
Operation log: model2_edgetpu.log

Model successfully compiled but not all operations are supported by the Edge TPU. A percentage of the model will \
instead run on the CPU, which is slower. If possible, consider updating your model to use only operations supported \
by the Edge TPU. For details, visit g.co/coral/model-reqs.
Number of operations that will run on Edge TPU: 83
Number of operations that will run on CPU: 10

Operator                       Count      Status

LOGISTIC                       1          More than one subgraph is not supported
ADD                            10         Mapped to Edge TPU
CONCATENATION                  1          More than one subgraph is not supported
CONCATENATION                  3          Mapped to Edge TPU
"""
# ... and without -s, every op mapped (https://github.com/google-coral/edgetpu/issues/572)
COMPILER_LOG = """Edge TPU Compiler version 16.0.384591198
Started a compilation timeout timer of 180 seconds.

Model compiled successfully in 542 ms.

Input model: quantized_model.tflite
Input size: 4.04MiB
Output model: quantized_model_edgetpu.tflite
Output size: 4.13MiB
On-chip memory used for caching model parameters: 604.50KiB
On-chip memory remaining for caching model parameters: 511.50KiB
Off-chip memory used for streaming uncached model parameters: 3.45MiB
Number of Edge TPU subgraphs: 1
Total number of operations: 50
Operation log: quantized_model_edgetpu.log
See the operation log file for individual operation details.
Compilation child process completed within timeout period.
Compilation succeeded!
"""


def test_compiler_log_parser_reads_the_published_logs():
    from edgeseg.convert.toolchains.tflite.edgetpu import parse_compiler_log

    assert parse_compiler_log(COMPILER_LOG_S) == {
        "version": "2.1.302470888", "on_chip_used": round(6.86 * 2**20), "on_chip_remaining": round(7.75 * 2**10),
        "off_chip_used": round(1.22 * 2**20), "subgraphs": 1, "op_count": 93, "ops_on_edgetpu": 83, "ops_on_cpu": 10,
        "op_table": [{"op": "LOGISTIC", "count": 1, "status": "More than one subgraph is not supported"},
                     {"op": "ADD", "count": 10, "status": "Mapped to Edge TPU"},
                     {"op": "CONCATENATION", "count": 1, "status": "More than one subgraph is not supported"},
                     {"op": "CONCATENATION", "count": 3, "status": "Mapped to Edge TPU"}]}
    assert parse_compiler_log(COMPILER_LOG) == {
        "version": "16.0.384591198", "on_chip_used": round(604.5 * 2**10), "on_chip_remaining": round(511.5 * 2**10),
        "off_chip_used": round(3.45 * 2**20), "subgraphs": 1, "op_count": 50, "ops_on_edgetpu": 50, "ops_on_cpu": 0}
