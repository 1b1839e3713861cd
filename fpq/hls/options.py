"""``fpq.to_hls``' options: the checks of backend, io_type, strategy, reuse factor (one for every
layer or one per layer) and clock, and the per-layer reuse factors resolved against the graph."""
from __future__ import annotations

from . import da

BACKENDS = {"vitis": "Vitis", "vivado": "Vivado"}
IO_TYPES = ("io_parallel", "io_stream")
STRATEGIES = {"latency": "Latency", "resource": "Resource"}


def check_args(backend, io_type, strategy, reuse_factor, clock_period):
    b = BACKENDS.get(str(backend).lower())
    if b is None:
        raise ValueError(f"backend {backend!r} is not supported; allowed: Vitis, Vivado")
    if io_type not in IO_TYPES:
        raise ValueError(f"io_type {io_type!r} is not supported; allowed: {', '.join(IO_TYPES)}")
    if isinstance(strategy, dict):   # per layer (fpq.fit's choice): Latency / Resource, others Latency
        s = {}
        for name, st in strategy.items():
            one = STRATEGIES.get(str(st).lower())
            if one is None or not isinstance(name, str):
                raise ValueError(f"strategy of layer {name!r} is {st!r}; a per-layer strategy is Latency or Resource "
                                 "(distributed_arithmetic applies to the whole model)")
            s[name] = one
    else:
        s = da.STRATEGY if da.is_da(strategy) else STRATEGIES.get(str(strategy).lower())
    if s is None:
        raise ValueError(f"strategy {strategy!r} is not supported; allowed: Latency, Resource, distributed_arithmetic")
    for name, rf in (reuse_factor.items() if isinstance(reuse_factor, dict) else [(None, reuse_factor)]):
        if isinstance(rf, bool) or not isinstance(rf, int) or rf < 1 or not (name is None or isinstance(name, str)):
            raise ValueError(f"reuse_factor must be an integer >= 1 or {{layer name: integer >= 1}}, got "
                             f"{reuse_factor!r}")
    if not isinstance(clock_period, (int, float)) or not clock_period > 0:
        raise ValueError(f"clock_period must be a positive number of ns, got {clock_period!r}")
    return b, s


def layer_strategies(graph, strategy) -> tuple[str, dict]:
    """(model default, {IR op name: strategy}) from one strategy or a {layer name or torch module
    path: strategy} dict (layers it does not name: Latency), resolved like ``layer_reuse_factors``."""
    if not isinstance(strategy, dict):
        return strategy, {}
    _, per = layer_reuse_factors(graph, strategy, what="strategy")
    return "Latency", per


def layer_reuse_factors(graph, reuse_factor, what="reuse_factor") -> tuple[int, dict]:
    """(model default, {IR op name: reuse factor}) from an int or a {layer: int} dict whose keys
    are the layers' names (as estimate_cost and the TypePlan name them) or torch module paths;
    a layer the dict does not name gets 1, as in estimate_cost. hls4ml applies the per-layer
    values through its LayerName config (each hls4ml layer is named after its IR op)."""
    from ..ir import WEIGHTED_KINDS
    from ..ir.plan import module_of

    if not isinstance(reuse_factor, dict):
        return reuse_factor, {}
    names = {}
    for op in graph.ops:
        if op.kind in WEIGHTED_KINDS:
            names[op.name] = op.name
            names.setdefault(module_of(op), op.name)
    per = {}
    for key, rf in reuse_factor.items():
        if key not in names:
            raise ValueError(f"{what} names {key!r}, which is no layer with weights of this model; known: "
                             f"{', '.join(sorted(set(names.values())))} (or their torch module paths)")
        per[names[key]] = rf
    return 1, per
