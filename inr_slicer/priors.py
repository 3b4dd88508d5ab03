"""The bundled priors the modules and the Segment Editor effect offer, the method's default first.

The defaults and the tasks are the engine's (:data:`inr_engine.priors.DEFAULT_PRIORS`,
``SEGMENTATION_TASKS``); this only orders them for a GUI. Needs neither PyTorch nor Qt.
"""

from __future__ import annotations

from inr_engine.priors import (
    AUTO,
    DEFAULT_PRIORS,
    SCAN_SHAPE_PRIOR,
    SEGMENTATION_TASKS,
    SHAPE_COMPLETION_TASK,
    bundled_priors,
)

# Method (as DEFAULT_PRIORS names it: shape completion by its task's name) -> the task of its priors.
METHOD_TASKS = {SHAPE_COMPLETION_TASK: SHAPE_COMPLETION_TASK, **SEGMENTATION_TASKS}


def described_prior_choices(method: str) -> list[tuple[str, str]]:
    """(name, description) of the bundled priors ``method`` can use ("shape_completion", "metaseg"
    or "nisf"), its default first (for shape completion ``auto``), then by name."""
    entries = bundled_priors(METHOD_TASKS[method])
    names = sorted(sorted(entries), key=lambda name: name != DEFAULT_PRIORS[method])
    choices = [(name, entries[name].get("description", name)) for name in names]
    if method == SHAPE_COMPLETION_TASK:  # the default: a bundled prior chosen for each input
        choices.insert(0, (AUTO, f"chosen for the input: {DEFAULT_PRIORS[method]} for small structures on isotropic "
                                 f"grids, {SCAN_SHAPE_PRIOR} for anisotropic scans or large structures"))
    return choices


def prior_choices(method: str) -> list[str]:
    """The names of the bundled priors ``method`` can use, its default first."""
    return [name for name, _ in described_prior_choices(method)]
