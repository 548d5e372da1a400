"""The project's module map stays one a maintainer can live in (checked from the source, ast).

Modules: every ``a2f_*`` package under ``lib/``, ``services/*/`` and ``tools/``; generated
protobuf code (``proto_gen/``, ``*_pb2*.py``) is left out. Each rule is checked per
top-level package, so a failure names the package it is in.

- No import cycle. Every ``import`` / ``from ... import`` counts: inside functions too (an
  import moved into a function to dodge a cycle is still a cycle) and under
  ``if TYPE_CHECKING:`` too (two modules that need each other's types are one design; a
  protocol owned by one side breaks the circle). ``from p import x`` is an edge to the
  module ``p.x`` when it is one, else to ``p``.
- No ``_private`` name of another module: ``from m import _x`` and ``m._x`` where ``m`` is a
  project module; and ``obj._x`` where ``obj`` is not ``self``, ``cls`` or ``super()`` and
  ``_x`` is not defined in the accessing module itself (a module may use the private
  attributes of its own classes). Dunder names and ``_`` are not private. Attributes of
  other libraries' modules (``os._exit``), of generated protobuf modules and namedtuple's
  API (``_replace``, ``_asdict``, ``_fields``, ``_make``) are not checked. No other exception.
- Layers: no product package (``lib/``, ``services/``) imports a tool package (``tools/``),
  ``lib/`` imports no service, and no service imports another service.
- No file over 500 lines.
"""

from __future__ import annotations

import ast
import functools
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAX_LINES = 500
NAMEDTUPLE_API = {"_replace", "_asdict", "_fields", "_make", "_field_defaults"}


@dataclass
class Module:
    name: str
    path: Path
    package: str  # top-level package
    layer: str  # lib, service or tool
    tree: ast.Module = field(repr=False)

    @property
    def is_package(self) -> bool:
        return self.path.name == "__init__.py"


def _roots() -> Iterator[tuple[Path, str]]:
    yield REPO / "lib", "lib"
    for service in sorted((REPO / "services").iterdir()):
        if service.is_dir():
            yield service, "service"
    yield REPO / "tools", "tool"


def _generated(path: Path) -> bool:
    return "proto_gen" in path.parts or path.stem.endswith(("_pb2", "_pb2_grpc"))


def _load() -> dict[str, Module]:
    mods: dict[str, Module] = {}
    for root, layer in _roots():
        for path in sorted(root.glob("a2f_*/**/*.py")):
            if _generated(path):
                continue
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            name = ".".join(parts)
            mods[name] = Module(name, path, parts[0], layer, ast.parse(path.read_text()))
    return mods


MODULES = _load()
PACKAGES = sorted({m.package for m in MODULES.values()})


def _absolute(mod: Module, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = mod.name.split(".")
    if not mod.is_package:
        base = base[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(mod: Module) -> list[tuple[str, ast.Import | ast.ImportFrom, list[str]]]:
    """(imported module, statement, names imported from it) of every import statement."""
    out: list[tuple[str, ast.Import | ast.ImportFrom, list[str]]] = []
    for node in ast.walk(mod.tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node, []) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            out.append((_absolute(mod, node), node, [a.name for a in node.names]))
    return out


@functools.cache
def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {name: set() for name in MODULES}
    for mod in MODULES.values():
        for target, node, names in imports(mod):
            if isinstance(node, ast.Import):
                if target in MODULES:
                    graph[mod.name].add(target)
                continue
            rest = False
            for n in names:
                if f"{target}.{n}" in MODULES:
                    graph[mod.name].add(f"{target}.{n}")
                else:
                    rest = True
            if rest and target in MODULES:
                graph[mod.name].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[tuple[list[str], list[str]]]:
    """Per strongly connected component (Tarjan): one cycle in it (a path back to its start)
    and all its modules."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[tuple[list[str], list[str]]] = []

    def strongconnect(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                strongconnect(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append((_cycle_in(set(comp), graph), sorted(comp)))

    for v in sorted(graph):
        if v not in index:
            strongconnect(v)
    return found


def _cycle_in(comp: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first)."""
    start = min(comp)
    prev: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(prev[path[-1]])
                    return [*reversed(path), start]
                if w not in prev:
                    prev[w] = v
                    nxt.append(w)
        frontier = nxt
    return [start, start]


def _defined_privates(tree: ast.AST) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store):
            names.add(node.id)
        elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store):
            names.add(node.attr)
        elif isinstance(node, ast.arg):
            names.add(node.arg)
    return {n for n in names if _private(n)}


def _private(name: str) -> bool:
    return name.startswith("_") and name != "_" and not (name.startswith("__")
                                                          and name.endswith("__"))


def _module_aliases(mod: Module) -> tuple[dict[str, str], set[str]]:
    """Names bound to project modules (name -> module) and to other libraries' modules."""
    project: dict[str, str] = {}
    external: set[str] = set()
    for target, node, _names in imports(mod):
        if isinstance(node, ast.Import):
            for alias in node.names:
                bound = alias.asname or alias.name.split(".")[0]
                full = alias.name if alias.asname else alias.name.split(".")[0]
                if full.split(".")[0] in PACKAGES:
                    project[bound] = full
                else:
                    external.add(bound)
        else:
            for alias in node.names:
                bound = alias.asname or alias.name
                if f"{target}.{alias.name}" in MODULES:
                    project[bound] = f"{target}.{alias.name}"
                elif target.split(".")[0] not in PACKAGES or ".proto_gen" in target:
                    external.add(bound)  # other libraries and generated protobuf code
    return project, external


def private_uses(mod: Module) -> list[str]:
    out = []
    for target, node, names in imports(mod):
        if target.split(".")[0] in PACKAGES:
            out += [f"{mod.path.name}:{node.lineno}: from {target} import {n}"
                    for n in names if _private(n)]
    project, external = _module_aliases(mod)
    own = _defined_privates(mod.tree)
    for attr in ast.walk(mod.tree):
        if not isinstance(attr, ast.Attribute) or not _private(attr.attr):
            continue
        obj = attr.value
        where = f"{mod.path.name}:{attr.lineno}"
        if isinstance(obj, ast.Name) and obj.id in project:
            out.append(f"{where}: {project[obj.id]}.{attr.attr}")
        elif not _allowed(obj, attr.attr, own | NAMEDTUPLE_API, external):
            out.append(f"{where}: {ast.unparse(obj)}.{attr.attr}")
    return out


def _allowed(obj: ast.expr, name: str, own: set[str], external: set[str]) -> bool:
    """``obj.<name>`` on the module's own objects, another library's module, or a name the
    module defines itself."""
    if isinstance(obj, ast.Name) and obj.id in {"self", "cls"} | external:
        return True
    if isinstance(obj, ast.Call) and isinstance(obj.func, ast.Name) and obj.func.id == "super":
        return True
    return name in own


def _crosses_layers(importer: str, imported: str) -> bool:
    """Tools import anything; products never tools; lib no service; services not each other."""
    if importer == "tool":
        return False
    return imported == "tool" or imported == "service"


def _of(package: str) -> list[Module]:
    return [m for m in MODULES.values() if m.package == package]


def test_every_project_package_is_found() -> None:
    assert {"a2f_volume", "a2f_config", "a2f_inference", "a2f_bench",
            "a2f_model_sync", "a2f_engine_builder"} <= set(PACKAGES)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_import_cycle(package: str) -> None:
    found = [(c, comp) for c, comp in cycles(import_graph())
             if any(m.split(".")[0] == package for m in comp)]
    assert not found, "import cycles:\n" + "\n".join(
        f"{' -> '.join(c)} (modules in the circle: {', '.join(comp)})" for c, comp in found)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_private_name_of_another_module(package: str) -> None:
    found = [f"{m.name}: {use}" for m in _of(package) for use in private_uses(m)]
    assert not found, "private names used across modules:\n" + "\n".join(found)


@pytest.mark.parametrize("package", PACKAGES)
def test_layers(package: str) -> None:
    found = []
    for mod in _of(package):
        for target, node, _names in imports(mod):
            top = target.split(".")[0]
            dep = next((m for m in MODULES.values() if m.package == top), None)
            if dep is None or top == package:
                continue
            if _crosses_layers(mod.layer, dep.layer):
                found.append(f"{mod.name}:{node.lineno} ({mod.layer}) imports {target} "
                             f"({dep.layer})")
    assert not found, "\n".join(found)


@pytest.mark.parametrize("package", PACKAGES)
def test_no_file_over_500_lines(package: str) -> None:
    long = {str(m.path.relative_to(REPO)): n for m in _of(package)
            if (n := len(m.path.read_text().splitlines())) > MAX_LINES}
    assert not long, f"files over {MAX_LINES} lines: {long}"


def test_the_cycle_finder_finds_a_planted_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert sorted(cycles(graph)) == [(["a", "b", "c", "a"], ["a", "b", "c"]),
                                     (["e", "e"], ["e"])]


def test_the_private_rule_flags_each_form_and_spares_the_allowed_ones(tmp_path: Path) -> None:
    src = (
        "import os\n"
        "from a2f_volume import layout\n"
        "from a2f_volume.errors import _hidden\n"
        "class K:\n"
        "    def __init__(self, other):\n"
        "        self._mine = 1\n"
        "        other._mine = 2\n"
        "        super()._init()\n"
        "        os._exit\n"
        "        layout._secret\n"
        "        other._theirs\n"
        "        other.__dict__\n"
    )
    mod = Module("a2f_fake.m", tmp_path / "m.py", "a2f_fake", "lib", ast.parse(src))
    uses = private_uses(mod)
    assert [u.split(": ", 1)[1] for u in uses] == [
        "from a2f_volume.errors import _hidden", "a2f_volume.layout._secret", "other._theirs"]


def test_the_module_map_of_the_inference_package_names_every_module() -> None:
    """docs/architecture.md lists every module of ``pipeline/`` and ``server/``, and no module
    that is gone."""
    text = (REPO / "docs" / "architecture.md").read_text(encoding="utf-8")
    begin = "<!-- module map of pipeline/ and server/: begin -->"
    end = "<!-- module map of pipeline/ and server/: end -->"
    table = text[text.index(begin):text.index(end)]
    listed = {f"{d}/{n}" for d, n in
              re.findall(r"`(pipeline|server)/(\w+\.py)`", table)}
    package = REPO / "services" / "inference" / "a2f_inference"
    present = {f"{d}/{p.name}" for d in ("pipeline", "server")
               for p in (package / d).glob("*.py") if p.name != "__init__.py"}
    assert present - listed == set(), "modules missing from docs/architecture.md"
    assert listed - present == set(), "docs/architecture.md names modules that are gone"
