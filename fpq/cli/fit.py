"""``fpq fit MODEL.onnx --part xc7z020 --budget 0.8 --objective latency``: the io_type, strategy and
per-layer reuse factors whose estimate fits the part (``fpq.fit``)."""
from __future__ import annotations

import json

from ..cost_model.devices import DEVICES


def cli_register(subparsers):
    """Add ``fpq fit`` to the fpq command line."""
    p = subparsers.add_parser("fit", help="choose io_type, per-layer strategy and reuse factors that fit an FPGA part",
                              description="Choose io_type and each layer's strategy and reuse factor so that the cost "
                                          "estimate of a QONNX model fits BUDGET x every resource (LUT, FF, DSP, "
                                          "BRAM) of the part; prints the setting, its II and latency, and the "
                                          "chosen setting; --json adds the keyword arguments of fpq.to_hls (per-layer reuse factors).")
    p.add_argument("model", help="QONNX .onnx file")
    p.add_argument("--part", default="xc7z020", help=f"FPGA: one of {', '.join(DEVICES)} or a full part number")
    p.add_argument("--budget", type=float, default=0.8, help="share of each resource the design may use (0-1]")
    p.add_argument("--objective", default="latency", choices=["latency", "throughput"])
    p.add_argument("--clock-period", type=float, default=5.0, help="ns")
    p.add_argument("--io-type", nargs="+", default=["io_parallel", "io_stream"], choices=["io_parallel", "io_stream"],
                   help="the io_types to choose from (default: both)")
    p.add_argument("--strategy", nargs="+", default=["Latency", "Resource"], choices=["Latency", "Resource"],
                   help="the hls4ml strategies each layer may take (default: both, chosen per layer)")
    p.add_argument("--dsp-threshold", default="9", metavar="BITS|none",
                   help="weight bits from which multipliers go to DSPs (shared int8 x int8 ones do too; "
                        "'none': every multiplier in fabric); see fpq.estimate_cost")
    p.add_argument("--json", action="store_true", help="print the result (and the hls_kwargs for fpq.to_hls) as JSON")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..fitting import fit

    dsp = args.dsp_threshold.strip().lower()
    if dsp != "none" and not dsp.isdigit():
        raise ValueError(f"--dsp-threshold is a number of bits or 'none', got {args.dsp_threshold!r}")
    res = fit(args.model, part=args.part, budget=args.budget, objective=args.objective,
              clock_period=args.clock_period, io_types=args.io_type, strategies=args.strategy,
              dsp_threshold=None if dsp == "none" else int(dsp))
    if args.json:
        print(json.dumps(dict(res.to_dict(), hls_kwargs=res.hls_kwargs), indent=1, default=str))
    else:
        print(res)
    return 0
