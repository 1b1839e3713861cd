"""`make demo`: fpq end to end on the embedded default (scikit-learn's digits, 8x8, 10 classes).

1. The digits CNN: float training, then int8 / fixed / e4m3 / e3m2 / e2m1 (PTQ and QAT): the table.
2. One quantized model (W4A4 e2m1, QAT) all the way to hardware: QONNX export, `fpq.fit` to a
   Pynq-Z2's xc7z020 (io_type, strategy, per-layer reuse), that hls4ml Vitis project compiled for
   C simulation, and `fpq.verify`: torch == emulator == QONNX executor ==
   C-sim, bit for bit, on 2,000 random off-grid inputs plus the held-out images.
3. The fitted design's FPGA cost estimate per layer (xc7z020, 5 ns).
4. The minifloat-vs-integer sweep on a small grid (4..8 bits, W x A) with its Pareto report in out/.

    python examples/demo.py [--quick] [--no-sweep]
"""
from __future__ import annotations

import argparse
import os
import sys
import time

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import fpq  # noqa: E402
from fpq.data import load_digits_split  # noqa: E402


def section(title: str) -> None:
    print(f"\n{'=' * 78}\n{title}\n{'=' * 78}", flush=True)


def hardware_path(model, data, out_dir: str, n_random: int, qat_epochs: int) -> bool:
    """Convert to e2m1, QAT, export, build the HLS project, verify bit-exactness, cost it."""
    from _digits_common import accuracy, train

    q = fpq.convert(model, "e2m1")
    fpq.calibrate(q, [x for x, _ in data.batches(256, train=True)], progress=False)
    train(q, data, qat_epochs, 1e-3, seed=1)
    print(f"e2m1 W4A4 after {qat_epochs} QAT epochs: {accuracy(q, data.x_test, data.y_test):.2f}% held-out accuracy")
    print(fpq.plan(q))

    onnx_path = os.path.join(out_dir, "digits_cnn_e2m1.onnx")
    fpq.export_qonnx(q, onnx_path, data.x_test[:1])
    print(f"\nQONNX: {onnx_path}")
    # fitted to a Pynq-Z2's xc7z020 at 80% of each resource: io_type, strategy, per-layer reuse
    fit = fpq.fit(q, part="xc7z020", budget=0.8, objective="latency")
    print(f"\n{fit}")
    t0 = time.time()
    proj = fpq.to_hls(q, os.path.join(out_dir, "digits_cnn_e2m1_hls"), backend="Vitis",
                      example_input=data.x_test[:1], overwrite=True,  # a rerun replaces fpq's own files only
                      **fit.hls_kwargs)
    print(f"hls4ml project: {proj.outdir} (written and compiled for C-sim in {time.time() - t0:.0f} s)")

    rng = np.random.default_rng(0)
    off_grid = rng.uniform(-0.5, 1.5, size=(n_random, 1, 8, 8)).astype(np.float32)  # a third saturate
    x = np.concatenate([off_grid, data.x_test.numpy()])
    rep = fpq.verify(q, x, project=proj, qonnx_subset=32)
    print(rep)

    section("3. FPGA cost estimate of the fitted design, per layer (xc7z020, 5 ns)")
    print(fit.report)
    return bool(rep.exact)


def main(quick: bool = False, sweep: bool = True) -> int:
    torch.set_num_threads(1)
    t_start = time.time()
    out_dir = os.path.abspath("out")
    os.makedirs(out_dir, exist_ok=True)

    section("1. Digits CNN: float, PTQ and QAT accuracy per format")
    from digits_cnn import main as digits_cnn_main
    digits_cnn_main(quick=quick)

    section("2. W4A4 e2m1 model -> QONNX -> hls4ml C-sim, verified bit for bit")
    from sweep_digits import load_model
    data = load_digits_split(seed=0)
    exact = hardware_path(load_model(), data, out_dir, n_random=500 if quick else 2000,
                          qat_epochs=1 if quick else 5)

    if sweep:
        section("4. Minifloat vs integer sweep (small grid) and its Pareto report")
        from sweep_digits import main as sweep_main
        sweep_main(demo=True, out=os.path.join(out_dir, "sweep_digits_demo"), workers=2, seed=0)

    print(f"\ndemo finished in {time.time() - t_start:.0f} s; outputs under {out_dir}")
    if not exact:
        print("ERROR: the hardware path was not bit-exact (see the report above)")
        return 1
    return 0


if __name__ == "__main__":
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="fewer epochs and inputs (a smoke run)")
    ap.add_argument("--no-sweep", action="store_true", help="skip the sweep (step 4)")
    a = ap.parse_args()
    sys.exit(main(quick=a.quick, sweep=not a.no_sweep))
