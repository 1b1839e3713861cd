"""The documentation site (issue 24): docs/hooks.py's checks fail what they must, the generated
reference covers every command and exported object, and the site builds strict and renders.

Fast (default suite): the hooks' functions on small inputs; a strict build with the tutorials not
executed (links, anchors, mkdocstrings references, the docstring check), whose home page and one API
page are rendered in headless Chromium. Full (``FPQ_FULL=1``): the strict build of ``make docs``
with every tutorial executed.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mkdocs", reason="mkdocs is not installed (pip install -e '.[docs]'; make test installs it)")
pytest.importorskip("mkdocstrings", reason="mkdocstrings is not installed (pip install -e '.[docs]')")

from mkdocs.exceptions import PluginError  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
         "--disable-component-update", "--disable-sync", "--no-first-run"]


def _hooks():
    spec = importlib.util.spec_from_file_location("fpq_docs_hooks", ROOT / "docs" / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hooks = _hooks()


# ----------------------------------------------------------------------------- docstring check

def _undocumented(x, y):
    return x + y


def _documented_without_args(x):
    """Say nothing about x."""
    return x


def _documented(x):
    """Double x.

    Args:
        x: a number.
    """
    return 2 * x


class _Cls:
    """A class whose method has no docstring."""

    def method(self, a):
        return a

    @property
    def prop(self):
        return 1


@dataclasses.dataclass
class _Record:
    x: int


class _Sub(_Documented := type("_Documented", (), {"__doc__": "A documented base."})):
    pass


def test_docstring_check_catches_what_is_missing():
    problems = hooks.docstring_problems([("f", _undocumented), ("g", _documented_without_args),
                                         ("h", _documented), ("C", _Cls), ("R", _Record), ("S", _Sub)])
    assert problems == ["f: no docstring", "g: no Args: section", "C.method: no docstring", "C.prop: no docstring",
                        "R: no docstring", "S: no docstring"]


def test_docstring_check_fails_the_build():
    with pytest.raises(PluginError, match="f: no docstring"):
        hooks.check_docstrings({"m": [("f", _undocumented)]})
    hooks.check_docstrings({"m": [("h", _documented)]})   # nothing missing: no error


def test_every_exported_object_is_documented_and_has_a_page():
    import fpq
    objs = hooks.api_objects()
    assert hooks.docstring_problems((f"{m}.{n}", o) for m, rows in objs.items() for n, o in rows) == []
    pages = hooks.api_pages()
    for sub in ("fpq", "fpq.formats", "fpq.nn", "fpq.hls", "fpq.rtl", "fpq.cost_model", "fpq.report"):
        assert f"reference/api/{sub}.md" in pages
    assert "reference/api/fpq.cli.md" not in pages and "reference/api/fpq.testing.md" not in pages
    top = pages["reference/api/fpq.md"]
    for name in fpq.__all__:
        assert f"## `fpq.{name}`" in top, name
    # every object once: the names fpq re-exports are not repeated on the subpackage pages
    assert "## `fpq.formats.parse_format`" not in pages["reference/api/fpq.formats.md"]


# ----------------------------------------------------------------------------- CLI page

def test_cli_page_lists_every_command():
    page = hooks.cli_page()
    # every command module of fpq/cli is named after its command; a new one appears by itself
    modules = sorted(p.stem for p in (ROOT / "fpq" / "cli").glob("*.py") if not p.stem.startswith("_"))
    assert len(modules) >= 11
    for cmd in modules:
        assert f"## `fpq {cmd}` {{#fpq-{cmd}}}" in page, cmd
        assert f"usage: fpq {cmd}" in page, cmd
    assert set(hooks.cli_commands()) == {"fpq", *modules}


# ----------------------------------------------------------------------------- executed tutorials

PAGE = """# A page

```python exec
x = 6 * 7
print("x is", x)
```

Text between.

```python exec
print(x + 1)
```

```python
not_run()
```
"""


def test_tutorial_blocks_run_and_their_output_is_shown():
    blocks = hooks.exec_blocks(PAGE)
    assert len(blocks) == 2
    outs = hooks.run_blocks(blocks, "page.md", timeout=60)
    assert outs == ["x is 42\n", "43\n"]
    html = hooks.render_executed(PAGE, outs)
    assert "python exec" not in html and html.count("```python\n") == 3
    assert '```text title="output"\nx is 42\n```' in html and '```text title="output"\n43\n```' in html


def test_a_failing_tutorial_fails_the_build():
    with pytest.raises(PluginError) as e:
        hooks.run_blocks(["y = 1", "raise RuntimeError('boom in the tutorial')"], "tutorials/bad.md", timeout=60)
    msg = str(e.value)
    assert "tutorials/bad.md" in msg and "block 2" in msg and "boom in the tutorial" in msg


def test_tutorial_outputs_are_reused_only_for_the_same_code_and_sources(tmp_path):
    blocks = ["import os; print(os.urandom(8).hex())"]
    first = hooks.run_blocks_cached(blocks, "tutorials/t.md", "sources-A", cache_dir=tmp_path)
    assert hooks.run_blocks_cached(blocks, "tutorials/t.md", "sources-A", cache_dir=tmp_path) == first   # reused
    assert hooks.run_blocks_cached(blocks, "tutorials/t.md", "sources-B", cache_dir=tmp_path) != first   # fpq changed
    assert hooks.run_blocks_cached(blocks + ["pass"], "tutorials/t.md", "sources-A", cache_dir=tmp_path)[0] != first[0]
    bad = ["raise ValueError('always')"]
    for _ in range(2):   # a failure is never stored: it fails every build
        with pytest.raises(PluginError, match="always"):
            hooks.run_blocks_cached(bad, "tutorials/bad.md", "sources-A", cache_dir=tmp_path)
    assert len(list(tmp_path.glob("*.json"))) == 3


def test_every_tutorial_page_has_executed_blocks():
    for name in ("digits", "qat-qfx", "biper", "sweep", "foreign-qonnx", "gpu"):
        assert hooks.exec_blocks((ROOT / "docs" / "tutorials" / f"{name}.md").read_text()), name


def test_make_docs_and_its_extra():
    make = (ROOT / "Makefile").read_text()
    assert re.search(r"^docs: \$\(STAMP\)", make, re.M) and "mkdocs build --strict" in make
    assert re.search(r"pip install -q -e '\.\[[^]]*docs[^]]*\]'", make)   # make test installs it (CI)
    pyproject = (ROOT / "pyproject.toml").read_text()
    for pin in ("mkdocs==1.6.1", "mkdocstrings[python]==1.0.8", "mkdocstrings-python==2.0.11",
                "mkdocs-material==9.8.1"):
        assert pin in pyproject, pin


def test_readme_is_short_and_links_to_pages_that_exist():
    readme = (ROOT / "README.md").read_text()
    assert len(readme) < 8000
    assert readme.index("make demo") < readme.index("```python")   # the two commands first
    links = re.findall(r"\]\(([^)#]+)\)", readme)
    assert len(links) >= 20
    for link in links:
        assert (ROOT / link).is_file(), link


# ----------------------------------------------------------------------------- the built site

def _build(site: Path, tutorials: bool) -> subprocess.CompletedProcess:
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    if tutorials:
        env["FPQ_DOCS_CACHE"] = "0"   # run every tutorial, whatever an earlier make docs left
    else:
        env["FPQ_DOCS_TUTORIALS"] = "skip"
    return subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(site)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=1200)


def _chromium(url: str, tmp_path: Path, *extra) -> subprocess.CompletedProcess:
    profile = tmp_path / f"profile{len(list(tmp_path.iterdir()))}"
    return subprocess.run([CHROMIUM, *FLAGS, f"--user-data-dir={profile}", "--virtual-time-budget=3000", *extra, url],
                          capture_output=True, text=True, timeout=120)


def _renders(page: Path, tmp_path: Path, texts: list[str]) -> None:
    """``page`` renders in headless Chromium: a screenshot that is not blank, and ``texts`` in its DOM."""
    import matplotlib.image as mpimg
    shot = tmp_path / (page.stem + ".png")
    run = _chromium(page.as_uri(), tmp_path, f"--screenshot={shot}", "--window-size=1200,1000")
    assert run.returncode == 0 and shot.is_file() and shot.stat().st_size > 10000, run.stderr[-1500:]
    img = mpimg.imread(str(shot))
    assert img.std() > 0.02, "blank screenshot"
    dom = _chromium(page.as_uri(), tmp_path, "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-1500:]
    for t in texts:
        assert t in dom.stdout, t


def _check_site(site: Path, tmp_path: Path) -> None:
    for rel in ("index.html", "getting-started.html", "reference/cli.html", "reference/api/fpq.html",
                "reference/api/fpq.formats.html", "tutorials/digits.html", "results/model_zoo.html"):
        assert (site / rel).is_file(), rel
    api = (site / "reference" / "api" / "fpq.html").read_text()
    assert 'id="fpq.formats.parse.parse_format"' in api or "parse_format" in api
    if CHROMIUM is None:
        pytest.skip("chromium is not installed (Debian: apt-get install -y chromium): the site built, "
                    "its rendering is not checked")
    _renders(site / "index.html", tmp_path, ["Why it exists", "Getting started"])
    _renders(site / "reference" / "api" / "fpq.html", tmp_path, ["fpq.parse_format", "Parameters", "Examples"])


def test_strict_build_renders(tmp_path):
    """The strict build (tutorials not executed: their code is shown, marked so) and two pages in
    headless Chromium: the home page and the API reference of ``fpq``."""
    site = tmp_path / "site"
    run = _build(site, tutorials=False)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "not executed in this build" in (site / "tutorials" / "digits.html").read_text()
    _check_site(site, tmp_path)


@pytest.mark.full
def test_make_docs_build_with_tutorials(tmp_path):
    """What ``make docs`` builds: strict, every tutorial executed (their outputs on the pages)."""
    site = tmp_path / "site"
    run = _build(site, tutorials=True)
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    digits = (site / "tutorials" / "digits.html").read_text()
    assert "not executed" not in digits and "EXACT" in digits
    _check_site(site, tmp_path)
