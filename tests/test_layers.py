"""Imports run one way (DESIGN.md, "Layers"): a module imports only from its own row or the rows below,
and no two rooms import each other, directly or around a circle.

Every ``import`` statement of every module under ``src/moviola`` counts, also the ones inside
functions (a late import is still a dependency; it only hides a cycle from the interpreter).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src" / "moviola"

# bottom row first; a room is a subpackage or a top-level module of moviola
ROWS: list[tuple[str, ...]] = [
    ("config", "io", "video", "utils"),  # plain data, checkpoint files, video files
    ("conditioning", "data"),  # what conditions and what is learned from
    ("nn", "diffusion"),  # shared blocks; the noise process and samplers
    ("models", "autoencoders"),  # the networks
    ("pipelines", "interop"),  # generation; foreign checkpoints in and out
    ("training", "demo", "eval"),  # loops and consumers
    ("cli", "study", "__main__", "moviola"),  # the face ("moviola": the package's own __init__, the public API)
]
ROW = {room: i for i, rooms in enumerate(ROWS) for room in rooms}


def room_of(module: str) -> str:
    """``moviola.models.latte.model`` -> ``models``; ``moviola`` (the package itself) -> ``moviola``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "moviola"


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def imported_modules(path: Path, package: str | None = None) -> set[str]:
    """The moviola modules one file imports (``from moviola import x`` names the submodule x if it is one)."""
    tree = ast.parse(path.read_text(), filename=str(path))
    if package is None:
        package = module_name(path) if path.name == "__init__.py" else module_name(path).rsplit(".", 1)[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "moviola")
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against this file's package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "moviola":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                is_module = (SRC.parent / Path(*sub.split("."))).with_suffix(".py").is_file() or \
                    (SRC.parent / Path(*sub.split(".")) / "__init__.py").is_file()
                found.add(sub if is_module else target)
    return found


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): imported_modules(p) for p in sorted(SRC.rglob("*.py"))}


GRAPH = all_modules()


def test_every_room_has_a_row():
    rooms = {room_of(m) for m in GRAPH}
    assert not rooms - set(ROW), f"rooms without a row in DESIGN.md's table: {sorted(rooms - set(ROW))}"


def test_no_module_imports_upward():
    up = [f"{m} (row {ROW[room_of(m)]}) imports {dep} (row {ROW[room_of(dep)]})"
          for m, deps in GRAPH.items() for dep in sorted(deps)
          if room_of(dep) in ROW and room_of(m) in ROW and ROW[room_of(dep)] > ROW[room_of(m)]]
    assert not up, "imports that run up the layers:\n" + "\n".join(up)


def _cycle(edges: dict[str, set[str]]) -> list[str]:
    """One cycle of a directed graph, or [] (iterative depth-first search)."""
    state: dict[str, int] = {}
    for start in sorted(edges):
        if state.get(start):
            continue
        stack = [(start, iter(sorted(edges.get(start, ()))))]
        path = [start]
        state[start] = 1
        while stack:
            node, it = stack[-1]
            nxt = next(it, None)
            if nxt is None:
                state[node] = 2
                stack.pop()
                path.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                stack.append((nxt, iter(sorted(edges.get(nxt, ())))))
                path.append(nxt)
    return []


def test_no_cycle_between_rooms():
    edges: dict[str, set[str]] = {}
    for m, deps in GRAPH.items():
        for dep in deps:
            if room_of(dep) != room_of(m):
                edges.setdefault(room_of(m), set()).add(room_of(dep))
    cycle = _cycle(edges)
    assert not cycle, "rooms that import each other: " + " -> ".join(cycle)


def test_no_cycle_between_modules():
    edges = {m: {d for d in deps if d in GRAPH and d != m} for m, deps in GRAPH.items()}
    # a package's __init__ re-exporting its own modules is not a cycle of the design
    for m in edges:
        edges[m] = {d for d in edges[m] if not (d == m.rsplit(".", 1)[0] and GRAPH.get(d) is not None
                                                  and m in GRAPH[d])}
    cycle = _cycle(edges)
    assert not cycle, "modules that import each other: " + " -> ".join(cycle)


@pytest.mark.parametrize("source,needle", [
    ("from moviola.training.trainer import Trainer\n", "training"),
    ("def f():\n    from moviola.pipelines import generate\n", "pipelines"),
])
def test_the_checker_sees_late_and_plain_imports(tmp_path, source, needle):
    """The parser finds an import at the top and one inside a function (a test of the test)."""
    fake = tmp_path / "probe.py"
    fake.write_text(source)
    found = imported_modules(fake, package="moviola.nn")
    assert any(room_of(d) == needle for d in found), found
    assert ROW[needle] > ROW["nn"]


def test_sampler_names_are_spelled_once():
    """config/ sits below diffusion/, so its Literal cannot import the registry: it must list the same names."""
    import typing

    from moviola.config import SampleConfig
    from moviola.diffusion.samplers import SAMPLERS

    assert typing.get_args(typing.get_type_hints(SampleConfig)["sampler"]) == tuple(SAMPLERS)
