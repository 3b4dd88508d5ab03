"""Completing a sparse label map: every label (or one), with per-step progress and a report.

This is the layer the CLI and the Slicer logic share: arrays and affines in, a dense label
map, surfaces and a report out; nothing is written to disk here.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from vtkmodules.vtkCommonDataModel import vtkPolyData

from ..fit import FitStep
from ..frames import validate_affine
from ..inputs import SliceError, labels_and_box
from ..mesh import surface_from_logits
from .case import Case
from .completer import ShapeCompleter

StepCallback = Callable[[int, FitStep, Case], None]  # (label, step, its case) after every fitting step


@dataclass
class Completion:
    labels: np.ndarray  # completed label map on the input grid (input dtype's label values)
    surfaces: dict = field(default_factory=dict)  # label -> vtkPolyData (RAS mm)
    report: dict = field(default_factory=dict)


def check_sparse_labelmap(array: np.ndarray, affine: np.ndarray) -> tuple[list[int], tuple[slice, ...]]:
    """Check a sparse label map and its geometry before any work; returns its foreground labels
    and the box holding them."""
    labels, box = labels_and_box(array)
    validate_affine(affine)
    return labels, box


def complete_labelmap(array: np.ndarray, affine: np.ndarray, completer: ShapeCompleter, steps: int | None = None,
                      label: int | None = None, slices: dict[int, list[int]] | None = None,
                      mesh_step: float | None = None, on_step: StepCallback | None = None,
                      prepared: dict[int, Case] | None = None, check: Callable[[], None] | None = None) -> Completion:
    """Complete each label of ``array`` (or only ``label``) and, if ``mesh_step``, mesh it.

    Overlaps between labels go to the label with the highest logit. ``prepared`` holds cases a
    caller already made with ``completer.prepare`` (e.g. to check the input early), by label.
    ``check()`` is called between the phases of preparing each label (see :func:`~.case.prepare_case`).
    """
    labels, box = check_sparse_labelmap(array, affine)
    if label is not None:
        if label not in labels:
            raise SliceError(f"label {label} is not in the input (labels present: {labels})")
        labels = [label]
    steps = completer.cfg.default_steps if steps is None else steps
    result = Completion(np.zeros(array.shape, _label_dtype(array, max(labels))),
                        report={"labels": {}, "steps": steps, "device": str(completer.device),
                                "torch_threads": torch.get_num_threads()})
    fitted_labels = {}
    for lab in labels:
        case = (prepared or {}).get(lab) or completer.prepare(_label_mask(array, box, lab), affine, slices, check, box)
        fitted = fitted_labels[lab] = _fit_label(case, completer, steps, on_step, lab)
        if mesh_step is not None:
            t0 = time.perf_counter()
            result.surfaces[lab] = completion_surface(completer, fitted.case, fitted.params, mesh_step,
                                                      (fitted.logits, fitted.lo))
            fitted.report["phases"]["mesh"] = time.perf_counter() - t0
        fitted.report["phases"]["total"] = sum(fitted.report["phases"].values())
        result.report["labels"][str(lab)] = fitted.report
    voxels = _merge_labels(result.labels, fitted_labels)
    for lab in labels:
        result.report["labels"][str(lab)]["voxels"] = voxels[lab]
    return result


def completion_surface(completer: ShapeCompleter, case: Case, params: dict, mesh_step: float,
                       voxel_logits: tuple[np.ndarray, np.ndarray] | None = None) -> vtkPolyData:
    """The completed shape's surface in RAS mm, decoded every ``mesh_step`` voxels.

    ``voxel_logits`` (logits, lo) at a step of one voxel are reused when ``mesh_step`` is 1.
    """
    if mesh_step == 1.0 and voxel_logits is not None:
        logits, lo = voxel_logits
    else:
        logits, lo = completer.decode(case, params, mesh_step)
    return surface_from_logits(logits, lo, mesh_step, case.affine)


@dataclass
class _FittedLabel:
    case: Case
    params: dict
    logits: np.ndarray  # over the case's region, starting at voxel ``lo``
    lo: np.ndarray
    report: dict


def _label_dtype(array: np.ndarray, largest: int) -> np.dtype:
    """The input's integer type, or for float label maps the smallest unsigned type that holds them."""
    if np.issubdtype(array.dtype, np.integer):
        return array.dtype
    return np.min_scalar_type(largest)


def _label_mask(array: np.ndarray, box: tuple[slice, ...], label: int) -> np.ndarray:
    """``array == label``, computed on the labels' box only (np.zeros maps zeroed pages lazily)."""
    mask = np.zeros(array.shape, bool)
    mask[box] = array[box] == label
    return mask


def _merge_labels(out: np.ndarray, fitted: dict[int, _FittedLabel]) -> dict[int, int]:
    """Write each label's positive logits into ``out``, overlaps to the highest logit; returns the
    voxels of each label. Only the union of the labels' regions is touched (no full-grid array)."""
    lo = np.min([f.lo for f in fitted.values()], axis=0).astype(int)
    hi = np.max([f.lo + f.logits.shape for f in fitted.values()], axis=0).astype(int)
    best, labels = np.zeros(hi - lo, np.float32), out[tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))]
    for lab, f in fitted.items():
        box = tuple(slice(int(a - b), int(a - b) + n) for a, b, n in zip(f.lo, lo, f.logits.shape))
        win = f.logits > best[box]
        best[box] = np.where(win, f.logits, best[box])
        labels[box] = np.where(win, lab, labels[box])
    return {lab: int(np.count_nonzero(labels == lab)) for lab in fitted}


def _fit_label(case, completer, steps, on_step, lab) -> _FittedLabel:
    history, params = [], completer.init
    t0 = time.perf_counter()
    for st in completer.fit(case, steps):
        history.append({"step": st.step, "loss": st.loss, "seconds": st.seconds})
        params = st.params
        if on_step is not None:
            on_step(lab, st, case)
    fit_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    logits, lo = completer.decode(case, params)
    phases = {"prepare": case.timings["prepare"], "fit": fit_s, "decode": time.perf_counter() - t0}
    report = {"slices": {str(a): v for a, v in case.slices.items()}, "fit_steps": history,
              "phases": phases, "region": {"lo": case.lo.tolist(), "hi": case.hi.tolist()}}
    return _FittedLabel(case, params, logits, lo, report)
