"""Segmenting an image with MetaSeg or NISF: per-step progress, label map and report.

The layer the CLI and the Slicer logic share: an array and its affine in, a label map on the
same grid and a report out; nothing is written to disk here.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch

from ..fit import FitStep
from ..priors import DEFAULT_PRIORS, SEGMENTATION_TASKS, PriorError, load_prior
from . import metaseg, nisf, refinement
from .volume import Segmenter, SegVolume, default_class_names

StepCallback = Callable[[FitStep, SegVolume], None]
PREVIEW_POINTS = 1 << 20  # about 0.7 s of MetaSeg decoding (1.4 s of NISF's) on 2 CPU threads: 100^3 at full resolution


@dataclass
class Segmentation:
    labels: np.ndarray  # uint8 class indices on the input grid
    report: dict = field(default_factory=dict)


def load_segmenter(method: str, prior: str | None = None, device: torch.device | str = "cpu",
                   procedure: str = "fast", fit_weights: bool = False) -> Segmenter:
    """The segmenter of ``method`` from a bundled prior name or a prior file."""
    if method not in SEGMENTATION_TASKS:
        raise PriorError(f"unknown method {method!r}; choose from {sorted(SEGMENTATION_TASKS)}")
    loaded = load_prior(prior or DEFAULT_PRIORS[method], task=SEGMENTATION_TASKS[method])
    if method == "metaseg":
        return metaseg.MetaSegSegmenter.from_prior(loaded, device)
    return nisf.NISFSegmenter.from_prior(loaded, procedure, fit_weights, device)


def segment_image(image: np.ndarray, affine: np.ndarray, segmenter: Segmenter, steps: int | None = None,
                  on_step: StepCallback | None = None, refine: bool = False) -> Segmentation:
    """Fit ``segmenter`` to the image's intensities for ``steps`` steps and decode the labels;
    ``refine`` re-renders the most uncertain voxels with the prior's boundary refiner."""
    refiner = refinement.load_refiner(segmenter) if refine else None
    t0 = time.perf_counter()
    volume = segmenter.prepare(image, affine)
    prepare_s = time.perf_counter() - t0
    result = segment_volume(volume, segmenter, steps, on_step, refiner)
    phases = result.report["phases"]
    result.report["phases"] = {"prepare": prepare_s, **phases, "total": phases["total"] + prepare_s}
    return result


def segment_volume(volume: SegVolume, segmenter: Segmenter, steps: int | None = None,
                   on_step: StepCallback | None = None, refiner=None) -> Segmentation:
    """:func:`segment_image` on a volume already checked and prepared by ``segmenter.prepare``;
    ``refiner`` (from :func:`refinement.load_refiner`) refines the boundaries."""
    steps = segmenter.default_steps if steps is None else steps
    history, params = [], None
    t0 = time.perf_counter()
    for st in segmenter.fit(volume, steps):
        history.append({"step": st.step, "loss": st.loss, "seconds": st.seconds})
        params = st.params
        if on_step is not None:
            on_step(st, volume)
    phases = {"fit": time.perf_counter() - t0}
    t0 = time.perf_counter()
    if refiner is None:
        labels = segmenter.labels(volume, params)
        phases["decode"] = time.perf_counter() - t0
    else:  # decodes every voxel's logits itself, then re-renders the uncertain ones
        labels = refinement.refined_labels(segmenter, refiner, volume, params)
        phases["refine"] = time.perf_counter() - t0
    phases["total"] = sum(phases.values())
    counts = np.bincount(labels.ravel(), minlength=segmenter.cfg.num_classes)
    report = {"steps": steps, "fit_steps": history, "phases": phases, "warnings": volume.warnings,
              "classes": class_names(segmenter), "voxels": {str(c): int(n) for c, n in enumerate(counts) if c},
              "device": str(segmenter.device), "torch_threads": torch.get_num_threads()}
    return Segmentation(labels, report)


def preview_labels(segmenter: Segmenter, volume: SegVolume, params=None,
                   max_points: int = PREVIEW_POINTS) -> np.ndarray:
    """A quick look at the labels during fitting: decoded at the centre of every ``stride``-voxel
    block (the smallest stride that decodes at most ``max_points`` voxels) and repeated over it.

    Equal to ``segmenter.labels`` when the volume has at most ``max_points`` voxels.
    """
    shape = volume.shape
    stride = 1
    while math.prod(math.ceil(n / stride) for n in shape) > max_points:
        stride += 1
    if stride == 1:
        return segmenter.labels(volume, params)
    centre = stride // 2
    grid = volume.coords.reshape(*shape, 3)
    picked = grid[centre::stride, centre::stride, centre::stride]
    coarse = SegVolume(picked.reshape(-1, 3), volume.intensity[:0], tuple(picked.shape[:3]), volume.affine)
    small = segmenter.labels(coarse, params)
    full = small.repeat(stride, 0).repeat(stride, 1).repeat(stride, 2)[:shape[0], :shape[1], :shape[2]]
    return np.pad(full, [(0, n - m) for n, m in zip(shape, full.shape)], mode="edge")


def class_names(segmenter: Segmenter) -> list[str]:
    """Class names from the prior's metadata (index 0 is the background), or ``class N``."""
    names = segmenter.prior.metadata.get("classes") if segmenter.prior is not None else None
    if not names or len(names) != segmenter.cfg.num_classes:
        names = default_class_names(segmenter.cfg.num_classes)
    return list(names)
