"""The import structure of mindspeed_mm.osp: no import cycles between its modules (apart from the listed known ones),
layers that import one way, and an `osp` parser that builds without torch.

The graph is read from the sources with `ast`: every `import` / `from ... import` of a module, at module level and
inside functions and classes (relative imports resolved), except those under `if TYPE_CHECKING:`. An import of
`a.b.c.name` counts as a dependency on the innermost module of that path (`a.b.c`, or `a.b.c.name` when that is a
module). Importing a submodule also runs its packages' `__init__`, but that is no edge here: a package importing its
own submodules would otherwise always form a cycle. Modules named in strings (`importlib.import_module`) are not seen.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import mindspeed_mm.osp

PACKAGE = "mindspeed_mm.osp"
ROOT = Path(mindspeed_mm.osp.__file__).resolve().parent

# Imports known to close a cycle, (importer, imported) with the package prefix left off. Each entry must still
# exist and still close a cycle (test_known_cycles_are_still_there), so the list only shrinks.
KNOWN_BACK_EDGES = {
    # dit.from_pretrained / dit.loading.read_checkpoint also read an `osp train` run (docs/training.md), through the
    # training engine: dit.loading -> training.export -> training.job / pipelines.video -> ... -> dit.loading.
    # To remove: read `osp train` runs one layer up only (convert.dit already does, for `osp convert dit`).
    ("dit.loading", "training.export"),
}

# (modules under this prefix, must not import modules under these prefixes, why)
LAYER_RULES = (
    ("checkpoints", ("dit", "vae", "vae_ms", "convert", "parallel", "training", "pipelines", "cli"),
     "checkpoints/ is the format layer below the models and the converters: a model (a parallel plan) is passed in"),
    ("dit", ("convert", "cli"), "models do not depend on converters: shared formats live in checkpoints/"),
    ("vae", ("convert", "cli"), "models do not depend on converters: shared formats live in checkpoints/"),
    ("", ("cli",), "the library never imports the command line (cli/ imports the library)"),
)


def _short(name: str) -> str:
    return name[len(PACKAGE) + 1:] if name.startswith(PACKAGE + ".") else name


def _file(module: str) -> str:
    """The source file of `module` (a short name), relative to mindspeed_mm/osp."""
    package = ROOT.joinpath(*module.split("."), "__init__.py")
    return str(package.relative_to(ROOT)) if package.is_file() else module.replace(".", "/") + ".py"


def _modules() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([PACKAGE, *parts])] = path
    return found


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or \
        (isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(name: str, path: Path, modules: dict[str, Path]) -> dict[str, int]:
    """{imported module of the package: first line importing it} of module `name`."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: dict[str, int] = {}

    def add(target: str, line: int) -> None:
        while target and target not in modules:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.setdefault(target, line)

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node.lineno)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            for alias in node.names:
                add(f"{source}.{alias.name}" if f"{source}.{alias.name}" in modules else source, node.lineno)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(ast.parse(path.read_text(encoding="utf-8"), filename=str(path)))
    return out


def import_graph() -> dict[str, dict[str, int]]:
    """{module: {module it imports: line}} over the package, names without the package prefix."""
    modules = _modules()
    return {_short(m): {_short(t): line for t, line in _imports(m, p, modules).items()} for m, p in modules.items()}


def _components(graph: dict) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, result = {}, {}, set(), [], []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    result.append(sorted(component))
    return result


def _path(graph: dict, start: str, goal: str, within: set) -> list[str]:
    """A shortest import path start -> ... -> goal through `within` (breadth first)."""
    previous, frontier = {start: None}, [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child in within and child not in previous:
                    previous[child] = node
                    following.append(child)
        frontier = following
        if goal in previous:
            break
    path, node = [], goal
    while node is not None:
        path.append(node)
        node = previous[node]
    return path[::-1]


def _without(graph: dict, edges) -> dict:
    return {m: {t: line for t, line in targets.items() if (m, t) not in edges} for m, targets in graph.items()}


def describe_cycles(graph: dict) -> list[str]:
    """One line per cycle, e.g. `a -> b (b.py:12) -> a`, a shortest cycle through each component's first module."""
    lines = []
    for component in _components(graph):
        first, within = component[0], set(component)
        back = min((m for m in component if first in graph[m]), key=lambda m: len(_path(graph, first, m, within)))
        path = _path(graph, first, back, within) + [first]
        steps = [path[0]] + [f"{b} ({_file(a)}:{graph[a][b]})" for a, b in zip(path, path[1:])]
        lines.append(f"{len(component)} modules {component}: " + " -> ".join(steps))
    return lines


def test_no_import_cycles():
    cycles = describe_cycles(_without(import_graph(), KNOWN_BACK_EDGES))
    assert not cycles, ("import cycles (module -> imported module (where)); make the dependency go one way, e.g. by "
                        "moving what both sides share into a module below them:\n  " + "\n  ".join(cycles))


def test_known_cycles_are_still_there():
    graph = import_graph()
    stale = []
    for importer, imported in sorted(KNOWN_BACK_EDGES):
        if imported not in graph.get(importer, {}):
            stale.append(f"{importer} no longer imports {imported}")
            continue
        rest = _without(graph, KNOWN_BACK_EDGES)
        if importer not in _path(rest, imported, importer, set(rest)):
            stale.append(f"{importer} -> {imported} closes no cycle any more")
    assert not stale, "remove these from KNOWN_BACK_EDGES: " + "; ".join(stale)


def test_layers_import_one_way():
    problems = []
    for module, targets in sorted(import_graph().items()):
        for prefix, forbidden, why in LAYER_RULES:
            if prefix and module != prefix and not module.startswith(prefix + "."):
                continue
            if not prefix and (module == "cli" or module.startswith("cli.")):
                continue
            for target, line in sorted(targets.items()):
                if any(target == f or target.startswith(f + ".") for f in forbidden):
                    problems.append(f"{module} imports {target} ({_file(module)}:{line}): {why}")
    assert not problems, "\n".join(problems)


def test_the_checker_finds_a_cycle_and_names_it():
    graph = {"a": {"b": 3}, "b": {"c": 5}, "c": {"a": 7}, "d": {"a": 1}}
    assert describe_cycles(graph) == ["3 modules ['a', 'b', 'c']: a -> b (a.py:3) -> c (b.py:5) -> a (c.py:7)"]
    assert describe_cycles({"a": {"b": 1}, "b": {}}) == []


def test_the_graph_sees_function_local_and_relative_imports():
    graph = import_graph()
    assert "training.export" in graph["dit.loading"]            # function-local
    assert "pipelines.folder" in graph["pipelines.video"]       # relative, module level
    assert "cli" not in graph["cli.env"] and "envinfo" in graph["cli.env"]


def test_the_parser_builds_without_torch():
    probe = ("import sys; from mindspeed_mm.osp.cli import build_parser; build_parser(); "
             "print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]", "building the `osp` parser imported " + out.stdout.strip() + \
        ": keep heavy imports inside the command handlers"
