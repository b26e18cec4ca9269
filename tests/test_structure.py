"""The package's shape: no import cycles (function-level imports included), and every module
named in README.md's layout, so the flow config -> data -> model -> regularizer -> train ->
run dir -> evaluate -> table -> report stays readable from the file names."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jrbench"


def import_graph() -> dict[str, set[str]]:
    """module -> the jrbench modules it imports anywhere in its body (relative or absolute)."""
    modules = {p.stem for p in PACKAGE.glob("*.py")}
    graph = {}
    for path in PACKAGE.glob("*.py"):
        deps = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                deps |= {node.module.split(".")[0]} if node.module else {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jrbench."):
                deps.add(node.module.split(".")[1])
            elif isinstance(node, ast.Import):
                deps |= {a.name.split(".")[1] for a in node.names if a.name.startswith("jrbench.")}
        graph[path.stem] = deps & modules - {path.stem}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs (a, b) with an import path a -> b and b -> a."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for b in graph[todo.pop()] - seen:
                seen.add(b)
                todo.append(b)
        return seen

    closure = {m: reach(m) for m in graph}
    return sorted({tuple(sorted((a, b))) for a in graph for b in closure[a] if a != b and a in closure[b]})


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_config_imports_no_stage_of_the_flow():
    assert import_graph()["config"] <= {"errors", "registry"}


def test_every_module_is_in_the_readme_layout():
    readme = (ROOT / "README.md").read_text()
    layout = readme[readme.index("\njrbench/\n"):]
    named = set(re.findall(r"^  ([a-z_]+)\.py\b", layout, flags=re.M))
    named |= {n for line in re.findall(r"^  ([a-z_, .]+\.py)\b", layout, flags=re.M)
              for n in re.findall(r"([a-z_]+)\.py", line)}
    missing = sorted(p.stem for p in PACKAGE.glob("*.py") if p.stem not in named and not p.stem.startswith("__"))
    assert not missing, f"modules missing from README.md's layout: {missing}"


def readme_order() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    return re.findall(r"^  ([a-z_]+)\.py\b", readme[readme.index("\njrbench/\n"):], flags=re.M)


def test_readme_layout_lists_modules_in_flow_order():
    """Each module imports only modules listed above it in README.md: the layout is the flow."""
    order = readme_order()
    position = {m: i for i, m in enumerate(order)}
    late = {m: sorted(d for d in deps if position.get(d, -1) > position[m])
            for m, deps in import_graph().items() if m in position}
    assert not {m: d for m, d in late.items() if d}, "imports of modules listed below them in README.md"
