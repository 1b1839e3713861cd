"""``fpq cost MODEL.onnx [--part xcvu9p]``: FPGA resources and latency of a QONNX model."""
from __future__ import annotations

import argparse
import json

from ..cost_model.devices import DEVICES


def cli_register(subparsers):
    """Add ``fpq cost`` to the fpq command line."""
    p = subparsers.add_parser("cost", help="estimate FPGA resources and latency of a QONNX model",
                              description="Estimate LUT/FF/DSP/BRAM, latency and II of a QONNX model "
                                          "(exported by fpq) under hls4ml's strategies.")
    p.add_argument("model", help="QONNX .onnx file")
    p.add_argument("--part", default="xcvu9p", help=f"FPGA: one of {', '.join(DEVICES)} or a full part number")
    p.add_argument("--device", dest="part", help=argparse.SUPPRESS)   # the old name of --part
    p.add_argument("--reuse-factor", type=int, default=1)
    p.add_argument("--strategy", default="Latency", choices=["Latency", "Resource"])
    p.add_argument("--io-type", default="io_parallel", choices=["io_parallel", "io_stream"])
    p.add_argument("--clock-period", type=float, default=5.0, help="ns")
    p.add_argument("--datapath", default="carrier", choices=["carrier", "code"])
    p.add_argument("--json", action="store_true", help="print the report as JSON")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    from ..cost_model import estimate_cost

    rep = estimate_cost(args.model, part=args.part, reuse_factor=args.reuse_factor, strategy=args.strategy,
                        io_type=args.io_type, clock_period=args.clock_period, datapath=args.datapath)
    print(json.dumps(rep.to_dict(), indent=1, default=str) if args.json else rep)
    return 0
