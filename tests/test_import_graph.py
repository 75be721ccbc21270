"""The modules of app/ and workers/ import each other in one direction only.

Every import counts, wherever it stands: an import moved into a function, or under
`if TYPE_CHECKING:`, hides a cycle from Python but not from a reader. The few imports
still made inside functions are deferred on purpose (to keep `rrmm --help` fast), and each
says why in a comment.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("app", "workers")


def _modules(root: Path, packages: Iterable[str]) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for package in packages:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def _imported_names(module: str, is_package: bool, node: ast.Import | ast.ImportFrom) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join([*parts, base] if base else parts)
    # `from a.b import c` imports a.b, and a.b.c too when c is a module.
    return [base, *(f"{base}.{alias.name}" for alias in node.names)]


def import_graph(root: Path, packages: Iterable[str]) -> dict[str, set[str]]:
    """Module → the modules of `packages` it imports, wherever the import stands (at the
    top, in a function, under `if TYPE_CHECKING:`); a package's `__init__` counts as the
    package."""
    modules = _modules(root, packages)

    def known(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets: set[str] = set()
        imports = (n for n in ast.walk(tree) if isinstance(n, ast.Import | ast.ImportFrom))
        for node in imports:
            for name in _imported_names(module, path.name == "__init__.py", node):
                target = known(name)
                if target is not None and target != module:
                    targets.add(target)
        graph[module] = targets
    return graph


def cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for successor in graph.get(node, ()):
            if successor not in index:
                visit(successor)
                low[node] = min(low[node], low[successor])
            elif successor in on_stack:
                low[node] = min(low[node], index[successor])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def is_edge(module: str) -> bool:
    """The modules that compose the domains: HTTP (routers, the app, its dependencies),
    the transactions (jobs, the sweep), the CLI and the workers."""
    return (
        module.rpartition(".")[2] in ("router", "jobs")
        or module in ("app.main", "app.api", "app.deps", "app.sweep")
        or module.startswith(("app.cli", "workers"))
    )


def package_graph(graph: Mapping[str, Iterable[str]]) -> dict[str, set[str]]:
    """`app.<package>` (or top-level module) → those it imports, leaving out the edge."""

    def package(module: str) -> str:
        return ".".join(module.split(".")[:2])

    packages: dict[str, set[str]] = {}
    for module, targets in graph.items():
        if is_edge(module):
            continue
        for target in targets:
            if target != "app" and package(target) != package(module):
                packages.setdefault(package(module), set()).add(package(target))
    return packages


def deferred_imports(root: Path, packages: Iterable[str]) -> list[tuple[str, int, bool]]:
    """Every import made inside a function: (module, line, whether a comment is right above
    it or above the run of imports it belongs to)."""
    found = []
    for module, path in _modules(root, packages).items():
        lines = path.read_text().splitlines()
        tree = ast.parse("\n".join(lines), filename=str(path))
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for node in ast.walk(function):
                if not isinstance(node, ast.Import | ast.ImportFrom):
                    continue
                above = node.lineno - 2
                while above >= 0 and (
                    not lines[above].strip()
                    or lines[above].lstrip().startswith(("from ", "import "))
                ):
                    above -= 1
                said = above >= 0 and lines[above].lstrip().startswith("#")
                found.append((module, node.lineno, said))
    return sorted(found)


def test_the_modules_import_each_other_in_one_direction() -> None:
    assert cycles(import_graph(ROOT, PACKAGES)) == []


def test_the_domains_depend_on_each_other_in_one_direction() -> None:
    """incidents → acks → deliveries (→ timeline, models): drawn in the README's Layout."""
    packages = package_graph(import_graph(ROOT, PACKAGES))
    assert cycles(packages) == []
    order = ["app.incidents", "app.acks", "app.deliveries", "app.timeline", "app.models"]
    for lower, higher in ((b, a) for i, a in enumerate(order) for b in order[i + 1 :]):
        assert higher not in packages.get(lower, set()), f"{lower} imports {higher}"


def test_the_app_never_imports_the_workers() -> None:
    """The app publishes through app/broker.py; only the commands that start a worker or
    beat (`rrmm worker`, `sweeper`, `beat`) load the workers' Celery application."""
    graph = import_graph(ROOT, PACKAGES)
    importers = {
        module
        for module, targets in graph.items()
        if module.startswith("app.") and any(t.partition(".")[0] == "workers" for t in targets)
    }
    assert importers == {"app.cli.main"}


def test_every_deferred_import_says_why() -> None:
    unexplained = [(m, line) for m, line, said in deferred_imports(ROOT, PACKAGES) if not said]
    assert unexplained == []


def test_packages_are_grouped_without_the_edge() -> None:
    graph = {
        "app.a.service": {"app.b.service", "app.a.schemas", "app"},
        "app.a.router": {"app.c.service"},
        "app.b.service": {"app.a.schemas", "app.db"},
        "app.db": set(),
    }
    packages = package_graph(graph)
    assert packages == {"app.a": {"app.b"}, "app.b": {"app.a", "app.db"}}
    assert cycles(packages) == [["app.a", "app.b"]]


def test_cycles_are_found_in_a_graph() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert cycles(graph) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_a_cyclic_pair_of_modules_is_found(tmp_path: Path) -> None:
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg.sub import b\n")
    (package / "sub" / "b.py").write_text("from .. import a\n")
    (package / "c.py").write_text(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    from pkg import a\n"
        "def later():\n    from pkg import a\n"
    )
    (package / "d.py").write_text("def later():\n    # why\n    import pkg.c\n")
    graph = import_graph(tmp_path, ["pkg"])
    assert graph["pkg.a"] == {"pkg.sub", "pkg.sub.b"}
    assert graph["pkg.sub.b"] == {"pkg", "pkg.a"}
    assert graph["pkg.c"] == {"pkg", "pkg.a"}
    assert cycles(graph) == [["pkg.a", "pkg.sub.b"]]
    (package / "a.py").write_text("def later():\n    from pkg.c import later\n")
    assert cycles(import_graph(tmp_path, ["pkg"])) == [["pkg.a", "pkg.c"]]
    assert deferred_imports(tmp_path, ["pkg"]) == [
        ("pkg.a", 2, False),
        ("pkg.c", 5, False),
        ("pkg.d", 3, True),
    ]
