"""Cost of the digits CNN per weight format: FPGA estimate next to CPU (or GPU) measurements.

Trains the digits CNN of ``digits_cnn.py`` (fixed seed), converts it with int8, int4, e4m3,
e2m1 and binary weights (int8 activations and inputs), calibrates each, fine-tunes (QAT) the
formats whose post-training accuracy falls more than 1 point below float, and prints per format:
accuracy, ``fpq.estimate_cost`` totals (LUT, FF, DSP, BRAM18, latency, II, BOPs, EBOPs) and the
fake-quant forward timed by ``fpq.profile_torch``; then the float model's own timings.

    python examples/cost_digits.py [--quick] [--device cpu|cuda] [--part xcvu9p]
"""
from __future__ import annotations

import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _digits_common import accuracy, parser, train, trained_float  # noqa: E402
from digits_cnn import DigitsCNN  # noqa: E402

import fpq  # noqa: E402

WEIGHT_FORMATS = ("int8", "int4", "e4m3", "e2m1", "binary")
ACTIVATIONS = "int8"
QAT_THRESHOLD = 1.0  # accuracy points below float that trigger a short QAT


def _cost_table(rows: list, base: float, float_prof, fpga: str, clock: float) -> str:
    dev = float_prof.device.split(":")[0]
    head = ("weights", "PTQ %", "QAT %", "LUT", "FF", "DSP", "BRAM18", "lat cyc", "lat ns", "II",
            "BOPs", "EBOPs", f"{dev} ms/batch", "inf/s")
    f32 = float_prof.row("float fp32")
    lines = [head, ("float", f"{base:.2f}", "-", *["-"] * 9, f"{f32.median_ms:.2f}", f"{f32.throughput:,.0f}")]
    for r in rows:
        t, p = r["cost"], r["profile"]
        lines.append((r["weights"], f"{r['ptq']:.2f}", "-" if r["qat"] is None else f"{r['qat']:.2f}",
                      f"{t['lut']:,.0f}", f"{t['ff']:,.0f}", f"{t['dsp']:,}", f"{t['bram18']:,}",
                      str(t["latency_cycles"]), f"{t['latency_ns']:.0f}", str(t["ii"]),
                      f"{t['bops'] / 1e6:.2f}M", f"{t['ebops'] / 1e6:.2f}M",
                      f"{p.median_ms:.2f}", f"{p.throughput:,.0f}"))
    w = [max(len(l[i]) for l in lines) for i in range(len(head))]
    fmt = lambda l: "  ".join(c.ljust(w[i]) if i == 0 else c.rjust(w[i]) for i, c in enumerate(l))  # noqa: E731
    title = (f"digits CNN, activations {ACTIVATIONS}; FPGA estimate on {fpga} at {clock} ns (hls4ml Latency, "
             f"io_parallel, reuse 1); fake-quant forward timed on {float_prof.device_name}, "
             f"batch {float_prof.batch}, {float_prof.threads} thread(s)")
    return "\n".join([title, fmt(head), "  ".join("-" * x for x in w), *map(fmt, lines[1:])])


def main(quick: bool = False, seed: int = 0, device: str = "cpu", fpga: str = "xcvu9p", batch: int = 256,
         threads: int = 1, verbose: bool = True) -> dict:
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        return _main(quick, seed, device, fpga, batch, verbose)
    finally:
        torch.set_num_threads(old)


def _main(quick, seed, device, fpga, batch, verbose) -> dict:
    t0 = time.time()
    data, model, base, calib = trained_float(DigitsCNN, quick=quick, seed=seed)
    if verbose:
        print(f"float: {base:.2f}%  ({time.time() - t0:.1f} s)")
    timing = dict(batch=batch, device=device, warmup=1 if quick else 2, iters=3 if quick else 10,
                  progress=False, example_input=data.x_test)
    rows = []
    for w in WEIGHT_FORMATS:
        q = fpq.convert(model, weights=w, activations=ACTIVATIONS)
        fpq.calibrate(q, calib, progress=False)
        ptq = accuracy(q, data.x_test, data.y_test)
        qat = None
        if ptq < base - QAT_THRESHOLD:
            train(q, data, 1 if quick else 4, 1e-3, seed + 1)
            qat = accuracy(q, data.x_test, data.y_test)
        cost = fpq.estimate_cost(q, part=fpga)
        p = fpq.profile_torch(q, dtypes=(), gemm=False, **timing)
        rows.append(dict(weights=w, ptq=ptq, qat=qat, cost=dict(cost.total), profile=p.row("fpq fake-quant"),
                         cost_report=cost))
        if verbose:
            print(f"{w}: PTQ {ptq:.2f}%" + ("" if qat is None else f", QAT {qat:.2f}%")
                  + f"  ({time.time() - t0:.1f} s)")
    float_prof = fpq.profile_torch(model, fake_quant=False, **timing)
    clock = rows[0]["cost_report"].settings["clock_period"]
    out = {"float": base, "rows": rows, "float_profile": float_prof, "seconds": time.time() - t0}
    if verbose:
        print()
        print(_cost_table(rows, base, float_prof, fpga, clock))
        print()
        print("float model (and its GEMMs) on the same device:")
        print(float_prof)
        print(f"(total {out['seconds']:.1f} s)")
    return out


if __name__ == "__main__":
    ap = parser(__doc__, "few epochs and timed runs (a smoke run)")
    ap.add_argument("--device", default="cpu", help="where profile_torch times the models: cpu, cuda")
    ap.add_argument("--part", "--fpga-device", dest="fpga", default="xcvu9p", help="FPGA part for estimate_cost")
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--threads", type=int, default=1, help="CPU threads for training and timing")
    a = ap.parse_args()
    main(quick=a.quick, seed=a.seed, device=a.device, fpga=a.fpga, batch=a.batch, threads=a.threads)
