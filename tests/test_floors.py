"""The house's floors, read from the code's own imports (``ast``; imports inside functions count).

``sftrl/`` (ground) < ``services/`` < ``deploy/`` < ``bench/``: a module imports only from its own
floor or below. Inside ``services/`` the roles keep to themselves: environments know nothing of
models, rollout or the learner; verifiers are pure (nothing of the other roles); rollout knows
nothing of the learner; the learner nothing of environments or rollout (it reads answers with the
verifiers' bounded JSON reader). ``deploy/``'s rooms never import its command line. And no import cycle between
modules, lazy imports included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
FLOORS = {"sftrl": 0, "services": 1, "deploy": 2, "bench": 3}
# what each role of services/ may import from services/ (besides itself)
ROLES = {
    "services.verifier": set(),
    "services.envs": {"services.verifier"},
    "services.rollout": {"services.envs", "services.verifier"},
    # the learner finds the answer's tokens (paper 1's token weights) with the verifiers' bounded reader
    "services.learner": {"services.verifier"},
}


def project_modules() -> dict[str, Path]:
    modules = {}
    for top in FLOORS:
        for path in (REPO / top).rglob("*.py"):
            parts = path.relative_to(REPO).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            modules[name] = path
    return modules


def imports_of(path: Path, name: str, modules: dict[str, Path]) -> list[tuple[int, str]]:
    """(line, project module) for every import in ``path``; ``from a import b`` names ``a.b`` when that
    is a module, else ``a``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        targets: list[str] = []
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
        for target in targets:
            while target and target not in modules:  # a name inside a module: the module
                target = target.rpartition(".")[0]
            if target:
                found.append((node.lineno, target))
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, list[tuple[int, str]]]:
    modules = project_modules()
    return {name: imports_of(path, name, modules) for name, path in modules.items()}


def _role(module: str) -> str | None:
    return next((role for role in ROLES if module == role or module.startswith(role + ".")), None)


def test_the_graph_is_read(graph):
    """The reader sees what it must: a lazy import inside a function, and a relative one."""
    assert (1, "sftrl.models.store") in [(1, t) for _, t in graph["sftrl.models"]]
    lazy = {target for _, target in graph["deploy.train.loop"]}
    assert "services.learner.group" in lazy and "deploy.train.rl_step" in lazy
    assert len(graph) > 120


def test_no_import_runs_upward(graph):
    upward = [
        f"{module}:{line} imports {target}"
        for module, edges in graph.items()
        for line, target in edges
        if FLOORS[target.split(".")[0]] > FLOORS[module.split(".")[0]]
    ]
    assert upward == []


def test_roles_keep_to_themselves(graph):
    crossing = []
    for module, edges in graph.items():
        role = _role(module)
        if role is None:
            continue
        for line, target in edges:
            other = _role(target)
            if other is not None and other != role and other not in ROLES[role]:
                crossing.append(f"{module}:{line} imports {target}")
    assert crossing == []


def test_deploys_rooms_never_import_the_command_line(graph):
    """``deploy/``'s rooms (train, evaluate, studies, models) are what the command line calls: they
    never import ``deploy.cli`` or ``deploy.commands`` back."""
    rooms = ("deploy.train", "deploy.evaluate", "deploy.studies", "deploy.models")
    assert {name for name in graph if name.startswith(rooms)} >= {"deploy.train.loop", "deploy.evaluate.serve.app"}
    upward = [
        f"{module}:{line} imports {target}"
        for module, edges in graph.items()
        if module.startswith(rooms)
        for line, target in edges
        if target.startswith(("deploy.cli", "deploy.commands"))
    ]
    assert upward == []


def test_no_import_cycle(graph):
    """Tarjan's strongly connected components over module -> module edges: each must be a single
    module (a package importing its own submodules is not a cycle back)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(node: str) -> None:  # recursion depth is bounded by the module count (~200)
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for _, target in graph.get(node, []):
            if target == node or _is_own_package(node, target):
                continue
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in on_stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            component = []
            while True:
                top = stack.pop()
                on_stack.discard(top)
                component.append(top)
                if top == node:
                    break
            if len(component) > 1:
                cycles.append(sorted(component))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    assert cycles == []


def _is_own_package(module: str, target: str) -> bool:
    """``a.b.c`` importing ``a.b`` (its package's ``__init__`` runs first anyway)."""
    return module.startswith(target + ".")
