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
CLI_MODULES = ("fpq.cli_convert", "fpq.conversion", "fpq.calibration", "fpq.export", "fpq.emulate", "fpq.hls",
               "fpq.verification", "fpq.cost_model", "fpq.cost_model.profile", "fpq.report", "fpq.ptq")
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
    try:
        info = finfo(fmt)
    except OverflowError:  # e.g. fixed<8,100000>: its LSB or max is beyond float64
        raise ValueError(f"format {text!r}: its values lie outside the float64 range "
                         f"(about 2**-1074 .. 2**1023), so fpq cannot represent them") from None
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
    print(info_text(args.format))  # a bad format string: main() prints the one error line
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


class _Parser(argparse.ArgumentParser):
    """argparse with the fpq rule: a usage error is one line ``fpq CMD: error: ...``, exit 2."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


def build_parser(plugins: bool = True) -> argparse.ArgumentParser:
    parser = _Parser(
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


# commands whose positional MODEL is a QONNX file: main() checks it before the command runs, so that a
# missing, unreadable or corrupt file is one error line whichever library then reads it
ONNX_INPUT_COMMANDS = ("verify", "cost", "export", "hls")


def check_input_file(path: str, what: str) -> None:
    """Refuse a path that is not an existing, readable regular file (one clear message)."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory, not a file")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path!r} is not readable (permission denied)")


def check_onnx_file(path: str) -> None:
    """Refuse a file that is not a well-formed ONNX model, before any library reads it."""
    import onnx

    check_input_file(path, "QONNX file")
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf's DecodeError and friends: the bytes are not a ModelProto
        raise ValueError(f"{path!r} is not an ONNX model file ({type(e).__name__}: {e})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx's ValidationError: parsed, but not a valid model (e.g. an empty file)
        raise ValueError(f"{path!r} is not a valid ONNX model ({type(e).__name__}: {e})") from None


TRUST_PICKLE_HELP = ("allow a FILE.pt model written by torch.save(model). Such a file is a Python pickle, and "
                     "loading a pickle can run any code it contains: give this flag only for files you trust. "
                     "Without it a .pt file is read with torch.load(weights_only=True) (tensors only), which "
                     "cannot hold a model; name the model's code as FILE.py:NAME instead")


def load_model_file(path: str, trust_pickle: bool = False, flag: str = "--trust-pickle"):
    """A whole model saved with ``torch.save(model)``: unpickled only when ``trust_pickle`` (a
    pickle can run code); otherwise read tensors-only and refused with what to do instead."""
    import pickle

    import torch

    check_input_file(path, "model file")
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's allow-list refused a class: the file holds code to run
        raise ValueError(f"model file {path!r} is a pickle holding more than tensors (e.g. torch.save(model)); "
                         f"unpickling it can run any code in the file, so fpq does not without {flag}. Give "
                         f"{flag} if you trust the file, or save model.state_dict() and name the model's "
                         "code as FILE.py:NAME") from None
    except Exception as e:  # not a torch.save file at all
        raise ValueError(f"model file {path!r} is not a torch.save file ({type(e).__name__}: "
                         f"{_one_line(e)})") from None
    raise ValueError(f"model file {path!r} holds a {type(obj).__name__} of tensors (a state dict?), not a "
                     "model: name the model's code as FILE.py:NAME (a factory that loads these weights)")


def _user_error_types() -> tuple:
    """Exceptions that mean bad input (a file, a spec, a format, an option value), not a bug in fpq."""
    import pickle
    import zipfile
    kinds = [ValueError, OSError, OverflowError, ImportError, SyntaxError, EOFError, pickle.UnpicklingError,
             zipfile.BadZipFile]
    for mod, name in (("google.protobuf.message", "Error"), ("onnx.checker", "ValidationError")):
        try:
            kinds.append(getattr(importlib.import_module(mod), name))
        except (ImportError, AttributeError):
            pass
    return tuple(kinds)


def _one_line(e: BaseException) -> str:
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename!r}: {e.strerror}"
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def main(argv=None) -> int:
    """Run one command; returns its exit status.

    The rule for every command: bad input (a missing, unreadable or corrupt file, a bad format
    string or spec, a value out of range) prints ONE line ``fpq CMD: error: ...`` on stderr and
    exits 2, before any work. Any other exception is a bug in fpq: one line ``fpq CMD: internal
    error: ...`` and exit 1. ``FPQ_DEBUG=1`` re-raises either with its traceback.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    # the built-in commands need no plugin (and so no torch import)
    first = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(plugins=first not in BUILTIN)
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    cmd = args.command
    try:
        if cmd in ONNX_INPUT_COMMANDS and isinstance(getattr(args, "model", None), str):
            check_onnx_file(args.model)
        return int(args.func(args) or 0)
    except KeyboardInterrupt:
        print(f"fpq {cmd}: interrupted", file=sys.stderr)
        return 130
    except SystemExit:
        raise
    except Exception as e:
        if os.environ.get("FPQ_DEBUG"):
            raise
        if isinstance(e, _user_error_types()):
            # bad input is the user's to fix: one clear line, no traceback
            print(f"fpq {cmd}: error: {_one_line(e)}", file=sys.stderr)
            return 2
        print(f"fpq {cmd}: internal error (a bug in fpq, please report it): {type(e).__name__}: {_one_line(e)} "
              f"(run with FPQ_DEBUG=1 for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
