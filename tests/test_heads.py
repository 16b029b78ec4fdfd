"""The head-family registry and what each family refuses, with the export that works."""

import subprocess
import sys

import onnx
import pytest
from onnx import TensorProto, helper

from edgeseg.errors import EdgesegError
from edgeseg.heads import HEAD_TYPES, get_head


def test_registry_names_every_family_and_loads_without_onnx():
    assert set(HEAD_TYPES) == {"yolo-seg", "yolo26-seg", "semantic"}
    code = ("import sys, importlib.abc\n"
            "class B(importlib.abc.MetaPathFinder):\n"
            "    def find_spec(self, n, p, t=None):\n"
            "        if n.split('.')[0] in ('onnx', 'torch'): raise ImportError(n)\n"
            "sys.meta_path.insert(0, B())\n"
            "from edgeseg.heads import HEAD_TYPES, get_head\n"
            "print([get_head(n).kind for n in HEAD_TYPES])\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert r.returncode == 0 and "instances" in r.stdout, r.stderr


def test_unknown_head_type_names_the_known_ones():
    with pytest.raises(ValueError, match="yolo26-seg"):
        get_head("yolov5")


def _no_head_convs() -> onnx.ModelProto:
    nodes = [helper.make_node("Identity", ["x"], ["output0"]), helper.make_node("Identity", ["p"], ["output1"])]
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 41, 2100]),
                                helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 32, 80, 80])],
                          [helper.make_tensor_value_info("output0", TensorProto.FLOAT, [1, 41, 2100]),
                           helper.make_tensor_value_info("output1", TensorProto.FLOAT, [1, 32, 80, 80])])
    return helper.make_model(g)


def test_prompt_free_yoloe_is_refused_with_the_export_that_splits():
    spec = {"type": "yolo-seg", "layout": "concat", "num_classes": 5, "num_masks": 32, "reg_max": 16,
            "ultralytics_head": "YOLOESegment"}
    roles = [{"name": "output0", "role": "det"}, {"name": "output1", "role": "protos"}]
    with pytest.raises(EdgesegError, match=r"set_classes.*--no-split"):
        get_head("yolo-seg").split(_no_head_convs(), spec, roles)
    with pytest.raises(EdgesegError, match="no per-scale head convolutions"):  # any other graph: the general advice
        get_head("yolo-seg").split(_no_head_convs(), dict(spec, ultralytics_head="Segment"), roles)
