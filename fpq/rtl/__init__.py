"""``fpq.to_rtl``: synthesizable Verilog of a whole quantized network (fully unrolled, pipelined),
its CXXRTL simulation against ``fpq.emulate`` and its yosys synthesis.

The circuit is written from the one Graph and TypePlan every other consumer reads
(``fpq.rtl.network`` says what each op becomes); the operators are ``fpq.cost_model.rtl``'s
(threshold lookups, the carrier conventions), so the arithmetic simulated here is the arithmetic
the cost model prices and the HLS project computes.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from .network import LayerInfo, RTLUnsupportedError, SUPPORTED


@dataclass
class RTLNetwork:
    """What ``fpq.to_rtl`` built: the Verilog, its ports and its latency.

    The Verilog holds ``top`` and the modules it instantiates; a clocked design takes one sample
    per clock and answers ``latency`` cycles later (0: combinational).

    Args:
        top (str): the top module's name.
        verilog (str): the Verilog text.
        inputs (list[tuple[str, int]]): (port, width) of x0, x1, ...: codes of ``input_type``, or
            float32 bit patterns.
        outputs (list[tuple[str, int, bool]]): (port, width, signed) of y0, y1, ...: codes of
            ``output_type``.
        input_kind (str): "codes" or "float32".
        input_type (Fixed | None): the carrier of the input codes ("codes"), else None.
        output_type (Fixed): the carrier of the output codes.
        latency (int): clock cycles from an input to its output.
        pipeline_every (int): adder levels between pipeline registers.
        layers (list[LayerInfo]): per-layer facts (name, op, ...).
        graph (Graph | None): the graph IR built from.
        plan (TypePlan | None): its TypePlan.
        path (pathlib.Path | None): the file written, if any.

    Example:
        >>> import torch, fpq
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3)), fmt="int4")
        >>> x = torch.randn(16, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> net = fpq.to_rtl(q, example_input=x[:1], pipeline_every=0)
        >>> net.clocked, net.latency, net.input_kind, net.path is None
        (False, 0, 'codes', True)
    """

    top: str
    verilog: str
    inputs: list                 # [(port, width)]: x0..; codes of ``input_type``, or float32 bit patterns
    outputs: list                # [(port, width, signed)]: y0..; codes of ``output_type``
    input_kind: str              # "codes" or "float32"
    input_type: object           # Fixed carrier of the input codes ("codes") or None
    output_type: object          # Fixed carrier of the output codes
    latency: int                 # clock cycles from input to output
    pipeline_every: int
    layers: list = field(default_factory=list)   # [LayerInfo]
    graph: object = None
    plan: object = None
    path: Path | None = None

    @property
    def clocked(self) -> bool:
        """True when the design has registers (latency > 0).
        """
        return self.latency > 0

    def operator(self):
        """The network as one ``fpq.cost_model.rtl.Operator`` (for ``fpq.cost_model.sim``).

        Returns:
            Operator: the Verilog, ports and latency as the cost model's simulator takes them.
        """
        from ..cost_model.rtl import Operator
        return Operator(self.top, "network", self.verilog, list(self.inputs), list(self.outputs),
                        dict(latency=self.latency, pipeline_every=self.pipeline_every), clocked=self.clocked)

    def layer(self, name: str) -> LayerInfo:
        """The facts of one layer.

        Args:
            name (str): the layer's (IR op) name.

        Returns:
            LayerInfo: that layer's entry of ``layers``.

        Raises:
            KeyError: no layer of that name (the message lists them).
        """
        for li in self.layers:
            if li.name == name:
                return li
        raise KeyError(f"no layer {name!r}; layers: {[li.name for li in self.layers]}")


def to_rtl(q, outdir=None, example_input=None, pipeline_every: int = 1, top: str = "fpq_net") -> RTLNetwork:
    """Synthesizable Verilog of a quantized network, fully unrolled, with the TypePlan's exact types.

    Every weight is a constant, each output has one adder tree, and the accumulators are the
    TypePlan's exact ones; pipeline registers go after every ``pipeline_every`` adder levels and at
    each layer's tree root. ``fpq.rtl.check`` / ``fpq.rtl.simulate`` compare it with the emulator
    (yosys' CXXRTL and g++), ``fpq.rtl.synthesize`` runs yosys.

    Args:
        q (FpqModel | str | os.PathLike | Graph): a converted torch model (with ``example_input``
            for its export), a QONNX file or a Graph.
        outdir (str | os.PathLike | None): when given, ``<outdir>/<top>.v`` is written (the folder
            is created).
        example_input (torch.Tensor | None): an input of a torch model's shape.
        pipeline_every (int): adder levels between pipeline registers; 0: none, the whole network
            combinational.
        top (str): the Verilog module name.

    Returns:
        RTLNetwork: ``verilog`` (the text), ``latency`` (clock cycles), ``inputs`` ((port name,
        bits) pairs), ``outputs`` ((port name, bits, signed) triples), ``path`` (the file
        written, or None).

    Raises:
        RTLUnsupportedError: an op it does not build (``fpq.rtl.SUPPORTED`` lists those it does).

    Example:
        >>> import os, tempfile, torch, fpq
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU()), fmt="int4")
        >>> x = torch.randn(16, 4)
        >>> _ = fpq.calibrate(q, [x], progress=False)
        >>> with tempfile.TemporaryDirectory() as d:
        ...     net = fpq.to_rtl(q, d, x[:1], pipeline_every=1)
        ...     os.listdir(d)
        ['fpq_net.v']
        >>> net.latency, net.inputs[:2], "module fpq_net(" in net.verilog
        (3, [('x0', 4), ('x1', 4)], True)
    """
    from ..export import as_graph
    from .network import build

    g = as_graph(q, example_input)
    w = build(g, pipeline_every, top)
    net = RTLNetwork(w.top, w.verilog(), w.inputs, w.outputs, w.input_kind, w.input_type, w.output_type,
                     w.latency, pipeline_every, w.layers, g, w.tp)
    if outdir is not None:
        out = Path(outdir)
        out.mkdir(parents=True, exist_ok=True)
        net.path = out / f"{w.top}.v"
        net.path.write_text(net.verilog)
    return net


from .testbench import Simulator, check, simulate  # noqa: E402  (uses RTLNetwork)
from .synthesis import synthesize  # noqa: E402
from .pnr import PnRResult, ToolMissingError, place_and_route  # noqa: E402

__all__ = ["to_rtl", "RTLNetwork", "RTLUnsupportedError", "LayerInfo", "SUPPORTED", "Simulator", "simulate",
           "check", "synthesize", "place_and_route", "PnRResult", "ToolMissingError"]
