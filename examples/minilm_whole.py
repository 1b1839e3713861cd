"""all-MiniLM-L6-v2 converted whole (issue 22): ``fpq.convert(bert_model, sequence_length=T)`` rebuilds
the BertModel in fpq's encoder form (``fpq.nn.bert``: the token table as a quantized table, the
positional table, the embedding LayerNorm, all 6 layers, mean pooling) and quantizes everything:
every Linear, the tables, Q K^T and A V (exact products), softmax, LayerNorm and GELU (exact
pipelines / tables), the residual adds and the pooling. Per configuration: calibration (or a PTQ
method from fpq.ptq), exact emulation on CPU (torch == numpy emulator == torch emulator, atol=0,
on some sentences), embedding cosine to the float model on the fixed evaluation split, and the cost
of one full encoder layer (layer 0) on xcvu9p by fpq.estimate_cost.

    HF_HUB_OFFLINE=1 PYTHONPATH=. python examples/minilm_whole.py --quick
    HF_HUB_OFFLINE=1 PYTHONPATH=. python examples/minilm_whole.py --md examples/results/minilm_whole.md

Sentences (fpq.testing.minilm): the evaluation split of ``split`` (the same for every seed) and a
calibration sample from the calibration pool, each fitted to T tokens by ``fixed_length_ids``: the
converted network has no attention-mask input, so only sentences of at least T tokens are used,
truncated to T ([CLS] + T - 2 word pieces + [SEP]); no padding is computed. The float reference is
the HF model on the same T ids (mask of ones). The file also prints how far truncation alone
moves the float embedding from the full-sentence one (context, not a quantization error).

Formats: "A x B" = weights A x activations B. LayerNorm's exact pipeline needs a fixed-point input
(e4m3's range needs a 72-bit variance), so with e4m3 activations the LayerNorm inputs (the
embedding sum ``pos`` and the residual adds ``add*``) are int12 ("/ int12 LN in"); "+ branches"
also gives int12 to the outputs of the two Linears that feed the residual adds (``attn.out``,
``fc2``), whose outliers int8 clips.
"""
from __future__ import annotations

import argparse
import os
import shlex
import statistics
import time

import numpy as np
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import fpq  # noqa: E402
from fpq.emulate import Emulator  # noqa: E402
from fpq.export import read_graph  # noqa: E402
from fpq.nn.bert import from_bert  # noqa: E402
from fpq.testing import minilm as M  # noqa: E402

LN_IN = {"pos": {"activations": "int12"}, "add*": {"activations": "int12"}}
BRANCHES = {"layers.*.attn.out": {"activations": "int12"}, "layers.*.fc2": {"activations": "int12"}}
CONFIGS = {
    "e4m3 x e4m3 / int12 LN in": dict(weights="e4m3", activations="e4m3", overrides=LN_IN),
    "e4m3 x int8": dict(weights="e4m3", activations="int8"),
    "e4m3 x int8 / int12 LN in + branches": dict(weights="e4m3", activations="int8", overrides={**LN_IN, **BRANCHES}),
    "int8 x int8 / int12 LN in + branches": dict(weights="int8", activations="int8", overrides={**LN_IN, **BRANCHES}),
    "e4m3 x int8 / int12 LN in": dict(weights="e4m3", activations="int8", overrides=LN_IN),
    "int8 x int8 / int12 LN in": dict(weights="int8", activations="int8", overrides=LN_IN),
    "int8 everywhere": dict(fmt="int8"),
}


def layer_cost(g):
    """estimate_cost rows of encoder layer 0 of the exported graph ``g``: from its first module to its last
    in graph order (the IR names them linear_layers_0_attn_q .. layernorm_layers_0_ln2), the matmuls and
    adds between included; summed."""
    cost = fpq.estimate_cost(fpq.plan(g), part="xcvu9p")
    names = [r["layer"] for r in cost.layers]
    inside = [i for i, n in enumerate(names) if "layers_0_" in n]
    rows = cost.layers[inside[0]:inside[-1] + 1]
    return {k: sum(r.get(k) or 0 for r in rows) for k in ("lut", "ff", "dsp", "bram18")}, [r["layer"] for r in rows]


def exact_check(q, g, ids):
    """torch == numpy emulator == torch emulator of the exported graph ``g``, bit for bit, on ``ids`` (float)."""
    x = ids.numpy().astype(np.float32)
    with torch.no_grad():
        y_t = q(ids).numpy()
    y_n = Emulator(g)(x)
    y_e = Emulator(g, backend="torch")(torch.from_numpy(x)).numpy()
    return bool(np.array_equal(y_t, y_n) and np.array_equal(y_n, y_e)), float(np.abs(y_t - y_n).max())


def run(name, kw, model, T, cal, ev, ref, a):
    t0 = time.time()
    q = fpq.convert(model, sequence_length=T, **kw)
    cal_b = [cal[i:i + a.batch].float() for i in range(0, len(cal), a.batch)]
    if a.method == "rtn":
        fpq.calibrate(q, cal_b, progress=False)
    else:
        fpq.ptq(q, cal_b, methods=[a.method], progress=False)
    q.eval()
    t_q = time.time() - t0
    emb = M.fixed_length_embed(q, ev, a.batch, float_ids=True)
    out = dict(M.metrics(ref, emb), config=name, method=a.method, quantize_s=round(t_q, 1),
               eval_s=round(time.time() - t0 - t_q, 1))
    t1 = time.time()
    g = read_graph(fpq.export_qonnx(q, None, ev[:1].float()))
    out["exact"], out["max_diff"] = exact_check(q, g, ev[:a.exact].float())
    out["cost"], out["cost_rows"] = layer_cost(g) if a.cost else ({}, [])
    out["check_s"] = round(time.time() - t1, 1)
    return out


def write_md(rows, path, a, info):
    lines = [f"# all-MiniLM-L6-v2 converted whole (issue 22), written by `examples/minilm_whole.py {shlex.join(a.argv)}`",
             "", info, "",
             "| config (weights x activations) | method | mean cos | p5 cos | 10-NN | exact (torch == emulators) "
             "| layer 0 LUT | FF | DSP | BRAM18 |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        c = r["cost"]
        lines.append(f"| {r['config']} | {r['method']} | {r['cos_mean']:.4f} | {r['cos_p5']:.4f} | {r['knn_agree']:.3f} | "
                     f"{r['exact']} ({a.exact} sentences) | {c.get('lut', 0):.3g} | {c.get('ff', 0):.3g} | "
                     f"{c.get('dsp', 0):.3g} | {c.get('bram18', 0):.3g} |")
    if rows and rows[0]["cost_rows"]:
        lines += ["", "Layer 0's cost sums the estimate_cost rows " + ", ".join(f"`{n}`" for n in rows[0]["cost_rows"]) +
                  " (xcvu9p, reuse factor 1, io_parallel, Latency: fully unrolled, every weight a constant)."]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="32 calibration / 64 evaluation sentences, 2 configs")
    p.add_argument("--configs", default=None, help="comma-separated names of CONFIGS (default: all)")
    p.add_argument("--method", default="rtn", help="rtn (calibration only) or a fpq.ptq method (gptq, ...)")
    p.add_argument("--tokens", type=int, default=16, help="T, the fixed sequence length")
    p.add_argument("--n-calib", type=int, default=64)
    p.add_argument("--n-eval", type=int, default=256, help="sentences of the fixed evaluation split (before "
                   "those shorter than T are left out)")
    p.add_argument("--exact", type=int, default=4, help="sentences checked bit for bit")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--no-cost", dest="cost", action="store_false")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--md", default=None)
    a = p.parse_args(argv)
    a.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    names = list(CONFIGS) if a.configs is None else a.configs.split(",")
    if a.quick:
        a.n_calib, a.n_eval, a.exact = 32, 64, 2
        names = names if a.configs else ["e4m3 x e4m3 / int12 LN in", "e4m3 x int8"]
    torch.set_num_threads(a.threads)
    tok, model = M.load_minilm()
    T = a.tokens
    cal_s, ev_s = M.split(M.load_sentences(), 512, a.n_eval, seed=0)
    cal, _ = M.fixed_length_ids(tok, cal_s, T)
    cal = cal[:a.n_calib]
    ev, kept = M.fixed_length_ids(tok, ev_s, T)
    form = from_bert(model, T)
    ref = M.fixed_length_embed(model, ev, a.batch)
    float_diff = float((M.fixed_length_embed(form, ev, a.batch) - ref).abs().max())
    full = M.embeddings(model, tok, [ev_s[i] for i in kept], a.batch, 128)
    trunc = (full * ref).sum(1)
    info = (f"T = {T} tokens; {len(ev)} of the {len(ev_s)} evaluation sentences have at least T tokens (the "
            f"others are left out: no mask input, no padding), {len(cal)} calibration sentences; CPU, {a.threads} "
            f"thread(s). Float rebuild (fpq.nn.bert) vs HF on the normalized embeddings: max |diff| {float_diff:.1e}. "
            f"Cosine to the float model on the same T ids (mean, 5th percentile) and 10-NN retrieval agreement. "
            f"Truncation alone (float, T ids vs the whole sentence): mean cos {float(trunc.mean()):.4f}, p5 "
            f"{float(torch.quantile(trunc, 0.05)):.4f}. Exact: the converted model's torch forward equals fpq's numpy "
            f"and torch emulators of its QONNX export bit for bit (atol=0).")
    print(info, flush=True)
    rows = []
    for name in names:
        r = run(name, CONFIGS[name], model, T, cal, ev, ref, a)
        rows.append(r)
        print({k: v for k, v in r.items() if k != "cost_rows"}, flush=True)
        if a.md:
            write_md(rows, a.md, a, info)
    print("\n| config | method | mean cos | p5 cos | 10-NN | exact | layer 0 LUT |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['config']} | {r['method']} | {r['cos_mean']:.4f} | {r['cos_p5']:.4f} | {r['knn_agree']:.3f} | "
              f"{r['exact']} | {r['cost'].get('lut', 0):.3g} |")
    print("statistics of the runs:", statistics.fmean(r["quantize_s"] + r["eval_s"] for r in rows), "s per config")
    return rows


if __name__ == "__main__":
    main()
