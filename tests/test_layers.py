"""The package's layering, checked from the source: every import counts, function-level ones included.

docs/ARCHITECTURE.md draws these layers; this test is what keeps the drawing true.
"""
from __future__ import annotations

import ast
from pathlib import Path

import wavexport

ROOT = Path(wavexport.__file__).parent

# Each unit (a subpackage or a top-level module) and the units it may import. Lower layers never import upper ones.
ALLOWED = {
    "core": set(),
    "models": {"core"},
    "tasks": {"core"},
    "config": {"core", "models", "tasks"},
    "checkpoint": {"core", "models", "tasks", "config"},
    "evaluation": {"core", "models", "tasks", "config"},
    "runtime": {"core", "models", "tasks", "config", "checkpoint", "evaluation"},
    "training": {"core", "models", "tasks", "config", "checkpoint", "evaluation"},
    "exporters": {"core", "models", "tasks", "config", "checkpoint", "evaluation", "runtime"},
    "plot": {"core", "models", "tasks", "config", "checkpoint", "evaluation", "runtime"},
    "webdemo": {"core"},
    "reproduce": {"core", "models", "tasks", "config", "checkpoint", "evaluation", "runtime", "training",
                  "exporters", "plot"},
    "sweep": {"core", "models", "tasks", "config", "checkpoint", "training"},
    "cli": None,  # the top: may import anything
    "__main__": {"cli"},
}


def _unit(path: Path) -> str:
    rel = path.relative_to(ROOT)
    return rel.parts[0] if len(rel.parts) > 1 else rel.stem


def _imports(path: Path, source: str | None = None) -> set[str]:
    """The wavexport units ``path`` imports, at any depth of the file (functions included)."""
    tree = ast.parse(path.read_text() if source is None else source, str(path))
    pkg = path.relative_to(ROOT).parts[:-1]  # the package the module sits in, relative to wavexport
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "wavexport":
                    continue
                target = parts[1:]
            else:
                base = list(pkg[:len(pkg) - (node.level - 1)]) if node.level > 1 else list(pkg)
                target = base + (node.module.split(".") if node.module else [])
            if target:
                found.add(target[0])
            else:  # "from .. import x": each name may be a unit
                found.update(a.name for a in node.names)
        elif isinstance(node, ast.Import):
            for a in node.names:
                parts = a.name.split(".")
                if parts[0] == "wavexport" and len(parts) > 1:
                    found.add(parts[1])
    return found


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path in ROOT.rglob("*.py"):
        unit = _unit(path)
        deps = {d for d in _imports(path) if d != unit and ((ROOT / d).is_dir() or (ROOT / f"{d}.py").is_file())}
        graph.setdefault(unit, set()).update(deps)
    return graph


def test_every_unit_has_a_declared_place():
    assert set(_graph()) - {"__init__"} <= set(ALLOWED), "add the new unit to ALLOWED and docs/ARCHITECTURE.md"


def test_units_import_only_what_their_layer_allows():
    bad = []
    for unit, deps in _graph().items():
        allowed = ALLOWED.get(unit)
        if allowed is None:
            continue
        bad += [f"{unit} -> {d}" for d in sorted(deps - allowed)]
    assert not bad, "imports against the layering: " + ", ".join(bad)


def test_no_cycles_between_units():
    graph = _graph()
    seen, stack = set(), []

    def visit(u):
        if u in stack:
            raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(u):] + [u]))
        if u in seen:
            return
        stack.append(u)
        for d in graph.get(u, ()):
            visit(d)
        stack.pop()
        seen.add(u)

    for u in graph:
        visit(u)


def test_click_only_in_the_cli():
    users = sorted(str(p.relative_to(ROOT)) for p in ROOT.rglob("*.py")
                   if _unit(p) != "cli" and any(isinstance(n, (ast.Import, ast.ImportFrom)) and
                                                "click" in ((getattr(n, "module", None) or "") +
                                                            " ".join(a.name for a in n.names)).split(".")[0]
                                                for n in ast.walk(ast.parse(p.read_text()))))
    assert users == [], f"click imported outside wavexport/cli: {users}"


def test_the_checker_sees_function_level_and_absolute_imports():
    probe = ROOT / "runtime" / "probe.py"  # never written: the source is given
    assert _imports(probe, "def f():\n    from ..training import Trainer\n") == {"training"}
    assert _imports(probe, "def f():\n    import wavexport.plot.waves\n") == {"plot"}
    assert _imports(probe, "from .session import X\nfrom .. import checkpoint\n") == {"runtime", "checkpoint"}
