"""The block quantizer of fpq's HLS projects (hls/fpq_block.h, ``fpq::block_quant_layer``, the config
written by fpq.hls.blocks) against the numpy reference fpq.numerics.blocks, atol=0, compiled with
g++ alone (no hls4ml project): random float64 blocks over many binades plus the edges the spec
names: all-zero blocks, a block maximum exactly a power of two, elements exactly on the midpoints
of the element grid (ties to even), subnormal elements, saturation, and scales clamped at E8M0's
2^-127 / 2^127 or at a ue4m3 / ue5m3 scale's smallest normal and largest value. Decoding a word
(sign, element index, scale code) back into a value is done here from the wire's own tables."""
from __future__ import annotations

import subprocess
from pathlib import Path

import numpy as np
import pytest

import fpq
from fpq.hls import cpp
from fpq.formats.block import element_precision
from fpq.hls.blocks import _quant_body
from fpq.numerics.block_hw import make_wire
from fpq.numerics.blocks import block_quantize, tensor_scale_of

HLS4ML_TEMPLATES = Path(__import__("hls4ml").__file__).parent / "templates" / "vivado"
FORMATS = ["mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8", "mxfp6_e3m2", "mxfp8_e5m2", "block<e2m1,ue5m3,16>",
           # the E8M0 scale rounding modes (torchao's names; floor is OCP's), hls/fpq_block.h block_scale
           "block<e2m1,e8m0,32,rounding=ceil>", "block<e4m3,e8m0,32,rounding=even>",
           "block<e2m1,e8m0,32,rounding=even>", "block<e2m1,e8m0,32,rounding=rceil>",
           "block<e4m3,e8m0,32,rounding=rceil>", "block<fixed<8,2,RND_CONV,SAT_SYM>,e8m0,32,rounding=rceil>",
           "block<fixed<8,2,RND_CONV,SAT_SYM>,e8m0,32,rounding=even>"]
N_IN = 70        # two whole blocks of 32 (four of 16) and a padded one


def edge_rows(fmt, rng) -> np.ndarray:
    f = fpq.parse_format(fmt)
    wire = make_wire(f, np.float32(1.0), fmt)
    mids, pos = wire.elem.mids, wire.elem.pos
    rows = []
    for _ in range(400):
        j = int(rng.integers(-30, 30))
        r = rng.standard_normal(N_IN) * np.exp2(rng.integers(-12, 4, size=N_IN)) * 2.0 ** j
        kind = int(rng.integers(0, 7))
        if kind == 1:       # ties: grid midpoints next to a maximum that pins the scale
            r = rng.choice(mids, N_IN) * rng.choice([-1.0, 1.0], N_IN) * 2.0 ** j
            r[::f.k] = f.elem_max * 2.0 ** j
        elif kind == 2:     # a power-of-two maximum, elements on and off the grid, subnormals
            r = rng.choice(np.concatenate([pos, mids, pos * 0.999]), N_IN) * 2.0 ** j
            r[::f.k] = 2.0 ** (j + 1)
        elif kind == 3:     # zero blocks
            r[: f.k] = 0.0
        elif kind == 4:     # one huge outlier: the rest underflows or saturates
            r[int(rng.integers(0, N_IN))] = 3e4 * 2.0 ** j
        elif kind == 5:     # a block maximum on an edge of a scale rounding mode: a power of two, the
            # largest element times one (rceil), the half-up carry of the element's precision (even),
            # and the doubles next to each
            p = element_precision(f.elem)
            edges = np.array([1.0, f.elem_max, 2.0 - 2.0 ** -p, 1.5, f.elem_max * 0.75])
            edges = np.concatenate([edges, np.nextafter(edges, 0), np.nextafter(edges, 9)])
            r = r * 2.0 ** -20    # below every block's maximum, which is the edge
            r[::f.k] = rng.choice(edges, len(r[::f.k])) * 2.0 ** j * rng.choice([-1.0, 1.0], len(r[::f.k]))
        rows.append(r)
    rows += [np.full(N_IN, 2.0 ** -140), np.full(N_IN, -(2.0 ** 140)), np.full(N_IN, 1e300) *
             np.resize([1.0, -0.3], N_IN), np.zeros(N_IN)]
    return np.array(rows)


def decode(words: np.ndarray, wire) -> np.ndarray:
    ib = wire.elem.idx_bits
    idx = (words >> 1) & ((1 << ib) - 1)
    code = words >> (ib + 1)
    v = wire.elem.pos[idx] * wire.scale_vals[code] * wire.st
    return np.where(words & 1, -v, v)


def test_block_quantizer_equals_reference(tmp_path):
    rng = np.random.default_rng(11)
    cases, funcs = [], []
    for i, fmt in enumerate(FORMATS):
        f = fpq.parse_format(fmt)
        x = edge_rows(fmt, rng)
        if not f.po2_scale:       # a static tensor scale: from the data, as calibration gives it
            x = x[np.abs(x).max(1) < 1e30]
        st = np.float32(1.0) if f.po2_scale else tensor_scale_of(x[:50], f)
        wire = make_wire(f, st, fmt)
        np.savetxt(tmp_path / f"in{i}.txt", x.ravel(), fmt="%.17g")
        cases.append((fmt, f, x, st, wire))
        funcs.append(f"struct cfg{i} {{\n{_quant_body(wire, N_IN)}\n}};\n"
                     f"static void run{i}(const char *a, const char *b) {{\n"
                     f"    FILE *fi = fopen(a, \"r\"), *fo = fopen(b, \"w\");\n    double in[{N_IN}];\n"
                     f"    ap_uint<{wire.word_bits}> out[{N_IN}];\n"
                     f"    while (true) {{\n        for (int j = 0; j < {N_IN}; j++) "
                     f"if (fscanf(fi, \"%lf\", &in[j]) != 1) {{ fclose(fi); fclose(fo); return; }}\n"
                     f"        fpq::block_quant_layer<double, ap_uint<{wire.word_bits}>, cfg{i}>(in, out);\n"
                     f"        for (int j = 0; j < {N_IN}; j++) fprintf(fo, \"%llu\\n\", out[j].to_uint64());\n"
                     f"    }}\n}}\n")
    src = tmp_path / "t.cpp"
    src.write_text('#include <cstdio>\n#include "fpq_block.h"\n' + "".join(funcs) +
                   "int main(int argc, char **argv) {\n" +
                   "".join(f'    run{i}(argv[{2 * i + 1}], argv[{2 * i + 2}]);\n' for i in range(len(cases))) +
                   "    return 0;\n}\n")
    exe = tmp_path / "t"
    subprocess.run(["g++", "-O1", "-std=c++14", f"-I{cpp.HLS_DIR}", f"-I{HLS4ML_TEMPLATES / 'ap_types'}",
                    f"-I{HLS4ML_TEMPLATES / 'nnet_utils'}", str(src), "-o", str(exe)], check=True,
                   capture_output=True)
    args = [str(tmp_path / f"{p}{i}.txt") for i in range(len(cases)) for p in ("in", "out")]
    subprocess.run([str(exe), *args], check=True)
    for i, (fmt, f, x, st, wire) in enumerate(cases):
        words = np.loadtxt(tmp_path / f"out{i}.txt", dtype=np.uint64).astype(np.int64).reshape(x.shape)
        want = block_quantize(x, f, None if f.po2_scale else st).values
        got = decode(words, wire)
        bad = got != want
        assert not bad.any(), (fmt, x[bad][:4], got[bad][:4], want[bad][:4])
