"""One encoder layer of all-MiniLM-L6-v2 (d=384, 12 heads, MLP 1536) through fpq's transformer path
(issue 22): rebuilt as the hand-written form (fpq.testing.transformer.bert_layer), converted at e4m3
weights x int8 activations, calibrated on real hidden states, emulated bit-exactly (numpy == torch),
and compared with the float layer (per-token cosine).

    HF_HUB_OFFLINE=1 PYTHONPATH=. python examples/minilm_layer.py [layer] [n_sentences] [activations]

Sentences are cut to 16 tokens without padding, so no attention mask is needed (fpq refuses masks).
"""
import os
import sys
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fpq  # noqa: E402
from fpq.emulate import Emulator  # noqa: E402
from fpq.export import read_graph  # noqa: E402
from fpq.testing import minilm  # noqa: E402
from fpq.testing.transformer import bert_layer  # noqa: E402

TOKENS = 16


def hidden_states(tok, model, sentences, layer):
    """The input of encoder layer ``layer`` for sentences of at least TOKENS tokens, cut to TOKENS."""
    enc = tok(sentences, return_tensors="pt", truncation=True, max_length=TOKENS, padding=False)
    keep = [i for i, ids in enumerate(enc["input_ids"]) if len(ids) == TOKENS]
    ids = torch.stack([torch.as_tensor(enc["input_ids"][i]) for i in keep])
    with torch.no_grad():
        out = model(input_ids=ids, output_hidden_states=True)
    return out.hidden_states[layer]


def main(layer=0, n=256, activations="int8"):
    t0 = time.perf_counter()
    tok, model = minilm.load_minilm()
    sentences = minilm.load_sentences()
    enc_in = [s for s in sentences if len(s) > 90][:2 * n]
    x = hidden_states(tok, model, enc_in, layer)
    calib, test = x[: len(x) // 2], x[len(x) // 2:]
    block = bert_layer(model.encoder.layer[layer], model.config.num_attention_heads)
    with torch.no_grad():
        ref = model.encoder.layer[layer](test)[0] if isinstance(model.encoder.layer[layer](test), tuple) else \
            model.encoder.layer[layer](test)
        mine = block(test)
    print(f"float rebuild vs HF layer: max |diff| {float((ref - mine).abs().max()):.2e}")
    q = fpq.convert(block, weights="e4m3", activations=activations)
    fpq.calibrate(q, [calib], progress=False)
    q.eval()
    g = read_graph(fpq.export_qonnx(q, None, test[:1]))
    xt = test.numpy().astype(np.float32)
    with torch.no_grad():
        y_t = q(torch.from_numpy(xt)).numpy()
    y_n = Emulator(g)(xt)
    y_e = Emulator(g, backend="torch")(torch.from_numpy(xt)).numpy()
    cos = torch.nn.functional.cosine_similarity(torch.from_numpy(y_n).double(), mine.double(), dim=-1).flatten()
    print(f"layer {layer}: {len(test)} sentences x {TOKENS} tokens, e4m3 weights x {activations} activations")
    print(f"torch == emulator (numpy) == emulator (torch): {np.array_equal(y_t, y_n) and np.array_equal(y_n, y_e)}")
    print(f"per-token cosine to the float layer: mean {float(cos.mean()):.4f}, 5th percentile "
          f"{float(cos.quantile(0.05)):.4f}, min {float(cos.min()):.4f}")
    print(f"matmul layers: {[(lp.name, str(lp.tensors['accumulator'])) for lp in fpq.plan(g) if lp.op == 'matmul']}")
    print(f"{time.perf_counter() - t0:.1f} s")


if __name__ == "__main__":
    main(*(int(a) for a in sys.argv[1:3]), *sys.argv[3:4])
