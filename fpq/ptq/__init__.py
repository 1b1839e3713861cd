"""fpq.ptq: post-training quantization algorithms on any fpq format, composed in one call.

    q = fpq.convert(model, "e2m1")
    fpq.ptq(q, batches, methods=["act_equalization", "format_search", "gptq", "bias_correction"])

Methods always run in this fixed order, whatever order they are listed in (``ORDER``):

1. ``weight_equalization``  cross-layer range equalization of float weights (equalize.py)
2. ``act_equalization``     SmoothQuant migration of activation ranges into weights, ``alpha``
3. ``act_channel_scales``   per-channel power-of-two activation scales folded into the weights
                            (LLM-FP4's pre-shifted exponent bias; act_search.py)
4. calibration              ``fpq.calibrate(q, batches, method=calibration)``: activation scales
                            and weight / bias scales from the (equalized) float weights
5. ``act_search``           per activation tensor: format (ExMy split) and exponent bias / clipping
                            minimizing the network-output error (act_search.py)
6. ``format_search``        per-layer weight format (ExMy split) and exponent bias / clipping
7. ``gptq``, ``learned_round`` or ``block_round``  the weight rounding (at most one of them;
                            block_round learns the rounding of a block's layers jointly against
                            the float network's block output, BRECQ; block_round.py)
8. ``bias_correction``      per-channel bias correction of the mean output error left by the
                            rounding (measured against the float weights from before step 7)

Equalization and channel scales change float weights, so they precede calibration; the searches
need calibrated scales everywhere else (activations first, so that the weight search sees the
final layer inputs); rounding needs the final weight formats and scales; bias correction
corrects what rounding left. ``calibration=None`` keeps the model's current
scales (not allowed together with an equalization). Every method leaves an fpq model: weights
change only in value (after rounding they are grid values of the unchanged scale), scales keep
their kind, every tensor keeps an fpq Format, so ``fpq.export_qonnx`` / ``emulate`` / ``to_hls``
/ ``verify`` take the result unchanged. A method that cannot apply to a layer raises a
ValueError naming the layer. Options (keyword arguments) go to the method they belong to; an
unknown option is an error. ``reference="float"`` (learned_round, bias_correction) compares with
the float network's own layer outputs instead of the float weights on the quantized inputs;
block_round always compares with the float network's block outputs. ``float_weights`` ({layer
name: weights}, bias_correction) gives the float weights to correct against when the rounding
ran in an earlier call (by default those from before this call's rounding, or the current ones).
Returns ``q`` (modified in place); ``report`` (a dict, optional) receives what each method did.

Weight-only models (``fpq.convert(model, weights=..., scope="modules")``, any module tree, e.g.
a Hugging Face transformer) take their own methods: one rounding per call (``gptq``, ``owq``,
``gwq`` or ``signround``), optionally preceded by ``mixed_precision`` (per-layer formats under an
average-bit budget) or ``mg_ptq`` (per-column formats chosen by a graph neural network under such
a budget) in the same call (fpq/ptq/weight_only.py, importance.py, signround.py);
batches are then what the model is called with (a dict is passed as keyword arguments).
"""
from __future__ import annotations

import importlib

ORDER = ("weight_equalization", "act_equalization", "act_channel_scales", "act_search",
         "format_search", "gptq", "learned_round", "block_round", "bias_correction")
_BEFORE_CALIBRATION = ("weight_equalization", "act_equalization", "act_channel_scales")

# method -> (module of this package, function). The modules import torch, so they are imported
# on first use: `import fpq` imports this package to bind `fpq.ptq` to its function.
_RUN = {
    "weight_equalization": ("equalize", "weight_equalization"),
    "act_equalization": ("equalize", "act_equalization"),
    "act_channel_scales": ("act_search", "channel_scales"),
    "act_search": ("act_search", "run"),
    "format_search": ("format_search", "run"),
    "gptq": ("gptq", "run"),
    "learned_round": ("learned_round", "run"),
    "block_round": ("block_round", "run"),
    "bias_correction": ("bias_correction", "run"),
}


def _method(name: str):
    module, func = _RUN[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), func)


# the options each method understands (besides seed / progress / report)
OPTIONS = {
    "weight_equalization": ("equalize_layers", "equalize_iters"),
    "act_equalization": ("equalize_layers", "alpha"),
    "act_channel_scales": ("equalize_layers", "act_max_shift"),
    "act_search": ("act_format_candidates", "act_shifts", "act_min_clip", "act_metric"),
    "format_search": ("format_candidates", "search_shifts", "search_min_clip", "max_rows"),
    "gptq": ("gptq_act_order", "max_rows"),
    "learned_round": ("round_iters", "round_lr", "round_reg", "max_rows", "reference"),
    "block_round": ("round_iters", "round_lr", "round_reg", "block_layers", "block_batch", "block_drop"),
    "bias_correction": ("reference", "float_weights"),
}


def ptq(q, batches, methods, *, seed: int = 0, progress: bool = True,
        calibration: str | None = "max", report: dict | None = None, **options):
    """Post-training quantization: apply the PTQ ``methods`` to a converted model, in one call.

    Methods run in the fixed order of ``fpq.ptq.ORDER`` whatever order they are listed in:
    weight_equalization, act_equalization, act_channel_scales, calibration (``fpq.calibrate``
    with ``calibration``), act_search, format_search, the weight rounding (at most one of gptq,
    learned_round, block_round), bias_correction (see the module docstring). Every method leaves an
    fpq model, so export, emulation, HLS and verify take the result unchanged. Weight-only models
    (``fpq.convert(..., scope="modules")``) take their own methods: one rounding per call (gptq,
    owq, gwq or signround), optionally preceded by an allocator of formats under an average-bit
    budget (mixed_precision: per layer; mg_ptq: per input column, by a graph neural network).

    Args:
        q (FpqModel): a model returned by ``fpq.convert`` (changed in place).
        batches (Iterable): input tensors or (inputs, targets) tuples, read several times (a list
            or a DataLoader); for a weight-only model, what the model is called with (a dict is
            passed as keyword arguments).
        methods (str | list[str]): method names from ``fpq.ptq.ORDER``; ``[]`` only calibrates.
        seed (int): seeds row sampling and learned-round minibatches (reproducible results).
        progress (bool): show tqdm progress bars.
        calibration (str | None): "max" | "percentile" | "mse", or None to keep the current scales
            (not allowed with an equalization or channel-scale method).
        report (dict | None): receives what each method did, {method: details}.
        **options: keyword options of the methods given (``fpq.ptq.OPTIONS`` lists them per
            method, e.g. ``alpha`` for act_equalization, ``format_candidates`` for format_search).

    Returns:
        FpqModel: ``q`` itself.

    Raises:
        TypeError: ``q`` is not a model returned by ``fpq.convert``.
        ValueError: an unknown or repeated method, two rounding methods, an option no listed method
            uses, ``calibration=None`` with an equalization, no batches, inputs of the wrong shape,
            a model converted with ``method="biper"``, or a layer a method cannot apply to (named).

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int4")
        >>> done = {}
        >>> fpq.ptq(q, [torch.randn(32, 4)], methods=["bias_correction", "gptq"], progress=False,
        ...         report=done) is q
        True
        >>> list(done)          # the fixed order: rounding first, then bias correction
        ['gptq', 'bias_correction']
        >>> fpq.ptq(q, [torch.randn(32, 4)], methods=["gptq", "learned_round"])
        Traceback (most recent call last):
        ...
        ValueError: fpq.ptq: gptq and learned_round all choose the weight rounding; pick one
    """
    import torch

    if getattr(q, "fpq_weight_only", None) is not None:   # fpq.convert(scope="modules")
        if calibration not in (None, "max"):
            raise ValueError("fpq.ptq: a weight-only model has no activation quantizers to calibrate: "
                             "leave calibration at its default")
        from .weight_only import run
        return run(q, batches, methods, seed=seed, progress=progress, report=report, **options)
    from ..calibration import calibrate, check_input
    from . import _common

    if not hasattr(q, "fpq_quantizers"):
        raise TypeError("fpq.ptq expects a model returned by fpq.convert")
    if isinstance(methods, str):
        methods = [methods]
    methods = list(methods)
    unknown = [m for m in methods if m not in _RUN]
    if unknown:
        raise ValueError(f"fpq.ptq: unknown method(s) {unknown}; allowed: {', '.join(ORDER)}")
    if len(set(methods)) != len(methods):
        raise ValueError(f"fpq.ptq: a method is listed twice in {methods}")
    rounding = [m for m in ("gptq", "learned_round", "block_round") if m in methods]
    if len(rounding) > 1:
        raise ValueError(f"fpq.ptq: {' and '.join(rounding)} all choose the weight rounding; pick one")
    allowed = {o for m in methods for o in OPTIONS[m]}
    bad = sorted(set(options) - allowed)
    if bad:
        raise ValueError(f"fpq.ptq: option(s) {bad} are not used by methods {methods}; "
                         f"options of these methods: {sorted(allowed) or 'none'}")
    if "float_weights" in options and rounding:
        raise ValueError(f"fpq.ptq: float_weights (bias_correction's reference weights) is for a call "
                         f"after the rounding; here {rounding[0]} runs in the same call and provides them")
    equalizing = any(m in methods for m in _BEFORE_CALIBRATION)
    if equalizing and calibration is None:
        raise ValueError("fpq.ptq: equalization / channel scales change the float weights, so the model must be "
                         "recalibrated afterwards: pass calibration='max' | 'percentile' | 'mse'")
    batches = list(batches)
    if not batches:
        raise ValueError("fpq.ptq: no batches given")
    check_input(q, _common.first_tensor(batches[0]), "fpq.ptq")   # shapes, before any method runs
    if getattr(q, "meta", {}).get("fpq_policy") is not None and q.fpq_policy.method != "ste":
        raise ValueError(f"fpq.ptq: models converted with method={q.fpq_policy.method!r} are not "
                         "supported (their weights are not fpq-quantized parameters)")
    report = {} if report is None else report
    torch.manual_seed(seed)
    float_weights = None
    for name in ORDER:
        if name == "act_search" and calibration is not None:
            calibrate(q, batches, method=calibration, progress=progress)   # step 4
        if name == "gptq":   # rounding replaces the float weights: bias correction needs them
            float_weights = {n: m.weight.detach().clone() for n, m in _common.weight_layers(q)}
        if name not in methods:
            continue
        kw = {k: v for k, v in options.items() if k in OPTIONS[name]}
        if name == "bias_correction" and "float_weights" not in kw:
            kw["float_weights"] = float_weights
        _method(name)(q, batches, seed=seed, progress=progress, report=report, **kw)
    q.fpq_record_shapes(_common.first_tensor(batches[0])[:1])
    return q


__all__ = ["ptq", "ORDER", "OPTIONS"]
