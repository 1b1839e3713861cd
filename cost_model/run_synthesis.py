"""Regenerate the measured operator table: cost_model/operators_xcup.csv.

    python cost_model/run_synthesis.py [--jobs 2] [--cache run.jsonl]

Thin wrapper around ``python -m fpq.cost_model.synth`` (the generators, the flags and the grid
live in the fpq package so that tests and the benchmark use the same code).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from fpq.cost_model.synth import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
