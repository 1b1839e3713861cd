"""``fpq report RESULTS``: Pareto tables, plots and an HTML page of a sweep."""
from __future__ import annotations

import sys


def cli_register(subparsers) -> None:
    r = subparsers.add_parser("report", help="Pareto tables, plots and an HTML page of a sweep",
                              description="Write the Pareto fronts (accuracy vs LUT, DSP, latency), plots "
                                          "(PNG, SVG) and index.html of a sweep's results.")
    r.add_argument("results", help="results.json / results.csv, or the sweep's output folder")
    r.add_argument("--out", default=None, help="output folder (default: next to the results)")
    r.set_defaults(func=run)


def run(args) -> int:
    import os

    from ..report.html import report

    out = args.out or (args.results if os.path.isdir(args.results) else os.path.dirname(os.path.abspath(args.results)))
    try:
        path = report(args.results, out)
    except (ValueError, TypeError) as e:
        print(f"fpq report: error: {e}", file=sys.stderr)
        return 2
    print(f"report: {path}")
    return 0
