"""
The package's imports go one way: a module imports only from its own layer or the layers below it, and
no chain of imports comes back to where it started.

The imports are read from the source with ast (``from .x import``, ``from ..x import``, ``from
vader_d2.x import``, ``import vader_d2.x``, also those inside functions), not by importing anything.
"""

import ast
import os

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PACKAGE = os.path.join(REPO, "vader_d2")

# Lowest first; a module may import from its own line and the lines above it. The first part of a
# module's path inside vader_d2 (its subpackage, or its name at the top) says its layer.
LAYERS = [
    ("errors",),  # UserError, the exit statuses: imports nothing of the package
    ("config",),
    ("data", "modeling"),
    ("checkpoint",),
    ("engine", "evaluation"),
    ("cli", "collect_env", "_moved", "__init__", "study", "tools"),  # what a user meets first, the study tool's package, the tools
]
LAYER_OF = {part: rank for rank, parts in enumerate(LAYERS) for part in parts}


def package_modules():
    """{dotted name: file} of every module of vader_d2 (a package as its __init__)."""
    modules = {}
    for folder, _, files in os.walk(PACKAGE):
        for name in files:
            if name.endswith(".py"):
                path = os.path.join(folder, name)
                parts = os.path.relpath(path, REPO)[: -len(".py")].split(os.sep)
                if parts[-1] == "__init__":
                    parts = parts[:-1]
                modules[".".join(parts)] = path
    return modules


def tool_modules():
    folder = os.path.join(REPO, "tools")
    return {f"tools.{name[:-3]}": os.path.join(folder, name) for name in sorted(os.listdir(folder)) if name.endswith(".py")}


def imported_modules(module, path, known):
    """The modules of ``known`` that ``module`` (the file ``path``) imports, with the line of each."""
    is_package = path.endswith("__init__.py")
    package = module if is_package else module.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(open(path).read(), path)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from PACKAGE import name`` imports the module PACKAGE.name when there is one.
            targets = [f"{source}.{alias.name}" if f"{source}.{alias.name}" in known else source for alias in node.names]
        else:
            continue
        for target in targets:
            # ``import vader_d2.engine.trainer``: the deepest module of the package that the name names.
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != module:
                found.append((target, node.lineno))
    return found


def layer(module):
    parts = module.split(".")
    if parts[0] == "tools":
        return LAYER_OF["tools"]
    if len(parts) == 1:
        return LAYER_OF["__init__"]
    return LAYER_OF.get(parts[1])


def import_graph():
    package = package_modules()
    files = {**package, **tool_modules()}
    return {module: imported_modules(module, path, package) for module, path in files.items()}


def test_every_module_has_a_layer():
    unplaced = sorted(module for module in import_graph() if layer(module) is None)
    assert not unplaced, f"modules in no layer of LAYERS: {unplaced}; give each a layer (or move it into a subpackage)"


def test_no_import_from_a_higher_layer():
    upward = [
        f"{module} (layer {layer(module)}) imports {target} (layer {layer(target)}), line {line}"
        for module, targets in import_graph().items()
        for target, line in targets
        if layer(module) is not None and layer(target) is not None and layer(target) > layer(module)
    ]
    assert not upward, "imports from a higher layer:\n" + "\n".join(upward)


def test_no_import_circle():
    graph = {module: sorted({target for target, _ in targets}) for module, targets in import_graph().items()}
    circles = []
    state = {}  # module: "open" while on the path, "done" after

    def visit(module, path):
        state[module] = "open"
        for target in graph.get(module, ()):
            if state.get(target) == "open":
                circles.append(" -> ".join(path[path.index(target):] + [target]))
            elif target not in state:
                visit(target, path + [target])
        state[module] = "done"

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])
    assert not circles, "import circles:\n" + "\n".join(circles)


def test_errors_imports_nothing_of_the_package():
    assert import_graph()["vader_d2.errors"] == []


@pytest.mark.parametrize("source, expected", [
    ("from ..config import add_vader_config\n", ["vader_d2.config"]),
    ("from .trainer import VADeRTrainer\n", ["vader_d2.engine.trainer"]),
    ("def f():\n    from vader_d2.engine.hooks import NegativesWatch\n", ["vader_d2.engine.hooks"]),
    ("import vader_d2.modeling.vader\n", ["vader_d2.modeling.vader"]),
    ("from .. import errors\n", ["vader_d2.errors"]),
])
def test_the_imports_are_read(tmp_path, source, expected):
    """The reader sees each form of import (a test of the test)."""
    path = tmp_path / "launch.py"
    path.write_text(source)
    assert [target for target, _ in imported_modules("vader_d2.engine.launch", str(path), package_modules())] == expected


def test_a_higher_import_is_caught(tmp_path):
    path = tmp_path / "config.py"
    path.write_text("from ..engine.trainer import VADeRTrainer\n")
    targets = imported_modules("vader_d2.config.config", str(path), package_modules())
    assert [layer(target) > layer("vader_d2.config.config") for target, _ in targets] == [True]
