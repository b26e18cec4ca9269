"""The package's shape: one folder per stage of the flow config -> data -> model -> penalty ->
train -> run dir -> evaluate -> certify -> table -> report (plus cost and studies), no import
cycles (function-level imports included, relative imports of every depth followed), every
module named in the layout of docs/architecture.md, and each module importing only modules listed
above it there."""
import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jrbench"
# The small shared modules at the top; everything else lives in a stage folder.
SHARED = {"errors", "device", "registry", "atomic", "specfile", "stats", "schema", "config"}
# The page that carries the layout (README.md did until the manual moved to docs/).
LAYOUT_PAGE = ROOT / "docs" / "architecture.md"


def module_name(path: Path, package: Path = PACKAGE) -> str:
    """jrbench/penalty/regularizers.py -> 'penalty.regularizers'; a folder's __init__.py -> the folder."""
    parts = list(path.relative_to(package).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imports_of(source: str, name: str, is_package: bool, modules: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports anywhere in ``source``: relative imports
    of any depth (``from ..training import rundir``, ``from .api import x``) and absolute ones."""
    here = name.split(".") if is_package else name.split(".")[:-1]
    deps = set()

    def add(target: str, names: list[str]):
        found = [f"{target}.{n}".strip(".") for n in names if f"{target}.{n}".strip(".") in modules]
        deps.update(found or ([target] if target in modules else []))

    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = here[:len(here) - (node.level - 1)] if node.level > 1 else here
            assert node.level - 1 <= len(here), f"{name}: import above the package"
            target = ".".join(base + (node.module.split(".") if node.module else []))
            add(target, [a.name for a in node.names])
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("jrbench."):
            add(node.module.removeprefix("jrbench."), [a.name for a in node.names])
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("jrbench."):
                    add(a.name.removeprefix("jrbench."), [])
    return deps - {name, ""}


def import_graph(package: Path = PACKAGE) -> dict[str, set[str]]:
    """module (dotted, under jrbench) -> the jrbench modules it imports anywhere in its body."""
    paths = {module_name(p, package): p for p in package.rglob("*.py") if p.stem != "__main__"}
    paths.pop("", None)
    modules = set(paths)
    return {m: imports_of(p.read_text(), m, p.stem == "__init__", modules) for m, p in paths.items()}


def cycles(graph: dict[str, set[str]]) -> list[tuple[str, str]]:
    """Pairs (a, b) with an import path a -> b and b -> a."""
    def reach(start):
        seen, todo = set(), [start]
        while todo:
            for b in graph.get(todo.pop(), set()) - seen:
                seen.add(b)
                todo.append(b)
        return seen

    closure = {m: reach(m) for m in graph}
    return sorted({tuple(sorted((a, b))) for a in graph for b in closure[a] if a != b and a in closure[b]})


def test_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [("a", "b"), ("a", "c"), ("b", "c")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_import_reader_follows_relative_imports_of_every_depth():
    modules = {"config", "errors", "training", "training.rundir", "training.loop", "cost", "cost.gate", "cost.overhead",
               "study", "study.sweep", "models", "models.architectures"}
    source = ("from ..config import RunConfig\n"
              "from ..training import rundir\n"
              "from . import overhead\n"
              "from .overhead import x\n"
              "def f():\n    from ..models.architectures import build_model\n"
              "import jrbench.study.sweep as s\n"
              "from jrbench.errors import UserError\n")
    assert imports_of(source, "cost.gate", False, modules) == {
        "config", "training.rundir", "cost.overhead", "models.architectures", "study.sweep", "errors"}
    assert imports_of("from .rundir import load_run\nfrom ..errors import E\n", "training", True, modules) == {
        "training.rundir", "errors"}
    assert imports_of("from .training.loop import train\n", "cli", False, modules) == {"training.loop"}


def test_import_graph_sees_the_package_through_its_folders():
    graph = import_graph()
    assert "penalty.regularizers" in graph and "study.ray_engine" in graph
    assert "penalty.jacobian" in graph["penalty.regularizers"]
    assert "training.rundir" in graph["evaluate.api"] and "config" in graph["training.loop"]


def test_no_import_cycles():
    assert cycles(import_graph()) == []


def test_config_imports_no_stage_of_the_flow():
    assert import_graph()["config"] <= {"errors", "registry", "schema"}


def test_only_shared_modules_sit_at_the_top():
    top = {p.stem for p in PACKAGE.glob("*.py")} - {"__init__", "__main__"}
    assert top == SHARED, f"modules at the top that belong in a stage folder: {sorted(top - SHARED)}"


def layout_order(text: str | None = None) -> list[str]:
    """Modules (dotted) in the order the layout of docs/architecture.md lists them: ``  name.py``
    at the top, ``  stage/`` then ``    name.py`` inside a stage folder. A folder's own
    ``__init__`` counts after its modules (the cli package's index imports its command modules)."""
    page = LAYOUT_PAGE.read_text() if text is None else text
    layout = page[page.index("\njrbench/\n"):page.index("\n```", page.index("\njrbench/\n"))]
    order, folder = [], None

    def close():
        if folder:
            order.append(folder)

    for line in layout.splitlines():
        if m := re.match(r"^  ([a-z_]+)/", line):
            close()
            folder = m.group(1)
        elif m := re.match(r"^    ([a-z_]+)\.py\b", line):
            assert folder, line
            order.append(f"{folder}.{m.group(1)}")
        elif m := re.match(r"^  ([a-z_]+)\.py\b", line):
            close()
            folder = None
            order.append(m.group(1))
        elif re.match(r"^\S", line):
            close()
            folder = None
    close()
    return order


def test_layout_reader_reads_folders_and_top_modules():
    text = "x\n```\njrbench/\n  errors.py   E\n  data/       d\n    synth.py  s\n  cli.py  c\ntests/  t\n```\n"
    assert layout_order(text) == ["errors", "data.synth", "data", "cli"]


def test_every_module_is_in_the_layout():
    named, graph = set(layout_order()), import_graph()  # once: each call parses every module
    missing = sorted(m for m in graph if m not in named)
    assert not missing, f"modules missing from the layout in docs/architecture.md: {missing}"
    ghosts = sorted(m for m in named if m not in graph)
    assert not ghosts, f"the layout in docs/architecture.md names modules that do not exist: {ghosts}"


def test_layout_lists_modules_in_flow_order():
    """Each module imports only modules listed above it in docs/architecture.md: the layout is the flow."""
    order = layout_order()
    position = {m: i for i, m in enumerate(order)}
    late = {m: sorted(d for d in deps if position.get(d, -1) > position[m])
            for m, deps in import_graph().items() if m in position}
    assert not {m: d for m, d in late.items() if d}, "imports of modules listed below them in docs/architecture.md"

