"""The compiled emulator of a torch model, kept on the model between ``fpq.emulate`` calls.

``fpq.emulate(q, x)`` on a converted torch model exports it (Brevitas' TorchScript export, qonnx
shape inference) and compiles an :class:`~fpq.emulate.Emulator`: about 100x the cost of running
it on 20,000 inputs. Users call ``fpq.emulate`` in loops (after each QAT epoch, per batch of a
test set), so the compiled emulator is cached on the model and reused while the model is
unchanged.

"Unchanged" is checked on every call from what the export reads:
* the bytes of every parameter and buffer (a content hash: ``p.data.copy_(w)`` and
  ``p.data = w`` change no version counter, so versions cannot be trusted);
* every module's identity, class and plain attributes (formats, scale kinds, roles, bounds,
  accumulator widths, train/eval), and the traced code of an fx GraphModule;
* the device / backend asked for and the shape of one input sample.
Hashing is linear in the parameter count (about 1 GB/s): microseconds for the MLPs fpq
targets, tens of milliseconds for a 22M-parameter transformer, against seconds for an export.
"""
from __future__ import annotations

import hashlib

_ATTR = "_fpq_emulators"   # in the module's __dict__: not a submodule, not in the state_dict
_KEEP = 4                  # compiled emulators kept per model (one per device / backend / shape)
_PLAIN = (bool, int, float, str, type(None))


def _plain(v):
    """A comparable stand-in for an attribute the export may read, or None to ignore it."""
    if isinstance(v, _PLAIN):
        return v
    if isinstance(v, (tuple, list)) and all(isinstance(e, _PLAIN) for e in v):
        return tuple(v)
    if type(v).__module__.startswith("fpq."):   # formats and other fpq value objects
        return repr(v)
    return None


def _tensor_digest(h, t) -> None:
    import torch

    t = t.detach()
    h.update(f"{tuple(t.shape)}{t.dtype}{t.device}".encode())
    if t.numel():
        h.update(t.contiguous().reshape(-1).view(torch.uint8).cpu().numpy().tobytes())


def fingerprint(q) -> str:
    """A digest of everything of ``q`` its export reads (see the module docstring)."""
    import torch

    h = hashlib.blake2b(digest_size=20)
    code = getattr(q, "code", None)
    if isinstance(code, str):
        h.update(code.encode())
    for name, m in q.named_modules(remove_duplicate=False):
        h.update(f"|{name}:{id(m)}:{type(m).__qualname__}:{m.training}".encode())
        for k, v in sorted(m.__dict__.items()):
            if k.startswith("_") or k == "training":
                continue
            p = _plain(v)
            if p is not None:
                h.update(f";{k}={p!r}".encode())
            elif isinstance(v, torch.Tensor):   # a tensor held as a plain attribute
                h.update(f";{k}=".encode())
                _tensor_digest(h, v)
        for group in (m._parameters, m._buffers):
            for k, t in group.items():
                h.update(f";{k}#".encode())
                if t is not None:
                    _tensor_digest(h, t)
    return h.hexdigest()


def cached_emulator(q, key: tuple, build):
    """The emulator cached on ``q`` under ``key`` if ``q`` is unchanged since it was built, else
    ``build()`` (stored for the next call). Returns (emulator, reused)."""
    fp = fingerprint(q)
    store = q.__dict__.setdefault(_ATTR, {})
    hit = store.get(key)
    if hit is not None and hit[0] == fp:
        return hit[1], True
    emu = build()
    store.pop(key, None)
    store[key] = (fingerprint(q), emu)   # after the export, which may leave attributes set
    while len(store) > _KEEP:
        store.pop(next(iter(store)))
    return emu, False


def clear(q) -> None:
    """Drop the emulators cached on ``q``."""
    q.__dict__.pop(_ATTR, None)
