"""The shape of `server/`: laid out by feature, imports only going down, no import circle.

`server/` holds, from the bottom up: the shared modules at its top level (errors, config, auth,
audit, ...); `dicom/` (pure DICOM work) and `store/` (the engine and migrations); the features'
models, rules and stores, in the order `FEATURES` lists them (a feature may use the ones before
it); `web/`, the HTTP edge every handler shares; each feature's handlers (`HANDLERS`, in the same
order); `consultations/record.py`, the one view that reads every feature; and `app.py`/`cli.py`,
which put it all together. A module may import from its own layer and the layers below it.

The graph is read from the source with `ast`, nothing is imported, so it sees every import
statement wherever it stands: at module level, inside a function (an import moved into a function
to dodge a circle is still a circle, only a later one) and under `if TYPE_CHECKING:`.
TYPE_CHECKING-only imports count: an annotation naming a type from a module that imports this one
says the two modules know each other, which is the coupling the rule is about. A type needed both
ways belongs in a module below both.

Nodes are modules: `server/consultations/store.py` is `server.consultations.store`, and a
package's `__init__.py` is a node of its own (`server.store`). Importing a module is an edge to
that module only, not to its package's `__init__` (which Python runs first). `from server.store
import X`, where X is a name, is an edge to the `__init__`; `from server.dicom import deid`, where
`deid` is a module, is an edge to that module.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

SERVER_DIR = Path(__file__).resolve().parent.parent / "server"

# The features, from the bottom up: each may use the ones before it.
FEATURES = (
    "consultations",
    "experts",
    "notify",
    "live",
    "media",
    "imaging",
    "reports",
    "outcomes",
)
# Each feature's handlers (HTTP and Socket.IO), above the shared HTTP edge (`web/`).
HANDLERS = {
    "server.consultations.views": "consultations",
    "server.consultations.http": "consultations",
    "server.experts.http": "experts",
    "server.live.signaling": "live",
    "server.live.events": "live",
    "server.live.media_calls": "live",
    "server.live.queue_namespace": "live",
    "server.imaging.http": "imaging",
    "server.imaging.device_setup": "imaging",
    "server.reports.http": "reports",
    "server.outcomes.http": "outcomes",
}
# The whole record and the queue: the one view that reads every feature's handlers.
RECORD = "server.consultations.record"
ASSEMBLY = {"server.app", "server.cli", "server.__main__"}

# module -> the modules it imports -> the lines that import them
Graph = dict[str, dict[str, list[int]]]


def _module_name(root: Path, path: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(module: str, path: Path, known: set[str], top: str) -> Iterator[tuple[str, int]]:
    """(module of the package, line) for every import in `path`'s source, at any depth."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name == top or alias.name.startswith(top + "."):
                    yield alias.name, node.lineno
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                # Relative: counted from the importing module's package, one level up per dot.
                package = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = package[: len(package) - (node.level - 1)]
                base = ".".join([*base_parts, *([node.module] if node.module else [])])
            else:
                base = node.module or ""
            if base != top and not base.startswith(top + "."):
                continue
            # `from a import b` imports the module a.b when there is one, else a name from a.
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                yield (submodule if submodule in known else base), node.lineno


def import_graph(root: Path = SERVER_DIR) -> Graph:
    """Every module of the package at `root` and the package's modules it imports."""
    modules = {_module_name(root, path): path for path in sorted(root.rglob("*.py"))}
    known = set(modules)
    graph: Graph = {}
    for module, path in modules.items():
        edges: dict[str, list[int]] = {}
        for target, line in _imports(module, path, known, root.name):
            assert target in known, f"{module} (line {line}) imports {target}, which does not exist"
            if target == module:
                continue
            lines = edges.setdefault(target, [])
            if line not in lines:
                lines.append(line)
        graph[module] = edges
    return graph


def strongly_connected(graph: Graph) -> list[list[str]]:
    """Tarjan's algorithm: the groups of modules that all reach each other, largest first."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for target in sorted(graph[node]):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == node:
                    break
            groups.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(groups, key=lambda group: (-len(group), group))


def circles(graph: Graph) -> list[list[str]]:
    """The groups of two or more modules that import each other, directly or around a circle."""
    return [group for group in strongly_connected(graph) if len(group) > 1]


def shortest_circle(graph: Graph, group: list[str]) -> list[str]:
    """The shortest circle through the group's first module: `[a, b, ..., a]`."""
    members = set(group)
    start = group[0]
    paths: dict[str, list[str]] = {start: [start]}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for target in sorted(graph[node].keys() & members):
                if target == start:
                    return [*paths[node], start]
                if target not in paths:
                    paths[target] = [*paths[node], target]
                    following.append(target)
        frontier = following
    raise AssertionError(f"{group} holds no circle")


def describe(graph: Graph, group: list[str]) -> str:
    """A circle to read, then every import inside the group with its lines: the ones to cut."""
    edges = [
        f"    {module} imports {target} (line {', '.join(map(str, graph[module][target]))})"
        for module in group
        for target in sorted(graph[module].keys() & set(group))
    ]
    return "\n".join([" -> ".join(shortest_circle(graph, group)), *edges])


def layer(module: str) -> tuple[int, int]:
    """Where a module stands, bottom (0, 0) up; imports may only go to the same or lower."""
    parts = module.split(".")
    package = parts[1] if len(parts) > 1 else ""
    if module in ASSEMBLY:
        return (6, 0)
    if module == RECORD:
        return (5, 0)
    if module in HANDLERS:
        return (4, FEATURES.index(HANDLERS[module]))
    if package == "web":
        return (3, 0)
    if package in FEATURES:
        return (2, FEATURES.index(package))
    if package == "store":
        return (1, 1)
    if package == "dicom":
        return (1, 0)
    assert len(parts) <= 2, f"{module}: a package that is not placed in a layer"
    return (0, 0)  # the package itself and the shared modules at its top level


def upward_imports(graph: Graph) -> list[str]:
    """Every import of a module from a layer above the importer's."""
    return [
        f"{module} {layer(module)} imports {target} {layer(target)} "
        f"(line {', '.join(map(str, lines))})"
        for module, edges in sorted(graph.items())
        for target, lines in sorted(edges.items())
        if layer(target) > layer(module)
    ]


def test_imports_only_go_down_the_layers() -> None:
    graph = import_graph()
    assert {*HANDLERS, RECORD, *ASSEMBLY} <= graph.keys(), "a named module no longer exists"
    for module in graph:
        layer(module)  # every package is placed
    found = upward_imports(graph)
    assert not found, "imports from a layer above:\n" + "\n".join(found)


def test_the_layering_rule_finds_an_upward_import() -> None:
    """The checker itself: a feature's store reaching a later feature, a model reaching the HTTP
    edge and a handler reaching a later feature's handler are each found; the other way is not."""
    graph: Graph = {
        "server.consultations.store": {"server.imaging.store": [3]},
        "server.experts.model": {"server.web.edge": [5]},
        "server.consultations.http": {"server.reports.http": [7], "server.web.edge": [8]},
        "server.reports.store": {"server.imaging.store": [9], "server.store.database": [10]},
        "server.errors": {},
        "server.dicom.deid": {"server.errors": [2]},
    }
    assert upward_imports(graph) == [
        "server.consultations.http (4, 0) imports server.reports.http (4, 6) (line 7)",
        "server.consultations.store (2, 0) imports server.imaging.store (2, 5) (line 3)",
        "server.experts.model (2, 1) imports server.web.edge (3, 0) (line 5)",
    ]


def test_no_import_circle_among_server_modules() -> None:
    graph = import_graph()
    found = circles(graph)
    assert not found, "import circles among server modules:\n" + "\n".join(
        describe(graph, group) for group in found
    )


def test_the_graph_reads_server_imports_as_modules() -> None:
    graph = import_graph()
    # `from server.consultations import http as consultations_http`, a module: an edge to it.
    assert "server.consultations.http" in graph["server.app"]
    assert "server.consultations" not in graph["server.app"]
    # `from server.consultations.store import open_store`: an edge to that module.
    assert "server.consultations.store" in graph["server.app"]
    # `from server import image_limits`, a module: an edge to it, not to `server`.
    assert "server.image_limits" in graph["server.imaging.pixels"]
    assert "server" not in graph["server.imaging.pixels"]


def test_every_kind_of_import_can_close_a_circle(tmp_path: Path) -> None:
    """The checker itself: a circle made by an import in a function, a relative import or an
    import under TYPE_CHECKING is found."""
    files = {
        "__init__.py": "",
        "a.py": "from pkg import b\n",
        "b.py": "def late():\n    from . import a\n    return a\n",
        "c.py": "import pkg.d as d\n",
        "d.py": "from pkg.a import thing\n",
        "sub/__init__.py": "from pkg.sub.e import E\n",
        "sub/e.py": (
            "from typing import TYPE_CHECKING\n"
            "if TYPE_CHECKING:\n"
            "    from ..sub import Helper\n"
            "class E: ...\n"
        ),
    }
    for name, source in files.items():
        path = tmp_path / "pkg" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source)
    graph = import_graph(tmp_path / "pkg")
    assert graph["pkg.c"] == {"pkg.d": [1]}
    assert graph["pkg.d"] == {"pkg.a": [1]}
    assert circles(graph) == [["pkg.a", "pkg.b"], ["pkg.sub", "pkg.sub.e"]]
    assert describe(graph, ["pkg.a", "pkg.b"]).splitlines() == [
        "pkg.a -> pkg.b -> pkg.a",
        "    pkg.a imports pkg.b (line 1)",
        "    pkg.b imports pkg.a (line 2)",
    ]
