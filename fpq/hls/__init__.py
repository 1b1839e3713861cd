"""fpq's HLS path: exact hls4ml projects for every fpq format (``fpq.to_hls``).

hls4ml is imported on first use of ``to_hls`` (it is slow to import).
"""
from __future__ import annotations

from .builder import HLSUnsupportedError
from .project import HLSProject, load_project, to_hls


__all__ = ["to_hls", "load_project", "HLSProject", "HLSUnsupportedError"]
