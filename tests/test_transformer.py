"""Issue 22, the PyTorch -> emulator -> QONNX half: the product of two quantized activations
(FpqMatMul / the IR's ``matmul``), a 2-block encoder (multi-head attention, LayerNorm, GELU,
residual adds, mean pooling, a head) bit-exact on every path, nn.MultiheadAttention through the
same path, and the refusals."""
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fpq
from fpq.export import read_graph
from fpq.emulate import Emulator
from fpq.formats import Fixed
from fpq.nn.attention import FpqMatMul, HandMultiheadAttention
from fpq.testing.conformance import all_paths_exact
from fpq.testing.transformer import MHAWrapper, SelfAttention, tiny_encoder
from fpq.typeplan import LayerPlan, TensorType

SHAPE = (8, 16)   # 8 tokens of 16 features


def _calibrated(model, seed=0, **kw):
    q = fpq.convert(model, **kw)
    g = torch.Generator().manual_seed(seed)
    fpq.calibrate(q, [torch.randn((256,) + SHAPE, generator=g) * 2], progress=False)
    return q.eval()


FORMATS = {"int8": dict(fmt="int8"), "e4m3": dict(fmt="e4m3"), "e2m1": dict(fmt="e2m1"),
           # mixed: first and last layers int8, the blocks e4m3 (weights) x e2m1 (activations)
           "mixed": dict(weights="e4m3", activations="e2m1", inputs="int8",
                         overrides={"embed": "int8", "head": "int8"})}


def test_one_block_mixed_encoder_all_paths_exact_quick():
    """The fast cell: one block with int8 ends and e4m3 x e2m1 inside, 300 probe inputs."""
    q = _calibrated(tiny_encoder(blocks=1, scale=0.25), **FORMATS["mixed"])
    g, _ = all_paths_exact(q, SHAPE, n=200, qonnx_subset=1)
    kinds = [op.kind for op in g]   # x.mean(1) over the tokens: a transpose and fpq's exact average
    assert kinds.count("matmul") == 2 and kinds[kinds.index("global_avgpool") - 1] == "transpose"


@pytest.mark.slow   # about 15 s a format on the shared 2-core machine (torch's minifloat quantizers dominate)
@pytest.mark.parametrize("name", list(FORMATS))
def test_encoder_all_paths_exact_on_2000_off_grid_inputs(name):
    """torch == emulator (numpy) == emulator (torch) on 2,000 probe inputs (off-grid, ties, saturating),
    fpq.verify EXACT with qonnx's executor on a subset, for a 2-block encoder with 2 heads."""
    q = _calibrated(tiny_encoder(blocks=2, scale=0.25), **FORMATS[name])
    g, x = all_paths_exact(q, SHAPE, n=2000, qonnx_subset=8)
    mm = [op for op in g if op.kind == "matmul"]
    assert len(mm) == 4 and all(op.attrs["alpha_exp"] in (0, -2) for op in mm)   # QK^T carries the 1/4
    assert x.shape == (2000,) + SHAPE and not np.all(x == np.round(x))


def test_matmul_accumulator_is_derived_like_a_linear():
    """The matmul's product / accumulator are the ones a Linear with the same input, weight type and
    fan-in gets; the power-of-two scale shifts the output only; the reader fuses its Mul."""
    q = _calibrated(tiny_encoder(blocks=1, scale=0.25), fmt="e4m3")
    plan = fpq.plan(q, torch.zeros((1,) + SHAPE))
    qk = [lp for lp in plan if lp.op == "matmul"][0]
    ref = LayerPlan("ref", "linear", {"input": qk.tensors["input"], "weight": qk.tensors["other"]}, 8).derive()
    assert qk.fan_in == 8   # head_dim
    assert qk.tensors["product"] == ref.tensors["product"] and qk.tensors["accumulator"] == ref.tensors["accumulator"]
    acc = qk.tensors["accumulator"]
    assert qk.attrs["alpha_exp"] == -2
    assert qk.tensors["output"] == Fixed(acc.width, acc.int_bits - 2, acc.signed)   # the scale: a shift
    # e4m3 x e4m3: 19-bit carriers, 38-bit products, K = 8: the sum needs more than float32 holds
    assert acc.width > 24


def test_wide_matmul_is_rounded_to_odd_and_still_exact():
    """e5m2 x e5m2 over 8 terms needs more than 53 bits: summed in pieces, rounded to odd; the
    quantizer after it rounds as on the exact sum (every path)."""
    wide = {"activations": "e5m2"}   # q and k leave their Linears as e5m2
    q = _calibrated(tiny_encoder(blocks=1, scale=0.25), fmt="int8",
                    overrides={"blocks.0.attn.q": wide, "blocks.0.attn.k": wide})
    emu = Emulator(read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + SHAPE))))
    assert [n for n, d in emu.acc_dtype.items() if d == "wide"] == ["matmul"] and "matmul" in emu.rounded_to_odd
    all_paths_exact(q, SHAPE, n=100, qonnx_subset=1)


def test_non_power_of_two_scale_is_folded_into_q():
    """1/sqrt(8) is not a power of two: it is folded into q's Linear before quantization (the float
    model is unchanged up to float32 rounding) and the converted model is exact."""
    m = tiny_encoder(blocks=1)   # scale 1/sqrt(8)
    q = _calibrated(m, fmt="int8")
    w = dict(q.named_modules())["blocks.0.attn.q"].weight
    assert torch.allclose(w, m.blocks[0].attn.q.weight / math.sqrt(8), atol=1e-7)
    assert all(mm.alpha == 1.0 for mm in q.modules() if isinstance(mm, FpqMatMul))
    all_paths_exact(q, SHAPE, n=100, qonnx_subset=1)


def test_multihead_attention_takes_the_hand_written_path():
    """nn.MultiheadAttention is rewritten (its in_proj split into q/k/v Linears): in float it equals
    torch's MHA; converted, it is bit-identical to the hand-written attention with those weights."""
    torch.manual_seed(1)
    mha = MHAWrapper(16, 2).eval()
    x = torch.randn(5, 8, 16)
    hand = HandMultiheadAttention(mha.mha, "mha")
    assert torch.allclose(hand(x, x, x)[0], mha(x), atol=1e-6)
    written = SelfAttention(16, 2)
    with torch.no_grad():
        for name in ("q", "k", "v"):
            getattr(written, name).load_state_dict(getattr(hand, f"{name}_proj").state_dict())
        written.out.load_state_dict(hand.out_proj.state_dict())
    qa, qb = _calibrated(mha, fmt="e4m3"), _calibrated(written, fmt="e4m3")
    xs = torch.randn(200, 8, 16) * 2
    assert torch.equal(qa(xs), qb(xs))
    all_paths_exact(qa, SHAPE, n=200, qonnx_subset=2)


class _Masked(nn.Module):
    def __init__(self, **call):
        super().__init__()
        self.mha, self.call = nn.MultiheadAttention(16, 2, batch_first=True), call

    def forward(self, x):
        kw = dict(self.call)
        if "attn_mask" in kw:
            kw["attn_mask"] = torch.ones(8, 8, dtype=torch.bool).triu(1)
        return self.mha(x, x, x, **kw)[0]


@pytest.mark.parametrize("call, what", [(dict(attn_mask=True), "attn_mask"), (dict(is_causal=True), "is_causal"),
                                        (dict(key_padding_mask=None, attn_mask=True), "attn_mask")])
def test_masks_are_refused_naming_the_module(call, what):
    with pytest.raises(ValueError, match=rf"MultiheadAttention 'mha'.*{what}"):
        fpq.convert(_Masked(**call), fmt="int8")


def test_key_padding_mask_input_is_refused():
    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.mha = nn.MultiheadAttention(16, 2, batch_first=True)

        def forward(self, x):
            return self.mha(x, x, x, key_padding_mask=x[..., 0] > 0)[0]
    with pytest.raises(ValueError, match="'mha'.*key_padding_mask"):
        fpq.convert(M(), fmt="int8")


def test_scaled_dot_product_attention_is_decomposed():
    """F.scaled_dot_product_attention(q, k, v, scale=c) converts to the written-out form, bit for bit."""
    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), scale=0.25)

    class Written(SDPA):
        def forward(self, x):
            return torch.softmax(self.q(x) @ self.k(x).transpose(-2, -1) * 0.25, -1) @ self.v(x)
    torch.manual_seed(2)
    a = SDPA().eval()
    b = Written().eval()
    b.load_state_dict(a.state_dict())
    x = torch.randn(4, 8, 16)
    assert torch.allclose(a(x), b(x), atol=1e-6)
    qa, qb = _calibrated(a, fmt="e4m3"), _calibrated(b, fmt="e4m3")
    xs = torch.randn(300, 8, 16) * 2
    assert torch.equal(qa(xs), qb(xs))
    all_paths_exact(qa, SHAPE, n=200, qonnx_subset=2)


def test_scaled_dot_product_attention_and_unquantized_operands_are_refused():
    class SDPA(nn.Module):
        def __init__(self):
            super().__init__()
            self.q, self.k, self.v = nn.Linear(16, 16), nn.Linear(16, 16), nn.Linear(16, 16)

        def forward(self, x):
            return F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x))
    with pytest.raises(ValueError, match="scaled_dot_product_attention.*no scale="):
        fpq.convert(SDPA(), fmt="int8")

    class Causal(SDPA):
        def forward(self, x):
            return F.scaled_dot_product_attention(self.q(x), self.k(x), self.v(x), is_causal=True, scale=0.25)
    with pytest.raises(ValueError, match="scaled_dot_product_attention.*is_causal=True is not supported"):
        fpq.convert(Causal(), fmt="int8")

    class Unquantized(SDPA):
        def forward(self, x):
            return torch.exp(self.q(x)) @ self.k(x).transpose(-2, -1)
    with pytest.raises(ValueError, match="operand 0 of matmul 'matmul'.*not come from a layer fpq quantizes"):
        fpq.convert(Unquantized(), fmt="int8")

    class SharedQ(SDPA):   # a non-po2 scale with q read twice: cannot be folded into its Linear
        def forward(self, x):
            q = self.q(x)
            return (q @ self.k(x).transpose(-2, -1) * 0.3) @ q
    with pytest.raises(ValueError, match="scale 0.3.*not a power of two"):
        fpq.convert(SharedQ(), fmt="int8")


def test_rotary_embedding_is_refused_naming_the_node():
    class Rotary(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = nn.Linear(16, 16)
            self.register_buffer("cos", torch.randn(8, 16))
            self.register_buffer("sin", torch.randn(8, 16))

        def forward(self, x):
            q = self.q(x)
            rot = torch.cat([-q[..., 8:], q[..., :8]], -1)
            return q * self.cos + rot * self.sin
    with pytest.raises(ValueError, match="fpq.convert: node '(getitem|cos|neg)"):
        fpq.convert(Rotary(), fmt="int8")


def test_sequence_length_is_fixed_by_the_example_input():
    """No dynamic sequence length: the export needs an example input (the model cannot guess T), and
    the exported graph refuses another T, naming the shape it was built for."""
    q = fpq.convert(tiny_encoder(blocks=1, scale=0.25), fmt="int8")
    with pytest.raises(ValueError, match="export_qonnx needs example_input"):
        fpq.export_qonnx(q, None)
    emu = Emulator(read_graph(fpq.export_qonnx(q, None, torch.zeros((1,) + SHAPE))))
    with pytest.raises(ValueError, match=r"expected \(N, 8, 16\)"):
        emu(np.zeros((2, 6, 16), np.float32))


def test_reader_refuses_a_matmul_with_an_unquantized_operand():
    """A QONNX MatMul of two dynamic tensors whose operand has no quantizer is refused by name."""
    import onnx
    from onnx import TensorProto, helper
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, [1, 4, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 4])
    consts = [helper.make_tensor(n, TensorProto.FLOAT, [], [v]) for n, v in (("s", 0.125), ("z", 0.0), ("b", 8.0))]
    quant = helper.make_node("Quant", ["a", "s", "z", "b"], ["aq"], domain="qonnx.custom_op.general", signed=1,
                             narrow=0, rounding_mode="ROUND", name="q")
    g = helper.make_graph([quant, helper.make_node("Transpose", ["a"], ["at"], perm=[0, 2, 1], name="t"),
                           helper.make_node("MatMul", ["aq", "at"], ["y"], name="mm")], "g", [a], [y],
                          initializer=consts)
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 13),
                                                helper.make_opsetid("qonnx.custom_op.general", 1)])
    model = onnx.shape_inference.infer_shapes(model)
    with pytest.raises(fpq.export.UnsupportedGraphError, match="MatMul node 'mm': operand 1.*no quantizer"):
        read_graph(model)


def test_matmul_tensor_types_in_the_plan_name_both_operands():
    q = _calibrated(tiny_encoder(blocks=1, scale=0.25), fmt="int8")
    plan = fpq.plan(q, torch.zeros((1,) + SHAPE))
    qk, av = [lp for lp in plan if lp.op == "matmul"]
    acc = qk.tensors["accumulator"]   # the exact sum shifted by the scale; its int8 quantizer (a cast) is fused
    assert qk.attrs["exact_output"] == Fixed(acc.width, acc.int_bits - 2, acc.signed)
    requant = plan.layers[list(plan.layers)[list(plan.layers).index(qk.name) + 1]]
    assert requant.op == "quant" and str(requant.tensors["output"].format) == "int8"
    assert requant.attrs["fused_into"] == qk.name and qk.tensors["output"] == requant.tensors["output"]
    assert isinstance(av.tensors["input"], TensorType) and isinstance(av.tensors["other"], TensorType)
    assert av.fan_in == 8 and av.attrs["alpha_exp"] == 0   # A (B, h, T, T) @ V (B, h, T, dh): K = T
    assert [r[2] for r in plan.rows() if r[0] == av.name][:2] == ["input", "other"]


def test_matmuls_and_token_means_take_overrides_by_node_name():
    """Each product of activations is a layer of the policy, named after its fx node; overrides reach it."""
    q = fpq.convert(tiny_encoder(blocks=1, scale=0.25), fmt="int8", overrides={"matmul_1": "e4m3"})
    mms = {n: m for n, m in q.named_modules() if isinstance(m, FpqMatMul)}
    assert sorted(mms) == ["matmul", "matmul_1"] and mms["matmul"].alpha == 0.25
    assert str(mms["matmul_1"].fpq_output.fmt) == "e4m3" and str(mms["matmul"].fpq_output.fmt) == "int8"
    assert q.fpq_policy.layers["matmul_1"] == {"activations": "e4m3"}


def test_token_mean_keepdim_and_feature_map_means_are_left_alone():
    class Keep(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(16, 4)

        def forward(self, x):
            return self.fc(x).mean(dim=1, keepdim=True)   # (B, 1, 4)
    m = Keep().eval()
    q = _calibrated(m, fmt="int8")
    x = torch.randn(3, 8, 16)
    assert q(x).shape == (3, 1, 4) and torch.allclose(q(x), m(x), atol=0.1)
    all_paths_exact(q, SHAPE, n=100, qonnx_subset=2)

    class Conv(nn.Module):   # a conv map's mean over its channels stays refused by fpq.functional
        def __init__(self):
            super().__init__()
            self.c = nn.Conv1d(2, 4, 3)

        def forward(self, x):
            return self.c(x).mean(1)
    with pytest.raises(ValueError, match="mean over dims \\[1\\] of a 3-D feature map"):
        fpq.convert(Conv(), fmt="int8")


def test_learned_positional_embedding_is_a_quantized_constant_added_exactly():
    """x + self.pos: the parameter is quantized with the weights format, added exactly, and read back as a
    typed add_const (input, other = the embedding's type, output = the exact sum's): exact on every path."""
    q = _calibrated(tiny_encoder(blocks=1, scale=0.25, tokens=8), weights="e4m3", activations="int8")
    pe = dict(q.named_modules())["pos"]
    assert type(pe).__name__ == "FpqPositional" and str(pe.weight_quant.fpq_output.fmt) == "e4m3"
    g, _ = all_paths_exact(q, SHAPE, n=100, qonnx_subset=1)
    op = next(op for op in g if op.kind == "add_const")
    assert str(op.types["other"].format) == "e4m3" and isinstance(op.types["output"].format, Fixed)
    assert Emulator(g).exact[op.name]


@pytest.mark.parametrize("norm_first, activation", [(True, "gelu"), pytest.param(False, "relu", marks=pytest.mark.slow)])
def test_torch_transformer_encoder_takes_the_hand_written_path(norm_first, activation):
    """nn.TransformerEncoder of nn.TransformerEncoderLayer (batch_first): rewritten module by module; the
    float rewrite equals torch's layer (eval), the converted model is exact on every path."""
    from fpq.nn.attention import HandEncoder

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.inp = nn.Linear(16, 16)
            layer = nn.TransformerEncoderLayer(16, 2, 32, batch_first=True, activation=activation, norm_first=norm_first)
            self.enc = nn.TransformerEncoder(layer, 1, enable_nested_tensor=False)
            self.head = nn.Linear(16, 3)

        def forward(self, x):
            return self.head(self.enc(self.inp(x)).mean(1))
    torch.manual_seed(3)
    m = M().eval()
    x = torch.randn(4, 8, 16)
    with torch.no_grad():
        assert torch.allclose(HandEncoder(m.enc, "enc")(x), m.enc(x), atol=1e-5)
    q = _calibrated(m, fmt="int8")
    assert sum(isinstance(mm, FpqMatMul) for mm in q.modules()) == 2
    all_paths_exact(q, SHAPE, n=100, qonnx_subset=1)

    class Masked(M):
        def forward(self, x):
            return self.head(self.enc(self.inp(x), mask=torch.zeros(8, 8)).mean(1))
    with pytest.raises(ValueError, match="TransformerEncoder 'enc' is called with a mask"):
        fpq.convert(Masked(), fmt="int8")


def test_a_converted_encoder_converts_again_and_trains():
    """fpq.convert of a converted encoder (another format; matmuls, their scale and the positional
    embedding come back as themselves, unchanged scales carried), and a QAT step reaches every Linear."""
    q = _calibrated(tiny_encoder(blocks=1, scale=0.25, tokens=8), fmt="int8")
    again = fpq.convert(q, fmt="int8", overrides={"matmul_1": "e4m3"})
    mms = {n: m for n, m in again.named_modules() if isinstance(m, FpqMatMul)}
    assert sorted(mms) == ["matmul", "matmul_1"] and mms["matmul"].alpha == 0.25
    assert type(dict(again.named_modules())["pos"]).__name__ == "FpqPositional"
    same = dict(q.named_modules())["matmul.quant"].fpq_output.log2_scale
    assert torch.equal(mms["matmul"].quant.fpq_output.log2_scale, same)
    x = torch.randn(64, 8, 16)
    assert torch.equal(fpq.convert(q, fmt="int8")(x), q(x))   # same formats: the same model
    q.train()
    q(x).pow(2).mean().backward()
    lins = [m for m in q.modules() if isinstance(m, nn.Linear)]
    assert lins and all(m.weight.grad is not None and m.weight.grad.abs().sum() > 0 for m in lins)


class _TokenModel(nn.Module):
    """Token ids (B, 8) -> nn.Embedding(20, 16) + a learned positional embedding -> one block -> mean -> head."""

    def __init__(self):
        super().__init__()
        from fpq.testing.transformer import EncoderBlock
        self.emb, self.pos = nn.Embedding(20, 16), nn.Parameter(torch.randn(1, 8, 16) * 0.5)
        self.block, self.head = EncoderBlock(16, 2, scale=0.25), nn.Linear(16, 3)

    def forward(self, ids):
        return self.head(self.block(self.emb(ids) + self.pos).mean(1))


def test_token_embedding_is_an_exact_table_lookup():
    """nn.Embedding reads float token ids through a ufixed<5,5> input quantizer (the identity on 0 .. 31);
    its table (20 rows, padded with zeros to 32) quantized with the weights format; a gather op in the
    graph; every path exact, probe ids (off-grid, ties, saturating) included."""
    torch.manual_seed(4)
    m = _TokenModel().eval()
    with pytest.raises(ValueError, match=r"'emb' \(nn.Embedding of 20 tokens\) reads token ids.*inputs='ufixed<5,5"):
        fpq.convert(m, fmt="int8")
    q = fpq.convert(m, weights="e4m3", activations="int8", inputs="ufixed<5,5>")
    ids = torch.randint(0, 20, (256, 8))
    fpq.calibrate(q, [ids.float()], progress=False)
    q.eval()
    assert torch.equal(dict(q.named_modules())["emb"].weight[20:], torch.zeros(12, 16))
    with torch.no_grad():   # on valid ids the lookup is the float table's rows, quantized
        assert torch.allclose(q(ids[:16].float()), m(ids[:16]), atol=0.3)
    g, _ = all_paths_exact(q, (8,), n=300, qonnx_subset=2)
    op = next(op for op in g if op.kind == "gather")
    assert op.weight.shape == (32, 16) and str(op.types["weight"].format) == "e4m3"
    assert op.types["output"] == op.types["weight"] and "product" not in fpq.plan(g)[op.name].tensors
    again = fpq.convert(q, weights="e4m3", activations="int8", inputs="ufixed<5,5>")   # converts again, same model
    assert torch.equal(again(ids[:64].float()), q(ids[:64].float()))
