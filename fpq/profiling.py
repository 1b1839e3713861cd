"""fpq.profile_torch: what the same network costs on the CPU or GPU it runs on.

The FPGA estimate (``fpq.estimate_cost``) is only meaningful next to what a processor actually
does with the model, so this module times, on one device and one batch size:

* the float model in fp32, bf16 and fp16 (each measured where it runs, skipped with the reason
  where it does not);
* the fpq-quantized model's fake-quant forward (the converted model in eval mode, which computes
  linear/conv in float64 for exactness: the price of bit-exact emulation, not of low precision);
* the model's matrix products (Linear as is, Conv as its im2col GEMM) in bf16 and in FP8 e4m3
  through ``torch._scaled_mm``: what FP8 tensor cores give where the device has them.

Latency is per batch (median and 90th percentile over ``iters`` timed runs after ``warmup``
runs); on CUDA each run is timed with CUDA events and a synchronize, on CPU with perf_counter.
"""
from __future__ import annotations

import copy
import math
import platform
import statistics
import time
from dataclasses import asdict, dataclass, field

import torch
from torch import nn

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
_DTYPE_ALIASES = {"float32": "fp32", "float": "fp32", "bfloat16": "bf16", "float16": "fp16", "half": "fp16"}
FP8_MIN_CAPABILITY = (8, 9)  # Ada / Hopper: the first NVIDIA GPUs with FP8 tensor cores
_GEMM_ALIGN = 16  # torch._scaled_mm on CUDA needs K and N divisible by 16


@dataclass
class ProfileRow:
    """One measured (or skipped) configuration.

    Args:
        name: the configuration's name.
        dtype: the dtype it ran in.
        status: "ok" or "skipped".
        median_ms: median latency per batch.
        p90_ms: 90th-percentile latency per batch.
        throughput: inferences per second at the median.
        max_abs_diff: largest difference to the float model in fp32 (same input).
        reason: why skipped, or what the row measures.

    Example:
        >>> from fpq.profiling import ProfileRow
        >>> ProfileRow("fp32", "float32", "ok", median_ms=1.5).median_ms
        1.5
    """

    name: str
    dtype: str
    status: str                     # "ok" | "skipped"
    median_ms: float | None = None  # per batch
    p90_ms: float | None = None
    throughput: float | None = None  # inferences per second at the median
    max_abs_diff: float | None = None  # vs the float model in fp32 (same input)
    reason: str = ""                 # why skipped, or what the row measures


@dataclass
class ProfileResult:
    """What ``fpq.profile_torch`` measured: latency / throughput rows plus the facts needed to read them.

    ``print`` it for a table; ``to_dict()`` for JSON.

    Args:
        device (str): the torch device timed on.
        device_name (str): the CPU or GPU model.
        torch_version (str): torch's version.
        batch (int): inputs per forward.
        threads (int): CPU threads used.
        input_shape (tuple): one input's shape without the batch.
        warmup (int): untimed runs before timing.
        iters (int): timed runs.
        rows (list[ProfileRow]): one per model and dtype: name, dtype, status ("ok" | "skipped"),
            median_ms and p90_ms per batch, throughput (inferences/s), max_abs_diff (vs fp32),
            reason.
        gemms (list): (M, K, N, count) of the model's matrix products.
        notes (list[str]): facts about the run.

    Example:
        >>> import torch, fpq
        >>> prof = fpq.profile_torch(torch.nn.Sequential(torch.nn.Linear(4, 3)), batch=4, dtypes="fp32",
        ...                          warmup=0, iters=1, gemm=False, progress=False)
        >>> row = prof.row("float fp32")
        >>> row.status, row.throughput > 0
        ('ok', True)
    """

    device: str
    device_name: str
    torch_version: str
    batch: int
    threads: int
    input_shape: tuple
    warmup: int
    iters: int
    rows: list = field(default_factory=list)
    gemms: list = field(default_factory=list)  # (M, K, N, count) of the model's matrix products
    notes: list = field(default_factory=list)

    def row(self, name: str) -> ProfileRow:
        """The row of one model.

        Args:
            name (str): the row's name, e.g. "float fp32" or "fpq fake-quant".

        Returns:
            ProfileRow: that row.

        Raises:
            KeyError: no row of that name (the message lists them).
        """
        for r in self.rows:
            if r.name == name:
                return r
        raise KeyError(f"no row {name!r}; rows: {[r.name for r in self.rows]}")

    def to_dict(self) -> dict:
        """The result as plain JSON-serializable data.

        Returns:
            dict: the run's facts, rows, gemms and notes.
        """
        d = {k: getattr(self, k) for k in ("device", "device_name", "torch_version", "batch", "threads",
                                           "warmup", "iters")}
        d["input_shape"] = list(self.input_shape)
        d["rows"] = [asdict(r) for r in self.rows]
        d["gemms"] = [list(g) for g in self.gemms]
        d["notes"] = list(self.notes)
        return d

    def table(self) -> str:
        """The result as an aligned text table (``str(result)`` is the same).

        Returns:
            str: a header line with the run's facts, then one line per row and the notes.
        """
        head = ("model", "dtype", "median ms", "p90 ms", "inf/s", "max|y-y32|", "note")
        rows = [head]
        for r in self.rows:
            if r.status == "ok":
                rows.append((r.name, r.dtype, f"{r.median_ms:.3f}", f"{r.p90_ms:.3f}", f"{r.throughput:,.0f}",
                             "-" if r.max_abs_diff is None else f"{r.max_abs_diff:.3g}", r.reason))
            else:
                rows.append((r.name, r.dtype, "-", "-", "-", "-", "skipped: " + r.reason))
        w = [max(len(r[i]) for r in rows) for i in range(len(head) - 1)]
        fmt = lambda r: "  ".join(  # noqa: E731
            [c.ljust(w[i]) if i < 2 else c.rjust(w[i]) for i, c in enumerate(r[:-1])] + [r[-1]]).rstrip()
        out = [f"{self.device_name} ({self.device}), torch {self.torch_version}, batch {self.batch}, "
               f"threads {self.threads}, input {tuple(self.input_shape)}, {self.iters} timed runs "
               f"after {self.warmup} warm-up", fmt(head), "  ".join("-" * x for x in w) + "  ----"]
        out += [fmt(r) for r in rows[1:]]
        out += [f"note: {n}" for n in self.notes]
        return "\n".join(out)

    __str__ = table


# ----------------------------------------------------------------------------- device facts
def _check_device(device) -> torch.device:
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: allowed 'cpu', 'cuda' or 'cuda:N'") from e
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}: allowed 'cpu', 'cuda' or 'cuda:N'")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            built = torch.version.cuda
            why = (f"this torch ({torch.__version__}) is built without CUDA" if built is None
                   else f"torch {torch.__version__} (CUDA {built}) sees no GPU")
            raise RuntimeError(f"fpq.profile_torch: device={device!r} was requested but {why}; "
                               "use device='cpu' or run on a machine with an NVIDIA GPU")
        if dev.index is None:
            dev = torch.device("cuda", torch.cuda.current_device())
        if dev.index >= torch.cuda.device_count():
            raise ValueError(f"device {device!r}: only {torch.cuda.device_count()} CUDA device(s) present")
    return dev


def device_name(dev: torch.device) -> str:
    """The GPU's name, or the CPU model from /proc/cpuinfo (platform.processor() elsewhere).

    Args:
        dev: the torch device.

    Returns:
        str: a readable name.

    Example:
        >>> import torch
        >>> from fpq.profiling import device_name
        >>> isinstance(device_name(torch.device("cpu")), str)
        True
    """
    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        return f"{torch.cuda.get_device_name(dev)} (compute capability {cap[0]}.{cap[1]})"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine() or "unknown CPU"


def _fp8_unavailable(dev: torch.device) -> str | None:
    """Why FP8 matmul cannot run here, or None."""
    if not hasattr(torch, "_scaled_mm") or not hasattr(torch, "float8_e4m3fn"):
        return f"torch {torch.__version__} has no torch._scaled_mm / float8_e4m3fn"
    if dev.type == "cuda":
        cap = torch.cuda.get_device_capability(dev)
        if cap < FP8_MIN_CAPABILITY:
            return (f"{torch.cuda.get_device_name(dev)} has compute capability {cap[0]}.{cap[1]}; FP8 "
                    f"matmul needs >= {FP8_MIN_CAPABILITY[0]}.{FP8_MIN_CAPABILITY[1]} (Ada, Hopper or newer)")
    return None


# ----------------------------------------------------------------------------- model handling
def _is_fpq(model) -> bool:
    return hasattr(model, "fpq_quantizers") and hasattr(model, "fpq_policy")


def _float_of(q) -> nn.Module:
    """The float network a converted model was made from (BatchNorm folded, no quantizers)."""
    from .nn.plan import dequantize_model
    return dequantize_model(q)[0]


def _input_shape(model, q, input_shape, example_input) -> tuple:
    if input_shape is not None:
        shape = tuple(int(s) for s in input_shape)
        if not shape or any(s <= 0 for s in shape):
            raise ValueError(f"input_shape {input_shape!r}: give the shape of one input without the batch "
                             "dimension, e.g. (1, 8, 8), all sizes positive")
        return shape
    if example_input is not None:
        return tuple(example_input.shape[1:])
    if q is not None:  # a converted model that saw data keeps its node shapes
        shapes = q.meta.get("fpq_shapes") or {}
        for node in q.graph.nodes:
            if node.op == "placeholder" and node.name in shapes:
                return tuple(shapes[node.name][1:])
    for m in model.modules():  # a model that starts with a Linear tells its input size
        if isinstance(m, nn.Linear):
            return (m.in_features,)
        if isinstance(m, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            break
    raise ValueError("fpq.profile_torch cannot tell the model's input shape: pass input_shape=(C, H, W) "
                     "(one input, without the batch dimension) or example_input=")


def _gemm_shapes(model: nn.Module, x: torch.Tensor) -> list:
    """(M, K, N, count) of every Linear / Conv product in one forward (conv as its im2col GEMM)."""
    found = []

    def hook(m, inp, out):
        if isinstance(m, nn.Linear):
            found.append((inp[0].numel() // m.in_features, m.in_features, m.out_features, 1))
        else:
            g = m.groups
            k = (m.in_channels // g) * math.prod(m.kernel_size)
            found.append((out.shape[0] * math.prod(out.shape[2:]), k, m.out_channels // g, g))

    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d))]
    try:
        with torch.inference_mode():
            model(x)
    finally:
        for h in handles:
            h.remove()
    return found


def _pad(n: int) -> int:
    return -(-n // _GEMM_ALIGN) * _GEMM_ALIGN


def _gemm_runner(gemms: list, dev: torch.device, fp8: bool):
    """A callable running every GEMM of the model once, in bf16 or in FP8 e4m3 (bf16 out)."""
    gen = torch.Generator().manual_seed(0)
    ops = []
    one = torch.ones((), dtype=torch.float32, device=dev)
    for m, k, n, count in gemms:
        kp, np_ = _pad(k), _pad(n)  # zero padding: same product, the alignment FP8 kernels need
        for _ in range(count):
            a = torch.randn(m, kp, generator=gen).to(dev)
            b = torch.randn(np_, kp, generator=gen).to(dev)
            if fp8:  # row-major A, column-major B: the layout _scaled_mm requires
                ops.append((a.to(torch.float8_e4m3fn), b.to(torch.float8_e4m3fn).t()))
            else:
                ops.append((a.to(torch.bfloat16), b.to(torch.bfloat16).t()))

    if fp8:
        def run(_x=None):
            return [torch._scaled_mm(a, b, one, one, out_dtype=torch.bfloat16) for a, b in ops]
    else:
        def run(_x=None):
            return [a @ b for a, b in ops]
    return run


# ----------------------------------------------------------------------------- timing
def _timer(dev: torch.device):
    """A function timing one call in milliseconds, with the device's own clock."""
    if dev.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)

        def timed(fn, x):
            torch.cuda.synchronize(dev)
            start.record()
            fn(x)
            end.record()
            torch.cuda.synchronize(dev)
            return start.elapsed_time(end)
    else:
        def timed(fn, x):
            t = time.perf_counter()
            fn(x)
            return 1e3 * (time.perf_counter() - t)
    return timed


def _measure(fn, x, warmup: int, iters: int, timed, bar) -> list:
    with torch.inference_mode():
        for _ in range(warmup):
            fn(x)
            bar.update(1)
        times = []
        for _ in range(iters):
            times.append(timed(fn, x))
            bar.update(1)
    return times


def _percentile(values: list, p: float) -> float:
    s = sorted(values)
    i = (len(s) - 1) * p / 100.0  # linear interpolation between closest ranks (numpy's default)
    lo = math.floor(i)
    hi = min(lo + 1, len(s) - 1)
    return s[lo] + (s[hi] - s[lo]) * (i - lo)


def _ok(name, dtype, times, batch, diff=None, note="") -> ProfileRow:
    med = statistics.median(times)
    return ProfileRow(name, dtype, "ok", med, _percentile(times, 90), batch / (med / 1e3), diff, note)


def _diff(y, ref) -> float | None:
    if ref is None or not isinstance(y, torch.Tensor) or y.shape != ref.shape:
        return None
    return float((y.double() - ref.double()).abs().max())


# ----------------------------------------------------------------------------- entry point
def profile_torch(q, batch: int = 256, device: str = "cpu", dtypes=("fp32", "bf16", "fp16"), warmup: int = 5,
                  iters: int = 30, input_shape=None, *, float_model: nn.Module | None = None,
                  example_input: torch.Tensor | None = None, fake_quant: bool = True, gemm: bool = True,
                  threads: int | None = None, progress: bool | None = None, seed: int = 0) -> ProfileResult:
    """Time a model's float forward (fp32 / bf16 / fp16), its fpq fake-quant forward and FP8 GEMMs.

    Latency is per batch (median and p90 over ``iters`` timed runs after ``warmup``), throughput in
    inferences/s; each row also gives the largest difference of its output from the fp32 model's.
    Shows a progress bar when the run takes more than 2 s (``progress=None``).

    Args:
        q (torch.nn.Module): a model from ``fpq.convert`` (its float twin is recovered from it, or
            given as ``float_model``) or a plain float model (then there is no fake-quant row).
        batch (int): inputs per forward, >= 1.
        device (str): "cpu", "cuda" or "cuda:N".
        dtypes (str | tuple[str, ...]): float-model precisions to time, among "fp32", "bf16", "fp16".
        warmup (int): untimed runs first, >= 0.
        iters (int): timed runs, >= 1.
        input_shape (tuple[int, ...] | None): one input's shape without the batch (found from the
            model or ``example_input`` when it can be).
        float_model (torch.nn.Module | None): the float model to time instead of the recovered one.
        example_input (torch.Tensor | None): an input whose shape (without the batch) is used.
        fake_quant (bool): time the fpq fake-quant forward.
        gemm (bool): also time the model's matrix products in bf16 and FP8 e4m3 (``torch._scaled_mm``).
        threads (int | None): CPU threads for the run (default: torch's current setting; restored
            afterwards).
        progress (bool | None): True / False, or None for a bar only when the run is slow.
        seed (int): seed of the random inputs.

    Returns:
        ProfileResult: ``rows`` (one per model and dtype: median / p90 ms, inf/s, max |y - y32|),
        ``gemms``, the device, batch and threads; ``print`` it for a table.

    Raises:
        TypeError: ``q`` or ``float_model`` is not an ``nn.Module``.
        ValueError: a bad ``batch``, ``warmup``, ``iters`` or ``threads``, an unknown dtype or device, or no
            input shape to be found.
        RuntimeError: a CUDA device asked for where no GPU is there.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> prof = fpq.profile_torch(q, batch=8, dtypes="fp32", warmup=1, iters=2, gemm=False,
        ...                          progress=False)
        >>> [row.name for row in prof.rows]
        ['float fp32', 'fpq fake-quant']
    """
    from tqdm.auto import tqdm

    if not isinstance(q, nn.Module):
        raise TypeError(f"fpq.profile_torch expects a torch.nn.Module (float or from fpq.convert), "
                        f"got {type(q).__name__}")
    if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
        raise ValueError(f"batch must be a positive integer, got {batch!r}")
    for name, v, least in (("warmup", warmup, 0), ("iters", iters, 1)):
        if isinstance(v, bool) or not isinstance(v, int) or v < least:
            raise ValueError(f"{name} must be an integer >= {least}, got {v!r}")
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    names = []
    for d in dtypes:
        key = _DTYPE_ALIASES.get(str(d).lower(), str(d).lower())
        if key not in DTYPES:
            raise ValueError(f"unknown dtype {d!r}; allowed: {', '.join(DTYPES)}")
        if key not in names:
            names.append(key)
    dev = _check_device(device)

    given, q = q, (q if _is_fpq(q) else None)
    if float_model is None:
        float_model = _float_of(q) if q is not None else given
    elif not isinstance(float_model, nn.Module):
        raise TypeError(f"float_model must be a torch.nn.Module, got {type(float_model).__name__}")
    shape = _input_shape(float_model, q, input_shape, example_input)

    old_threads = torch.get_num_threads()
    if threads is not None:
        if threads < 1:
            raise ValueError(f"threads must be >= 1, got {threads}")
        torch.set_num_threads(threads)
    try:
        return _profile(q, float_model, shape, batch, dev, names, warmup, iters, example_input, fake_quant,
                        gemm, progress, seed, tqdm)
    finally:
        torch.set_num_threads(old_threads)


def _profile(q, float_model, shape, batch, dev, names, warmup, iters, example_input, fake_quant, gemm,
             progress, seed, tqdm) -> ProfileResult:
    if example_input is not None:  # repeat the given input(s) up to the batch size
        x = example_input.detach().float()
        x = x.repeat((math.ceil(batch / len(x)),) + (1,) * (x.dim() - 1))[:batch].contiguous()
    else:
        x = torch.rand((batch, *shape), generator=torch.Generator().manual_seed(seed))
    x = x.to(dev)
    res = ProfileResult(device=str(dev), device_name=device_name(dev),
                        torch_version=torch.__version__ + (f" (CUDA {torch.version.cuda})" if dev.type == "cuda" else ""),
                        batch=batch, threads=torch.get_num_threads(), input_shape=tuple(x.shape[1:]),
                        warmup=warmup, iters=iters)
    if dev.type == "cuda":
        res.notes.append("CUDA timing: CUDA events around each forward, synchronized; "
                         f"TF32 matmul {'on' if torch.backends.cuda.matmul.allow_tf32 else 'off'}")

    base = copy.deepcopy(float_model).eval().float().to(dev)
    gemms = _gemm_shapes(base, x) if gemm else []
    res.gemms = gemms
    n_rows = len(names) + (q is not None and fake_quant) + 2 * bool(gemms)
    bar = tqdm(total=n_rows * (warmup + iters), desc="fpq.profile_torch", leave=False,
               disable=progress is False, delay=0 if progress else 2.0)
    timed = _timer(dev)
    with torch.inference_mode():
        ref = base(x)
    try:
        for key in names:
            label = f"float {key}"
            reason = _dtype_unsupported(key, dev)
            if reason:
                res.rows.append(ProfileRow(label, key, "skipped", reason=reason))
                bar.update(warmup + iters)
                continue
            try:
                m = base if key == "fp32" else copy.deepcopy(base).to(DTYPES[key])
                xd = x.to(DTYPES[key])
                with torch.inference_mode():
                    y = m(xd)  # fails here, not inside the timing, where an op lacks the dtype
                times = _measure(m, xd, warmup, iters, timed, bar)
            except (RuntimeError, NotImplementedError, TypeError) as e:
                res.rows.append(ProfileRow(label, key, "skipped",
                                           reason=f"{type(e).__name__}: {str(e).splitlines()[0][:160]}"))
                bar.update(warmup + iters)
                continue
            res.rows.append(_ok(label, key, times, batch, _diff(y, ref)))
        if q is not None and fake_quant:
            qm = copy.deepcopy(q).eval().to(dev)
            with torch.inference_mode():
                y = qm(x)
            times = _measure(qm, x, warmup, iters, timed, bar)
            pol = q.fpq_policy
            res.rows.append(_ok("fpq fake-quant", "fp32/fp64", times, batch, _diff(y, ref),
                                f"W {pol.weights} A {pol.activations}; exact eval forward "
                                "(linear/conv in float64)"))
        elif q is None and fake_quant:
            res.rows.append(ProfileRow("fpq fake-quant", "-", "skipped",
                                       reason="a float model was given; pass the model from fpq.convert"))
        if gemms:
            _gemm_rows(res, gemms, dev, x, warmup, iters, timed, bar, batch)
    finally:
        bar.close()
    return res


def _dtype_unsupported(key: str, dev: torch.device) -> str | None:
    if key == "bf16" and dev.type == "cuda" and not torch.cuda.is_bf16_supported():
        return f"{torch.cuda.get_device_name(dev)} does not support bfloat16"
    return None


def _gemm_rows(res, gemms, dev, x, warmup, iters, timed, bar, batch) -> None:
    flops = 2 * sum(m * k * n * c for m, k, n, c in gemms)
    what = f"{sum(c for *_, c in gemms)} GEMMs, {flops / 1e6:.1f} MFLOP per batch (conv as im2col)"
    run16 = _gemm_runner(gemms, dev, fp8=False)
    try:
        times = _measure(run16, None, warmup, iters, timed, bar)
        res.rows.append(_ok("GEMMs bf16", "bf16", times, batch, note=what))
    except RuntimeError as e:
        res.rows.append(ProfileRow("GEMMs bf16", "bf16", "skipped", reason=f"RuntimeError: {str(e)[:160]}"))
        bar.update(warmup + iters)
    why = _fp8_unavailable(dev)
    if why is None:
        try:
            run8 = _gemm_runner(gemms, dev, fp8=True)
            run8()
            times = _measure(run8, None, warmup, iters, timed, bar)
            note = "torch._scaled_mm, per-tensor scales, bf16 out"
            if dev.type == "cpu":
                note += "; CPU: no FP8 hardware, a software kernel"
            res.rows.append(_ok("GEMMs fp8", "e4m3", times, batch, note=note))
            return
        except RuntimeError as e:
            why = f"torch._scaled_mm failed: {str(e).splitlines()[0][:160]}"
    res.rows.append(ProfileRow("GEMMs fp8", "e4m3", "skipped", reason=why))
    bar.update(warmup + iters)


__all__ = ["profile_torch", "ProfileResult", "ProfileRow", "device_name"]
