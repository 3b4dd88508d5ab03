"""Training and evaluation data: binary shapes, and labelled images, with their IJK->RAS affines.

Shapes come from any directory of NIfTI/NRRD label maps (each label value a separate shape,
cropped to it). Labelled images (for segmentation) come from a folder of images and label maps
of the same file names (``images/`` and ``labels/``, or ``imagesTr/`` and ``labelsTr/``).

Training folders are checked as ``complete`` and ``segment`` check their inputs, before any
training work: a file that is not a usable label map or image raises :class:`TrainingDataError`
naming it, and :func:`check_split` refuses splits that leave too little to train on.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .inputs import SegmentationError, SliceError, check_image, input_labels, looks_like_labels
from .io import VolumeError, read_volume


class TrainingDataError(VolumeError):
    """Training data that cannot be used: a bad file (named in the message), an empty or missing
    folder, or too few subjects for the split. A :class:`VolumeError`, so the CLI reports it as a
    user error."""


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


def label_directory_shapes(directory: str | Path, margin_mm: float = 12.0) -> list[Shape]:
    """Every label of every NIfTI/NRRD label map under ``directory``, cropped to it.

    Each file is checked as ``complete`` checks its input (:func:`check_label_map`); files
    without any label are skipped. Raises :class:`TrainingDataError` naming the first bad file,
    or when the folder is missing or has no labels at all.
    """
    root = _existing_folder(directory)
    files = sorted(p for p in root.rglob("*") if p.is_file() and not p.name.startswith(".")
                   and p.name.lower().endswith(VOLUME_SUFFIXES))
    if not files:
        raise TrainingDataError(f"{directory}: no label maps found (.nii, .nii.gz, .nrrd or .nhdr files); "
                                "give a folder of label maps")
    shapes = []
    for file in files:
        vol = read_volume(file)
        if not np.any(vol.array):
            continue
        check_label_map(vol.array, file)
        spc = np.linalg.norm(vol.affine[:3, :3], axis=0)
        for label in np.unique(vol.array):
            if label == 0:
                continue
            mask = vol.array == label
            cropped, affine = crop_to_object(mask, vol.affine, np.ceil(margin_mm / spc).astype(int))
            shapes.append(Shape(np.ascontiguousarray(cropped), affine, f"{file.name}:{int(label)}"))
    if not shapes:
        raise TrainingDataError(f"{directory}: none of the {len(files)} label maps has a label (all are 0); "
                                "give label maps of the structures to train on")
    return shapes


def check_label_map(array: np.ndarray, file: str | Path, allow_empty: bool = False) -> list[int]:
    """The foreground labels of a training label map, checked as ``complete`` checks its input
    (NaN, fractional or negative values, too many labels, no label) and that it is not an image
    (many integer values that are not piecewise constant, e.g. a uint8 MRI); raises
    :class:`TrainingDataError` naming ``file``."""
    array = np.asarray(array)
    if allow_empty and array.size and not np.any(array):
        return []
    try:
        labels = input_labels(array)
    except SliceError as exc:
        raise TrainingDataError(f"{file}: not a usable label map: {exc}") from exc
    if not looks_like_labels(array):
        raise TrainingDataError(f"{file}: {len(labels)} different values that do not form piecewise-constant "
                                "regions: this looks like an image, not a label map; give label maps (one integer "
                                "label per structure)")
    return labels


def check_split(available: int, validation: int, held_out: int = 0, minimum_train: int = 1,
                what: str = "subjects", *, minimum_validation: int = 0, val_option: str | None = "--val",
                holdout_option: str | None = "--holdout") -> int:
    """Refuse a split of ``available`` subjects (or shapes) into ``validation``, ``held_out`` and
    at least ``minimum_train`` to train on; returns the number left to train on.

    ``what`` names them and where they are, e.g. ``"subjects in data/brains"``; the options
    (``None``: not a command-line option) are named in the message. Raises
    :class:`TrainingDataError` with a one-line message such as "3 subjects in DIR: 1 for
    validation (--val) and 2 held out (--holdout) leave none to train on; ...".
    """
    noun = what.split(" ", 1)[0]

    def named(option, value):
        return f"{option} {value}" if option else f"{value} {noun}"

    if validation < max(minimum_validation, 0):
        raise TrainingDataError(f"{named(val_option, validation)}: at least {minimum_validation} must be set aside "
                                "for validation" if minimum_validation > 0 else
                                f"{named(val_option, validation)}: must not be negative")
    if held_out < 0:
        raise TrainingDataError(f"{named(holdout_option, held_out)}: must not be negative")
    left = available - validation - held_out
    if left >= minimum_train:
        return left
    counted = f"{available} {_singular(what) if available == 1 else what}"
    need = f" (at least {minimum_train} needed)" if minimum_train > 1 else ""
    parts = [f"{n} {role}" + (f" ({option})" if option else "")
             for n, role, option in ((validation, "for validation", val_option), (held_out, "held out", holdout_option))
             if n]
    if not parts:
        raise TrainingDataError(f"{counted}: too few to train on{need}; add {noun}")
    verb = "leave" if validation + held_out > 1 else "leaves"
    options = [option for n, option in ((validation, val_option), (held_out, holdout_option)) if n and option]
    lower = f", or lower {' / '.join(options)}" if options else ""
    raise TrainingDataError(f"{counted}: {' and '.join(parts)} {verb} {max(left, 0) or 'none'} to train on{need}; "
                            f"add {noun}{lower}")


def _singular(what: str) -> str:
    noun, _, rest = what.partition(" ")
    noun = noun[:-1] if noun.endswith("s") else noun
    return f"{noun} {rest}" if rest else noun


def _existing_folder(directory: str | Path) -> Path:
    path = Path(directory)
    if not path.exists():
        raise TrainingDataError(f"{directory}: no such folder")
    if not path.is_dir():
        raise TrainingDataError(f"{directory}: not a folder; give the folder that holds the training files")
    return path


def seeded_split(names: list[str], n_val: int, seed: int) -> tuple[list[str], list[str]]:
    """(training names, validation names): ``n_val`` names drawn with ``seed``, both in input order."""
    if not 0 < n_val < len(names):
        raise TrainingDataError(f"cannot set aside {n_val} of {len(names)} subjects: between 1 and {len(names) - 1} "
                                "can be, so that at least one is left to train on")
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
    ``labels/``, or the Decathlon's ``imagesTr/`` and ``labelsTr/``); raises
    :class:`TrainingDataError` when there is none."""
    images, labels = _image_folders(root)
    names = sorted(p.name for p in images.iterdir()
                   if p.name.lower().endswith(VOLUME_SUFFIXES) and not p.name.startswith(".")
                   and (labels / p.name).is_file())
    if not names:
        raise TrainingDataError(f"{root}: no image in {images.name}/ has a label map of the same name in "
                                f"{labels.name}/; give each image its label map under the same file name")
    return names


def labelled_images(root: str | Path, names: list[str] | None = None) -> list[LabelledImage]:
    """Image/label pairs of ``root`` (all, or ``names``), checked as ``segment`` and ``complete``
    check their inputs: the image an image (:func:`check_training_image`), the label map a label map
    (:func:`check_label_map`; a map without labels is allowed), both on the same grid. Raises
    :class:`TrainingDataError` naming the file."""
    images, labels = _image_folders(root)
    names = labelled_image_names(root) if names is None else names
    if not names:
        raise TrainingDataError(f"{root}: no image with a label map of the same name")
    out = []
    for name in names:
        image_file, label_file = images / name, labels / name
        image, label = read_volume(image_file), read_volume(label_file)
        check_training_image(image.array, image.affine, image_file)
        check_label_map(label.array, label_file, allow_empty=True)
        if image.shape != label.shape:
            raise TrainingDataError(f"{label_file}: shape {label.shape} differs from its image's {image.shape}; "
                                    "resample the label map onto the image's grid")
        if not np.allclose(image.affine, label.affine, atol=1e-4):
            raise TrainingDataError(f"{label_file}: its voxels are not where its image's are (the geometry "
                                    "differs); resample the label map onto the image's grid")
        out.append(LabelledImage(image.array, np.rint(label.array).astype(np.int64), image.affine,
                                 re.sub(r"\.(nii\.gz|nii|nrrd|nhdr)$", "", name, flags=re.IGNORECASE)))
    return out


def check_training_image(array: np.ndarray, affine: np.ndarray, file: str | Path) -> None:
    """Refuse a training image that ``segment`` would refuse (its own check,
    :func:`~inr_engine.inputs.check_image`); raises :class:`TrainingDataError` naming ``file``."""
    try:
        check_image(array, affine)
    except SegmentationError as exc:
        raise TrainingDataError(f"{file}: not a usable image: {exc}") from exc


def _image_folders(root: str | Path) -> tuple[Path, Path]:
    root = _existing_folder(root)
    for image_dir, label_dir in IMAGE_FOLDERS:
        if (root / image_dir).is_dir() and (root / label_dir).is_dir():
            return root / image_dir, root / label_dir
    raise TrainingDataError(f"{root}: expected sub-folders images/ and labels/ (or imagesTr/ and labelsTr/) "
                            "holding images and label maps of the same file names")
