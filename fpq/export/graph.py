"""The names this module held before issue 16 split it: the IR is ``fpq.ir``, the TypePlan built
from it ``fpq.ir.plan``, the QONNX quantizer codec ``fpq.export.qonnx_codec`` and the reader
``fpq.export.reader``. Import from those; this module only re-exports them."""
from __future__ import annotations

from ..ir import (KINDS, MAC_KINDS, TYPE_PRESERVING, Graph, Op, Quantizer,  # noqa: F401
                  UnsupportedGraphError)
from ..ir.plan import REQUANT_FUSING, typeplan_from_graph  # noqa: F401
from .qonnx_codec import (FPQ_FORMAT_ATTR, FPQ_ROLE_ATTR, HALF_STEP_ROLE, QONNX_DOMAINS,  # noqa: F401
                          QUANT_OPS, TWO_NODE_ROUNDING, half_step_partner, has_two_node_form, is_half_step,
                          load_model, quantizer_of, two_node_settings)
from .reader import CONST_OPS, SIMPLE_KINDS, SUPPORTED_OPS, read_graph, typeplan_from_qonnx  # noqa: F401

__all__ = ["Graph", "Op", "Quantizer", "UnsupportedGraphError", "read_graph", "typeplan_from_qonnx",
           "typeplan_from_graph", "load_model", "quantizer_of", "KINDS", "SUPPORTED_OPS"]
