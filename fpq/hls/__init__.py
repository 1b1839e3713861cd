"""fpq's HLS path: exact hls4ml projects for every fpq format (``fpq.to_hls``).

hls4ml is imported on first use of ``to_hls`` (it is slow to import).
"""
from __future__ import annotations

from .builder import HLSUnsupportedError


def to_hls(q_or_onnx, outdir, **kwargs):
    from .project import to_hls as _to_hls

    return _to_hls(q_or_onnx, outdir, **kwargs)


to_hls.__doc__ = """Write an exact hls4ml project of a quantized model and compile it for C simulation.

See ``fpq.hls.project.to_hls`` for the arguments: (q_or_onnx, outdir, *, backend="Vitis"|"Vivado",
io_type="io_parallel"|"io_stream", part="xcvu9p-flga2104-2-e", clock_period=5, reuse_factor=1,
strategy="Latency"|"Resource", example_input=None) -> HLSProject.
"""

__all__ = ["to_hls", "HLSUnsupportedError"]
