"""Design-space sweeps and cost-accuracy reports: ``fpq.sweep``, ``fpq.report``, Pareto fronts.

``sweep(model, data, formats=grid(), methods=("max", "mse"))`` evaluates every format x method
point (accuracy, ``fpq.estimate_cost``, ``fpq.verify``); ``report(results, out_dir)`` writes the
Pareto tables, plots and an HTML page. CLI: ``fpq sweep`` and ``fpq report``.
"""
from __future__ import annotations

from .grid import grid, minifloat_splits
from .html import report
from .pareto import dominated, pareto_front
from .records import SweepResult, load_results, point_id
from .sweeping import sweep

__all__ = ["sweep", "report", "pareto_front", "dominated", "grid", "minifloat_splits", "SweepResult",
           "load_results", "point_id"]
