"""The house rules the layout promises, checked on the source: dependencies run one way (no import
cycle, counting imports inside functions too), receiver/ never imports pipeline/, and no module
grows past 700 lines (the service past 300)."""

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("receiver", "pipeline")


def modules():
    """{dotted name: path} of every module of gotel's packages."""
    out = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join(parts)] = path
    return out


def imports(path, known):
    """gotel modules that path imports, anywhere in it (module level or inside functions)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        else:
            continue
        for name in names:
            while name and name not in known:
                name = name.rpartition(".")[0]
            if name and name not in PACKAGES:
                found.add(name)
    return found


def graph():
    known = modules()
    return {name: imports(path, known) - {name} for name, path in known.items()}


def test_no_import_cycles_even_through_imports_inside_functions():
    edges = graph()
    state, cycles = {}, []

    def visit(node, stack):
        state[node] = "open"
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == "open":
                cycles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, stack + [nxt])
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_receiver_never_imports_pipeline():
    wrong = {(a, b) for a, targets in graph().items() if a.startswith("receiver")
             for b in targets if b.startswith("pipeline")}
    assert wrong == set()


def test_modules_stay_small():
    sizes = {name: len(path.read_text().splitlines()) for name, path in modules().items()}
    assert {n: s for n, s in sizes.items() if s > 700} == {}
    assert sizes["pipeline.service"] <= 300


def test_the_checker_sees_a_cycle_hidden_in_a_function(tmp_path, monkeypatch):
    (tmp_path / "receiver").mkdir()
    (tmp_path / "pipeline").mkdir()
    (tmp_path / "receiver" / "a.py").write_text("def f():\n    from pipeline import b\n")
    (tmp_path / "pipeline" / "b.py").write_text("from receiver import a\n")
    monkeypatch.setattr(__import__(__name__), "ROOT", tmp_path)
    assert graph() == {"receiver.a": {"pipeline.b"}, "pipeline.b": {"receiver.a"}}
