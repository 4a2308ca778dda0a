"""Imports point one way, read from the source's import graph: schemas <- stages <- demo <- pipelines,
only the runner knows Ray, and of the product only the command line builds the demo's models and
sample. Inside stages, the domain packages are layered too: a package imports
only itself and packages of a lower layer (io <- audio, images, licences, report <- embed, vlm <- search <-
pairing), with the shared stage base and errors below them all."""

from __future__ import annotations

import ast
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
LAYERS = {"schemas": 0, "stages": 1, "demo": 2, "pipelines": 3}
RAY_ONLY_IN = {"pipelines/ray_runner.py"}
DEMO_ONLY_IN = {"pipelines/cli.py"}
STAGE_LAYERS = {
    "base": 0,
    "errors": 0,
    "io": 1,
    "audio": 2,
    "images": 2,
    "report": 2,
    "licences": 2,
    "embed": 3,
    "vlm": 3,
    "search": 4,
    "pairing": 5,
}


def imported_modules(path: Path) -> list[tuple[int, str]]:
    """Every module a file imports, at any depth of the file (function-level imports included)."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
    return found


def project_files() -> list[Path]:
    return sorted(p for layer in LAYERS for p in (REPO / layer).rglob("*.py"))


def test_the_layers_are_all_found():
    files = {p.relative_to(REPO).parts[0] for p in project_files()}
    assert files == set(LAYERS)
    assert (REPO / "schemas" / "config.py").exists()


def test_no_module_imports_a_layer_above_its_own():
    upward = []
    for path in project_files():
        layer = LAYERS[path.relative_to(REPO).parts[0]]
        for line, module in imported_modules(path):
            target = module.split(".")[0]
            if target in LAYERS and LAYERS[target] > layer:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert upward == []


def stage_package(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if parts[0] == "stages" and len(parts) > 1 else None


def test_every_stage_module_sits_in_a_layered_package():
    unplaced = []
    for path in (REPO / "stages").rglob("*.py"):
        parts = path.relative_to(REPO / "stages").parts
        package = parts[0] if len(parts) > 1 else path.stem
        if package not in STAGE_LAYERS and path.name != "__init__.py":
            unplaced.append(str(path.relative_to(REPO)))
    assert unplaced == []


def test_stage_packages_import_only_their_own_or_lower_layers():
    upward = []
    for path in (REPO / "stages").rglob("*.py"):
        parts = path.relative_to(REPO / "stages").parts
        own = parts[0] if len(parts) > 1 else path.stem
        for line, module in imported_modules(path):
            target = stage_package(module)
            if target is None or target == own or own not in STAGE_LAYERS:
                continue
            if STAGE_LAYERS.get(target, 99) >= STAGE_LAYERS[own]:
                upward.append(f"{path.relative_to(REPO)}:{line} imports {module}")
    assert upward == []


def test_the_stage_layer_check_sees_a_sideways_import(tmp_path):
    assert STAGE_LAYERS["audio"] == STAGE_LAYERS["images"], "a sideways import must count as upward"
    assert stage_package("stages.images.listing") == "images"
    assert stage_package("schemas.layout") is None


def test_only_the_runner_imports_ray():
    outside = []
    for path in project_files():
        name = str(path.relative_to(REPO))
        for line, module in imported_modules(path):
            if module.split(".")[0] == "ray" and name not in RAY_ONLY_IN:
                outside.append(f"{name}:{line} imports {module}")
    assert outside == []


def test_only_the_command_line_imports_the_demo_helpers():
    outside = []
    for path in project_files():
        name = str(path.relative_to(REPO))
        for line, module in imported_modules(path):
            if module.split(".")[0] == "demo" and name not in DEMO_ONLY_IN and not name.startswith("demo/"):
                outside.append(f"{name}:{line} imports {module}")
    assert outside == []


def test_the_graph_reader_sees_imports_at_any_depth(tmp_path):
    sample = tmp_path / "sample.py"
    sample.write_text("import os\n\ndef f():\n    from pipelines.config import load_config\n    import ray.data\n")
    assert [m for _, m in imported_modules(sample)] == ["os", "pipelines.config", "ray.data"]
