"""Opening a prior completely, the way the engine uses it: the check behind ``inr-engine priors verify``.

:func:`~inr_engine.priors.load_prior` checks the file (format, manifest checksum, metadata and
config values, finite float32 tensors). Whether the tensors make the network its metadata
describes shows only when the network is built: :func:`open_prior` builds it on the CPU as
completing or segmenting would (the shape completer with its context encoder; the MetaSeg
segmenter, or the NISF segmenter for each procedure the prior holds; the boundary refiner where
the prior has one). Whatever fails is a :class:`~inr_engine.priors.PriorError` with a one-line
message, never another exception.

It builds the methods' networks, so it sits above them, with the command line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..priors import SEGMENTATION_TASKS, SHAPE_COMPLETION_TASK, Prior, PriorError, error_summary, load_prior


def open_prior(name_or_path: str | Path, device: Any = "cpu"):
    """The object the engine runs for this prior (bundled name or file), built on ``device``: a
    :class:`~inr_engine.shape.completer.ShapeCompleter`, a
    :class:`~inr_engine.segmentation.metaseg.MetaSegSegmenter` or a
    :class:`~inr_engine.segmentation.nisf.NISFSegmenter` (fast procedure, or paper if that is all it
    holds). Its boundary refiner, if any, and NISF's other procedure are built too, as checks.

    Raises :class:`PriorError` (one line) for any prior the engine could not use.
    """
    return _open(load_prior(name_or_path), device)


def verify_prior(name_or_path: str | Path) -> str:
    """Open the prior completely (:func:`open_prior`, on the CPU) and return the one-line summary
    ``<path>: OK (<task>, <N> values)``; :class:`PriorError` otherwise."""
    prior = load_prior(name_or_path)
    _open(prior, "cpu")
    return f"{prior.path}: OK ({prior.task}, {sum(t.numel() for t in prior.tensors.values())} values)"


def _open(prior: Prior, device: Any):
    import torch

    torch.empty(0, device=device)  # an unusable device is the caller's error, not the prior's
    try:
        return _build(prior, device)
    except PriorError:
        raise
    except Exception as exc:  # noqa: BLE001 - whatever building fails on, the prior is unusable
        raise PriorError(f"{prior.path}: cannot build its {prior.task} network ({type(exc).__name__}: "
                         f"{error_summary(exc)}); re-create the prior with this engine, or restore the "
                         "original file") from exc


def _build(prior: Prior, device: Any):
    from ..segmentation import metaseg, nisf, refinement
    from ..shape.completer import ShapeCompleter

    if prior.task == SHAPE_COMPLETION_TASK:
        return ShapeCompleter.from_prior(prior, device)
    if prior.task == SEGMENTATION_TASKS["metaseg"]:
        segmenter = metaseg.MetaSegSegmenter.from_prior(prior, device)
        if "refinement" in prior.metadata:
            refinement.load_refiner(segmenter)
        return segmenter
    if prior.task == SEGMENTATION_TASKS["nisf"]:
        held = [p for p in nisf.PROCEDURES if any(k.startswith(f"{p}.") for k in prior.tensors)]
        built = {p: nisf.NISFSegmenter.from_prior(prior, p, device=device) for p in held or ["fast"]}
        if "refinement" in prior.metadata:
            procedure = prior.metadata["refinement"].get("procedure", "fast")
            if procedure not in built:
                raise PriorError(f"{prior.path}: its boundary refiner is for the {procedure!r} procedure, which the "
                                 "prior does not hold: re-create the refiner with 'inr-engine train refine'")
            refinement.load_refiner(built[procedure])
        return built.get("fast", next(iter(built.values())))
    raise PriorError(f"{prior.path} is a {prior.task!r} prior, a task this engine does not know")  # load_prior refuses
