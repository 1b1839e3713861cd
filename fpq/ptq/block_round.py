"""Block-wise learned rounding (BRECQ, Li et al. 2021) on any fpq weight format.

learned_round chooses each layer's rounding alone, against that layer's output. Here the AdaRound
rounding variables (``learned_round.SoftRounding``, the same soft grid choice) of all weight
layers of a block are learned jointly, minimizing the error of the block's output against the
float network's output of the same block:

    mean((block_q(x_q; W_soft) - block_float(x_float)) ** 2) + reg * sum of AdaRound regularizers

with ``x_q`` the block's input in the quantized model (earlier blocks already rounded) and
``x_float`` the float network's. Within the block the activation quantizers stay on (their STE
passes the gradient), so the rounding sees and compensates what activation quantization does,
and errors the block cannot see (negative values a ReLU cuts, values a max-pool drops) do not
count. Blocks run in execution order; the last block's output is the network output.

What a block is: the graph is cut only where a single tensor is live (every later node depends
on what came before only through one node). A residual region is therefore never split: its
layers, the skip and the add are in one piece. Consecutive pieces are merged until a block holds
``block_layers`` weight layers (default 2, BRECQ's basic-block size; 1 is a per-layer
reconstruction of the post-activation output); pieces without weight layers (ReLU, pooling,
flatten) end the block before them, so a block's output is taken after its activations. On the
digits CNN with 2: [conv1, conv2 (+ReLU, pool)] and [conv3 + residual add, pool, fc] (the logits).

Reimplemented rather than taken from Brevitas for the reasons given in learned_round.py. The
optimisation forward runs the fpq layers in training mode (float32 arithmetic; in eval mode the
layers' exact float64 path would split the products of unquantized soft weights); the guard
and the result use the exact eval forward. As for GPTQ and learned_round, a block keeps the
learned rounding only when its block-output error on the calibration data is not larger than
that of the starting point (the current weights, rounded to nearest).
"""
from __future__ import annotations

import contextlib

import torch
from torch import fx, nn

from . import _common as C
from .learned_round import SoftRounding


def _pieces(q):
    """The graph's nodes (no placeholders / output) split at every node after which a single
    tensor is live: [(nodes, cut node)], the cut node being the piece's last node."""
    nodes = [n for n in q.graph.nodes if n.op not in ("placeholder", "output")]
    pos = {n: i for i, n in enumerate(q.graph.nodes)}
    # last position at which each node is used
    last_use = {n: max((pos[u] for u in n.users), default=pos[n]) for n in q.graph.nodes}
    pieces, cur = [], []
    for n in nodes:
        cur.append(n)
        live = [d for d in q.graph.nodes if pos[d] <= pos[n] and last_use[d] > pos[n]]
        if live == [n] or (not live and n is nodes[-1]):
            pieces.append((cur, n))
            cur = []
    if cur:
        pieces.append((cur, cur[-1]))
    return pieces


def blocks(q, block_layers: int = 2):
    """[(block nodes, names of its weight layers)] in execution order (see the module docstring)."""
    if not isinstance(block_layers, int) or block_layers < 1:
        raise ValueError(f"block_round: block_layers must be an int >= 1, got {block_layers!r}")
    modules = dict(q.named_modules())
    out_node = next(n for n in q.graph.nodes if n.op == "output")
    if not isinstance(out_node.args[0], fx.Node):
        raise ValueError("block_round: the model returns several tensors "
                         f"({out_node.args[0]!r}); only a model with one output tensor is supported")
    calls = [n.target for n in q.graph.nodes if n.op == "call_module" and isinstance(modules[n.target], C.WEIGHT_LAYERS)]
    shared = sorted({c for c in calls if calls.count(c) > 1})
    if shared:
        raise ValueError(f"block_round: layer(s) {shared} are called more than once in the graph; their "
                         "rounding cannot be learned for one block; use learned_round or gptq")

    def layers_of(nodes):
        return [n.target for n in nodes if n.op == "call_module" and isinstance(modules[n.target], C.WEIGHT_LAYERS)]
    out = []
    for nodes, _ in _pieces(q):
        names = layers_of(nodes)
        if out and (not names or len(out[-1][1]) < block_layers):
            out[-1] = (out[-1][0] + nodes, out[-1][1] + names)   # activations / pooling join the block
        else:
            out.append((nodes, names))
    if out and not out[0][1] and len(out) > 1:                   # e.g. the input quantizer: no layer
        out[1] = (out[0][0] + out[1][0], out[1][1])
        out = out[1:]
    return [b for b in out if b[1]] if any(b[1] for b in out) else []


def block_module(q, nodes):
    """An fx.GraphModule computing ``nodes`` from the one tensor the block reads (q's modules, shared)."""
    inside = set(nodes)
    inputs = [a for n in nodes for a in n.all_input_nodes if a not in inside]
    if len({id(a) for a in inputs}) > 1:
        raise ValueError(f"block_round: block {[n.name for n in nodes]} reads several tensors "
                         f"({sorted({a.name for a in inputs})}); the graph was cut wrongly")
    g = fx.Graph()
    env = {}
    if inputs:
        env[inputs[0]] = g.placeholder("x")
    for n in nodes:
        env[n] = g.node_copy(n, lambda a: env[a])
    g.output(env[nodes[-1]])
    return fx.GraphModule(q, g)


@contextlib.contextmanager
def _train_arithmetic(q):
    """Training mode for the optimisation forward, except dropout and batch norm (kept in eval, so
    the block computes what the model computes)."""
    was = q.training
    q.train()
    for m in q.modules():
        if isinstance(m, (nn.Dropout, nn.modules.batchnorm._BatchNorm)):
            m.eval()
    try:
        yield
    finally:
        q.train(was)


def _run_blocks(q, sub, xs, *, float_weights=None):
    """The block's outputs (eval, one tensor per batch) on inputs ``xs``; with ``float_weights``
    in the float network (``_common.float_network``)."""
    ctx = C.float_network(q, float_weights) if float_weights is not None else contextlib.nullcontext()
    with ctx, C.eval_mode(q), torch.no_grad():
        return [C._value(sub(x)).detach() for x in xs]


def block_error(ys, targets) -> float:
    """mean((y - target) ** 2) over every element of every batch, in float64."""
    num = sum(float(torch.sum((y.to(torch.float64) - t.to(torch.float64)) ** 2)) for y, t in zip(ys, targets))
    return num / sum(t.numel() for t in targets)


@contextlib.contextmanager
def _drop_quantization(tqs, p: float, gen):
    """QDrop (Wei et al. 2022): each element of each activation quantizer's output is, with
    probability ``p``, its unquantized input instead. Done by wrapping the quantizers'
    ``quantize`` for the duration of the block (removed afterwards, also on error)."""
    def wrap(tq):
        orig = tq.quantize

        def quantize(x):
            y, s = orig(x)
            if x.dim() == 0 or p == 0:
                return y, s
            keep_float = torch.rand(x.shape, generator=gen) < p
            return torch.where(keep_float, x.to(y.dtype), y), s
        return quantize
    tqs = [t for t in tqs if t is not None]
    for t in tqs:
        t.quantize = wrap(t)
    try:
        yield
    finally:
        for t in tqs:
            del t.quantize


def _act_quantizers(q, nodes):
    """The output quantizers of the modules the block's nodes call (weight layers, adds, pools, the input)."""
    out = []
    for n in nodes:
        if n.op == "call_module":
            tq = getattr(q.get_submodule(n.target), "fpq_output", None)
            if tq is not None and all(tq is not o for o in out):
                out.append(tq)
    return out


def _learn_block(q, sub, nodes, names, xs, targets, iters, lr, reg, batch, drop, gen):
    """Learn the rounding of the block's layers ``names`` jointly; returns {name: hard weights}."""
    modules = dict(q.named_modules())
    rounding = {n: SoftRounding(modules[n], modules[n].weight.detach()) for n in names}
    x_all, t_all = torch.cat(xs), torch.cat(targets)
    norm = float(torch.mean(t_all.to(torch.float64) ** 2)) or 1.0
    opt = torch.optim.Adam([r.v for r in rounding.values()], lr=lr)
    n = x_all.shape[0]
    passthrough = [(modules[nm].fpq_weight, lambda t: None) for nm in names]
    with _train_arithmetic(q), C.observing(passthrough), _drop_quantization(_act_quantizers(q, nodes), drop, gen):
        # the soft weights reach the layers as they are
        for it in range(iters):
            idx = torch.randint(0, n, (min(n, batch),), generator=gen)
            w = {f"{nm}.weight": r.soft().to(torch.float32) for nm, r in rounding.items()}
            y = C._value(torch.func.functional_call(sub, w, (x_all[idx],)))
            err = torch.mean((y - t_all[idx]) ** 2) / norm
            penalty = sum(r.regularizer(it, iters) for r in rounding.values())
            opt.zero_grad()
            (err + reg * penalty).backward()
            opt.step()
    return {nm: r.hard() for nm, r in rounding.items()}


def run(q, batches, *, seed: int = 0, progress: bool = True, round_iters: int = 800,
        round_lr: float = 0.01, round_reg: float = 0.01, block_layers: int = 2,
        block_batch: int = 32, block_drop: float = 0.5, report: dict | None = None, **_):
    """Defaults: 800 Adam steps on ``block_batch`` = 32 calibration samples per block (BRECQ uses
    batches of 32), ``block_drop`` = 0.5 (QDrop's probability). On the digits CNN (e2m1, seeds 0-2,
    validation KL) this beat 400 steps of 64 samples, block_layers=1 and round_lr=0.03."""
    from tqdm.auto import tqdm

    if not isinstance(block_batch, int) or block_batch < 1:
        raise ValueError(f"block_round: block_batch must be an int >= 1, got {block_batch!r}")
    if not 0.0 <= float(block_drop) <= 1.0:
        raise ValueError(f"block_round: block_drop is a probability in [0, 1], got {block_drop!r}")
    parts = blocks(q, block_layers)
    if not parts:
        raise ValueError("block_round: the model has no Linear / Conv layer to round")
    modules = dict(q.named_modules())
    float_weights = {n: m.weight.detach().clone() for n, m in C.weight_layers(q)}
    gen = torch.Generator().manual_seed(seed)
    xs = [C.first_tensor(b) for b in batches]      # the network's inputs: the first block's
    xf = list(xs)
    result = []
    for nodes, names in tqdm(parts, desc="fpq.ptq block_round", disable=not progress):
        sub = block_module(q, nodes)
        targets = _run_blocks(q, sub, xf, float_weights=float_weights)
        start = {n: C.quantized_weight(modules[n], float_weights[n]) for n in names}
        for n in names:                             # the starting point: round to nearest
            C.set_weight(modules[n], start[n])
        e_start = block_error(_run_blocks(q, sub, xs), targets)
        for n in names:                             # learn from the float weights
            C.set_weight(modules[n], float_weights[n])
        with torch.enable_grad():
            learned = _learn_block(q, sub, nodes, names, xs, targets, round_iters, round_lr, round_reg,
                                   block_batch, block_drop, gen)
        learned = {n: C.quantized_weight(modules[n], w) for n, w in learned.items()}
        for n in names:
            C.set_weight(modules[n], learned[n])
        e_learn = block_error(_run_blocks(q, sub, xs), targets)
        keep = e_learn <= e_start
        if not keep:
            for n in names:
                C.set_weight(modules[n], start[n])
        result.append({"layers": names, "output": nodes[-1].name, "kept": keep,
                       "error": min(e_learn, e_start), "error_start": e_start})
        xs, xf = _run_blocks(q, sub, xs), targets   # the next block's quantized and float inputs
    if report is not None:
        report["block_round"] = result
