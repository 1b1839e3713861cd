"""``fpq profile MODEL``: time a model on this CPU / GPU (float, fpq fake-quant, FP8 GEMMs)."""
from __future__ import annotations

from ..userfiles import TRUST_PICKLE_HELP


def _load_model(spec: str, trust_pickle: bool = False):
    """'pkg.module:attr' or 'file.py:attr' (a module or a zero-argument factory), as ``fpq sweep``
    reads it, or a file written by torch.save(model) (unpickled only with ``trust_pickle``: a
    pickle can run any code)."""
    import os

    from ..userfiles import is_torch_module, load_model_file, load_spec

    model = load_model_file(spec, trust_pickle) if os.path.exists(spec) else load_spec(spec, trust_pickle)
    if not is_torch_module(model):
        raise ValueError(f"model {spec!r} is a {type(model).__name__}, not a torch.nn.Module")
    return model


def cli_register(subparsers):
    """Add ``fpq profile`` to the fpq command line."""
    p = subparsers.add_parser(
        "profile", help="time a model on this CPU/GPU: fp32/bf16/fp16, fpq fake-quant, FP8 GEMMs",
        description="Latency (median, p90 per batch) and throughput of a PyTorch model on the CPU or a GPU, "
                    "in fp32/bf16/fp16, as fpq fake-quant (with --fmt/--weights) and its GEMMs in FP8.")
    p.add_argument("model", help="'package.module:attr' or 'file.py:attr' (an nn.Module or a zero-argument "
                                 "factory), or a file written by torch.save(model) (with --trust-pickle only)")
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument("--fmt", help="convert with this format first (weights and activations; not calibrated: "
                                 "the timing does not depend on the scales)")
    p.add_argument("--weights", help="weight format for the conversion")
    p.add_argument("--activations", help="activation format for the conversion")
    p.add_argument("--input-shape", help="one input's shape without the batch, e.g. 1,8,8")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    p.add_argument("--dtypes", default="fp32,bf16,fp16", help="comma-separated: fp32,bf16,fp16")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--iters", type=int, default=30)
    p.add_argument("--threads", type=int, help="CPU threads (default: torch's)")
    p.add_argument("--no-gemm", action="store_true", help="skip the bf16 / FP8 GEMM rows")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=run)
    return p


def run(args) -> int:
    import json
    import sys

    from ..profiling import profile_torch

    try:
        model = _load_model(args.model, getattr(args, "trust_pickle", False))
        shape = None
        if args.input_shape:
            try:
                shape = tuple(int(s) for s in args.input_shape.replace("x", ",").split(",") if s.strip())
            except ValueError:
                raise ValueError(f"--input-shape {args.input_shape!r}: give integers like 1,8,8") from None
        if args.fmt or args.weights or args.activations:
            from ..conversion import convert
            model = convert(model, fmt=args.fmt, weights=args.weights, activations=args.activations)
        res = profile_torch(model, batch=args.batch, device=args.device, dtypes=args.dtypes.split(","),
                            warmup=args.warmup, iters=args.iters, input_shape=shape, threads=args.threads,
                            gemm=not args.no_gemm)
    except (ValueError, RuntimeError, TypeError) as e:
        print(f"fpq profile: error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(res.to_dict(), indent=1) if args.json else res)
    return 0
