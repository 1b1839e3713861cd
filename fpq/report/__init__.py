"""Design-space sweeps and cost-accuracy reports: ``fpq.sweep``, ``fpq.report``, Pareto fronts.

``sweep(model, data, formats=grid(), methods=("max", "mse"))`` evaluates every format x method
point (accuracy, ``fpq.estimate_cost``, ``fpq.verify``); ``report(results, out_dir)`` writes the
Pareto tables, plots and an HTML page. CLI: ``fpq sweep`` and ``fpq report``.
"""
from __future__ import annotations

import sys

from .cli import cli_register
from .grid import grid, minifloat_splits
from .html import report
from .pareto import dominated, pareto_front
from .sweep import SweepResult, load_results, point_id

# ``sweep`` is the submodule, made callable (it calls ``sweep.sweep``): binding the function here
# instead would make ``import fpq.report.sweep as m`` return the function, not the module
from . import sweep  # noqa: E402  isort: skip

__all__ = ["sweep", "report", "pareto_front", "dominated", "grid", "minifloat_splits", "SweepResult",
           "load_results", "point_id", "cli_register"]


class _CallableModule(type(sys)):
    """``import fpq.report`` binds the attribute ``fpq.report`` to this package, shadowing the lazy
    function of the same name; calling the package calls ``report``, so both spellings work."""

    def __call__(self, *args, **kwargs):
        return report(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
