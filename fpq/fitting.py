"""``fpq.fit``: choose io_type, strategy and per-layer reuse factors so that the cost estimate fits
a budget of every resource of an FPGA part, and hand the choice to ``fpq.to_hls``.

The search, per (io_type, strategy): start fully unrolled (every reuse factor 1); while some
resource exceeds ``budget`` x the part's, take the layer holding the largest share of the most
over-used resource and raise its reuse factor to the next valid one at least twice as large.
Why greedy doubling: in the shared-multiplier regime a layer's multipliers, adders and registers
fall as 1 / R while its latency grows as R, so doubling the reuse of the largest consumer of the
binding resource removes the most of it per cycle of latency added; it needs O(layers x log2(max
R)) estimates (each layer's row is priced once per reuse factor), where an exhaustive search is
exponential in the number of layers. Once it fits, each reuse factor is lowered again to the
smallest valid one that still fits (``_relax``: doubling overshoots where sharing costs more than
it saves at first). It is a heuristic: it can miss a setting with a lower latency. Among the (io_type,
strategy) pairs that fit, ``objective="latency"`` takes the fewest latency cycles (then the
lowest II), ``"throughput"`` the lowest II (then the fewest cycles).

Valid reuse factors are hls4ml's (``FPGABackend._validate_reuse_factor``, which its Resource
strategy enforces by replacing any other value): R divides n_in * n_out; below n_in,
n_in * n_out / R is a multiple of n_out; from n_in on, R is a multiple of n_in. n_in is the
layer as hls4ml builds it (a grouped conv is built dense: its n_in counts every input channel).
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from .cost_model.devices import Device, get_device
from .cost_model.costreport import CostReport
from .cost_model.estimate import IO_TYPES, estimate

OBJECTIVES = ("latency", "throughput")
STRATEGIES = ("Latency", "Resource")
RESOURCES = ("lut", "ff", "dsp", "bram18")
NAMES = {"lut": "LUT", "ff": "FF", "dsp": "DSP", "bram18": "BRAM18"}


class FitError(ValueError):
    """No setting fits the budget; the message says which resource runs out and by how much.
    ``shortfall``: {resource ("lut", "ff", "dsp", "bram18"): (needed, allowed)} at the cheapest
    setting tried, for the resources over the budget."""

    def __init__(self, message: str, shortfall: dict | None = None):
        super().__init__(message)
        self.shortfall = dict(shortfall or {})


def valid_reuse_factors(n_in: int, n_out: int) -> list[int]:
    """hls4ml's valid reuse factors of a layer with ``n_in`` inputs and ``n_out`` outputs per
    multiply (Dense: its sizes; Conv: n_chan x kernel, n_filt), ascending."""
    n = n_in * n_out
    divs = set()
    for d in range(1, math.isqrt(n) + 1):
        if n % d == 0:
            divs.update((d, n // d))
    out = []
    for rf in sorted(divs):
        limit = math.ceil(n / min(n_in, rf))
        if (limit % n_out == 0 or rf >= n_in) and (rf % n_in == 0 or rf < n_in):
            out.append(rf)
    return out


def _layer_sizes(lp) -> tuple[int, int] | None:
    """(n_in, n_out) of a layer with a reuse factor, as hls4ml builds it; None for other layers."""
    from .ir import MAC_KINDS

    W = lp.values.get("weight")
    if W is None or lp.op not in MAC_KINDS + ("batchnorm",):
        return None
    W = np.asarray(W)
    if lp.op == "batchnorm":
        # hls4ml's BatchNormalization: ceil(n / R) multipliers over its n elements
        shape = lp.attrs.get("out_shape")
        n = int(np.prod(shape[1:])) if shape is not None and len(shape) > 1 else W.size
        return n, 1
    groups = int(lp.attrs.get("groups", 1) or 1)
    return int(np.prod(W.shape[1:])) * groups, int(W.shape[0])


@dataclass
class FitResult:
    """The chosen setting and its estimate. ``hls_kwargs`` go straight into
    ``fpq.to_hls(q, outdir, **result.hls_kwargs)``."""

    device: Device
    budget: float
    objective: str
    io_type: str
    strategy: str
    reuse_factor: dict              # {layer name: reuse factor}, every layer that has one
    clock_period: float
    report: CostReport
    tried: list = field(default_factory=list)   # (io_type, strategy, fits, worst share of the budget)
    part: str = ""

    @property
    def ii(self) -> int:
        return int(self.report.total["ii"])

    @property
    def latency_cycles(self) -> int:
        return int(self.report.total["latency_cycles"])

    @property
    def latency_ns(self) -> float:
        return float(self.report.total["latency_ns"])

    def utilization(self) -> dict:
        return self.report.utilization()

    @property
    def hls_kwargs(self) -> dict:
        return dict(io_type=self.io_type, strategy=self.strategy, reuse_factor=dict(self.reuse_factor),
                    part=self.part or self.device.part or self.device.name, clock_period=self.clock_period)

    def __str__(self) -> str:
        u = self.utilization()
        t = self.report.total
        use = "  ".join(f"{NAMES[k]} {t[k]:.0f} ({100 * u[k]:.1f}%)" for k in RESOURCES)
        rfs = ", ".join(f"{k}={v}" for k, v in self.reuse_factor.items())
        return (f"fit to {self.device.name} at {100 * self.budget:.0f}% ({self.objective}): {self.io_type}, "
                f"strategy {self.strategy}, reuse factors {rfs or '(no layer has one)'}\n"
                f"  {use}\n  II {self.ii} cycles, latency {self.latency_cycles} cycles = {self.latency_ns:.1f} ns "
                f"at {self.clock_period} ns")

    def to_dict(self) -> dict:
        return {"device": self.device.name, "part": self.hls_kwargs["part"], "budget": self.budget,
                "objective": self.objective, "io_type": self.io_type, "strategy": self.strategy,
                "reuse_factor": dict(self.reuse_factor), "clock_period": self.clock_period, "ii": self.ii,
                "latency_cycles": self.latency_cycles, "latency_ns": self.latency_ns,
                "utilization": self.utilization(), "total": dict(self.report.total),
                "tried": [list(t) for t in self.tried]}


def _shares(rep: CostReport, dev: Device, budget: float) -> dict:
    """Need / allowed (budget x the part's) of each resource; inf where the part has none."""
    t = rep.total
    caps = {"lut": dev.lut, "ff": dev.ff, "dsp": dev.dsp, "bram18": dev.bram18}
    return {k: (t[k] / (budget * caps[k]) if caps[k] else (math.inf if t[k] else 0.0)) for k in RESOURCES}


def _largest(rep: CostReport, k: str) -> str:
    row = max(rep.layers, key=lambda r: r[k])
    return f"{row['layer']} ({row['op']}): {row[k]:,.0f}"


def _search(tp, dev, budget, io_type, strategy, sizes, settings):
    """Greedy doubling (see the module docstring). Returns (reuse factors, report, fits)."""
    valid = {name: valid_reuse_factors(*nm) for name, nm in sizes.items()}
    rfs = {name: 1 for name in sizes}
    cache: dict = {}

    def price(r):
        rep = estimate(tp, device=dev, reuse_factor=dict(r), strategy=strategy, io_type=io_type,
                       row_cache=cache, **settings)
        return rep, _shares(rep, dev, budget)

    while True:
        rep, share = price(rfs)
        worst = max(RESOURCES, key=lambda k: share[k])
        if share[worst] <= 1.0:
            return _relax(rfs, rep, valid, price)
        rows = {r["layer"]: r for r in rep.layers}
        best, best_use = None, 0.0
        for name, rf in rfs.items():
            if rf >= valid[name][-1]:
                continue
            use = float(rows[name][worst])
            if use > best_use:
                best, best_use = name, use
        if best is None:   # no layer that can share more holds any of the binding resource
            return rfs, rep, False
        higher = [v for v in valid[best] if v > rfs[best]]
        rfs[best] = next((v for v in higher if v >= 2 * rfs[best]), higher[-1])


def _relax(rfs, rep, valid, price):
    """Lower each reuse factor (largest first) to the smallest valid one that still fits: doubling
    can overshoot, since sharing a multiplier can cost more LUTs than not sharing it (a general
    multiplier against constant ones) until the reuse is large."""
    changed = True
    while changed:
        changed = False
        for name in sorted(rfs, key=lambda n: -rfs[n]):
            for v in (v for v in valid[name] if v < rfs[name]):
                trial = dict(rfs, **{name: v})
                r, share = price(trial)
                if max(share.values()) <= 1.0:
                    rfs, rep, changed = trial, r, True
                    break
    return rfs, rep, True


def fit(q, part="xc7z020", budget=0.8, objective="latency", *, example_input=None, clock_period=5.0,
        io_types=IO_TYPES, strategies=STRATEGIES, datapath="carrier", dsp_threshold=9) -> FitResult:
    """Choose io_type, strategy and per-layer reuse factors so that ``fpq.estimate_cost`` of ``q``
    fits ``budget`` x every resource (LUT, FF, DSP, BRAM18) of ``part``.

    ``q``: a TypePlan, a converted model or a QONNX file (as ``estimate_cost``). ``objective``:
    "latency" (fewest cycles per inference) or "throughput" (lowest II). Returns a FitResult
    (achieved II and latency in cycles and ns, the estimate, and ``hls_kwargs`` for
    ``fpq.to_hls``). Raises FitError naming the resources that run out, and by how much, at the
    cheapest setting, when no setting fits.
    """
    from .export import plan
    from .typeplan import TypePlan

    dev = get_device(part)
    if isinstance(budget, bool) or not isinstance(budget, (int, float)) or not 0 < budget <= 1:
        raise ValueError(f"budget is the share of each resource the design may use, 0 < budget <= 1; got {budget!r}")
    if objective not in OBJECTIVES:
        raise ValueError(f"unknown objective {objective!r}; allowed: {', '.join(OBJECTIVES)}")
    io_types, strategies = tuple(io_types), tuple(strategies)
    for io in io_types:
        if io not in IO_TYPES:
            raise ValueError(f"unknown io_type {io!r}; allowed: {', '.join(IO_TYPES)}")
    for st in strategies:
        if st not in STRATEGIES:
            raise ValueError(f"unknown strategy {st!r}; allowed: {', '.join(STRATEGIES)}")
    if not io_types or not strategies:
        raise ValueError("fit needs at least one io_type and one strategy to choose from")
    tp = q if isinstance(q, TypePlan) else plan(q, example_input)
    sizes = {lp.name: nm for lp in tp if not lp.attrs.get("fused_into")
             for nm in [_layer_sizes(lp)] if nm is not None}
    settings = dict(clock_period=float(clock_period), datapath=datapath, dsp_threshold=dsp_threshold)
    full = "" if isinstance(part, Device) or str(part).lower().strip() == dev.name else str(part).strip()

    runs = []
    for io in io_types:
        for st in strategies:
            rfs, rep, ok = _search(tp, dev, float(budget), io, st, sizes, settings)
            runs.append((io, st, rfs, rep, ok, max(_shares(rep, dev, float(budget)).values())))
    tried = [(io, st, ok, round(w, 4)) for io, st, _, _, ok, w in runs]
    fitting = [r for r in runs if r[4]]
    if not fitting:
        io, st, rfs, rep, _, _ = min(runs, key=lambda r: r[5])
        share = _shares(rep, dev, float(budget))
        caps = {"lut": dev.lut, "ff": dev.ff, "dsp": dev.dsp, "bram18": dev.bram18}
        short = "; ".join(
            f"{NAMES[k]}: needs {rep.total[k]:,.0f}, the budget allows {budget * caps[k]:,.0f} "
            f"({100 * budget:.0f}% of {caps[k]:,}), {rep.total[k] - budget * caps[k]:,.0f} over ({share[k]:.2f}x; "
            f"most in {_largest(rep, k)})" for k in RESOURCES if share[k] > 1)
        top = max(rfs.values(), default=1)
        raise FitError(f"the model does not fit {100 * budget:.0f}% of {dev.name} at any setting tried; at the "
                       f"cheapest ({io}, strategy {st}, reuse factors up to {top}) {short}. Use narrower formats, "
                       "a larger part or a larger budget",
                       {k: (float(rep.total[k]), float(budget * caps[k])) for k in RESOURCES if share[k] > 1})

    def rank(r):
        t = r[3].total
        key = (t["latency_cycles"], t["ii"]) if objective == "latency" else (t["ii"], t["latency_cycles"])
        return key + (r[5],)

    io, st, rfs, rep, _, _ = min(fitting, key=rank)
    return FitResult(dev, float(budget), objective, io, st, dict(rfs), float(clock_period), rep, tried, full)


__all__ = ["fit", "FitResult", "FitError", "valid_reuse_factors", "OBJECTIVES"]
