"""GPTQ (Frantar et al. 2022) on any fpq weight format.

Brevitas' ``gptq_mode`` is reused as is: it quantizes columns through the layer's weight proxy,
which here runs fpq's tensor quantizer, so every fpq format (int, fixed, minifloat with or without
subnormals, binary) gets the same second-order error feedback (checked for int4 and e2m1 in
tests/test_ptq.py). fpq adds two things Brevitas does not do:
  * the weights are written back as their quantized values (on the grid of the unchanged scale),
    so export / emulate / HLS read the GPTQ result directly;
  * a guard: GPTQ is a greedy heuristic and can, on small calibration sets, end with a larger
    layer-output error than round-to-nearest. Layer by layer (inputs from the already processed
    model) the result is kept only when its error is not larger; otherwise the layer's weights
    go back to round-to-nearest of the original float weights.
"""
from __future__ import annotations

import warnings

import torch

from . import _common as C


def run(q, batches, *, seed: int = 0, progress: bool = True, gptq_act_order: bool = False,
        max_rows: int = 8192, report: dict | None = None):
    with warnings.catch_warnings():   # brevitas.graph imports warn about optional kernels
        warnings.simplefilter("ignore")
        from brevitas.graph.gptq import gptq_mode
    from tqdm.auto import tqdm

    layers = C.weight_layers(q)
    for name, m in layers:
        C.check_groups(name, m)
    original = {name: m.weight.detach().clone() for name, m in layers}
    torch.manual_seed(seed)
    with C.eval_mode(q), torch.no_grad():
        with gptq_mode(q, use_quant_activations=True, act_order=gptq_act_order,
                       create_weight_orig=False) as g:
            for _ in tqdm(range(g.num_layers), desc="fpq.ptq gptq", disable=not progress):
                for b in batches:
                    g.model(C.first_tensor(b))
                g.update()
    # guard + write back, in execution order (a reverted layer changes what later layers see)
    kept = {}
    for name, m in layers:
        x = C.layer_inputs(q, [name], batches, max_rows, seed)[name]
        w_gptq = C.quantized_weight(m)
        w_rtn = C.quantized_weight(m, original[name])
        e_gptq = C.layer_error(x, original[name], w_gptq)
        e_rtn = C.layer_error(x, original[name], w_rtn)
        keep = e_gptq <= e_rtn
        C.set_weight(m, w_gptq if keep else w_rtn)
        kept[name] = {"kept": keep, "error": min(e_gptq, e_rtn), "error_rtn": e_rtn}
    if report is not None:
        report["gptq"] = kept
    return original
