"""Pareto fronts of sweep points: maximize accuracy, minimize one cost."""
from __future__ import annotations

import math

COSTS = {"lut": "LUTs", "dsp": "DSPs", "latency_ns": "latency (ns)"}


def _usable(r: dict, acc: str, cost: str) -> bool:
    a, c = r.get(acc), r.get(cost)
    return (r.get("status", "ok") != "error" and a is not None and c is not None
            and math.isfinite(float(a)) and math.isfinite(float(c)))


def pareto_front(records, cost: str = "lut", accuracy: str = "accuracy") -> list:
    """The points no other point beats: none has accuracy >= and cost <= with one of them strict.

    Points with an error or a missing value are left out. Identical points are all kept. The
    front is returned by increasing cost (then decreasing accuracy).

    Args:
        records: sweep records (dicts).
        cost: the cost field (lower is better).
        accuracy: the accuracy field (higher is better).

    Returns:
        list: the front's records.

    Example:
        >>> from fpq.report import pareto_front
        >>> recs = [dict(accuracy=90, lut=100), dict(accuracy=95, lut=300), dict(accuracy=92, lut=400)]
        >>> pareto_front(recs, cost="lut")
        [{'accuracy': 90, 'lut': 100}, {'accuracy': 95, 'lut': 300}]
    """
    pts = [r for r in records if _usable(r, accuracy, cost)]
    # sort by cost, best accuracy first among equal costs; a point is on the front iff its
    # accuracy beats every point of strictly lower cost and ties the best at its own cost
    pts.sort(key=lambda r: (float(r[cost]), -float(r[accuracy])))
    front, best_below = [], -math.inf
    i = 0
    while i < len(pts):
        c = float(pts[i][cost])
        group = [r for r in pts[i:] if float(r[cost]) == c]
        top = float(group[0][accuracy])
        if top > best_below:
            front += [r for r in group if float(r[accuracy]) == top]
            best_below = top
        i += len(group)
    return front


def dominated(a: dict, b: dict, cost: str, accuracy: str = "accuracy") -> bool:
    """True when ``b`` dominates ``a``.

    Args:
        a: a record.
        b: another record.
        cost: the cost field.
        accuracy: the accuracy field.

    Returns:
        bool: whether ``b`` dominates ``a``.

    Example:
        >>> from fpq.report import dominated
        >>> dominated(dict(accuracy=92, lut=400), dict(accuracy=95, lut=300), "lut")
        True
    """
    aa, ac, ba, bc = float(a[accuracy]), float(a[cost]), float(b[accuracy]), float(b[cost])
    return ba >= aa and bc <= ac and (ba > aa or bc < ac)


def fronts(records, costs=tuple(COSTS), accuracy: str = "accuracy") -> dict:
    return {c: pareto_front(records, c, accuracy) for c in costs}


def markdown_front(records, cost: str = "lut", accuracy: str = "accuracy") -> str:
    """The Pareto front as a Markdown table (for a README)."""
    rows = ["| weights | activations | method | accuracy % | LUT | DSP | latency ns | bit-exact |",
            "|---|---|---|---:|---:|---:|---:|---|"]
    for r in pareto_front(records, cost, accuracy):
        rows.append(f"| {r['weights']} | {r['activations']} | {r.get('method', '')} | {float(r[accuracy]):.2f} | "
                    f"{_n(r.get('lut'))} | {_n(r.get('dsp'))} | {_n(r.get('latency_ns'))} | "
                    f"{'yes' if r.get('exact') is True else 'no' if r.get('exact') is False else '-'} |")
    return "\n".join(rows)


def _n(v) -> str:
    return "-" if v is None else f"{float(v):.0f}"
