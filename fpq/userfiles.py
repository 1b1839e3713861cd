"""The files a user gives fpq: checks that a path is a readable file / a valid ONNX model, and
the one guarded way to unpickle a model file (only with ``trust_pickle``).

The command line (``fpq.cli``) and the library code that loads user files (``fpq.sweep``'s model
specs) share these, so every path gives the same messages; this module imports neither. The one
reader of a model / data spec (``FILE.py:NAME``, ``MODULE:NAME``, ``FILE.pt``) is ``load_spec``.
"""
from __future__ import annotations

import hashlib
import importlib
import importlib.util
import os
import sys

def check_input_file(path: str, what: str) -> None:
    """Refuse a path that is not an existing, readable regular file (one clear message)."""
    if not os.path.exists(path):
        raise ValueError(f"{what} {path!r} does not exist")
    if os.path.isdir(path):
        raise ValueError(f"{what} {path!r} is a directory, not a file")
    if not os.path.isfile(path):
        raise ValueError(f"{what} {path!r} is not a regular file")
    if not os.access(path, os.R_OK):
        raise ValueError(f"{what} {path!r} is not readable (permission denied)")


def check_onnx_file(path: str) -> None:
    """Refuse a file that is not a well-formed ONNX model, before any library reads it."""
    import onnx

    check_input_file(path, "QONNX file")
    try:
        model = onnx.load(path)
    except Exception as e:  # protobuf's DecodeError and friends: the bytes are not a ModelProto
        raise ValueError(f"{path!r} is not an ONNX model file ({type(e).__name__}: {e})") from None
    try:
        onnx.checker.check_model(model)
    except Exception as e:  # onnx's ValidationError: parsed, but not a valid model (e.g. an empty file)
        raise ValueError(f"{path!r} is not a valid ONNX model ({type(e).__name__}: {e})") from None


TRUST_PICKLE_HELP = ("allow a FILE.pt model written by torch.save(model). Such a file is a Python pickle, and "
                     "loading a pickle can run any code it contains: give this flag only for files you trust. "
                     "Without it a .pt file is read with torch.load(weights_only=True) (tensors only), which "
                     "cannot hold a model; name the model's code as FILE.py:NAME instead")


def load_model_file(path: str, trust_pickle: bool = False, flag: str = "--trust-pickle"):
    """A whole model saved with ``torch.save(model)``: unpickled only when ``trust_pickle`` (a
    pickle can run code); otherwise read tensors-only and refused with what to do instead."""
    import pickle

    import torch

    check_input_file(path, "model file")
    if trust_pickle:
        return torch.load(path, map_location="cpu", weights_only=False)
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # torch's allow-list refused a class: the file holds code to run
        raise ValueError(f"model file {path!r} is a pickle holding more than tensors (e.g. torch.save(model)); "
                         f"unpickling it can run any code in the file, so fpq does not without {flag}. Give "
                         f"{flag} if you trust the file, or save model.state_dict() and name the model's "
                         "code as FILE.py:NAME") from None
    except Exception as e:  # not a torch.save file at all
        raise ValueError(f"model file {path!r} is not a torch.save file ({type(e).__name__}: "
                         f"{_one_line(e)})") from None
    raise ValueError(f"model file {path!r} holds a {type(obj).__name__} of tensors (a state dict?), not a "
                     "model: name the model's code as FILE.py:NAME (a factory that loads these weights)")


def _one_line(e: BaseException) -> str:
    """An exception as one line (an OSError as its file and reason)."""
    if isinstance(e, OSError) and e.filename is not None and e.strerror:
        return f"{e.filename!r}: {e.strerror}"
    text = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
    return text or type(e).__name__


def load_spec(spec: str, trust_pickle: bool = False):
    """``path/to/file.py:name``, ``package.module:name`` (called if callable and not a module) or a
    ``.pt`` file holding a whole pickled model (``torch.save(model)``), loaded only with
    ``trust_pickle=True`` (unpickling runs whatever code the file holds)."""
    if not isinstance(spec, str) or not spec:
        raise ValueError(f"not a model/data spec: {spec!r}")
    if spec.endswith((".pt", ".pth")) and ":" not in spec:
        return load_model_file(spec, trust_pickle, flag="--trust-pickle (trust_pickle=True)")
    target, sep, name = spec.rpartition(":")
    if not sep or not target or not name:
        raise ValueError(f"spec {spec!r}: expected FILE.py:NAME, MODULE:NAME or FILE.pt")
    if target.endswith(".py"):
        if not os.path.exists(target):
            raise ValueError(f"spec {spec!r}: file {target!r} does not exist")
        mod = load_file_module(os.path.abspath(target))
    else:
        if os.sep in target or (os.altsep and os.altsep in target) or os.path.exists(target):
            raise ValueError(f"spec {spec!r}: {target!r} is a path but not a .py file; expected FILE.py:NAME, "
                             "MODULE:NAME or FILE.pt")
        try:
            mod = importlib.import_module(target)
        except ModuleNotFoundError as e:
            if e.name is None or not target.startswith(e.name):
                raise  # the user's module itself imports something missing
            raise ValueError(f"spec {spec!r}: no module named {target!r} (give FILE.py:NAME or an importable "
                             "MODULE:NAME)") from None
    if not hasattr(mod, name):
        raise ValueError(f"spec {spec!r}: {target} has no attribute {name!r}")
    obj = getattr(mod, name)
    return obj() if callable(obj) and not is_torch_module(obj) else obj


SPEC_FILES = {}   # module name -> file, for modules loaded from a spec's .py file


def load_file_module(path: str):
    """Import a .py file under a stable name; fpq.sweep's workers import it under the same name
    (the workers of fpq.report.engines) so that models whose class is defined there unpickle."""
    name = "_fpq_spec_" + hashlib.sha1(path.encode()).hexdigest()[:10]
    mod = sys.modules.get(name)
    if mod is None:
        s = importlib.util.spec_from_file_location(name, path)
        mod = importlib.util.module_from_spec(s)
        sys.modules[name] = mod
        s.loader.exec_module(mod)
        SPEC_FILES[name] = path
    return mod


def is_torch_module(obj) -> bool:
    import torch
    return isinstance(obj, torch.nn.Module)
