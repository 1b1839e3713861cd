"""The price of hls4ml's distributed-arithmetic strategy (da4ml): da4ml's own cost report of each
kernel, corrected by how yosys synthesizes da4ml's own Verilog of the same kernel.

da4ml rewrites a constant matrix-vector product as a graph of shift-and-add operations and
reports its cost (``CombLogic.cost``: adder bits / LUT-like units of its own hardware model). That
report is what fpq's HLS path already gets for every DA layer (``fpq.hls.da.generate``), but it is
da4ml's model, not a measurement. So ``python -m fpq.cost_model.da`` solves a grid of dense
kernels (random weights of int4 / int8 / e2m1 / e4m3 on int8 / int4 inputs, 8x4 to 64x32), writes
each with da4ml's Verilog generator (``da4ml.codegen.rtl.verilog.comb.comb_logic_gen``), synthesizes
it with the operator tables' flow (``synth_xilinx -family xcup -flatten -noiopad -nodsp``) and
commits LUT / FF / CARRY next to da4ml's cost (``cost_model/da_xcup.csv``). The price of a DA
layer is then ``a * cost + b * n_out`` (non-negative least squares on the ``fit`` rows; the
``holdout`` rows are only checked, ``benchmarks/bench_cost_model.py``).

The kernel is solved with the options fpq's HLS path uses (``DEFAULT_OPTIONS``, the same as
``fpq.hls.da.DEFAULT_OPTIONS``), on the layer's exact input type (da4ml's (keep sign, integer,
fraction) bits of the input carrier), as ``fpq.hls.da.generate`` does; ``solve`` is that call.
"""
from __future__ import annotations

import argparse
import csv
import functools
import json
import tempfile
import time
from pathlib import Path

import numpy as np

from ..formats import Fixed, exact_fixed, parse_format

TABLE = Path(__file__).resolve().parent / "data" / "da_xcup.csv"
DEFAULT_OPTIONS = {"hard_dc": 2, "search_all_decompose_dc": False}
COLUMNS = ["name", "split", "n_in", "n_out", "x", "w", "da_cost", "da_latency", "lut", "ff", "carry", "muxf",
           "solve_s", "synth_s"]


def kif(t: Fixed) -> tuple[int, int, int]:
    """da4ml's (keep sign, integer bits without the sign, fractional bits) of a Fixed."""
    k = int(bool(t.signed))
    return k, t.int_bits - k, t.width - t.int_bits


def solve(x_type: Fixed, kernel: np.ndarray, bias=None, options: dict | None = None):
    """da4ml's adder graph (``CombLogic``) of y = x @ kernel + bias for x of ``x_type``, kernel
    (n_in, n_out): the call fpq's HLS path makes for a DA layer."""
    try:
        from da4ml.trace import FixedVariableArray, HWConfig, comb_trace
    except ImportError:
        raise RuntimeError("strategy distributed_arithmetic needs da4ml (pip install 'hls4ml[da]')") from None
    kernel = np.asarray(kernel, dtype=np.float64)
    if not np.array_equal(kernel.astype(np.float32).astype(np.float64), kernel):
        raise ValueError("da4ml solves on a float32 copy of the kernel: the weights are not exact in float32")
    n_in = kernel.shape[0]
    k, i, f = kif(x_type)
    ones = np.ones(n_in, dtype=np.int16)
    opts = dict(DEFAULT_OPTIONS if options is None else options)
    inp = FixedVariableArray.from_kif(ones * k, ones * i, ones * f, HWConfig(1, -1, -1), solver_options=opts)
    out = inp @ kernel
    if bias is not None:
        out = out + np.asarray(bias, dtype=np.float64).ravel()
    return comb_trace(inp, out)


# ----------------------------------------------------------------------------- the price
def read_table(path: Path = TABLE) -> list[dict]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"DA table {path} missing: run `python -m fpq.cost_model.da`")
    with open(path) as f:
        rows = list(csv.DictReader(ln for ln in f if not ln.startswith("#")))
    for r in rows:
        for c in ("n_in", "n_out", "lut", "ff", "carry", "muxf"):
            r[c] = int(r[c])
        for c in ("da_cost", "da_latency"):
            r[c] = float(r[c])
    return rows


def features(da_cost: float, n_out: int) -> list[float]:
    return [float(da_cost), float(n_out)]


@functools.lru_cache(maxsize=2)
def fit(path: str = str(TABLE), split: str = "fit") -> tuple:
    """(coefficients, fitted rows, median |rel err| on them) of LUT = a * da_cost + b * n_out."""
    from scipy.optimize import nnls

    rows = [r for r in read_table(Path(path)) if r["split"] == split]
    if not rows:
        raise RuntimeError(f"{path} has no {split!r} rows")
    X = np.array([features(r["da_cost"], r["n_out"]) for r in rows])
    y = np.array([r["lut"] for r in rows], dtype=float)
    w = 1.0 / np.maximum(y, 4.0)
    coef, _ = nnls(X * w[:, None], y * w)
    mare = float(np.median(np.abs(X @ coef - y) / y))
    return tuple(float(c) for c in coef), len(rows), mare


def price(da_cost: float, n_out: int) -> float:
    """LUTs of a DA kernel of da4ml cost ``da_cost`` with ``n_out`` outputs, as yosys synthesizes
    da4ml's Verilog."""
    coef, _, _ = fit()
    return max(0.0, float(np.dot(coef, features(da_cost, n_out))))


_SOLVED: dict = {}


def kernel_cost(x_type: Fixed, kernel: np.ndarray, bias=None) -> tuple[float, float]:
    """(da4ml cost, da4ml latency) of one kernel, solved once per (input type, kernel, bias)."""
    kernel = np.ascontiguousarray(kernel, dtype=np.float64)
    b = None if bias is None else np.ascontiguousarray(bias, dtype=np.float64).ravel()
    key = (str(x_type), kernel.shape, kernel.tobytes(), None if b is None else b.tobytes())
    if key not in _SOLVED:
        sol = solve(x_type, kernel, b)
        _SOLVED[key] = (float(sol.cost), float(sol.latency[1]))
    return _SOLVED[key]


def da_row(lp, ops, dev, rf: int, clock: float, notes: list) -> dict:
    """One estimate row of a Dense / Conv layer under ``strategy="distributed_arithmetic"``: the
    Latency strategy's row of the same layer (types, widths, integer proxies, the fused
    requantizer) with the kernel's LUTs replaced by da4ml's cost of the kernel fpq hands it,
    priced as synthesized (``price``), no DSP, and da4ml's adder depth as the latency."""
    from .estimate import _carrier, _mac_layer, _t_add
    from .lookups import requant_luts
    from ..typeplan import TensorType

    if rf != 1:
        raise ValueError(f"strategy distributed_arithmetic builds fully unrolled adder graphs: layer {lp.name!r} "
                         f"has reuse_factor {rf}; allowed: 1")
    row = _mac_layer(lp, ops, dev, 1, "latency", clock, None, "carrier", notes)
    W = lp.values.get("weight")
    if W is None:
        raise ValueError(f"layer {lp.name}: no weight values; the distributed-arithmetic price solves the kernel")
    W = np.asarray(W, dtype=np.float64)
    groups = int(lp.attrs.get("groups", 1) or 1)
    if groups > 1:
        raise ValueError(f"layer {lp.name}: grouped convolution ({groups} groups) under distributed_arithmetic is not "
                         "priced (fpq's HLS path builds DA kernels for dense kernels only)")
    kernel = W.reshape(W.shape[0], -1).T
    xc = _carrier(lp.tensors.get("input"), notes, f"{lp.name} input")
    cost, depth = kernel_cost(Fixed(xc.width, xc.int_bits, xc.signed), kernel, lp.values.get("bias"))
    n_out = kernel.shape[1]
    lut = price(cost, n_out)
    out_t, acc = lp.tensors.get("output"), lp.exact_sum()
    if isinstance(out_t, TensorType) and out_t.po2 and isinstance(acc, Fixed):
        lut += n_out * requant_luts(ops, out_t, acc, _carrier(out_t, notes, f"{lp.name} output"))
    note = ("distributed_arithmetic: each kernel's LUTs from da4ml's own cost of it, corrected by the synthesized "
            "ratio of da4ml's Verilog (cost_model/da_xcup.csv); latency from da4ml's adder depth")
    if note not in notes:
        notes.append(note)
    stages = max(1, int(np.ceil(depth * _t_add(dev, row["acc_bits"]) / clock)))
    pixels = row["pixels"]
    row.update(lut=float(lut), dsp=0, mapping="distributed-arithmetic", da_cost=float(cost), n_mult=0,
               latency_cycles=int(stages + (1 if lp.op.startswith("conv") else 0) + pixels - 1),
               ff=float(stages * n_out * row["acc_bits"] + (n_out * row["acc_bits"] if pixels > 1 else 0)))
    return row


# ----------------------------------------------------------------------------- the measurement
GRID = {"fit": [((8, 4), "int8", "int4"), ((8, 4), "int8", "e2m1"), ((16, 8), "int8", "int8"),
                ((16, 8), "int4", "e4m3"), ((32, 5), "int8", "int4"), ((32, 5), "int8", "e2m1"),
                ((16, 16), "int8", "e4m3"), ((16, 16), "int4", "int4"), ((24, 12), "int8", "int8"),
                ((32, 16), "int4", "e2m1")],
        "holdout": [((12, 6), "int8", "e4m3"), ((20, 10), "int4", "int8"), ((32, 32), "int8", "int4"),
                    ((16, 64), "int8", "e2m1")]}


def layer(split: str, shape, fx: str, fw: str, seed: int):
    """A dense kernel of random values of ``fw`` (bell-shaped, 20% zeros, as fpq's operator grid
    draws them) and the input carrier of ``fx``."""
    from .synth import random_weights

    rng = np.random.default_rng(seed)
    W = random_weights(parse_format(fw), shape, rng)
    name = f"da_{split}_{shape[0]}x{shape[1]}_{fx}_{fw}"
    return name, exact_fixed(parse_format(fx)), W


def measure(split: str, shape, fx: str, fw: str, seed: int) -> dict:
    from da4ml.codegen.rtl.verilog.comb import comb_logic_gen

    from .synth import FLOWS, row_from_cells
    from .rtl import Operator
    from .yosys import run_script

    name, xt, W = layer(split, shape, fx, fw, seed)
    t0 = time.perf_counter()
    sol = solve(xt, W)
    t1 = time.perf_counter()
    v = comb_logic_gen(sol, name)
    # da4ml's Verilog instantiates its own primitive modules (shift_adder, ...), shipped with it
    import da4ml.codegen.rtl.verilog as dav
    lib = "\n".join(p.read_text() for p in sorted((Path(dav.__file__).parent / "source").glob("*.v"))
                    if p.stem != "lookup_table")   # a table module (none in a kernel) reads a .mem file
    with tempfile.TemporaryDirectory(prefix="fpq_da_synth_") as tmp:
        (Path(tmp) / "da.v").write_text(lib + "\n" + v)
        run_script(f"read_verilog -sv da.v\nsynth_xilinx {FLOWS['lut']} -top {name}\ntee -q -o stat.json stat -json\n",
                   Path(tmp))
        mods = json.loads((Path(tmp) / "stat.json").read_text())["modules"]
    cells = mods.get("\\" + name, mods.get(name))["num_cells_by_type"]
    r = row_from_cells(Operator(name, "da", v, [], []), "lut", cells)
    return dict(name=name, split=split, n_in=shape[0], n_out=shape[1], x=fx, w=fw, da_cost=round(float(sol.cost), 3),
                da_latency=float(sol.latency[1]), lut=r["lut"], ff=r["ff"], carry=r["carry"], muxf=r["muxf"],
                solve_s=round(t1 - t0, 2), synth_s=round(time.perf_counter() - t1, 1))


def main(argv=None) -> int:
    from concurrent.futures import ThreadPoolExecutor

    from .synth import FLOWS
    from .yosys import YOWASP_PIN, yosys_version

    ap = argparse.ArgumentParser(description="Synthesize da4ml's Verilog of a grid of dense kernels and write "
                                             "the DA price table.")
    ap.add_argument("--out", type=Path, default=TABLE)
    ap.add_argument("--jobs", type=int, default=2)
    a = ap.parse_args(argv)
    jobs = [(split, shape, fx, fw, 900 + i) for split in ("fit", "holdout")
            for i, (shape, fx, fw) in enumerate(GRID[split])]
    solve(Fixed(4, 4), np.eye(2))            # compile da4ml's solver once, before the threads
    with ThreadPoolExecutor(a.jobs) as ex:
        rows = list(ex.map(lambda j: measure(*j), jobs))
    with open(a.out, "w", newline="") as f:
        f.write(f"# da4ml's Verilog (comb_logic_gen) of dense kernels, synthesized with {yosys_version()} "
                f"({YOWASP_PIN}): read_verilog -sv; synth_xilinx {FLOWS['lut']}; stat -json\n")
        f.write(f"# da4ml solver options {json.dumps(DEFAULT_OPTIONS)}; da_cost = CombLogic.cost, da_latency = its "
                "max latency; fpq/cost_model/da.py\n")
        w = csv.DictWriter(f, COLUMNS)
        w.writeheader()
        w.writerows(rows)
    for r in rows:
        print(f"{r['name']:28s} cost {r['da_cost']:9.1f}  LUT {r['lut']:6d}  ratio {r['lut'] / max(r['da_cost'], 1):.2f}  "
              f"solve {r['solve_s']} s  synth {r['synth_s']} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
