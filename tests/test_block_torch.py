"""The torch twin of the block formats (fpq.numerics.blocks_torch) == the numpy reference bit for
bit (atol=0, NaN where NaN) on random off-grid blocks over many binades, every scale rounding,
NaN / inf / zero blocks, padding and axes; its straight-through gradient; stochastic rounding
(seeded, reproducible, unbiased, training only)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from fpq.formats import BlockFormat, parse_format, values
from fpq.numerics.blocks import block_quantize
from fpq.numerics.blocks_torch import block_quantize_torch, ste_block_quantize

NAMES = ["mxfp8_e4m3", "mxfp8_e5m2", "mxfp6_e3m2", "mxfp6_e2m3", "mxfp4", "mxint8", "nvfp4",
         "block<e2m1,ue5m3,16>", "block<int4,e8m0,32>", "block<e3m2,ue4m3,8,axis=0>"]


def blocks(rng, shape, lo=-130, hi=120):
    top = rng.integers(lo, hi, size=shape[:-1] + (1,))
    x = rng.uniform(1, 2, size=shape) * np.exp2(top - rng.integers(0, 24, size=shape))
    x *= rng.choice([-1.0, 1.0], size=shape)
    x[rng.random(shape) < 0.02] = 0.0
    x[3, :] = 0.0                       # a zero row (zero blocks)
    x[4, 1] = 2.0 ** 20 * 7.99          # a huge outlier
    x[5, 2], x[6, 7] = np.nan, -np.inf  # NaN / inf blocks
    return x.astype(np.float32)


def same(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("name", NAMES)
def test_torch_twin_equals_reference(name):
    f = parse_format(name)
    modes = ["floor", "ceil", "even", "rceil"] if f.po2_scale else ["floor"]
    rng = np.random.default_rng(abs(hash(name)) % 2 ** 32)
    for mode in modes:
        g = BlockFormat(f.elem, f.scale, f.k, f.axis, mode)
        x = blocks(rng, (200, 8 * f.k + 5) if f.axis == -1 else (8 * f.k + 5, 200),
                   -30 if not f.po2_scale else -130, 30 if not f.po2_scale else 120)
        if f.axis == 0:
            x = np.ascontiguousarray(x)
        ref = block_quantize(x, g)
        v, el, sc, st = block_quantize_torch(torch.from_numpy(x), g)
        assert same(v.numpy(), ref.values) and same(el.numpy(), ref.elements) and same(sc.numpy(), ref.scales)
        assert st == ref.tensor_scale
        if not f.po2_scale:  # a static tensor scale (weights)
            ref = block_quantize(x, g, 2.0 ** -7)
            assert same(block_quantize_torch(torch.from_numpy(x), g, 2.0 ** -7)[0].numpy(), ref.values)


def test_ste_gradient_and_dtype():
    x = torch.tensor([[7.9, 1.0, -0.3, 0.0] + [0.01] * 28], dtype=torch.float32, requires_grad=True)
    y = ste_block_quantize(x, "mxfp4")
    assert y.dtype == torch.float32
    assert np.array_equal(y.detach().numpy().astype(np.float64), block_quantize(x.detach().numpy(), "mxfp4").values)
    y.sum().backward()
    # X = 2**(2 - 2) = 1: 7.9 saturates at 6 (gradient 0), the others pass straight through
    assert x.grad[0, 0] == 0 and torch.all(x.grad[0, 1:] == 1)


def test_stochastic_rounding():
    f = parse_format("mxfp4")
    x = torch.tensor(np.random.default_rng(2).standard_normal((64, 32)), dtype=torch.float32)
    g1, g2, g3 = (torch.Generator().manual_seed(s) for s in (1, 1, 2))
    a = ste_block_quantize(x, f, training=True, stochastic=True, generator=g1)
    b = ste_block_quantize(x, f, training=True, stochastic=True, generator=g2)
    c = ste_block_quantize(x, f, training=True, stochastic=True, generator=g3)
    assert torch.equal(a, b) and not torch.equal(a, c)  # reproducible from the seed
    v, el, sc, _ = block_quantize_torch(x, f)
    r = (x.double().reshape(64, 1, 32) / sc[..., None]).reshape(64, 32)
    grid = torch.tensor(values("e2m1"))
    ae = (a.double().reshape(64, 1, 32) / sc[..., None]).reshape(64, 32)
    assert torch.all(torch.isin(ae, grid))  # on the element grid, at the RNE scale
    lo = grid[torch.searchsorted(grid, r.clamp(-6, 6), right=True).clamp(1, 14) - 1]
    assert torch.all((ae == lo) | (ae == grid[torch.searchsorted(grid, lo, right=True).clamp(0, 14)]))
    # unbiased: the mean over 2000 draws of one value 0.3 (between 0 and 0.5) is 0.3 +- 5 sigma
    xs = torch.zeros(2000, 32)
    xs[:, 0], xs[:, 1] = 0.3, 6.0  # X = 1
    gen = torch.Generator().manual_seed(0)
    m = block_quantize_torch(xs, f, stochastic=True, generator=gen)[0][:, 0].mean().item()
    assert abs(m - 0.3) < 5 * np.sqrt(0.3 * 0.2 / 2000)
    with pytest.raises(ValueError, match="training option only"):
        ste_block_quantize(x, f, stochastic=True, generator=g1)
    with pytest.raises(ValueError, match="seeded torch.Generator"):
        block_quantize_torch(x, f, stochastic=True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
def test_torch_twin_on_cuda_equals_reference():
    for name in ("mxfp4", "nvfp4", "mxfp8_e4m3", "mxint8"):
        x = blocks(np.random.default_rng(9), (300, 64))
        ref = block_quantize(x, name)
        v = block_quantize_torch(torch.from_numpy(x).cuda(), name)[0].cpu().numpy()
        assert same(v, ref.values), name
