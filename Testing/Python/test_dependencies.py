"""Declared dependencies match what the code imports (no environment needed, the source is read with ``ast``).

Two worlds, each checked both ways (nothing imported is undeclared, nothing declared is unused):

* Slicer: the modules' logic (``inr_slicer.segmentation``, ``inr_slicer.reconstruction``) and the
  rest of ``inr_slicer`` (whose ``completion`` is the Segment Editor effect's logic), followed through
  ``inr_engine``. What they import beyond what Slicer provides must be exactly
  ``inr_slicer/requirements.txt``, which the modules pip-install on first Apply.
* The engine and its CLI: every ``inr_engine`` module. What they import must be exactly
  pyproject's core ``dependencies``, so a plain ``pip install .`` runs them; the research code in
  ``benchmarks/`` is never reached from the engine or the Slicer side (checked here).

The import graph counts function-level imports (the logic imports the engine only when a run
starts), skips ``if TYPE_CHECKING:`` blocks, and treats imports guarded by ``except ImportError``
as optional (they need no declaration).
"""

from __future__ import annotations

import ast
import importlib.metadata
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[2]
MODULE_DIRS = ["INRSegmentation", "MetaShapeReconstruction", "SegmentEditorSparseCompletion"]
SOURCE_ROOTS = [ROOT, *(ROOT / d for d in MODULE_DIRS)]  # what Slicer (and conftest.py) puts on sys.path
OWN = {"inr_engine", "inr_slicer", *MODULE_DIRS, *(f"{d}Lib" for d in MODULE_DIRS)}

# What Slicer brings: bundled with the application, or (torch) from the PyTorch extension.
SLICER_BUNDLED = {"numpy", "vtk", "vtkmodules", "SimpleITK", "slicer", "qt", "ctk", "packaging", "torch"}
# Modules of the Slicer application itself (app-only files: module widgets, the effect, the installer).
SLICER_APP = {"SegmentEditorEffects", "qSlicerSegmentationsEditorEffectsPythonQt", "PyTorchUtils"}

# The Slicer-side logic: no Qt, runs on the slicer-core wheel.
SLICER_LOGIC = ["inr_slicer.segmentation", "inr_slicer.reconstruction",
                "inr_slicer", "inr_slicer.completion", "inr_slicer.nodes", "inr_slicer.outputs", "inr_slicer.priors",
                "inr_slicer.worker"]
# Everything else Slicer loads: module classes and widgets, the effect, the dependency installer.
SLICER_APP_FILES = [*(f"{d}.py" for d in MODULE_DIRS), *(f"{d}/{d}Lib/*.py" for d in MODULE_DIRS)]

# Import name -> distribution name where they differ (checked against the installed metadata below).
DISTRIBUTIONS = {"nrrd": "pynrrd", "vtkmodules": "vtk", "yaml": "PyYAML", "PIL": "Pillow", "skimage": "scikit-image",
                 "sklearn": "scikit-learn", "cv2": "opencv-python", "ruamel": "ruamel.yaml"}


def canonical(name: str) -> str:
    """PEP 503 normalised distribution name."""
    return re.sub(r"[-_.]+", "-", name).lower()


def distribution(import_name: str) -> str:
    return canonical(DISTRIBUTIONS.get(import_name, import_name))


# --- the import graph ---------------------------------------------------------------------------------------------

def module_file(name: str) -> Path | None:
    """The file of an own module ``a.b.c`` (a module or a package) on the source roots; the folder of
    a namespace package (e.g. ``inr_engine.data``, which holds no code)."""
    parts = name.split(".")
    for root in SOURCE_ROOTS:
        for candidate in (root.joinpath(*parts).with_suffix(".py"), root.joinpath(*parts, "__init__.py")):
            if candidate.is_file():
                return candidate
    folder = ROOT.joinpath(*parts)
    return folder if parts[0] in OWN and len(parts) > 1 and folder.is_dir() else None


def module_name(path: Path) -> str:
    """The dotted name of a source file, relative to the deepest source root holding it."""
    root = max((r for r in SOURCE_ROOTS if path.is_relative_to(r)), key=lambda r: len(r.parts))
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


@dataclass
class Found:
    """Third-party imports by top-level name -> ["file:line", ...]; the own modules visited."""

    required: dict[str, list[str]] = field(default_factory=dict)
    optional: dict[str, list[str]] = field(default_factory=dict)
    visited: set[str] = field(default_factory=set)
    dynamic: list[str] = field(default_factory=list)  # importlib.import_module / __import__ calls


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _catches_import_error(handler: ast.ExceptHandler) -> bool:
    names = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
    return any(isinstance(n, ast.Name) and n.id in {"ImportError", "ModuleNotFoundError"} for n in names)


def _imports(tree: ast.AST):
    """(node, optional) for each import statement, skipping ``if TYPE_CHECKING:`` bodies."""

    def visit(node: ast.AST, optional: bool):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from visit(child, optional)
            return
        if isinstance(node, ast.Try) and any(_catches_import_error(h) for h in node.handlers):
            for child in node.body:
                yield from visit(child, True)
            for child in [*node.handlers, *node.orelse, *node.finalbody]:
                yield from visit(child, optional)
            return
        if isinstance(node, (ast.Import, ast.ImportFrom, ast.Call)):
            yield node, optional
        for child in ast.iter_child_nodes(node):
            yield from visit(child, optional)

    yield from visit(tree, False)


def walk(entries: list[str], stop=lambda name: False) -> Found:
    """Follow the own modules imported from ``entries`` (dotted names); collect the third-party ones."""
    found = Found()
    queue = list(entries)
    while queue:
        name = queue.pop()
        if name in found.visited or stop(name):
            continue
        path = module_file(name)
        assert path is not None, f"cannot find module {name}"
        found.visited.add(name)
        # importing a.b.c runs a/__init__ and a/b/__init__ first
        queue.extend(".".join(name.split(".")[:i]) for i in range(1, name.count(".") + 1))
        if path.is_dir():  # a namespace package: no code
            continue
        is_package = path.name == "__init__.py"
        where = path.relative_to(ROOT)
        for node, optional in _imports(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Call):
                func = node.func
                called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
                if called in {"import_module", "__import__"}:
                    found.dynamic.append(f"{where}:{node.lineno}")
                continue
            targets = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            else:
                if node.level:
                    package = name.split(".") if is_package else name.split(".")[:-1]
                    base = package[:len(package) - node.level + 1]
                    module = ".".join(base + ([node.module] if node.module else []))
                else:
                    module = node.module
                targets = [module]
                # "from package import submodule" imports the submodule
                targets += [f"{module}.{a.name}" for a in node.names if module_file(f"{module}.{a.name}")]
            for target in targets:
                top = target.split(".")[0]
                if top in OWN:
                    if module_file(target) is not None:
                        queue.append(target)
                    else:  # "from own.module import name" of a missing module is a bug, not a dependency
                        raise AssertionError(f"{where}:{node.lineno}: no module {target}")
                elif top not in sys.stdlib_module_names and top != "__future__":
                    (found.optional if optional else found.required).setdefault(top, []).append(
                        f"{where}:{node.lineno}")
    return found


def engine_modules() -> list[str]:
    return sorted(module_name(p) for p in (ROOT / "inr_engine").rglob("*.py"))


def slicer_app_modules() -> list[str]:
    files = [p for pattern in SLICER_APP_FILES for p in ROOT.glob(pattern)]
    return sorted({module_name(p) for p in files} | {module_name(p) for p in (ROOT / "inr_slicer").glob("*.py")})


def third_party(found: Found, provided: set[str] = frozenset()) -> dict[str, list[str]]:
    """Distribution name -> where, for the required imports not in ``provided``."""
    out: dict[str, list[str]] = {}
    for top, where in found.required.items():
        if top not in provided:
            out.setdefault(distribution(top), []).extend(where)
    return out


def requirement_names(specifiers) -> set[str]:
    return {canonical(Requirement(s).name) for s in specifiers}


def slicer_requirements() -> list[str]:
    from inr_slicer.dependencies import load_requirements  # what the modules install, read the modules' way

    return load_requirements(ROOT / "inr_slicer" / "requirements.txt")


def core_dependencies() -> list[str]:
    try:
        import tomllib
    except ImportError:  # Python 3.10
        tomllib = pytest.importorskip("tomli")
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]


# --- Slicer ---------------------------------------------------------------------------------------------------------

def test_slicer_requirements_are_what_the_slicer_logic_imports():
    found = walk(SLICER_LOGIC)
    needed = third_party(found, SLICER_BUNDLED)
    declared = requirement_names(slicer_requirements())
    assert set(needed) == declared, (
        f"inr_slicer/requirements.txt lists {sorted(declared)}, the Slicer logic imports {sorted(needed)} "
        f"beyond what Slicer bundles: undeclared {({k: needed[k] for k in set(needed) - declared})}, "
        f"unused {sorted(declared - set(needed))}")
    # the walk did reach the engine through the function-level imports of both logic classes (and the effect's)
    assert {"inr_engine.segmentation.segment", "inr_engine.shape.complete", "inr_engine.shape.encoder"} <= found.visited


def test_slicer_application_files_need_nothing_beyond_the_requirements():
    found = walk(slicer_app_modules())
    extra = set(third_party(found, SLICER_BUNDLED | SLICER_APP)) - requirement_names(slicer_requirements())
    assert not extra, f"imported by the Slicer modules but neither bundled nor in requirements.txt: {extra}"


def test_the_slicer_path_does_not_need_the_file_readers_or_the_cli_packages():
    needed = third_party(walk(slicer_app_modules()))
    for cli_only in ("nibabel", "pynrrd", "matplotlib", "tqdm"):
        assert cli_only not in needed, f"{cli_only} imported on the Slicer path at {needed[cli_only]}"


def test_slicer_requirements_import_under_their_distribution_name():
    # inr_slicer.dependencies.is_satisfied finds a requirement's module by its distribution's name
    for name in requirement_names(slicer_requirements()):
        assert distribution(name.replace("-", "_")) == name and name.replace("-", "_") not in DISTRIBUTIONS, name


# --- the engine -----------------------------------------------------------------------------------------------------

def test_core_dependencies_are_what_the_engine_imports():
    found = walk(engine_modules())
    needed = third_party(found)
    declared = requirement_names(core_dependencies())
    assert set(needed) == declared, (
        f"pyproject.toml's dependencies are {sorted(declared)}, inr_engine imports {sorted(needed)}: undeclared "
        f"{({k: needed[k] for k in set(needed) - declared})}, unused {sorted(declared - set(needed))}")


def test_benchmarks_are_not_reached_from_the_engine_or_the_slicer_modules():
    # research code (baselines needing slicer-core's vtkITK, data-set loaders) stays out of what users install
    for entries in (engine_modules(), slicer_app_modules()):
        found = walk(entries)
        reached = {k: v for k, v in {**found.required, **found.optional}.items() if k in ("benchmarks", "scripts")}
        assert not reached, f"research code imported by the engine or the Slicer modules: {reached}"


def test_slicer_requirements_are_core_dependencies_too():
    # the Slicer path runs engine code, so pip install . must bring these as well
    assert requirement_names(slicer_requirements()) <= requirement_names(core_dependencies())


def test_no_optional_or_dynamic_imports_hide_dependencies():
    for entries in (engine_modules(), slicer_app_modules()):
        found = walk(entries)
        assert not found.dynamic, f"imports the walk cannot follow: {found.dynamic}"
        # Slicer's own modules may be missing (e.g. PyTorchUtils without the PyTorch extension); others must not
        optional = {k: v for k, v in found.optional.items() if k not in SLICER_BUNDLED | SLICER_APP}
        assert not optional, f"optional (except ImportError) imports; declare or list them: {optional}"


def test_the_import_name_map_matches_the_installed_distributions():
    installed = importlib.metadata.packages_distributions()
    found = walk(sorted(set(engine_modules()) | set(slicer_app_modules())))
    checked = 0
    for top in found.required:
        if top in installed and top not in SLICER_APP | {"slicer", "qt", "ctk"}:
            assert distribution(top) in {canonical(d) for d in installed[top]}, (top, installed[top])
            checked += 1
    assert checked >= 5  # the test environment has the engine's dependencies installed
