"""The house's rules, read from the source (every import counts, those inside functions
too: a lazy import is still a dependency):

- no import cycles between toolkit's modules;
- the side that runs where the training stack is (toolkit.trainer, and the stages beside
  it: toolkit.merge, toolkit.inference, toolkit.tiny) imports nothing of the host side
  (toolkit.cli, toolkit.host, toolkit.containers, toolkit.images);
- the host side reaches the trainer only through its one entry point, toolkit.trainer.run;
- only toolkit/containers/engine.py imports the Docker SDK;
- no option bags: Click's options become typed values, never a SimpleNamespace.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "toolkit"

CONTAINER_SIDE = ("toolkit.trainer", "toolkit.merge", "toolkit.inference", "toolkit.tiny")
HOST_SIDE = ("toolkit.cli", "toolkit.host", "toolkit.containers", "toolkit.images")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


MODULES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str) -> set[str]:
    """The modules `name` imports, anywhere in it: `from toolkit.x import y` is toolkit.x.y
    when that is a module, else toolkit.x."""
    path = MODULES[name]
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([base] if base else [])])
            for alias in node.names:
                whole = f"{base}.{alias.name}"
                found.add(whole if whole in MODULES else base)
    return found


GRAPH = {name: {m for m in imports(name) if m in MODULES and m != name} for name in MODULES}


def within(name: str, prefixes: tuple[str, ...]) -> bool:
    return any(name == p or name.startswith(p + ".") for p in prefixes)


def test_no_import_cycles():
    """Tarjan's strongly connected components over the import graph: each must be one
    module."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in sorted(GRAPH[node]):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for name in sorted(GRAPH):
        if name not in index:
            visit(name)
    assert not cycles, "import cycles: " + "; ".join(" <-> ".join(c) for c in cycles)


@pytest.mark.parametrize("name", [n for n in MODULES if within(n, CONTAINER_SIDE)])
def test_the_container_side_imports_nothing_of_the_host(name):
    assert sorted(m for m in GRAPH[name] if within(m, HOST_SIDE)) == []


@pytest.mark.parametrize("name", [n for n in MODULES if within(n, HOST_SIDE)])
def test_the_host_reaches_the_trainer_only_through_its_entry_point(name):
    reached = sorted(m for m in GRAPH[name] if within(m, CONTAINER_SIDE))
    assert [m for m in reached if m != "toolkit.trainer"] == []
    if "toolkit.trainer" in reached:  # and of the package, its `run` alone
        tree = ast.parse(MODULES[name].read_text())
        names = {
            alias.name
            for node in ast.walk(tree)
            if isinstance(node, ast.ImportFrom) and node.module == "toolkit.trainer"
            for alias in node.names
        }
        assert names == {"run"}


def test_only_the_engine_module_imports_the_docker_sdk():
    users = sorted(
        name
        for name in MODULES
        if any(m == "docker" or m.startswith("docker.") for m in imports(name))
    )
    assert users == ["toolkit.containers.engine"]


def test_no_option_bags():
    assert [n for n, p in MODULES.items() if "SimpleNamespace" in p.read_text()] == []


def test_the_rules_see_the_house():
    """The checks above read real edges: the CLI reaches the trainer, the trainer reads
    plans, and every module parses."""
    assert "toolkit.trainer" in GRAPH["toolkit.host.place"]
    assert "toolkit.plan" in GRAPH["toolkit.trainer"]
    assert "toolkit.containers.spec" in GRAPH["toolkit.containers.engine"]
    assert len(MODULES) > 60
