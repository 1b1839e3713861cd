"""Bias correction (Nagel et al. 2019, empirical form) through Brevitas' ``bias_correction_mode``.

Brevitas' implementation works unchanged with fpq's quantizers: for each layer it compares the
mean output with quantization disabled (float weights) and enabled, on the same input, and adds
the per-channel difference to the bias. fpq then re-chooses each corrected bias' scale (max rule
of the bias format, e.g. int16) so that the new bias is not clipped by the old scale, and the
bias stays an fpq-quantized value. A layer without a bias cannot be corrected without adding a
parameter the quantized model does not have (Brevitas would add an unquantized one): that is an
error naming the layer.
"""
from __future__ import annotations

import torch

from ..nn.calibration_stats import choose_scale
from . import _common as C


def run(q, batches, *, seed: int = 0, progress: bool = True, report: dict | None = None, **_):
    from brevitas.graph.calibrate import bias_correction_mode
    from tqdm.auto import tqdm

    layers = C.weight_layers(q)
    no_bias = [n for n, m in layers if m.bias is None]
    if no_bias:
        raise ValueError(f"bias_correction: layer(s) {no_bias} have no bias to correct; convert a "
                         "model whose Linear/Conv layers have bias=True, or leave out bias_correction")
    before = {n: m.bias.detach().clone() for n, m in layers}
    with C.eval_mode(q), torch.no_grad(), bias_correction_mode(q, skip_if_no_bias=True):
        for b in tqdm(batches, desc="fpq.ptq bias_correction", disable=not progress):
            q(C.first_tensor(b))
    delta = {}
    with torch.no_grad():
        for n, m in layers:
            tq = m.fpq_bias
            if tq is not None and tq.scale_kind != "none":
                tq.set_scale(choose_scale(tq, m.bias.detach().abs().to(torch.float64), "max"))
            delta[n] = float((m.bias - before[n]).abs().max())
    if report is not None:
        report["bias_correction"] = {"max_change": delta}
