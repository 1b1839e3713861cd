"""``fpq.fit``: choose io_type and, per layer, the hls4ml strategy and reuse factor so that the cost
estimate fits a budget of every resource of an FPGA part, and hand the choice to ``fpq.to_hls``.

The search, per io_type. A layer's row of the estimate depends only on its own (reuse factor,
strategy): the totals are sums of rows (II the largest row's), so each (layer, setting) is priced
once (``_Rows``, batched: one ``estimate`` call prices one setting of every layer) and a move is
judged by arithmetic. Start fully unrolled (every reuse factor 1); while some resource exceeds
``budget`` x the part's, take the move that removes the most excess per cycle it adds, where the
excess is sum over resources of max(0, need / allowed - 1) and the cycles are those of the
objective (latency, or the II for "throughput"). The moves of each layer: its next valid reuse
factor at least twice as large (in each strategy), or the other strategy at the same reuse
factor (Latency keeps the weights as constants in LUTs, Resource reads them from BRAM: a layer
can trade LUTs for BRAM). Excess counted over every resource is what lets it trade: raising a
layer's reuse factor moves int8 multipliers onto DSPs, which is a gain only while DSPs are free.
When no move lowers the excess, the move that most lowers the most over-used resource is taken
(it can raise another resource on the way). Why greedy doubling: in the shared-multiplier regime
a layer's multipliers, adders and registers fall as 1 / R while its latency grows as R; it needs
O(layers x log2(max R)) moves where an exhaustive search is exponential in the number of layers.
Once it fits, each layer in turn (the slowest first) takes the setting of the fewest cycles that
still fits (``_relax``: doubling overshoots). A second start, one reuse factor for every layer
doubled until it fits and then relaxed the same way (``_uniform``), catches what moves of one
layer at a time miss; the better of the two is kept. It is a heuristic: it can miss a setting
with a lower latency. The same search with one strategy for every layer runs too, and of all runs that
fit, ``objective="latency"`` takes the fewest latency cycles (then the lowest II), ``"throughput"``
the lowest II (then the fewest cycles).

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

    Args:
        message: the error message.
        shortfall: {resource ("lut", "ff", "dsp", "bram18"): (needed, allowed)} at the cheapest
            setting tried, for the resources over the budget.
        fixed: {resource: how much of that need no reuse factor or strategy changes} (io_stream
            FIFOs and line buffers, layers without weights): where it exceeds the allowed amount,
            no setting of fit's can fit.

    Example:
        >>> from fpq.fitting import FitError
        >>> err = FitError("LUT: needs 120, allowed 100", shortfall={"lut": (120, 100)})
        >>> err.shortfall, isinstance(err, ValueError)
        ({'lut': (120, 100)}, True)
    """

    def __init__(self, message: str, shortfall: dict | None = None, fixed: dict | None = None):
        super().__init__(message)
        self.shortfall = dict(shortfall or {})
        self.fixed = dict(fixed or {})


def valid_reuse_factors(n_in: int, n_out: int) -> list[int]:
    """hls4ml's valid reuse factors of a layer, ascending.

    The layer has ``n_in`` inputs and ``n_out`` outputs per multiply (Dense: its sizes; Conv:
    n_chan x kernel, n_filt).

    Args:
        n_in: inputs per multiply.
        n_out: outputs per multiply.

    Returns:
        list[int]: the valid reuse factors, ascending.

    Example:
        >>> from fpq.fitting import valid_reuse_factors
        >>> valid_reuse_factors(16, 4)
        [1, 2, 4, 8, 16, 32, 64]
    """
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
    """The setting ``fpq.fit`` chose and its estimate; ``hls_kwargs`` go straight into ``fpq.to_hls``.

    Use it as ``fpq.to_hls(q, outdir, **result.hls_kwargs)``. ``print`` it for a summary.

    Args:
        device (Device): the FPGA fitted to.
        budget (float): the share of each resource allowed.
        objective (str): "latency" or "throughput".
        io_type (str): the chosen io type.
        strategies (dict): {layer: "Latency" | "Resource"} for every layer with a reuse factor.
        reuse_factor (dict): {layer name: reuse factor}, every layer that has one.
        clock_period (float): the clock period in ns.
        report (CostReport): the estimate at the chosen setting.
        tried (list): (io_type, strategies searched, fits, worst share of the budget) per search.
        part (str): the full part number given, if any.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> fit = fpq.fit(q, part="xc7z020", objective="throughput")
        >>> fit.strategy, fit.ii, fit.report is not None
        ('Latency', 1, True)
    """

    device: Device
    budget: float
    objective: str
    io_type: str
    strategies: dict
    reuse_factor: dict              # {layer name: reuse factor}, every layer that has one
    clock_period: float
    report: CostReport
    tried: list = field(default_factory=list)   # (io_type, strategies searched, fits, worst share of the budget)
    part: str = ""

    @property
    def strategy(self) -> str:
        """The strategy every layer has, 'per-layer' when they differ ('Latency' when no layer has one).
        """
        names = set(self.strategies.values())
        return names.pop() if len(names) == 1 else ("per-layer" if names else "Latency")

    @property
    def ii(self) -> int:
        """Initiation interval of the network in clock cycles.
        """
        return int(self.report.total["ii"])

    @property
    def latency_cycles(self) -> int:
        """Latency of one inference in clock cycles.
        """
        return int(self.report.total["latency_cycles"])

    @property
    def latency_ns(self) -> float:
        """Latency of one inference in ns at ``clock_period``.
        """
        return float(self.report.total["latency_ns"])

    def utilization(self) -> dict:
        """Share of the device's LUT / FF / DSP / BRAM18 the chosen setting needs.

        Returns:
            dict[str, float]: as ``CostReport.utilization``.
        """
        return self.report.utilization()

    @property
    def hls_kwargs(self) -> dict:
        """Keyword arguments of ``fpq.to_hls``: io_type, strategy, reuse_factor, part, clock_period.
        """
        st = self.strategy if self.strategy != "per-layer" else dict(self.strategies)
        return dict(io_type=self.io_type, strategy=st, reuse_factor=dict(self.reuse_factor),
                    part=self.part or self.device.part or self.device.name, clock_period=self.clock_period)

    def __str__(self) -> str:
        u = self.utilization()
        t = self.report.total
        use = "  ".join(f"{NAMES[k]} {t[k]:.0f} ({100 * u[k]:.1f}%)" for k in RESOURCES)
        rfs = ", ".join(f"{k}={v}{'' if self.strategy != 'per-layer' else ' ' + self.strategies[k]}"
                        for k, v in self.reuse_factor.items())
        return (f"fit to {self.device.name} at {100 * self.budget:.0f}% ({self.objective}): {self.io_type}, "
                f"strategy {self.strategy}, reuse factors {rfs or '(no layer has one)'}\n"
                f"  {use}\n  II {self.ii} cycles, latency {self.latency_cycles} cycles = {self.latency_ns:.1f} ns "
                f"at {self.clock_period} ns")

    def to_dict(self) -> dict:
        """The result as plain JSON-serializable data.

        Returns:
            dict: the setting, its II and latency, utilization and the estimate's totals.
        """
        return {"device": self.device.name, "part": self.hls_kwargs["part"], "budget": self.budget,
                "objective": self.objective, "io_type": self.io_type, "strategy": self.strategy,
                "strategies": dict(self.strategies), "reuse_factor": dict(self.reuse_factor),
                "clock_period": self.clock_period, "ii": self.ii,
                "latency_cycles": self.latency_cycles, "latency_ns": self.latency_ns,
                "utilization": self.utilization(), "total": dict(self.report.total),
                "tried": [list(t) for t in self.tried]}


def _caps(dev: Device) -> dict:
    return {"lut": dev.lut, "ff": dev.ff, "dsp": dev.dsp, "bram18": dev.bram18}


def _shares(total: dict, dev: Device, budget: float) -> dict:
    """Need / allowed (budget x the part's) of each resource; inf where the part has none."""
    caps = _caps(dev)
    return {k: (total[k] / (budget * caps[k]) if caps[k] else (math.inf if total[k] else 0.0)) for k in RESOURCES}


def _excess(share: dict) -> float:
    return sum(max(0.0, v - 1.0) for v in share.values())


# the parts of a weighted layer's row that no reuse factor or strategy changes: its io_stream
# output FIFO, clone FIFOs and line buffer (stream._add_stream_buffers, add_clone_fifos)
_FIXED_PARTS = {"lut": ("fifo_lut", "clone_fifo_lut", "line_buffer_lut"), "bram18": ("fifo_bram18", "clone_fifo_bram18"),
                "ff": (), "dsp": ()}


def _fixed(rep: CostReport, sizes, k: str) -> float:
    """How much of resource ``k`` no setting fit chooses can change: every row of a layer without
    a reuse factor, and the stream buffers of the layers with one."""
    return float(sum(r[k] if r["layer"] not in sizes else sum(r.get(p, 0) for p in _FIXED_PARTS[k])
                     for r in rep.layers))


def _largest(rep: CostReport, k: str) -> str:
    row = max(rep.layers, key=lambda r: r[k])
    return f"{row['layer']} ({row['op']}): {row[k]:,.0f}"


ADDITIVE = RESOURCES + ("latency_cycles",)
RELAX_SPAN = 8


class _Rows:
    """Each layer's row of the estimate at each (reuse factor, strategy), priced once: one
    ``estimate`` call prices one candidate setting of every layer at a time (the rows do not
    depend on each other's settings), and the rest of the report (layers without a reuse factor,
    lookups, stream buffers of other ops) is a constant part."""

    def __init__(self, tp, dev, io_type, sizes, settings, cache: dict):
        self.tp, self.dev, self.io, self.sizes, self.kw = tp, dev, io_type, list(sizes), settings
        self.cache, self.rows = cache, {}   # cache: estimate's row_cache (rows before io_type's buffers)
        self.calls = 0
        base = self._price({n: (1, "Latency") for n in self.sizes})
        rows = {r["layer"]: r for r in base.layers}
        self.const = {k: base.total[k] - sum(rows[n][k] for n in self.sizes) for k in ADDITIVE}
        self.const_ii = max([r["ii"] for r in base.layers if r["layer"] not in self.sizes] or [1])

    def _price(self, setting: dict) -> CostReport:
        self.calls += 1
        rep = estimate(self.tp, device=self.dev, reuse_factor={n: rf for n, (rf, _) in setting.items()},
                       strategy={n: st for n, (_, st) in setting.items()}, io_type=self.io, row_cache=self.cache,
                       **self.kw)
        for r in rep.layers:
            if r["layer"] in setting:
                self.rows[(r["layer"],) + tuple(setting[r["layer"]])] = {k: r[k] for k in ADDITIVE + ("ii",)}
        return rep

    def fetch(self, wanted) -> None:
        """Price every (layer, reuse factor, strategy) of ``wanted`` not priced yet."""
        todo: dict = {}
        for n, rf, st in wanted:
            if (n, rf, st) not in self.rows:
                todo.setdefault(n, []).append((rf, st))
        while todo:
            self._price({n: v.pop() for n, v in todo.items()})
            todo = {n: v for n, v in todo.items() if v}

    def row(self, n, setting):
        return self.rows[(n,) + tuple(setting)]

    def total(self, settings: dict) -> dict:
        t = dict(self.const)
        ii = self.const_ii
        for n, s in settings.items():
            r = self.row(n, s)
            for k in ADDITIVE:
                t[k] += r[k]
            ii = max(ii, r["ii"])
        t["ii"] = ii
        return t

    def report(self, settings: dict) -> CostReport:
        return estimate(self.tp, device=self.dev, reuse_factor={n: rf for n, (rf, _) in settings.items()},
                        strategy={n: st for n, (_, st) in settings.items()}, io_type=self.io, **self.kw)


def _cost(t: dict, objective: str) -> tuple:
    return (t["latency_cycles"], t["ii"]) if objective == "latency" else (t["ii"], t["latency_cycles"])


def _search(rows: _Rows, valid: dict, strategies: tuple, budget: float, objective: str):
    """The greedy descent and ``_relax`` of the module docstring. Returns (settings, fits)."""
    dev = rows.dev
    settings = {n: (1, strategies[0]) for n in rows.sizes}
    rows.fetch([(n,) + s for n, s in settings.items()])
    for _ in range(sum(len(v) for v in valid.values()) * len(strategies) + 1):
        t = rows.total(settings)
        share = _shares(t, dev, budget)
        if max(share.values()) <= 1.0:
            found = [_relax(rows, settings, valid, strategies, budget, objective)]
            found += [u for u in [_uniform(rows, valid, strategies, budget, objective)] if u is not None]
            return min(found, key=lambda f: _cost(rows.total(f), objective)), True
        cands = []
        for n, (rf, st) in settings.items():
            higher = [v for v in valid[n] if v > rf]
            nxt = next((v for v in higher if v >= 2 * rf), higher[-1]) if higher else None
            cands += [(n, rf, s2) for s2 in strategies if s2 != st and rf > 1]
            cands += [(n, nxt, s2) for s2 in strategies] if nxt else []
        rows.fetch(cands)
        base_cost, worst, ex = _cost(t, objective), max(RESOURCES, key=share.get), _excess(share)
        best, best_key = None, None
        for n, rf, st in cands:
            trial = dict(settings, **{n: (rf, st)})
            t2 = rows.total(trial)
            sh2 = _shares(t2, dev, budget)
            gain = ex - _excess(sh2)
            c2 = _cost(t2, objective)
            added = (max(0, c2[0] - base_cost[0]), max(0, c2[1] - base_cost[1]))
            if gain > 1e-12:
                key = (gain / (added[0] + 1e-3 * added[1] + 1e-6), -added[0])
                if best_key is None or key > best_key:
                    best, best_key = trial, key
        if best is None:
            # no move lowers the excess (sharing can cost more than constants until the reuse is
            # large): raise the reuse factor of the layer holding most of the worst resource
            held = [(rows.row(n, s)[worst], n) for n, s in settings.items() if valid[n][-1] > s[0]]
            if not held or max(held)[0] <= 0:
                u = _uniform(rows, valid, strategies, budget, objective)
                return (u, True) if u is not None else (settings, False)
            n = max(held)[1]
            rf, st = settings[n]
            higher = [v for v in valid[n] if v > rf]
            best = dict(settings, **{n: (next((v for v in higher if v >= 2 * rf), higher[-1]), st)})
            rows.fetch([(n,) + best[n]])
        settings = best
    u = _uniform(rows, valid, strategies, budget, objective)
    return (u, True) if u is not None else (settings, False)


def _uniform(rows: _Rows, valid: dict, strategies: tuple, budget: float, objective: str):
    """The second starting point: one reuse factor R for every layer (each layer's smallest valid
    one >= R), R doubling from 1 until it fits, for each strategy; then ``_relax``. Greedy moves of
    one layer at a time can stop where trading between two layers would do better (a layer kept
    unrolled in LUTs holding the budget that sharing everywhere would free). Returns the settings
    of the fewest cycles, or None."""
    best = None
    for st in strategies:
        r = 1
        while True:
            settings = {n: (next((v for v in valid[n] if v >= r), valid[n][-1]), st) for n in rows.sizes}
            rows.fetch([(n,) + s for n, s in settings.items()])
            if max(_shares(rows.total(settings), rows.dev, budget).values()) <= 1.0:
                settings = _relax(rows, settings, valid, strategies, budget, objective)
                if best is None or _cost(rows.total(settings), objective) < _cost(rows.total(best), objective):
                    best = settings
                break
            if all(s[0] == valid[n][-1] for n, s in settings.items()):
                break
            r *= 2
    return best


def _relax(rows: _Rows, settings: dict, valid: dict, strategies: tuple, budget: float, objective: str) -> dict:
    """Each layer, slowest first, takes the setting of the fewest cycles (objective order) among its
    smaller reuse factors and either strategy that keeps every resource within the budget."""
    for _ in range(3):   # passes: a layer that gave back resources can let an earlier one take them
        changed = False
        order = sorted(settings, key=lambda n: -rows.row(n, settings[n])["latency_cycles"])
        for n in order:
            rf0 = settings[n][0]
            # the smaller reuse factors down to rf / RELAX_SPAN: a doubling step overshoots by less
            # than 2x, and a layer's whole divisor list (thousands for a wide dense) costs an
            # estimate call each
            opts = [(v, st) for v in valid[n] if rf0 / RELAX_SPAN <= v <= rf0 for st in strategies
                    if (v, st) != settings[n]]
            rows.fetch([(n, v, st) for v, st in opts])
            best, best_cost = None, _cost(rows.total(settings), objective)
            for o in opts:
                trial = dict(settings, **{n: o})
                t = rows.total(trial)
                if max(_shares(t, rows.dev, budget).values()) <= 1.0 and _cost(t, objective) < best_cost:
                    best, best_cost = trial, _cost(t, objective)
            if best is not None:
                settings, changed = best, True
        if not changed:
            break
    return settings


def fit(q, part="xc7z020", budget=0.8, objective="latency", *, example_input=None, clock_period=5.0,
        io_types=IO_TYPES, strategies=STRATEGIES, datapath="carrier", dsp_threshold=9) -> FitResult:
    """Choose io_type and, per layer, the strategy and reuse factor so the model fits an FPGA part.

    Searches the settings ``fpq.estimate_cost`` prices so that every resource (LUT, FF, DSP,
    BRAM18) stays within ``budget`` times the part's, optimizing ``objective``.

    Args:
        q (TypePlan | FpqModel | str | ModelWrapper): as ``fpq.estimate_cost`` takes it.
        part (str | Device): the FPGA part (see ``fpq.estimate_cost``).
        budget (float): the share of each resource the design may use, 0 < budget <= 1.
        objective (str): "latency" (fewest cycles per inference) or "throughput" (lowest II).
        example_input (torch.Tensor | None): the input shape of a converted model.
        clock_period (float): target clock period in ns.
        io_types (tuple[str, ...]): io types to try, among "io_parallel" and "io_stream".
        strategies (tuple[str, ...]): hls4ml strategies a layer may take, among "Latency" and
            "Resource" (one strategy: every layer that one).
        datapath (str): as in ``fpq.estimate_cost``.
        dsp_threshold (int | None): as in ``fpq.estimate_cost``.

    Returns:
        FitResult: the chosen ``io_type``, ``strategy``, ``reuse_factor`` per layer, achieved
        ``ii`` and latency (cycles, ns), the estimate (``report``), and ``hls_kwargs`` to pass to
        ``fpq.to_hls``.

    Raises:
        ValueError: a budget outside (0, 1], an unknown objective, io_type, strategy or part, or
            empty ``io_types`` / ``strategies``.
        FitError: no setting fits; the message names each resource that runs out and by how much,
            at the cheapest setting found.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> fit = fpq.fit(q, part="xc7z020", budget=0.8)
        >>> fit.hls_kwargs["io_type"], fit.hls_kwargs["reuse_factor"]
        ('io_parallel', {'linear_0': 1})
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
    strategies = tuple(dict.fromkeys(strategies))
    tp = q if isinstance(q, TypePlan) else plan(q, example_input)
    sizes = {lp.name: nm for lp in tp if not lp.attrs.get("fused_into")
             for nm in [_layer_sizes(lp)] if nm is not None}
    valid = {name: valid_reuse_factors(*nm) for name, nm in sizes.items()}
    settings = dict(clock_period=float(clock_period), datapath=datapath, dsp_threshold=dsp_threshold)
    full = "" if isinstance(part, Device) or str(part).lower().strip() == dev.name else str(part).strip()
    budget = float(budget)

    runs, cache = [], {}
    for io in io_types:
        rows = _Rows(tp, dev, io, sizes, settings, cache)
        # every layer free to take either strategy, and each strategy for every layer
        for sts in ([strategies] if len(strategies) == 1 else [strategies] + [(s,) for s in strategies]):
            chosen, _ = _search(rows, valid, sts, budget, objective)
            rep = rows.report(chosen)
            share = _shares(rep.total, dev, budget)
            runs.append((io, sts, chosen, rep, max(share.values()) <= 1.0, max(share.values())))
    tried = [(io, "/".join(sts), ok, round(w, 4)) for io, sts, _, _, ok, w in runs]
    fitting = [r for r in runs if r[4]]
    if not fitting:
        io, sts, chosen, rep, _, _ = min(runs, key=lambda r: (_excess(_shares(r[3].total, dev, budget)), r[5]))
        share = _shares(rep.total, dev, budget)
        caps = _caps(dev)
        need = {k: round(rep.total[k]) for k in RESOURCES}      # whole units, so that need - allowed = over
        allow = {k: round(budget * caps[k]) for k in RESOURCES}
        fixed = {k: round(_fixed(rep, sizes, k)) for k in RESOURCES}
        short = "; ".join(
            f"{NAMES[k]}: needs {need[k]:,}, the budget allows {allow[k]:,} "
            f"({100 * budget:.0f}% of {caps[k]:,}), {need[k] - allow[k]:,} over ({share[k]:.2f}x; "
            f"most in {_largest(rep, k)}"
            + (f"; {fixed[k]:,} of it is {io} FIFOs, line buffers and layers without weights, which no reuse "
               f"factor or strategy changes: over the budget by {fixed[k] - allow[k]:,} alone"
               if fixed[k] > allow[k] else "") + ")" for k in RESOURCES if share[k] > 1)
        top = max([rf for rf, _ in chosen.values()], default=1)
        raise FitError(f"the model does not fit {100 * budget:.0f}% of {dev.name} at any setting tried; at the "
                       f"cheapest found ({io}, strategies {'/'.join(sts)}, reuse factors up to {top}) {short}. Use "
                       "narrower formats, a larger part or a larger budget",
                       {k: (float(rep.total[k]), float(budget * caps[k])) for k in RESOURCES if share[k] > 1},
                       {k: float(fixed[k]) for k in RESOURCES if share[k] > 1})

    io, sts, chosen, rep, _, _ = min(fitting, key=lambda r: _cost(r[3].total, objective) + (r[5],))
    return FitResult(dev, budget, objective, io, {n: st for n, (_, st) in chosen.items()},
                     {n: rf for n, (rf, _) in chosen.items()}, float(clock_period), rep, tried, full)


__all__ = ["fit", "FitResult", "FitError", "valid_reuse_factors", "OBJECTIVES"]
