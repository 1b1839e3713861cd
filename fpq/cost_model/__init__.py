"""FPGA cost model: measured operator costs (yosys synth_xilinx) and per-layer estimates.

``estimate_cost(q, part=..., reuse_factor=..., strategy=..., io_type=..., clock_period=...)``
prices a TypePlan (or anything ``fpq.plan`` accepts). Submodules: ``rtl`` (Verilog generators),
``sim`` (CXXRTL simulation against fpq's numerics), ``synth`` (synthesis and the measured
table), ``ops`` (operator lookup / fit), ``devices``, ``estimate`` (the hls4ml model).
"""
from __future__ import annotations

import warnings

from .devices import DEVICES, Device, get_device
from .costreport import CostReport


def estimate_cost(q, part="xcvu9p", reuse_factor=1, strategy="Latency", io_type="io_parallel",
                  clock_period=5, datapath="carrier", dsp_threshold=9, *, example_input=None,
                  device=None) -> CostReport:
    """Per-layer and total LUT, FF, DSP, BRAM18/URAM, latency (cycles, ns), II, BOPs and EBOPs.

    ``q``: a TypePlan, a converted model, or a QONNX file / ModelWrapper. ``part``: the FPGA (one
    of ``DEVICES`` or a full part number). ``reuse_factor``: an int for every layer, or {layer
    name: int}. ``strategy``: "Latency" / "Resource" for every layer, or {layer name: strategy}
    (hls4ml's per-layer Strategy; layers it does not name: Latency). ``datapath``: "carrier" prices the exact fixed-point carrier datapath the HLS
    writer emits; "code" prices minifloat weights as codes decoded at the shared multipliers (only
    differs where multipliers are shared, reuse > 1). ``dsp_threshold``: weight carrier width from
    which multipliers go to DSPs (hls4ml / Vivado: 9); shared multipliers (reuse > 1, two
    variable operands) of int8 x int8 and wider go to DSPs too (``estimate.SHARED_DSP_BITS``);
    None keeps every multiplier in fabric.
    ``example_input``: the input shape of a converted model, as in ``fpq.plan``. ``device=``: the
    old name of ``part`` (deprecated: elsewhere in fpq ``device`` is a torch device).
    """
    from ..export import plan
    from ..typeplan import TypePlan
    from .estimate import estimate

    part = _part_from_device(part, device)
    tp = q if isinstance(q, TypePlan) else plan(q, example_input)
    return estimate(tp, device=part, reuse_factor=reuse_factor, strategy=strategy, io_type=io_type,
                    clock_period=clock_period, datapath=datapath, dsp_threshold=dsp_threshold)


TORCH_DEVICES = ("cpu", "cuda", "mps", "xpu", "meta")


def _part_from_device(part, device):
    """``part``, or the FPGA part given by the deprecated ``device=`` keyword."""
    if device is None:
        return part
    if str(device).split(":")[0] in TORCH_DEVICES:
        raise TypeError(f"estimate_cost prices an FPGA: give its part= (e.g. 'xcvu9p'), not the torch device "
                        f"{device!r}")
    warnings.warn("estimate_cost(device=...) is now part=...; device= will be removed in the next release",
                  DeprecationWarning, stacklevel=3)
    return device


__all__ = ["estimate_cost", "CostReport", "Device", "DEVICES", "get_device"]
