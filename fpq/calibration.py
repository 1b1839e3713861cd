"""fpq.calibrate: statistics-based post-training quantization of an ``fpq.convert`` model.

Activation scales come from the float activations seen on ``batches``: while calibrating, every
activation quantizer passes its input through unchanged (as Brevitas' calibration mode does)
and records it, so the statistics describe the float network, not an already-quantized one.
Weight and bias scales come from the parameters themselves. Brevitas' own statistics modules
are not used because fpq's quantizers replace its tensor_quant (see fpq.nn.quantizers); the
statistics here are few and exact (running max) or sample-based (percentile, MSE).

Power-of-two scales: ``max`` and ``percentile`` take the smallest power of two that keeps the
statistic representable (ceil of log2); ``mse`` picks, among that power of two and the eight
below it, the one with the smallest quantization MSE on the samples.
"""
from __future__ import annotations

import contextlib

import torch

from .formats import BlockFormat
from .nn.calibration_stats import METHODS, choose_scale
from .nn.layers import init_param_scales
from .nn.quantizers import observing

_SAMPLES_PER_BATCH = 4096     # values kept per quantizer and batch for percentile / MSE
_MAX_SAMPLES = 1 << 20


class _Recorder:
    def __init__(self):
        self.max = 0.0
        self.samples = []
        self.count = 0

    def add(self, x: torch.Tensor, gen: torch.Generator):
        x = x.detach().reshape(-1).to(torch.float64)
        if x.numel() == 0:
            return
        self.max = max(self.max, float(x.abs().max()))
        if self.count < _MAX_SAMPLES:
            if x.numel() > _SAMPLES_PER_BATCH:
                idx = torch.randint(0, x.numel(), (_SAMPLES_PER_BATCH,), generator=gen)
                x = x[idx]
            self.samples.append(x.cpu())
            self.count += x.numel()


def first_tensor(batch):
    """The input tensor of a batch: a tensor, the first item of an (inputs, targets) tuple, or a dict's first value."""
    if torch.is_tensor(batch):
        return batch
    if isinstance(batch, (list, tuple)) and batch and torch.is_tensor(batch[0]):
        return batch[0]
    if isinstance(batch, dict) and batch:
        return next(iter(batch.values()))
    raise TypeError(f"a batch must be a tensor or (inputs, ...) tuple, got {type(batch).__name__}")


def _recording(q, recorders, gen, paused=()):
    """Make every activation quantizer an identity that records its input (not while ``paused``,
    a list, is non-empty)."""
    observers = []
    for name, role, tq in q.fpq_quantizers():
        if role == "output":
            rec = recorders.setdefault(id(tq), (tq, _Recorder()))[1]
            observers.append((tq, lambda x, _rec=rec: None if paused else _rec.add(x, gen)))
    return observing(observers)


def _shape(t) -> str:
    return "(N" + "".join(f", {d}" for d in t.shape[1:]) + (",)" if t.dim() == 1 else ")")


def _expected(m):
    """(description, expected input shape, check) of a layer that fixes its input's shape."""
    from .nn.batchnorm import FpqBatchNorm
    from .nn.layers import FpqConv1d, FpqConv2d, FpqLinear
    if isinstance(m, FpqLinear):
        return (f"Linear(in_features={m.in_features})", f"(N, {m.in_features})",
                lambda t: t.dim() >= 2 and t.shape[-1] == m.in_features)
    if isinstance(m, (FpqConv1d, FpqConv2d)):
        dims = 1 if isinstance(m, FpqConv1d) else 2
        return (f"Conv{dims}d(in_channels={m.in_channels})",
                f"(N, {m.in_channels}, " + ("L)" if dims == 1 else "H, W)"),
                lambda t: t.dim() == dims + 2 and t.shape[1] == m.in_channels)
    if isinstance(m, FpqBatchNorm):
        return (f"BatchNorm(num_features={m.num_features})", f"(N, {m.num_features}, ...)",
                lambda t: t.dim() >= 2 and t.shape[1] == m.num_features)
    return None


@torch.no_grad()
def check_input(q, x: torch.Tensor, who: str = "fpq.calibrate") -> None:
    """Run two rows of the input batch ``x`` through ``q`` node by node and raise one ValueError
    naming the first layer whose input has the wrong shape (with the shape it expects), the node
    where anything else fails, or a node that does not keep dimension 0 the batch (a reshape
    merging rows; two rows make that visible). Cheap: two rows, once."""
    from torch import fx

    if not torch.is_tensor(x) or x.dim() < 2 or x.shape[0] == 0:
        raise ValueError(f"{who}: an input batch must be a tensor of at least one row and two dimensions "
                         "(N, features...), dimension 0 the batch (one sample x: x[None]); got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    rows = x[:2] if x.shape[0] >= 2 else torch.cat([x[:1], x[:1]])
    modules = dict(q.named_modules())
    given = f"the input batch of shape {tuple(x.shape)}"

    class Check(fx.Interpreter):
        def run_node(self, node):
            args, _ = self.fetch_args_kwargs_from_env(node)
            where = f"{who}: {given} does not fit the model: "
            if node.op == "call_module":
                exp = _expected(modules[node.target])
                t = args[0] if args else None
                if exp is not None and torch.is_tensor(t) and not exp[2](t):
                    raise ValueError(where + f"layer {node.target!r} ({exp[0]}) expects input of shape "
                                     f"{exp[1]}, got {_shape(t)}")
            try:
                out = super().run_node(node)
            except Exception as e:
                ins = [_shape(a) for a in args if torch.is_tensor(a)]
                first = (str(e).strip().splitlines() or [type(e).__name__])[0]
                raise ValueError(where + f"node {node.name!r} fails on inputs of shape "
                                 f"{', '.join(ins) or '()'}: {first}") from None
            value = getattr(out, "value", out)   # a Brevitas QuantTensor carries its tensor
            if node.op != "placeholder" and torch.is_tensor(value) and value.dim() > 0 \
                    and value.shape[0] != rows.shape[0]:
                raise ValueError(f"{who}: node {node.name!r} does not keep dimension 0 the batch: "
                                 f"{rows.shape[0]} input rows give an output of shape {tuple(value.shape)}; "
                                 "reshape with x.flatten(1) or x.view(x.size(0), -1)")
            return out

    check = Check(q)
    check.extra_traceback = False   # the message names the node already
    was = q.training
    q.eval()
    try:
        with _unwrapped(q):
            check.run(rows)
    finally:
        q.train(was)


@contextlib.contextmanager
def _unwrapped(q):
    """Narrow wrapping accumulators off while the activation quantizers only record: the sums
    are then of unquantized values, off the grid the wrap is defined on."""
    layers = [m for m in q.modules() if getattr(m, "fpq_accumulator_bits", None) is not None]
    before = [m.fpq_wrap_off for m in layers]   # restored as found: the block may be nested
    for m in layers:
        m.fpq_wrap_off = True
    try:
        yield
    finally:
        for m, off in zip(layers, before):
            m.fpq_wrap_off = off


def calibrate(q, batches, method: str = "max", percentile: float = 99.99, progress: bool = True,
              max_batches: int | None = None):
    """Set the scales of a converted model from data (post-training calibration); returns the model.

    Activation scales come from the statistics of the values each quantizer sees over the batches
    (a seeded sample, so calibration is reproducible), weight and bias scales from the weights.
    Quantizers whose format carries its own scaling (Fixed) keep scale 1; block formats take their
    scales from each block. Also records the input shape (for ``fpq.plan`` / export). Shows a tqdm
    progress bar.

    Args:
        q (FpqModel): a model returned by ``fpq.convert`` (changed in place).
        batches (Iterable): input tensors or (inputs, targets) tuples; a DataLoader works. Every
            value must be finite.
        method (str): "max" (largest magnitude), "percentile" (the ``percentile``-th percentile of
            the magnitudes) or "mse" (the scale minimizing the squared quantization error).
        percentile (float): the percentile used by ``method="percentile"``.
        progress (bool): show the progress bar.
        max_batches (int | None): read at most this many batches.

    Returns:
        FpqModel: ``q`` itself, with its training mode unchanged.

    Raises:
        ValueError: an unknown ``method``; no batches, or batches with no rows; a batch with NaN or
            Inf (named by its index); inputs of the wrong shape for the model; a narrow accumulator
            whose bias cannot be put on the products' grid.
        TypeError: ``q`` is not a model returned by ``fpq.convert``.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> fpq.calibrate(q, [torch.randn(16, 4)], method="mse", progress=False) is q
        True
        >>> fpq.plan(q)["0"].tensors["weight"].describe()
        'int8 x 2^-8'
    """
    from tqdm.auto import tqdm

    if method not in METHODS:
        raise ValueError(f"unknown calibration method {method!r}; allowed: {', '.join(METHODS)}")
    if not hasattr(q, "fpq_quantizers"):
        raise TypeError("fpq.calibrate expects a model returned by fpq.convert")
    was_training = q.training
    q.eval()
    gen = torch.Generator().manual_seed(0)
    recorders = {}
    seen = rows = 0
    first = None
    paused = []
    with torch.no_grad(), _recording(q, recorders, gen, paused), _unwrapped(q):
        total = None
        try:
            total = len(batches)
        except TypeError:
            pass
        if max_batches is not None:
            total = min(total, max_batches) if total is not None else max_batches
        for i, batch in enumerate(tqdm(batches, total=total, desc="fpq.calibrate", disable=not progress)):
            if max_batches is not None and i >= max_batches:
                break
            x = first_tensor(batch)
            if torch.is_floating_point(x) and not torch.isfinite(x).all():
                bad = int((~torch.isfinite(x)).sum())
                raise ValueError(f"fpq.calibrate: batch {i} contains {bad} NaN/Inf value(s); "
                                 "calibration data must be finite")
            seen += 1
            if x.dim() > 1 and x.shape[0] == 0:
                continue    # no rows: nothing to record
            if first is None:   # shapes checked once, before any statistics, on two rows
                paused.append(True)
                try:
                    check_input(q, x)
                finally:
                    paused.clear()
                first = x
            q(x)
            rows += x.shape[0]
    if seen == 0:
        raise ValueError("fpq.calibrate: no batches given (an empty iterable" +
                         (f" or max_batches={max_batches})" if max_batches is not None else ")"))
    if rows == 0:
        raise ValueError(f"fpq.calibrate: the {seen} batch(es) given hold no rows (batch size 0); "
                         "calibration needs data, else every scale would stay at its initial value")
    for tq, rec in recorders.values():
        if isinstance(tq.fmt, BlockFormat) and rec.count:
            tq.init_from_max(rec.max)   # block scales come from each block; an NVFP4-style tensor scale from the max
            continue
        if tq.scale_kind == "none" or rec.count == 0:
            continue
        if method == "max":
            s = choose_scale(tq, torch.tensor([rec.max]), "max")
        else:
            s = choose_scale(tq, torch.cat(rec.samples + [torch.tensor([rec.max])]), method, percentile)
        tq.set_scale(s)
    for _, m in q.named_modules():
        if hasattr(m, "fpq_weight"):
            init_param_scales(m, "mse" if method == "mse" else "max")
    for m in q.modules():   # a narrow accumulator keeps the products' LSB: put the bias there,
        if getattr(m, "fpq_accumulator_bits", None) is not None:  # or fail here naming why
            m.fit_bias_to_products()
            m._narrow_accumulator()
    q.fpq_record_shapes(first[:1])
    q.train(was_training)
    return q
