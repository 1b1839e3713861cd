"""``fpq verify MODEL.onnx``: emulator == qonnx executor (== HLS C-sim) bit for bit."""
from __future__ import annotations


def cli_register(subparsers) -> None:
    """``fpq verify MODEL.onnx --n 1000 --seed 0 [--qonnx-subset 64]``."""
    p = subparsers.add_parser("verify", help="check emulator == qonnx executor (== HLS C-sim) bit for bit")
    p.add_argument("model", help="QONNX file (.onnx)")
    p.add_argument("--n", type=int, default=1000, help="number of random off-grid inputs")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--qonnx-subset", type=int, default=64, help="inputs run through qonnx's executor")
    p.add_argument("--hls", default=None, help="an fpq HLS project directory to include (fpq.hls)")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..verification import verify

    project = None
    if args.hls:
        from ..hls import load_project

        project = load_project(args.hls)
    rep = verify(args.model, None, project, qonnx_subset=args.qonnx_subset, n=args.n, seed=args.seed)
    print(rep)
    return 0 if rep.exact else 1
