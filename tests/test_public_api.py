"""The public API is plain functions with real signatures (issue #16 item 4): one name for the
model argument, ``part=`` for FPGA parts, ``example_input`` where a torch model is exported, old
names deprecated rather than removed."""
from __future__ import annotations

import inspect
import subprocess
import sys
import types
import warnings

import pytest
import torch
from torch import nn

import fpq

# functions taking a converted model (or its QONNX file / TypePlan): first argument ``q``;
# convert and sweep take the float model
TAKES_Q = ("calibrate", "ptq", "emulate", "verify", "to_hls", "to_rtl", "estimate_cost", "fit", "export_qonnx", "plan",
           "profile_torch")
TAKES_MODEL = ("convert", "sweep")


def _params(name):
    return list(inspect.signature(getattr(fpq, name)).parameters.values())


@pytest.mark.parametrize("name", TAKES_Q + TAKES_MODEL + ("report", "quantize", "quantize_torch"))
def test_plain_functions_with_real_signatures(name):
    f = getattr(fpq, name)
    assert isinstance(f, types.FunctionType), f"fpq.{name} is a {type(f).__name__}"
    kinds = {p.kind for p in _params(name)}
    if name != "ptq":   # ptq forwards each method's options (checked by name against ptq.OPTIONS)
        assert inspect.Parameter.VAR_KEYWORD not in kinds and inspect.Parameter.VAR_POSITIONAL not in kinds


def test_one_name_for_the_model_argument():
    assert {name: _params(name)[0].name for name in TAKES_Q} == {name: "q" for name in TAKES_Q}
    assert {name: _params(name)[0].name for name in TAKES_MODEL} == {name: "model" for name in TAKES_MODEL}


def test_example_input_in_the_same_place():
    # positional right after the model and where it is written; a keyword everywhere else
    assert [p.name for p in _params("plan")][:2] == ["q", "example_input"]
    assert [p.name for p in _params("export_qonnx")][:3] == ["q", "path", "example_input"]
    assert [p.name for p in _params("to_hls")][:3] == ["q", "outdir", "example_input"]
    for name in ("emulate", "estimate_cost", "fit", "profile_torch"):
        assert inspect.signature(getattr(fpq, name)).parameters["example_input"].kind == inspect.Parameter.KEYWORD_ONLY


def test_part_names_the_fpga_device_a_torch_device():
    assert "part" in inspect.signature(fpq.estimate_cost).parameters
    assert "part" in inspect.signature(fpq.to_hls).parameters
    assert "device" in inspect.signature(fpq.profile_torch).parameters   # torch device
    assert "device" in inspect.signature(fpq.emulate).parameters


def test_dir_lists_the_lazy_names():
    assert set(fpq.__all__) <= set(dir(fpq))
    assert {"convert", "to_hls", "estimate_cost", "verify", "plan"} <= set(dir(fpq))


def test_import_is_light_and_names_stay_functions():
    """``import fpq`` does not import torch (fpq/__init__ imports the emulate, ptq and report
    packages to bind their functions); importing the packages that share a function's name, in
    any form, leaves ``fpq.<name>`` the function."""
    code = (
        "import sys, types, fpq\n"
        "assert 'torch' not in sys.modules, 'import fpq imports torch'\n"
        "import fpq.emulate, fpq.ptq, fpq.report, fpq.conversion, fpq.calibration, fpq.verification\n"
        "from fpq.emulate import Emulator\n"
        "from fpq.ptq import ORDER\n"
        "from fpq.report import sweeping\n"
        "for n in ('emulate', 'ptq', 'report', 'sweep', 'convert', 'calibrate', 'verify'):\n"
        "    assert isinstance(getattr(fpq, n), types.FunctionType), n\n")
    subprocess.run([sys.executable, "-c", code], check=True)


def _tiny_mlp():
    torch.manual_seed(0)
    q = fpq.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "int8")
    fpq.calibrate(q, [torch.rand(16, 6)], progress=False)
    return q


def test_estimate_cost_device_is_deprecated_for_part():
    tp = fpq.plan(_tiny_mlp(), torch.rand(1, 6))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        new = fpq.estimate_cost(tp, part="xc7z020").total
    with pytest.warns(DeprecationWarning, match="part="):
        old = fpq.estimate_cost(tp, device="xc7z020").total
    assert old == new
    with pytest.raises(TypeError, match="part="):
        fpq.estimate_cost(tp, device="cuda")


def test_cost_cli_part(tmp_path, capsys):
    from fpq.cli import main

    path = fpq.export_qonnx(_tiny_mlp(), str(tmp_path / "m.onnx"), torch.rand(1, 6))
    assert main(["cost", path, "--part", "xc7z020", "--json"]) == 0
    assert '"device": "xc7z020"' in capsys.readouterr().out
    assert main(["cost", path, "--device", "xc7z020", "--json"]) == 0   # the old spelling still works
    assert '"device": "xc7z020"' in capsys.readouterr().out


def test_linear_first_model_needs_no_example_input():
    """A model whose first layer is a Linear tells its input shape (in_features): plan and the
    cost model read it without example_input, even before calibration recorded a shape."""
    q = fpq.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "int8")
    assert [layer.op for layer in fpq.plan(q) if layer.op == "linear"] == ["linear", "linear"]
    assert fpq.estimate_cost(q).total == fpq.estimate_cost(q, example_input=torch.rand(1, 6)).total
    assert [i.name for i in fpq.export_qonnx(q).graph.input] == ["input"]


def test_export_without_a_known_input_shape_says_what_to_do():
    q = fpq.convert(nn.Sequential(nn.Conv1d(1, 2, 3), nn.ReLU()), "int8")
    with pytest.raises(ValueError, match="example_input .*fpq.calibrate records it"):
        fpq.export_qonnx(q)


@pytest.mark.slow
def test_to_hls_of_a_linear_first_model_infers_the_input(tmp_path):
    q = fpq.convert(nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3)), "int8")
    proj = fpq.to_hls(q, tmp_path / "prj")
    x = torch.rand(32, 6)
    assert (proj.predict(x.numpy()) == fpq.emulate(q, x)).all()
