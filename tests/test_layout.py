"""The package layout: no import cycles, and dependencies that point one way,
scenarios -> nodes -> gossip -> swarm. Read from the source (ast), so an import inside a
function or under TYPE_CHECKING counts as much as one at the top of a module."""

from __future__ import annotations

import ast
from pathlib import Path

import networkx as nx

ROOT = Path(__file__).resolve().parent.parent
LAYERS = ("swarm", "gossip", "nodes", "scenarios")  # each may import only the ones before it

# Cycles known and being removed; nothing may be added here.
KNOWN_CYCLES = {
    # Found by this test: nodes.file_sources imports nodes.sources lazily (TaskShape,
    # union_of_site_tests), which imports it back. Reported, to be removed.
    frozenset({"nodes.sources", "nodes.file_sources"}),
}
# Imports against the layering that exist today (package of the importer, module imported).
KNOWN_LAYER_VIOLATIONS: set[tuple[str, str]] = set()


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every module of the four packages (a package is its
    __init__.py)."""
    modules = {}
    for package in LAYERS:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def imported_names(module: str, path: Path) -> set[str]:
    """Every dotted name `module` imports anywhere in its source, relative imports resolved;
    `from a import b` gives a.b, which may be a module or a name in a."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1])
                source = f"{base}.{node.module}" if node.module else base
            else:
                source = node.module or ""
            names.update(f"{source}.{alias.name}" for alias in node.names)
    return names


def import_graph() -> nx.DiGraph:
    modules = project_modules()

    def owner(name: str) -> str | None:  # the project module a dotted name lives in
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = nx.DiGraph()
    graph.add_nodes_from(modules)
    for module, path in modules.items():
        for name in imported_names(module, path):
            target = owner(name)
            if target and target != module:
                graph.add_edge(module, target)
    return graph


def test_no_import_cycles_inside_packages():
    cycles = [frozenset(component) for component in nx.strongly_connected_components(import_graph()) if len(component) > 1]
    unexpected = [sorted(cycle) for cycle in cycles if cycle not in KNOWN_CYCLES]
    assert not unexpected, f"import cycles: {unexpected}; move what both modules need into one of them or a module of its own"


def test_dependencies_point_from_scenarios_to_nodes_to_gossip_to_swarm():
    rank = {package: index for index, package in enumerate(LAYERS)}
    against = {(a.split(".")[0], b) for a, b in import_graph().edges if rank[b.split(".")[0]] > rank[a.split(".")[0]]}
    unexpected = sorted(against - KNOWN_LAYER_VIOLATIONS)
    assert not unexpected, f"imports against the layering scenarios -> nodes -> gossip -> swarm: {unexpected}"
