"""Training and evaluation data: binary shapes, and labelled images, with their IJK->RAS affines.

Shapes come from AdrenalMNIST3D (``.npz``, 64^3 at 1 mm), the DeepMind head-and-neck organ masks
(``<rater>/<scan>/segmentations/<Organ>.nrrd``, cropped to each organ), and any directory of
NIfTI/NRRD label maps (each label value a separate shape). Labelled images (for segmentation)
come from a folder in the Medical Segmentation Decathlon layout, such as MSD Task04 Hippocampus.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .io import VolumeError, read_volume


@dataclass
class Shape:
    mask: np.ndarray  # bool (i, j, k)
    affine: np.ndarray  # IJK -> RAS of this (possibly cropped) grid
    name: str


def crop_to_object(mask: np.ndarray, affine: np.ndarray, margin_vox) -> tuple[np.ndarray, np.ndarray]:
    """Crop to the mask's bounding box plus ``margin_vox`` voxels; the affine follows the crop."""
    idx = np.argwhere(mask)
    lo = np.maximum(idx.min(0) - margin_vox, 0)
    hi = np.minimum(idx.max(0) + 1 + margin_vox, mask.shape)
    shifted = affine.copy()
    shifted[:3, 3] = affine[:3, :3] @ lo + affine[:3, 3]
    return mask[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], shifted


def adrenal_shapes(path: str | Path, split: str) -> list[Shape]:
    """AdrenalMNIST3D masks of one split (``train`` or ``val``), at 1 mm with identity orientation."""
    data = np.load(path)
    masks = data[f"{split}_images"] > 0
    return [Shape(m, np.eye(4), f"adrenal-{split}-{n:04d}") for n, m in enumerate(masks) if m.any()]


def canonical_organ(name: str) -> str:
    """``Parotid_Lt`` and ``Parotid-Lt`` are the same organ."""
    return re.sub(r"[_ ]", "-", name)


def hn_scans(root: str | Path) -> list[str]:
    return sorted(p.name for p in (Path(root) / "oncologist").iterdir() if p.is_dir())


def hn_shapes(root: str | Path, scans: list[str], raters=("oncologist", "radiographer"), organs=None,
              margin_mm: float = 12.0, cache_dir: str | Path | None = None) -> list[Shape]:
    """Head-and-neck organ masks of ``scans``, cropped to each organ plus ``margin_mm``.

    Reading the 512x512xN masks is slow; ``cache_dir`` keeps the cropped masks as ``.npz``.
    """
    shapes = []
    for scan in scans:
        for rater in raters:
            for organ, (mask, affine) in _hn_scan(root, rater, scan, margin_mm, cache_dir).items():
                if organs is None or organ in organs:
                    shapes.append(Shape(mask, affine, f"{scan}/{rater}/{organ}"))
    return shapes


def _hn_scan(root, rater, scan, margin_mm, cache_dir) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    cache = Path(cache_dir) / f"hn-{rater}-{scan}-m{margin_mm:g}.npz" if cache_dir else None
    if cache is not None and cache.is_file():
        data = np.load(cache)
        return {k[5:]: (data[k], data["affine-" + k[5:]]) for k in data.files if k.startswith("mask-")}
    organs = {}
    for file in sorted((Path(root) / rater / scan / "segmentations").glob("*.nrrd")):
        vol = read_volume(file)
        mask = vol.array > 0
        if mask.any():
            spc = np.linalg.norm(vol.affine[:3, :3], axis=0)
            cropped, affine = crop_to_object(mask, vol.affine, np.ceil(margin_mm / spc).astype(int))
            organs[canonical_organ(file.stem)] = (np.ascontiguousarray(cropped), affine)
    if cache is not None:
        cache.parent.mkdir(parents=True, exist_ok=True)
        arrays = {f"mask-{k}": m for k, (m, _) in organs.items()}
        arrays.update({f"affine-{k}": a for k, (_, a) in organs.items()})
        np.savez_compressed(cache, **arrays)
    return organs


def label_directory_shapes(directory: str | Path, margin_mm: float = 12.0) -> list[Shape]:
    """Every label of every NIfTI/NRRD label map under ``directory``, cropped to it."""
    shapes = []
    files = sorted(p for p in Path(directory).rglob("*") if p.name.lower().endswith((".nii", ".nii.gz", ".nrrd")))
    if not files:
        raise VolumeError(f"{directory}: no .nii, .nii.gz or .nrrd label maps found")
    for file in files:
        vol = read_volume(file)
        spc = np.linalg.norm(vol.affine[:3, :3], axis=0)
        for label in np.unique(vol.array):
            if label == 0:
                continue
            mask = vol.array == label
            cropped, affine = crop_to_object(mask, vol.affine, np.ceil(margin_mm / spc).astype(int))
            shapes.append(Shape(np.ascontiguousarray(cropped), affine, f"{file.name}:{int(label)}"))
    return shapes


def hn_split(root: str | Path, n_val: int = 5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded scan-level split of the head-and-neck set: (training scans, validation scans).

    Both raters' masks of a scan fall on the same side, so validation scans are unseen.
    """
    return seeded_split(hn_scans(root), n_val, seed)


def seeded_split(names: list[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """(training names, validation names): ``n_val`` names drawn with ``seed``, both in input order."""
    if not 0 < n_val < len(names):
        raise ValueError(f"cannot hold out {n_val} of {len(names)} items for validation")
    val = sorted(np.random.default_rng(seed).choice(names, n_val, replace=False).tolist())
    return [s for s in names if s not in val], val


@dataclass
class LabelledImage:
    image: np.ndarray  # raw intensities (i, j, k)
    labels: np.ndarray  # integer label map on the same grid
    affine: np.ndarray
    name: str


IMAGE_FOLDERS = (("images", "labels"), ("imagesTr", "labelsTr"))
VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")


def labelled_image_names(root: str | Path) -> list[str]:
    """File names present in both the image and the label folder of ``root`` (``images/`` and
    ``labels/``, or the Decathlon's ``imagesTr/`` and ``labelsTr/``)."""
    images, labels = _image_folders(root)
    return sorted(p.name for p in images.iterdir()
                  if p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")
                  and (labels / p.name).is_file())


def labelled_images(root: str | Path, names: list[str] | None = None) -> list[LabelledImage]:
    """Image/label pairs of ``root`` (all, or ``names``); each pair must share its grid."""
    images, labels = _image_folders(root)
    names = labelled_image_names(root) if names is None else names
    if not names:
        raise VolumeError(f"{root}: no image with a label map of the same name")
    out = []
    for name in names:
        image, label = read_volume(images / name), read_volume(labels / name)
        if image.shape != label.shape or not np.allclose(image.affine, label.affine, atol=1e-4):
            raise VolumeError(f"{name}: the image and its label map are on different grids")
        out.append(LabelledImage(image.array, np.rint(label.array).astype(np.int64), image.affine,
                                 re.sub(r"\.(nii\.gz|nii|nrrd|nhdr)$", "", name)))
    return out


def _image_folders(root: str | Path) -> tuple[Path, Path]:
    for image_dir, label_dir in IMAGE_FOLDERS:
        if (Path(root) / image_dir).is_dir() and (Path(root) / label_dir).is_dir():
            return Path(root) / image_dir, Path(root) / label_dir
    raise VolumeError(f"{root}: expected sub-folders images/ and labels/ (or imagesTr/ and labelsTr/)")
