"""NIfTI and NRRD volumes in and out, with their geometry kept exactly.

In memory a volume is a 3D numpy array indexed (i, j, k) plus a 4x4 IJK->RAS affine (see
:mod:`inr_engine.frames`). NRRD's LPS space is converted on read and converted back on write.
Writes go to a temporary file beside the target and are renamed into place, so a failure
never leaves a half-written output.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nibabel as nib
import nrrd
import numpy as np

from .files import atomic_output
from .frames import GeometryError, validate_affine

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0])
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NRRD_SUFFIXES = (".nrrd", ".nhdr")
MAX_VOXELS = 1024**3
MAX_BYTES = 2 * 1024**3  # of voxel data as stored: the readers hold it all in memory


class VolumeError(ValueError):
    """A file that cannot be read as a 3D volume."""


@dataclass
class Volume:
    array: np.ndarray
    affine: np.ndarray
    header: Any = field(default=None, repr=False)  # the source file's header, reused on write
    format: str = "nifti"

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.array.shape)  # type: ignore[return-value]


def file_format(path: str | Path) -> str:
    name = str(path).lower()
    if name.endswith(NIFTI_SUFFIXES):
        return "nifti"
    if name.endswith(NRRD_SUFFIXES):
        return "nrrd"
    raise VolumeError(f"{path}: unsupported file type; use .nii, .nii.gz, .nrrd or .nhdr")


def read_volume(path: str | Path) -> Volume:
    """Read a 3D NIfTI or NRRD file; a trailing singleton 4th dimension is dropped.

    The header is checked (dimensions, size) before any voxel is read.
    """
    path = Path(path)
    fmt = file_format(path)
    if not path.exists():
        raise VolumeError(f"{path}: no such file")
    if not path.is_file():
        raise VolumeError(f"{path} is not a regular file (a folder, device or pipe): give a volume file")
    if not os.access(path, os.R_OK):
        raise VolumeError(f"{path} cannot be read (permission denied)")
    try:
        volume = _read_nifti(path) if fmt == "nifti" else _read_nrrd(path)
    except (VolumeError, GeometryError) as exc:
        raise VolumeError(f"{path}: {exc}") from exc
    except Exception as exc:  # nibabel and pynrrd raise many types for corrupt files
        raise VolumeError(f"{path}: unreadable {fmt.upper()} file ({type(exc).__name__}: {exc})") from exc
    array = volume.array
    if array.ndim == 4 and array.shape[3] == 1:
        array = array[..., 0]
    volume.array = array
    try:
        volume.affine = validate_affine(volume.affine)
    except GeometryError as exc:
        raise VolumeError(f"{path}: {exc}") from exc
    return volume


def check_grid_shape(shape: tuple[int, ...], itemsize: int = 8) -> None:
    """Refuse what is not a 3D grid of at most MAX_VOXELS voxels and MAX_BYTES of ``itemsize``-byte
    voxels (a trailing singleton 4th axis is allowed)."""
    shape = tuple(int(n) for n in shape)
    spatial = shape[:3] if len(shape) == 4 and shape[3] == 1 else shape
    if len(spatial) != 3:
        raise VolumeError(f"expected a 3D volume, got {len(shape)}D data of shape {shape}")
    if min(spatial) < 1:
        raise VolumeError(f"the volume is empty (shape {spatial})")
    if math.prod(spatial) > MAX_VOXELS:
        raise VolumeError(f"{math.prod(spatial)} voxels is more than this engine handles ({MAX_VOXELS}): "
                          "crop or resample the volume")
    if math.prod(spatial) * itemsize > MAX_BYTES:
        raise VolumeError(f"{math.prod(spatial)} voxels of {itemsize} bytes is more memory than this engine reads "
                          f"({MAX_BYTES >> 30} GB): crop or resample the volume, or store it in a smaller type")


def _read_nifti(path: Path) -> Volume:
    img = nib.load(str(path))
    scaled = img.dataobj.slope != 1 or img.dataobj.inter != 0  # read as float64 then
    check_grid_shape(img.shape, 8 if scaled else img.get_data_dtype().itemsize)  # from the header only
    return Volume(np.asarray(img.dataobj), img.affine, img.header, "nifti")


def _read_nrrd(path: Path) -> Volume:
    header = nrrd.read_header(str(path))
    check_grid_shape(tuple(header.get("sizes", ())), _nrrd_itemsize(header))
    data, header = nrrd.read(str(path))
    return Volume(data, _nrrd_affine(header), header, "nrrd")


def volume_files(path: str | Path, reading: bool = False) -> list[Path]:
    """The files a volume path stands for: itself and, for a detached NRRD header (``.nhdr``),
    its data file (named in the header when ``reading`` an existing one, else as we write it)."""
    path = Path(path)
    if path.suffix.lower() != ".nhdr":
        return [path]
    if not reading:
        return [path, path.with_suffix(".raw.gz")]
    try:
        data_file = nrrd.read_header(str(path)).get("data file")
    except Exception:  # unreadable headers are reported when the volume is read
        return [path]
    if not isinstance(data_file, str) or data_file.upper().startswith("LIST") or "%" in data_file:
        return [path]
    return [path, path.parent / data_file]


def _nrrd_itemsize(header: dict) -> int:
    try:
        return nrrd.reader._determine_datatype(header).itemsize  # pynrrd's own type table
    except Exception:  # an unknown type is reported when the data is read
        return 1


def _nrrd_affine(header: dict) -> np.ndarray:
    space = str(header.get("space", "left-posterior-superior")).lower()
    if space in ("left-posterior-superior", "lps"):
        flip = LPS_TO_RAS
    elif space in ("right-anterior-superior", "ras"):
        flip = np.eye(3)
    else:
        raise VolumeError(f"NRRD space {space!r} is not supported (use LPS or RAS)")
    dirs = header.get("space directions")
    if dirs is None:
        dirs = np.diag(header.get("spacings", [1.0, 1.0, 1.0]))
    dirs = np.asarray([d for d in dirs if d is not None and not np.all(np.isnan(np.asarray(d, float)))], float)
    if dirs.shape != (3, 3):
        raise VolumeError(f"NRRD space directions must describe 3 spatial axes, got {dirs.shape}")
    origin = np.asarray(header.get("space origin", [0.0, 0.0, 0.0]), float)
    affine = np.eye(4)
    affine[:3, :3] = flip @ dirs.T  # NRRD lists one direction vector per axis
    affine[:3, 3] = flip @ origin
    return affine


def write_volume(path: str | Path, array: np.ndarray, like: Volume) -> Path:
    """Write ``array`` on ``like``'s grid and geometry, atomically."""
    path = Path(path)
    fmt = file_format(path)
    if tuple(array.shape) != like.shape:
        raise VolumeError(f"array shape {array.shape} does not match the reference grid {like.shape}")
    with atomic_output(path) as tmp:
        if fmt == "nifti":
            _write_nifti(tmp, array, like)
        else:
            _write_nrrd(tmp, array, like)
    return path


def _write_nifti(path: str, array: np.ndarray, like: Volume) -> None:
    header = like.header.copy() if like.format == "nifti" and like.header is not None else None
    img = nib.Nifti1Image(array, like.affine, header=header)
    img.set_data_dtype(array.dtype)
    if header is not None:
        img.header.set_slope_inter(1, 0)
    nib.save(img, path)


def _write_nrrd(path: str, array: np.ndarray, like: Volume) -> None:
    source_space = str((like.header or {}).get("space", "")).lower() if like.format == "nrrd" else ""
    if source_space in ("right-anterior-superior", "ras"):
        space, flip = "right-anterior-superior", np.eye(3)
    else:
        space, flip = "left-posterior-superior", LPS_TO_RAS
    header = {
        "space": space,
        "space directions": (flip @ like.affine[:3, :3]).T,
        "space origin": flip @ like.affine[:3, 3],
        "kinds": ["domain"] * 3,
        "encoding": "gzip",
    }
    nrrd.write(path, np.ascontiguousarray(array), header)
