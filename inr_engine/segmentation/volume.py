"""What MetaSeg and NISF share: a volume in the network frame, label losses, label decoding,
and labelled training volumes held in memory for fast task sampling.

Frame: ``u = (ras - centre) / scale_mm`` with the centre of the volume's grid, so a crop of any
size, spacing or orientation maps to the same physical scale the prior was trained at.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np
import torch
import torch.nn.functional as F

from ..decode import ADAPTIVE_BAND, MIN_ADAPTIVE_POINTS, decode_chunk
from ..frames import NormalizedFrame, grid_ijk, ijk_to_ras
from ..inputs import SegmentationError, check_image
from ..intensity import IntensityReference
from ..priors import Prior

if TYPE_CHECKING:  # not at run time: the file readers are not needed to segment arrays
    from ..datasets import LabelledImage

def default_class_names(num_classes: int) -> list[str]:
    """``background``, ``class 1``, ...: the names of classes nobody named."""
    return ["background"] + [f"class {c}" for c in range(1, num_classes)]


@dataclass
class SegVolume:
    """An image prepared for fitting: every voxel's network coordinates and normalised intensity."""

    coords: torch.Tensor  # (N, 3), voxels in C order
    intensity: torch.Tensor  # (N,)
    shape: tuple[int, int, int]
    affine: np.ndarray
    warnings: list[str] = field(default_factory=list)


class Segmenter(Protocol):
    """What MetaSeg and NISF segmenters offer: prepare an image, fit it step by step, decode labels."""

    default_steps: int
    cfg: Any  # the method's configuration (has ``num_classes``)
    prior: Prior | None
    device: torch.device

    def prepare(self, image: np.ndarray, affine: np.ndarray) -> SegVolume: ...
    def fit(self, volume: SegVolume, steps: int | None = None, seed: int = 0) -> Iterator: ...
    def labels(self, volume: SegVolume, params=None) -> np.ndarray: ...


def volume_frame(shape, affine: np.ndarray, scale_mm: float) -> NormalizedFrame:
    centre = ijk_to_ras((np.asarray(shape, np.float64) - 1) / 2, affine)
    return NormalizedFrame(tuple(float(c) for c in centre), float(scale_mm))


def prepare_volume(image: np.ndarray, affine: np.ndarray, scale_mm: float,
                   reference: IntensityReference | None = None) -> SegVolume:
    """Check (:func:`check_image`) and normalise ``image``; raises :class:`SegmentationError` for unusable input."""
    image = np.asarray(image)
    normalized, affine = check_image(image, affine)
    frame = volume_frame(image.shape, affine, scale_mm)
    coords = frame.ijk_to_network(grid_ijk(image.shape), affine).reshape(-1, 3)
    warnings = reference.warnings(normalized) if reference is not None else []
    return SegVolume(torch.from_numpy(coords), torch.from_numpy(normalized.reshape(-1)), tuple(image.shape), affine,
                     warnings)


def segmentation_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy + soft Dice over the foreground classes; one value per leading index.

    ``logits`` (..., P, C), ``labels`` (..., P) integer classes.
    """
    ce = F.cross_entropy(logits.movedim(-1, 1) if logits.dim() > 2 else logits, labels, reduction="none").mean(-1)
    prob = logits.softmax(-1)[..., 1:]
    onehot = F.one_hot(labels, logits.shape[-1])[..., 1:].to(prob.dtype)
    inter = (prob * onehot).sum(-2)
    dice = 1 - (2 * inter + 1) / (prob.sum(-2) + onehot.sum(-2) + 1)
    return ce + dice.mean(-1)


def predict_labels(logit_fn: Callable[[torch.Tensor], torch.Tensor], volume: SegVolume, width: int,
                   chunk: int | None = None, adaptive: bool = True, margin: float = ADAPTIVE_BAND) -> np.ndarray:
    """Arg-max labels of every voxel, evaluated in chunks of ``chunk`` points (default: sized so that a
    chunk's activations, ``width`` features wide, stay in the CPU's cache).

    ``adaptive`` (volumes of ``MIN_ADAPTIVE_POINTS`` voxels or more): the network runs on every second
    voxel along each axis and the class logits are interpolated trilinearly in between, where that is
    safe: a voxel is evaluated exactly when its two largest interpolated logits lie within ``margin``
    of each other, or when it is within a voxel of a cell of eight evaluated voxels that do not all
    agree, with that margin, on one class (:func:`~inr_engine.decode.decode_box` does the like for
    occupancy). On the shipped hippocampus volumes, at their size and resampled to 128^3, the labels
    equal those of evaluating every voxel, for MetaSeg and NISF, in a third to two fifths of the time.
    """
    chunk = chunk or decode_chunk(width)
    shape = tuple(volume.shape)
    with torch.inference_mode():
        if not adaptive or np.prod(shape) < MIN_ADAPTIVE_POINTS or min(shape) < 2:
            return _argmax(logit_fn, volume.coords, chunk).numpy().reshape(shape)
        coarse = _every_second_voxel(volume.coords, shape)
        logits = _evaluate(logit_fn, coarse.reshape(-1, 3), chunk).reshape(*coarse.shape[:3], -1)
        if logits.shape[-1] < 2:
            return np.zeros(shape, np.uint8)
        fine = F.interpolate(logits.permute(3, 0, 1, 2)[None], size=tuple(2 * n - 1 for n in coarse.shape[:3]),
                             mode="trilinear", align_corners=True)[0, :, :shape[0], :shape[1], :shape[2]]
        top = fine.topk(2, dim=0).values
        labels = fine.argmax(0).to(torch.uint8).reshape(-1)
        uncertain = ((top[0] - top[1] < margin) | _near_unsettled_cells(logits, margin, shape)).reshape(-1)
        uncertain = uncertain.nonzero()[:, 0]
        labels[uncertain] = _argmax(logit_fn, volume.coords[uncertain], chunk)
    return labels.numpy().reshape(shape)


def _near_unsettled_cells(logits: torch.Tensor, margin: float, shape: tuple[int, int, int]) -> torch.Tensor:
    """(shape) True within a voxel of a cell of 2x2x2 evaluated voxels (``logits``, (m0, m1, m2, C), at
    every second voxel) that do not all have the same class by at least ``margin``."""
    top = logits.topk(2, dim=-1).values
    label = logits.argmax(-1).float()[None, None]
    confident = (top[..., 0] - top[..., 1] >= margin).float()[None, None]
    agree = F.max_pool3d(label, 2, 1) == -F.max_pool3d(-label, 2, 1)
    unsettled = (~(agree & (-F.max_pool3d(-confident, 2, 1) > 0))).float()  # (1, 1, m0 - 1, m1 - 1, m2 - 1)
    for dim in (2, 3, 4):  # each cell onto the voxels it starts at (the last voxel: the last cell's)
        unsettled = unsettled.repeat_interleave(2, dim)
    extra = [n - u for n, u in zip(shape, unsettled.shape[2:])]
    unsettled = F.pad(unsettled, [0, extra[2], 0, extra[1], 0, extra[0]], mode="replicate")
    return F.max_pool3d(unsettled, 3, 1, 1)[0, 0] > 0  # and a voxel further on every side


def _evaluate(logit_fn: Callable[[torch.Tensor], torch.Tensor], coords: torch.Tensor, chunk: int) -> torch.Tensor:
    return torch.cat([logit_fn(coords[start:start + chunk]).float().cpu() for start in range(0, len(coords), chunk)])


def _argmax(logit_fn: Callable[[torch.Tensor], torch.Tensor], coords: torch.Tensor, chunk: int) -> torch.Tensor:
    out = torch.empty(len(coords), dtype=torch.uint8)
    for start in range(0, len(coords), chunk):
        out[start:start + chunk] = logit_fn(coords[start:start + chunk]).argmax(-1).cpu()
    return out


def _every_second_voxel(coords: torch.Tensor, shape: tuple[int, int, int]) -> torch.Tensor:
    """Network coordinates (m0, m1, m2, 3) of voxels ``2 i`` for ``i < n // 2 + 1`` along each axis
    (one past the last voxel where ``n`` is even: the coordinates are affine in the voxel index)."""
    grid = coords.reshape(*shape, 3).double()
    origin = grid[0, 0, 0]
    steps = [grid[tuple(1 if a == b else 0 for b in range(3))] - origin for a in range(3)]
    index = [torch.arange(n // 2 + 1, dtype=torch.float64) * 2 for n in shape]
    out = origin + index[0][:, None, None, None] * steps[0] + index[1][None, :, None, None] * steps[1]
    return (out + index[2][None, None, :, None] * steps[2]).float()


@dataclass
class TrainingVolumes:
    """Labelled training images prepared once: coordinates, intensities and labels per subject."""

    volumes: list[SegVolume]
    labels: list[torch.Tensor]
    names: list[str]
    num_classes: int

    @classmethod
    def from_images(cls, images: list[LabelledImage], scale_mm: float, num_classes: int | None = None):
        volumes = [prepare_volume(im.image, im.affine, scale_mm) for im in images]
        labels = [torch.from_numpy(im.labels.reshape(-1).astype(np.int64)) for im in images]
        found = max(int(lab.max()) for lab in labels) + 1
        if num_classes is not None and found > num_classes:
            raise SegmentationError(f"training labels go up to {found - 1}, but the prior has {num_classes} classes")
        return cls(volumes, labels, [im.name for im in images], num_classes or found)

    def reference(self) -> IntensityReference:
        return IntensityReference.from_images([v.intensity.numpy() for v in self.volumes])

    def meta_batch(self, rng: np.random.Generator, tasks: int, context_points: int, target_points: int):
        """Fit-pixels-get-labels tasks of ``tasks`` random subjects: context (coords, intensity) to
        adapt on, target (coords, [intensity, label]) to score, in ``MetaLearner`` form."""
        ctx_x, ctx_y, tgt_x, tgt_y = [], [], [], []
        for index in rng.choice(len(self.volumes), tasks, replace=len(self.volumes) < tasks):
            coords, intensity, _ = self.sample(rng, int(index), context_points)
            ctx_x.append(coords)
            ctx_y.append(intensity[:, None])
            coords, intensity, labels = self.sample(rng, int(index), target_points)
            tgt_x.append(coords)
            tgt_y.append(torch.stack([intensity, labels.float()], -1))
        return ((torch.stack(ctx_x),), torch.stack(ctx_y)), ((torch.stack(tgt_x),), torch.stack(tgt_y))

    def sample(self, rng: np.random.Generator, index: int, points: int) -> tuple[torch.Tensor, ...]:
        """``points`` random voxels of subject ``index``: (coords, intensity, labels)."""
        vol = self.volumes[index]
        pick = torch.from_numpy(rng.integers(0, len(vol.coords), points))
        return vol.coords[pick], vol.intensity[pick], self.labels[index][pick]
