"""fpq.emulate(q, x) keeps the compiled emulator on the model (issue 17): a second call does no
export; changing a weight (in any way), a scale, a format or the input shape rebuilds it, and
every result stays bit-exact against a freshly compiled emulator."""
import numpy as np
import pytest
import torch

import fpq
import fpq.export
from fpq.emulate import Emulator
from fpq.emulate.cache import clear, fingerprint
from fpq.testing.networks import conv2d_bn_net, mlp


@pytest.fixture
def exports(monkeypatch):
    calls = []
    real = fpq.export.export_qonnx

    def counting(*a, **k):
        calls.append(1)
        return real(*a, **k)

    monkeypatch.setattr(fpq.export, "export_qonnx", counting)
    return calls


_EXPORT = fpq.export.export_qonnx   # the uncounted export, for the fresh reference emulators


def _fresh(q, x):
    return Emulator(fpq.export.read_graph(_EXPORT(q, None, x[:1])))(x)


def _x(shape, n=300, seed=0):
    return np.random.default_rng(seed).normal(0, 3, (n,) + shape).astype(np.float32)


def test_second_call_does_no_export(exports):
    m, shape = mlp((16, 32, 16, 5))
    q = fpq.convert(m, fmt="int8")
    x = _x(shape)
    y1 = fpq.emulate(q, x)
    assert len(exports) == 1
    y2 = fpq.emulate(q, _x(shape, seed=1))
    y3 = fpq.emulate(q, x)
    assert len(exports) == 1          # reused twice
    np.testing.assert_array_equal(y1, y3)
    np.testing.assert_array_equal(y2, _fresh(q, _x(shape, seed=1)))
    fpq.emulate(q, x, backend="torch")   # another backend: its own compiled emulator
    assert len(exports) == 2
    fpq.emulate(q, x, backend="torch")
    assert len(exports) == 2
    clear(q)
    fpq.emulate(q, x)
    assert len(exports) == 3


@pytest.mark.parametrize("change", ["data_copy", "no_grad_add", "data_assign", "optimizer_step"])
def test_weight_change_rebuilds(exports, change):
    m, shape = mlp((16, 32, 16, 5))
    q = fpq.convert(m, fmt="int8")
    x = _x(shape)
    y0 = fpq.emulate(q, x)
    w = next(p for n, p in q.named_parameters() if n.endswith("weight"))
    if change == "data_copy":          # bumps no version counter: only a content check sees it
        w.data.copy_(w.data * -1.5)
    elif change == "no_grad_add":
        with torch.no_grad():
            w.add_(0.05)
    elif change == "data_assign":
        w.data = w.data.flip(0).clone()
    else:
        opt = torch.optim.SGD(q.parameters(), lr=0.5)
        q.train()
        q(torch.from_numpy(x[:32])).square().sum().backward()
        opt.step()
        q.eval()
    y1 = fpq.emulate(q, x)
    assert len(exports) == 2
    assert not np.array_equal(y0, y1)          # the change mattered
    np.testing.assert_array_equal(y1, _fresh(q, x))
    with torch.no_grad():
        np.testing.assert_array_equal(y1, q(torch.from_numpy(x)).double().numpy())


def test_scale_and_format_changes_rebuild(exports):
    m, shape = mlp((16, 32, 16, 5))
    q = fpq.convert(m, fmt="int8")
    x = _x(shape)
    fpq.calibrate(q, [torch.from_numpy(x[:100])])
    y0 = fpq.emulate(q, x)
    n = len(exports)
    fpq.calibrate(q, [torch.from_numpy(4 * x[:100])])      # new activation scales
    y1 = fpq.emulate(q, x)
    assert len(exports) == n + 1 and not np.array_equal(y0, y1)
    np.testing.assert_array_equal(y1, _fresh(q, x))
    # a format change: swap one quantizer's format object (what re-quantizing a layer does)
    from fpq.formats import parse_format
    tq = next(mod for _, mod in q.named_modules() if type(mod).__name__ == "FpqTensorQuant"
              and mod.role == "weight")
    before = fingerprint(q)
    tq.fmt = parse_format("int4")
    assert fingerprint(q) != before       # a plain attribute alone changes the fingerprint
    tq.qmin, tq.qmax = -8.0, 7.0
    tq.bit_width_t.fill_(4.0)
    y2 = fpq.emulate(q, x)
    assert len(exports) == n + 2 and not np.array_equal(y2, y1)
    np.testing.assert_array_equal(y2, _fresh(q, x))


def test_input_shape_and_train_mode_keyed(exports):
    m, shape = conv2d_bn_net(groups=1)
    q = fpq.convert(m, fmt="int8")
    x = _x(shape, n=64)
    y = fpq.emulate(q, x)
    fpq.emulate(q, x[:7])                # same sample shape: reused
    assert len(exports) == 1
    np.testing.assert_array_equal(fpq.emulate(q, x[:7]), y[:7])
    q.train()                            # the mode is part of the fingerprint (train-time observers)
    fpq.emulate(q, x)
    assert len(exports) == 2
    q.eval()


def test_cache_is_not_state():
    m, shape = mlp((16, 8, 5))
    q = fpq.convert(m, fmt="int8")
    fpq.emulate(q, _x(shape, n=10))
    keys = set(q.state_dict())
    assert not any("emulator" in k for k in keys)
    import copy
    q2 = copy.deepcopy(q)                 # copies carry their own cache; both still bit-exact
    with torch.no_grad():
        next(q2.parameters()).mul_(-1)
    x = _x(shape, n=50)
    np.testing.assert_array_equal(fpq.emulate(q2, x), _fresh(q2, x))
    np.testing.assert_array_equal(fpq.emulate(q, x), _fresh(q, x))
