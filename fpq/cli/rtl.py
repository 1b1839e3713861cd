"""``fpq rtl MODEL.onnx --out DIR``: fpq.to_rtl's Verilog of a QONNX model; optionally simulated
against fpq.emulate, priced, synthesized (yosys synth_xilinx) and placed and routed (ECP5)."""
from __future__ import annotations

import re

_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")


def cli_register(subparsers) -> None:
    """``fpq rtl MODEL.onnx --out DIR [--pipeline-every N] [--simulate N] [--estimate] [--synth] [--pnr] ...``"""
    from ..rtl.pnr import ECP5_PARTS, PACKAGES

    p = subparsers.add_parser("rtl", help="write synthesizable Verilog of a QONNX model (fully unrolled, pipelined)",
                              description="Write fpq.to_rtl's Verilog of a QONNX model to DIR/TOP.v; optionally "
                                          "simulate it against fpq.emulate, price it with fpq.estimate_cost, "
                                          "synthesize it with yosys and place and route it on an ECP5 (nextpnr).")
    p.add_argument("model", help="QONNX file (.onnx), e.g. from `fpq export` / fpq.export_qonnx")
    p.add_argument("--out", required=True, help="folder for TOP.v (created)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing TOP.v in --out")
    p.add_argument("--top", default="fpq_net", help="the Verilog module name")
    p.add_argument("--pipeline-every", type=int, default=1, help="adder levels between pipeline registers (0: none)")
    p.add_argument("--simulate", type=int, default=0, metavar="N",
                   help="simulate N random off-grid inputs (yosys CXXRTL + g++) and compare with fpq.emulate")
    p.add_argument("--seed", type=int, default=0, help="seed of the simulated inputs")
    p.add_argument("--estimate", action="store_true",
                   help="fpq.estimate_cost of the same circuit (LUT, FF = its pipeline registers, latency)")
    p.add_argument("--synth", action="store_true", help="synthesize with yosys synth_xilinx (xcup, no DSP)")
    p.add_argument("--pnr", action="store_true",
                   help="place and route on an ECP5 with nextpnr-ecp5 (pip install fpq[pnr])")
    p.add_argument("--part", default="LFE5U-85F", choices=list(ECP5_PARTS), help="ECP5 part for --pnr")
    p.add_argument("--package", default="CABGA381", choices=list(PACKAGES), help="ECP5 package for --pnr")
    p.add_argument("--speed", type=int, default=6, choices=[6, 7, 8], help="ECP5 speed grade for --pnr")
    p.add_argument("--freq", type=float, default=250.0, help="clock target of --pnr in MHz")
    p.add_argument("--no-io-registers", action="store_true",
                   help="--pnr the design alone (default: inside registers on every input and output, so that "
                        "every path is timed)")
    p.add_argument("--json", action="store_true", help="print the results as JSON")
    p.set_defaults(func=run)


def _check(args):
    """Every option checked before any work or file."""
    from pathlib import Path

    if args.pipeline_every < 0:
        raise ValueError(f"--pipeline-every must be >= 0 (0: no registers), got {args.pipeline_every}")
    if args.simulate < 0:
        raise ValueError(f"--simulate must be >= 0, got {args.simulate}")
    if not _IDENT.match(args.top):
        raise ValueError(f"--top {args.top!r} is not a Verilog identifier (letters, digits, _; not a digit first)")
    if not args.freq > 0:
        raise ValueError(f"--freq must be positive (MHz), got {args.freq}")
    out = Path(args.out)
    if out.exists() and not out.is_dir():
        raise ValueError(f"--out {args.out!r} is a file, not a folder")
    if (out / f"{args.top}.v").exists() and not args.overwrite:
        raise ValueError(f"{out / (args.top + '.v')} exists: give --overwrite to replace it")
    if args.pnr:
        from ..rtl.pnr import nextpnr_cmd
        nextpnr_cmd()     # the tool missing: one line naming `pip install fpq[pnr]`


def run(args) -> int:
    import json

    _check(args)
    from ..rtl import to_rtl

    net = to_rtl(args.model, args.out, None, pipeline_every=args.pipeline_every, top=args.top)
    res = dict(verilog=str(net.path), top=net.top, latency=net.latency, pipeline_every=net.pipeline_every,
               inputs=len(net.inputs), input_kind=net.input_kind, outputs=len(net.outputs))
    lines = [f"wrote {net.path}: {len(net.inputs)} inputs ({net.input_kind}), {len(net.outputs)} outputs, "
             f"latency {net.latency} cycles (pipeline_every={net.pipeline_every})"]
    ok = True
    if args.estimate:
        from ..cost_model import estimate_cost
        t = estimate_cost(net.plan, reuse_factor=1, dsp_threshold=None, pipeline_every=args.pipeline_every).total
        res["estimate"] = dict(lut=round(float(t["lut"]), 1), ff=int(t["ff"]), latency=int(t["latency_cycles"]))
        lines.append(f"estimate (xcvu9p, multipliers in fabric): {t['lut']:.0f} LUT, {t['ff']:.0f} FF, "
                     f"{t['latency_cycles']} cycles")
    if args.simulate:
        from ..rtl import check
        from ..verification import random_inputs
        c = check(net, random_inputs(net.graph, args.simulate, seed=args.seed))
        ok = c["mismatches"] == 0
        res["simulation"] = dict(n=c["n"], mismatches=c["mismatches"], first=c["first"])
        lines.append(f"simulation: {c['n']} inputs, {c['mismatches']} output values differ from fpq.emulate"
                     + (f" (first: sample, output {c['first']})" if c["first"] else " (bit exact)"))
    if args.synth:
        from ..rtl import synthesize
        r = synthesize(net, "lut")
        res["synthesis"] = {k: r[k] for k in ("lut", "ff", "carry", "dsp", "bram", "yosys", "flags") if k in r}
        lines.append(f"yosys ({r['flags']}): {r['lut']} LUT, {r['ff']} FF, {r['carry']} CARRY")
    if args.pnr:
        from ..rtl.pnr import place_and_route
        r = place_and_route(net, part=args.part, package=args.package, speed=args.speed, freq_mhz=args.freq,
                            register_io=not args.no_io_registers)
        res["pnr"] = r.row()
        fmax = "no clock (combinational)" if r.fmax_mhz is None else f"Fmax {r.fmax_mhz:.1f} MHz"
        lines.append(f"nextpnr-ecp5 {r.part}: {fmax}, {r.lut4} LUT4, {r.ff} FF, {r.carry} CCU2C, "
                     f"{r.comb}/{r.comb_available} COMB ({r.synth_s + r.pnr_s:.1f} s; {r.nextpnr})")
    print(json.dumps(res, indent=1, default=str) if args.json else "\n".join(lines))
    return 0 if ok else 1
