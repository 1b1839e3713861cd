"""Every public function and class of fpq has a Google-style docstring (summary, Args, Returns,
Raises, Example) and its examples run as doctests.

The public API is ``fpq.__all__`` plus the entry points the documentation (docs/) tells users to call
(``PUBLIC_EXTRA``), plus every function and class a subpackage exports in its ``__all__`` (the
subpackage API pages, enumerated as docs/hooks.py does); for each class, its public methods and
properties are checked too.
"""
from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import re
import textwrap
from pathlib import Path

import pytest

import fpq

# entry points outside fpq.__all__ that the documentation (docs/) tells users to call (module, name)
PUBLIC_EXTRA = [
    ("fpq.conversion", "FpqModel"),
    ("fpq.nn.qfx", "make_trainable"),
    ("fpq.nn.qfx", "freeze"),
    ("fpq.nn.multfree", "to_khot"),
    ("fpq.nn.multfree", "to_pow2"),
    ("fpq.nn.weight_only", "WeightOnlyLayer"),
    ("fpq.nn.bert", "from_bert"),              # a HF BertModel in fpq's encoder form (fpq.convert calls it)
    ("fpq.nn.bert", "BertEncoderForm"),
    # what the public functions return, whose fields and methods users read
    ("fpq.formats.facts", "FormatInfo"),       # fpq.finfo
    ("fpq.typeplan", "LayerPlan"),             # fpq.plan(q)[name]
    ("fpq.typeplan", "TensorType"),            # its tensors
    ("fpq.verification", "VerifyReport"),      # fpq.verify
    ("fpq.cost_model", "CostReport"),          # fpq.estimate_cost
    ("fpq.fitting", "FitResult"),              # fpq.fit
    ("fpq.hls.project", "HLSProject"),         # fpq.to_hls
    ("fpq.rtl", "RTLNetwork"),                 # fpq.to_rtl
    ("fpq.rtl", "place_and_route"),            # nextpnr-ecp5 on to_rtl's Verilog
    ("fpq.rtl", "PnRResult"),                  # its result
    ("fpq.profiling", "ProfileResult"),        # fpq.profile_torch
    ("fpq.report.records", "SweepResult"),     # fpq.sweep
]


def _subpackage_objects() -> dict:
    """{dotted name: object} of the subpackage API pages' objects (docs/hooks.py's api_objects:
    each object once, the names fpq itself exports not repeated)."""
    path = Path(__file__).resolve().parents[1] / "docs" / "hooks.py"
    spec = importlib.util.spec_from_file_location("fpq_docs_hooks", path)
    hooks = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(hooks)
    return {f"{mod}.{n}": obj for mod, rows in hooks.api_objects().items() if mod != "fpq" for n, obj in rows}


def public_objects() -> dict:
    """{dotted name: object} of every public function and class (not their members)."""
    out = {f"fpq.{n}": getattr(fpq, n) for n in fpq.__all__}
    for mod, name in PUBLIC_EXTRA:
        out[f"{mod}.{name}"] = getattr(importlib.import_module(mod), name)
    seen = {id(o) for o in out.values()}
    for name, obj in _subpackage_objects().items():
        if id(obj) not in seen:
            seen.add(id(obj))
            out[name] = obj
    return out


def _own_members(cls):
    """(name, function or property) of the public methods / properties ``cls`` itself defines
    (inherited torch.nn.Module or dataclass machinery is not fpq's API)."""
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, property):
            yield name, value
        elif isinstance(value, (staticmethod, classmethod)):
            yield name, value.__func__
        elif inspect.isfunction(value):
            yield name, value


def _params(func) -> list[str]:
    try:
        sig = inspect.signature(func)
    except (TypeError, ValueError):
        return []
    return [p for p in sig.parameters if p not in ("self", "cls")]


def _raises(func) -> bool:
    """The function's own body raises (not counting nested functions' bodies is not needed: a
    nested raise still escapes through the call in every fpq entry point checked here)."""
    if func is None:
        return False
    try:
        src = inspect.getsource(func)
    except (OSError, TypeError):
        return False
    body = src.split('"""', 2)[-1] if src.count('"""') >= 2 else src
    return re.search(r"^\s*raise\s", body, re.M) is not None


def _returns_value(func) -> bool:
    ann = inspect.signature(func).return_annotation
    return ann not in (None, "None")


SECTION = re.compile(r"^(Args|Returns|Raises|Example|Examples):\s*$", re.M)


def _sections(doc: str) -> set[str]:
    return {m.group(1).rstrip("s") if m.group(1) == "Examples" else m.group(1) for m in SECTION.finditer(doc)}


def _problems(name: str, obj) -> list[str]:
    doc = inspect.getdoc(obj) or ""
    if not doc.strip():
        return [f"{name}: no docstring"]
    out = []
    first = doc.strip().splitlines()[0]
    if not first.rstrip().endswith((".", ":")):
        out.append(f"{name}: first line is not a one-line summary ending with a period: {first!r}")
    have = _sections(doc)
    func = obj
    if inspect.isclass(obj):   # the constructor the class itself defines (or its dataclass fields)
        func = vars(obj).get("__init__")   # inherited (FpqModel's GraphModule.__init__) is not fpq's API
    need = {"Example"}
    if func is not None and _params(func):
        need.add("Args")
    if not inspect.isclass(obj) and _returns_value(obj):
        need.add("Returns")
    if (func is not None and _raises(func)) or (inspect.isclass(obj) and _raises(vars(obj).get("__post_init__"))):
        need.add("Raises")
    out += [f"{name}: no {s}: section" for s in sorted(need - have)]
    if "Example" in have and ">>> " not in doc:
        out.append(f"{name}: its Example: section has no '>>> ' doctest")
    if "Args" in have and func is not None:
        args_text = doc.split("Args:", 1)[1]
        args_text = SECTION.split(args_text, 1)[0]
        missing = [p for p in _params(func) if not re.search(rf"^\s*\**{p}\b", args_text, re.M)]
        if missing:
            out.append(f"{name}: Args: does not describe {missing}")
    return out


def _member_problems(cls_name: str, cls) -> list[str]:
    out = []
    for mname, member in _own_members(cls):
        full = f"{cls_name}.{mname}"
        if isinstance(member, property):
            if not (member.__doc__ or "").strip():
                out.append(f"{full}: property without a docstring")
            continue
        doc = inspect.getdoc(member) or ""
        if not doc.strip():
            out.append(f"{full}: no docstring")
            continue
        if _params(member) and "Args:" not in doc:
            out.append(f"{full}: no Args: section")
        if _returns_value(member) and inspect.signature(member).return_annotation is not inspect.Signature.empty \
                and "Returns:" not in doc:
            out.append(f"{full}: no Returns: section")
    return out


def test_public_names_have_complete_docstrings():
    problems = []
    for name, obj in public_objects().items():
        problems += _problems(name, obj)
        if inspect.isclass(obj):
            problems += _member_problems(name, obj)
    assert not problems, "incomplete docstrings:\n" + "\n".join(problems)


def _doctests():
    finder = doctest.DocTestFinder(recurse=True, exclude_empty=True)
    tests, seen = [], set()
    for name, obj in public_objects().items():
        module = inspect.getmodule(obj)
        for t in finder.find(obj, name, module=module, globs={}):
            if t.examples and t.name not in seen and t.name.startswith(name):
                seen.add(t.name)
                tests.append(t)
    return sorted(tests, key=lambda t: t.name)


DOCTESTS = _doctests()


def test_every_public_name_has_a_running_example():
    names = {t.name for t in DOCTESTS}
    without = [n for n in public_objects() if n not in names]
    assert not without, f"public names without a doctest example: {without}"


@pytest.mark.parametrize("test", DOCTESTS, ids=[t.name for t in DOCTESTS])
def test_docstring_example_runs(test, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)   # an example that writes a relative path writes here
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    out = []
    result = runner.run(test, out=out.append, clear_globs=True)
    assert result.failed == 0, f"{test.name} (line {test.lineno} of {test.filename}):\n" + textwrap.indent(
        "".join(out), "  ")
