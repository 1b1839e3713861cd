"""``fpq.emulate``: a fast, vectorized executor of fpq's graph IR, bit-exact to the hardware.

Numerics (the exactness contract):

* quantizers follow ``fpq.quantize``; their outputs are stored as float32 (exact for power-of-two
  scales; for a float scale the float32 rounding of ``q * scale``, as torch and qonnx store it).
  Every later quantizer reads the exact float64 value of what precedes it.
* inputs (``check_input``, the rule of every fpq path: emulate, verify, HLS predict): the value
  the user gave is quantized. A float64 input stays float64 (integers become float64, other
  floats float32), so a power-of-two input scale quantizes the double exactly, as torch and the
  C-sim's ap_fixed port do. An input quantizer with a float (non-power-of-two) scale divides in
  float32, as the exported model (a float32 graph input) and the C-sim's float32 port do: its
  float64 inputs must hold float32 numbers, else they are refused. NaN / +-inf inputs are
  refused (fixed-point hardware has neither), naming how many and the first index.
* linear / conv sums are exact. When the TypePlan proves that every partial sum fits in 24
  significant bits, the matmul runs in float32 (exact in any summation order, and fast);
  otherwise in float64 when the accumulator fits in 53 bits (always for the element-wise
  BatchNorm x * s + t, one product and one add per element). A wider one (up to 94 bits, e.g.
  e5m2 x e5m2) is summed exactly in pieces and rounded to odd (``fpq.numerics.wide``), which every
  later quantizer rounds as it would the exact sum; wider still is refused naming the layer.
* A non-power-of-two scale on an input or weight gives no fixed-point type by format; the sum
  runs in float64, and ``Emulator.exact[op]`` is True when the values themselves (float32 q * s,
  dyadic numbers) prove it fits 53 bits (``value_accumulator_bits``), else False.
* The fused run (not ``return_trace``) may add a bias rounded to odd on the product grid when the
  sum fits float32 but its bias has finer bits; only quantizers whose thresholds lie on that
  grid read such a sum, so no output changes (``Emulator._odd_bias``). The traced run uses the
  exact bias.
* No per-sample Python: one matmul per layer over the whole batch (conv as im2col views, or one
  GEMM against the unrolled conv matrix when the feature map is small).

``device="cuda"`` runs the same program with torch on the GPU (float64 / float32 matmuls with
TF32 disabled, convolutions as unfold + matmul, so the results are identical);
``backend="torch"`` runs that program on the CPU too.
"""
from __future__ import annotations

import numpy as np

from ..ir import (COMPUTING_KINDS, CONV_KINDS, OPS, ORDER_KEEPING, WEIGHTED_KINDS, Graph, Op,  # noqa: F401
                  UnsupportedGraphError)
from ..ir.plan import typeplan_from_graph
from .kernels import (_add_bias, apply_quantizer,  # noqa: F401  (conv_nd ... quantize_fast: fpq.emulate names)
                      batch_shape, conv_nd, dense_conv_matrix, pool_nd, quantize_fast)
from ..numerics.wide import WIDE_BITS as WIDE_EXACT_BITS, exact_bilinear
from ..formats.facts import exact_fixed
from ..typeplan import is_block, po2_exponents, sum_type, wrap
from .inputs import (NONFINITE_RULE, _is_tensor, check_input, check_input_tensor,  # noqa: F401
                     refuse_nonfinite)

from .steps import (_blas_controller, _float_scaled_reader, _int_po2, _int_quant_fn, _only_consumer, block_k,  # noqa: F401
                    odd_bias, value_accumulator_bits, with_frees)

FLOAT32_EXACT_BITS = 24
FLOAT64_EXACT_BITS = 53


def as_graph(q_or_onnx, example_input=None) -> Graph:
    """Graph IR of a converted torch model, a QONNX path, a ModelWrapper / ModelProto or a Graph.

    Args:
        q_or_onnx: the model or file.
        example_input: for a torch model, an input of its shape (else the recorded one).

    Returns:
        Graph: fpq's graph IR.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int8")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> from fpq.emulate import as_graph
        >>> [op.name for op in as_graph(q).ops]
        ['input_quant', 'linear_0', 'quant_0', 'relu_1', 'output']
    """
    from ..export import as_graph as _as_graph
    return _as_graph(q_or_onnx, example_input)


class Emulator:
    """A compiled executor of one Graph. ``emu(x)`` -> outputs; ``emu(x, return_trace=True)``.

    Args:
        graph: an fpq.ir Graph, a QONNX / ONNX model or path, or a converted fpq model (``as_graph``).
        device: None / "cpu" (numpy), or a torch device (the torch backend).
        example_input: an example input, to export a torch model.
        blas_threads: BLAS threads while running (None: as configured).
        backend: "numpy" or "torch" (None: from ``device``).

    Raises:
        ValueError: an unknown backend.
        UnsupportedGraphError: a block-scaled format on an op other than a linear / conv of groups 1.

    Example:
        >>> import numpy as np
        >>> from fpq.emulate import Emulator
        >>> from fpq.formats import parse_format
        >>> from fpq.ir import Graph, Op, Quantizer
        >>> from fpq.typeplan import TensorType
        >>> t = TensorType(parse_format("int8"), np.float32(0.5))
        >>> op = Op("q", "input_quant", ["x"], ["y"], quant=Quantizer(t, np.float32(0.5), "q", "Quant"),
        ...         types={"output": t}, out_shape=(1, 2))
        >>> Emulator(Graph([op], ["x"], ["y"], {"x": (1, 2)}))(np.array([[0.3, 100.0]], np.float32)).tolist()
        [[0.5, 63.5]]
    """

    def __init__(self, graph, device=None, example_input=None, blas_threads=1, backend=None):
        self.graph = as_graph(graph, example_input)
        self.device = device
        # the matmuls here are skinny (a few dozen columns): memory-bound, and OpenBLAS' threads
        # cost more than they gain (measured 1.2 ms single-threaded vs 8-16 ms with 2 threads on
        # a shared 2-core machine for 20000x64 @ 64x32). None leaves BLAS as configured.
        self.blas_threads = blas_threads
        self.chunk = 4096   # rows per pass (measured on the MLP: 4096 best among 1024..8192 and one pass)
        self.exact = {}      # op name -> whether the emulation of this op is provably exact
        self.acc_dtype = {}  # op name -> "float32" | "float64" | "wide" for linear / conv
        self.rounded_to_odd = set()  # linear / conv ops whose output is their exact sum rounded to odd
        # block-scaled linear ops (fpq.numerics.block_dot: exact sum rounded to odd at 53 bits) -> how
        # many values of the runs so far a plain float64 matmul would NOT have summed exactly
        self.block_inexact = {}
        if backend is None:
            backend = "numpy" if device is None or str(device) == "cpu" else "torch"
        if backend not in ("numpy", "torch"):
            raise ValueError(f"unknown backend {backend!r}; allowed: 'numpy', 'torch'")
        self.backend = backend
        # graph inputs read by a quantizer with a float scale: their division runs in float32
        self.float32_inputs = {name for name in self.graph.inputs if _float_scaled_reader(self.graph, name)}
        self._plan()
        self._program = None
        if backend == "torch":
            from .torch_backend import TorchProgram
            self._program = TorchProgram(self, device or "cpu")

    # -- planning: accumulator dtypes and exactness per op
    def _plan(self):
        # the one TypePlan's products and accumulators (fpq.ir.plan), not derived again here
        self.typeplan = typeplan_from_graph(self.graph)
        self._bias_f32 = {}
        self._wrap = {}   # op name -> its narrow wrapping accumulator type (accumulator_bits)
        odd_bias_candidates = {}  # float32 sums whose bias alone is too fine for float32
        for op in self.graph.ops:
            self.exact[op.name] = True
            if op.kind in WEIGHTED_KINDS:
                t_in, t_w = op.types.get("input"), op.types.get("weight")
                if is_block(t_in) or is_block(t_w):
                    if op.kind not in ("linear",) + CONV_KINDS or op.attrs.get("groups", 1) != 1:
                        raise UnsupportedGraphError(f"layer {op.name}: block-scaled formats on a {op.kind} are not "
                                                    "supported (linear layers and convolutions of groups 1 only)")
                    if op.bias is not None and "bias" not in op.types:
                        raise UnsupportedGraphError(f"layer {op.name}: quantize the bias of a block-scaled layer")
                    self.acc_dtype[op.name] = "block"
                    self.block_inexact[op.name] = 0
                    self._bias_f32[op.name] = False
                    continue
                if t_in is None or t_w is None or not (t_in.po2 and t_w.po2):
                    # a float scale: no fixed-point type from the formats, but the values are
                    # still dyadic; float64 sums them exactly when their exact sum (the plan's
                    # value accumulator) fits 53 bits
                    vacc = self.typeplan[op.name].attrs.get("value_accumulator")
                    bits = None if vacc is None else vacc.width
                    self.acc_dtype[op.name] = "float64"
                    self.exact[op.name] = bits is not None and bits <= FLOAT64_EXACT_BITS
                    continue
                lp = self.typeplan[op.name]
                prod, acc = lp.tensors.get("product"), lp.tensors.get("accumulator")
                if prod is None or acc is None:  # e.g. a sum wider than 128 bits: the plan's note says why
                    raise UnsupportedGraphError(f"layer {op.name}: no exact fixed-point accumulator ({lp.note}); "
                                                "the emulator refuses rather than round")
                if op.bias is not None and "bias" not in op.types:
                    raise UnsupportedGraphError(f"layer {op.name}: its float32 bias has no exact fixed-point "
                                                "form within 64 bits; quantize the bias")
                bits = lp.attrs.get("exact_accumulator", acc).width
                bits_nb = sum_type(prod, op.fan_in).width    # the sum before its bias
                if bits > WIDE_EXACT_BITS:
                    raise UnsupportedGraphError(
                        f"layer {op.name}: the exact accumulator needs {bits} bits, more than the "
                        f"{WIDE_EXACT_BITS} fpq sums exactly with two float64 limbs; the emulator refuses rather "
                        "than round (narrow the formats or quantize the bias)")
                if op.attrs.get("accumulator_bits") is not None:
                    if acc.width < bits:
                        if bits > FLOAT64_EXACT_BITS:
                            raise UnsupportedGraphError(
                                f"layer {op.name}: a {acc.width}-bit wrapping accumulator of a sum that needs {bits} "
                                f"bits; the emulator wraps exact float64 sums (up to {FLOAT64_EXACT_BITS} bits)")
                        self._wrap[op.name] = acc
                if bits > FLOAT64_EXACT_BITS:
                    # summed in pieces and rounded to odd (fpq.numerics.wide): every quantizer after it
                    # rounds exactly as on the true sum; what else reads it is not exact
                    self.acc_dtype[op.name] = "wide"
                    self.rounded_to_odd.add(op.name)
                    self._bias_f32[op.name] = False
                    continue
                if op.kind == "batchnorm":  # element-wise: float64 costs nothing here
                    self.acc_dtype[op.name] = "float64"
                    self._bias_f32[op.name] = False
                    continue
                self.acc_dtype[op.name] = "float32" if bits_nb <= FLOAT32_EXACT_BITS else "float64"
                self._bias_f32[op.name] = bits <= FLOAT32_EXACT_BITS
                if bits_nb <= FLOAT32_EXACT_BITS < bits and op.name not in self._wrap:
                    odd_bias_candidates[op.name] = bits_nb
            elif op.kind == "gather":   # table rows: float32 numbers, moved
                self.acc_dtype[op.name] = "float32"
            elif op.kind == "matmul":   # two activations: exact in float64, or wide and rounded to odd
                lp = self.typeplan[op.name]
                acc = lp.exact_sum()
                if acc is None:
                    raise UnsupportedGraphError(f"layer {op.name}: no exact accumulator for this matmul ({lp.note}); "
                                                "the emulator refuses rather than round")
                if acc.width > WIDE_EXACT_BITS:
                    raise UnsupportedGraphError(f"layer {op.name}: the exact accumulator needs {acc.width} bits, more "
                                                f"than the {WIDE_EXACT_BITS} fpq sums exactly; narrow the formats")
                self.acc_dtype[op.name] = "float64" if acc.width <= FLOAT64_EXACT_BITS else "wide"
                if acc.width > FLOAT64_EXACT_BITS:
                    self.rounded_to_odd.add(op.name)
            elif op.kind in OPS:
                if op.kind in ("add",):
                    t = op.types.get("output")
                    if t is None or t.format.width > FLOAT64_EXACT_BITS:
                        self.exact[op.name] = False
                typed = op.kind == "add_const" and op.types.get("output") is not None and \
                    op.types["output"].format.width <= FLOAT64_EXACT_BITS   # a quantized constant (reader)
                if op.kind in ("mul", "div", "add_const", "avgpool", "global_avgpool") and not typed:
                    self.exact[op.name] = False  # one float64 rounding, same as ONNX in double
            else:  # pragma: no cover - the reader only emits known kinds
                raise UnsupportedGraphError(f"op {op.name}: kind {op.kind} has no emulation")
        self._mark_rounded_to_odd_readers()
        self._weights = {}
        for op in self.graph.ops:
            if op.weight is not None:
                dt = np.float32 if self.acc_dtype[op.name] == "float32" else np.float64
                w = op.weight.astype(dt)
                if op.kind == "linear" and op.name not in self.block_inexact:   # block_linear takes (out, in)
                    w = np.ascontiguousarray(w.T)
                bdt = np.float32 if self._bias_f32.get(op.name) and dt == np.float32 else np.float64
                self._weights[op.name] = (w, None if op.bias is None else op.bias.astype(bdt))
        self._dense = {}         # (op name, input shape, dtype) -> dense conv matrix or None
        self._fast_weights = {}  # op name -> (w, bias) the fused schedule uses instead (see _odd_bias)
        for name, bits_nb in odd_bias_candidates.items():
            b = self._odd_bias(self.graph[name], bits_nb)
            if b is not None:
                self._fast_weights[name] = (self._weights[name][0], b)
        self._steps = self._compile()

    def _odd_bias(self, op, bits_nb):
        """A float32 bias b' that gives every quantizer reading ``op`` the value the exact bias gives,
        or None.

        The weighted sum A is a multiple of the product grid p (input lsb x weight lsb) and fits
        float32; a bias with finer bits makes A + b too wide for it. Write b = b_hi + r with b_hi
        on the grid p and 0 <= r < p, and use b' = b_hi + (p/2 if r else 0): A + b' is A + b
        "rounded to odd" on the grid p, i.e. equal to it on the grid and otherwise strictly
        inside the same open interval between two grid points. Any function of the sum that is
        constant between points of the grid p gives the same result on both: a quantizer whose
        rounding ties and saturation points are all on that grid (half its finest step is a
        multiple of p), seen through ReLU / max pool / reshapes (monotone or value-preserving).
        Anything else reading the sum (an add, a graph output, a float scale) keeps the exact
        float64 bias. The traced run (``return_trace``) always uses the exact bias."""
        t_in, t_w = op.types["input"], op.types["weight"]
        p_exp = -(t_in.carrier().frac_bits + t_w.carrier().frac_bits)   # p = 2**p_exp
        outputs = set(self.graph.outputs)
        todo = [op.outputs[0]]
        while todo:
            t = todo.pop()
            readers = self.graph.consumers(t)
            if t in outputs or not readers:
                return None
            for c in readers:
                if c.kind in ORDER_KEEPING:
                    todo.append(c.outputs[0])
                    continue
                q = c.quant if c.kind == "quant" else None
                exps = None if q is None or q.pre_scale is not None else po2_exponents(q.scale)
                if exps is None:
                    return None
                half_step_exp = -exact_fixed(q.format, int(exps.min())).frac_bits - 1
                if half_step_exp < p_exp:
                    return None
        odd = odd_bias(op.bias, p_exp)
        # A + b' lives on the grid p/2 and |A| < 2**bits_nb * p: float32 holds it when
        room = (2.0 ** bits_nb + float(np.max(np.abs(odd), initial=0.0)) * 2.0 ** -p_exp) * 2
        if room > 2.0 ** FLOAT32_EXACT_BITS:
            return None
        return odd.astype(np.float32)

    def _mark_rounded_to_odd_readers(self):
        """Ops reading a rounded-to-odd sum (directly or through ReLU / max pool / reshapes, which
        commute with it) are exact only if they are quantizers; anything else (add, mean, the graph
        output) sees the rounded value and is marked not exact."""
        odd = set()
        for op in self.graph.ops:
            if op.name in self.rounded_to_odd or op.name in self.block_inexact:
                odd.add(op.outputs[0])
            elif any(t in odd for t in op.inputs):
                if op.kind in ORDER_KEEPING:
                    odd.add(op.outputs[0])
                elif op.kind != "quant":
                    self.exact[op.name] = False
        for t in odd & set(self.graph.outputs):
            self.exact[self.graph.producer(t).name] = False

    # -- running
    def __call__(self, x, return_trace=False):
        if isinstance(x, dict):
            if self._program is not None:
                raise ValueError("the torch backend takes one input array, not a dict")
            x = {k: check_input(v, k in self.float32_inputs, who=f"input {k!r}") for k, v in x.items()}
        elif self._program is None or not _is_tensor(x):
            x = check_input(x, bool(self.float32_inputs), who="fpq.emulate")
        else:
            x = check_input_tensor(x, bool(self.float32_inputs), who="fpq.emulate")
        if self._program is not None:
            return self._program.run(x, return_trace)
        if self.blas_threads is None:
            return self._run_numpy(x, return_trace)
        with _blas_controller().limit(limits=self.blas_threads, user_api="blas"):
            return self._run_numpy(x, return_trace)

    def _run_numpy(self, x, return_trace):
        g = self.graph
        if isinstance(x, dict):
            feeds = dict(x)
        else:
            if len(g.inputs) != 1:
                raise ValueError(f"the graph has inputs {g.inputs}; pass a dict")
            feeds = {g.inputs[0]: x}
        env = {}
        for name, arr in feeds.items():
            want = g.input_shapes[name]
            if want is not None and tuple(arr.shape[1:]) != tuple(want[1:]):
                if tuple(arr.shape) == tuple(want[1:]):
                    arr = arr[None]
                else:
                    raise ValueError(f"input {name!r} has shape {arr.shape}; expected (N, {', '.join(map(str, want[1:]))})")
            env[name] = arr
        if not return_trace:
            n = len(next(iter(env.values())))
            if n > self.chunk:  # rows are independent: cache-sized chunks keep the elementwise passes in L2
                parts = [self._steps_on({k: v[i:i + self.chunk] for k, v in env.items()})
                         for i in range(0, n, self.chunk)]
                outs = [np.concatenate([p[j] for p in parts]) for j in range(len(g.outputs))]
            else:
                outs = self._steps_on(env)
            return outs[0] if len(outs) == 1 else outs
        trace = {}
        for op in g.ops:
            y = self._run(op, [env[t] for t in op.inputs])
            env[op.outputs[0]] = y
            trace[op.name] = y
        outs = [env[o] for o in g.outputs]
        out = outs[0] if len(outs) == 1 else outs
        return out, trace

    def _steps_on(self, env):
        for fn, ins, out, free in self._steps:
            env[out] = fn(*[env[t] for t in ins])
            for t in free:
                env.pop(t, None)
        return [env[o] for o in self.graph.outputs]

    def _schedule(self):
        """Steps (op, input tensors, output tensor, clip) with fusions that do not change a single
        value: a po2 integer quantizer gets clip = (lo, hi, in_place) -- in place when it is the only
        reader of a weighted op's temporary -- and a ReLU right after it becomes its lower clip bound
        (max(Q(x), 0) = clip(rint(x / s), max(lo, 0), hi) * s). Both backends compile this list."""
        outputs = set(self.graph.outputs)
        steps, skip = [], set()
        for op in self.graph.ops:
            if op.name in skip:
                continue
            out, clip = op.outputs[0], None
            if op.kind == "quant" and _int_po2(op.quant):
                relu = _only_consumer(self.graph, out, outputs, "relu")
                lo, hi = op.quant.format.int_range
                if relu is not None:
                    lo = max(lo, 0)
                    skip.add(relu.name)
                    out = relu.outputs[0]
                clip = (lo, hi, self._owned(op, outputs))
            steps.append((op, list(op.inputs), out, clip))
        return steps

    def _compile(self):
        """(fn, input tensors, output tensor, tensors to free after it) for the numpy path."""
        steps = []
        for op, ins, out, clip in self._schedule():
            if clip is not None:
                fn = _int_quant_fn(op.quant, *clip)
            elif op.kind == "output":
                fn = lambda x: x  # noqa: E731
            else:
                fn = lambda *xs, _op=op: self._run(_op, list(xs), fast=True)  # noqa: E731
            steps.append((fn, ins, out))
        return with_frees(steps, set(self.graph.outputs) | set(self.graph.inputs))

    def _owned(self, op, outputs) -> bool:
        """Whether op's input buffer is a temporary that only op reads (so it may be overwritten)."""
        src = op.inputs[0]
        prod = self.graph.producer(src)
        return (prod is not None and prod.kind in COMPUTING_KINDS
                and len(self.graph.consumers(src)) == 1 and src not in outputs)

    def block_sum(self, op, x, w, b):
        """A block-scaled linear / conv op: fpq.numerics.block_dot.block_linear of float64 x, w (out, in) and
        b (numpy or torch arrays, either backend), counting the values float64 alone could not sum.

        Args:
            op: the block-scaled linear / conv Op.
            x: its float64 input.
            w: its weight.
            b: its bias (or None).
        """
        from ..numerics.block_dot import block_linear
        if op.kind in CONV_KINDS:   # blocks of input channels per kernel tap (fpq.numerics.block_conv)
            from ..numerics.block_conv import block_conv
            y, fits = block_conv(x, w, b, op.attrs, block_k(op))
        else:
            y, fits = block_linear(x, w, b, block_k(op))
        self.block_inexact[op.name] += int((~fits).sum())
        return y

    def _weights_for(self, op, fast):
        """(w, b) of a linear / conv: the fused schedule's (a rounded-to-odd bias) when ``fast``."""
        return self._fast_weights.get(op.name, self._weights[op.name]) if fast else self._weights[op.name]

    def _wrapped(self, op, acc):
        """The sum wrapped into op's narrow accumulator, if it has one (fpq.typeplan.wrap, float64)."""
        return wrap(acc.astype(np.float64), self._wrap[op.name]) if op.name in self._wrap else acc

    def dense_conv(self, op, in_shape, w):
        """(matrix, output shape) of a small convolution unrolled into one dense matrix, or None
        (see dense_conv_matrix); built once per op, input shape and weight dtype.

        Args:
            op: the conv Op.
            in_shape: its input shape.
            w: its weight.
        """
        key = (op.name, tuple(in_shape), w.dtype)
        if key not in self._dense:
            self._dense[key] = dense_conv_matrix(w, op.attrs, tuple(in_shape))
        return self._dense[key]

    def _run(self, op: Op, xs, fast=False):
        """One op; ``fast`` (the fused schedule) may use a rounded-to-odd bias (see _odd_bias)."""
        k = op.kind
        x = xs[0]
        if k in ("quant", "input_quant"):
            return apply_quantizer(op, x)
        if op.name in self.block_inexact:
            return self.block_sum(op, x.astype(np.float64), *self._weights[op.name])
        if k == "linear":
            w, b = self._weights_for(op, fast)
            if op.name in self.rounded_to_odd:
                return exact_bilinear(np.matmul, x.astype(np.float64), w, b, op.fan_in, strict=True)[0]
            acc = x.astype(w.dtype, copy=False) @ w
            return self._wrapped(op, _add_bias(acc, b, 1))
        if k == "batchnorm":
            w, b = self._weights[op.name]
            shape = (1, -1) + (1,) * (x.ndim - 2)
            x = x.astype(np.float64)
            if op.name in self.rounded_to_odd:
                return exact_bilinear(lambda a, c: a * c.reshape(shape), x, w, b, 1, bias_shape=shape, strict=True)[0]
            y = x * w.reshape(shape)
            if b is not None:
                y += b.reshape(shape)
            return y
        if k in CONV_KINDS:
            w, b = self._weights_for(op, fast)
            if op.name in self.rounded_to_odd:
                return exact_bilinear(lambda a, c: conv_nd(a, c, op.attrs), x.astype(np.float64), w, b, op.fan_in,
                                      bias_shape=(-1,) + (1,) * (x.ndim - 2), strict=True)[0]
            x = x.astype(w.dtype, copy=False)
            t = self.dense_conv(op, x.shape[1:], w)
            y = conv_nd(x, w, op.attrs) if t is None else (x.reshape(len(x), -1) @ t[0]).reshape((len(x),) + t[1])
            return self._wrapped(op, _add_bias(y, b, 1 if x.ndim > 1 else 0, channel_axis=1))
        if k == "relu":
            return np.maximum(x, 0, dtype=x.dtype)
        if k == "clip":   # float32 bounds: exact in x's dtype (float32 or float64)
            lo, hi = op.attrs["min"], op.attrs["max"]
            return np.clip(x, -np.inf if lo is None else lo, np.inf if hi is None else hi).astype(x.dtype, copy=False)
        if k in ("softmax", "layernorm"):   # the exact integer pipelines (fpq.numerics.normalization)
            from ..numerics import normalization as N
            return (N.softmax if k == "softmax" else N.layernorm)(x, op.attrs["recipe"], f"{k} {op.name!r}")
        if k == "table":   # the op's exact table (values float32 numbers: exact in float32)
            from ..numerics.activations import lookup
            return lookup(op.attrs["x"], op.attrs["y"], x, f"table {op.name!r}").astype(np.float32)
        if k == "add":
            return x.astype(np.float64) + xs[1].astype(np.float64)
        if k == "gather":   # ids are integers 0 .. rows - 1 (their ufixed<b,b> quantizer, checked by the reader)
            return self._weights[op.name][0][x.astype(np.int64)]
        if k == "matmul":   # exact (plan above); 2**alpha_exp is a shift
            a, b = x.astype(np.float64), xs[1].astype(np.float64)
            y = exact_bilinear(np.matmul, a, b, None, op.attrs["fan_in"], strict=True)[0] \
                if op.name in self.rounded_to_odd else np.matmul(a, b)
            return np.ldexp(y, op.attrs["alpha_exp"]) if op.attrs["alpha_exp"] else y
        if k == "mul":
            return x.astype(np.float64) * op.attrs["value"].astype(np.float64)
        if k == "div":
            return x.astype(np.float64) / op.attrs["value"].astype(np.float64)
        if k == "add_const":
            return x.astype(np.float64) + op.attrs["value"].astype(np.float64)
        if k == "maxpool":
            return pool_nd(x, op.attrs, "max")
        if k == "avgpool":
            return pool_nd(x.astype(np.float64), op.attrs, "avg")
        if k == "global_avgpool":
            axes = tuple(range(2, x.ndim))
            n = int(np.prod([x.shape[a] for a in axes]))
            return x.astype(np.float64).sum(axis=axes, keepdims=True) / n
        if k == "concat":   # values moved: float32 and float64 inputs meet in float64, exactly
            return np.concatenate(xs, axis=op.attrs["axis"])
        if k == "upsample":
            for ax, s in enumerate(op.attrs["scales"]):
                x = np.repeat(x, s, axis=ax) if s != 1 else x
            return x
        if k == "flatten":
            ax = op.attrs["axis"]
            return x.reshape(int(np.prod(x.shape[:ax])), -1)
        if k == "reshape":
            return x.reshape(batch_shape(op.attrs["shape"], op.in_shapes[0], x.shape))
        if k == "transpose":
            return np.transpose(x, op.attrs["perm"])
        if k == "output":
            return x
        raise UnsupportedGraphError(f"op {op.name}: kind {k} has no emulation")  # pragma: no cover


def emulate(q, x, *, device=None, return_trace=False, example_input=None, backend=None):
    """Run a quantized network bit-exactly with fpq's emulator (numpy, or torch on a GPU).

    A torch model is exported in memory first, on the model's own device, and the compiled emulator
    is kept on the model: later calls reuse it while no parameter, buffer, format or module of the
    model changed (``fpq.emulate.cache``). The result equals the torch model's eval output, the
    QONNX executor's and the HLS C simulation's, bit for bit.

    Args:
        q (FpqModel | str | os.PathLike | ModelWrapper | onnx.ModelProto | Graph): a converted
            torch model, a QONNX file path / ModelWrapper / ModelProto, or an fpq graph IR.
        x (numpy.ndarray | torch.Tensor): inputs with a batch dimension, finite.
        device (str | torch.device | None): None runs numpy on the CPU, or the torch backend on
            ``x``'s GPU when ``x`` is a CUDA tensor; else the torch device to run on.
        return_trace (bool): also return every op's output.
        example_input (torch.Tensor | None): input for the export of a torch model (default
            ``x[:1]``).
        backend (str | None): "numpy" or "torch"; None chooses from ``device``.

    Returns:
        numpy.ndarray | torch.Tensor | tuple: the network output (float32 for quantized tensors,
        float64 for accumulators; a torch tensor on the torch backend); with ``return_trace``
        ``(output, {op name: output})``.

    Raises:
        ValueError: an unknown ``backend``, inputs of the wrong shape or with NaN / inf, or a graph
            op the emulator cannot run exactly (named in the message).

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="e2m1")
        >>> x = torch.randn(8, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> y, trace = fpq.emulate(q, x, return_trace=True)
        >>> y.dtype, bool((torch.from_numpy(y) == q(x)).all())
        (dtype('float32'), True)
        >>> list(trace)
        ['input_quant', 'linear_0', 'quant_0', 'relu_1', 'output']
    """
    if device is None and getattr(x, "is_cuda", False):
        device = x.device
    if example_input is None:
        example_input = x[:1] if hasattr(x, "__getitem__") else x

    def build():
        return Emulator(q, device=device, example_input=example_input, backend=backend)

    from ..userfiles import is_torch_module
    if is_torch_module(q):
        from .cache import cached_emulator
        key = (str(device), backend, tuple(np.shape(example_input)[1:]))
        emu, _ = cached_emulator(q, key, build)
    else:
        emu = build()
    return emu(x, return_trace=return_trace)


__all__ = ["emulate", "Emulator", "quantize_fast", "as_graph", "check_input", "refuse_nonfinite"]
