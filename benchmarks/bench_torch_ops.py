"""Speed of the torch quantizer (fpq.numerics.torch_ops) against an earlier revision of it.

Both versions run in this one process, on the same inputs, one thread, best of several
repeats; every output of the current version is checked bit for bit against the baseline's.
Cases: ``quantize_unscaled_torch`` on CPU tensors of 256x64 and 4096x256 (float32 and float64
inputs, as the quantizers receive them: the float32 ones go through ``quantize_torch``, which
rounds in float64 or in float32 where that is exact), and the forward pass of the digits CNN
converted to e2m1 and calibrated on random data (batch 256, eval and train mode).

    .venv/bin/python benchmarks/bench_torch_ops.py [--baseline 4aa697b] [--repeats 7]
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import subprocess
import sys
import time

import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "examples"))

import fpq  # noqa: E402
from fpq.numerics import torch_ops  # noqa: E402

FORMATS = ["e2m1", "e4m3", "e3m2", "e5m2", "int8", "fixed<8,3>"]
SHAPES = [(256, 64), (4096, 256)]


def load_baseline(rev: str):
    """torch_ops.py as it was at git revision ``rev``, as a sibling module of the current one."""
    src = subprocess.run(["git", "show", f"{rev}:fpq/numerics/torch_ops.py"], cwd=ROOT, check=True,
                         capture_output=True, text=True).stdout
    spec = importlib.util.spec_from_loader("fpq.numerics._baseline_torch_ops", loader=None)
    mod = importlib.util.module_from_spec(spec)
    mod.__package__ = "fpq.numerics"
    exec(compile(src, f"{rev}:torch_ops.py", "exec"), mod.__dict__)
    return mod


def best_of(fn, repeats):
    fn()  # warm up (allocator, dispatch caches)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def same_bits(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    view = {torch.float32: torch.int32, torch.float64: torch.int64}[a.dtype]
    return torch.equal(a.view(view), b.view(view))


def inputs(shape, dtype, fmt, seed=0):
    """Values around the format's range (a tenth beyond it), like scaled activations."""
    g = torch.Generator().manual_seed(seed)
    top = fpq.finfo(fmt).max
    return ((torch.rand(shape, generator=g, dtype=torch.float64) * 2 - 1) * 1.1 * top).to(dtype)


def quantizer_cases(base, repeats):
    rows = []
    for shape in SHAPES:
        for dtype in (torch.float32, torch.float64):
            for name in FORMATS:
                fmt = fpq.parse_format(name)
                x = inputs(shape, dtype, fmt)
                # what a quantizer's forward computes: the unscaled quantizer (through the STE)
                old = lambda m=base: m.ste_quantize_unscaled(x, fmt)  # noqa: E731
                new = lambda m=torch_ops: m.ste_quantize_unscaled(x, fmt)  # noqa: E731
                assert same_bits(old(), new()), f"{name} {dtype} {shape}: outputs differ"
                rows.append((f"{name:11s} {shape[0]}x{shape[1]} {str(dtype)[6:]}",
                             best_of(old, repeats), best_of(new, repeats)))
    return rows


def cnn_cases(base, repeats):
    from digits_cnn import DigitsCNN

    torch.manual_seed(0)
    q = fpq.convert(DigitsCNN().eval(), fmt="e2m1")
    g = torch.Generator().manual_seed(1)
    fpq.calibrate(q, [torch.randn(256, 1, 8, 8, generator=g) for _ in range(4)], progress=False)
    x = torch.randn(256, 1, 8, 8, generator=g)
    rows = []
    for mode in ("eval", "train", "train+backward"):
        q.train(mode != "eval")
        outs, times = [], []
        for mod in (base, torch_ops):
            # the quantizers import the function by name: point them at the version measured (a
            # revision before ste_apply_scaled: the layers' own expression over its quantizer)
            torch_ops_fn = getattr(mod, "ste_apply_scaled", None) or (
                lambda x, fmt, s, u=mod.ste_quantize_unscaled: u(x, fmt) if s is None else u(x / s, fmt) * s)
            import fpq.nn.quantizers as qz
            saved, qz.ste_apply_scaled = qz.ste_apply_scaled, torch_ops_fn
            try:
                if mode == "eval":
                    def step():
                        with torch.no_grad():
                            return q(x)
                else:
                    def step():
                        torch.manual_seed(2)  # same dropout mask for both versions
                        y = q(x)
                        if mode == "train+backward":
                            y.square().sum().backward()
                        return y
                times.append(best_of(step, repeats))
                outs.append(step())
            finally:
                qz.ste_apply_scaled = saved
        assert same_bits(outs[0].detach(), outs[1].detach()), f"CNN {mode}: outputs differ"
        rows.append((f"digits CNN e2m1 b256 {mode}", times[0], times[1]))
    return rows


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--baseline", default="4aa697b", help="git revision of the torch_ops.py to compare with")
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    torch.set_num_threads(1)
    base = load_baseline(a.baseline)
    rows = quantizer_cases(base, a.repeats) + cnn_cases(base, a.repeats)
    print(f"{'case':42s} {'baseline ms':>12s} {'current ms':>11s} {'speedup':>8s}")
    for label, t0, t1 in rows:
        print(f"{label:42s} {t0 * 1e3:12.3f} {t1 * 1e3:11.3f} {t0 / t1:7.2f}x")


if __name__ == "__main__":
    main()
