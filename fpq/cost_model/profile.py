"""Deprecated location of the GPU / CPU profiler: it measures torch, not FPGA hardware, so it
lives in ``fpq.profiling`` now (``fpq.profile_torch`` is unchanged). This module re-exports it for
one release."""
from __future__ import annotations

import warnings

from ..profiling import ProfileResult, ProfileRow, device_name, profile_torch  # noqa: F401

warnings.warn("fpq.cost_model.profile moved to fpq.profiling; this alias will be removed in the next release",
              DeprecationWarning, stacklevel=2)

__all__ = ["profile_torch", "ProfileResult", "ProfileRow", "device_name"]
