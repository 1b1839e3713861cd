"""The same digits-CNN sweep on both engines of ``fpq.sweep``, timed side by side (issue 21).

    python benchmarks/bench_sweep_engines.py                 # 48 points (6 W x 4 A x max, mse)
    python benchmarks/bench_sweep_engines.py --points 1458   # the 1,458-point grid of examples/sweep_digits.py
    python benchmarks/bench_sweep_engines.py --points 200    # its first 200 points (the sweep's order)
    python benchmarks/bench_sweep_engines.py --rss           # peak memory of one process running one point

Each engine starts from an empty store (its own folder under --out) with --workers processes / a
local Ray of --workers CPUs started by the sweep (its start-up counts in the Ray time). Prints
both wall times and whether the two stores hold the same records (accuracy, cost, exactness), and
writes them to OUT/summary.json. The full grid takes about 12 minutes per engine on 2 idle cores:
run it on a machine of your own, not a shared one.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SPEC = os.path.join(ROOT, "examples", "sweep_digits.py") + ":load_model"
DATA = "fpq.data:load_digits_split"
WEIGHTS = ["int3", "int4", "e2m1", "int6", "e3m2", "int8"]
ACTIVATIONS = ["int4", "e2m1", "int8", "e4m3"]
METHODS = ("max", "mse")
FULL = 1458  # grid(): int and every minifloat split of 3..8 bits (27 formats) squared x 2 methods
FIELDS = ("id", "status", "accuracy", "lut", "ff", "dsp", "latency_ns", "bops", "exact", "error")

# One point in a fresh process, as a worker runs it (imports, the model and data unpickled or
# loaded, one point with verify_samples=32 of which 2 through the QONNX executor); the baseline
# is the same process up to the point. The peak is the kernel's (ru_maxrss, KiB on Linux).
_RSS = r"""
import json, resource, sys, tempfile, torch
torch.set_num_threads(1)
import fpq
from fpq.userfiles import load_spec
spec, data, w, a, m, point = sys.argv[1:7]
model, d = load_spec(spec), load_spec(data)
if point == "1":
    with tempfile.TemporaryDirectory() as out:
        res = fpq.sweep(model, d, weights=[w], activations=[a], methods=(m,), workers=1, verify_samples=32,
                        out=out, progress=False)
        assert res.records[0]["status"] == "ok", res.records[0]["error"]
print(json.dumps({"maxrss_kib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}))
"""


def peak_rss(weights: str, activations: str, method: str, point: bool) -> int:
    """Peak resident memory (bytes) of a fresh process that loads the digits model and data and,
    with ``point``, runs that one point."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")]), OMP_NUM_THREADS="1")
    run = subprocess.run([sys.executable, "-c", _RSS, SPEC, DATA, weights, activations, method, str(int(point))],
                         capture_output=True, text=True, env=env, check=True)
    return json.loads(run.stdout.strip().splitlines()[-1])["maxrss_kib"] * 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--points", type=int, default=48,
                    help=f"48: the small grid (default); any other N <= {FULL}: the first N points of the full grid "
                         f"({FULL}: all of it)")
    ap.add_argument("--full", action="store_true", help=f"same as --points {FULL}")
    ap.add_argument("--engines", nargs="+", choices=("local", "ray"), default=["local", "ray"])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join("out", "bench_sweep_engines"))
    ap.add_argument("--rss", action="store_true", help="measure one point's peak memory instead of timing a sweep")
    a = ap.parse_args()
    n = FULL if a.full else a.points
    if not 1 <= n <= FULL:
        ap.error(f"--points must be between 1 and {FULL}, got {n}")
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    from sweep_digits import load_model
    load_model(os.path.join("out", "digits_cnn_float.pt"))  # train once, before the timed runs
    if a.rss:
        base = peak_rss("int8", "int8", "mse", point=False)
        print(f"baseline (imports, model, data): {base / 2 ** 20:.0f} MiB peak", flush=True)
        for w, act in (("int8", "int8"), ("e4m3", "e4m3"), ("int3", "e2m1")):
            rss = peak_rss(w, act, "mse", point=True)
            print(f"one point W {w} A {act} (mse): {rss / 2 ** 20:.0f} MiB peak, {(rss - base) / 2 ** 20:.0f} MiB over "
                  f"the baseline", flush=True)
        return 0
    if "ray" in a.engines:
        try:
            import ray  # noqa: F401
        except ImportError:
            print("skipped: Ray is not installed (pip install 'fpq[ray]')")
            return 0
    import fpq
    from fpq.report import grid, point_id
    from fpq.report.grid import points

    os.makedirs(a.out, exist_ok=True)
    if n == 48:
        axes, only = dict(weights=WEIGHTS, activations=ACTIVATIONS), None
    else:
        formats = grid()
        axes = dict(formats=formats)
        cfgs = points(formats, formats, METHODS)
        assert len(cfgs) == FULL, len(cfgs)
        only = None if n == FULL else [point_id(dict(c, qat_epochs=0, seed=0)) for c in cfgs[:n]]
    results, times = {}, {}
    for engine in a.engines:
        t0 = time.time()
        res = fpq.sweep(SPEC, DATA, methods=METHODS, verify_samples=32, workers=a.workers, only=only,
                        out=os.path.join(a.out, engine), fresh=True, engine=engine, **axes)
        times[engine] = time.time() - t0
        results[engine] = {r["id"]: tuple(r[k] for k in FIELDS) for r in res.records}
        print(f"{engine:>5}: {len(res.records)} points in {times[engine]:.1f} s "
              f"({sum(r['status'] == 'ok' for r in res.records)} ok)", flush=True)
    same = len({json.dumps(sorted(v.items()), default=str) for v in results.values()}) == 1
    summary = {"points": n, "workers": a.workers, "seconds": {k: round(v, 1) for k, v in times.items()},
               "records_identical": same, "load_average": round(os.getloadavg()[0], 2), "cpus": os.cpu_count()}
    with open(os.path.join(a.out, "summary.json"), "w") as f:
        json.dump(summary, f, indent=1)
    print(" ".join(f"{k} {v:.1f} s," for k, v in times.items())
          + (f" (ray/local {times['ray'] / times['local']:.2f});" if len(times) == 2 else "")
          + f" records identical: {same}; load average {summary['load_average']} on {os.cpu_count()} CPUs")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
