"""Imports point downwards: the package's import graph, read from its source, has no cycles, every import goes
to the same or a lower layer, and no command but ``diffusion-lab-train`` reaches ``diffusion_lab.training``."""

from __future__ import annotations

import ast
from collections.abc import Mapping, Set
from pathlib import Path

import diffusion_lab

PACKAGE = Path(diffusion_lab.__file__).parent

#: The layers, lowest first; each is the top-level modules and subpackages of ``diffusion_lab`` it holds. A
#: module imports from its own layer and the layers below, never from one above. ``diffusion_lab`` itself is
#: the lowest: it holds ``__version__`` and names the notebook API, whose modules it imports on first use.
LAYERS: tuple[frozenset[str], ...] = tuple(
    frozenset(names.split())
    for names in (
        "diffusion_lab utils rules extras conf",  # __version__; files; what a setting takes; optional features; configs
        "data",  # datasets, labels, styles
        "diffusion",  # schedules, objectives, samplers, the reverse process
        "models",  # the network, the LightningModule, the checkpoint format, model folders
        "pipeline diffusers_pipeline sampling_settings",  # a loaded model that draws images, as diffusers' too
        "reports",  # figures, tables, sample files, model cards
        "evaluation",  # metrics of images, and the evaluate command's work
        "export sampling",  # a checkpoint as a model folder; the sample command's work
        "config config_schema",  # the commands' configs and their checks
        "training",  # the run: fit, callbacks, resume policy
        "cli",  # the commands
    )
)
#: The package's top-level module or subpackage -> its layer's rank.
RANK = {name: rank for rank, layer in enumerate(LAYERS) for name in layer}
#: The one command that trains.
TRAIN_COMMAND = "diffusion_lab.cli.train"


def module_name(path: Path) -> str:
    """``diffusion_lab.models.unet`` for ``.../diffusion_lab/models/unet.py`` (a package by its ``__init__.py``)."""
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {module_name(path): path for path in PACKAGE.rglob("*.py")}


def imported(name: str) -> set[str]:
    """The package's modules that module ``name`` imports, anywhere in it (inside functions too)."""
    found: set[str] = set()
    path = MODULES[name]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the module's package, one level up per extra dot
                package = (name if path.name == "__init__.py" else name.rpartition(".")[0]).split(".")
                base = ".".join([*package[: len(package) - node.level + 1], *filter(None, [base])])
            for alias in node.names:  # ``from package import module`` imports the module
                found.add(f"{base}.{alias.name}" if f"{base}.{alias.name}" in MODULES else base)
    return {module for module in found if module in MODULES and module != name}


GRAPH: dict[str, set[str]] = {name: imported(name) for name in MODULES}


def part(module: str) -> str:
    """The top-level module or subpackage of ``diffusion_lab`` that ``module`` belongs to."""
    return module.split(".")[1] if "." in module else module


def upward_imports(graph: Mapping[str, Set[str]]) -> list[str]:
    """``importer -> imported`` for every import into a higher layer."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if RANK[part(b)] > RANK[part(a)])


def cycle(graph: Mapping[str, Set[str]]) -> list[str]:
    """One cycle of ``graph`` (its nodes in order, the first again at the end), or ``[]`` when it has none."""
    done: set[str] = set()

    def visit(node: str, path: list[str]) -> list[str]:
        if node in path:
            return [*path[path.index(node) :], node]
        if node in done:
            return []
        for target in sorted(graph.get(node, ())):
            if found := visit(target, [*path, node]):
                return found
        done.add(node)
        return []

    return next((found for node in sorted(graph) if (found := visit(node, []))), [])


def package_graph(graph: Mapping[str, Set[str]]) -> dict[str, set[str]]:
    """``graph`` between the top-level modules and subpackages of ``diffusion_lab``."""
    packages: dict[str, set[str]] = {part(a): set() for a in graph}
    for a, targets in graph.items():
        packages[part(a)].update(part(b) for b in targets if part(b) != part(a))
    return packages


def reached(start: str, graph: Mapping[str, Set[str]]) -> set[str]:
    """Every module that importing ``start`` runs: what it imports, transitively, and the packages around each."""
    seen: set[str] = set()
    todo = [start]
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        parents = [".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)]
        todo.extend([*graph.get(module, ()), *parents])
    return seen


def training_reached(graph: Mapping[str, Set[str]]) -> dict[str, list[str]]:
    """The modules of ``cli/`` other than the train command, each with the ``diffusion_lab.training`` modules it
    reaches (only those that reach any)."""
    commands = [name for name in graph if part(name) == "cli" and name != TRAIN_COMMAND]
    found = {name: sorted(m for m in reached(name, graph) if part(m) == "training") for name in commands}
    return {name: modules for name, modules in found.items() if modules}


def test_every_module_has_a_layer() -> None:
    assert len(GRAPH) > 40 and sum(map(len, GRAPH.values())) > 100, "the graph holds the package's imports"
    assert sorted({part(name) for name in GRAPH} - set(RANK)) == [], "give each new package its place in LAYERS"


def test_no_import_cycles() -> None:
    assert cycle(GRAPH) == [], "modules import one another in a cycle"
    assert cycle(package_graph(GRAPH)) == [], "packages import one another in a cycle"


def test_every_import_goes_to_the_same_or_a_lower_layer() -> None:
    assert upward_imports(GRAPH) == []


def test_only_the_train_command_reaches_training() -> None:
    assert "diffusion_lab.training.fit" in reached(TRAIN_COMMAND, GRAPH)
    assert {"diffusion_lab.cli.sample", "diffusion_lab.cli.evaluate", "diffusion_lab.cli.figures",
            "diffusion_lab.cli.export"} <= set(GRAPH)  # fmt: skip
    assert training_reached(GRAPH) == {}


def test_the_checks_catch_an_upward_import() -> None:
    """The import that once tied the model to training (its checkpoint reading) fails each check again."""
    planted = {**GRAPH, "diffusion_lab.models.diffusion_module": {*GRAPH["diffusion_lab.models.diffusion_module"],
                                                                  "diffusion_lab.training.checkpointing"}}  # fmt: skip
    assert upward_imports(planted) == ["diffusion_lab.models.diffusion_module -> diffusion_lab.training.checkpointing"]
    assert {"models", "training"} <= set(cycle(package_graph(planted)))
    assert "diffusion_lab.training.checkpointing" in training_reached(planted)["diffusion_lab.cli.sample"]
