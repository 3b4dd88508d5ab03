"""The benchmark data sets of the shared data folder (``--data-root``; see its README), read as the engine's
:class:`~inr_engine.datasets.Shape` and :class:`~inr_engine.datasets.LabelledImage`.

* AdrenalMNIST3D (``adrenalmnist3d/adrenalmnist3d_64.npz``: 64^3 binary masks at 1 mm);
* the DeepMind head-and-neck organ masks (``deepmind_hn_oar/<rater>/<scan>/segmentations/<Organ>.nrrd``,
  two raters, cropped to each organ);
* MSD Task04 Hippocampus (``msd_hippocampus/{images,labels}``), read with the engine's
  :func:`~inr_engine.datasets.labelled_images` like any folder of labelled images.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import numpy as np

from inr_engine.datasets import Shape, TrainingDataError, crop_to_object, seeded_split
from inr_engine.io import read_volume

# Folders (and file) of the data sets under the data root.
ADRENAL_NPZ = "adrenalmnist3d/adrenalmnist3d_64.npz"
HN_OAR = "deepmind_hn_oar"
HIPPOCAMPUS = "msd_hippocampus"
HIPPOCAMPUS_CLASSES = ("background", "anterior", "posterior")  # the labels 0, 1, 2 of its label maps

# Head and neck: the organs scored on the validation scans, in training and in the benchmarks.
HN_VALIDATION_ORGANS = {"Parotid-Lt", "Parotid-Rt", "Mandible", "Brainstem", "Spinal-Cord"}


def adrenal_shapes(path: str | Path, split: str) -> list[Shape]:
    """AdrenalMNIST3D masks of one split (``train`` or ``val``), at 1 mm with identity orientation."""
    key = f"{split}_images"
    try:
        with np.load(path) as data:  # never unpickles (allow_pickle is off)
            masks = np.asarray(data[key]) > 0
    except (OSError, ValueError, KeyError, TypeError, AttributeError, IndexError, zipfile.BadZipFile) as exc:
        raise TrainingDataError(f"{path}: not an AdrenalMNIST3D .npz with {key} ({type(exc).__name__}: {exc})") from exc
    if masks.ndim != 4:
        raise TrainingDataError(f"{path}: {key} has shape {masks.shape}, not (shapes, D, H, W)")
    return [Shape(m, np.eye(4), f"adrenal-{split}-{n:04d}") for n, m in enumerate(masks) if m.any()]


def canonical_organ(name: str) -> str:
    """``Parotid_Lt`` and ``Parotid-Lt`` are the same organ."""
    return re.sub(r"[_ ]", "-", name)


def hn_scans(root: str | Path) -> list[str]:
    return sorted(p.name for p in (Path(root) / "oncologist").iterdir() if p.is_dir())


def hn_split(root: str | Path, n_val: int = 5, seed: int = 0) -> tuple[list[str], list[str]]:
    """Seeded scan-level split of the head-and-neck set: (training scans, validation scans).

    Both raters' masks of a scan fall on the same side, so validation scans are unseen.
    """
    return seeded_split(hn_scans(root), n_val, seed)


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
