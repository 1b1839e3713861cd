"""``fpq.sweep``: accuracy, hardware cost and bit-exactness over a grid of formats x PTQ methods.

Each point converts the float model with one (weights, activations[, first/last layer]) format
choice, calibrates it with one method (optionally a few QAT epochs), and records

* the task metric on the held-out data (top-1 accuracy in % by default),
* ``fpq.estimate_cost`` totals (LUT, FF, DSP, BRAM18, latency, BOPs),
* ``fpq.verify`` on a few off-grid inputs (torch == emulator == qonnx executor, no HLS).

Points run on local processes (``engine="local"``, the default: ``concurrent.futures`` with
spawn, no Ray) or as tasks of a Ray cluster (``engine="ray"``, see ``engines.py``), one torch
thread each. Every finished point is appended by the driver to the store ``out/cache.jsonl`` as
one JSON line (under a file lock) keyed by a hash of its configuration and of the model, data,
settings and fpq code, so a killed sweep resumes where it stopped, whichever engine ran it.
``out/progress.json`` says what runs now (done / failed / running), for a report of a running sweep.
Each point reseeds torch with ``seed`` before it starts, so results do not depend on the order
or the process a point ran in. At the end ``results.csv`` and ``results.json`` hold one tidy row
per point with canonical format strings and the command that rebuilds it.
The points' records, cache and results tables are in ``records.py``; model / data specs are
read by ``fpq.userfiles.load_spec``.
"""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import shlex
import time
from dataclasses import dataclass, field

import numpy as np

from ..userfiles import is_torch_module, load_spec
from .builds import HlsPhase, check_hls
from .codehash import source_hash
from .engines import ENGINES, check_address, in_process, ray_module, run_points
from .grid import canonical_list, grid, points
from .records import (CACHE, COLUMNS, PROGRESS, COST_FIELDS, SweepResult, _append_cache, _end_partial_line, _family,  # noqa: F401
                      load_results, point_id, read_cache, write_progress, write_tables)

DEFAULT_DATA_SPEC = "fpq.data:load_digits_split"


# ----------------------------------------------------------------------------- inputs
@dataclass
class SweepData:
    """Training inputs (calibration, QAT) and held-out inputs/targets (the metric, verify)."""

    x_train: object
    y_train: object
    x_test: object
    y_test: object


def as_sweep_data(data) -> SweepData:
    """Accepts an object with x_train/y_train/x_test/y_test (``fpq.data.load_digits_split()``), a
    4-tuple (x_train, y_train, x_test, y_test) or {"train": (x, y), "test": (x, y)}."""
    import torch

    if all(hasattr(data, k) for k in ("x_train", "y_train", "x_test", "y_test")):
        parts = (data.x_train, data.y_train, data.x_test, data.y_test)
    elif isinstance(data, dict) and "train" in data and "test" in data:
        parts = (*data["train"], *data["test"])
    elif isinstance(data, (tuple, list)) and len(data) == 4:
        parts = tuple(data)
    else:
        raise TypeError("fpq.sweep: data must have x_train, y_train, x_test, y_test (e.g. "
                        "fpq.data.load_digits_split()), or be (x_train, y_train, x_test, y_test), "
                        f"or {{'train': (x, y), 'test': (x, y)}}; got {type(data).__name__}")
    xtr, ytr, xte, yte = (torch.as_tensor(p) for p in parts)
    if len(xtr) == 0 or len(xte) == 0:
        raise ValueError("fpq.sweep: data has an empty train or test split")
    if len(xtr) != len(ytr) or len(xte) != len(yte):
        raise ValueError(f"fpq.sweep: inputs and targets differ in length (train {len(xtr)} vs {len(ytr)}, "
                         f"test {len(xte)} vs {len(yte)})")
    if not (torch.isfinite(xtr).all() and torch.isfinite(xte).all()):
        raise ValueError("fpq.sweep: data inputs contain NaN or Inf")
    return SweepData(xtr.float(), ytr, xte.float(), yte)


def top1_accuracy(logits, targets) -> float:
    """Top-1 accuracy in percent."""
    return 100.0 * float((logits.argmax(1) == targets).double().mean())


# ----------------------------------------------------------------------------- settings
@dataclass
class Settings:
    seed: int = 0
    qat_epochs: int = 0
    qat_lr: float = 1e-3
    verify_samples: int = 64
    verify_qonnx: int = 2
    calib_samples: int = 1024
    scale: str = "po2"
    granularity: str = "tensor"
    cost: dict = field(default_factory=dict)
    profile: dict | None = None   # keyword arguments of fpq.profile_torch; None: not measured
    first_layer: str | None = None
    last_layer: str | None = None
    model_spec: str | None = None
    data_spec: str | None = None
    out: str = ""
    metric_name: str = "accuracy"
    trust_pickle: bool = False   # the model spec is a .pt pickle the user allowed (for the commands)

    def fingerprint(self) -> dict:
        keep = ("qat_lr", "verify_samples", "verify_qonnx", "calib_samples", "scale", "granularity",
                "cost", "profile", "first_layer", "last_layer", "metric_name")
        return {k: getattr(self, k) for k in keep}


def _digest(h, t) -> None:
    import torch
    t = torch.as_tensor(t).detach().cpu().contiguous()
    h.update(str((t.dtype, tuple(t.shape))).encode())
    h.update(t.numpy().tobytes())


def context_hash(model, data: SweepData, settings: Settings, metric) -> str:
    """Hash of everything besides the point's configuration that its result depends on: the
    model, the data, the settings, the metric and fpq's code."""
    from .. import __version__
    h = hashlib.sha256()
    h.update(source_hash().encode())
    h.update(repr(model).encode())
    for k, v in model.state_dict().items():
        h.update(k.encode())
        _digest(h, v)
    for t in (data.x_train, data.y_train, data.x_test, data.y_test):
        _digest(h, t)
    h.update(json.dumps(settings.fingerprint(), sort_keys=True, default=str).encode())
    h.update(f"{getattr(metric, '__module__', '')}.{getattr(metric, '__qualname__', repr(metric))}".encode())
    h.update(__version__.encode())
    return h.hexdigest()[:16]


# ----------------------------------------------------------------------------- one point
def _overrides(cfg: dict, st: Settings) -> dict:
    fl = cfg["first_last"]
    if fl is None:
        return {}
    return {"overrides": {st.first_layer: fl, st.last_layer: fl}, "inputs": fl}


def build_point(model, cfg: dict, st: Settings, data: SweepData):
    """Convert and calibrate (and QAT) one configuration; returns the quantized model."""
    import torch

    from ..calibration import calibrate
    from ..conversion import convert

    torch.manual_seed(cfg["seed"])
    q = convert(model, weights=cfg["weights"], activations=cfg["activations"], scale=st.scale,
                granularity=st.granularity, **_overrides(cfg, st))
    calib = data.x_train[:st.calib_samples]
    calibrate(q, [calib[i:i + 256] for i in range(0, len(calib), 256)], method=cfg["method"], progress=False)
    if cfg["qat_epochs"]:
        _qat(q, data, cfg["qat_epochs"], st.qat_lr, cfg["seed"])
    return q.eval()


def _qat(q, data: SweepData, epochs: int, lr: float, seed: int) -> None:
    import torch
    import torch.nn.functional as F

    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(q.parameters(), lr=lr)
    for _ in range(epochs):
        q.train()
        perm = torch.randperm(len(data.x_train), generator=gen)
        for i in range(0, len(perm), 64):
            idx = perm[i:i + 64]
            opt.zero_grad()
            F.cross_entropy(q(data.x_train[idx]), data.y_train[idx]).backward()
            opt.step()
    q.eval()


def evaluate(model, x, y, metric, batch: int = 512) -> float:
    import torch
    model.eval()
    with torch.no_grad():
        out = torch.cat([model(x[i:i + batch]) for i in range(0, len(x), batch)])
    return float(metric(out, y))


def verify_inputs(x_test, n: int, seed: int) -> np.ndarray:
    """``n`` off-grid inputs near the held-out data: noisy copies, a third of them blown up 2-4x
    so that the input and activation quantizers saturate."""
    rng = np.random.default_rng(seed)
    x = np.asarray(x_test, dtype=np.float64)
    x = x[rng.choice(len(x), size=n, replace=n > len(x))]
    span = max(float(np.abs(x).max()), 1e-3)
    x = x + rng.normal(0.0, 0.05 * span, size=x.shape)
    big = rng.random(n) < 1 / 3
    x[big] *= rng.uniform(2.0, 4.0, size=(int(big.sum()),) + (1,) * (x.ndim - 1))
    return x.astype(np.float32)


def run_point(model, data: SweepData, cfg: dict, st: Settings, metric) -> dict:
    """Evaluate one configuration; failures of one step are recorded, not raised."""
    from ..cost_model import estimate_cost
    from ..verification import verify

    t0 = time.time()
    rec = {k: None for k in COLUMNS}
    rec.update(cfg, id=point_id(cfg), status="ok", error="", verify_samples=st.verify_samples)
    rec.update(_family(cfg))
    try:
        q = build_point(model, cfg, st, data)
        rec["accuracy"] = evaluate(q, data.x_test, data.y_test, metric)
    except Exception as e:  # this configuration cannot be built: record why, go on with the rest
        rec.update(status="error", error=f"build: {type(e).__name__}: {e}")
        rec["seconds"] = round(time.time() - t0, 3)
        return rec
    try:
        cost = estimate_cost(q, **st.cost)
        rec.update({k: _num(cost.total.get(k)) for k in COST_FIELDS}, datapath=cost.datapath)
    except Exception as e:
        rec.update(status="partial", error=f"cost: {type(e).__name__}: {e}")
    if st.verify_samples:
        try:
            rep = verify(q, verify_inputs(data.x_test, st.verify_samples, cfg["seed"]),
                         qonnx_subset=min(st.verify_qonnx, st.verify_samples))
            rec.update(exact=bool(rep.exact), verify_paths="+".join(rep.paths),
                       mismatch="" if rep.first_mismatch is None else str(rep.first_mismatch))
        except Exception as e:
            rec.update(status="partial", exact=None,
                       error=(rec["error"] + "; " if rec["error"] else "") + f"verify: {type(e).__name__}: {e}")
    if st.profile is not None:
        try:  # measured GPU/CPU inference of the same model, next to its FPGA estimate
            from ..profiling import profile_torch
            prof = profile_torch(q, **dict(st.profile, dtypes=("fp32",), gemm=False, progress=False))
            rec.update(profile_device=prof.device_name, float_inf_per_s=_num(prof.row("float fp32").throughput),
                       fake_quant_inf_per_s=_num(prof.row("fpq fake-quant").throughput))
        except Exception as e:
            rec.update(status="partial",
                       error=(rec["error"] + "; " if rec["error"] else "") + f"profile: {type(e).__name__}: {e}")
    rec["seconds"] = round(time.time() - t0, 3)
    return rec


ENGINE_ERROR = "engine:"  # the error of a point the engine lost (not its own failure): recomputed on resume


def _failed_record(cfg: dict, st: Settings, why: str) -> dict:
    rec = {k: None for k in COLUMNS}
    rec.update(cfg, id=point_id(cfg), status="error", error=why, verify_samples=st.verify_samples, seconds=0.0)
    rec.update(_family(cfg))
    return rec


def _num(v):
    if v is None:
        return None
    v = float(v)
    return int(v) if v.is_integer() else round(v, 3)


# ----------------------------------------------------------------------------- commands


# sweep() keyword arguments with a default that commands leave out, and their CLI flags
_DEFAULTS = {"verify_qonnx": 2, "calib_samples": 1024, "scale": "po2", "granularity": "tensor", "cost": {}}
_CLI_FLAGS = {"verify_qonnx": "--verify-qonnx", "calib_samples": "--calib-samples", "scale": "--scale",
              "granularity": "--granularity"}


def commands(cfg: dict, st: Settings) -> tuple[str, str]:
    """The ``fpq sweep ... --only ID`` command (when the model and data are specs) and the Python call."""
    pid = point_id(cfg)
    extra = {k: getattr(st, k) for k, v in _DEFAULTS.items() if getattr(st, k) != v}  # settings not at default
    args = (f"{st.model_spec!r}, {(st.data_spec or DEFAULT_DATA_SPEC)!r}" if st.model_spec else "model, data")
    py = (f"fpq.sweep({args}, weights=[{cfg['weights']!r}], activations=[{cfg['activations']!r}], "
          f"methods=({cfg['method']!r},), first_last={None if cfg['first_last'] is None else [cfg['first_last']]!r}, "
          f"qat_epochs={cfg['qat_epochs']}, seed={cfg['seed']}, verify_samples={st.verify_samples}, "
          + "".join(f"{k}={v!r}, " for k, v in extra.items()) + ("trust_pickle=True, " if st.trust_pickle else "")
          + f"out={st.out!r}, only=[{pid!r}])")
    if st.model_spec is None or set(extra) - set(_CLI_FLAGS):
        return "", py  # the command line cannot express this point
    parts = ["fpq", "sweep", "--model", st.model_spec, *(["--trust-pickle"] if st.trust_pickle else []),
             "--data", st.data_spec or DEFAULT_DATA_SPEC,
             "--weights", cfg["weights"], "--activations", cfg["activations"], "--methods", cfg["method"]]
    if cfg["first_last"] is not None:
        parts += ["--first-last", cfg["first_last"]]
    if cfg["qat_epochs"]:
        parts += ["--qat-epochs", str(cfg["qat_epochs"])]
    parts += ["--seed", str(cfg["seed"]), "--verify-samples", str(st.verify_samples)]
    for k, v in extra.items():
        parts += [_CLI_FLAGS[k], str(v)]
    if st.out:
        parts += ["--out", st.out]
    parts += ["--only", pid]
    return " ".join(shlex.quote(p) for p in parts), py


# ----------------------------------------------------------------------------- the sweep
def _layer_names(q) -> tuple[str, str]:
    from ..nn.layers import FpqConv1d, FpqConv2d, FpqLinear
    modules = dict(q.named_modules())
    names = [n for n, f in q.fpq_policy.layers.items()   # a kept BatchNorm has weight formats too
             if "weights" in f and isinstance(modules.get(n), (FpqLinear, FpqConv1d, FpqConv2d))]
    if not names:
        raise ValueError("fpq.sweep: the model has no Linear/Conv layer to quantize")
    return names[0], names[-1]


def _check_pipeline(model, data: SweepData, cfg: dict, st: Settings) -> tuple[str, str]:
    """Convert, calibrate, run, price and export one point up front: a model the pipeline cannot
    take fails here with the reason, before any point starts."""
    from ..calibration import calibrate
    from ..conversion import convert
    from ..cost_model import estimate_cost
    from ..export import export_qonnx

    step = "convert"
    try:
        q = convert(model, weights=cfg["weights"], activations=cfg["activations"], scale=st.scale,
                    granularity=st.granularity)
        first, last = _layer_names(q)
        step = "calibrate"
        calibrate(q, [data.x_train[:64]], method="max", progress=False)
        step = "forward"
        evaluate(q, data.x_test[:8], data.y_test[:8], lambda o, t: 0.0)
        step = "estimate_cost"
        estimate_cost(q, **st.cost)
        step = "export_qonnx"
        export_qonnx(q, None, data.x_test[:1])
    except Exception as e:
        raise ValueError(f"fpq.sweep: the model cannot go through the fpq pipeline ({step} failed with "
                         f"weights={cfg['weights']}, activations={cfg['activations']}): "
                         f"{type(e).__name__}: {e}") from e
    return first, last


def sweep(model, data=None, formats=None, methods=("max", "mse"), weights=None, activations=None,
          first_last=None, qat_epochs: int = 0, out: str = "out/sweep", workers: int = 2, seed: int = 0,
          verify_samples: int = 64, progress: bool = True, *, only=None, fresh: bool = False,
          metric=None, cost=None, scale: str = "po2", granularity: str = "tensor",
          calib_samples: int = 1024, verify_qonnx: int = 2, profile=None,
          trust_pickle: bool = False, engine: str = "local", address: str | None = None,
          hls: str | None = None, hls_samples: int = 16, hls_options=None, compile_workers: int = 1) -> SweepResult:
    """Evaluate accuracy, FPGA cost and bit-exactness over a grid of formats x calibration methods.

    Every (weights x activations x first_last x method) point converts the float model, calibrates
    it (optionally a few QAT epochs) and records the metric on the held-out data, the
    ``fpq.estimate_cost`` totals and ``fpq.verify`` on off-grid inputs (see the module docstring).
    Finished points are stored in ``out/cache.jsonl``, so a stopped sweep resumes; at the end
    ``results.csv`` and ``results.json`` hold one row per point with the command that rebuilds it.
    Everything is checked before any point runs.

    Args:
        model (torch.nn.Module | str): a trained float model, or a spec ``FILE.py:NAME`` /
            ``MODULE:NAME`` / ``FILE.pt`` (then the results carry ``fpq sweep`` commands).
        data (object | tuple | dict | str | None): an object with ``x_train``, ``y_train``,
            ``x_test``, ``y_test`` (e.g. ``fpq.data.load_digits_split()``), a 4-tuple of them,
            {"train": (x, y), "test": (x, y)}, or a spec; None: ``fpq.data:load_digits_split``.
        formats (list[str] | None): formats of both axes (default ``fpq.report.grid.grid()``: int
            and every minifloat split, 3 .. 8 bits).
        methods (str | Sequence[str]): calibration methods of ``fpq.calibrate`` ("max",
            "percentile", "mse").
        weights (list[str] | None): the weight axis (default ``formats``).
        activations (list[str] | None): the activation axis (default ``formats``).
        first_last (list[str] | None): formats for the first and last Linear / Conv (and the input
            quantizer); None keeps the point's formats there.
        qat_epochs (int): QAT epochs after calibration, >= 0.
        out (str): the folder of the cache and the results tables.
        workers (int): processes (or Ray CPUs); <= 1 runs in this process.
        seed (int): torch seed each point starts from.
        verify_samples (int): off-grid inputs compared torch == emulator (0: no verify).
        progress (bool): show a progress bar.
        only (str | list[str] | None): point ids to run (others skipped).
        fresh (bool): ignore the cache and recompute.
        metric (Callable | None): ``metric(logits, targets) -> float``, higher is better (default
            top-1 accuracy in %); must be picklable for workers > 1.
        cost (dict | None): keyword arguments of ``fpq.estimate_cost``.
        scale (str): "po2" or "float" (``fpq.convert``'s scale).
        granularity (str): "tensor" or "channel" (``fpq.convert``'s granularity).
        calib_samples (int): training inputs used for calibration, >= 1.
        verify_qonnx (int): of the verify inputs, how many also run qonnx's executor (~0.2 s each).
        profile (dict | None): keyword arguments of ``fpq.profile_torch`` to record measured float
            and fake-quant inferences/s per point; None skips it.
        trust_pickle (bool): allow a ``FILE.pt`` model spec written by ``torch.save(model)``
            (loading a pickle runs any code it holds: only for files you trust).
        engine (str): "local" (this machine's processes) or "ray" (Ray tasks; ``pip install
            'fpq[ray]'``).
        address (str | None): the Ray cluster ("auto", "ray://HOST:PORT" or "HOST:PORT"); None
            starts a local Ray. Only with ``engine="ray"``.
        hls (str | None): None, "front" (the Pareto-front points) or "all": build those points' HLS
            projects with ``hls_options`` and C-simulate ``hls_samples`` verify inputs
            (``hls_exact`` in the results).
        hls_samples (int): verify inputs the HLS C simulation runs.
        hls_options (dict | None): keyword arguments of ``fpq.to_hls``.
        compile_workers (int): local processes compiling HLS projects.

    Returns:
        SweepResult: ``records`` (one dict per point: id, weights, activations, method, accuracy,
        exact, lut, ff, dsp, latency_ns, ..., status), ``meta``, ``csv_path``, ``json_path`` and
        ``computed`` (points evaluated in this call, the rest came from the cache).

    Raises:
        TypeError: ``model`` is neither an ``nn.Module`` nor a spec string, or ``data`` has none of
            the accepted shapes.
        ValueError: an unknown engine or calibration method, ``address`` without Ray, an invalid
            format, an empty grid, negative counts, ``only`` ids not in the grid, unusable data
            (empty, mismatched lengths, NaN / Inf), bad HLS options, or a model that cannot go
            through the fpq pipeline (the message names the step and the formats).

    Example:
        One point (int4 weights and activations, "max" calibration) on random data:

        >>> import os, tempfile, torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(torch.nn.Linear(4, 3))
        >>> data = (torch.randn(64, 4), torch.randint(0, 3, (64,)), torch.randn(32, 4), torch.randint(0, 3, (32,)))
        >>> with tempfile.TemporaryDirectory() as d:
        ...     res = fpq.sweep(model, data, formats=["int4"], methods="max", out=os.path.join(d, "sweep"),
        ...                     workers=1, verify_samples=8, verify_qonnx=0, calib_samples=32, progress=False)
        ...     sorted(os.listdir(os.path.join(d, "sweep")))
        ['cache.jsonl', 'progress.json', 'results.csv', 'results.json']
        >>> r = res.records[0]
        >>> r["weights"], r["activations"], r["method"], r["exact"], res.computed
        ('int4', 'int4', 'max', True, 1)
    """
    import torch

    from ..nn.calibration_stats import METHODS

    t_start = time.time()
    if engine not in ENGINES:
        raise ValueError(f"fpq.sweep: unknown engine {engine!r}; allowed: {', '.join(ENGINES)}")
    if address is not None and engine != "ray":
        raise ValueError(f"fpq.sweep: address={address!r} is for engine='ray' (engine is {engine!r})")
    check_address(address)
    plan = check_hls(hls, hls_samples, hls_options, compile_workers, int(verify_samples))
    if engine == "ray":
        ray_module()  # installed? (it is imported only here and in the engine)
    st = Settings(seed=int(seed), qat_epochs=int(qat_epochs), verify_samples=int(verify_samples),
                  verify_qonnx=int(verify_qonnx), calib_samples=int(calib_samples), scale=scale,
                  granularity=granularity, cost=dict(cost or {}), out=str(out),
                  profile=None if profile is None else dict(profile),
                  metric_name=getattr(metric, "__name__", "metric") if metric is not None else "accuracy")
    # --- everything is checked before any point runs
    if isinstance(model, str):
        st.model_spec = model
        st.trust_pickle = bool(trust_pickle)
        model = load_spec(model, trust_pickle=bool(trust_pickle))
    if data is None:
        data = DEFAULT_DATA_SPEC
    if isinstance(data, str):
        st.data_spec = data
        data = load_spec(data)
    if not is_torch_module(model):
        raise TypeError(f"fpq.sweep: model must be a torch.nn.Module or a spec string, got {type(model).__name__}")
    data = as_sweep_data(data)
    metric = metric if metric is not None else top1_accuracy
    if formats is None and weights is None and activations is None:
        formats = grid()
    w_axis = canonical_list(weights if weights is not None else formats, "weights")
    a_axis = canonical_list(activations if activations is not None else formats, "activations")
    fl_axis = [None] if first_last is None else canonical_list(first_last, "first_last")
    methods = [methods] if isinstance(methods, str) else list(methods or [])
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"fpq.sweep: unknown calibration method(s) {bad}; allowed: {', '.join(METHODS)}")
    empty = [n for n, ax in (("weights", w_axis), ("activations", a_axis), ("first_last", fl_axis),
                             ("methods", methods)) if not ax]
    if empty:
        raise ValueError(f"fpq.sweep: empty grid: no entries for {', '.join(empty)}")
    if st.qat_epochs < 0 or st.verify_samples < 0 or st.calib_samples < 1:
        raise ValueError("fpq.sweep: qat_epochs and verify_samples must be >= 0, calib_samples >= 1")
    cfgs = [dict(c, qat_epochs=st.qat_epochs, seed=st.seed) for c in points(w_axis, a_axis, methods, fl_axis)]
    if only is not None:
        only = [only] if isinstance(only, str) else list(only)
        ids = {point_id(c) for c in cfgs}
        unknown = [o for o in only if o not in ids]
        if unknown:
            raise ValueError(f"fpq.sweep: --only ids {unknown} are not points of this grid "
                             f"({len(cfgs)} points; pass the same formats/methods/seed they were made with)")
        cfgs = [c for c in cfgs if point_id(c) in only]
    workers = int(workers)
    payload = None
    if workers > 1 or engine == "ray" or (plan is not None and plan.compile_workers > 1):
        try:
            payload = pickle.dumps({"model": model, "data": data, "settings": st, "metric": metric})
        except Exception as e:
            why = f"engine='ray'" if engine == "ray" else f"workers={workers}"
            raise ValueError(f"fpq.sweep: {why} needs the model, data and metric to be picklable "
                             f"(defined at module top level): {type(e).__name__}: {e}; or pass workers=1") from e
    st.first_layer, st.last_layer = _check_pipeline(model, data, cfgs[0], st)
    if payload is not None:  # the layer names are known now
        payload = pickle.dumps({"model": model, "data": data, "settings": st, "metric": metric})

    # --- cache
    os.makedirs(st.out, exist_ok=True)
    cache_path = os.path.join(st.out, CACHE)
    ctx = context_hash(model, data, st, metric)
    key = {point_id(c): f"{point_id(c)}-{ctx}" for c in cfgs}
    _end_partial_line(cache_path)
    cached = {} if fresh else read_cache(cache_path)
    # a point whose engine lost it (its worker died on every retry) is tried again
    done = {point_id(c): cached[key[point_id(c)]] for c in cfgs if key[point_id(c)] in cached
            and not str(cached[key[point_id(c)]].get("error") or "").startswith(ENGINE_ERROR)}
    todo = [c for c in cfgs if point_id(c) not in done]
    phase = None if plan is None else HlsPhase(
        plan, cache_path, key, lambda: [done[point_id(c)] for c in cfgs if point_id(c) in done], fresh)
    progress_path = os.path.join(st.out, PROGRESS)
    live = {"running": 0, "started": t_start}

    from tqdm.auto import tqdm
    bar = tqdm(total=len(cfgs), initial=len(done), desc=f"fpq.sweep[{engine}]", unit="pt", disable=not progress)

    def show(state="running"):
        failed = sum(r["status"] == "error" for r in done.values())
        bar.set_postfix_str(f"done {len(done) - failed} failed {failed} running {live['running']}", refresh=False)
        write_progress(progress_path, {
            "state": state, "context": ctx, "engine": engine, "total": len(cfgs), "done": len(done) - failed,
            "failed": failed, "running": live["running"], "started": round(t_start, 3),
            "updated": round(time.time(), 3), "pid": os.getpid(), "host": os.uname().nodename,
            "meta": {"metric": st.metric_name, "seed": st.seed, "workers": workers, "model_spec": st.model_spec,
                     "first_layer": st.first_layer, "last_layer": st.last_layer, "n_test": len(data.x_test)}})

    def running(n):
        live["running"] = n
        show()
        bar.refresh()

    def finish(cfg, rec):
        if isinstance(rec, BaseException):  # the engine lost the point or it raised outside run_point
            rec = _failed_record(cfg, st, f"{ENGINE_ERROR} {type(rec).__name__}: {str(rec).strip()[-2000:]}")
        rec["command"], rec["python"] = commands(cfg, st)
        _append_cache(cache_path, key[point_id(cfg)], rec)
        done[point_id(cfg)] = rec
        live["running"] = max(0, live["running"] - 1)
        show()
        bar.update(1)

    state = "interrupted"
    try:
        show()
        if engine == "ray":
            if todo or (phase is not None and phase.jobs()):  # (jobs are known once every point is)
                run_points(engine, todo, workers, payload, finish, running, address, phase=phase)
        else:
            # one thread like the workers: QAT sums in float32 could otherwise depend on the thread count
            threads = torch.get_num_threads()
            torch.set_num_threads(1)
            try:
                if workers > 1 and len(todo) > 1:
                    run_points(engine, todo, workers, payload, finish, running)
                else:
                    with in_process():
                        for c in todo:
                            running(1)
                            finish(c, run_point(model, data, c, st, metric))
                if phase is not None and phase.plan.compile_workers > 1:
                    run_points(engine, [], workers, payload, finish, running, phase=phase)
                elif phase is not None:
                    with in_process():
                        phase.run_here(model, data, st)
            finally:
                torch.set_num_threads(threads)
        state = "finished"
    finally:
        live["running"] = 0
        show(state)
        bar.close()

    records = [done[point_id(c)] for c in cfgs]
    if phase is not None:
        records = phase.merge(records)
    meta = {"float_accuracy": evaluate(model, data.x_test, data.y_test, metric), "metric": st.metric_name,
            "points": len(records), "computed": len(todo), "cached": len(cfgs) - len(todo),
            "seconds": round(time.time() - t_start, 2), "workers": workers, "engine": engine, "seed": st.seed,
            "model_spec": st.model_spec, "data_spec": st.data_spec or (DEFAULT_DATA_SPEC if st.model_spec else None),
            "first_layer": st.first_layer, "last_layer": st.last_layer, "settings": st.fingerprint(),
            "context": ctx, "n_test": len(data.x_test)}
    if phase is not None:
        meta["hls"] = phase.meta()
    cpath, jpath = write_tables(records, meta, st.out)
    return SweepResult(records, meta, st.out, cpath, jpath, len(todo))


__all__ = ["sweep", "grid", "SweepResult", "SweepData", "load_results", "load_spec", "point_id",
           "top1_accuracy", "verify_inputs"]
