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

from ..decode import chunk_size
from ..frames import GeometryError, NormalizedFrame, grid_ijk, ijk_to_ras, validate_affine
from ..intensity import IntensityError, IntensityReference, normalize_intensity
from ..priors import Prior

if TYPE_CHECKING:  # not at run time: the file readers are not needed to segment arrays
    from ..datasets import LabelledImage

MAX_SEGMENT_VOXELS = 256**3


def default_class_names(num_classes: int) -> list[str]:
    """``background``, ``class 1``, ...: the names of classes nobody named."""
    return ["background"] + [f"class {c}" for c in range(1, num_classes)]


class SegmentationError(ValueError):
    """An input that cannot be segmented (not a 3D image, NaN, constant, a label map, too large)."""


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


def check_image(image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Check an image as segmenting needs it (3D, not too large, a valid affine, finite, not
    constant, not a label map); returns (normalised intensities, affine as float64). The one
    check of images: :func:`prepare_volume` and the training data use it.
    Raises :class:`SegmentationError` for unusable input."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise SegmentationError(f"expected a 3D image, got {image.ndim}D data of shape {image.shape}")
    if image.size > MAX_SEGMENT_VOXELS:
        raise SegmentationError(f"the image has {image.size} voxels; crop it to the structure (at most "
                                f"{MAX_SEGMENT_VOXELS} voxels)")
    if min(image.shape) < 1:
        raise SegmentationError(f"the image is empty (shape {image.shape})")
    try:
        affine = validate_affine(affine)
        normalized = normalize_intensity(image)
    except (GeometryError, IntensityError) as exc:
        raise SegmentationError(str(exc)) from exc
    if _looks_like_labels(image):
        values = np.unique(image)
        shown = (f"the values {values.tolist()}" if len(values) <= 16 else
                 f"{len(values)} integer values ({values[0]:g} to {values[-1]:g}) in piecewise-constant regions")
        raise SegmentationError(f"the input holds only {shown}: that is a label map, not an image")
    return normalized, affine


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


LABEL_MAP_FEW_VALUES = 16  # integer data with at most this many values is a label map
LABEL_MAP_EQUAL_NEIGHBOURS = 0.6  # ...and so is integer data whose neighbours mostly agree (``equal_neighbours``)
LABEL_MAP_CHECK_VOXELS = 2_000_000  # voxels compared per axis, at most (larger volumes: every n-th line)


def _looks_like_labels(image: np.ndarray) -> bool:
    """Whether ``image`` is a label map: integer-valued and either with at most 16 values, or
    piecewise constant (:func:`equal_neighbours` at least 0.6, where images score below 0.1).

    Measured: real images 0.001-0.083 (200 brain MRI crops, float32 and uint8; int16 MR), rounded
    after smoothing up to 3 voxels 0.25, nearest-neighbour upsampled x2 0.53; label maps 0.72
    (small labels tiled to 128 labels) to 0.95 (21 CT organs), 263-label Voronoi maps of
    48^3-160^3 voxels 0.76-0.92.
    """
    image = np.asarray(image)
    if image.ndim != 3 or image.size == 0:
        return False
    if image.dtype == bool:
        return True
    if not np.issubdtype(image.dtype, np.integer):
        if not np.issubdtype(image.dtype, np.floating):
            return False
        sample = _strided_sample(image)  # most images fail here, quickly
        if not (np.all(np.isfinite(sample)) and np.array_equal(sample, np.round(sample))):
            return False
        if not (np.all(np.isfinite(image)) and np.array_equal(image, np.round(image))):
            return False
    if len(np.unique(_strided_sample(image))) <= LABEL_MAP_FEW_VALUES and len(np.unique(image)) <= LABEL_MAP_FEW_VALUES:
        return True
    return equal_neighbours(image) >= LABEL_MAP_EQUAL_NEIGHBOURS


def equal_neighbours(array: np.ndarray) -> float:
    """How piecewise constant ``array`` is: the median over the three axes of the fraction of
    neighbouring voxel pairs with equal values, among the pairs that are not both the most common
    value (the background). About 1 for label maps, near 0 for images (noise).

    Large volumes are measured on every n-th line along each axis (sub-second at 256^3).
    """
    array = np.asarray(array)
    values, counts = np.unique(_strided_sample(array), return_counts=True)
    background = values[np.argmax(counts)]
    fractions = []
    for axis in range(3):
        lines = np.moveaxis(array, axis, 0)
        if lines.shape[0] < 2:
            continue
        step = max(1, int(np.ceil(np.sqrt(lines.size / LABEL_MAP_CHECK_VOXELS))))
        lines = lines[:, ::step, ::step]
        a, b = lines[:-1], lines[1:]
        equal = a == b
        counted = ~(equal & (a == background))
        n = int(np.count_nonzero(counted))
        if n:
            fractions.append(np.count_nonzero(equal & counted) / n)
    return float(np.median(fractions)) if fractions else 1.0


def _strided_sample(array: np.ndarray, voxels: int = LABEL_MAP_CHECK_VOXELS) -> np.ndarray:
    """Every n-th voxel along each axis: at most about ``voxels`` voxels."""
    step = max(1, int(np.ceil((array.size / voxels) ** (1 / 3))))
    return array[::step, ::step, ::step]


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


def predict_labels(logit_fn: Callable[[torch.Tensor], torch.Tensor], volume: SegVolume, width: int) -> np.ndarray:
    """Arg-max labels of every voxel, evaluated in chunks within the decoder's memory budget."""
    chunk = chunk_size(bytes_per_point=4 * 8 * width)
    out = np.empty(len(volume.coords), np.uint8)
    with torch.no_grad():
        for start in range(0, len(volume.coords), chunk):
            out[start:start + chunk] = logit_fn(volume.coords[start:start + chunk]).argmax(-1).cpu().numpy()
    return out.reshape(volume.shape)


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
