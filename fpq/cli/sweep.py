"""``fpq sweep``: accuracy / cost / bit-exactness over a grid of formats x PTQ methods."""
from __future__ import annotations

import sys

from ..report.grid import KINDS
from ..userfiles import TRUST_PICKLE_HELP


def cli_register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="accuracy / cost / bit-exactness over a grid of formats x PTQ methods",
        description="Evaluate a grid of weight x activation formats (x first/last-layer formats) x calibration "
                    "methods on a model: accuracy on held-out data, fpq.estimate_cost, fpq.verify. Finished "
                    "points are stored in OUT/cache.jsonl, so an interrupted sweep resumes (on either "
                    "engine); fpq report OUT shows a running sweep's points so far.")
    p.add_argument("--model", required=True,
                   help="the trained float model: FILE.py:NAME or MODULE:NAME (a callable returning it, or the "
                        "model) or FILE.pt (torch.save(model), with --trust-pickle only)")
    p.add_argument("--trust-pickle", action="store_true", help=TRUST_PICKLE_HELP)
    p.add_argument("--data", default="fpq.data:load_digits_split",
                   help="FILE.py:NAME or MODULE:NAME returning data with x_train, y_train, x_test, y_test "
                        "(default: %(default)s)")
    p.add_argument("--formats", nargs="+", help="formats for both weights and activations (default, with no "
                   "--formats, --weights, --activations or --bits: int and every minifloat split of 3..8 bits)")
    p.add_argument("--weights", nargs="+", help="weight formats (default: --formats)")
    p.add_argument("--activations", nargs="+", help="activation formats (default: --formats)")
    p.add_argument("--bits", nargs="+", type=int, help="build the format axis with fpq.report.grid: widths")
    p.add_argument("--kinds", nargs="+", choices=KINDS, default=["int", "minifloat"],
                   help="kinds for --bits (default: int minifloat)")
    p.add_argument("--first-last", nargs="+", help="formats for the first and last layer (swept)")
    p.add_argument("--methods", nargs="+", default=["max", "mse"], help="calibration methods (default: max mse)")
    p.add_argument("--qat-epochs", type=int, default=0)
    p.add_argument("--out", default="out/sweep", help="output folder (default: %(default)s)")
    p.add_argument("--workers", type=int, default=2,
                   help="processes (local engine) or the CPUs of the Ray started here (ray engine, no --address)")
    p.add_argument("--engine", choices=("local", "ray"), default="local",
                   help="local: this machine's processes (default, no Ray); ray: tasks of a Ray cluster "
                        "(pip install 'fpq[ray]')")
    p.add_argument("--address", default=None,
                   help="with --engine ray: the cluster, auto | ray://HOST:PORT | HOST:PORT (default: start a "
                        "local Ray with --workers CPUs)")
    p.add_argument("--hls", choices=("front", "all"), default=None,
                   help="after the points, build the HLS project of these (front: the Pareto-front points) and "
                        "C-simulate it against the emulator (hls_exact in the results; stored and resumed like points)")
    p.add_argument("--hls-samples", type=int, default=16, help="verify inputs run through each C-sim (default: 16)")
    p.add_argument("--compile-workers", type=int, default=1,
                   help="HLS builds at once: local processes (1: in the driver), or the fpq_compile resource of the "
                        "Ray started here; a Ray cluster's nodes advertise it: ray start --resources='{\"fpq_compile\": 2}'")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--verify-samples", type=int, default=64, help="off-grid inputs for fpq.verify (0: none)")
    p.add_argument("--verify-qonnx", type=int, default=2, help="of those, run through the QONNX executor")
    p.add_argument("--profile-device", choices=("cpu", "cuda"), default=None,
                   help="also measure each point's float and fake-quant inferences/s on this device")
    p.add_argument("--profile-batch", type=int, default=256, help="batch size of --profile-device")
    p.add_argument("--calib-samples", type=int, default=1024, help="training inputs used to calibrate")
    p.add_argument("--scale", default="po2", choices=["po2", "float"], help="scale kind (fpq.convert)")
    p.add_argument("--granularity", default="tensor", choices=["tensor", "channel"], help="weight scales")
    p.add_argument("--only", nargs="+", help="run only these point ids")
    p.add_argument("--fresh", action="store_true", help="ignore the cache (recompute)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--report", action="store_true", help="also write the HTML report into OUT")
    p.set_defaults(func=run)


def run(args) -> int:
    from ..report.grid import grid
    from ..report.html import report
    from ..report.sweeping import sweep

    formats = args.formats
    if args.bits:
        formats = (formats or []) + grid(args.bits, args.kinds)
    try:
        res = sweep(args.model, args.data, formats=formats, methods=args.methods, weights=args.weights,
                    activations=args.activations, first_last=args.first_last, qat_epochs=args.qat_epochs,
                    out=args.out, workers=args.workers, seed=args.seed, verify_samples=args.verify_samples,
                    progress=not args.no_progress, only=args.only, fresh=args.fresh,
                    verify_qonnx=args.verify_qonnx, calib_samples=args.calib_samples, scale=args.scale,
                    profile=None if args.profile_device is None else
                    {"device": args.profile_device, "batch": args.profile_batch},
                    granularity=args.granularity, trust_pickle=args.trust_pickle,
                    engine=args.engine, address=args.address, hls=args.hls, hls_samples=args.hls_samples,
                    compile_workers=args.compile_workers)
    except (ValueError, TypeError) as e:
        print(f"fpq sweep: error: {e}", file=sys.stderr)
        return 2
    m = res.meta
    print(f"fpq sweep: {m['points']} points ({m['computed']} computed, {m['cached']} cached) in {m['seconds']:.1f} s; "
          f"float {m['float_accuracy']:.2f}%")
    for r in res.records:
        print(f"  {r['id']}  W {r['weights']:<10} A {r['activations']:<10} {r['method']:<5} "
              f"acc {_f(r['accuracy'])}  LUT {_f(r['lut'])}  DSP {_f(r['dsp'])}  exact {r['exact']}  {r['status']}")
    if "hls" in m:
        h = m["hls"]
        print(f"HLS builds ({h['select']}): {h['selected']} selected, {h['built']} built now, {h['cached']} from the "
              f"store; C-sim exact on {sum(r.get('hls_exact') is True for r in res.records)}, failed on "
              f"{sum(r.get('hls_status') == 'error' for r in res.records)}")
    print(f"wrote {res.csv_path} and {res.json_path}")
    if args.report:
        print(f"report: {report(res, args.out)}")
    return 0 if all(r["status"] != "error" for r in res.records) else 1


def _f(v) -> str:
    return "-" if v is None else f"{v:.2f}" if isinstance(v, float) else str(v)
