"""Write the golden QONNX files of the small examples, with inputs and bit-exact outputs.

    .venv/bin/python tests/golden/make_golden.py

Each case is a seeded float model from ``fpq.testing.networks`` converted with ``fpq.convert``
and exported with ``fpq.export_qonnx``: ``<case>.onnx`` plus ``<case>.npz`` holding ``x``
(off-grid float32 inputs, a third of them out of range) and ``y`` (the emulator's output, which
the torch model reproduced bit for bit when the file was written). ``tests/test_export_golden.py``
checks that today's emulator, qonnx executor and export still give exactly these outputs.
"""
from __future__ import annotations

import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", ".."))

import fpq  # noqa: E402
from fpq.testing.networks import MODELS  # noqa: E402
from fpq.export.graph import read_graph  # noqa: E402
from fpq.verification import random_inputs  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
CASES = {  # name: (model, convert kwargs)
    "mlp_int8": ("mlp", {"fmt": "int8"}),
    "mlp_e4m3": ("mlp", {"fmt": "e4m3"}),
    "conv1d_e2m1": ("conv1d", {"fmt": "e2m1"}),
    "conv2d_bn_int4": ("conv2d_bn", {"fmt": "int4"}),
    "residual_fixed8_3": ("residual", {"fmt": "fixed<8,3>"}),
    "mlp_mixed": ("mlp", {"weights": "e2m1", "activations": "e3m2", "overrides": {"6": {"weights": "int8"}}}),
}
N = 64


def build(name):
    model_name, kwargs = CASES[name]
    model, shape = MODELS[model_name]()
    return fpq.convert(model, **kwargs), shape


def main():
    for name in CASES:
        q, shape = build(name)
        path = fpq.export_qonnx(q, os.path.join(HERE, f"{name}.onnx"), torch.zeros(1, *shape))
        x = random_inputs(read_graph(path), N, seed=0)
        y = np.asarray(fpq.emulate(path, x), dtype=np.float64)
        with torch.no_grad():
            yt = q(torch.from_numpy(x)).to(torch.float64).numpy()
        if not np.array_equal(y, yt):
            raise SystemExit(f"{name}: torch and emulator disagree; not writing a golden file")
        np.savez(os.path.join(HERE, f"{name}.npz"), x=x, y=y)
        print(f"wrote {name}.onnx / .npz ({os.path.getsize(path)} bytes)")


if __name__ == "__main__":
    main()
