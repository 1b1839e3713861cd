"""The ``fpq`` command line: one module per command in this package.

Each module in ``BUILTIN_MODULES`` and ``CLI_MODULES`` defines ``cli_register(subparsers)``,
which adds its subparser with ``set_defaults(func=handler)``; ``handler(args)`` returns the exit
code. Command modules import only argparse-level code at import time; the library (torch, onnx,
hls4ml) is imported when the command runs. ``fpq formats`` and ``fpq info FORMAT`` are built in
(numpy only): ``fpq formats`` is answered without importing the other commands.
"""
from __future__ import annotations

import argparse
import importlib
import os
import sys

from .. import __version__
from ..formats.parse import ACCEPTED_FORMS
from ..userfiles import TRUST_PICKLE_HELP, _one_line, check_input_file, check_onnx_file, load_model_file

BUILTIN = ("formats", "info")
BUILTIN_MODULES = ("fpq.cli.formats", "fpq.cli.info")
# the other commands, in the order `fpq --help` lists them
CLI_MODULES = ("fpq.cli.convert", "fpq.cli.export", "fpq.cli.hls", "fpq.cli.rtl", "fpq.cli.verify", "fpq.cli.cost",
               "fpq.cli.fit", "fpq.cli.profile", "fpq.cli.sweep", "fpq.cli.report")


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
    register_plugins(sub, BUILTIN_MODULES + (CLI_MODULES if plugins else ()))
    return parser


# commands whose positional MODEL is a QONNX file: main() checks it before the command runs, so that a
# missing, unreadable or corrupt file is one error line whichever library then reads it
ONNX_INPUT_COMMANDS = ("verify", "cost", "fit", "export", "hls", "rtl")


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


__all__ = ["main", "build_parser", "register_plugins", "BUILTIN", "CLI_MODULES", "check_input_file",
           "check_onnx_file", "load_model_file", "TRUST_PICKLE_HELP"]
