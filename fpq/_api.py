"""One fix for a naming clash the public API has by design.

DESIGN.md names modules after the public functions they define (``fpq/convert.py`` defines
``fpq.convert``). Importing such a submodule binds the module object over the package's lazy
function, so ``fpq.convert(...)`` would then call a module. Making the module callable keeps both
``fpq.convert(model)`` and ``fpq.convert.SOME_NAME`` working in any import order.
"""
from __future__ import annotations

import sys
import types


def callable_module(module_name: str, func_name: str) -> None:
    """Make ``sys.modules[module_name]`` callable as its function ``func_name``."""

    class _CallableModule(types.ModuleType):
        def __call__(self, *args, **kwargs):
            return getattr(self, func_name)(*args, **kwargs)

    sys.modules[module_name].__class__ = _CallableModule
