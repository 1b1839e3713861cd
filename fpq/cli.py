"""The ``fpq`` command line.

``fpq formats`` and ``fpq info FORMAT`` live here (numpy only, answered without importing
torch). Every other subcommand is registered by the part of fpq that implements it: each
module in ``CLI_MODULES`` that exists and defines ``cli_register(subparsers)`` adds its
subparsers, each with ``set_defaults(func=handler)``; ``handler(args)`` returns the exit code.
A module that is not there yet is skipped; any other import error propagates.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

import numpy as np

from . import __version__
from .formats import (Binary, Fixed, Int, Minifloat, decode, exact_fixed, finfo, parse_format)
from .formats.parse import ACCEPTED_FORMS, ALIASES

# modules that may register subcommands (convert, export, hls, verify, cost, sweep, report, ...)
CLI_MODULES = ("fpq.cli_convert", "fpq.convert", "fpq.calibrate", "fpq.export", "fpq.emulate", "fpq.hls", "fpq.verify",
               "fpq.cost_model", "fpq.cost_model.profile", "fpq.report", "fpq.ptq")
BUILTIN = ("formats", "info")

# named formats listed by `fpq formats` besides the alias targets
NAMED = ("e2m1", "e2m3", "e3m2", "e4m3", "e4m3_none", "e5m2", "e5m10", "e8m7", "int2", "int4",
         "int4_narrow", "int8", "int8_narrow", "uint4", "uint8", "fixed<8,3>", "ufixed<6,2>",
         "ap_fixed<16,6>", "binary")
MAX_LISTED_BITS = 8


def _num(v: float) -> str:
    return f"{v:.7g}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    line = lambda r: "  ".join(str(c).ljust(w) for c, w in zip(r, widths)).rstrip()  # noqa: E731
    return "\n".join([line(header), line(["-" * w for w in widths]), *map(line, rows)])


def formats_table() -> str:
    """Named formats and their aliases: bits, max, smallest normal and subnormal, inf / NaN."""
    names: dict[str, list[str]] = {}
    for text in (*NAMED, *ALIASES.values()):
        names.setdefault(str(parse_format(text)), [])
    for alias in ALIASES:
        names[str(parse_format(alias))].append(alias)
    for text in NAMED:  # spellings that differ from the canonical string
        canon = str(parse_format(text))
        if text != canon and text not in names[canon]:
            names[canon].append(text)
    rows = []
    for canon, aliases in names.items():
        fmt, info = parse_format(canon), finfo(canon)
        rows.append([canon, ", ".join(aliases), fmt.kind, str(info.bits), _num(info.max), _num(info.min),
                     _num(info.smallest_normal), _num(info.smallest_subnormal),
                     "yes" if info.has_inf else "-", "yes" if info.has_nan else "-"])
    return _table(["FORMAT", "ALIASES", "KIND", "BITS", "MAX", "MIN", "MIN NORMAL", "MIN SUBNORMAL",
                   "INF", "NAN"], rows)


def _describe(fmt) -> str:
    if isinstance(fmt, Minifloat):
        return (f"minifloat: {int(fmt.signed)} sign, {fmt.exp_bits} exponent, {fmt.man_bits} mantissa bits, "
                f"bias {fmt.bias}, specials {fmt.specials}, subnormals {'yes' if fmt.subnormals else 'no'}, "
                f"{'saturating' if fmt.saturate else 'overflows to ' + ('inf' if fmt.has_inf else 'NaN')}")
    if isinstance(fmt, Fixed):
        return (f"{'signed' if fmt.signed else 'unsigned'} fixed point, {fmt.width} bits, {fmt.int_bits} "
                f"integer bits (LSB 2**{-fmt.frac_bits}), rounding {fmt.rounding}, overflow {fmt.overflow}")
    if isinstance(fmt, Int):
        return (f"{'signed' if fmt.signed else 'unsigned'} {fmt.bits}-bit integer"
                f"{' (narrow range)' if fmt.narrow else ''}, used with a scale; round half to even, saturate")
    assert isinstance(fmt, Binary)
    return "bipolar binary: -1 or +1 (sign(0) = +1), used with a scale"


def info_text(text: str) -> str:
    """finfo, the exact fixed-point carrier and, up to 8 bits, every code and its value."""
    fmt = parse_format(text)
    info = finfo(fmt)
    try:
        carrier = str(exact_fixed(fmt))
    except ValueError as e:
        carrier = f"none ({e})"
    lines = [f"{fmt}  ({_describe(fmt)})",
             f"  bits            {info.bits}",
             f"  max             {info.max!r}",
             f"  min             {info.min!r}",
             f"  smallest normal {info.smallest_normal!r}",
             f"  smallest subn.  {info.smallest_subnormal!r}",
             f"  eps             {info.eps!r}",
             f"  codes / values  {info.n_codes} / {info.n_values}",
             f"  inf / NaN       {'yes' if info.has_inf else 'no'} / {'yes' if info.has_nan else 'no'}",
             f"  exact carrier   {carrier}"]
    if info.bits <= MAX_LISTED_BITS:
        codes = np.arange(1 << info.bits)
        vals = decode(codes, fmt)
        lines += ["", f"  every code ({info.n_codes}):",
                  *(f"  {c:0{info.bits}b}  {v!r}" for c, v in zip(codes.tolist(), vals.tolist()))]
    else:
        lines.append(f"  (codes listed for formats of at most {MAX_LISTED_BITS} bits)")
    return "\n".join(lines)


def _cli_formats(args) -> int:
    print(formats_table())
    return 0


def _cli_info(args) -> int:
    try:
        print(info_text(args.format))
    except ValueError as e:
        print(f"fpq info: error: {e}", file=sys.stderr)
        return 2
    return 0


def register_plugins(subparsers, modules=CLI_MODULES) -> list[str]:
    """Let each present module add its subcommands; returns the modules that registered."""
    done = []
    for name in modules:
        try:
            mod = importlib.import_module(name)
        except ModuleNotFoundError as e:
            if e.name == name:  # that part of fpq is not there yet
                continue
            raise  # a real missing dependency inside it
        register = getattr(mod, "cli_register", None)
        if register is not None:
            register(subparsers)
            done.append(name)
    return done


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fpq", description="PyTorch to FPGA in low precision, bit-exact from torch to HLS C simulation.",
        epilog=f"Format strings: {ACCEPTED_FORMS}")
    parser.add_argument("--version", action="version", version=f"fpq {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    p = sub.add_parser("formats", help="list the named formats and aliases")
    p.set_defaults(func=_cli_formats)
    p = sub.add_parser("info", help="facts of one format (finfo, carrier, every value up to 8 bits)",
                       epilog=f"Format strings: {ACCEPTED_FORMS}")
    p.add_argument("format", help="a format string, e.g. e4m3, fixed<8,3>, int4")
    p.set_defaults(func=_cli_info)
    if plugins:
        register_plugins(sub)
    return parser


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # the built-in commands need no plugin (and so no torch import)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(plugins=first not in BUILTIN)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except (ValueError, FileNotFoundError) as e:
        # bad input is the user's to fix: one clear line, no traceback (FPQ_DEBUG=1 shows it)
        if os.environ.get("FPQ_DEBUG"):
            raise
        print(f"fpq {first}: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
