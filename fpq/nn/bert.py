"""A Hugging Face ``BertModel`` (e.g. all-MiniLM-L6-v2) rebuilt in fpq's encoder form, at a fixed
sequence length, so that ``fpq.convert`` takes it whole (issue 22).

The form (``BertEncoderForm``), written from the model's weights, not from transformers' code:
token ids (B, T) -> the word-embedding table (``nn.Embedding``: fpq.convert makes it a quantized
table, ``fpq.nn.embedding``) -> plus one learned (1, T, d) positional table (the first T rows of the
position embeddings plus the token-type-0 row, summed once here in float32: every sentence is one
segment, so the token-type lookup is a constant) -> the embedding LayerNorm -> the encoder layers
(post-LayerNorm: x = LN1(x + attn(x)); x = LN2(x + fc2(GELU(fc1(x)))), attention written out as
Q/K/V Linears, ``q @ k.transpose(-2, -1) * head_dim ** -0.5``, softmax, ``@ v``, output Linear) ->
the mean over the T tokens (sentence-transformers' mean pooling with an attention mask of ones).
The pooler (tanh Linear on [CLS]) is left out: sentence embeddings do not use it. Dropout is
absent (inference).

What a fixed-shape graph cannot hold is refused by name (``check_hf_model``): no sequence length
(dynamic shapes), decoders and cross-attention (causal / decoder masks), relative or rotary
position embeddings, activations other than erf GELU, other HF model classes, and T beyond the
position table. The network has no attention-mask input: every one of the T tokens is attended to
and pooled; ``fpq.testing.minilm.fixed_length_ids`` says how sentences are fitted to T.
"""
from __future__ import annotations

import math

import torch
from torch import nn


class SelfAttention(nn.Module):
    """Multi-head self-attention written out; ``scale`` None: 1/sqrt(head_dim) (what
    nn.MultiheadAttention uses; a power of two only for head_dim 4, 16, 64, ...)."""

    def __init__(self, d: int = 16, heads: int = 2, scale: float | None = None):
        super().__init__()
        if d % heads:
            raise ValueError(f"d={d} is not a multiple of heads={heads}")
        self.heads, self.head_dim = heads, d // heads
        self.scale = 1.0 / math.sqrt(self.head_dim) if scale is None else float(scale)
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))
        self.softmax = nn.Softmax(-1)

    def forward(self, x):
        b, h, dh = x.size(0), self.heads, self.head_dim
        q = self.q(x).view(b, -1, h, dh).transpose(1, 2)      # (B, h, T, dh)
        k = self.k(x).view(b, -1, h, dh).transpose(1, 2)
        v = self.v(x).view(b, -1, h, dh).transpose(1, 2)
        a = self.softmax(q @ k.transpose(-2, -1) * self.scale)   # (B, h, T, T)
        o = (a @ v).transpose(1, 2).reshape(b, -1, h * dh)        # (B, T, d)
        return self.out(o)


class _Layer(nn.Module):
    """One post-LayerNorm encoder layer."""

    def __init__(self, d: int, heads: int, hidden: int, eps: float):
        super().__init__()
        self.attn = SelfAttention(d, heads, scale=(d // heads) ** -0.5)   # as the results were measured
        self.ln1, self.ln2 = nn.LayerNorm(d, eps=eps), nn.LayerNorm(d, eps=eps)
        self.fc1, self.act, self.fc2 = nn.Linear(d, hidden), nn.GELU(), nn.Linear(hidden, d)

    def forward(self, x):
        x = self.ln1(x + self.attn(x))
        return self.ln2(x + self.fc2(self.act(self.fc1(x))))


class BertEncoderForm(nn.Module):
    """Token ids (B, T) -> mean-pooled sentence embedding (B, d): a BertModel in fpq's encoder form.

    Built by ``from_bert``; module names: ``word`` (the token table), ``pos`` (the (1, T, d)
    positional table), ``ln`` (the embedding LayerNorm), ``layers.<i>.attn.{q,k,v,out}``,
    ``layers.<i>.{ln1,fc1,act,fc2,ln2}``. The float module takes integer ids; the model
    ``fpq.convert`` returns takes them as a float tensor (fpq's one float input).

    Args:
        vocabulary (int): rows of the token table.
        d (int): hidden size.
        heads (int): attention heads (``d`` must be a multiple).
        hidden (int): the MLP's hidden size.
        layers (int): encoder layers.
        tokens (int): the fixed sequence length T.
        eps (float): the LayerNorms' epsilon.

    Returns:
        BertEncoderForm: the module, with untrained weights (``from_bert`` loads a model's).

    Raises:
        ValueError: ``d`` is not a multiple of ``heads``.

    Example:
        >>> import torch
        >>> from fpq.nn.bert import BertEncoderForm
        >>> m = BertEncoderForm(vocabulary=50, d=8, heads=2, hidden=16, layers=1, tokens=4).eval()
        >>> m(torch.randint(0, 50, (3, 4))).shape
        torch.Size([3, 8])
    """

    def __init__(self, vocabulary: int, d: int, heads: int, hidden: int, layers: int, tokens: int,
                 eps: float = 1e-12):
        super().__init__()
        if d % heads:
            raise ValueError(f"hidden size {d} is not a multiple of {heads} heads")
        self.word = nn.Embedding(vocabulary, d)
        self.pos = nn.Parameter(torch.zeros(1, tokens, d))
        self.ln = nn.LayerNorm(d, eps=eps)
        self.layers = nn.ModuleList(_Layer(d, heads, hidden, eps) for _ in range(layers))

    def forward(self, ids):
        """The mean-pooled sentence embedding of token ids.

        Args:
            ids (torch.Tensor): token ids (B, T), int64 (a float tensor of integers once converted).

        Returns:
            torch.Tensor: (B, d), the last hidden state averaged over the T tokens (not normalized).
        """
        x = self.ln(self.word(ids) + self.pos)
        for layer in self.layers:
            x = layer(x)
        return x.mean(1)


def _is_hf(model) -> bool:
    return type(model).__module__.startswith("transformers.") and hasattr(model, "config")


def check_hf_model(model, sequence_length) -> None:
    """Refuse, naming the reason, a Hugging Face model that ``from_bert`` cannot rebuild at a fixed length.

    Args:
        model (torch.nn.Module): a transformers model.
        sequence_length (int | None): the fixed number of tokens T asked for.

    Raises:
        ValueError: not a ``BertModel`` (rotary position embeddings named where the config has them),
            no ``sequence_length`` (dynamic shapes), a decoder or cross-attention (decoder masks),
            relative position embeddings, an activation other than erf GELU, or T outside
            1 .. max_position_embeddings.

    Example:
        >>> import transformers
        >>> from fpq.nn.bert import check_hf_model
        >>> cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                               num_attention_heads=2, intermediate_size=16)
        >>> check_hf_model(transformers.BertModel(cfg), None)
        Traceback (most recent call last):
        ...
        ValueError: fpq.convert: BertModel takes any sequence length (dynamic shapes); fpq builds fixed shapes: pass sequence_length=T
    """
    cfg, name = model.config, type(model).__name__
    pe = str(getattr(cfg, "position_embedding_type", "absolute"))
    rotary = [k for k in ("rope_theta", "rotary_dim", "rotary_pct", "rope_scaling", "rotary_value")
              if getattr(cfg, k, None) is not None] or (["position_embedding_type=" + pe] if "rot" in pe else [])
    why = None
    if rotary or "rotary" in name.lower() or getattr(cfg, "model_type", "") in ("roformer", "rembert"):
        why = f"{name} uses rotary position embeddings ({', '.join(rotary) or cfg.model_type}), which fpq does not build"
    elif name != "BertModel":
        inner = " (pass its .bert, the BertModel inside)" if hasattr(model, "bert") else ""
        why = (f"{name} (model_type {getattr(cfg, 'model_type', '?')!r}) is not supported{inner}; fpq converts a "
               "Hugging Face BertModel (e.g. all-MiniLM-L6-v2) whole")
    elif sequence_length is None:
        why = f"{name} takes any sequence length (dynamic shapes); fpq builds fixed shapes: pass sequence_length=T"
    elif getattr(cfg, "is_decoder", False) or getattr(cfg, "add_cross_attention", False):
        why = f"{name} is configured as a decoder (is_decoder / add_cross_attention): decoder (causal) masks and " \
              "cross-attention are not supported; fpq builds unmasked encoders"
    elif pe != "absolute":
        why = f"{name} has position_embedding_type={pe!r}; only absolute (learned) position embeddings are supported"
    elif cfg.hidden_act != "gelu":
        why = f"{name} has hidden_act={cfg.hidden_act!r}; only 'gelu' (erf) is supported"
    elif not isinstance(sequence_length, int) or not 1 <= sequence_length <= cfg.max_position_embeddings:
        why = f"sequence_length={sequence_length!r} must be an int in 1 .. {cfg.max_position_embeddings} " \
              "(the position table's rows)"
    if why is not None:
        raise ValueError("fpq.convert: " + why)


@torch.no_grad()
def from_bert(model, sequence_length: int) -> BertEncoderForm:
    """A Hugging Face ``BertModel`` rebuilt as a ``BertEncoderForm`` of fixed length T (module docstring).

    ``fpq.convert(bert_model, sequence_length=T, ...)`` calls this. Its float forward on ids (B, T)
    equals the BertModel's last hidden state averaged over the tokens (attention mask of ones) up to
    float32 rounding (about 3e-6 on all-MiniLM-L6-v2).

    Args:
        model (transformers.BertModel): the float model (not changed).
        sequence_length (int): T, the number of tokens of every input.

    Returns:
        BertEncoderForm: the rebuilt model, in eval mode.

    Raises:
        ValueError: what ``check_hf_model`` refuses.

    Example:
        >>> import torch, transformers
        >>> from fpq.nn.bert import from_bert
        >>> cfg = transformers.BertConfig(vocab_size=50, hidden_size=8, num_hidden_layers=1,
        ...                               num_attention_heads=2, intermediate_size=16)
        >>> bert = transformers.BertModel(cfg, add_pooling_layer=False).eval()
        >>> form = from_bert(bert, 6)
        >>> ids = torch.randint(0, 50, (2, 6))
        >>> ref = bert(input_ids=ids).last_hidden_state.mean(1)
        >>> bool((form(ids) - ref).abs().max() < 1e-5)
        True
    """
    check_hf_model(model, sequence_length)
    cfg, emb, t = model.config, model.embeddings, sequence_length
    form = BertEncoderForm(cfg.vocab_size, cfg.hidden_size, cfg.num_attention_heads, cfg.intermediate_size,
                           cfg.num_hidden_layers, t, cfg.layer_norm_eps)
    form.word.weight.copy_(emb.word_embeddings.weight)
    form.pos.copy_((emb.position_embeddings.weight[:t] + emb.token_type_embeddings.weight[0]).unsqueeze(0))
    form.ln.load_state_dict(emb.LayerNorm.state_dict())
    for mine, theirs in zip(form.layers, model.encoder.layer):
        sa, so = theirs.attention.self, theirs.attention.output
        for a, b in ((mine.attn.q, sa.query), (mine.attn.k, sa.key), (mine.attn.v, sa.value),
                     (mine.attn.out, so.dense), (mine.ln1, so.LayerNorm), (mine.fc1, theirs.intermediate.dense),
                     (mine.fc2, theirs.output.dense), (mine.ln2, theirs.output.LayerNorm)):
            a.load_state_dict(b.state_dict())
    return form.eval()


def prepare(model, sequence_length, inputs):
    """What fpq.convert converts: (model, inputs format). A Hugging Face model is checked and rebuilt
    (``from_bert``), its inputs format defaulting to the token ids' ``ufixed<b,b>``; any other model passes
    unchanged, ``sequence_length`` refused there."""
    from .embedding import ids_format
    if _is_hf(model):
        form = from_bert(model, sequence_length)
        return form, inputs if inputs is not None else ids_format(form.word.num_embeddings)
    if sequence_length is not None:
        raise ValueError(f"fpq.convert: sequence_length applies to a Hugging Face BertModel only, not to "
                         f"{type(model).__name__} (its shapes come from the example input)")
    return model, inputs
