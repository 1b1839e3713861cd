"""A griffe extension for fpq's API reference: fpq's docstrings head their doctests ``Example:``
(Google style, checked by tests/test_docstrings.py); griffe's Google parser only knows the plural,
so the singular is read as ``Examples:`` and its ``>>>`` lines are rendered as code."""
from __future__ import annotations

import re

from griffe import Extension

SINGULAR = re.compile(r"^(\s*)Example:[ \t]*$", re.M)


class ExamplesSection(Extension):
    """Rename an ``Example:`` section to ``Examples:`` on every object griffe loads."""

    def on_instance(self, *, obj, **kwargs) -> None:  # noqa: D102 - griffe's hook
        doc = getattr(obj, "docstring", None)
        if doc is not None and "Example:" in doc.value:
            doc.value = SINGULAR.sub(r"\1Examples:", doc.value)
