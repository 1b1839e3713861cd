"""``fpq hls MODEL.onnx --out DIR``: an exact hls4ml project of a QONNX model, compiled for C-sim."""
from __future__ import annotations


def cli_register(subparsers) -> None:
    """``fpq hls MODEL.onnx --out DIR [--backend Vitis] [--io-type io_parallel] ...``"""
    p = subparsers.add_parser("hls", help="write an exact hls4ml project of a QONNX model and compile it for C-sim")
    p.add_argument("model", help="QONNX file (.onnx), e.g. from `fpq export` / fpq.export_qonnx")
    p.add_argument("--out", required=True, help="project folder (created; a non-empty one needs --overwrite)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the files of the fpq project in --out (only those its manifest lists; vendor reports "
                        "and other files stay)")
    p.add_argument("--backend", default="Vitis", choices=["Vitis", "Vivado"])
    p.add_argument("--io-type", default="io_parallel", choices=["io_parallel", "io_stream"])
    p.add_argument("--part", default="xcvu9p-flga2104-2-e")
    p.add_argument("--clock-period", type=float, default=5.0, help="ns")
    p.add_argument("--reuse-factor", type=int, default=1)
    p.add_argument("--strategy", default="Latency", choices=["Latency", "Resource", "distributed_arithmetic"],
                   help="distributed_arithmetic: da4ml shift-and-add kernels, no multipliers (reuse factor 1)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..hls import to_hls

    proj = to_hls(args.model, args.out, backend=args.backend, io_type=args.io_type, part=args.part,
                  clock_period=args.clock_period, reuse_factor=args.reuse_factor, strategy=args.strategy,
                  overwrite=args.overwrite)
    print(f"wrote {proj.outdir} ({args.backend}, {args.io_type}); C-sim library compiled in {proj.compile_s:.1f} s")
    width = max(len(n) for n in proj.info["layers"])
    for name, types in proj.info["layers"].items():
        print(f"  {name:{width}s}  " + "  ".join(f"{k}={v}" for k, v in types.items()))
    for note in proj.info["notes"]:
        print(f"  note: {note}")
    return 0
