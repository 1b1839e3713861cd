"""fpq.profile_torch on CPU (tiny models, few runs); the CUDA path only where a GPU is present."""
import argparse
import json
import time

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.cli import register_plugins
from fpq import profiling as prof

FAST = dict(batch=8, warmup=1, iters=3, progress=False)
HAS_CUDA = torch.cuda.is_available()


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 10)).eval()


class _Conv(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv, self.relu, self.fc = nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(self.relu(self.conv(x)), 1))


def test_result_fields_fp32_and_fake_quant_measured():
    m = _mlp()
    q = fpq.convert(m, weights="int8", activations="int8")
    res = fpq.profile_torch(q, dtypes=("fp32",), **FAST)
    assert res.device == "cpu" and res.device_name and res.device_name != "cpu"
    assert res.torch_version == torch.__version__
    assert res.batch == 8 and res.threads == torch.get_num_threads() and res.input_shape == (16,)
    for name in ("float fp32", "fpq fake-quant"):
        r = res.row(name)
        assert r.status == "ok", r.reason
        assert 0 < r.median_ms <= r.p90_ms
        assert r.throughput == pytest.approx(8 / (r.median_ms / 1e3))
    assert res.row("float fp32").max_abs_diff == 0
    assert "int8" in res.row("fpq fake-quant").reason
    d = json.loads(json.dumps(res.to_dict()))  # plain JSON types only
    assert {"device", "device_name", "torch_version", "batch", "threads", "rows", "input_shape"} <= set(d)
    assert [r["name"] for r in d["rows"]][:2] == ["float fp32", "fpq fake-quant"]
    text = str(res)
    assert "float fp32" in text and "fpq fake-quant" in text and res.device_name in text
    with pytest.raises(KeyError, match="rows"):
        res.row("nope")


def test_float_model_recovered_from_converted_model():
    m = _mlp()
    q = fpq.convert(m, fmt="int4")
    x = torch.randn(5, 16) * 3
    f = prof._float_of(q)
    with torch.no_grad():
        assert torch.equal(f(x), m(x))  # same float weights: the converted model's float twin
    # an explicitly given float model is the one timed (its output differs from q's float twin)
    other = _mlp()
    with torch.no_grad():
        other[0].weight.mul_(2)
    res = fpq.profile_torch(q, dtypes=("fp32",), float_model=other, gemm=False, **FAST)
    assert res.row("float fp32").status == "ok"


def test_timing_reflects_the_work():
    class Sleepy(nn.Linear):
        def forward(self, x):
            time.sleep(0.004)
            return super().forward(x)

    res = fpq.profile_torch(Sleepy(4, 4), dtypes=("fp32",), fake_quant=False, gemm=False, **FAST)
    r = res.row("float fp32")
    assert 4.0 <= r.median_ms < 400  # the sleep is inside every timed run


def test_float_model_rows_and_gemms():
    res = fpq.profile_torch(_Conv().eval(), input_shape=(1, 8, 8), batch=2, warmup=0, iters=2, progress=False)
    assert res.row("fpq fake-quant").status == "skipped" and "fpq.convert" in res.row("fpq fake-quant").reason
    assert res.gemms == [(2 * 64, 9, 4, 1), (2, 256, 10, 1)]
    assert res.row("float fp32").status == "ok"
    for name in ("float bf16", "float fp16", "GEMMs bf16", "GEMMs fp8"):
        r = res.row(name)  # measured where it runs, otherwise skipped with a reason
        assert r.status in ("ok", "skipped") and (r.status == "ok" or r.reason)
    assert res.row("float bf16").status == "ok"  # torch's CPU conv/linear run in bf16


def test_unsupported_dtype_is_skipped_with_reason():
    class Fp32Only(nn.Linear):
        def forward(self, x):
            if x.dtype != torch.float32:
                raise RuntimeError(f"kernel not implemented for {x.dtype}")
            return super().forward(x)

    res = fpq.profile_torch(Fp32Only(4, 4), dtypes=("fp32", "fp16"), gemm=False, **FAST)
    assert res.row("float fp32").status == "ok"
    r = res.row("float fp16")
    assert r.status == "skipped" and "not implemented" in r.reason
    assert "skipped: RuntimeError" in str(res)


def test_percentile_matches_numpy():
    rng = np.random.default_rng(0)
    for n in (1, 2, 7, 30):
        v = rng.random(n).tolist()
        assert prof._percentile(v, 90) == pytest.approx(float(np.percentile(v, 90)), rel=1e-12)


def test_bad_arguments_raise_clear_errors():
    m = _mlp()
    with pytest.raises(ValueError, match="unknown dtype 'fp8'.*fp32, bf16, fp16"):
        fpq.profile_torch(m, dtypes=("fp8",))
    with pytest.raises(ValueError, match="allowed 'cpu', 'cuda'"):
        fpq.profile_torch(m, device="tpu")
    with pytest.raises(ValueError, match="batch must be a positive integer"):
        fpq.profile_torch(m, batch=0)
    with pytest.raises(ValueError, match="iters must be an integer >= 1"):
        fpq.profile_torch(m, iters=0)
    with pytest.raises(TypeError, match="torch.nn.Module"):
        fpq.profile_torch("model.onnx")
    with pytest.raises(ValueError, match="input_shape"):
        fpq.profile_torch(_Conv())  # a conv net does not tell its spatial size


@pytest.mark.skipif(HAS_CUDA, reason="checks the error raised when no GPU is present")
def test_cuda_without_gpu_is_a_clear_error():
    with pytest.raises(RuntimeError, match=r"device='cuda' was requested but .*(no GPU|without CUDA).*device='cpu'"):
        fpq.profile_torch(_mlp(), device="cuda", **FAST)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_path():
    q = fpq.convert(_mlp(), fmt="int8")
    res = fpq.profile_torch(q, device="cuda", **FAST)
    assert torch.cuda.get_device_name() in res.device_name and res.device.startswith("cuda")
    assert res.row("float fp32").status == "ok" and res.row("fpq fake-quant").status == "ok"
    fp8 = res.row("GEMMs fp8")
    has_fp8 = torch.cuda.get_device_capability() >= prof.FP8_MIN_CAPABILITY
    assert (fp8.status == "ok") == has_fp8 or "failed" in fp8.reason
    if not has_fp8:
        assert "compute capability" in fp8.reason


def test_cli_profile(tmp_path, capsys):
    src = tmp_path / "tinymodel.py"
    src.write_text("import torch\n"
                   "def make():\n"
                   "    torch.manual_seed(0)\n"
                   "    return torch.nn.Sequential(torch.nn.Linear(6, 3))\n")
    parser = argparse.ArgumentParser(prog="fpq")
    assert register_plugins(parser.add_subparsers(dest="command"), modules=("fpq.cli.profile",))
    args = parser.parse_args(["profile", f"{src}:make", "--fmt", "int8", "--batch", "4", "--warmup", "0",
                              "--iters", "2", "--dtypes", "fp32", "--no-gemm", "--json"])
    assert args.func(args) == 0
    d = json.loads(capsys.readouterr().out)
    assert d["batch"] == 4 and d["input_shape"] == [6]
    assert [r["status"] for r in d["rows"]] == ["ok", "ok"]
    bad = parser.parse_args(["profile", f"{src}:nothing"])
    assert bad.func(bad) == 2
    assert "has no attribute 'nothing'" in capsys.readouterr().err


@pytest.mark.slow
def test_cost_digits_example_quick(load_script):
    mod = load_script("examples/cost_digits.py")
    threads = torch.get_num_threads()
    res = mod.main(quick=True, verbose=False, batch=64)
    assert torch.get_num_threads() == threads
    assert [r["weights"] for r in res["rows"]] == list(mod.WEIGHT_FORMATS)
    assert res["float"] > 90
    for r in res["rows"]:
        assert r["profile"].status == "ok" and r["profile"].median_ms > 0
        assert all(r["cost"][k] > 0 for k in ("lut", "ff", "latency_cycles", "bops", "ebops"))
        assert (r["qat"] is not None) == (r["ptq"] < res["float"] - mod.QAT_THRESHOLD)
    assert res["rows"][0]["ptq"] >= res["float"] - 2  # int8 weights and activations: PTQ is near float
    assert res["float_profile"].row("float fp32").status == "ok"
    lines = mod._cost_table(res["rows"], res["float"], res["float_profile"], "xcvu9p", 5).splitlines()
    assert [l.split()[0] for l in lines[3:]] == ["float", *mod.WEIGHT_FORMATS]


def test_input_shape_from_a_calibrated_conv_model():
    q = fpq.convert(_Conv().eval(), fmt="int8")
    fpq.calibrate(q, [torch.rand(4, 1, 8, 8)], progress=False)
    res = fpq.profile_torch(q, dtypes=("fp32",), gemm=False, **FAST)
    assert res.input_shape == (1, 8, 8)
    assert res.row("fpq fake-quant").status == "ok"
