"""The house drawn from the code's imports: no import cycles, no arrow pointing up a layer, imports at the top of
files (a deferred one says why), modules of a readable size.

Run it as a script for the picture: ``python tests/test_imports.py`` prints every module's imports, the deferred
ones, the sizes and any cycle or upward arrow.
"""
from __future__ import annotations

import ast
import pathlib
import sys
from typing import NamedTuple

PACKAGE = pathlib.Path(__file__).resolve().parent.parent / "fairprune_jax"
MAX_LINES = 500

#: Layers, lowest first; a module may import its own layer and the ones below, never one above (the arrows of
#: docs/architecture.md). Modules are matched by their dotted name's prefix, longest prefix first.
LAYERS = {
    "fairprune_jax.configs": 1,  # experiments as data: on top of the schema only
    "fairprune_jax.cli": 5, "fairprune_jax.__main__": 5,
    "fairprune_jax.pipeline": 4,
    "fairprune_jax.report": 3,
    "fairprune_jax.studies": 2,
    "fairprune_jax.studies.layout": 1, "fairprune_jax.studies.recall_layout": 1,
    "fairprune_jax.studies.bias_layout": 1, "fairprune_jax.studies.schema": 1,
    "fairprune_jax.analysis": 1,
    "fairprune_jax": 0,  # the library: data, models, masks, scores, train, evaluate, protocols, results, ...
}
#: Modules the layers 1 and 3 (analysis, layouts, reports) must not reach, even through others: they work from
#: stored tables, never from JAX.
NO_JAX_LAYERS = ("fairprune_jax.report", "fairprune_jax.studies.layout", "fairprune_jax.studies.recall_layout",
                 "fairprune_jax.studies.bias_layout", "fairprune_jax.studies.schema", "fairprune_jax.analysis.run")
#: Modules exempt from the layer checks while they are rewritten (none now).
PENDING: tuple[str, ...] = ()


class Import(NamedTuple):
    source: str
    target: str
    line: int
    deferred: bool  # inside a function
    shim: bool  # inside a module's __getattr__ (a deprecated alias resolved lazily)
    reason: str  # the comment on a deferred import's line


def module_name(path: pathlib.Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict[str, pathlib.Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: pathlib.Path, known: set[str]) -> list[Import]:
    """The package-internal and third-party imports of one module, with where they sit."""
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    tree = ast.parse(text)
    out: list[Import] = []

    def visit(node: ast.AST, func: str | None, type_checking: bool) -> None:
        for child in ast.iter_child_nodes(node):
            inner = func
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                inner = func or child.name
            tc = type_checking or (isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test))
            targets: list[str] = []
            if isinstance(child, ast.Import):
                targets = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.module and child.level == 0:
                base = child.module
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in child.names]
            for t in dict.fromkeys(targets):
                if not tc:
                    comment = lines[child.lineno - 1].split("#", 1)[1].strip() if "#" in lines[child.lineno - 1] \
                        else ""
                    out.append(Import(name, t, child.lineno, func is not None, func == "__getattr__", comment))
            visit(child, inner, tc)

    visit(tree, None, False)
    return out


def layer(name: str) -> int:
    best = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[best]


def graph() -> tuple[dict[str, pathlib.Path], list[Import]]:
    mods = modules()
    found = [i for name, path in mods.items() for i in imports(name, path, set(mods))]
    return mods, found


def cycles(mods: dict[str, pathlib.Path], edges: list[Import]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), over every import but the deprecated
    aliases a module's ``__getattr__`` resolves lazily."""
    adj: dict[str, set[str]] = {m: set() for m in mods}
    for e in edges:
        if e.target in mods and not e.shim and e.target != e.source:
            adj[e.source].add(e.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []
    counter = [0]
    sys.setrecursionlimit(10000)

    def strong(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in sorted(adj[v]):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(adj):
        if v not in index:
            strong(v)
    return out


def upward(mods: dict[str, pathlib.Path], edges: list[Import]) -> list[Import]:
    return [e for e in edges if e.target in mods and not e.shim and layer(e.target) > layer(e.source)]


def reaches_jax(mods: dict[str, pathlib.Path], edges: list[Import], start: str) -> list[str]:
    """A chain of imports from ``start`` to jax (empty when there is none)."""
    adj: dict[str, list[str]] = {}
    for e in edges:
        if not e.shim and e.source not in PENDING:
            adj.setdefault(e.source, []).append(e.target)
    prev = {start: ""}
    todo = [start]
    while todo:
        v = todo.pop(0)
        for w in adj.get(v, []):
            top = w.split(".")[0]
            if top in ("jax", "flax", "optax", "orbax"):
                chain = [w, v]
                while prev[chain[-1]]:
                    chain.append(prev[chain[-1]])
                return chain[::-1]
            if w in mods and w not in prev:
                prev[w] = v
                todo.append(w)
    return []


# ------------------------------------------------------------------------------------------------ tests

def test_no_import_cycles():
    mods, edges = graph()
    assert cycles(mods, edges) == []


def test_no_arrow_points_up_a_layer():
    mods, edges = graph()
    bad = [f"{e.source} -> {e.target} (line {e.line})" for e in upward(mods, edges)]
    assert bad == []


def test_deferred_imports_say_why():
    """Imports sit at the top of a file; one inside a function says why on its line (a heavy optional dependency
    deferred on purpose, or a deprecated alias)."""
    _, edges = graph()
    silent = [f"{e.source}:{e.line} imports {e.target}" for e in edges
              if e.deferred and not e.reason and e.source not in PENDING
              and e.source.startswith(NO_JAX_LAYERS + ("fairprune_jax.studies", "fairprune_jax.pipeline",
                                                       "fairprune_jax.cli", "fairprune_jax.configs"))]
    assert silent == []


def test_reports_and_layouts_work_without_jax():
    mods, edges = graph()
    chains = {m: reaches_jax(mods, edges, m) for m in mods if m.startswith(NO_JAX_LAYERS) and m not in PENDING}
    assert {m: c for m, c in chains.items() if c} == {}


def test_modules_stay_readable():
    big = {m: n for m, p in modules().items() if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert big == {}


if __name__ == "__main__":
    mods, edges = graph()
    for m in mods:
        own = sorted({e.target for e in edges if e.source == m and e.target in mods})
        print(f"{m} [layer {layer(m)}, {len(mods[m].read_text().splitlines())} lines] -> {', '.join(own)}")
    print("\ndeferred imports:")
    for e in edges:
        if e.deferred:
            print(f"  {e.source}:{e.line} -> {e.target}" + (" [__getattr__ alias]" if e.shim else "")
                  + (f"  # {e.reason}" if e.reason else "  (no reason given)"))
    print("\ncycles:", cycles(mods, edges) or "none")
    print("upward arrows:", [f"{e.source} -> {e.target}" for e in upward(mods, edges)] or "none")
