"""The house's shape, kept honest: data flows one way (events -> correlate -> verdicts -> report ->
render), so no module or package imports one that imports it back, lazy imports inside functions
included (they hide an edge, they do not remove it)."""
from __future__ import annotations

import ast
from pathlib import Path

PKG = Path(__file__).resolve().parent.parent / "sigtrace"
# each stage may import only from the stages listed after it (and its own package)
LAYERS = ["cli", "commands", "kubectl_plugin", "lab", "record", "analyze", "export", "render", "report",
          "verdicts", "correlate", "k8s", "backends", "events", "pods", "errors"]


def modules() -> dict[str, Path]:
    out = {}
    for f in PKG.rglob("*.py"):
        parts = list(f.relative_to(PKG.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = f
    return out


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        deps = set()
        is_pkg = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.Import):
                targets = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = name.split(".")
                if node.level:
                    base = base[:len(base) - node.level + (1 if is_pkg else 0)]
                mod = ".".join(base + ([node.module] if node.module else []))
                targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in mods else mod for a in node.names]
            for t in targets:
                while t not in mods and "." in t:
                    t = t.rsplit(".", 1)[0]
                if t in mods and t != name and t.startswith("sigtrace"):
                    deps.add(t)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def stage(module: str) -> str:
    return module.split(".")[1] if module.count(".") else "sigtrace"


def test_no_module_imports_one_that_imports_it_back():
    assert cycles(import_graph()) == []


def test_stages_only_look_down():
    wrong = []
    for mod, deps in import_graph().items():
        a = stage(mod)
        for dep in deps:
            b = stage(dep)
            if a in LAYERS and b in LAYERS and a != b and LAYERS.index(b) < LAYERS.index(a):
                wrong.append(f"{mod} -> {dep}")
    assert wrong == []


def external_imports(path: Path) -> set[str]:
    """The top-level packages a module imports from outside sigtrace, lazy imports included."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            out.add(node.module.split(".")[0])
    return out


def test_verdicts_ask_the_facts_and_never_touch_pandas():
    # the rules ask typed questions (sigtrace/correlate/facts.py); numpy and pandas stay in correlate
    wrong = {str(f.relative_to(PKG)): sorted(external_imports(f) & {"numpy", "pandas"})
             for f in sorted((PKG / "verdicts").rglob("*.py"))}
    assert {f: libs for f, libs in wrong.items() if libs} == {}
