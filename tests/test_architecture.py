"""The house rules of ../shared/DESIGN.md, read from the source with ``ast``: the package's import
graph has no cycle, no room imports one above it (nor a sibling room), the command line stays
thin, and no library code parses flags."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "robustmaxup"

#: room -> layer; a module may import only rooms of a LOWER layer, or its own room
LAYERS = {
    "__main__": 7, "cli": 6, "train": 5, "methods": 4, "attacks": 3, "certify": 3,
    "checkpoints": 2, "models": 1, "data": 1, "runtime": 0, "registry": -1, "errors": -2,
    "__init__": -2,  # the package's __init__ holds only __version__
}


def _module_name(path: Path) -> str:
    rel = path.relative_to(PKG.parent).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in PKG.rglob("*.py")}


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The package module ``name`` refers to (the longest existing prefix)."""
    parts = name.split(".")
    while parts:
        candidate = ".".join(parts)
        if candidate in modules:
            return candidate
        parts = parts[:-1]
    return None


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """Every robustmaxup module imported anywhere in ``path`` (function-level imports too)."""
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        for name in names:
            if name.split(".")[0] == "robustmaxup":
                target = _resolve(name, modules)
                if target is not None:
                    out.add(target)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(path, modules) - {name} for name, path in modules.items()}


def _room(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def test_rooms_are_known():
    unknown = sorted({_room(m) for m in _modules()} - set(LAYERS))
    assert not unknown, f"add these rooms to LAYERS (and to DESIGN.md): {unknown}"


def test_import_graph_has_no_cycle():
    graph = _graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycle = stack[stack.index(nxt):] + [nxt]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)


def test_no_room_imports_one_above_it_or_a_sibling():
    bad = []
    for module, targets in _graph().items():
        room = _room(module)
        for target in targets:
            other = _room(target)
            if other != room and LAYERS[other] >= LAYERS[room]:
                bad.append(f"{module} ({room}, layer {LAYERS[room]}) imports {target} "
                           f"({other}, layer {LAYERS[other]})")
    assert not bad, "\n".join(sorted(bad))


def test_certify_never_imports_training_code_and_attacks_import_models_at_most():
    graph = _graph()
    for module, targets in graph.items():
        rooms = {_room(t) for t in targets}
        if _room(module) == "certify":
            assert not rooms & {"train", "methods", "attacks"}, (module, rooms)
        if _room(module) == "attacks":
            assert not rooms & {"checkpoints", "certify", "methods", "train"}, (module, rooms)


def test_cli_files_are_thin():
    long = {p.name: n for p in (PKG / "cli").glob("*.py")
            if (n := len(p.read_text().splitlines())) > 150}
    assert not long, f"cli files over 150 lines: {long}"


def test_no_library_code_parses_flags():
    offenders = []
    for name, path in _modules().items():
        if _room(name) in ("cli", "__main__"):
            continue
        text = path.read_text()
        if "argparse" in text or "sys.exit(" in text:
            offenders.append(name)
    assert not offenders, f"library modules that use argparse or sys.exit: {offenders}"


def test_no_method_file_imports_another():
    methods = PKG / "methods"
    shared = {"base", "families", "augment", "registry", "weight_perturbation", "__init__"}
    graph = _graph()
    for path in methods.glob("*.py"):
        if path.stem in shared:
            continue
        for target in graph[_module_name(path)]:
            parts = target.split(".")
            if len(parts) == 2 and parts[1] == "methods":
                pytest.fail(f"{path.name} imports the package __init__ (robustmaxup.methods)")
            if len(parts) > 2 and parts[1] == "methods" and parts[2] not in shared:
                allowed = path.stem in ("awp", "amp") and parts[2] == "weight_perturbation"
                assert allowed, f"{path.name} imports method file {parts[2]}"


def test_the_test_can_fail(tmp_path):
    """The cycle finder and layer check really see edges (guards against a vacuous graph)."""
    graph = _graph()
    assert any("robustmaxup.runtime.seeds" in t for t in graph.get("robustmaxup.certify.runner", ()))
    assert _room("robustmaxup.cli.train") == "cli" and LAYERS["cli"] > LAYERS["train"]
