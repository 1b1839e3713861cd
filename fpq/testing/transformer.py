"""A small transformer encoder for tests and examples (issue 22): token features (B, T, d) -> an input
Linear -> ``blocks`` pre-LayerNorm blocks (multi-head self-attention, GELU MLP, residual adds) ->
mean over the tokens -> a classifier head. The attention is the hand-written form (Q/K/V Linear,
``q @ k.transpose(-2, -1) * scale``, softmax, ``@ v``, output Linear) or ``nn.MultiheadAttention``
(``mha=True``), which fpq.convert rewrites into the same form."""
from __future__ import annotations

import torch
from torch import nn

from ..nn.bert import SelfAttention  # noqa: F401  (the written-out attention, defined once there)


class MHAWrapper(nn.Module):
    """nn.MultiheadAttention (batch_first) called as self-attention, output only."""

    def __init__(self, d: int = 16, heads: int = 2):
        super().__init__()
        self.mha = nn.MultiheadAttention(d, heads, batch_first=True)

    def forward(self, x):
        return self.mha(x, x, x, need_weights=False)[0]


class EncoderBlock(nn.Module):
    def __init__(self, d: int = 16, heads: int = 2, mha: bool = False, scale: float | None = None):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.attn = MHAWrapper(d, heads) if mha else SelfAttention(d, heads, scale)
        self.fc1, self.act, self.fc2 = nn.Linear(d, 2 * d), nn.GELU(), nn.Linear(2 * d, d)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyEncoder(nn.Module):
    """(B, tokens, features) -> (B, classes)."""

    def __init__(self, features: int = 16, d: int = 16, heads: int = 2, blocks: int = 2, classes: int = 5,
                 mha: bool = False, scale: float | None = None, tokens: int | None = None):
        super().__init__()
        self.embed = nn.Linear(features, d)
        # tokens: a learned positional embedding (1, tokens, d) added after the input Linear
        self.pos = None if tokens is None else nn.Parameter(torch.randn(1, tokens, d) * 0.5)
        self.blocks = nn.Sequential(*(EncoderBlock(d, heads, mha, scale) for _ in range(blocks)))
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.embed(x)
        x = self.blocks(x if self.pos is None else x + self.pos)
        return self.head(x.mean(1))    # mean pooling over the tokens


def tiny_encoder(seed: int = 0, **kw) -> TinyEncoder:
    """A TinyEncoder with seeded weights, in eval mode."""
    torch.manual_seed(seed)
    return TinyEncoder(**kw).eval()


class PostLNBlock(nn.Module):
    """A BERT-style (post-LayerNorm) encoder layer: x = LN1(x + attn(x)); x = LN2(x + fc2(GELU(fc1(x))))."""

    def __init__(self, d: int, heads: int, hidden: int, eps: float = 1e-12):
        super().__init__()
        self.attn = SelfAttention(d, heads)
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.fc2(self.act(self.fc1(x))))


@torch.no_grad()
def bert_layer(layer, heads: int) -> PostLNBlock:
    """The PostLNBlock holding the weights of one HF ``BertLayer`` (attention.self.query / key / value,
    attention.output.dense / LayerNorm, intermediate.dense, output.dense / LayerNorm; GELU (erf))."""
    sa, so = layer.attention.self, layer.attention.output
    d, hidden = sa.query.in_features, layer.intermediate.dense.out_features
    block = PostLNBlock(d, heads, hidden, so.LayerNorm.eps)
    pairs = [(block.attn.q, sa.query), (block.attn.k, sa.key), (block.attn.v, sa.value), (block.attn.out, so.dense),
             (block.ln1, so.LayerNorm), (block.fc1, layer.intermediate.dense), (block.fc2, layer.output.dense),
             (block.ln2, layer.output.LayerNorm)]
    for mine, theirs in pairs:
        mine.load_state_dict(theirs.state_dict())
    return block.eval()
