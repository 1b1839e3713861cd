"""fpq's HLS C++ header is package data: the source tree keeps one copy of it (fpq/hls/include/
links to the top-level hls/); tests/test_wheel.py checks that a wheel carries it."""
from __future__ import annotations

from pathlib import Path

from fpq.hls import cpp

ROOT = Path(__file__).resolve().parent.parent


def test_header_lookup_is_the_one_source_file():
    assert cpp.header_path().is_file()
    assert cpp.header_path().resolve() == (ROOT / "hls" / "fpq_minifloat.h").resolve()


# the built wheel carries the header: tests/test_wheel.py (one wheel build for all package data)
