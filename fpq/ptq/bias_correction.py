"""Bias correction (Nagel et al. 2019, empirical form): per output channel, add to the bias the
mean output error the weight rounding leaves on the layer's real (quantized) inputs:

    b += (W_float - W_q) @ mean(x)        (for a convolution: mean over im2col rows, padding
                                           zeros included, i.e. exactly the conv's own sums)

Layer by layer in execution order, so each layer sees inputs already corrected upstream.
``W_float`` are the weights before rounding (fpq.ptq passes the float weights from before
gptq / learned_round; alone, the layer's current float weights). ``reference="float"``: the
empirical form against the float network, b += W_float @ mean(x_float) - W_q @ mean(x), x_float
the layer's inputs in the float network, which also removes the mean shift that upstream
activation quantization left.

Written here rather than with Brevitas' ``bias_correction_mode``: that one takes the layer's own
weight parameter as the float reference, and after GPTQ / learned rounding fpq stores the
rounded grid values in that parameter, so Brevitas would measure no error and correct nothing.
(Standalone on unrounded weights it computes the same mean difference.) Afterwards each corrected
bias' scale is re-chosen by the max rule of its format (e.g. int16) so the new bias is not
clipped by the old scale. A layer without a bias cannot be corrected without adding a parameter
the quantized model does not have: that is an error naming the layer.
"""
from __future__ import annotations

import torch

from ..nn.calibration_stats import choose_scale
from . import _common as C


@torch.no_grad()
def mean_inputs(q, names, batches) -> dict:
    """{name: mean im2col row (float64) of the layer's inputs over all calibration batches}."""
    acc = {n: [None, 0] for n in names}

    def recorder(n):
        def rec(mod, inp):
            rows = C.im2col(mod, C._value(inp[0]).detach().to(torch.float64))
            s = rows.sum(0)
            acc[n][0] = s if acc[n][0] is None else acc[n][0] + s
            acc[n][1] += rows.shape[0]
        return rec
    C.run_until(q, batches, {n: recorder(n) for n in names})
    return {n: a[0] / a[1] for n, a in acc.items()}


def run(q, batches, *, seed: int = 0, progress: bool = True, float_weights: dict | None = None,
        reference: str = "quantized", report: dict | None = None, **_):
    from tqdm.auto import tqdm

    C.check_reference("bias_correction", reference)
    layers = C.weight_layers(q)
    no_bias = [n for n, m in layers if m.bias is None]
    if no_bias:
        raise ValueError(f"bias_correction: layer(s) {no_bias} have no bias to correct; convert a "
                         "model whose Linear/Conv layers have bias=True, or leave out bias_correction")
    float_weights = float_weights or {n: m.weight.detach().clone() for n, m in layers}
    unknown = sorted(set(float_weights) - {n for n, _ in layers})
    if unknown:
        raise ValueError(f"bias_correction: float_weights names {unknown}, which are not weight layers "
                         f"of the model; its weight layers: {[n for n, _ in layers]}")
    float_biases = {n: m.bias.detach().clone() for n, m in layers}   # before any correction
    delta = {}
    if reference == "float":   # the float network does not change with the corrections: one pass
        with C.float_network(q, float_weights, float_biases):
            x_float = mean_inputs(q, [n for n, _ in layers], batches)
    for n, m in tqdm(layers, desc="fpq.ptq bias_correction", disable=not progress):
        w_f = float_weights.get(n, m.weight.detach())
        w_q = C.quantized_weight(m)
        g = C.groups_of(m)
        x_q = mean_inputs(q, [n], batches)[n]
        x_f = x_float[n] if reference == "float" else x_q
        corr = C.w2d(w_f, g).to(torch.float64) @ x_f - C.w2d(w_q, g).to(torch.float64) @ x_q
        with torch.no_grad():
            m.bias.copy_((m.bias.to(torch.float64) + corr).to(m.bias.dtype))
            tq = m.fpq_bias
            if tq is not None and tq.scale_kind != "none":
                tq.set_scale(choose_scale(tq, m.bias.detach().abs().to(torch.float64), "max"))
        delta[n] = float(corr.abs().max())
    if report is not None:
        report["bias_correction"] = {"max_change": delta}
