"""Token embeddings: ``nn.Embedding`` as a lookup in a quantized table (``FpqEmbedding``).

The network input is the token ids, given as a float tensor of integers (fpq's one float input), and
read through an input quantizer ``ufixed<b,b>`` (integers 0 .. 2**b - 1 at scale 1, saturating): the
identity on every id of a vocabulary of V <= 2**b tokens. fpq.convert asks for that input format by
name. The table (V, d) is quantized with the weights format (one power-of-two scale from max |w|,
refreshed by fpq.calibrate) and padded with zero rows to 2**b, so that every value the input
quantizer can produce looks up a row on every path (torch, emulator, qonnx, hardware). There is no
arithmetic: the output values are the quantized table's. Exports as ``Quant(table) -> Gather`` with
the ids cast to int64, which the reader reads as one ``gather`` op (``fpq.export.reader``).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..formats import Fixed, parse_format
from .layers import FpqAct, _value


def ids_format(vocabulary: int) -> str:
    """The input format that reads token ids of a vocabulary of ``vocabulary`` tokens: ufixed<b,b>."""
    b = max(1, (int(vocabulary) - 1).bit_length())
    return str(Fixed(b, b, signed=False))


def check_ids_format(fmt: str, vocabulary: int, who: str) -> int:
    """The bits b of an inputs format ufixed<b,b> (integers at scale 1) that covers the vocabulary, else
    ValueError naming ``who`` and the format to use."""
    f = parse_format(fmt)
    ok = isinstance(f, Fixed) and not f.signed and f.int_bits == f.width and 2 ** f.width >= vocabulary
    if not ok:
        raise ValueError(f"fpq.convert: {who} (nn.Embedding of {vocabulary} tokens) reads token ids, but the network "
                         f"input is quantized as {fmt}; convert with inputs='{ids_format(vocabulary)}' (the integers "
                         f"0 .. {2 ** max(1, (vocabulary - 1).bit_length()) - 1}, scale 1) and pass the ids as a float "
                         "tensor")
    return f.width


class FpqEmbedding(nn.Module):
    """y = Q_w(table)[ids] with the table padded to 2**bits rows (module docstring)."""

    fpq_op = "gather"

    def __init__(self, emb: nn.Embedding, bits: int, weights_fmt, scale_kind="po2"):
        super().__init__()
        from .calibration_stats import choose_scale
        if emb.max_norm is not None:
            raise ValueError("fpq.convert: nn.Embedding with max_norm renormalizes rows at lookup time: not supported")
        v, d = emb.weight.shape
        table = torch.zeros(2 ** bits, d, dtype=torch.float32)
        table[:v] = emb.weight.detach().to(torch.float32)
        self.vocabulary, self.weight = v, nn.Parameter(table)
        self.weight_quant = FpqAct(weights_fmt, scale_kind)
        tq = self.weight_quant.fpq_output
        if tq is not None and tq.scale_kind != "none":
            with torch.no_grad():
                tq.set_scale(choose_scale(tq, table[:v].abs().reshape(-1), "max"))

    def extra_repr(self):
        return f"vocabulary={self.vocabulary}, rows={self.weight.shape[0]}, d={self.weight.shape[1]}"

    @property
    def fpq_output(self):   # the values it outputs are the quantized table's
        return self.weight_quant.fpq_output

    def forward(self, ids):
        return F.embedding(_value(ids).to(torch.int64), _value(self.weight_quant(self.weight)))
