"""BiPer to hardware: a small BiPer CNN (int8 first / last layer, binary middle layer with a
per-channel scale and folded batch norm) through fpq.to_hls; C-sim == emulator == torch, atol=0."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.export.graph import read_graph
from fpq.testing.conformance import probe_inputs
from fpq.testing.networks import randomize_batchnorm
from fpq.nn import biper

pytestmark = pytest.mark.slow
OMEGA = 30.0


def test_biper_cnn_csim_bit_exact(tmp_path):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.Conv2d(4, 8, 3, padding=1),
                          nn.BatchNorm2d(8), nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 16, 10))
    randomize_batchnorm(model, mean=0.3, bias=0.2)   # folded into weights and biases
    q = fpq.convert(model, fmt="binary", inputs="int8", granularity="channel",
                    overrides=biper.end_layer_overrides(model), method="biper", omega=OMEGA)
    data = torch.rand(256, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    fpq.calibrate(q, [data], progress=False)
    with torch.no_grad():
        q.get_submodule("2").weight.mul_(4.0)  # spread the latent weights over several periods
    # a few BiPer training steps (both stages) so the weights and scales are trained ones
    y = torch.randint(0, 10, (256,), generator=torch.Generator().manual_seed(2))
    biper.train_two_stage(q, lambda ep: [(data[i:i + 64], y[i:i + 64]) for i in range(0, 256, 64)], (1, 1),
                          lr=1e-2, tau=1e-4)
    layer = q.get_submodule("2")
    assert isinstance(layer.fpq_weight, biper.BiPerWeightQuant)
    lat = layer.weight.detach()
    # latent weights beyond the first half period: the export must binarize them as BiPer does
    assert (torch.sign(lat) != torch.where(torch.sin(OMEGA * lat) >= 0, 1.0, -1.0)).any()
    path = str(tmp_path / "biper.onnx")
    fpq.export_qonnx(q, path, data[:1])
    proj = fpq.to_hls(path, tmp_path / "prj", backend="Vivado", io_type="io_parallel")
    x = probe_inputs(read_graph(path), 1000, seed=3)
    y_hls = proj.predict(x)
    y_emu = np.asarray(fpq.emulate(path, x), dtype=np.float64)
    with torch.no_grad():
        y_torch = q(torch.from_numpy(x)).double().numpy()
    assert np.unique(y_hls).size > 8, "outputs collapsed: the probe is not exercising the network"
    assert np.array_equal(y_hls, y_emu), f"C-sim != emulator at {np.argwhere(y_hls != y_emu)[:3].tolist()}"
    assert np.array_equal(y_hls, y_torch), "C-sim != torch"
    rep = fpq.verify(q, x[:200], project=proj, model=path)
    assert rep.exact, str(rep)
