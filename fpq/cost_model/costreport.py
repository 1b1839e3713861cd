"""The cost model's result: per-layer rows and totals, utilization of the part, a printable table."""
from __future__ import annotations

from dataclasses import dataclass, field

from .devices import Device

COLUMNS = ("lut", "ff", "dsp", "bram18", "uram", "latency_cycles", "ii", "bops", "ebops")


@dataclass
class CostReport:
    """What ``fpq.estimate_cost`` estimated: per-layer rows and the network total on one device.

    ``print`` it for a table (with the utilization of the device and a warning when it does not
    fit); ``to_dict()`` for JSON.

    Args:
        device (Device): the FPGA priced against.
        settings (dict): the estimate's settings (reuse factor, strategy, io_type, clock_period, ...).
        layers (list[dict]): one row per layer: layer, op, lut, ff, dsp, bram18, uram,
            latency_cycles, ii, bops, ebops.
        total (dict): the same keys summed over the network (latency and II as the network's),
            plus latency_ns.
        datapath (str): how the multipliers were priced.
        notes (list[str]): assumptions worth knowing when reading the figures.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> cost = fpq.estimate_cost(q, part="xc7z020")
        >>> [row["layer"] for row in cost.layers], cost.over_budget()
        (['input_quant', 'linear_0', 'output'], [])
        >>> sorted(cost.utilization())
        ['bram18', 'dsp', 'ff', 'lut']
    """

    device: Device
    settings: dict
    layers: list = field(default_factory=list)
    total: dict = field(default_factory=dict)
    datapath: str = ""
    notes: list = field(default_factory=list)

    def to_dict(self) -> dict:
        """The report as plain JSON-serializable data.

        Returns:
            dict: device name, settings, datapath, layers, total and notes.
        """
        return {"device": self.device.name, "settings": dict(self.settings), "datapath": self.datapath,
                "layers": [dict(l) for l in self.layers], "total": dict(self.total), "notes": list(self.notes)}

    def utilization(self) -> dict:
        """Share of the device's LUT / FF / DSP / BRAM18 this design needs (1.0 = all of it).

        Returns:
            dict[str, float]: {"lut", "ff", "dsp", "bram18": share}.
        """
        t, d = self.total, self.device
        return {"lut": t["lut"] / d.lut, "ff": t["ff"] / d.ff, "dsp": t["dsp"] / max(d.dsp, 1),
                "bram18": t["bram18"] / max(d.bram18, 1)}

    def over_budget(self) -> list:
        """Resources the design needs more of than the device has.

        Returns:
            list[str]: keys of ``utilization()`` above 1.0.
        """
        return [k for k, v in self.utilization().items() if v > 1.0]

    def table(self) -> str:
        """The report as an aligned text table (``str(report)`` is the same).

        Returns:
            str: a row per layer, the total, the device's utilization and latency, the datapath.
        """
        cols = ("layer", "op") + COLUMNS
        rows = [cols]
        for l in self.layers + [dict(self.total, layer="total", op="")]:
            rows.append(tuple(_cell(l.get(c, "")) for c in cols))
        w = [max(len(r[i]) for r in rows) for i in range(len(cols))]
        out = ["  ".join(c.rjust(w[i]) if i > 1 else c.ljust(w[i]) for i, c in enumerate(r)) for r in rows]
        out.insert(1, "  ".join("-" * x for x in w))
        t = self.total
        d = self.device
        out.append(f"device {d.name}: LUT {100 * t['lut'] / d.lut:.2f}%  FF {100 * t['ff'] / d.ff:.2f}%  "
                   f"DSP {100 * t['dsp'] / d.dsp:.2f}%  BRAM18 {100 * t['bram18'] / max(d.bram18, 1):.2f}%  "
                   f"latency {t['latency_cycles']} cycles = {t['latency_ns']:.1f} ns at "
                   f"{self.settings['clock_period']} ns, II {t['ii']}")
        over = self.over_budget()
        if over:
            out.append(f"DOES NOT FIT {d.name}: needs more {', '.join(k.upper() for k in over)} than the device has "
                       "(raise the reuse factor, use the Resource strategy or narrower formats)")
        out.append(f"datapath: {self.datapath}")
        return "\n".join(out)

    __str__ = table


def _cell(v) -> str:
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 10 else f"{v:.3g}"
    return str(v)
