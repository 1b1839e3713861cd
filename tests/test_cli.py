"""The fpq command line: run as a subprocess (python -m fpq.cli / python -m fpq) and in-process."""
from __future__ import annotations

import argparse
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import fpq
from fpq.cli import BUILTIN, CLI_MODULES, build_parser, main, register_plugins
from fpq.formats.parse import ALIASES


def fpq_cli(*args, module="fpq.cli"):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, timeout=300)


def test_help_lists_builtin_and_registered_commands():
    r = fpq_cli("--help")
    assert r.returncode == 0, r.stderr
    commands = [a.dest for a in build_parser()._subparsers._group_actions[0]._choices_actions]
    assert set(BUILTIN) <= set(commands)
    for cmd in commands:
        assert f"    {cmd} " in r.stdout
    assert "Accepted forms" not in r.stdout and "Format strings:" in r.stdout


def test_python_dash_m_fpq_works():
    r = fpq_cli("formats", module="fpq")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("FORMAT")


def test_every_subcommand_help():
    parser = build_parser()
    commands = parser._subparsers._group_actions[0].choices
    for cmd in commands:
        with pytest.raises(SystemExit) as e:
            parser.parse_args([cmd, "--help"])
        assert e.value.code == 0, cmd


def test_no_command_prints_help_and_fails(capsys):
    assert main([]) == 2  # in-process: the plugins are imported once for the whole file
    assert "usage: fpq" in capsys.readouterr().out


def test_formats_table():
    r = fpq_cli("formats")
    assert r.returncode == 0, r.stderr
    rows = {line.split()[0]: line.split() for line in r.stdout.splitlines()[2:]}
    assert set(ALIASES) <= set(r.stdout.replace(",", " ").split())
    assert rows["e4m3"][-6:] == ["448", "-448", "0.015625", "0.001953125", "-", "yes"]
    assert rows["e2m1"][-6] == "6" and rows["e3m2"][-6] == "28" and rows["e2m3"][-6] == "7.5"
    assert rows["e5m2"][-6:-4] == ["57344", "-57344"] and rows["e4m3_none"][-6] == "480"
    assert rows["e5m10"][1:4] == ["fp16,", "half,", "float16"]
    for name, row in rows.items():  # every row agrees with finfo
        info = fpq.finfo(name)
        assert float(row[-6]) == pytest.approx(info.max, rel=1e-6)
        assert int(row[-7]) == info.bits


def test_info_lists_every_code():
    r = fpq_cli("info", "e4m3")
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "max             448.0" in out and "exact carrier   fixed<19,10,RND_CONV,SAT>" in out
    codes = [line.split() for line in out.splitlines() if line.startswith("  ") and len(line.split()) == 2
             and set(line.split()[0]) <= {"0", "1"} and len(line.split()[0]) == 8]
    assert len(codes) == 256
    got = np.array([float(v) for _, v in codes])
    want = fpq.decode([int(c, 2) for c, _ in codes], "e4m3")
    assert np.array_equal(got, want, equal_nan=True)


def test_info_wide_formats():
    r = fpq_cli("info", "bf16")
    assert r.returncode == 0, r.stderr
    assert "262-bit" in r.stdout and "codes listed for formats of at most 8 bits" in r.stdout
    r = fpq_cli("info", "fixed<8,3>")
    assert r.returncode == 0 and "LSB 2**-5" in r.stdout and r.stdout.count("\n  1") == 128


def test_info_bad_format():
    r = fpq_cli("info", "fixed<4,9,FOO>")
    assert r.returncode == 2
    assert "unknown rounding mode 'FOO'" in r.stderr and "Accepted forms" in r.stderr


def test_missing_module_is_skipped_real_import_errors_are_not(tmp_path, monkeypatch):
    pkg = tmp_path / "fpq_cli_probe"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "good.py").write_text(textwrap.dedent("""
        def cli_register(subparsers):
            p = subparsers.add_parser("hello")
            p.set_defaults(func=lambda args: 7)
    """))
    (pkg / "broken.py").write_text("import fpq_dependency_that_is_not_installed\n")
    (pkg / "quiet.py").write_text("X = 1\n")  # present, but no CLI yet
    monkeypatch.syspath_prepend(str(tmp_path))
    sub = argparse.ArgumentParser().add_subparsers()
    done = register_plugins(sub, ("fpq_cli_probe.missing", "fpq_cli_probe.quiet", "fpq_cli_probe.good"))
    assert done == ["fpq_cli_probe.good"] and "hello" in sub.choices
    with pytest.raises(ModuleNotFoundError, match="fpq_dependency_that_is_not_installed"):
        register_plugins(sub, ("fpq_cli_probe.broken",))


def test_known_modules_are_fpq_parts():
    assert all(m.startswith("fpq.") for m in CLI_MODULES)
