"""fpq's layout (issue 16, "Must show"): no module over about 600 lines without a stated reason.

A module past ``MAX_LINES`` says why in its docstring, in a sentence that starts with the marker
``Over 600 lines because`` (e.g. one algorithm that splitting would cut in two). The test reads
the source only (ast), so it imports nothing of fpq."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1] / "fpq"
MAX_LINES = 600
MARKER = "Over 600 lines because"


def _reason(path: Path) -> str | None:
    """The sentence after the marker in the module docstring, or None."""
    doc = ast.get_docstring(ast.parse(path.read_text(), str(path)), clean=False) or ""
    m = re.search(re.escape(MARKER) + r"\s+(.+?)(?:\.\s|\.$|$)", " ".join(doc.split()))
    return m.group(1) if m else None


def test_long_modules_state_why():
    modules = sorted(ROOT.rglob("*.py"))
    assert len(modules) > 50   # the walk found the package
    unexplained = []
    for path in modules:
        n = len(path.read_text().splitlines())
        if n > MAX_LINES:
            reason = _reason(path)
            if reason is None or len(reason.split()) < 6:   # a reason, not the marker alone
                unexplained.append(f"{path.relative_to(ROOT.parent)} ({n} lines)")
    assert not unexplained, (f"modules over {MAX_LINES} lines without a sentence '{MARKER} ...' in their docstring: "
                             f"{', '.join(unexplained)}; split them or say why not")


def test_the_marker_is_found(tmp_path):
    ok = tmp_path / "ok.py"
    ok.write_text('"""A module.\n\nOver 600 lines because one pass over the graph shares its state\nacross '
                  'every pattern.\n"""\n')
    assert _reason(ok).startswith("one pass over the graph shares its state across")
    for text in ('"""A module."""\n', '"""Over 600 lines, deliberately."""\n', '# Over 600 lines because x y z\n'):
        bad = tmp_path / "bad.py"
        bad.write_text(text)
        assert not _reason(bad) or len(_reason(bad).split()) < 6
