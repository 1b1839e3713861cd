"""The reference SignRound (Intel's auto-round 0.16.1) on all-MiniLM-L6-v2, on the split, calibration
sentences, bits, group size and metrics of examples/minilm_ptq.py, for issue 19's comparison with
``fpq.ptq(q, batches, methods=["signround"])``.

auto-round is not an fpq dependency: it needs datasets, pyarrow, pandas, accelerate, psutil and
py-cpuinfo besides torch and transformers, and its own requirements would let pip replace the
pinned torch. It installs beside fpq's environment, without touching torch, into a folder of its own:

    pip download auto-round==0.16.1 --no-deps -d wheels
    pip install --no-deps --target ar_site wheels/auto_round-0.16.1-py3-none-any.whl \\
        py-cpuinfo accelerate psutil datasets pyarrow dill multiprocess xxhash pandas
    PYTHONPATH=ar_site python examples/minilm_autoround.py --bits 4 --seed 0

auto-round drops calibration sequences shorter than its ``seqlen``, so the calibration sentences
are padded to ``--max-length`` (with their attention mask); it leaves the weights fake-quantized
(round-trip values) in the model's nn.Linear layers, which are evaluated as they are.
"""
from __future__ import annotations

import argparse
import copy
import json
import time

import torch

from fpq.testing import minilm as M


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--bits", type=int, default=4)
    p.add_argument("--group", type=int, default=128)
    p.add_argument("--iters", type=int, default=200)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-calib", type=int, default=128)
    p.add_argument("--n-eval", type=int, default=512)
    p.add_argument("--max-length", type=int, default=48)
    p.add_argument("--threads", type=int, default=1)
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    from auto_round import AutoRound

    tok, model = M.load_minilm()
    cal, ev = M.split(M.load_sentences(), a.n_calib, a.n_eval, seed=a.seed)
    data = []
    for i in range(0, len(cal), 32):
        enc = tok(cal[i:i + 32], padding="max_length", truncation=True, max_length=a.max_length, return_tensors="pt")
        data.append({k: enc[k] for k in ("input_ids", "attention_mask", "token_type_ids")})
    ref = M.embeddings(model, tok, ev, 32, a.max_length)
    t0 = time.time()
    ar = AutoRound(copy.deepcopy(model), tokenizer=tok, bits=a.bits, group_size=a.group, sym=True, dataset=data,
                   iters=a.iters, nsamples=len(cal), seqlen=a.max_length, batch_size=32, device_map="cpu", seed=a.seed)
    qmodel = ar.quantize()[0]
    out = dict(M.metrics(ref, M.embeddings(qmodel.eval(), tok, ev, 32, a.max_length)), method="auto-round 0.16.1",
               format=f"int{a.bits}", group=a.group, iters=a.iters, seed=a.seed, seconds=round(time.time() - t0, 1))
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
