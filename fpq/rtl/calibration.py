"""Synthesize the activation quantizers ``fpq.to_rtl`` writes (``fpq.rtl.quantizers``) with the
operator tables' yosys flow and merge them into the committed tables, so the cost model prices
them as synthesized (``fpq.cost_model.ops.OperatorCosts.quant_luts``).

    python -m fpq.rtl.calibration            # check (CXXRTL == fpq's quantizer), synthesize, merge

Kinds ``castq`` / ``mfq`` / ``f32q`` (see ``fpq.rtl.quantizers``): their ``fit`` rows replace the
same kinds in ``cost_model/operators_xcup.csv``, their ``holdout`` rows in ``holdout_xcup.csv``;
every other row stays as it was (``fpq.cost_model.synth.merge_family``). The grid follows the
accumulators of the MLPs ``benchmarks/bench_rtl_networks.py`` builds (23 to 45 bits, 6 to 11
integer bits) with the format's range a few binades under the accumulator's top.

The driver lives here, not in ``fpq.cost_model``, because the circuits are the network writer's
(``fpq.rtl`` imports the cost model, never the other way round).
"""
from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

import numpy as np

from ..cost_model import sim, synth
from ..formats import Fixed, finfo, parse_format
from .quantizers import input_lookup_op, quantizer_op

KINDS = ("castq", "mfq", "f32q")


def _scale_exp(fmt, acc: Fixed, headroom: int) -> int:
    """The power-of-two scale putting ``fmt``'s largest value ``headroom`` binades under the top of ``acc``."""
    top = int(np.floor(np.log2(finfo(parse_format(fmt)).max)))
    return (acc.int_bits - 1 - headroom) - top


def grid(split: str) -> list:
    """The quantizer operators of one split (``fit``: priced from; ``holdout``: only checked)."""
    if split not in ("fit", "holdout"):
        raise ValueError(f"split must be 'fit' or 'holdout', got {split!r}")
    ops = []
    if split == "fit":
        accs = [Fixed(16, 6), Fixed(24, 8), Fixed(28, 10), Fixed(34, 9), Fixed(42, 9)]
        casts = ("int2", "int4", "int6", "int8", "uint8", "int12")
        floats = ("e2m1", "e2m3", "e3m2", "e4m3", "e3m0", "e2m0")
        inputs = (("e2m1", 2.0), ("e4m3", 0.03125), ("e3m2", 0.25), ("e2m3", 1.0), ("int4", 0.37109375),
                  ("uint8", 0.0123), ("e4m3", 0.0071))
    else:
        accs = [Fixed(26, 9), Fixed(38, 8), Fixed(45, 10)]
        casts = ("int3", "int5", "uint4")
        floats = ("e3m1", "e2m2", "e4m2")
        inputs = (("e3m1", 0.5), ("e2m2", 2.0), ("int6", 0.049))
    for i, acc in enumerate(accs):
        for j, f in enumerate(casts + floats):
            ops.append(quantizer_op(f, acc, _scale_exp(f, acc, 2 + (i + j) % 3)))
    for f, s in inputs:
        ops.append(input_lookup_op(f, s, name=f"f32q_{f}_{str(s).replace('.', 'p')}"))
    return ops


def _vectors(op, n: int = 4000, seed: int = 0) -> dict | None:
    """Input vectors of a float32-port lookup: finite float32 numbers over the format's range and
    beyond (bit patterns), every threshold and its neighbours first. None: the default vectors."""
    if op.kind != "f32q":
        return None
    rng = np.random.default_rng(seed)
    top = float(finfo(parse_format(op.params["fmt"])).max) * op.params["scale"]
    x = (rng.standard_normal(n) * top * np.exp2(rng.integers(-12, 3, n))).astype(np.float32)
    v = x.view(np.uint32).astype(np.int64)
    probes = np.array([int(p) for p in op.probes["x"]], dtype=np.int64)
    return {"x": np.concatenate([probes, v])}


def check(ops: list, workdir: Path | None = None) -> int:
    """Simulate every operator (CXXRTL) against fpq's quantizer; raises on any mismatch."""
    with tempfile.TemporaryDirectory(prefix="fpq_q_sim_") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        res = sim.check_many(ops, wd, vectors=[_vectors(op) for op in ops], samples=5000)
    for op, (n, bad) in zip(ops, res):
        if bad:
            raise AssertionError(f"{op.name}: {bad} of {n} simulated outputs differ from fpq's quantizer")
    return len(ops)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Synthesize to_rtl's activation quantizers and merge them into the "
                                             "operator tables.")
    ap.add_argument("--jobs", type=int, default=2, help="parallel yosys runs")
    ap.add_argument("--cache", type=Path, default=None, help="JSON-lines cache: resume an interrupted run")
    ap.add_argument("--no-check", action="store_true", help="skip the CXXRTL check against fpq's quantizer")
    a = ap.parse_args(argv)
    fit, held = grid("fit"), grid("holdout")
    if not a.no_check:
        print(f"checked {check(fit + held)} quantizers: 0 mismatches", flush=True)
    rows = synth.synthesize_many([(op, "lut") for op in fit + held], workers=a.jobs, cache=a.cache, batch=8)
    for op, r in zip(fit + held, rows):   # a cached row (same Verilog) gets the generator's current parameters
        r["params"] = json.dumps(op.params, sort_keys=True)
    for kind in KINDS:
        f = [r for r in rows[:len(fit)] if r["kind"] == kind]
        h = [r for r in rows[len(fit):] if r["kind"] == kind]
        print(f"{kind}: {len(f)} fit rows -> {synth.merge_family(kind, f, synth.TABLE)}, "
              f"{len(h)} held-out rows -> {synth.merge_family(kind, h, synth.HOLDOUT_TABLE)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
