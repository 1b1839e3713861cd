"""fpq.ptq on weight-only models (``fpq.convert(..., scope="modules")``, fpq.nn.weight_only).

    q = fpq.convert(bert, weights="int4", scope="modules", group_size=128)
    fpq.ptq(q, batches, methods=["signround"])      # or ["gptq"], ["owq"]

``batches``: what the model is called with: a dict of tensors (``q(**b)``: a Hugging Face model's
tokenizer output), a tuple / list (``q(*b)``) or a tensor (``q(b)``). Every method chooses the
rounding of the weights (one per call) and leaves grid values of each layer's format at its
(possibly new) scales. Methods:

* ``gptq``  GPTQ (Frantar et al. 2022), layer by layer in execution order on the inputs of the
  already quantized model, over the per-tensor / channel / group scales fixed at conversion.
  Brevitas' ``gptq_mode`` (used by fpq's graph-model GPTQ) needs Brevitas quant layers, which
  weight-only layers are not, hence the compact implementation here (``gptq_columns``).
* ``owq``   OWQ (Lee et al. 2024): per layer, input column j's sensitivity is
  H_jj * ||W[:, j] - RTN(W)[:, j]||^2 (H = X^T X over the calibration rows); the ``owq_ratio``
  most sensitive columns stay in ``keep_format`` (``keep_cols``; default float16 "e5m10", as in
  the paper: no scale metadata and exact products with float32 inputs; "int8" or another format
  wider than the layer's gets a float16 scale per output row), the scales are re-fit without
  them and the rest is rounded by GPTQ with the kept columns ordered last, so they absorb the
  error feedback. ``fpq.nn.weight_only.effective_bits`` counts them (their width plus a 16-bit
  index each, and the per-row scales of a scaled keep format).
* ``gwq`` and ``mixed_precision``  GWQ's gradient-located sparse outliers and the Fisher-importance
  per-layer format allocator under an average-bit budget (fpq/ptq/importance.py).
  ``mixed_precision`` may be listed with one rounding method: it chooses the formats first.
* ``signround``  SignRound (Cheng et al. 2023, the method of Intel's auto-round; fpq/ptq/signround.py).
* ``mg_ptq``  MG-PTQ's graph-neural-network allocator of per-column formats under an average-bit
  budget (a lower base format with the columns it selects kept in a wider one; fpq/ptq/mg_ptq.py).
  Like ``mixed_precision`` it may be listed with one rounding method, which then rounds the
  chosen formats (e.g. ``methods=["mg_ptq", "gptq"]``); the two allocators exclude each other.

Calibration rows of gptq / owq (``gptq_rows``): "relative" (default) weights each row (token) by
1 / the mean square of the layer's float output on it (normalized to mean 1), so that H and the
guard's error measure each token's error relative to its own output; "plain" is GPTQ's
X^T X. Why: on all-MiniLM-L6-v2 the [CLS] token carries a massive activation (the first FFN
output's norm is ~193 on it against ~6 on the other tokens), so with plain rows it makes ~96% of
that layer's output MSE and GPTQ trades every other token's accuracy for it (their largest error
doubled) while the next LayerNorm divides the [CLS] state by its huge norm anyway: int3 g128 GPTQ
fell below round-to-nearest (10-NN agreement 0.584 against 0.680, 256 held-out sentences), with
relative rows it is at 0.753 (int4: 0.870 against 0.849 plain, RTN 0.811).

Each method is guarded like fpq's graph-model GPTQ: per layer (gptq, owq: the layer-output error
mean((X (W - Wq)^T)^2)) or per block (signround: the block-output MSE against the float block),
the result is kept only when its error is not larger than round-to-nearest's (for owq: RTN with
the same kept columns), else the layer / block goes back to round-to-nearest.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from ..nn.weight_only import KEEP_FORMAT, check_weight_format, effective_bits, layer_mode, weight_only_layers
from ..numerics.torch_ops import ste_apply_scaled

METHODS = ("mixed_precision", "mg_ptq", "gptq", "owq", "gwq", "signround")
ALLOCATORS = ("mixed_precision", "mg_ptq")
ROUNDING = ("gptq", "owq", "gwq", "signround")
ROWS = ("relative", "plain")
OPTIONS = {"gptq": ("max_rows", "gptq_damp", "gptq_block", "gptq_rows"),
           "owq": ("max_rows", "gptq_damp", "gptq_block", "gptq_rows", "owq_ratio", "keep_format"),
           "gwq": ("gwq_ratio", "keep_format", "fisher_probes"),
           "mixed_precision": ("mp_bits", "mp_formats", "fisher_probes", "mp_sensitivity"),
           "signround": ("round_iters", "round_lr", "round_eval"),
           "mg_ptq": ("mg_bits", "mg_high", "mg_topk", "mg_steps", "max_rows")}


def call(model, b):
    if isinstance(b, dict):
        return model(**b)
    if isinstance(b, (tuple, list)):
        return model(*b)
    return model(b)


class _Stop(Exception):
    """Raised by a capture hook: the module of interest has seen its input."""


def call_captured(block, inputs):
    """``block`` called with captured (args, kwargs) (signround.capture)."""
    return block(*inputs[0], **inputs[1])


def each_call_input(q, module, batches, record, runner=call) -> None:
    """Run ``q`` (fast mode) on each batch (``runner(q, batch)``) until ``module`` is called, then
    stop that forward: ``record(args, kwargs)`` gets the module's inputs of each batch."""
    def hook(mod, args, kwargs):
        record(args, kwargs)
        raise _Stop
    h = module.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        with layer_mode(q, "fast"):
            for b in batches:
                try:
                    runner(q, b)
                except _Stop:
                    pass
    finally:
        h.remove()


def rows_of(layer, x: torch.Tensor) -> torch.Tensor:
    """The layer's dot-product rows: (rows, fan_in) with y = rows @ W2d.T."""
    if layer.op == "linear":
        return x.reshape(-1, x.shape[-1])
    c = layer.conv
    if layer.op == "conv1d":
        x = x.unsqueeze(-2)
        c = dict(kernel_size=(1, layer.weight.shape[-1]), stride=(1, c["stride"][0]), padding=(0, c["padding"][0]),
                 dilation=(1, c["dilation"][0]))
    else:
        c = dict(kernel_size=layer.weight.shape[-2:], stride=c["stride"], padding=c["padding"], dilation=c["dilation"])
    if layer.conv["groups"] != 1:
        raise ValueError(f"layer {layer.fpq_layer_name!r}: grouped convolutions are not supported by fpq.ptq's "
                         "weight-only methods")
    cols = F.unfold(x, **c)
    return cols.transpose(1, 2).reshape(-1, cols.shape[1])


@torch.no_grad()
def layer_rows(q, name, batches, max_rows: int = 8192, seed: int = 0, runner=call) -> torch.Tensor:
    """float64 (rows, fan_in) inputs of layer ``name`` on ``batches`` in the current quantized model
    (fast mode), at most ``max_rows`` sampled with ``seed``; each forward stops at the layer.
    ``q`` may be a block with ``batches`` its captured inputs and ``runner=call_captured``."""
    layer = q.get_submodule(name)
    parts = []

    each_call_input(q, layer, batches,
                    lambda args, kwargs: parts.append(rows_of(layer, args[0].detach().to(torch.float32))),
                    runner)
    if not parts:
        raise ValueError(f"fpq.ptq: layer {name!r} is not called by the model on these batches")
    x = torch.cat(parts)
    if x.shape[0] > max_rows:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_rows]]
    return x.to(torch.float64)


def column_quantizer(layer):
    """f(w_col (out,) float64, j) -> the column quantized as the layer quantizes column j."""
    with torch.no_grad():
        s = layer.fpq_weight.expand(layer.fpq_weight.scale()).detach()
    fmt, keep = layer.fpq_weight.fmt, set(layer.keep_cols.tolist())
    ks = layer.keep_scale.detach()

    def f(w, j):
        if j in keep:
            return layer.quantize_kept(w[:, None], ks).to(torch.float64)[:, 0]
        return ste_apply_scaled(w.to(torch.float32), fmt, s[:, j]).to(torch.float64)
    return f


@torch.no_grad()
def gptq_columns(w: torch.Tensor, h: torch.Tensor, quant, order, damp: float = 0.01, block: int = 128):
    """GPTQ's column loop: quantize the columns of ``w`` (out, n) in ``order`` with ``quant(col, j)``,
    spreading each column's error over the columns not yet quantized through the inverse Hessian
    ``h`` (n, n) (its Cholesky factor, lazy batch updates of ``block`` columns)."""
    order = torch.as_tensor(order)
    w = w[:, order].to(torch.float64).clone()
    h = h[order][:, order].to(torch.float64).clone()
    dead = torch.diag(h) == 0
    h[dead, dead] = 1.0
    h += damp * torch.mean(torch.diag(h)) * torch.eye(h.shape[0], dtype=h.dtype)
    hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(h)), upper=True)
    n = w.shape[1]
    qw = torch.zeros_like(w)
    for i1 in range(0, n, block):
        i2 = min(i1 + block, n)
        w1, e1, hi = w[:, i1:i2].clone(), torch.zeros_like(w[:, i1:i2]), hinv[i1:i2, i1:i2]
        for i in range(i2 - i1):
            col = w1[:, i]
            qc = quant(col, int(order[i1 + i]))
            qw[:, i1 + i] = qc
            err = (col - qc) / hi[i, i]
            w1[:, i:] -= err.unsqueeze(1) * hi[i, i:].unsqueeze(0)
            e1[:, i] = err
        w[:, i2:] -= e1 @ hinv[i1:i2, i2:]
    out = torch.empty_like(qw)
    out[:, order] = qw
    return out


def layer_error(x, w_ref, w_q) -> float:
    d = (w_ref.to(torch.float64) - w_q.to(torch.float64))
    return float(torch.mean((x @ d.T) ** 2))


def _set(layer, w2d):
    with torch.no_grad():
        layer.weight.copy_(w2d.to(layer.weight.dtype).reshape(layer.weight.shape))


def relative_rows(x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """Rows of ``x`` scaled by 1 / the root mean square of their float output x @ w.T (normalized
    so that the mean weight is 1; rows with zero output keep weight 1)."""
    y2 = torch.mean((x @ w.T) ** 2, dim=1)
    pos = y2 > 0
    if not bool(pos.any()):
        return x
    r = torch.ones_like(y2)
    r[pos] = y2[pos].mean() / y2[pos]
    return x * torch.sqrt(r / r.mean()).unsqueeze(1)


def _with_block_inputs(q, batches):
    """(layer name, layer, its block, the block's captured inputs) in order. A block's inputs are
    captured when its turn comes (its predecessors already rounded), once; each layer's rows then
    come from running that block alone: the rows a whole-model forward gives, in a third of the
    time on MiniLM."""
    from .signround import blocks, capture
    for bname, members in blocks(q):
        block = q.get_submodule(bname)
        inputs = capture(q, block, batches)
        for n, m in members:
            yield n, m, block, inputs


def run_gptq(q, batches, *, owq_ratio=None, keep_format=KEEP_FORMAT, max_rows=8192, gptq_damp=0.01, gptq_block=128,
             gptq_rows="relative", seed=0, progress=True, report=None, name="gptq"):
    from tqdm.auto import tqdm
    if gptq_rows not in ROWS:
        raise ValueError(f"gptq_rows={gptq_rows!r} is not a row weighting; allowed: {', '.join(ROWS)}")
    if not gptq_damp > 0:
        raise ValueError(f"gptq_damp (the Hessian damping, a share of its mean diagonal) must be > 0, got {gptq_damp}")
    if owq_ratio is not None:
        check_weight_format(keep_format, "fpq.ptq owq: keep_format")
        from .importance import _refuse_kept
        _refuse_kept(weight_only_layers(q), "owq")
    result = {}
    bar = tqdm(total=len(weight_only_layers(q)), desc=f"fpq.ptq {name}", disable=not progress)
    for lname, layer, block, inputs in _with_block_inputs(q, batches):
        bar.update()
        w = layer.weight.detach().reshape(layer.weight.shape[0], -1).clone().to(torch.float64)
        if not inputs:
            raise ValueError(f"fpq.ptq: layer {lname!r} is not called by the model on these batches")
        rel = next(n for n, mod in block.named_modules() if mod is layer)
        x = layer_rows(block, rel, inputs, max_rows, seed, call_captured)
        if gptq_rows == "relative":
            x = relative_rows(x, w)
        h = x.T @ x
        if owq_ratio is not None:
            k = max(1, round(owq_ratio * w.shape[1]))
            with torch.no_grad():
                rtn = layer.quantize_weight2d(w.float()).to(torch.float64)
            e_plain = layer_error(x, w, rtn)
            sens = torch.diag(h) * ((w - rtn) ** 2).sum(0)
            layer.set_keep(cols=torch.topk(sens, k).indices, fmt=keep_format)
        with torch.no_grad():
            w_rtn = layer.quantize_weight2d(w.float()).to(torch.float64)
        keep_set = set(layer.keep_cols.tolist())
        order = [j for j in range(w.shape[1]) if j not in keep_set] + sorted(keep_set)
        w_g = gptq_columns(w, h, column_quantizer(layer), order, gptq_damp, gptq_block)
        e_g, e_r = layer_error(x, w, w_g), layer_error(x, w, w_rtn)
        kept = e_g <= e_r
        _set(layer, w_g if kept else w_rtn)
        result[lname] = {"kept": kept, "error": min(e_g, e_r), "error_rtn": e_r,
                         "kept_columns": len(keep_set)}
        if owq_ratio is not None:    # the guard's reference: RTN with the same kept columns
            result[lname]["error_rtn_plain"] = e_plain
    if report is not None:
        report[name] = result
        report["effective_bits"] = effective_bits(q)["total"]
    return q


def run(q, batches, methods, *, seed=0, progress=True, report=None, **options):
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        raise ValueError(f"fpq.ptq: method(s) {unknown} do not apply to a weight-only model "
                         f"(fpq.convert(scope='modules')); allowed: {', '.join(METHODS)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"fpq.ptq: a method is listed twice in {methods}")
    rounding = [m for m in methods if m in ROUNDING]
    if len(rounding) > 1:
        raise ValueError(f"fpq.ptq: {' and '.join(rounding)} all choose the weight rounding; pick one "
                         "(mixed_precision may go with it)")
    alloc = [m for m in methods if m in ALLOCATORS]
    if len(alloc) > 1:
        raise ValueError("fpq.ptq: mixed_precision and mg_ptq both choose the formats; pick one")
    allowed = {o for m in methods for o in OPTIONS[m]}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"fpq.ptq: option(s) {bad} are not used by methods {methods}; "
                         f"options of these methods: {sorted(allowed) or 'none'}")
    batches = list(batches)
    if not batches:
        raise ValueError("fpq.ptq: no batches given")
    report = {} if report is None else report
    torch.manual_seed(seed)
    was = q.training
    q.eval()
    try:
        for m in sorted(methods, key=METHODS.index):     # the allocator first
            mine = {k: v for k, v in options.items() if k in OPTIONS[m]}
            if m == "mg_ptq":
                from .mg_ptq import run_mg
                run_mg(q, batches, seed=seed, progress=progress, report=report, write_back=not rounding, **mine)
            elif m == "mixed_precision":
                from .importance import run_mixed
                run_mixed(q, batches, call, seed=seed, progress=progress, report=report, write_back=not rounding, **mine)
            elif m == "gwq":
                from .importance import run_gwq
                run_gwq(q, batches, call, seed=seed, progress=progress, report=report, **mine)
            elif m == "gptq":
                run_gptq(q, batches, seed=seed, progress=progress, report=report, **mine)
            elif m == "owq":
                opts = dict(mine)
                ratio = opts.pop("owq_ratio", 0.005)
                if not 0 < ratio < 1:
                    raise ValueError(f"owq_ratio (the share of input columns kept in keep_format) must be in (0, 1), got {ratio}")
                run_gptq(q, batches, owq_ratio=ratio, seed=seed, progress=progress, report=report, name="owq", **opts)
            else:
                from .signround import run as signround
                signround(q, batches, seed=seed, progress=progress, report=report, **mine)
    finally:
        q.train(was)
    return q


__all__ = ["run", "METHODS", "OPTIONS", "gptq_columns", "layer_rows", "call"]
