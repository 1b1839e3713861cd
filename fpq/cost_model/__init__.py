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
                  device=None, pipeline_every=None) -> CostReport:
    """Estimate the FPGA cost of a quantized network as hls4ml would build it.

    Per layer and in total: LUT, FF, DSP, BRAM18 / URAM, latency (cycles and ns), II, BOPs and
    EBOPs, from operator costs measured with yosys ``synth_xilinx`` and the hls4ml structure of each
    layer. An estimate, not a synthesis result: the documentation's cost-model page
    (docs/concepts/cost-model.md) says how far it can be trusted.

    Args:
        q (TypePlan | FpqModel | str | ModelWrapper): a TypePlan, a converted model, or a QONNX
            file / ModelWrapper (anything ``fpq.plan`` accepts).
        part (str | Device): the FPGA: a name in ``fpq.cost_model.DEVICES`` (e.g. "xcvu9p",
            "xc7z020") or a full part number.
        reuse_factor (int | dict): an int for every layer, or {layer name: int}.
        strategy (str | dict): "Latency" or "Resource" for every layer, or {layer name: strategy}
            (layers not named: Latency).
        io_type (str): "io_parallel" or "io_stream".
        clock_period (float): target clock period in ns.
        datapath (str): "carrier" prices the exact fixed-point carrier datapath the HLS writer
            emits; "code" prices minifloat weights as codes decoded at shared multipliers (differs
            only where multipliers are shared, reuse > 1).
        dsp_threshold (int | None): weight carrier width from which multipliers go to DSPs (9, as
            hls4ml / Vivado); None keeps every multiplier in fabric.
        example_input (torch.Tensor | None): the input shape of a converted model, as in ``fpq.plan``.
        device (str | None): deprecated old name of ``part`` (warns).
        pipeline_every (int | None): price the circuit ``fpq.to_rtl(..., pipeline_every=N)`` writes
            instead of hls4ml's: its FFs are the pipeline registers of that Verilog (every N adder
            levels and at each tree root, widths as emitted) and its latency is that Verilog's, in
            cycles (``fpq.cost_model.pipeline``, the rule both read). Needs reuse 1, Latency,
            io_parallel and a network of the ops ``fpq.to_rtl`` builds. None: hls4ml's stages.

    Returns:
        CostReport: ``layers`` (rows per layer), ``total``, ``utilization`` of the part, ``notes``;
        ``print`` it for a table, ``to_dict()`` for JSON.

    Raises:
        ValueError: an unknown part, io_type, strategy or datapath, a bad reuse factor, a
            ``pipeline_every`` with settings or ops ``fpq.to_rtl``'s circuit does not have, or a
            model with a Hadamard rotation (fpq.convert(hadamard=True)), named.
        TypeError: ``device=`` given a torch device ("cpu", "cuda", ...) instead of an FPGA part.

    Example:
        >>> import torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> cost = fpq.estimate_cost(q, part="xc7z020", reuse_factor=1)
        >>> cost.total["dsp"], cost.total["latency_cycles"], cost.total["lut"] > 0
        (0, 3, True)
        >>> fpq.estimate_cost(q, pipeline_every=1).total["latency_cycles"] == fpq.to_rtl(q, pipeline_every=1).latency
        True
    """
    from ..export import plan
    from ..ir.plan import rotation_refusal
    from ..typeplan import TypePlan
    from .estimate import estimate

    part = _part_from_device(part, device)
    tp = q if isinstance(q, TypePlan) else plan(q, example_input)
    why = rotation_refusal(tp, "fpq.estimate_cost", "price")
    if why:
        raise ValueError(why)
    return estimate(tp, device=part, reuse_factor=reuse_factor, strategy=strategy, io_type=io_type,
                    clock_period=clock_period, datapath=datapath, dsp_threshold=dsp_threshold,
                    pipeline_every=pipeline_every)


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
