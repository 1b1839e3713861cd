"""Brevitas quantizers generated from fpq Formats, and the quantized layers built on them."""
from .batchnorm import FpqBatchNorm
from .layers import (FpqAct, FpqAdd, FpqAvgPool, FpqClamp, FpqConv1d, FpqConv2d, FpqInput, FpqLinear)
from .quantizers import FpqFloatTensorQuant, FpqTensorQuant, make_quant, tensor_quant_of

__all__ = ["FpqAct", "FpqAdd", "FpqAvgPool", "FpqBatchNorm", "FpqClamp", "FpqConv1d", "FpqConv2d", "FpqInput",
           "FpqLinear", "FpqTensorQuant", "FpqFloatTensorQuant", "make_quant", "tensor_quant_of"]
