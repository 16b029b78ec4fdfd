"""Run an int8 ncnn bundle with each of ncnn's int8 convolution kernels on the same images and
print, as JSON, how far the Winograd ones are from the plain int8 GEMM.

ncnn's own ncnn2table quantizes the weights of 3x3 stride-1 convolutions to 6 bits (31/max|w|)
so that its int8 Winograd F(4,3) kernel cannot overflow; edgeseg keeps 8 bits (127/max|w|).
Integer Winograd is exact, so any difference here is an overflow. Used by the tests on this
machine and on the emulated Raspberry Pi, whose ARM kernels are other code.

    python tests/ncnn_kernels.py BUNDLE IMAGES_DIR N
"""

import json
import sys
from pathlib import Path

import cv2
import ncnn
import numpy as np

from edgeseg.runtime.model import Model

KERNELS = {"winograd43": (True, True), "winograd23": (True, False), "gemm": (False, False)}


def main(bundle: str, images: str, n: int) -> dict:
    model = Model.load(bundle)
    outs = [o.get("blob", o["name"]) for o in model.manifest.outputs]
    nets = {}
    for name, (winograd, f43) in KERNELS.items():
        net = ncnn.Net()
        net.opt.num_threads = 1
        net.opt.use_fp16_packed = net.opt.use_fp16_storage = net.opt.use_fp16_arithmetic = False
        net.opt.use_winograd_convolution = winograd
        net.opt.use_winograd43_convolution = f43
        net.opt.use_winograd23_convolution = True
        net.load_param(str(Path(bundle) / model.manifest.model_files[0]))
        net.load_model(str(Path(bundle) / model.manifest.model_files[1]))
        nets[name] = net
    worst = {"winograd43": 0.0, "winograd23": 0.0}
    files = sorted(Path(images).iterdir())[:n]
    for f in files:
        x, _ = model.preprocess(cv2.imread(str(f)))
        got = {}
        for name, net in nets.items():
            ex = net.create_extractor()
            ex.input("in0", ncnn.Mat(np.ascontiguousarray(x[0])))
            got[name] = [np.array(ex.extract(o)[1]) for o in outs]
            del ex
        for name in worst:
            for a, b in zip(got[name], got["gemm"]):
                worst[name] = max(worst[name], float(np.abs(a - b).max()))
    model.close()
    return {"images": len(files), "max_abs_diff_vs_gemm": worst}


if __name__ == "__main__":
    print(json.dumps(main(sys.argv[1], sys.argv[2], int(sys.argv[3]))))
