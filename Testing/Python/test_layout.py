"""The layout stays one maintainers can carry on (docs/architecture.md): the engine holds only
what users run, files stay short, each Slicer module imports only its own Lib, and the
benchmarks are a package that patches no import path."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 400
MODULE_DIRS = ("INRSegmentation", "MetaShapeReconstruction", "SegmentEditorSparseCompletion")

# Benchmark data sets and research paths: the engine may name its bundled priors and samples
# (inr_engine/data/), nothing else of them.
RESEARCH = re.compile(r"adrenalmnist|deepmind|hn[-_]oar|task04|\.\./shared|shared/data|runs/", re.IGNORECASE)


def python_files(*folders: str) -> list[Path]:
    return sorted(p for folder in folders for p in (ROOT / folder).rglob("*.py") if "__pycache__" not in p.parts)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """Every module ``path`` imports, anywhere in it (function-level imports too), relative ones resolved."""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = package[:len(package) - node.level + 1] if node.level else []
            module = ".".join([*base, *([node.module] if node.module else [])])
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # "from . import x" names a module
    return names


def engine_layer(module: str) -> str:
    """foundations (top-level modules, priors/, data/) < shape/, segmentation/ < cli/."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[1] in ("shape", "segmentation", "cli") else "foundations"


# Which engine layers each may import: imports point one way, and the two tasks stay apart.
MAY_IMPORT = {"foundations": {"foundations"}, "shape": {"foundations", "shape"},
              "segmentation": {"foundations", "segmentation"},
              "cli": {"foundations", "shape", "segmentation", "cli"}}


@pytest.mark.parametrize("path", python_files("inr_engine", "inr_slicer"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_and_slicer_files_stay_short(path):
    lines = len(path.read_text().splitlines())
    assert lines <= MAX_LINES, f"{path.relative_to(ROOT)} has {lines} lines: split it by what its parts hold"


def test_the_engine_names_no_benchmark_data_set_or_research_path():
    found = [f"{p.relative_to(ROOT)}:{n}: {line.strip()}" for p in python_files("inr_engine")
             for n, line in enumerate(p.read_text().splitlines(), 1) if RESEARCH.search(line)]
    assert not found, "research names in the engine (they belong in benchmarks/ or scripts/):\n" + "\n".join(found)


@pytest.mark.parametrize("path", python_files("inr_engine"), ids=lambda p: str(p.relative_to(ROOT)))
def test_engine_imports_point_one_way(path):
    layer = engine_layer(module_name(path))
    wrong = sorted(name for name in imported_modules(path) if name.startswith("inr_engine.")
                   and engine_layer(name) not in MAY_IMPORT[layer])
    assert not wrong, f"{path.relative_to(ROOT)} ({layer}) imports {wrong}: see docs/architecture.md"


@pytest.mark.parametrize("module", MODULE_DIRS)
def test_each_slicer_module_imports_only_its_own_lib(module):
    others = {f"{m}Lib" for m in MODULE_DIRS if m != module}
    for path in python_files(module):
        reached = {name for name in imported_modules(path) if name.split(".")[0] in others}
        assert not reached, f"{path.relative_to(ROOT)} imports another module's Lib: {sorted(reached)}"


def test_benchmarks_are_a_package_that_patches_no_import_path():
    assert (ROOT / "benchmarks" / "__init__.py").is_file()
    patched = [str(p.relative_to(ROOT)) for p in python_files("benchmarks") if "sys.path" in p.read_text()]
    assert not patched, f"benchmarks that patch sys.path (run them as python -m benchmarks.<name>): {patched}"
