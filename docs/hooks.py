"""MkDocs hooks of fpq's documentation (``mkdocs.yml``: ``hooks: [docs/hooks.py]``).

What they add to a plain MkDocs build, so that ``make docs`` (``mkdocs build --strict``) fails
when the documentation and the code disagree:

- **API reference, generated.** One page for ``fpq`` (its ``__all__``) and one per subpackage or
  module of fpq that declares ``__all__`` (``fpq.formats``, ``fpq.rtl``, ...), each object rendered
  from its docstring by mkdocstrings. A new subpackage with an ``__all__`` gets its page without an
  edit here; an object is documented once, on the first page that exports it.
- **Docstring check.** Every function and class on those pages needs a docstring, and a function
  or method with parameters an ``Args:`` section: the build fails listing what is missing.
- **CLI reference, generated** from ``fpq CMD --help`` of every command ``fpq.cli.build_parser``
  registers (a new command module appears by itself).
- **Executed tutorials.** Every fenced block opened with ```` ```python exec ```` runs when the
  docs build, top to bottom, one Python process per page (the pages run in parallel, each in a
  scratch folder), and its printed output is put under the block. A block that raises fails the
  build, naming the page, the block and the traceback. Outputs of a successful run are kept in
  ``out/docs-cache/`` and reused while the page's code, fpq's sources (``fpq/``, ``hls/``,
  ``cost_model/``), the key packages' versions and the environment are unchanged
  (``FPQ_DOCS_CACHE=0``: run every page).
- **Result studies** come from ``examples/results/*.md`` (written by the scripts themselves),
  each preceded by the command that reproduces it.
"""
from __future__ import annotations

import concurrent.futures
import importlib
import inspect
import json
import os
import pkgutil
import re
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:        # document this checkout's fpq, not an installed one
    sys.path.insert(0, str(ROOT))

# subpackages that are not API: the CLI has its own page; fpq.testing is for tests and examples
API_SKIP = ("fpq.cli", "fpq.testing")
TUTORIAL_TIMEOUT_S = 600
EXEC_FENCE = re.compile(r"^```python exec[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)

# the scripts that write examples/results/*.md, shown as the command that reproduces each study
RESULT_COMMANDS = {
    "block_study": "python examples/block_study.py",
    "minilm_ptq": "python examples/minilm_ptq.py --study",
    "model_zoo": "python examples/model_zoo.py",
}


class DocsError(Exception):
    """A documentation check failed (raised as mkdocs' PluginError inside a build)."""


def _fail(message: str):
    try:
        from mkdocs.exceptions import PluginError
    except ImportError:  # pragma: no cover - the functions also run without mkdocs (tests)
        raise DocsError(message) from None
    raise PluginError(message)


# ---------------------------------------------------------------------------------------------
# API reference
# ---------------------------------------------------------------------------------------------

def api_modules() -> list[str]:
    """``fpq`` and every subpackage / module of fpq with an ``__all__`` (not the CLI or tests)."""
    import fpq
    out = ["fpq"]
    for m in sorted(pkgutil.iter_modules(fpq.__path__), key=lambda m: m.name):
        name = f"fpq.{m.name}"
        if m.name.startswith("_") or name in API_SKIP:
            continue
        mod = importlib.import_module(name)
        if getattr(mod, "__all__", None):
            out.append(name)
    return out


def api_objects() -> dict[str, list[tuple[str, object]]]:
    """{module: [(public name, object)]}: functions and classes each module exports, every object
    once (on the first page that exports it, ``fpq`` first)."""
    seen, out = set(), {}
    for modname in api_modules():
        mod = importlib.import_module(modname)
        rows = []
        for name in mod.__all__:
            obj = getattr(mod, name, None)
            if not (inspect.isfunction(obj) or inspect.isclass(obj)) or id(obj) in seen:
                continue
            seen.add(id(obj))
            rows.append((name, obj))
        out[modname] = rows
    return out


def _canonical(obj) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def api_page(modname: str, rows) -> str:
    """The Markdown of one API page (mkdocstrings ``:::`` blocks)."""
    mod = importlib.import_module(modname)
    summary = (inspect.getdoc(mod) or "").strip().split("\n\n")[0]
    text = [f"# `{modname}`", "", summary, ""]
    if not rows:
        text.append("Everything this module exports is documented on an earlier page.")
    for name, obj in rows:
        text += [f"## `{modname}.{name}`", "", f"::: {_canonical(obj)}", "    options:",
                 "      show_root_heading: false", "      show_root_toc_entry: false", "      heading_level: 3", ""]
    return "\n".join(text)


def api_pages() -> dict[str, str]:
    """{path under docs/: Markdown} of the generated API reference."""
    return {f"reference/api/{m}.md": api_page(m, rows) for m, rows in api_objects().items()}


def _own_methods(cls):
    for name, value in vars(cls).items():
        if name.startswith("_"):
            continue
        if isinstance(value, (staticmethod, classmethod)):
            value = value.__func__
        if inspect.isfunction(value) or isinstance(value, property):
            yield name, value


def _has_params(func) -> bool:
    try:
        params = inspect.signature(func).parameters
    except (TypeError, ValueError):
        return False
    return any(p not in ("self", "cls") for p in params)


def _generated_dataclass_doc(obj, doc: str) -> bool:
    return inspect.isclass(obj) and "__dataclass_fields__" in vars(obj) and doc.startswith(f"{obj.__name__}(")


def docstring_problems(objects) -> list[str]:
    """What the API reference would be missing: ``objects`` is an iterable of (name, object).

    A function or class without a docstring, a function or public method with parameters whose
    docstring has no ``Args:`` section, a public method or property without a docstring."""
    problems = []
    for name, obj in objects:
        doc = inspect.getdoc(obj) or ""
        if inspect.isclass(obj) and vars(obj).get("__doc__") is None or _generated_dataclass_doc(obj, doc):
            doc = ""   # inherited, or the signature a dataclass writes when it has no docstring
        if not doc.strip():
            problems.append(f"{name}: no docstring")
            continue
        if inspect.isfunction(obj) and _has_params(obj) and "Args:" not in doc:
            problems.append(f"{name}: no Args: section")
        if inspect.isclass(obj):
            for mname, member in _own_methods(obj):
                mdoc = (member.__doc__ if isinstance(member, property) else inspect.getdoc(member)) or ""
                if not mdoc.strip():
                    problems.append(f"{name}.{mname}: no docstring")
    return problems


def check_docstrings(pages_objects=None) -> None:
    """Fail the build when a documented object lacks its docstring (see ``docstring_problems``)."""
    pages_objects = api_objects() if pages_objects is None else pages_objects
    problems = docstring_problems((f"{m}.{n}", o) for m, rows in pages_objects.items() for n, o in rows)
    if problems:
        _fail("public API without documentation:\n  " + "\n  ".join(problems))


# ---------------------------------------------------------------------------------------------
# CLI reference
# ---------------------------------------------------------------------------------------------

def cli_commands() -> dict[str, str]:
    """{command: its ``--help`` text} for every command ``fpq`` registers, in ``fpq --help`` order."""
    import argparse
    os.environ["COLUMNS"] = "100"     # argparse wraps to the terminal: fix it for a stable page
    from fpq.cli import build_parser
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    out = {"fpq": parser.format_help()}
    for name, p in sub.choices.items():
        out[name] = p.format_help()
    return out


def cli_page() -> str:
    """The Markdown of the CLI reference."""
    helps = cli_commands()
    names = [n for n in helps if n != "fpq"]
    text = ["# Command line", "",
            "Generated from each command's `--help` when the documentation is built. Bad input (an unknown",
            "format, a missing file, an unsupported layer) prints one `fpq CMD: error: ...` line and exits 2;",
            "`FPQ_DEBUG=1` shows the traceback.", "",
            "Commands: " + ", ".join(f"[`fpq {n}`](#fpq-{n})" for n in names) + ".", "",
            "## `fpq`", "", "```text", helps["fpq"].rstrip(), "```", ""]
    for n in names:
        text += [f"## `fpq {n}` {{#fpq-{n}}}", "", "```text", helps[n].rstrip(), "```", ""]
    return "\n".join(text)


# ---------------------------------------------------------------------------------------------
# executed tutorials
# ---------------------------------------------------------------------------------------------

RUNNER = r'''
import contextlib, io, json, sys, traceback
blocks = json.load(open(sys.argv[1]))
glob = {"__name__": "__main__"}
outs = []
for i, code in enumerate(blocks):
    buf = io.StringIO()
    try:
        with contextlib.redirect_stdout(buf):
            exec(compile(code, f"<block {i + 1}>", "exec"), glob)
    except BaseException:
        outs.append(buf.getvalue())
        json.dump({"outputs": outs, "failed": i, "traceback": traceback.format_exc()}, open(sys.argv[2], "w"))
        sys.exit(1)
    outs.append(buf.getvalue())
    json.dump({"outputs": outs, "failed": None}, open(sys.argv[2], "w"))
'''


def exec_blocks(markdown: str) -> list[str]:
    """The code of every ```` ```python exec ```` block of a page, in order."""
    return [m.group(1) for m in EXEC_FENCE.finditer(markdown)]


CACHE_DIR = ROOT / "out" / "docs-cache"
# what a tutorial's output depends on besides its own code: fpq's sources and data, and these packages
CACHE_SOURCES = ("fpq", "hls", "cost_model")
CACHE_PACKAGES = ("torch", "numpy", "brevitas", "qonnx", "hls4ml", "onnx", "onnxruntime", "scikit-learn")


def _sources_digest() -> str:
    import hashlib
    from importlib import metadata
    h = hashlib.sha256()
    for top in CACHE_SOURCES:
        for path in sorted((ROOT / top).rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".so"):
                h.update(path.relative_to(ROOT).as_posix().encode() + b"\0" + path.read_bytes())
    for pkg in CACHE_PACKAGES:
        try:
            h.update(f"{pkg}=={metadata.version(pkg)}".encode())
        except metadata.PackageNotFoundError:
            h.update(f"{pkg} missing".encode())
    h.update(sys.version.encode())
    return h.hexdigest()


def _cache_key(blocks: list[str], sources: str) -> str:
    import hashlib
    shared = os.environ.get("FPQ_SHARED_MODELS") or str(ROOT.parent / "shared" / "models")
    env = f"{shared}:{os.path.isdir(shared)}:{os.environ.get('CUDA_VISIBLE_DEVICES')}"
    return hashlib.sha256(json.dumps([blocks, sources, env]).encode()).hexdigest()[:32]


def run_blocks_cached(blocks: list[str], name: str, sources: str, cache_dir: Path = CACHE_DIR) -> list[str]:
    """``run_blocks``, reusing the outputs of an earlier successful run of the same blocks on the same
    fpq sources, package versions and environment (``FPQ_DOCS_CACHE=0`` turns the cache off). A
    failing run is never stored, so a failing tutorial fails every build."""
    path = cache_dir / f"{re.sub(r'[^A-Za-z0-9]+', '_', name)}-{_cache_key(blocks, sources)}.json"
    if path.is_file():
        return json.loads(path.read_text())
    outputs = run_blocks(blocks, name)
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(outputs))
    tmp.replace(path)
    return outputs


def run_blocks(blocks: list[str], name: str = "page", timeout: float = TUTORIAL_TIMEOUT_S) -> list[str]:
    """Run ``blocks`` in one fresh Python process (a scratch folder as its working directory);
    returns each block's printed output. Fails (PluginError) naming the block when one raises."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep),
           "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1"), "MPLBACKEND": "Agg",
           "FPQ_DOCS_ROOT": str(ROOT), "TQDM_DISABLE": "1"}
    with tempfile.TemporaryDirectory(prefix="fpq-docs-") as tmp:
        src, res = Path(tmp) / "blocks.json", Path(tmp) / "result.json"
        src.write_text(json.dumps(blocks))
        try:
            run = subprocess.run([sys.executable, "-c", RUNNER, str(src), str(res)], cwd=tmp, env=env,
                                 capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired:
            _fail(f"tutorial {name}: did not finish in {timeout:.0f} s")
        result = json.loads(res.read_text()) if res.exists() else None
        if run.returncode != 0 or result is None or result["failed"] is not None:
            where = f"block {result['failed'] + 1}" if result and result["failed"] is not None else "its process"
            detail = result["traceback"] if result and result.get("traceback") else run.stderr[-3000:]
            _fail(f"tutorial {name}: {where} failed:\n{textwrap.indent(detail, '    ')}")
        return result["outputs"]


def render_executed(markdown: str, outputs: list[str]) -> str:
    """``markdown`` with each exec block made a plain Python block followed by its output."""
    it = iter(outputs)

    def one(m):
        out = next(it).rstrip()
        block = f"```python\n{m.group(1)}```"
        if out:
            block += f"\n\n```text title=\"output\"\n{out}\n```"
        return block
    return EXEC_FENCE.sub(one, markdown)


_POOL: concurrent.futures.ThreadPoolExecutor | None = None
_RUNS: dict[str, concurrent.futures.Future] = {}


def _start_tutorials(docs_dir: Path) -> None:
    """Start every page with exec blocks at once (they run while the rest of the site builds).

    ``FPQ_DOCS_TUTORIALS=skip`` builds the site without running them (the fast check of links,
    references and docstrings in the default test suite): their blocks then say so."""
    global _POOL
    _RUNS.clear()
    if os.environ.get("FPQ_DOCS_TUTORIALS") == "skip":
        return
    workers = max(1, min(4, os.cpu_count() or 1))
    _POOL = concurrent.futures.ThreadPoolExecutor(max_workers=workers)
    cached = os.environ.get("FPQ_DOCS_CACHE", "1") != "0"
    sources = _sources_digest() if cached else None
    for path in sorted(docs_dir.rglob("*.md")):
        blocks = exec_blocks(path.read_text())
        if blocks:
            rel = path.relative_to(docs_dir).as_posix()
            _RUNS[rel] = (_POOL.submit(run_blocks_cached, blocks, rel, sources) if cached
                          else _POOL.submit(run_blocks, blocks, rel))


# ---------------------------------------------------------------------------------------------
# the mkdocs hooks
# ---------------------------------------------------------------------------------------------

def _reference_nav() -> list:
    return [{"Command line": "reference/cli.md"},
            {"API": [{m: f"reference/api/{m}.md"} for m in api_modules()]}]


def on_config(config):
    """Append the generated reference to the navigation."""
    nav = config.get("nav")
    if nav is not None and not any(isinstance(e, dict) and "Reference" in e for e in nav):
        nav.append({"Reference": _reference_nav()})
    return config


def on_pre_build(config):
    """Check the docstrings, then start the tutorials."""
    check_docstrings()
    _start_tutorials(Path(config["docs_dir"]))


def on_files(files, config):
    """Add the generated pages: API reference, CLI reference, result studies."""
    from mkdocs.structure.files import File
    pages = dict(api_pages())
    pages["reference/cli.md"] = cli_page()
    for md in sorted((ROOT / "examples" / "results").glob("*.md")):
        pages[f"results/{md.stem}.md"] = result_page(md)
    for uri, content in pages.items():
        files.append(File.generated(config, uri, content=content))
    return files


def result_page(md: Path) -> str:
    """A result study of ``examples/results`` as a page: its title, the command that reproduces it,
    then the file as the script wrote it."""
    body = md.read_text()
    first, _, rest = body.partition("\n")
    if first.startswith("# "):
        title, body = first[2:].strip(), rest
    else:
        title = md.stem.replace("_", " ").capitalize()
    cmd = RESULT_COMMANDS.get(md.stem, f"python examples/{md.stem}.py")
    return (f"# {title}\n\nReproduce: `{cmd}` (it writes `examples/results/{md.name}`, shown here as "
            f"written).\n\n{body.lstrip()}")


def on_page_markdown(markdown, page, config, files):
    """Put the executed tutorials' outputs under their blocks."""
    fut = _RUNS.get(page.file.src_uri)
    if fut is not None:
        return render_executed(markdown, fut.result())
    blocks = exec_blocks(markdown)
    if blocks:   # a build with FPQ_DOCS_TUTORIALS=skip
        return render_executed(markdown, ["(not executed in this build: FPQ_DOCS_TUTORIALS=skip)"] * len(blocks))
    return markdown


def on_post_build(config):
    """Release the tutorial pool."""
    if _POOL is not None:
        _POOL.shutdown(wait=True)
