"""The hash of fpq's own code that keys a sweep's cache: a point computed by other code is
recomputed, while editing the files that only present results keeps the cache valid."""
from __future__ import annotations

import hashlib


# files of this package that only present results (editing them keeps the cache valid)
_PRESENTATION = ("html.py", "plots.py", "pareto.py")


def source_hash() -> str:
    """Hash of fpq's code and the measured cost tables: a point cached by other code is recomputed."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    # the command line and the test harnesses compute nothing a point's result depends on (the
    # model itself is in context_hash)
    files = sorted(p for p in root.rglob("*.py") if not (p.parent.name == "report" and p.name in _PRESENTATION)
                   and p.parent.name not in ("cli", "testing"))
    files += sorted((root / "cost_model" / "data").glob("*.csv"))  # the operator tables estimate_cost reads
    h = hashlib.sha256()
    for p in files:
        h.update(str(p.relative_to(root.parent)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()[:16]
