"""The package's layout: no import cycle anywhere, and the library never imports its tools.

The import graph is read from the source (``ast``), not from running it: every import a module of
``flinknet`` makes of another, at module level and inside functions or methods (an import that
runs later still needs the other module to be importable then), except under ``if
TYPE_CHECKING:``. The compiled modules' Python-level imports (``import`` / ``from ... import``
lines in the ``.pyx`` files; ``cimport`` is resolved when they are compiled) are read too.

An edge goes to the module the statement asks for:

* ``import flinknet.a.b`` and ``from flinknet.a.b import name`` -> ``flinknet.a.b``;
* ``from flinknet.a import b`` where ``b`` is a submodule -> ``flinknet.a.b`` (Python imports the
  submodule; a partly initialised ``flinknet.a`` is fine), otherwise -> ``flinknet.a`` (the name
  must already be defined by ``flinknet/a/__init__.py``);
* relative imports the same way, resolved against the importing module's package.

The parent packages Python runs first (``flinknet/__init__.py`` before any ``flinknet.x``) are no
edges: they start before the module and never need it to have finished. So a package whose
``__init__`` imports its submodules, while one submodule imports a sibling directly, has no
cycle; a submodule that imports a name *from its package* (``from flinknet.partition import X``)
while ``flinknet/partition/__init__.py`` imports that submodule is a cycle.
"""

from __future__ import annotations

import ast
import pathlib
import re
import textwrap
from collections import deque
from dataclasses import dataclass

ROOT = pathlib.Path(__file__).resolve().parent.parent
PACKAGE = "flinknet"
TOOLS = "flinknet.tools"
#: modules outside flinknet.tools allowed to import it: ``python -m flinknet`` runs the CLI (the
#: library itself never imports ``flinknet.__main__``)
TOOL_ENTRY_POINTS = {"flinknet.__main__"}
#: the names with a leading underscore the tools still import from the library, each for want of
#: a public one: (importing module, what it imports)
TOOLS_UNDERSCORE_IMPORTS = {
    # is_debug_build() is not re-exported by flinknet: the version line and bench's environment
    ("flinknet.tools.cli", "flinknet._core.buffer.is_debug_build"),
    ("flinknet.tools.bench.report", "flinknet._core.buffer.is_debug_build"),
    # the hostile-peer benchmark crafts Flink's frames as a raw peer would (the frame codec is
    # the transport's, not the public API)
    ("flinknet.tools.bench.hostile", "flinknet._core.protocol"),
}


# -- the graph --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Import:
    source: str     # the importing module
    target: str     # the module imported (see the module docstring)
    path: str       # the importing file, relative to the root given to package_modules
    line: int

    def __str__(self) -> str:
        return f"{self.source} -> {self.target} ({self.path}:{self.line})"


def package_modules(root: pathlib.Path, package: str) -> dict[str, pathlib.Path]:
    """Module name -> source file (``.py``, or ``.pyx`` for a compiled module) of every module of
    ``package`` under ``root``; a package's name maps to its ``__init__.py``."""
    modules = {}
    for path in sorted((root / package).rglob("*")):
        if path.suffix not in (".py", ".pyx") or "__pycache__" in path.parts:
            continue
        parts = path.relative_to(root).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules.setdefault(".".join(parts), path)        # a .py wins over a .pyx of the same name
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _import_nodes(tree: ast.AST):
    """Every Import / ImportFrom node, wherever it is, except in the body of ``if TYPE_CHECKING:``."""
    todo = [tree]
    while todo:
        node = todo.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node
            continue
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            todo.extend(node.orelse)
            continue
        todo.extend(ast.iter_child_nodes(node))


_PYX_IMPORT = re.compile(r"^[ \t]*(?:import[ \t]+\w|from[ \t]+[\w.]+[ \t]+import\b)", re.M)


def _pyx_tree(text: str) -> ast.Module:
    """The Python-level import statements of a ``.pyx`` file (``cimport`` lines are not), each
    parsed on its own with its line number kept."""
    body = []
    for match in _PYX_IMPORT.finditer(text):
        start = match.start()
        end = text.find("\n", start)
        end = len(text) if end < 0 else end
        statement = text[start:end]
        if "(" in statement and ")" not in statement:             # from x import (\n a,\n b)
            end = text.index(")", start) + 1
            statement = text[start:end]
        line = text.count("\n", 0, start) + 1
        node = ast.parse(textwrap.dedent(statement)).body[0]
        ast.increment_lineno(node, line - 1)
        body.append(node)
    return ast.Module(body=body, type_ignores=[])


def imports_of(name: str, path: pathlib.Path, modules: dict[str, pathlib.Path], root: pathlib.Path,
               package: str) -> list[Import]:
    """The imports of modules of ``package`` that module ``name`` (file ``path``) makes."""
    text = path.read_text()
    tree = _pyx_tree(text) if path.suffix == ".pyx" else ast.parse(text, str(path))
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rpartition(".")[0]     # the package relative imports start in
    rel = str(path.relative_to(root))
    out = []

    def known(module: str) -> str:
        """``module``, or its longest known parent (a name imported as if it were a module)."""
        while module not in modules and "." in module:
            module = module.rpartition(".")[0]
        return module

    def add(target: str, node: ast.stmt) -> None:
        if target == package or target.startswith(package + "."):
            edge = Import(name, known(target), rel, node.lineno)
            if edge not in out:                     # from x import (a, b): one edge
                out.append(edge)

    for node in sorted(_import_nodes(tree), key=lambda n: (n.lineno, n.col_offset)):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name, node)
            continue
        if node.level:
            base_parts = here.split(".")
            if node.level - 1 > len(base_parts) - 1:
                raise AssertionError(f"{rel}:{node.lineno}: relative import beyond the top package")
            base = ".".join(base_parts[:len(base_parts) - (node.level - 1)])
            module = f"{base}.{node.module}" if node.module else base
        else:
            module = node.module or ""
        for alias in node.names:
            sub = f"{module}.{alias.name}"
            add(sub if alias.name != "*" and sub in modules else module, node)
    return out


def import_graph(root: pathlib.Path = ROOT, package: str = PACKAGE) -> dict[str, list[Import]]:
    """Module -> the imports of other (or the same) modules of ``package`` it makes."""
    modules = package_modules(root, package)
    return {name: imports_of(name, path, modules, root, package) for name, path in modules.items()}


def strongly_connected_components(graph: dict[str, list[Import]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative; every component, in no particular order."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    counter = 0
    for start in graph:
        if start in index:
            continue
        work = [(start, iter([e.target for e in graph[start]]))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, successors = work[-1]
            advanced = False
            for nxt in successors:
                if nxt not in graph:
                    continue
                if nxt not in index:
                    index[nxt] = low[nxt] = counter
                    counter += 1
                    stack.append(nxt)
                    on_stack.add(nxt)
                    work.append((nxt, iter([e.target for e in graph[nxt]])))
                    advanced = True
                    break
                if nxt in on_stack:
                    low[node] = min(low[node], index[nxt])
            if advanced:
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return components


def cycles(graph: dict[str, list[Import]]) -> list[list[str]]:
    """The components that are cycles: two or more modules, or one that imports itself."""
    found = []
    for component in strongly_connected_components(graph):
        if len(component) > 1 or any(e.target == component[0] for e in graph[component[0]]):
            found.append(component)
    return sorted(found)


def example_cycle(graph: dict[str, list[Import]], component: list[str]) -> list[Import]:
    """A shortest cycle through the component's first module, as the imports that close it."""
    members = set(component)
    start = component[0]
    came_from: dict[str, Import] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for edge in graph[node]:
            if edge.target not in members:
                continue
            if edge.target == start:
                path = [edge]
                while path[0].source != start:
                    path.insert(0, came_from[path[0].source])
                return path
            if edge.target not in came_from:
                came_from[edge.target] = edge
                queue.append(edge.target)
    raise AssertionError(f"no cycle through {start}")


def describe_cycles(graph: dict[str, list[Import]], found: list[list[str]]) -> str:
    lines = [f"{len(found)} import cycle(s):"]
    for i, component in enumerate(found, 1):
        lines.append(f"cycle {i}: {', '.join(component)}")
        lines.extend(f"    {edge}" for edge in example_cycle(graph, component))
    return "\n".join(lines)


# -- the package ------------------------------------------------------------------------------------

def test_the_graph_sees_the_package():
    graph = import_graph()
    assert {"flinknet", "flinknet.environment", "flinknet._core.pool", "flinknet.tools.cli",
            "flinknet.tools.bench.report", "flinknet.tools.demo.job"} <= set(graph)
    targets = {e.target for e in graph["flinknet.environment"]}
    assert {"flinknet._core.pool", "flinknet.transport.handshake", "flinknet.partition"} <= targets


def test_no_import_cycle_in_flinknet():
    graph = import_graph()
    found = cycles(graph)
    assert not found, describe_cycles(graph, found)


def test_no_import_cycle_through_the_tools():
    graph = import_graph()
    found = [c for c in cycles(graph) if any(m == TOOLS or m.startswith(TOOLS + ".") for m in c)]
    assert not found, describe_cycles(graph, found)


def test_the_library_never_imports_the_tools():
    graph = import_graph()
    bad = [str(e) for name, edges in graph.items() for e in edges
           if not (name == TOOLS or name.startswith(TOOLS + ".")) and name not in TOOL_ENTRY_POINTS
           and (e.target == TOOLS or e.target.startswith(TOOLS + "."))]
    assert not bad, "the library imports flinknet.tools:\n" + "\n".join(bad)


def test_the_tools_import_no_underscore_name_of_the_library():
    """Every library module and name the tools import is public, but for the listed exceptions."""
    modules = package_modules(ROOT, PACKAGE)
    found = set()
    for name, path in modules.items():
        if not name.startswith(TOOLS + ".") or path.suffix != ".py":
            continue
        for node in _import_nodes(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                wanted = [alias.name for alias in node.names]
            elif node.level == 0 and node.module:
                wanted = [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue        # relative imports stay inside the tools
            for what in wanted:
                library = what.startswith(PACKAGE + ".") and not what.startswith(TOOLS + ".")
                if library and any(part.startswith("_") and part != "__version__"
                                   for part in what.split(".")[1:]):
                    found.add((name, what))
    assert found == TOOLS_UNDERSCORE_IMPORTS, (
        f"new: {sorted(found - TOOLS_UNDERSCORE_IMPORTS)}; gone (drop from the list): "
        f"{sorted(TOOLS_UNDERSCORE_IMPORTS - found)}")


# -- the analysis itself, on small made-up packages -----------------------------------------------

def _make(tmp_path: pathlib.Path, files: dict[str, str]) -> dict[str, list[Import]]:
    for rel, text in files.items():
        path = tmp_path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return import_graph(tmp_path, "pkg")


def test_siblings_under_an_init_that_imports_them_are_no_cycle(tmp_path):
    graph = _make(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\nfrom pkg.b import B\n",
        "pkg/a.py": "from pkg.b import B\nA = 1\n",
        "pkg/b.py": "from . import c\nB = 2\n",
        "pkg/c.py": "import pkg.d\n",
        "pkg/d.py": "",
    })
    assert {e.target for e in graph["pkg"]} == {"pkg.a", "pkg.b"}
    assert [e.target for e in graph["pkg.b"]] == ["pkg.c"]       # a submodule, not pkg/__init__
    assert cycles(graph) == []


def test_a_name_from_the_own_package_is_a_cycle(tmp_path):
    graph = _make(tmp_path, {
        "pkg/__init__.py": "from pkg.a import A\nX = 1\n",
        "pkg/a.py": "from pkg import X\nA = 1\n",
    })
    assert cycles(graph) == [["pkg", "pkg.a"]]
    text = describe_cycles(graph, cycles(graph))
    assert "pkg -> pkg.a (pkg/__init__.py:1)" in text and "pkg.a -> pkg (pkg/a.py:1)" in text


def test_imports_inside_functions_and_relative_ones_count(tmp_path):
    graph = _make(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/sub/__init__.py": "",
        "pkg/sub/a.py": "def f():\n    from ..b import g\n    return g\n",
        "pkg/b.py": "class C:\n    def m(self):\n        from .sub import a\n        import pkg.sub.a as x\n",
    })
    assert [(e.target, e.line) for e in graph["pkg.sub.a"]] == [("pkg.b", 2)]
    assert [(e.target, e.line) for e in graph["pkg.b"]] == [("pkg.sub.a", 3), ("pkg.sub.a", 4)]
    assert cycles(graph) == [["pkg.b", "pkg.sub.a"]]


def test_type_checking_imports_do_not_count(tmp_path):
    graph = _make(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": ("from typing import TYPE_CHECKING\nimport typing\nif TYPE_CHECKING:\n"
                     "    from pkg.b import B\nelse:\n    B = None\nif typing.TYPE_CHECKING:\n"
                     "    import pkg.b\n"),
        "pkg/b.py": "from pkg.a import B\n",
    })
    assert graph["pkg.a"] == []
    assert cycles(graph) == []


def test_a_module_importing_itself_and_pyx_imports(tmp_path):
    graph = _make(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from pkg.a import x\n",
        "pkg/_c.pyx": ("from pkg.b cimport Thing\nfrom pkg.errors import (\n    E,\n    F,\n)\n"
                       "def f():\n    import pkg.b\n"),
        "pkg/b.py": "",
        "pkg/errors.py": "from pkg import _c\n",
    })
    assert sorted((e.target, e.line) for e in graph["pkg._c"]) == [("pkg.b", 7), ("pkg.errors", 2)]
    assert cycles(graph) == [["pkg._c", "pkg.errors"], ["pkg.a"]]
