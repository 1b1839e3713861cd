"""Issue #15, items 11 and 12: what traces but cannot be quantized, exported or built is refused by
fpq.convert naming the node and what is allowed; bad calibration data gets one message naming
the layer and the shape it expects, before any statistics are taken."""
import pytest
import torch
from torch import nn

import fpq


class Net(nn.Module):
    """Linear(16, 8) -> ReLU -> Linear(8, 3) with a pluggable forward."""

    def __init__(self, forward):
        super().__init__()
        self.a, self.relu, self.b = nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)
        self.p = nn.Parameter(torch.ones(8))
        self.fwd = forward

    def forward(self, x):
        return self.fwd(self, x)


def test_module_called_twice_is_refused_naming_it():
    twice = Net(lambda s, x: s.b(s.relu(s.a(x)) + s.relu(s.a(x))))
    with pytest.raises(ValueError, match=r"module 'a' \(Linear\) is called 2 times.*nn.ReLU.*may be reused"):
        fpq.convert(twice.eval(), "int8")

    class SharedClamp(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.act, self.b = nn.Linear(16, 8), nn.ReLU6(), nn.Linear(8, 3)

        def forward(self, x):
            return self.b(self.act(self.a(self.act(x))))
    with pytest.raises(ValueError, match=r"module 'act' \(ReLU6\) is called 2 times"):
        fpq.convert(SharedClamp().eval(), "int8")
    # a parameter-free module reused stays allowed (tests/test_plan_shared_modules.py)
    fpq.convert(Net(lambda s, x: s.relu(s.b(s.relu(s.a(x))))).eval(), "int8")


@pytest.mark.parametrize("forward, node, what", [
    (lambda s, x: s.b(s.a(x)[:, :8]), "getitem", r"indexing or slicing 'a'"),
    (lambda s, x: s.b(s.a(x).mT.mT), "getattr", r"tensor attribute \.mT"),
    (lambda s, x: s.b(s.a(x).reshape(-1).view(-1, 8)), "reshape", r"x.reshape\(-1\): merges the batch"),
    (lambda s, x: s.b(s.a(x).flatten(0).view(-1, 8)), "flatten", r"flatten with start_dim=0 merges the batch"),
    (lambda s, x: s.b(torch.flatten(s.a(x)).view(-1, 8)), "flatten", r"flatten with start_dim=0 merges the batch"),
    (lambda s, x: s.b(s.a(x).view(1, -1)), "view", r"x.view\(1, -1\): fixes the batch size to 1"),
    (lambda s, x: s.b(s.a(x) + s.p), "p", r"parameter or buffer 'p' used outside a layer, in \['add'\]"),
], ids=["slice", "mT", "reshape(-1)", "flatten(0)", "torch.flatten(x)", "view(1,-1)", "x+param"])
def test_unsupported_tensor_ops_are_refused_naming_the_node(forward, node, what):
    with pytest.raises(ValueError, match=rf"fpq.convert: node '{node}\w*' \({what}.*not supported; \w"):
        fpq.convert(Net(forward).eval(), "int8")


def test_flatten_module_over_the_batch_is_refused_and_batch_keeping_reshapes_pass():
    m = nn.Sequential(nn.Linear(16, 8), nn.Flatten(0), nn.Linear(8, 3))
    with pytest.raises(ValueError, match=r"node '1' \(nn.Flatten\(start_dim=0\).*x.view\(x.size\(0\), -1\)"):
        fpq.convert(m.eval(), "int8")
    x = torch.randn(5, 16)
    for fwd in (lambda s, x: s.b(s.a(x).view(x.size(0), -1)), lambda s, x: s.b(s.a(x).reshape(x.shape[0], -1)),
                lambda s, x: s.b(s.a(x).flatten(1)), lambda s, x: s.b(s.a(x).view(-1, 8))):
        q = fpq.calibrate(fpq.convert(Net(fwd).eval(), "int8"), [x], progress=False)
        assert q(x).shape == (5, 3)


def test_two_input_model_is_refused_naming_its_inputs():
    class Two(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 3), nn.Linear(4, 3)

        def forward(self, x, y):
            return self.a(x) + self.b(y)
    with pytest.raises(ValueError, match=r"single-input models; forward takes 2 inputs \['x', 'y'\]"):
        fpq.convert(Two().eval(), "int8")


def test_an_unused_required_input_is_still_an_input():
    """forward(x, y) that ignores y still needs y from every caller: refused at convert, not at
    calibrate; an unused input with a default (forward(x, mask=None)) is harmless."""
    class Unused(nn.Module):
        def __init__(self):
            super().__init__()
            self.a = nn.Linear(16, 3)

        def forward(self, x, y):
            return self.a(x)

    class Default(Unused):
        def forward(self, x, mask=None):
            return self.a(x)
    with pytest.raises(ValueError, match=r"forward takes 2 inputs \['x', 'y'\]"):
        fpq.convert(Unused().eval(), "int8")
    fpq.convert(Default().eval(), "int8")


def test_calibrate_on_empty_batches_is_an_error_and_empty_batches_are_skipped():
    base = Net(lambda s, x: s.b(s.relu(s.a(x)))).eval()
    q = fpq.convert(base, "int8")
    with pytest.raises(ValueError, match=r"the 2 batch\(es\) given hold no rows"):
        fpq.calibrate(q, [torch.zeros(0, 16), torch.zeros(0, 16)], progress=False)
    with pytest.raises(ValueError, match="no batches given"):
        fpq.calibrate(q, iter([]), progress=False)
    x = torch.randn(7, 16) * 5
    ref = fpq.calibrate(fpq.convert(base, "int8"), [x], progress=False)
    fpq.calibrate(q, [torch.zeros(0, 16), x], progress=False)
    pairs = list(zip(q.fpq_quantizers(), ref.fpq_quantizers()))
    assert len(pairs) == 7   # input; weight, bias, output of a and b
    assert all(torch.equal(a[2].log2_scale, b[2].log2_scale) for a, b in pairs)
    assert q.meta["fpq_shapes"]["output"] == (1, 3)


@pytest.mark.parametrize("model, batch, match", [
    (nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), (4, 20),
     r"\(4, 20\) does not fit the model: layer '0' \(Linear\(in_features=16\)\) expects input of shape \(N, 16\), got \(N, 20\)$"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), (4, 8, 8),
     r"layer '0' \(Conv2d\(in_channels=1\)\) expects input of shape \(N, 1, H, W\), got \(N, 8, 8\)$"),
    (nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3)), (4, 1, 9, 9),
     r"layer '3' \(Linear\(in_features=144\)\) expects input of shape \(N, 144\), got \(N, 196\)$"),
    (nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3)), (16,),
     r"two dimensions \(N, features...\).*got \(16,\)$"),
], ids=["features", "conv-rank", "image-size", "no-batch-dim"])
def test_wrong_input_shape_names_the_layer_and_the_expected_shape(model, batch, match):
    q = fpq.convert(model.eval(), "int8")
    with pytest.raises(ValueError, match="fpq.calibrate: .*" + match):
        fpq.calibrate(q, [torch.randn(*batch)], progress=False)
    with pytest.raises(ValueError, match="fpq.ptq: .*" + match):
        fpq.ptq(q, [torch.randn(*batch)], ["act_equalization"], progress=False)


def test_a_reshape_merging_rows_is_caught_on_data():
    # view(-1, 16) of 8 features per row merges two rows into one: only data can tell
    class Merge(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 8), nn.Linear(16, 3)

        def forward(self, x):
            return self.b(self.a(x).view(-1, 16))
    q = fpq.convert(Merge().eval(), "int8")
    with pytest.raises(ValueError, match=r"node 'view' does not keep dimension 0 the batch: 2 input rows "
                                         r"give an output of shape \(1, 16\)"):
        fpq.calibrate(q, [torch.randn(1, 16)], progress=False)
