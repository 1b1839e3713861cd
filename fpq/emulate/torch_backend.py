"""The emulator's torch program (GPU or CPU): the same ops and dtypes as the numpy path.

Exactness on a GPU needs care the CPU does not: TF32 must be off for float32 matmuls (cuBLAS
would round operands to 10 mantissa bits), and cuDNN convolution may pick FFT / Winograd
algorithms that round. So convolutions run as unfold (im2col) + matmul, whose sums are exact
in any order when the emulator's plan says the accumulator fits (24 bits float32, 53 float64);
wider sums go through fpq.numerics.wide, as on the numpy path.
"""
from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

from ..ir import CONV_KINDS
from ..numerics.torch_ops import apply_scaled_torch
from ..numerics.wide import exact_bilinear
from ..typeplan import po2_exponents, wrap


class TorchProgram:
    def __init__(self, emu, device):
        self.emu = emu
        self.device = torch.device(device)
        self._w = None
        self._compiled = None
        self._dense = {}

    def _weights(self, fast=False):
        """name -> (w, b) tensors; ``fast``: the fused schedule's (a rounded-to-odd bias, see
        Emulator._odd_bias, where the emulator has one)."""
        if self._w is None:
            self._w = {}
            for key, table in (("exact", self.emu._weights), ("fast", {**self.emu._weights, **self.emu._fast_weights})):
                self._w[key] = {name: (torch.from_numpy(np.ascontiguousarray(w)).to(self.device),
                                       None if b is None else torch.from_numpy(b).to(self.device))
                                for name, (w, b) in table.items()}
        return self._w["fast" if fast else "exact"]

    def _wrapped(self, op, acc):
        """As Emulator._wrapped: the narrow wrapping accumulator, in float64."""
        return wrap(acc.to(torch.float64), self.emu._wrap[op.name]) if op.name in self.emu._wrap else acc

    def _dense_conv(self, op, in_shape):
        """The emulator's dense matrix for a small conv (Emulator.dense_conv) on this device."""
        key = (op.name, in_shape)
        if key not in self._dense:
            t = self.emu.dense_conv(op, in_shape, self.emu._weights[op.name][0])
            self._dense[key] = None if t is None else (torch.from_numpy(t[0]).to(self.device), t[1])
        return self._dense[key]

    def run(self, x, return_trace=False):
        g = self.emu.graph
        if isinstance(x, np.ndarray):
            x = torch.from_numpy(x)
        # Emulator.__call__ checked the input (fpq.emulate.check_input): float64 stays float64, so
        # the input quantizer reads the value the user gave
        x = x.to(self.device, torch.float64 if x.dtype == torch.float64 else torch.float32)
        want = g.input_shapes[g.inputs[0]]
        if want is not None and tuple(x.shape[1:]) != tuple(want[1:]):
            raise ValueError(f"input has shape {tuple(x.shape)}; expected (N, {', '.join(map(str, want[1:]))})")
        prev = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = False
        torch.backends.cudnn.allow_tf32 = False
        try:
            with torch.no_grad():
                env = {g.inputs[0]: x}
                trace = {}
                if not return_trace:
                    for fn, ins, out, free in self._steps():
                        env[out] = fn(*[env[t] for t in ins])
                        for t in free:
                            env.pop(t, None)
                for op in g.ops if return_trace else ():
                    y = self._op(op, [env[t] for t in op.inputs])
                    env[op.outputs[0]] = y
                    trace[op.name] = y
        finally:
            torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = prev
        outs = [env[o] for o in g.outputs]
        out = outs[0] if len(outs) == 1 else outs
        return (out, trace) if return_trace else out

    def _steps(self):
        """The emulator's fused schedule (see Emulator._schedule) as torch functions. A po2 integer
        quantizer runs as in-place multiply / round / clamp / multiply on the matmul's temporary:
        on a GPU these element-wise passes, not the matmuls, bound an MLP's throughput."""
        if self._compiled is None:
            steps = []
            for op, ins, out, clip in self.emu._schedule():
                if clip is not None:
                    fn = self._int_quant_fn(op.quant, *clip)
                elif op.kind == "output":
                    fn = lambda x: x  # noqa: E731
                else:
                    fn = lambda *xs, _op=op: self._op(_op, list(xs), fast=True)  # noqa: E731
                steps.append((fn, ins, out))
            from . import with_frees
            g = self.emu.graph
            self._compiled = with_frees(steps, set(g.outputs) | set(g.inputs))
        return self._compiled

    def _int_quant_fn(self, q, lo, hi, inplace):
        """round(x * 2^-k) clamped, times 2^k: multiplying by the exact inverse of a power of two
        gives the same float as dividing by it (one correctly rounded result of the same real)."""
        s64 = np.asarray(q.scale, dtype=np.float64)
        unit = bool(np.all(s64 == 1))
        scales = {}

        def on(dtype):  # the scale and its inverse as tensors of the input's dtype, made once
            if dtype not in scales:
                scales[dtype] = (torch.tensor(1.0 / s64, dtype=dtype, device=self.device),
                                 torch.tensor(s64, dtype=dtype, device=self.device))
            return scales[dtype]

        def fn(x):
            y = x if inplace else x.clone()
            if not unit:
                inv, s = on(y.dtype)
                y.mul_(inv)
            y.round_().clamp_(lo, hi)
            if not unit:
                y.mul_(s)
            return y.to(torch.float32)
        return fn

    def _table(self, op, x):
        """The table op on the device: each x found in the ascending inputs (searchsorted), an x
        off them refused as the numpy kernel does (fpq.numerics.activations.lookup)."""
        cache = self.__dict__.setdefault("_tables", {})
        if op.name not in cache:
            cache[op.name] = (torch.tensor(op.attrs["x"], dtype=torch.float64, device=self.device),
                              torch.tensor(op.attrs["y"], dtype=torch.float64, device=self.device))
        xs, ys = cache[op.name]
        x64 = x.to(torch.float64).contiguous()
        idx = torch.searchsorted(xs, x64).clamp_(0, xs.numel() - 1)
        if not torch.equal(xs[idx], x64):
            bad = x64[xs[idx] != x64].reshape(-1)[0].item()
            raise ValueError(f"table {op.name!r}: input {bad!r} is not one of the {xs.numel()} values of its table")
        if ys.dim() == 1:
            return ys[idx].to(torch.float32)
        c = torch.arange(ys.shape[0], device=self.device).view((-1,) + (1,) * (idx.dim() - 2))
        return ys[c, idx].to(torch.float32)

    def _quant(self, x, q, input_quant):
        if q.is_block:   # block-scaled: the torch twin of fpq.numerics.blocks, float64 values
            from ..numerics.blocks_torch import block_quantize_torch
            return block_quantize_torch(x, q.format, q.tensor_scale)[0]
        if not input_quant and po2_exponents(q.scale) is None:
            x = x.to(torch.float64)  # a float scale divides the exact value in float64
        return apply_scaled_torch(x, q.format, q.scale, q.pre_scale)

    def _op(self, op, xs, fast=False):
        k, x = op.kind, xs[0]
        if k in ("quant", "input_quant"):
            return self._quant(x, op.quant, k == "input_quant")
        if op.name in self.emu.block_inexact:
            return self.emu.block_sum(op, x.to(torch.float64), *self._weights()[op.name])
        if k == "linear":
            w, b = self._weights(fast)[op.name]
            if op.name in self.emu.rounded_to_odd:
                return exact_bilinear(torch.matmul, x.to(torch.float64), w, b, op.fan_in, strict=True)[0]
            if b is not None and b.dtype == w.dtype and x.dim() == 2:
                return self._wrapped(op, torch.addmm(b, x.to(w.dtype), w))  # exact: every partial sum fits
            acc = x.to(w.dtype) @ w
            return self._wrapped(op, _bias(acc, b, None))
        if k in CONV_KINDS:
            w, b = self._weights(fast)[op.name]
            if op.name in self.emu.rounded_to_odd:
                return exact_bilinear(lambda a, c: _conv(a, c, op.attrs), x.to(torch.float64), w, b, op.fan_in,
                                      bias_shape=(-1,) + (1,) * (x.dim() - 2), strict=True)[0]
            x = x.to(w.dtype)
            dense = self._dense_conv(op, tuple(x.shape[1:]))
            y = _conv(x, w, op.attrs) if dense is None else (x.reshape(len(x), -1) @ dense[0]).view(len(x), *dense[1])
            return self._wrapped(op, _bias(y, b, 1))
        if k == "batchnorm":
            w, b = self._weights()[op.name]
            shape = (1, -1) + (1,) * (x.dim() - 2)
            x = x.to(torch.float64)
            if op.name in self.emu.rounded_to_odd:
                return exact_bilinear(lambda a, c: a * c.view(shape), x, w, b, 1, bias_shape=shape, strict=True)[0]
            y = x * w.view(shape)
            return y if b is None else y + b.view(shape)
        if k == "relu":
            return torch.clamp_min(x, 0)
        if k == "clip":   # float32 bounds: exact in x's dtype
            lo, hi = op.attrs["min"], op.attrs["max"]
            return torch.clamp(x, None if lo is None else float(lo), None if hi is None else float(hi))
        if k == "table":
            return self._table(op, x)
        if k in ("softmax", "layernorm"):   # the exact integer pipelines, int64 on the device
            from ..numerics import normalization as N
            fn = N.softmax_torch if k == "softmax" else N.layernorm_torch
            return fn(x, op.attrs["recipe"], f"{k} {op.name!r}")
        if k == "add":
            return x.to(torch.float64) + xs[1].to(torch.float64)
        if k == "gather":   # table rows by integer ids
            return self._weights()[op.name][0][x.to(torch.int64)]
        if k == "matmul":   # exact (Emulator._plan); 2**alpha_exp is a shift
            a, b = x.to(torch.float64), xs[1].to(torch.float64)
            y = exact_bilinear(torch.matmul, a, b, None, op.attrs["fan_in"], strict=True)[0] \
                if op.name in self.emu.rounded_to_odd else torch.matmul(a, b)
            return y * 2.0 ** op.attrs["alpha_exp"] if op.attrs["alpha_exp"] else y
        if k in ("mul", "div", "add_const"):
            c = torch.tensor(np.asarray(op.attrs["value"], dtype=np.float64), device=self.device)
            x = x.to(torch.float64)
            return x * c if k == "mul" else x / c if k == "div" else x + c
        if k in ("maxpool", "avgpool"):
            return _pool(x if k == "maxpool" else x.to(torch.float64), op.attrs, k)
        if k == "global_avgpool":
            dims = tuple(range(2, x.dim()))
            n = int(np.prod([x.shape[d] for d in dims]))
            return x.to(torch.float64).sum(dim=dims, keepdim=True) / n
        if k == "concat":   # values moved: mixed float32 / float64 inputs meet in float64, exactly
            dt = torch.float64 if len({t.dtype for t in xs}) > 1 else x.dtype
            return torch.cat([t.to(dt) for t in xs], dim=op.attrs["axis"])
        if k == "upsample":
            for ax, s in enumerate(op.attrs["scales"]):
                x = x.repeat_interleave(s, dim=ax) if s != 1 else x
            return x
        if k == "flatten":
            ax = op.attrs["axis"]
            return x.reshape(int(np.prod(x.shape[:ax])), -1)
        if k == "reshape":
            from . import batch_shape
            return x.reshape(batch_shape(op.attrs["shape"], op.in_shapes[0], tuple(x.shape)))
        if k == "transpose":
            perm = op.attrs["perm"] or tuple(reversed(range(x.dim())))
            return x.permute(*perm)
        if k == "output":
            return x
        raise ValueError(f"op {op.name}: kind {k} has no torch emulation")


def _bias(acc, b, channel_axis):
    if b is None:
        return acc
    if acc.dtype != b.dtype:
        acc = acc.to(torch.float64)
    if channel_axis is not None:
        b = b.view(-1, *([1] * (acc.dim() - 2)))
    return acc + b


def _pad_split(pads, nd):
    return [(int(pads[i]), int(pads[i + nd])) for i in range(nd)]


def _conv(x, w, attrs):
    """ONNX Conv as unfold + (grouped) matmul: exact sums, no cuDNN algorithm choice."""
    nd = len(attrs["kernel"])
    squeeze = nd == 1
    if squeeze:  # 1-D as 2-D with a unit height
        x, w = x.unsqueeze(2), w.unsqueeze(2)
        kernel, strides = (1, attrs["kernel"][0]), (1, attrs["strides"][0])
        dil = (1, attrs["dilations"][0])
        pads = [(0, 0)] + _pad_split(attrs["pads"], 1)
    else:
        kernel, strides, dil = tuple(attrs["kernel"]), tuple(attrs["strides"]), tuple(attrs["dilations"])
        pads = _pad_split(attrs["pads"], 2)
    # F.pad takes the last dimension first
    x = F.pad(x, (pads[1][0], pads[1][1], pads[0][0], pads[0][1]))
    n, c, h, wd = x.shape
    ho = (h - dil[0] * (kernel[0] - 1) - 1) // strides[0] + 1
    wo = (wd - dil[1] * (kernel[1] - 1) - 1) // strides[1] + 1
    cols = F.unfold(x, kernel, dilation=dil, stride=strides)      # (N, C*kh*kw, L)
    g = attrs["groups"]
    cout = w.shape[0]
    cols = cols.view(n, g, (c // g) * kernel[0] * kernel[1], ho * wo)
    wm = w.reshape(g, cout // g, -1)                               # (g, cout_g, cin_g*kh*kw)
    y = torch.matmul(wm.unsqueeze(0), cols).reshape(n, cout, ho, wo)
    return y.squeeze(2) if squeeze else y


def _pool(x, attrs, kind):
    nd = len(attrs["kernel"])
    pads = _pad_split(attrs["pads"], nd)
    if any(p[0] != p[1] for p in pads):
        raise ValueError("asymmetric pool padding has no torch emulation; use the numpy backend")
    pad = tuple(p[0] for p in pads)
    if kind == "maxpool":
        f = F.max_pool1d if nd == 1 else F.max_pool2d
        return f(x, attrs["kernel"], attrs["strides"], pad, attrs.get("dilations", (1,) * nd),
                 ceil_mode=bool(attrs.get("ceil_mode", 0)))
    f = F.avg_pool1d if nd == 1 else F.avg_pool2d
    # torch's average divides the float64 sum once, as the numpy path does
    return f(x, attrs["kernel"], attrs["strides"], pad, ceil_mode=bool(attrs.get("ceil_mode", 0)),
             count_include_pad=bool(attrs.get("count_include_pad", 0)))
