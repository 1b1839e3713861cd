"""fpq's import structure (issue 16, DESIGN.md "Layout"): each folder imports only what lies below it
on a model's path, so there are no import cycles between fpq's packages. The imports are read from
the source (ast), module-level and inside functions alike: a function-level import is still a
dependency, only a deferred one."""
import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "fpq"


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _is_module(name: str) -> bool:
    path = ROOT.parent / Path(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


def _imports(path: Path, module_level_only: bool = False) -> set:
    """The fpq modules ``path`` imports; ``from .pkg import sub`` imports the submodule ``sub``
    (the package itself only when a name is not a submodule)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text(), str(path))
    nodes = tree.body if module_level_only else list(ast.walk(tree))
    out = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name == "fpq" or a.name.startswith("fpq.")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod != "fpq" and not mod.startswith("fpq."):
                continue
            subs = {f"{mod}.{a.name}" for a in node.names if _is_module(f"{mod}.{a.name}")}
            out |= subs
            if len(subs) < len(node.names):
                out.add(mod)
    out.discard(name)
    return out


def _graph() -> dict:
    return {_module_name(p): _imports(p) for p in ROOT.rglob("*.py")}


def _unit(module: str) -> str:
    """The package a module belongs to: fpq.export.reader -> export, fpq.typeplan -> typeplan."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "fpq"


def _unit_graph() -> dict:
    g = {}
    for mod, deps in _graph().items():
        u = _unit(mod)
        if u == "fpq":     # fpq/__init__.py: the public facade binds names from everywhere
            continue
        g.setdefault(u, set()).update(_unit(d) for d in deps if _unit(d) not in (u, "fpq"))
    return g


def _reaches(g: dict, a: str, b: str) -> list | None:
    """An import path a -> ... -> b, or None."""
    seen, stack = {a}, [[a]]
    while stack:
        path = stack.pop()
        for n in sorted(g.get(path[-1], ())):
            if n == b:
                return path + [n]
            if n not in seen:
                seen.add(n)
                stack.append(path + [n])
    return None


@pytest.mark.parametrize("a, b", [("emulate", "export"), ("typeplan", "export"), ("ir", "export"),
                                  ("typeplan", "ir"), ("numerics", "export"), ("formats", "numerics")])
def test_no_loop_between(a, b):
    g = _unit_graph()
    there, back = _reaches(g, a, b), _reaches(g, b, a)
    assert there is None or back is None, f"import loop: {' -> '.join(there)} and {' -> '.join(back)}"


def test_cost_model_does_not_depend_on_the_hls_writer():
    """cost_model describes hardware; the HLS writer is one consumer of the same facts, not a source."""
    path = _reaches(_unit_graph(), "cost_model", "hls")
    assert path is None, " -> ".join(path)


def test_lower_layers_import_nothing_above_them():
    """formats, numerics, typeplan and ir sit at the bottom of the path (numpy only)."""
    g = _unit_graph()
    allowed = {"formats": set(), "numerics": {"formats"}, "typeplan": {"formats", "numerics"},
               "ir": {"formats", "numerics", "typeplan"}}
    for unit, ok in allowed.items():
        assert g.get(unit, set()) <= ok, (unit, g.get(unit, set()) - ok)


def test_no_module_level_import_cycle():
    """No cycle among fpq's modules through their module-level imports (what Python runs at import)."""
    graph = {_module_name(p): _imports(p, module_level_only=True) for p in ROOT.rglob("*.py")}
    state = {}

    def visit(n, stack):
        state[n] = 1
        for d in sorted(graph.get(n, ())):
            if d not in graph:
                continue
            if state.get(d) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(d):] + [d]))
            if d not in state:
                visit(d, stack + [d])
        state[n] = 2

    for n in sorted(graph):
        if n not in state:
            visit(n, [n])


def test_no_cycle_among_packages():
    """The goal: fpq's packages form a DAG, function-level imports included."""
    g = _unit_graph()
    units = sorted(g)
    for i, a in enumerate(units):
        for b in units[i + 1:]:
            there, back = _reaches(g, a, b), _reaches(g, b, a)
            assert there is None or back is None, f"{' -> '.join(there)} and {' -> '.join(back)}"
