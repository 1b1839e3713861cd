"""Synthesize generated operators with yosys ``synth_xilinx`` and tabulate LUT / FF / CARRY / DSP.

Flags (pinned, written into every table header):

* ``-family xcup``: UltraScale+ (the default device, xcvu9p). The LUT fabric (LUT6, one carry
  cell per 4 bits in yosys' mapping: yosys emits CARRY4 even for xcup) is the same in 7-series,
  so the LUT counts also price xc7 parts; only the DSP cell differs (DSP48E1 25x18 vs 27x18).
* ``-flatten``: flatten inside each operator; operators are synthesized in batches, each a
  ``keep_hierarchy`` module, so ``stat`` reports every operator alone (checked equal to a
  synthesis of the operator by itself).
* ``-noiopad``: out-of-context, as an operator inside a larger hls4ml design (no I/O buffers).
* abc9 LUT mapping (the default of yosys 0.70).
* flow ``lut`` adds ``-nodsp``: hls4ml / Vivado implement multipliers with narrow weights (< 9
  bits, see hls4ml's own DSP estimator) in fabric, and yosys would otherwise put even a 3x3
  multiplier into a DSP. Flow ``dsp`` keeps DSP inference: it measures how wide multipliers
  tile onto DSP48E2 slices and what fabric remains around them.

Run ``python -m fpq.cost_model.synth`` (or ``cost_model/run_synthesis.py``) to regenerate the
committed table; ``--help`` lists the options.
"""
from __future__ import annotations

import argparse
import csv
import hashlib
import json
import os
import random
import tempfile
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

from . import rtl
from .yosys import YOWASP_PIN, run_script, yosys_version

FAMILY = "xcup"
BASE_FLAGS = f"-family {FAMILY} -flatten -noiopad"
FLOWS = {"lut": BASE_FLAGS + " -nodsp", "dsp": BASE_FLAGS}
# package data (a wheel carries it); in the source tree fpq/cost_model/data/ links to the top-level
# cost_model/, where the tables are measured and documented (one copy)
TABLE = Path(__file__).resolve().parent / "data" / "operators_xcup.csv"
COLUMNS = ["name", "kind", "flow", "lut", "lut_logic", "srl", "muxf", "carry", "ff", "dsp", "bram",
           "params"]


def synthesize(op: rtl.Operator, flow: str = "lut", workdir: Path | None = None) -> dict:
    """Synthesize one operator; returns a table row (cell counts)."""
    return synthesize_batch([op], flow, workdir)[0]


def synthesize_batch(ops: list, flow: str = "lut", workdir: Path | None = None) -> list[dict]:
    """Synthesize several operators in one yosys run: each is a ``keep_hierarchy`` module under
    a wrapper that only wires its ports out, so ``stat`` reports every operator on its own
    (identical to synthesizing it alone) while yosys reads its cell libraries once."""
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; allowed: {', '.join(FLOWS)}")
    names = [op.name for op in ops]
    if len(set(names)) != len(names):
        raise ValueError("operator names in one batch must be unique")
    src, ports, inst = [], [], []
    for i, op in enumerate(ops):
        src.append("(* keep_hierarchy *)\n" + op.verilog)
        conns = []
        if op.clocked:
            ports += [f"input wire i{i}_clk", f"input wire i{i}_rst"]
            conns += [f".clk(i{i}_clk)", f".rst(i{i}_rst)"]
        for p, w in op.inputs:
            if not (op.clocked and p == "rst"):
                ports.append(f"input wire [{w - 1}:0] i{i}_{p}")
                conns.append(f".{p}(i{i}_{p})")
        for p, w, _ in op.outputs:
            ports.append(f"output wire [{w - 1}:0] o{i}_{p}")
            conns.append(f".{p}(o{i}_{p})")
        inst.append(f"  {op.name} u{i}({', '.join(conns)});")
    src.append("module fpq_batch(\n  " + ",\n  ".join(ports) + "\n);\n" + "\n".join(inst) + "\nendmodule\n")
    with tempfile.TemporaryDirectory(prefix="fpq_synth_") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "ops.v").write_text("\n".join(src))
        run_script(f"read_verilog -sv ops.v\nsynth_xilinx {FLOWS[flow]} -top fpq_batch\n"
                   "tee -q -o stat.json stat -json\n", wd)
        stat = json.loads((wd / "stat.json").read_text())
    mods = stat["modules"]
    rows = []
    for op in ops:
        key = "\\" + op.name if "\\" + op.name in mods else op.name
        if key not in mods:
            raise RuntimeError(f"yosys reported no module {op.name} (has {sorted(mods)[:5]}...)")
        rows.append(row_from_cells(op, flow, mods[key].get("num_cells_by_type", {})))
    return rows


def row_from_cells(op: rtl.Operator, flow: str, cells: dict) -> dict:
    def count(pred):
        return sum(v for k, v in cells.items() if pred(k))

    logic = count(lambda k: k.startswith("LUT") and k[3:].isdigit())
    srl = count(lambda k: k.startswith("SRL"))
    lutram = count(lambda k: k.startswith("RAM") and not k.startswith("RAMB"))
    return {
        "name": op.name, "kind": op.kind, "flow": flow,
        "lut": logic + srl + lutram, "lut_logic": logic, "srl": srl + lutram,
        "muxf": count(lambda k: k.startswith("MUXF")),
        "carry": count(lambda k: k.startswith("CARRY")),
        "ff": count(lambda k: k.startswith("FD")),
        "dsp": count(lambda k: k.startswith("DSP")),
        "bram": count(lambda k: k.startswith("RAMB")),
        "params": json.dumps(op.params, sort_keys=True),
    }


def _key(op: rtl.Operator, flow: str) -> str:
    return hashlib.sha1(f"{op.verilog}|{FLOWS[flow]}|{yosys_version()}".encode()).hexdigest()


def synthesize_many(jobs: list, workers: int = 2, progress: bool = True, cache: Path | None = None,
                    batch: int = 12) -> list[dict]:
    """Synthesize (operator, flow) pairs: batches of ``batch`` operators per yosys run, ``workers``
    runs in parallel.

    ``cache``: a JSON-lines file; rows found there (same Verilog, flags and yosys version) are
    reused and new rows are appended as they finish, so an interrupted run resumes."""
    from tqdm import tqdm

    done = {}
    if cache is not None and Path(cache).exists():
        for line in Path(cache).read_text().splitlines():
            if line.strip():
                rec = json.loads(line)
                done[rec["key"]] = rec["row"]
    rows, todo = {}, []
    for op, flow in jobs:
        k = _key(op, flow)
        if k in done:
            rows[(op.name, flow)] = done[k]
        else:
            todo.append((op, flow, k))
    chunks = []
    for flow in FLOWS:
        sel = [t for t in todo if t[1] == flow]
        chunks += [sel[i:i + batch] for i in range(0, len(sel), batch)]
    with ThreadPoolExecutor(max_workers=workers) as ex, \
            tqdm(total=len(todo), disable=not progress, desc="yosys synth_xilinx") as bar:
        futs = {ex.submit(synthesize_batch, [t[0] for t in ch], ch[0][1]): ch for ch in chunks}
        for f in as_completed(futs):
            ch = futs[f]
            for (op, flow, k), row in zip(ch, f.result()):
                rows[(op.name, flow)] = row
                if cache is not None:
                    with open(cache, "a") as fh:
                        fh.write(json.dumps({"key": k, "row": row}) + "\n")
            bar.update(len(ch))
    return [rows[(op.name, flow)] for op, flow in jobs]


# ----------------------------------------------------------------------------- the grids
MINIFLOATS = ("e2m1", "e2m3", "e3m2", "e4m3", "e5m2", "e3m4")


def calibration_grid(seed: int = 1) -> list:
    """The operators the estimator is fitted on: (operator, flow) pairs. Sized for a 2-core
    machine (about 250 syntheses); ``holdout_grid`` holds the operators the benchmark checks."""
    rng = random.Random(seed)
    jobs = []
    widths = (1, 2, 3, 4, 6, 8, 10, 12, 16)
    for i, a in enumerate(widths):
        for b in widths[i:]:
            if a == 1 and b == 1:
                continue
            jobs.append((rtl.int_multiplier(a, b, True, True), "lut"))
    for a, b in ((2, 2), (4, 8), (8, 8), (12, 12)):
        jobs.append((rtl.int_multiplier(a, b, False, False), "lut"))
        jobs.append((rtl.int_multiplier(a, b, False, True), "lut"))
    # DSP tiling of wide multipliers (carrier products of wide minifloats go here)
    for a, b in ((9, 9), (16, 16), (19, 8), (27, 18), (24, 24), (33, 8)):
        jobs.append((rtl.int_multiplier(a, b, True, True), "dsp"))
    # constant multipliers: a sample of constants per constant width and input width
    for xb in (2, 4, 8, 12, 16):
        for wb in (2, 3, 4, 6, 8, 12, 16):
            hi = (1 << (wb - 1)) - 1
            ks = {rng.randint(-hi - 1, hi) for _ in range(3)}
            for k in sorted(ks):
                jobs.append((rtl.const_multiplier(rtl.Int(xb), float(k), rtl.Int(wb)), "lut"))
    # minifloat x minifloat and minifloat x int code-level multipliers
    for i, fa in enumerate(MINIFLOATS):
        for fb in MINIFLOATS[i:]:
            if rtl.carrier(rtl._fmt(fa)).width + rtl.carrier(rtl._fmt(fb)).width <= 64:  # e5m2 x e5m2: 66
                jobs.append((rtl.multiplier(fa, fb), "lut"))
        for ib in ("int4", "int8"):
            jobs.append((rtl.multiplier(fa, ib), "lut"))
    for f in ("e2m0", "e3m0", "e4m0"):
        jobs.append((rtl.multiplier(f, "int8"), "lut"))
    for f in ("int2", "int4", "int8", "int16"):
        jobs.append((rtl.multiplier("binary", f), "lut"))
    jobs.append((rtl.multiplier("binary", "binary"), "lut"))
    for k in (1, 2, 3):
        for xf in ("int4", "int8"):
            jobs.append((rtl.khot_multiplier(xf, "e3m0", k), "lut"))
    for bits in (2, 4, 8, 16, 24, 32, 48):
        jobs.append((rtl.adder(bits), "lut"))
    for n, bits in ((4, 8), (16, 8), (8, 16), (32, 12), (8, 4), (16, 20)):
        jobs.append((rtl.adder_tree(n, bits), "lut"))
    for ib, ab in ((8, 16), (16, 32), (16, 48)):
        jobs.append((rtl.accumulator(ib, ab), "lut"))
    for n in (4, 16, 32, 64, 128):
        jobs.append((rtl.xnor_popcount(n), "lut"))
    jobs += [(op, "lut") for op in dense_layers("fit")]
    jobs += [(op, "lut") for op in binary_dense_layers("fit")]
    jobs += [(op, "lut") for op in threshold_quantizers("fit")]
    return jobs


def holdout_grid(seed: int = 7) -> list:
    """Operators never used in the fit (other widths, constants, formats) plus held-out dense
    layers: what ``benchmarks/bench_cost_model.py`` checks the estimator against."""
    rng = random.Random(seed)
    jobs = []
    for a, b in ((5, 5), (7, 7), (5, 9), (7, 11), (9, 9), (3, 14), (11, 13), (2, 7)):
        jobs.append((rtl.int_multiplier(a, b, True, True), "lut"))
    for xb, wb in ((6, 5), (10, 7), (8, 10), (6, 14), (14, 9), (3, 6)):
        hi = (1 << (wb - 1)) - 1
        for _ in range(2):
            k = rng.randint(-hi - 1, hi)
            jobs.append((rtl.const_multiplier(rtl.Int(xb), float(k), rtl.Int(wb)), "lut"))
    for fa, fb in (("e2m2", "e2m2"), ("e3m3", "e3m3"), ("e4m2", "e2m1"), ("e3m3", "int6"), ("e2m2", "int8"),
                   ("e4m3", "int6")):
        jobs.append((rtl.multiplier(fa, fb), "lut"))
    for bits in (12, 40):
        jobs.append((rtl.adder(bits), "lut"))
    jobs.append((rtl.xnor_popcount(48), "lut"))
    jobs += [(op, "lut") for op in dense_layers("holdout")]
    jobs += [(op, "lut") for op in binary_dense_layers("holdout")]
    jobs += [(op, "lut") for op in threshold_quantizers("holdout")]
    return jobs


DENSE_FORMATS = (("int8", "int8"), ("int8", "int4"), ("int8", "e2m1"), ("int8", "e4m3"), ("int4", "int4"),
                 ("uint8", "e3m2"))


def random_weights(fw, shape, rng, zero_frac=0.2) -> np.ndarray:
    """Random values of ``fw`` with a fraction of zeros (as pruned / small weights are)."""
    from ..formats import values as fmt_values

    vals = fmt_values(fw)
    # bell-shaped choice over the values, as trained weights are (most near zero)
    p = np.exp(-0.5 * (vals / (0.4 * np.max(np.abs(vals)))) ** 2)
    w = rng.choice(vals, size=shape, p=p / p.sum())
    w[rng.random(shape) < zero_frac] = 0.0
    return w


def dense_layers(split: str) -> list:
    """Small unrolled dense layers with random constant weights.

    ``fit`` layers calibrate the layer-level adder model; ``holdout`` layers (other shapes and
    seeds) are used only by the fidelity benchmark."""
    if split not in ("fit", "holdout"):
        raise ValueError("split must be 'fit' or 'holdout'")
    shapes = ((4, 2), (6, 3), (3, 4)) if split == "fit" else ((4, 4), (8, 4), (5, 3))
    seed = 100 if split == "fit" else 200
    ops = []
    for si, shape in enumerate(shapes):
        for fi, (fx, fw) in enumerate(DENSE_FORMATS):
            rng = np.random.default_rng(seed + 31 * si + fi)
            W = random_weights(fw, shape, rng)
            name = f"dense_{split}_{shape[0]}x{shape[1]}_{rtl.fmt_tag(rtl._fmt(fx))}_{rtl.fmt_tag(rtl._fmt(fw))}"
            ops.append(rtl.dense(fx, W, fw, name=name))
    return ops


def binary_dense_layers(split: str) -> list:
    """Unrolled binary x binary dense layers: a sum of +-1 terms per output, as fpq's HLS project
    builds them (synthesis turns them into something between an adder tree and a popcount)."""
    shapes = ((8, 2), (16, 2), (32, 2), (64, 2), (24, 3)) if split == "fit" else ((16, 4), (32, 4), (48, 2))
    ops = []
    for si, (n_in, n_out) in enumerate(shapes):
        rng = np.random.default_rng((300 if split == "fit" else 400) + si)
        W = np.where(rng.random((n_in, n_out)) < 0.5, -1.0, 1.0)
        ops.append(rtl.dense("binary", W, "binary", name=f"dense_{split}_{n_in}x{n_out}_bin_bin"))
    return ops


THRESHOLD_WIDTHS = (8, 12, 16, 20, 24, 32)
THRESHOLD_COUNTS = (1, 3, 7, 15, 31, 63, 127, 255)


def _realistic_threshold_op(fmt, w: int, range_ratio_log2: int, rng, name: str):
    """The lookup fpq's HLS project builds for quantizer ``fmt`` with a float32 scale over a
    ``w``-bit accumulator grid fixed<w, w/2>: the scale puts the quantizer's range
    2**range_ratio_log2 times inside the accumulator's (accumulators are sized for the worst
    case, so the quantizer clips well inside them)."""
    from ..formats import facts
    from ..formats import Fixed as _Fixed

    fmt = rtl._fmt(fmt)
    in_type = _Fixed(w, w // 2, True)
    top = float(np.max(np.abs(facts.values(fmt))))
    u = float(rng.uniform(0.5, 1.0))
    scale = np.float32(u * 2.0 ** (w // 2 - 1 - range_ratio_log2) / top)   # not a power of two
    th, lv = rtl.quantizer_table(fmt, scale, in_type)
    if len(th) == 0:
        return None
    op = rtl.threshold_quantizer(in_type, th, lv, name=name)
    span, ext = rtl.threshold_span(w, in_type.frac_bits, th)
    op.params.update(table=f"{fmt} x {float(scale)!r}", span=span, ext=ext)
    return op


def _random_threshold_op(w: int, n: int, rng, name: str, index_levels: bool = True):
    """n distinct random thresholds over the whole w-bit grid (every bit significant); levels
    0..n (a narrow output) or, without ``index_levels``, random ascending float32 levels."""
    from ..formats import Fixed as _Fixed

    in_type = _Fixed(w, w, True)
    if n >= (1 << w):
        return None
    codes = set()
    while len(codes) < n:
        codes.update(int(c) for c in rng.integers(-(1 << (w - 1)), 1 << (w - 1), size=n - len(codes)))
    th = np.array(sorted(codes), dtype=np.float64)
    lv = (np.arange(n + 1, dtype=np.float64) - n // 2 if index_levels
          else np.cumsum(rng.uniform(0.01, 1.0, n + 1)).astype(np.float32))
    op = rtl.threshold_quantizer(in_type, th, lv, name=name)
    span, ext = rtl.threshold_span(w, 0, th)
    op.params.update(table="random", span=span, ext=ext)
    return op


def threshold_quantizers(split: str) -> list:
    """Threshold lookups (float-scaled quantizers in the HLS project) to synthesize.

    ``fit``: W x N on the grid THRESHOLD_WIDTHS x THRESHOLD_COUNTS, each once as the real table
    of an int / uint quantizer with 2**b - 1 thresholds (fewer where the W-bit grid does not
    resolve every level) and, for W in 8 / 16 / 24 / 32, once with random thresholds and index
    levels; plus counts N + 1 that are not powers of two (the search is then irregular: e4m3 /
    e2m1 tables, random tables) and a few 48-bit inputs. ``holdout``: other widths, counts and
    scales (and the accumulator widths of a float-scaled int8 MLP), never fitted."""
    if split not in ("fit", "holdout"):
        raise ValueError("split must be 'fit' or 'holdout'")
    ops = []
    if split == "fit":
        rng = np.random.default_rng(500)
        for w in THRESHOLD_WIDTHS:
            for i, n in enumerate(THRESHOLD_COUNTS):
                b = n.bit_length()
                fmt = f"uint{b}" if b % 2 else f"int{b}"
                ops.append(_realistic_threshold_op(fmt, w, (0, 2, 5)[i % 3], rng, f"thr_fit_s{w}_{fmt}"))
                if w in (8, 16, 24, 32):
                    ops.append(_random_threshold_op(w, n, rng, f"thr_fit_s{w}_rnd{n}"))
        for w in (12, 16, 24, 32):
            for fmt in ("e4m3", "e2m1"):
                ops.append(_realistic_threshold_op(fmt, w, 1, rng, f"thr_fit_s{w}_{fmt}"))
            for n in (5, 24, 100, 200):
                ops.append(_random_threshold_op(w, n, rng, f"thr_fit_s{w}_rnd{n}", index_levels=n % 2 == 0))
        for fmt in ("int4", "int8", "e4m3"):
            ops.append(_realistic_threshold_op(fmt, 48, 6, rng, f"thr_fit_s48_{fmt}"))
    else:
        rng = np.random.default_rng(600)
        for w, fmt, r in ((10, "int4", 1), (28, "uint8", 3), (40, "int8", 6), (45, "int8", 7), (36, "e4m3", 4),
                          (20, "int6", 2), (45, "uint8", 7)):
            ops.append(_realistic_threshold_op(fmt, w, r, rng, f"thr_holdout_s{w}_{fmt}"))
        for w, n in ((14, 60), (28, 150), (20, 127)):
            ops.append(_random_threshold_op(w, n, rng, f"thr_holdout_s{w}_rnd{n}"))
    return [op for op in ops if op is not None]


# ----------------------------------------------------------------------------- table I/O
def table_header() -> list[str]:
    return [f"# fpq operator costs measured with {yosys_version()} ({YOWASP_PIN})",
            "# script: read_verilog -sv ops.v; synth_xilinx <flags> -top fpq_batch; stat -json (each operator a"
            " keep_hierarchy module under a wrapper that wires its ports out; its own cells are its row)",
            f"# flags lut: synth_xilinx {FLOWS['lut']}",
            f"# flags dsp: synth_xilinx {FLOWS['dsp']}",
            "# lut = LUT1..LUT6 + SRL + LUTRAM cells; carry = CARRY4 cells (yosys maps xcup carries to CARRY4);"
            " ff = FD* cells; params = generator parameters (JSON)"]


def write_table(rows: list[dict], path: Path = TABLE) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        for line in table_header():
            f.write(line + "\n")
        w = csv.DictWriter(f, fieldnames=COLUMNS)
        w.writeheader()
        for r in rows:   # rows read back by read_table hold params as a dict: the same JSON again
            w.writerow({k: (json.dumps(r[k], sort_keys=True) if k == "params" and isinstance(r[k], dict) else r[k])
                        for k in COLUMNS})
    return path


HOLDOUT_TABLE = TABLE.parent / "holdout_xcup.csv"
FAMILIES = {"thr": threshold_quantizers}   # kind -> generator of its (fit / holdout) operators


def merge_family(kind: str, rows: list[dict], path: Path) -> Path:
    """Replace the rows of ``kind`` in the table at ``path`` by ``rows``, keeping every other row
    as it is (no re-synthesis); refuses a table measured with another yosys or other flags."""
    old = read_table(path) if Path(path).exists() else []
    if old and table_meta(path) != [h[2:] for h in table_header()]:
        raise RuntimeError(f"{path} was measured with another yosys version or other flags than this run "
                           f"({table_meta(path)[0]!r}); regenerate the whole table instead of merging")
    return write_table([r for r in old if r["kind"] != kind] + rows, path)


def read_table(path: Path = TABLE) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"operator table {path} missing: run `python -m fpq.cost_model.synth`")
    with open(path) as f:
        lines = [ln for ln in f if not ln.startswith("#")]
    rows = list(csv.DictReader(lines))
    for r in rows:
        for k in ("lut", "lut_logic", "srl", "muxf", "carry", "ff", "dsp", "bram"):
            r[k] = int(r[k])
        r["params"] = json.loads(r["params"])
    return rows


def table_meta(path: Path = TABLE) -> list[str]:
    with open(path) as f:
        return [ln.rstrip("\n")[2:] for ln in f if ln.startswith("#")]


def check_operators(ops: list, chunk: int = 40) -> int:
    """Simulate every operator (CXXRTL) against fpq's reference before it is priced: exhaustive
    up to 2**16 input combinations, 5000 sampled vectors above. Raises on any mismatch."""
    from tqdm import tqdm

    from . import sim

    uniq = list({op.name: op for op in ops}.values())
    with tempfile.TemporaryDirectory(prefix="fpq_sim_") as tmp, \
            tqdm(total=len(uniq), desc="RTL == fpq reference (CXXRTL)") as bar:
        for i in range(0, len(uniq), chunk):
            part = uniq[i:i + chunk]
            for op, (n, bad) in zip(part, sim.check_many(part, Path(tmp) / str(i), samples=5000)):
                if bad:
                    raise AssertionError(f"{op.name}: {bad} of {n} simulated outputs differ from fpq's reference")
            bar.update(len(part))
    return len(uniq)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="Synthesize fpq's operator grid with yosys synth_xilinx "
                                             "and write the measured cost table.")
    ap.add_argument("--out", type=Path, default=TABLE, help=f"output CSV (default {TABLE})")
    ap.add_argument("--jobs", type=int, default=min(2, os.cpu_count() or 1), help="parallel yosys runs")
    ap.add_argument("--cache", type=Path, default=None, help="JSON-lines cache: resume an interrupted run")
    ap.add_argument("--limit", type=int, default=None, help="only the first N operators (smoke test)")
    ap.add_argument("--no-check", action="store_true", help="skip the RTL simulation against fpq's numerics")
    ap.add_argument("--family", choices=["all"] + sorted(FAMILIES), default="all",
                    help="all: the whole calibration grid (rewrites --out); thr: only the threshold lookups, "
                         f"their rows replaced in --out and their held-out rows in {HOLDOUT_TABLE.name}, every "
                         "other row kept as it is")
    args = ap.parse_args(argv)
    if args.family != "all":
        fit, held = FAMILIES[args.family]("fit"), FAMILIES[args.family]("holdout")
        if not args.no_check:
            check_operators(fit + held)
        rows = synthesize_many([(op, "lut") for op in fit + held], workers=args.jobs, cache=args.cache)
        print(f"wrote {merge_family(args.family, rows[:len(fit)], args.out)} ({len(fit)} {args.family} rows)")
        print(f"wrote {merge_family(args.family, rows[len(fit):], HOLDOUT_TABLE)} ({len(held)} held-out rows)")
        return 0
    jobs = calibration_grid()
    if args.limit:
        jobs = jobs[: args.limit]
    if not args.no_check:
        check_operators([op for op, _ in jobs])
    rows = synthesize_many(jobs, workers=args.jobs, cache=args.cache)
    print(f"wrote {write_table(rows, args.out)} ({len(rows)} operators)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
