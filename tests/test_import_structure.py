"""The shape of the code: who may import whom, and no import circles.

- `o2o_protocol` (the contract) imports neither `kiosk` nor `cloud_bridge`;
- `cloud_bridge` (the service) imports nothing of `kiosk` (the appliance), and the kiosk
  nothing of the service: each installs and runs without the other's extra;
- no installed package imports the repository's tools (`devtools`, `tests`, `bench`);
- no circle between modules of the three packages.

Read from the source with `ast`, so nothing is imported and an import that runs only on
one path (a lazy import inside a function, an `importlib.import_module("…")` with a
literal name) is seen as well. Every import counts, for the rules and for circles, except
those under `if TYPE_CHECKING:`, which never run: a lazy import is still a dependency
(deferring one is the usual way to hide a circle). An import of a package's submodule
points at that submodule, not at the package's `__init__` (a package that re-exports its
own modules is not a circle).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("o2o_protocol", "kiosk", "cloud_bridge")
#: Repository tools that are not installed, so no installed module may need them.
TOOLS = ("devtools", "tests", "bench", "scripts")

#: package -> top-level packages it must never import.
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "o2o_protocol": ("kiosk", "cloud_bridge", *TOOLS),
    "cloud_bridge": ("kiosk", *TOOLS),
    "kiosk": ("cloud_bridge", *TOOLS),
}


@dataclass(frozen=True)
class Import:
    source: str  # importing module, dotted
    target: str  # imported module, dotted (as precise as the known modules allow)
    line: int
    lazy: bool  # inside a function: runs on call, not on import

    def where(self) -> str:
        path = Path(*self.source.split("."))
        kind = "inside a function" if self.lazy else "module level"
        return f"{path}.py:{self.line} ({kind})"


def _modules() -> dict[str, Path]:
    """Every module of the three packages, by dotted name (a package by its own name)."""
    found: dict[str, Path] = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _raw_imports(tree: ast.AST) -> Iterator[tuple[ast.AST, bool]]:
    """(import node, lazy) for every import that can run: not under `if TYPE_CHECKING:`."""

    def walk(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.AST, bool]]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for sub in child.orelse:  # the `else:` of TYPE_CHECKING does run
                    yield from walk_one(sub, lazy)
                continue
            yield from walk_one(child, lazy)

    def walk_one(node: ast.AST, lazy: bool) -> Iterator[tuple[ast.AST, bool]]:
        if isinstance(node, ast.Import | ast.ImportFrom) or (
            isinstance(node, ast.Call) and _dynamic_name(node) is not None
        ):
            yield node, lazy
        inner = lazy or isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from walk(node, inner)

    yield from walk(tree, False)


def _dynamic_name(call: ast.Call) -> str | None:
    """The literal module name of `importlib.import_module("x")` or `__import__("x")`."""
    func = call.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name not in ("import_module", "__import__") or not call.args:
        return None
    arg = call.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    """The absolute module a (possibly relative) `from` import names."""
    if level == 0:
        return name or ""
    base = module.split(".")
    if not is_package:
        base = base[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join([*base, name] if name else base)


def _most_precise(name: str, known: dict[str, Path]) -> str:
    """The longest known module that `name` is or lies in; `name` itself if none."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in known:
            return candidate
    return name


def _imports() -> list[Import]:
    known = _modules()
    result: list[Import] = []
    for module, path in known.items():
        is_package = path.name == "__init__.py"
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node, lazy in _raw_imports(tree):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = _resolve(module, is_package, node.level, node.module)
                # `from pkg import mod` imports the submodule when there is one.
                targets = [
                    f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names
                ]
            elif isinstance(node, ast.Call):
                targets = [_dynamic_name(node) or ""]
            line = getattr(node, "lineno", 0)
            for target in targets:
                result.append(Import(module, _most_precise(target, known), line, lazy))
    return result


@pytest.fixture(scope="module")
def imports() -> list[Import]:
    found = _imports()
    # A scan that silently read nothing would prove nothing.
    assert len(_modules()) > 30
    assert sum(i.target.startswith("o2o_protocol") for i in found) > 20
    return found


def test_packages_import_only_what_they_may(imports: list[Import]) -> None:
    bad = [
        f"{i.where()}: {i.source} imports {i.target}"
        for i in imports
        if i.target.split(".")[0] in FORBIDDEN[i.source.split(".")[0]]
    ]
    assert not bad, "imports across a forbidden boundary:\n" + "\n".join(sorted(bad))


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0
    for root in sorted(edges):
        if root in index:
            continue
        work: list[tuple[str, Iterator[str]]] = [(root, iter(sorted(edges[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(edges.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                component: list[str] = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_circle_through_three_modules() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": set()}
    assert _cycles(edges) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_type_checking_imports_do_not_count_and_lazy_ones_do() -> None:
    tree = ast.parse(
        "from typing import TYPE_CHECKING\n"
        "if TYPE_CHECKING:\n    import kiosk.app\n"
        "else:\n    import kiosk.store\n"
        "def f():\n    from kiosk import config\n"
        "    return importlib.import_module('kiosk.ui')\n"
    )
    seen = []
    for node, lazy in _raw_imports(tree):
        if isinstance(node, ast.Import):
            seen.append((node.names[0].name, lazy))
        elif isinstance(node, ast.ImportFrom):
            seen.append((f"{node.module}.{node.names[0].name}", lazy))
        elif isinstance(node, ast.Call):
            seen.append((_dynamic_name(node), lazy))
    assert seen == [
        ("typing.TYPE_CHECKING", False),
        ("kiosk.store", False),
        ("kiosk.config", True),
        ("kiosk.ui", True),
    ]
    assert _resolve("kiosk.devices.qr", False, 2, "config") == "kiosk.config"
    assert _resolve("kiosk.devices", True, 1, "qr") == "kiosk.devices.qr"


def test_no_import_circle(imports: list[Import]) -> None:
    known = _modules()
    edges: dict[str, set[str]] = {m: set() for m in known}
    lines: dict[tuple[str, str], Import] = {}
    for i in imports:
        if i.target in known and i.target != i.source:
            edges[i.source].add(i.target)
            lines.setdefault((i.source, i.target), i)
    report = []
    for component in _cycles(edges):
        members = set(component)
        report.append("circle: " + " <-> ".join(component))
        for (src, dst), imp in sorted(lines.items()):
            if src in members and dst in members:
                report.append(f"  {imp.where()}: {src} imports {dst}")
    assert not report, "import circles between modules:\n" + "\n".join(report)
