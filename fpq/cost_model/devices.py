"""FPGA device data: resources and DSP multiplier widths (Xilinx/AMD data sheets).

Delays are a coarse timing model for the latency estimate (yosys gives no timing): the delay
of one LUT level plus local routing, and of one 4-bit carry segment, per family and speed grade
-2. They are assumptions, not measurements; latency in cycles is reported with that caveat.
"""
from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Device:
    """One FPGA die: its resources, DSP multiplier widths and the coarse delays of the latency model.

    Args:
        name: the die (``xcvu9p``).
        family: "7series", "ultrascale+" or "versal".
        lut: LUTs.
        ff: flip-flops.
        dsp: DSP slices.
        bram18: 18 Kb block RAMs (a 36 Kb block counts as two).
        uram: 288 Kb UltraRAMs.
        dsp_cell: the DSP primitive (DSP48E1, DSP48E2, DSP58).
        dsp_a: the signed width of one multiplier port.
        dsp_b: the signed width of the other port.
        lut_delay_ns: one LUT level with local routing (an assumption, not a measurement).
        carry4_delay_ns: one 4-bit carry segment.
        synth_family: yosys ``synth_xilinx -family``.
        part: a full part number of the die for the vendor tools.

    Example:
        >>> from fpq.cost_model import get_device
        >>> d = get_device("xcvu9p")
        >>> d.family, d.dsp_cell
        ('ultrascale+', 'DSP48E2')
    """
    name: str
    family: str           # 7series, ultrascale+, versal
    lut: int
    ff: int
    dsp: int
    bram18: int           # 18 Kb block RAMs (a 36 Kb block counts as two)
    uram: int             # 288 Kb UltraRAMs
    dsp_cell: str
    dsp_a: int            # signed multiplier port widths of one DSP slice
    dsp_b: int
    lut_delay_ns: float   # one LUT level with local routing
    carry4_delay_ns: float
    synth_family: str     # yosys synth_xilinx -family
    part: str = ""        # a full part number of the die (package, speed grade) for the vendor tools

    def describe(self) -> str:
        """One line naming the device and its LUT, FF, DSP, BRAM18 and URAM counts.

        Returns:
            str: e.g. ``xc7z020 (7series): 53200 LUT, 106400 FF, ...``.
        """
        return (f"{self.name} ({self.family}): {self.lut} LUT, {self.ff} FF, {self.dsp} {self.dsp_cell} "
                f"({self.dsp_a}x{self.dsp_b}), {self.bram18} BRAM18, {self.uram} URAM")


DEVICES = {d.name: d for d in (
    # 7-series
    Device("xc7z020", "7series", 53200, 106400, 220, 280, 0, "DSP48E1", 25, 18, 0.75, 0.25, "xc7",
           "xc7z020clg400-1"),                 # Pynq-Z2
    Device("xc7a100t", "7series", 63400, 126800, 240, 270, 0, "DSP48E1", 25, 18, 0.75, 0.25, "xc7",
           "xc7a100tcsg324-1"),
    # UltraScale+ (xczu3eg: DS891, 70,560 LUT, 141,120 FF, 360 DSP, 216 BRAM36; the Ultra96)
    Device("xczu3eg", "ultrascale+", 70560, 141120, 360, 432, 0, "DSP48E2", 27, 18, 0.5, 0.15, "xcup",
           "xczu3eg-sbva484-1-e"),
    Device("xczu9eg", "ultrascale+", 274080, 548160, 2520, 1824, 0, "DSP48E2", 27, 18, 0.5, 0.15, "xcup",
           "xczu9eg-ffvb1156-2-e"),
    Device("xcvu9p", "ultrascale+", 1182240, 2364480, 6840, 4320, 960, "DSP48E2", 27, 18, 0.5, 0.15, "xcup",
           "xcvu9p-flga2104-2-e"),
    Device("xcu250", "ultrascale+", 1728000, 3456000, 12288, 5376, 1280, "DSP48E2", 27, 18, 0.5, 0.15, "xcup",
           "xcu250-figd2104-2L-e"),
    # Versal
    Device("xcvc1902", "versal", 899840, 1799680, 1968, 1934, 463, "DSP58", 27, 24, 0.45, 0.13, "xcup",
           "xcvc1902-vsva2197-2MP-e-S"),
)}


def get_device(name) -> Device:
    """A Device by name; full part numbers (``xcvu9p-flga2104-2-e``) resolve to their die.

    Args:
        name: a die name (``xcvu9p``) or a full part number.

    Returns:
        Device: its resources and family.

    Raises:
        ValueError: an unknown part (the message lists the known ones).

    Example:
        >>> from fpq.cost_model import get_device
        >>> get_device("xc7z020").describe()
        'xc7z020 (7series): 53200 LUT, 106400 FF, 220 DSP48E1 (25x18), 280 BRAM18, 0 URAM'
    """
    if isinstance(name, Device):
        return name
    key = str(name).lower().strip()
    if key in DEVICES:
        return DEVICES[key]
    for dev in sorted(DEVICES, key=len, reverse=True):
        if key.startswith(dev + "-") or key.startswith(dev):
            return DEVICES[dev]
    raise ValueError(f"unknown device {name!r}; known devices: {', '.join(DEVICES)} "
                     "(full part numbers such as xcvu9p-flga2104-2-e are accepted)")


def add_delay_ns(dev: Device, bits: float) -> float:
    """Delay of one ``bits``-bit adder: a LUT level and its carry chain (the coarse timing model above)."""
    return dev.lut_delay_ns + math.ceil(bits / 4) * dev.carry4_delay_ns


def dsp_tiles(a_bits: int, b_bits: int, device: Device, a_signed=True, b_signed=True) -> int:
    """DSP slices one a x b multiplier needs: the operands are cut into pieces that fit the
    slice's signed ports (an unsigned operand loses one bit of port width)."""
    a_eff = a_bits + (0 if a_signed else 1)
    b_eff = b_bits + (0 if b_signed else 1)

    # a wide operand may be split on either port; split pieces lose their sign bit (port - 1)
    best = None
    for pa, pb in ((device.dsp_a, device.dsp_b), (device.dsp_b, device.dsp_a)):
        ta = 1 if a_eff <= pa else -(-(a_eff - 1) // (pa - 1))
        tb = 1 if b_eff <= pb else -(-(b_eff - 1) // (pb - 1))
        best = ta * tb if best is None else min(best, ta * tb)
    return best
