"""The package's import structure (docs/architecture.md): no import cycles, and no module imports one of a
higher layer, whether at the top of the file or inside a function."""

from __future__ import annotations

import ast

from conftest import REPO

PACKAGE = REPO / "src" / "rapid_cli"
LAYERS = [  # lowest first; a module may import its own layer and the ones below it
    {"errors", "types", "cache", "timing", "console", "hub", "gpu", "hardware", "overrides"},
    {"config"},
    {"algorithms", "rewards", "sandbox", "models", "lora", "policy", "tasks", "samplers", "distributed", "checkpoint",
     "rundir", "stopping"},
    {"validation", "plan"},
    {"learner", "behaviour", "evaluate", "export", "logger", "plots", "resume", "report", "sweeps"},
    {"trainer"},
    {"cli", "doctor", "__main__", "__init__"},
]


def modules() -> dict[str, set[str]]:
    """rapid_cli module name -> the rapid_cli modules it imports."""
    found = {}
    for path in PACKAGE.rglob("*.py"):
        name = ".".join(path.relative_to(PACKAGE).with_suffix("").parts)
        name = name.removesuffix(".__init__") or "__init__"
        imports = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rapid_cli"):
                base = node.module.removeprefix("rapid_cli").lstrip(".")
                imports |= {f"{base}.{a.name}".lstrip(".") for a in node.names} | ({base} if base else set())
            elif isinstance(node, ast.Import):
                imports |= {a.name.removeprefix("rapid_cli.") for a in node.names if a.name.startswith("rapid_cli.")}
        found[name] = imports
    return {name: {i for i in imports if i in found and i != name} for name, imports in found.items()}


def layer(module: str) -> int:
    top = module.split(".")[0]
    return next(i for i, names in enumerate(LAYERS) if top in names)


def test_every_module_has_a_layer():
    for name in modules():
        assert any(name.split(".")[0] in names for names in LAYERS), f"{name}: add it to a layer in LAYERS"


def test_no_module_imports_a_higher_layer():
    upward = [f"{m} -> {i}" for m, imports in modules().items() for i in imports if layer(i) > layer(m)]
    assert not upward, upward


def test_no_import_cycles():
    graph = modules()
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        for nxt in graph[node]:
            if nxt in path:
                cycles.append(path[path.index(nxt):] + [nxt])
            elif nxt not in done:
                visit(nxt, path + [nxt])
        done.add(node)

    done: set[str] = set()
    for start in graph:
        if start not in done:
            visit(start, [start])
    assert not cycles, cycles


# The loop and the losses are where a change lands most often: they stay readable (issue 26)
LOOP = [PACKAGE / "trainer.py", PACKAGE / "learner.py", *sorted((PACKAGE / "algorithms").glob("*.py"))]


def test_the_loop_and_the_losses_have_lines_a_person_can_read():
    wide = [f"{p.relative_to(PACKAGE)}:{n}" for p in LOOP
            for n, line in enumerate(p.read_text().splitlines(), 1) if len(line) > 100]
    assert not wide, f"lines over 100 columns: {wide}"


def test_no_function_of_the_loop_or_the_losses_is_longer_than_60_lines():
    long = [f"{p.relative_to(PACKAGE)}:{node.name} ({node.end_lineno - node.lineno + 1} lines)" for p in LOOP
            for node in ast.walk(ast.parse(p.read_text()))
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.end_lineno - node.lineno >= 60]
    assert not long, long
