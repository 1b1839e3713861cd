"""The model zoo (examples/models/) through fpq: for each model x format, convert, calibrate,
verify (torch == emulator == qonnx executor, atol=0) and fit to a Pynq-Z2 (xc7z020) and an
Alveo U250 (xcu250), reporting resources, II / latency, or which resource runs out.

    python examples/model_zoo.py [--models resnet8 ds_cnn ...] [--formats int8 e2m1 ...]
                                 [--quick] [--out zoo.md] [--budget 0.8]

Formats: int8, e4m3, e2m1 (weights, activations and input), and "mixed": the first and last
Linear / Conv layers and the input int8, every other layer e2m1 (fpq.convert's per-layer
overrides). None of the zoo's data sets ships offline: weights are seeded random init,
calibration uses seeded random inputs of the model's shape, and accuracy is not measured.
``--quick`` runs the same topologies at reduced widths (a smoke test).
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch
from torch import nn

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from models import ZOO  # noqa: E402

import fpq  # noqa: E402
from fpq.export import read_graph  # noqa: E402
from fpq.fitting import NAMES, FitError  # noqa: E402
from fpq.testing.conformance import probe_inputs  # noqa: E402

FORMATS = ("int8", "e4m3", "e2m1", "mixed")
PARTS = ("xc7z020", "xcu250")


def weighted_layers(model: nn.Module) -> list:
    """Names of the Linear / Conv layers, in definition order."""
    return [n for n, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d))]


def convert_kwargs(model: nn.Module, fmt: str) -> dict:
    """fpq.convert arguments of a zoo format; "mixed" = first / last layer and input int8, e2m1 inside."""
    if fmt != "mixed":
        return dict(fmt=fmt)
    layers = weighted_layers(model)
    return dict(fmt="e2m1", inputs="int8", overrides={layers[0]: "int8", layers[-1]: "int8"})


def _fit_cell(mw, part: str, budget: float) -> dict:
    t0 = time.perf_counter()
    try:
        r = fpq.fit(mw, part=part, budget=budget)
    except FitError as e:
        over = ", ".join(f"{NAMES[k]} {need:,.0f} > {allow:,.0f} ({need / allow:.1f}x)"
                         for k, (need, allow) in e.shortfall.items())
        return dict(fits=False, text=f"does not fit: {over}", seconds=time.perf_counter() - t0, error=str(e))
    t = r.report.total
    st = r.strategy
    if st == "per-layer":
        n_res = sum(v == "Resource" for v in r.strategies.values())
        st = f"Latency x{len(r.strategies) - n_res} / Resource x{n_res}"
    text = (f"{r.io_type}, {st}, max reuse {max(r.reuse_factor.values(), default=1)}: "
            f"LUT {t['lut']:,.0f}, FF {t['ff']:,.0f}, DSP {t['dsp']:,.0f}, BRAM18 {t['bram18']:,.0f}; "
            f"II {r.ii:,}, latency {r.latency_cycles:,} cycles ({r.latency_ns / 1000:,.1f} us)")
    return dict(fits=True, text=text, seconds=time.perf_counter() - t0, result=r)


def run_cell(zm, fmt: str, *, parts=PARTS, budget: float = 0.8, n_verify: int = 200, qonnx_subset: int = 4,
             workdir: str | None = None) -> dict:
    """One model x format: convert, calibrate, export, verify, fit to each part."""
    t0 = time.perf_counter()
    q = fpq.convert(zm.model, **convert_kwargs(zm.model, fmt))
    fpq.calibrate(q, [zm.calibration(256)], progress=False)
    q.eval()
    with tempfile.TemporaryDirectory(dir=workdir) as d:
        path = os.path.join(d, "model.onnx")
        fpq.export_qonnx(q, path, zm.calibration(1))
        t_convert = time.perf_counter() - t0
        x = probe_inputs(read_graph(path), n_verify, seed=1)   # off-grid, ties, saturating
        t1 = time.perf_counter()
        rep = fpq.verify(q, x, qonnx_subset=qonnx_subset, model=path)
        t_verify = time.perf_counter() - t1
        fits = {part: _fit_cell(path, part, budget) for part in parts}
    return dict(model=zm.name, fmt=fmt, status=rep.status, exact=rep.exact and rep.verified, report=rep,
                n_verify=n_verify, qonnx_subset=qonnx_subset, fits=fits,
                seconds=dict(convert=t_convert, verify=t_verify, **{p: f["seconds"] for p, f in fits.items()}),
                q=q)


def markdown(rows: list, parts=PARTS, quick: bool = False) -> str:
    head = ["model", "format", "accuracy", "exact"] + [f"fit {p}" for p in parts] + ["time (s)"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        secs = r["seconds"]
        t = f"{secs['convert']:.1f} + {secs['verify']:.1f} + " + " + ".join(f"{secs[p]:.1f}" for p in parts)
        exact = f"{'yes' if r['exact'] else 'NO'} ({r['n_verify']} inputs, qonnx on {r['qonnx_subset']})"
        out.append("| " + " | ".join([r["model"] + (" (quick)" if quick else ""), r["fmt"],
                                       "not measured (no data offline)", exact]
                                      + [r["fits"][p]["text"] for p in parts] + [t]) + " |")
    out.append("")
    out.append("accuracy: none of these data sets ships offline; random-init weights, calibrated on seeded "
               "random inputs. exact: fpq.verify, torch == emulator (all inputs) == qonnx executor (first "
               "inputs), atol=0, on off-grid / tie / saturating probes. fit: fpq.fit at the budget, estimate "
               "(io_type, strategy (or how many layers take each), largest per-layer reuse factor, resources, II and "
               "latency at 200 MHz), or "
               "the resources over budget at the cheapest setting. time: convert+calibrate+export, verify, "
               "each fit.")
    return "\n".join(out)


def main(argv=None) -> list:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--models", nargs="+", default=list(ZOO), choices=list(ZOO))
    ap.add_argument("--formats", nargs="+", default=list(FORMATS), choices=list(FORMATS))
    ap.add_argument("--quick", action="store_true", help="reduced widths (a smoke test)")
    ap.add_argument("--out", default=None, help="write the markdown table to this file")
    ap.add_argument("--budget", type=float, default=0.8)
    ap.add_argument("--n-verify", type=int, default=None, help="probe inputs per verify (default 200, quick 50)")
    a = ap.parse_args(argv)
    from tqdm.auto import tqdm

    n_verify = a.n_verify or (50 if a.quick else 200)
    torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))
    rows = []
    cells = [(m, f) for m in a.models for f in a.formats]
    bar = tqdm(cells, desc="model zoo", unit="cell")
    zms = {}
    for m, f in bar:
        bar.set_postfix_str(f"{m} {f}")
        zm = zms.setdefault(m, ZOO[m](quick=a.quick))
        r = run_cell(zm, f, budget=a.budget, n_verify=n_verify)
        r.pop("q")
        rows.append(r)
        tqdm.write(f"{m} {f}: {r['status']}; " + "; ".join(f"{p}: {r['fits'][p]['text']}" for p in PARTS))
    table = markdown(rows, quick=a.quick)
    print(table)
    if a.out:
        with open(a.out, "w") as fh:
            fh.write(f"`python examples/model_zoo.py {' '.join(argv if argv is not None else sys.argv[1:])}`\n\n")
            fh.write(table + "\n")
    return rows


if __name__ == "__main__":
    main()
