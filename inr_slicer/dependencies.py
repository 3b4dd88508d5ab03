"""Python dependencies of the extension's modules, installed on the first Apply inside Slicer.

PyTorch comes from the PyTorch extension (``PyTorchUtils``: light-the-torch picks the build that
matches the NVIDIA driver, else the CPU build). The other packages are listed in
``requirements.txt`` beside this file and installed with ``slicer.packaging.pip_ensure``
(Slicer 5.12 and later) or, on older Slicer, ``slicer.util.pip_install`` after a confirmation.
Nothing is installed without asking, and nothing happens at import time: the modules call
:func:`ensure_dependencies` when the user presses Apply.

Only the Slicer application calls this module; it imports no Qt.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import importlib.util
import logging
import sys
from collections.abc import Iterable
from pathlib import Path

REQUIREMENTS_FILE = Path(__file__).resolve().with_name("requirements.txt")
TORCH_REQUIREMENT = ">=2.8"  # the engine's floor (pyproject.toml), which MONAI 1.6 needs too
REQUESTER = "INR Segmentation"

_ensured = False  # everything was importable once in this session: later Applies skip the checks


class DependencyError(RuntimeError):
    """A dependency that could not be installed or used; the message says what to do."""


def load_requirements(path: str | Path = REQUIREMENTS_FILE) -> list[str]:
    """The requirement specifiers of a requirements file (comments and pip options skipped)."""
    lines = (line.split("#", 1)[0].strip() for line in Path(path).read_text().splitlines())
    return [line for line in lines if line and not line.startswith("-")]


def is_satisfied(requirement: str) -> bool:
    """Whether ``requirement`` (e.g. ``"scipy>=1.10"``) is installed at a fitting version and importable."""
    from packaging.requirements import Requirement  # bundled with Slicer

    req = Requirement(requirement)
    try:
        version = importlib.metadata.version(req.name)
    except importlib.metadata.PackageNotFoundError:
        return False
    if not req.specifier.contains(version, prereleases=True):
        return False
    # Every package we list imports under its distribution's name (torch, safetensors, scipy).
    return importlib.util.find_spec(req.name.lower().replace("-", "_")) is not None


def missing_requirements(requirements: Iterable[str]) -> list[str]:
    """The requirements that are not satisfied yet."""
    importlib.invalidate_caches()  # see what a pip run in this session installed
    return [r for r in requirements if not is_satisfied(r)]


def ensure_torch() -> bool:
    """PyTorch through the PyTorch extension; False if the user declined the installation."""
    requirement = "torch" + TORCH_REQUIREMENT
    if not missing_requirements([requirement]):
        return True
    try:
        import PyTorchUtils
    except ImportError as exc:
        raise DependencyError(
            f"{REQUESTER} runs on PyTorch, which it installs through the PyTorch extension, and that extension "
            "is not installed. Install \"PyTorch\" from the Extensions Manager (category Utilities), restart "
            "Slicer, then press Apply again.") from exc
    loaded = "torch" in sys.modules  # an older PyTorch already imported in this session
    torch = PyTorchUtils.PyTorchUtilsLogic().installTorch(askConfirmation=True,
                                                           torchVersionRequirement=TORCH_REQUIREMENT)
    if torch is None:
        logging.info("%s: PyTorch installation declined", REQUESTER)
        return False
    if missing_requirements([requirement]):
        raise DependencyError(f"PyTorch {TORCH_REQUIREMENT} could not be installed; see the Python console for "
                              "details, or install it from the PyTorch Utils module.")
    if loaded:
        raise DependencyError("PyTorch was updated. Restart Slicer to load the new version, then press Apply again.")
    return True


def ensure_packages(requirements: Iterable[str] | None = None) -> bool:
    """The other packages (``requirements.txt`` by default); False if the user declined."""
    requirements = load_requirements() if requirements is None else list(requirements)
    missing = missing_requirements(requirements)
    if not missing:
        return True
    import slicer

    try:
        import slicer.packaging as slicer_packaging  # Slicer 5.12 and later
    except ImportError:
        slicer_packaging = None
    if slicer_packaging is not None:
        try:
            slicer_packaging.pip_ensure(missing, requester=REQUESTER)
        except RuntimeError as exc:
            if "declined" in str(exc):  # pip_ensure's documented signal for "the user said no"
                logging.info("%s: installation of %s declined", REQUESTER, ", ".join(missing))
                return False
            raise
    else:
        if not slicer.util.confirmOkCancelDisplay(
                f"{REQUESTER} needs {len(missing)} Python package(s) that are not installed yet. Install them now?\n\n"
                "This modifies Slicer's Python environment.",
                windowTitle=f"{REQUESTER} - Install Python Packages", detailedText="\n".join(missing)):
            logging.info("%s: installation of %s declined", REQUESTER, ", ".join(missing))
            return False
        with slicer.util.WaitCursor():
            slicer.util.pip_install(missing)  # a list: each requirement is one pip argument
    still_missing = missing_requirements(missing)
    if still_missing:
        skipped = slicer_packaging is not None and slicer.app.testingEnabled()  # pip_ensure installs nothing then
        testing = " (Slicer runs in testing mode, in which pip_ensure installs nothing)" if skipped else ""
        raise DependencyError(f"these Python packages could not be installed{testing}: {', '.join(still_missing)}; "
                              "see the Python console for details.")
    return True


def ensure_dependencies(requirements_file: str | Path = REQUIREMENTS_FILE) -> bool:
    """Make PyTorch and the other packages importable, asking before installing anything.

    Returns True when everything is importable, False if the user declined an installation.
    Raises :class:`DependencyError` when something cannot be installed (e.g. the PyTorch
    extension is missing) and ``subprocess.CalledProcessError`` when pip fails.
    """
    global _ensured
    if _ensured:
        return True
    if not ensure_torch() or not ensure_packages(load_requirements(requirements_file)):
        return False
    _ensured = True
    return True
