"""Synthesize ``to_rtl``'s whole netlist with the operator tables' yosys flow
(``fpq.cost_model.synth.FLOWS``: ``synth_xilinx -family xcup -flatten -noiopad [-nodsp]``) and
read LUT / FF / CARRY / DSP / BRAM back as the tables count them (``synth.row_from_cells``)."""
from __future__ import annotations

import json
import tempfile
from pathlib import Path

from ..cost_model.synth import FLOWS, row_from_cells
from ..cost_model.yosys import run_script, yosys_version


def synthesize(net, flow: str = "lut", workdir=None, timeout: float = 3600) -> dict:
    """One yosys run over ``net.verilog`` with ``net.top`` as top.

    The row holds the cell counts (lut, lut_logic, srl, muxf, carry, ff, dsp, bram) plus the flags
    and the yosys version.

    Args:
        net: an RTLNetwork (or operator) with ``verilog`` and ``top``.
        flow: "lut" (fabric only) or the DSP flow.
        workdir: where yosys runs (None: a temporary folder).
        timeout: seconds before yosys is stopped.

    Returns:
        dict: the cell counts and flags.

    Raises:
        ValueError: an unknown flow.

    Example:
        >>> import torch, fpq
        >>> from fpq.rtl import synthesize
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> net = fpq.to_rtl(q, example_input=torch.randn(1, 4), pipeline_every=0)
        >>> synthesize(net, flow="lut")["lut"] > 0   # runs yosys  # doctest: +SKIP
        True
    """
    if flow not in FLOWS:
        raise ValueError(f"unknown flow {flow!r}; allowed: {', '.join(FLOWS)}")
    with tempfile.TemporaryDirectory(prefix="fpq_rtl_synth_") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        (wd / "net.v").write_text(net.verilog)
        run_script(f"read_verilog -sv net.v\nsynth_xilinx {FLOWS[flow]} -top {net.top}\n"
                   "tee -q -o stat.json stat -json\n", wd, timeout=timeout)
        stat = json.loads((wd / "stat.json").read_text())
    mods = stat["modules"]
    key = "\\" + net.top if "\\" + net.top in mods else net.top
    row = row_from_cells(net.operator(), flow, mods[key].get("num_cells_by_type", {}))
    row.update(flags=f"synth_xilinx {FLOWS[flow]}", yosys=yosys_version(), latency=net.latency)
    return row
