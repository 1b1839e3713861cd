"""The same digits-CNN sweep on both engines of ``fpq.sweep``, timed side by side (issue 21).

    python benchmarks/bench_sweep_engines.py                 # 48 points (6 W x 4 A x max, mse)
    python benchmarks/bench_sweep_engines.py --full          # the 1,458-point grid of examples/sweep_digits.py

Each engine starts from an empty store (its own folder under --out) with 2 workers / a local Ray
of 2 CPUs started by the sweep (its start-up counts in the Ray time). Prints
both wall times and whether the two stores hold the same records (accuracy, cost, exactness).
"""
from __future__ import annotations

import argparse
import os
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SPEC = os.path.join(ROOT, "examples", "sweep_digits.py") + ":load_model"
WEIGHTS = ["int3", "int4", "e2m1", "int6", "e3m2", "int8"]
ACTIVATIONS = ["int4", "e2m1", "int8", "e4m3"]
FIELDS = ("id", "status", "accuracy", "lut", "ff", "dsp", "latency_ns", "bops", "exact", "error")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--full", action="store_true", help="the 1,458-point grid (12 min per engine on 2 idle cores)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", default=os.path.join("out", "bench_sweep_engines"))
    a = ap.parse_args()
    try:
        import ray  # noqa: F401
    except ImportError:
        print("skipped: Ray is not installed (pip install 'fpq[ray]')")
        return 0
    sys.path.insert(0, os.path.join(ROOT, "examples"))
    import fpq
    from fpq.report import grid
    from sweep_digits import load_model

    os.makedirs(a.out, exist_ok=True)
    load_model(os.path.join("out", "digits_cnn_float.pt"))  # train once, before the timed runs
    axes = dict(formats=grid()) if a.full else dict(weights=WEIGHTS, activations=ACTIVATIONS)
    results, times = {}, {}
    for engine in ("local", "ray"):
        t0 = time.time()
        res = fpq.sweep(SPEC, "fpq.data:load_digits_split", methods=("max", "mse"), verify_samples=32,
                        workers=a.workers, out=os.path.join(a.out, engine), fresh=True, engine=engine, **axes)
        times[engine] = time.time() - t0
        results[engine] = {r["id"]: tuple(r[k] for k in FIELDS) for r in res.records}
        print(f"{engine:>5}: {len(res.records)} points in {times[engine]:.1f} s "
              f"({sum(r['status'] == 'ok' for r in res.records)} ok)", flush=True)
    same = results["local"] == results["ray"]
    print(f"points {len(results['local'])}; local {times['local']:.1f} s, ray {times['ray']:.1f} s "
          f"(ray/local {times['ray'] / times['local']:.2f}); records identical: {same}; "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
    return 0 if same else 1


if __name__ == "__main__":
    sys.exit(main())
