"""Simulate ``to_rtl``'s Verilog with yosys' CXXRTL (``fpq.cost_model.sim``: one yosys run and one
g++ compile per network) and compare it with ``fpq.emulate`` bit for bit."""
from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

from ..cost_model import sim


class Simulator:
    """The compiled CXXRTL model of one or several ``RTLNetwork``s (one yosys run and one g++ compile).

    Call it on float32 inputs (n, *shape); ``index`` picks one of several networks.

    Args:
        nets: an RTLNetwork or a list of them (distinct ``top`` names).
        workdir: where to build (None: a temporary folder).

    Raises:
        ValueError: networks with the same top name.

    Example:
        >>> import torch, fpq
        >>> from fpq.rtl import Simulator
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> net = fpq.to_rtl(q, example_input=torch.randn(1, 4), pipeline_every=0)
        >>> Simulator([net, net])   # checked before anything is compiled
        Traceback (most recent call last):
        ...
        ValueError: networks simulated together need distinct top names (to_rtl(..., top=...))
        >>> Simulator(net)(torch.randn(2, 4).numpy()).shape   # doctest: +SKIP
        (2, 3)
    """

    def __init__(self, nets, workdir=None):
        self.nets = list(nets) if isinstance(nets, (list, tuple)) else [nets]
        self._tmp = None
        if workdir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="fpq_rtl_sim_")
            workdir = self._tmp.name
        self.ops = [n.operator() for n in self.nets]
        if len({op.name for op in self.ops}) != len(self.ops):
            raise ValueError("networks simulated together need distinct top names (to_rtl(..., top=...))")
        self.exe = sim.build(self.ops, Path(workdir), fast_compile=True)

    def input_codes(self, x, index: int = 0) -> dict:
        """Port -> codes for float32 inputs: float32 bit patterns, or the input quantizer's codes
        (computed with the graph's own quantizer, as the host does for the HLS project's port).

        Args:
            x: float32 inputs (n, *shape).
            index: which of the simulated networks.

        Returns:
            dict: port name -> int64 codes, one per sample.

        Raises:
            ValueError: ``x`` has another number of inputs per sample than the network.
        """
        net = self.nets[index]
        x = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
        if x.shape[1] != len(net.inputs):
            raise ValueError(f"the network has {len(net.inputs)} inputs per sample, got {x.shape[1]}")
        if net.input_kind == "float32":
            codes = x.view(np.uint32).astype(np.int64)
        else:
            iq = next(op for op in net.graph.ops if op.kind == "input_quant")
            v = np.asarray(iq.quant(x), dtype=np.float64)
            codes = np.ldexp(v, net.input_type.frac_bits)
            if not np.all(codes == np.round(codes)):
                raise AssertionError("input quantizer output off its carrier's grid")
            codes = codes.astype(np.int64)
        return {p: codes[:, i] for i, (p, _) in enumerate(net.inputs)}

    def __call__(self, x, index: int = 0) -> np.ndarray:
        """Output values (float64, (n, n_out)) of the simulated circuit."""
        net = self.nets[index]
        vec = self.input_codes(x, index)
        n = len(next(iter(vec.values())))
        lat = net.latency
        if lat > 1:   # the pipeline needs lat - 1 more samples to flush (one sample per clock)
            vec = {p: np.concatenate([v, np.repeat(v[-1:], lat - 1)]) for p, v in vec.items()}
        got = sim.run(self.exe, self.ops[index], vec, index)
        off = max(lat - 1, 0)
        out = np.stack([np.array([int(c) for c in got[p][off:off + n]], dtype=np.float64)
                        for p, _, _ in net.outputs], -1)
        return np.ldexp(out, -net.output_type.frac_bits)


def simulate(net, x, workdir=None) -> np.ndarray:
    """Output values of ``net``'s Verilog on float32 inputs ``x`` (one build).

    Args:
        net: an RTLNetwork from ``fpq.to_rtl``.
        x: float32 inputs.
        workdir: where to build (None: a temporary folder).

    Returns:
        np.ndarray: the outputs.

    Example:
        >>> import torch, fpq
        >>> from fpq.rtl import simulate
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> net = fpq.to_rtl(q, example_input=torch.randn(1, 4), pipeline_every=0)
        >>> simulate(net, torch.randn(2, 4).numpy()).shape   # compiles with yosys and g++  # doctest: +SKIP
        (2, 3)
    """
    return Simulator(net, workdir)(x)


def check(net, x, workdir=None, simulator: Simulator | None = None, index: int = 0) -> dict:
    """Simulate ``net`` on ``x`` and compare with ``fpq.emulate`` of the same graph (atol=0):
    {"n": samples, "mismatches": differing output values, "first": (sample, output) or None,
    "got" / "want": the values}. ``simulator``/``index``: an already compiled model holding ``net``.

    Args:
        net: an RTLNetwork from ``fpq.to_rtl``.
        x: float32 inputs.
        workdir: where to build (None: a temporary folder).
        simulator: an already compiled simulator holding ``net``.
        index: ``net``'s index in that simulator.

    Returns:
        dict: the comparison.

    Example:
        >>> import torch, fpq
        >>> from fpq.rtl import check
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(16, 4)], progress=False)
        >>> net = fpq.to_rtl(q, example_input=torch.randn(1, 4), pipeline_every=0)
        >>> check(net, torch.randn(8, 4).numpy())["mismatches"]   # compiles with yosys and g++  # doctest: +SKIP
        0
    """
    from ..emulate import emulate
    s = simulator or Simulator(net, workdir)
    got = s(x, index)
    want = np.asarray(emulate(net.graph, np.asarray(x, np.float32)), dtype=np.float64).reshape(got.shape)
    bad = np.argwhere(got != want)
    return {"n": len(got), "mismatches": int(len(bad)), "first": tuple(int(i) for i in bad[0]) if len(bad) else None,
            "got": got, "want": want}
