"""Dependencies inside the package point one way: no import circle, counting the imports made
inside functions too (a lazy import is still a dependency), and the dev server imports nothing
from the rest; nothing but the dev server needs aiohttp (the ``server`` extra)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "consulresults"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """The package's modules ``path`` imports, at any level of the file."""
    name = module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = package
            for _ in range(node.level - 1):
                base = base.rpartition(".")[0]
            target = f"{base}.{node.module}" if node.level and node.module else node.module or base
            if node.level == 0 and not (node.module or "").startswith("consulresults"):
                continue
            for alias in node.names:
                found.add(f"{target}.{alias.name}")
                found.add(target)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("consulresults"))
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {
        name: {m for m in imports_of(path) if m in modules and m != name}
        for name, path in modules.items()
    }


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    found, state, stack = [], {}, []

    def visit(node: str) -> None:
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(edges[node]):
            if state.get(nxt) == "open":
                found.append([*stack[stack.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(edges):
        if node not in state:
            visit(node)
    return found


def test_no_import_circle():
    assert cycles(graph()) == []


def test_the_dev_server_imports_nothing_from_the_rest():
    for name, imported in graph().items():
        if name.startswith("consulresults.devserver"):
            outside = {m for m in imported if not m.startswith("consulresults.devserver")}
            assert outside <= {"consulresults"}, (name, outside)


WITHOUT_AIOHTTP = """
import importlib, pkgutil, sys
sys.modules["aiohttp"] = None  # import aiohttp raises ModuleNotFoundError, as on a plain install
import consulresults
for module in pkgutil.walk_packages(consulresults.__path__, "consulresults."):
    if not module.name.startswith(("consulresults.devserver", "consulresults.__main__")):
        importlib.import_module(module.name)
print(sorted(m for m in sys.modules if m.startswith(("aiohttp", "consulresults.devserver"))))
"""


def test_only_the_dev_server_needs_aiohttp():
    """A plain install (no ``server`` extra) has no aiohttp: every other module, the pytest plugin
    and the CLI included, imports without it and without importing the dev server."""
    done = subprocess.run(
        [sys.executable, "-c", WITHOUT_AIOHTTP], capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "['aiohttp']"  # only our None


def test_the_dev_server_without_aiohttp_says_how_to_get_it():
    script = (
        "import sys; sys.modules['aiohttp'] = None; "
        "sys.argv = ['consul-results', 'dev-server', '--port', '0']; "
        "from consulresults.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 1
    assert done.stderr == (
        "consul-results: the dev server needs aiohttp, which is not installed: "
        "pip install 'consul-results[server]'\n"
    )
