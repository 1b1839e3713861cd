"""Hadamard rotation for block-scaled Linear layers (``fpq.convert(..., hadamard=True)``), as the
FP4-training recipe uses it: a block-diagonal Hadamard of size k (the activations' block size) on
the reduction axis spreads an outlier over its block before the block quantizer sees it.

With H the k x k Sylvester Hadamard matrix (entries +-1, H H^T = k I) and R = blockdiag(H, ...):
  y = x W^T = (x R) (W R / k)^T.
The weight side is folded at conversion (the float weight becomes W R / k, and QAT trains it
there); the activation side is applied explicitly right before the layer: ``FpqHadamard`` (x R,
integer +-1 sums) then the activations' block quantizer again. Exact: the layer's input is
block-quantized with the same k along the same axis (every value of one rotated block is a
multiple of that block's element grid), so x R is a sum of k such values, exact in float64 (the
eval forward and the QONNX MatMul under fpq's double executor). Requires k a power of two
(Sylvester) dividing in_features. Limitation: fpq quantizes activations where they are produced,
so the input reaches the rotation already block-quantized once (the recipe keeps it in high
precision until the GEMM); the rotation still lowers outlier error (tests/test_block_hadamard.py:
-18% mean squared error of the first layer's sum with one outlier channel, mxfp4).

Through the path: fpq.export_qonnx writes the rotation as a MatMul by its +-1 constant; fpq's reader
takes it back as a ``linear`` op marked ``attrs["hadamard"] = k`` (its weight exact in two bits), so
fpq.emulate and fpq.verify run the rotated model exactly (torch == emulator == qonnx). fpq.to_hls
and fpq.estimate_cost refuse it with one error naming the rotation (fpq.ir.plan.rotation_refusal):
no HLS layer rotates block words yet (the rotated sum would have to be re-quantized in hardware).
"""
from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import nn

from ..formats import BlockFormat, parse_format


def block_hadamard(n: int, k: int) -> np.ndarray:
    """blockdiag(H_k, ..., H_k) of size n x n (+-1 and 0, float64); k a power of two dividing n."""
    if k < 1 or k & (k - 1):
        raise ValueError(f"a Hadamard rotation needs a power-of-two size, got {k}")
    if n % k:
        raise ValueError(f"a Hadamard rotation of size {k} needs an axis length divisible by it, got {n}")
    return np.kron(np.eye(n // k), scipy.linalg.hadamard(k)).astype(np.float64)


class FpqHadamard(nn.Module):
    """y = x R on the last axis (R = block_hadamard(n, k)); float64 in eval mode (exact: see the
    module docstring), the input's dtype in training."""

    def __init__(self, n: int, k: int):
        super().__init__()
        self.k = int(k)
        self.register_buffer("rotation", torch.tensor(block_hadamard(n, k), dtype=torch.float32))  # +-1: exact

    def forward(self, x):
        if self.training:
            return x @ self.rotation.to(x.dtype)
        return x.to(torch.float64) @ self.rotation.to(torch.float64)

    def extra_repr(self) -> str:
        return f"n={self.rotation.shape[0]}, k={self.k}"


def add_hadamard(gm, policy, scale: str) -> None:
    """Fold the rotation into every Linear's weight and insert FpqHadamard + the activations' block
    quantizer before it (``fpq.convert(hadamard=True)``); refuses a layer it cannot rotate exactly."""
    from .layers import FpqAct, FpqLinear

    modules = dict(gm.named_modules())
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target), nn.Module):
            continue
        m = modules[node.target]
        if not isinstance(m, FpqLinear):
            if type(m).__name__ in ("FpqConv1d", "FpqConv2d"):
                raise ValueError(f"fpq.convert(hadamard=True): layer {node.target!r} is a convolution; the "
                                 "Hadamard rotation is built for Linear layers")
            continue
        act = parse_format(policy.layers[node.target]["activations"])
        src = node.args[0]
        in_fmt = _input_format(gm, modules, src)
        if not isinstance(act, BlockFormat) or in_fmt != act:
            raise ValueError(f"fpq.convert(hadamard=True): layer {node.target!r}: the rotation is exact when the "
                             f"layer's input is block-quantized with the rotation's block size; its input format "
                             f"is {in_fmt} and its activation format {act} (give both one block format, e.g. mxfp4)")
        n, k = m.in_features, act.k
        if n % k or k & (k - 1):
            raise ValueError(f"fpq.convert(hadamard=True): layer {node.target!r}: in_features {n} and block size "
                             f"{k}: the rotation needs a power-of-two block size dividing in_features")
        with torch.no_grad():
            r = torch.tensor(block_hadamard(n, k), dtype=torch.float64)
            m.weight.copy_((m.weight.to(torch.float64) @ r / k).to(m.weight.dtype))
        base = node.target.replace(".", "_")
        rot, quant = f"{base}_hadamard", f"{base}_hadamard_quant"
        gm.add_submodule(rot, FpqHadamard(n, k))
        gm.add_submodule(quant, FpqAct(str(act), scale))
        with gm.graph.inserting_before(node):
            a = gm.graph.call_module(rot, (src,))
            b = gm.graph.call_module(quant, (a,))
        node.replace_input_with(src, b)
        policy.layers[quant] = {"activations": str(act), "hadamard": node.target}
    gm.recompile()


def _input_format(gm, modules, node):
    """The format of the quantizer that last produced ``node`` (through ReLU / max pool / flatten),
    None when unknown."""
    from .layers import FpqAct

    while node is not None and getattr(node, "op", None) == "call_module":
        m = modules[node.target]
        tq = getattr(m, "fpq_output", None)
        if tq is not None:
            return tq.fmt
        if not isinstance(m, (nn.ReLU, nn.MaxPool1d, nn.MaxPool2d, nn.Flatten)) or isinstance(m, FpqAct):
            return None
        node = node.args[0] if node.args else None
    return None
