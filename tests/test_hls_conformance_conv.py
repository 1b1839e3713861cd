"""The conv nets' cells of the HLS conformance matrix (see test_hls_conformance.py): a file of
their own so that pytest-xdist's loadfile runs them beside the dense models' cells."""
from __future__ import annotations

import pytest
from test_hls_conformance import cells_of, run_cell

from fpq.testing.conformance import CONV_NETS

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("fmt,model_name,backend,io_type", cells_of(CONV_NETS))
def test_cell(fmt, model_name, backend, io_type, tmp_path):
    run_cell(fmt, model_name, backend, io_type, tmp_path)
