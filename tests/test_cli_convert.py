"""`fpq convert` then `fpq verify` from the command line, on a model file the test writes."""
import subprocess
import sys
import textwrap

import pytest

pytestmark = pytest.mark.slow


def _fpq(*args, cwd):
    return subprocess.run([sys.executable, "-m", "fpq", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=300)


def test_convert_then_verify(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn
        def Net():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    """))
    r = _fpq("convert", "net.py:Net", "--fmt", "e2m1", "--override", "3=int8", "--input-shape", "1,8,8",
             "--out", "net.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "e2m1" in r.stdout and "int8" in r.stdout and (tmp_path / "net.onnx").exists()
    r = _fpq("verify", "net.onnx", "--n", "100", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EXACT" in r.stdout


def test_convert_bad_inputs(tmp_path):
    r = _fpq("convert", "nofile.py:Net", "--fmt", "e2m1", "--out", "x.onnx", cwd=tmp_path)
    assert r.returncode != 0 and "does not exist" in r.stderr
    (tmp_path / "net.py").write_text("from torch import nn\nNet = lambda: nn.Linear(4, 2)\n")
    r = _fpq("convert", "net.py:Net", "--fmt", "e9m9x", "--out", "x.onnx", cwd=tmp_path)
    assert r.returncode != 0 and "Accepted forms" in r.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_convert_keeps_batchnorm_then_verify(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        import torch
        from torch import nn
        def Net():
            torch.manual_seed(0)
            m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(),
                              nn.Linear(256, 10))
            with torch.no_grad():
                m[1].running_var.uniform_(0.5, 2.0)
                m[1].running_mean.uniform_(-0.2, 0.2)
            return m.eval()
    """))
    r = _fpq("convert", "net.py:Net", "--fmt", "int8", "--batchnorm", "keep", "--input-shape", "1,8,8",
             "--out", "net.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import onnx
    ops = [n.op_type for n in onnx.load(str(tmp_path / "net.onnx")).graph.node]
    assert "Mul" in ops and "Add" in ops   # the kept BatchNorm: quantized x * s + t
    r = _fpq("verify", "net.onnx", "--n", "100", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EXACT" in r.stdout and "batchnorm" in r.stdout


def test_convert_narrow_accumulators_then_verify(tmp_path):
    (tmp_path / "net.py").write_text(textwrap.dedent("""
        from torch import nn
        def Net():
            return nn.Sequential(nn.Flatten(), nn.Linear(64, 16), nn.ReLU(), nn.Linear(16, 10))
    """))
    r = _fpq("convert", "net.py:Net", "--fmt", "int8", "--bias", "fixed<24,16>", "--accumulator-bits", "14",
             "--input-shape", "1,8,8", "--out", "net.onnx", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    import onnx
    assert "Floor" in [n.op_type for n in onnx.load(str(tmp_path / "net.onnx")).graph.node]   # the wrap
    r = _fpq("verify", "net.onnx", "--n", "200", cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "EXACT" in r.stdout
