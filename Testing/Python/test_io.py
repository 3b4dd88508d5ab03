"""NIfTI and NRRD in and out: arrays and geometry kept exactly; unreadable or non-3D files refused."""

from __future__ import annotations

import gzip
import os
import stat

import nibabel as nib
import nrrd
import numpy as np
import pytest

from inr_engine.io import LPS_TO_RAS, Volume, VolumeError, file_format, read_volume, write_volume

OBLIQUE = dict(spacing=(0.7, 1.3, 3.0), angles_deg=(20, -35, 50), origin=(-120.5, 33.25, 7.0))


def _labels(shape=(9, 8, 7), dtype=np.int16, seed=0):
    return np.random.default_rng(seed).integers(0, 4, size=shape).astype(dtype)


def _f32(affine):
    """The affine as NIfTI stores it (float32 sform)."""
    return affine.astype(np.float32).astype(np.float64)


def _nifti(path, array, affine, qform_only=False):
    img = nib.Nifti1Image(array, affine)
    if qform_only:
        img.set_qform(affine, code=1)
        img.set_sform(None, code=0)
    nib.save(img, str(path))
    return path


def _nrrd(path, array, affine_ras, space="left-posterior-superior"):
    flip = LPS_TO_RAS if space == "left-posterior-superior" else np.eye(3)
    header = {"space": space, "space directions": (flip @ affine_ras[:3, :3]).T,
              "space origin": flip @ affine_ras[:3, 3], "kinds": ["domain"] * 3, "encoding": "gzip"}
    nrrd.write(str(path), array, header)
    return path


def _dir_listing(directory):
    return sorted(p.name for p in directory.iterdir())


@pytest.mark.parametrize("suffix", [".nii", ".nii.gz"])
@pytest.mark.parametrize("dtype", [np.uint8, np.int16, np.int32, np.float32])
def test_nifti_round_trip_oblique(tmp_path, affine_factory, suffix, dtype):
    affine = _f32(affine_factory(**OBLIQUE))
    array = _labels(dtype=dtype)
    src = _nifti(tmp_path / f"in{suffix}", array, affine)
    vol = read_volume(src)
    assert vol.format == "nifti" and vol.shape == array.shape
    assert vol.array.dtype == dtype
    np.testing.assert_array_equal(vol.array, array)
    np.testing.assert_array_equal(vol.affine, affine)
    out = write_volume(tmp_path / f"out{suffix}", vol.array, vol)
    back = read_volume(out)
    assert back.array.dtype == dtype
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_array_equal(back.affine, affine)
    # Both sform and qform of the written file describe the geometry.
    img = nib.load(str(out))
    np.testing.assert_allclose(img.get_qform(), affine, atol=1e-4)
    np.testing.assert_array_equal(img.get_sform(), affine)


def test_nifti_qform_only_round_trip(tmp_path, affine_factory):
    affine = _f32(affine_factory(spacing=(0.9, 0.9, 2.5), angles_deg=(0, 15, 0), origin=(10, -20, 30)))
    src = _nifti(tmp_path / "q.nii.gz", _labels(), affine, qform_only=True)
    vol = read_volume(src)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-4)
    back = read_volume(write_volume(tmp_path / "out.nii.gz", vol.array, vol))
    np.testing.assert_array_equal(back.affine, vol.affine)
    np.testing.assert_array_equal(back.array, vol.array)


def test_nifti_scaled_input_written_unscaled(tmp_path):
    img = nib.Nifti1Image(np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.eye(4))
    img.header.set_slope_inter(2.0, 1.0)
    nib.save(img, str(tmp_path / "scaled.nii"))
    vol = read_volume(tmp_path / "scaled.nii")
    labels = (vol.array > 20).astype(np.uint8)
    back = read_volume(write_volume(tmp_path / "labels.nii", labels, vol))
    np.testing.assert_array_equal(back.array, labels)


@pytest.mark.parametrize("fmt", ["nii.gz", "nrrd"])
def test_in_memory_volume_can_be_written(tmp_path, affine_factory, fmt):
    affine = affine_factory(**OBLIQUE)
    array = _labels(dtype=np.uint8)
    like = Volume(array, affine) if fmt == "nii.gz" else Volume(array, affine, None, "nrrd")
    back = read_volume(write_volume(tmp_path / f"mem.{fmt}", array, like))
    np.testing.assert_array_equal(back.array, array)
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-5 if fmt == "nii.gz" else 0)


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.int32, np.float64])
def test_nrrd_lps_oblique_round_trip(tmp_path, affine_factory, dtype):
    affine = affine_factory(**OBLIQUE)
    array = _labels(dtype=dtype)
    src = _nrrd(tmp_path / "in.nrrd", array, affine)
    vol = read_volume(src)
    assert vol.format == "nrrd"
    np.testing.assert_array_equal(vol.array, array)
    # LPS -> RAS: x and y negated, exactly.
    np.testing.assert_allclose(vol.affine, affine, rtol=0, atol=1e-12)
    raw_header = nrrd.read_header(str(src))
    np.testing.assert_array_equal(vol.affine[:3, :3], LPS_TO_RAS @ raw_header["space directions"].T)
    np.testing.assert_array_equal(vol.affine[:3, 3], LPS_TO_RAS @ raw_header["space origin"])
    out = write_volume(tmp_path / "out.nrrd", vol.array, vol)
    data, header = nrrd.read(str(out))
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], raw_header["space directions"])
    np.testing.assert_array_equal(header["space origin"], raw_header["space origin"])
    np.testing.assert_array_equal(data, array)
    assert data.dtype == dtype
    back = read_volume(out)
    np.testing.assert_array_equal(back.affine, vol.affine)


def test_nrrd_ras_space_stays_ras(tmp_path, affine_factory):
    affine = affine_factory(spacing=(1.0, 2.0, 0.5), angles_deg=(30, 0, -10), origin=(5, 6, 7))
    src = _nrrd(tmp_path / "ras.nrrd", _labels(), affine, space="right-anterior-superior")
    vol = read_volume(src)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-12)
    out = write_volume(tmp_path / "out.nrrd", vol.array, vol)
    header = nrrd.read_header(str(out))
    assert header["space"] == "right-anterior-superior"
    np.testing.assert_array_equal(read_volume(out).affine, vol.affine)


def test_nrrd_detached_header(tmp_path, affine_factory):
    affine = affine_factory(**OBLIQUE)
    array = _labels(dtype=np.uint8)
    flip = LPS_TO_RAS
    header = {"space": "left-posterior-superior", "space directions": (flip @ affine[:3, :3]).T,
              "space origin": flip @ affine[:3, 3], "encoding": "raw"}
    nrrd.write(str(tmp_path / "det.nhdr"), array, header, detached_header=True)
    vol = read_volume(tmp_path / "det.nhdr")
    np.testing.assert_array_equal(vol.array, array)
    np.testing.assert_allclose(vol.affine, affine, atol=1e-12)


def test_cross_format_geometry(tmp_path, affine_factory):
    affine = _f32(affine_factory(**OBLIQUE))
    array = _labels(dtype=np.uint8)
    nii = read_volume(_nifti(tmp_path / "a.nii.gz", array, affine))
    as_nrrd = read_volume(write_volume(tmp_path / "a.nrrd", array, nii))
    np.testing.assert_array_equal(as_nrrd.array, array)
    np.testing.assert_allclose(as_nrrd.affine, affine, rtol=0, atol=1e-12)
    assert nrrd.read_header(str(tmp_path / "a.nrrd"))["space"] == "left-posterior-superior"
    back = read_volume(write_volume(tmp_path / "b.nii.gz", array, as_nrrd))
    np.testing.assert_allclose(back.affine, affine, rtol=0, atol=1e-5)
    np.testing.assert_array_equal(back.array, array)


def test_singleton_fourth_dimension_dropped(tmp_path):
    array = _labels()[..., None]
    vol = read_volume(_nifti(tmp_path / "s.nii.gz", array, np.eye(4)))
    assert vol.shape == array.shape[:3]


def test_file_format():
    assert file_format("a/b.NII.GZ") == "nifti"
    assert file_format("x.nii") == "nifti"
    assert file_format("x.nrrd") == "nrrd"
    assert file_format("x.nhdr") == "nrrd"
    for bad in ("x.mha", "x.nii.bz2", "x.png", "x"):
        with pytest.raises(VolumeError, match="unsupported file type"):
            file_format(bad)


# --------------------------------------------------------------------------- refusals
def test_2d_files_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((8, 9), np.uint8), np.eye(4)), str(tmp_path / "flat.nii.gz"))
    with pytest.raises(VolumeError, match="expected a 3D volume, got 2D"):
        read_volume(tmp_path / "flat.nii.gz")
    nrrd.write(str(tmp_path / "flat.nrrd"), np.ones((8, 9), np.uint8),
               {"space": "left-posterior-superior", "space directions": np.eye(2, 3), "space origin": [0, 0, 0]})
    with pytest.raises(VolumeError, match="flat.nrrd: expected a 3D volume, got 2D"):
        read_volume(tmp_path / "flat.nrrd")


def test_4d_files_refused(tmp_path):
    nib.save(nib.Nifti1Image(np.ones((5, 6, 7, 2), np.uint8), np.eye(4)), str(tmp_path / "two.nii.gz"))
    with pytest.raises(VolumeError, match=r"expected a 3D volume, got 4D data of shape \(5, 6, 7, 2\)"):
        read_volume(tmp_path / "two.nii.gz")
    dirs = np.vstack([np.eye(3), np.full(3, np.nan)])
    nrrd.write(str(tmp_path / "two.nrrd"), np.ones((5, 6, 7, 2), np.uint8),
               {"space": "left-posterior-superior", "space directions": dirs, "space origin": [0, 0, 0],
                "kinds": ["domain", "domain", "domain", "list"]})
    with pytest.raises(VolumeError, match="expected a 3D volume, got 4D"):
        read_volume(tmp_path / "two.nrrd")


@pytest.mark.parametrize("name, content", [
    ("garbage.nii.gz", b"this is not a volume at all" * 20),
    ("garbage_gzip.nii.gz", gzip.compress(b"\x00" * 100)),
    ("empty.nii", b""),
    ("garbage.nrrd", b"NRRD0004\nnot a header\n\n\x01\x02"),
    ("random.nrrd", np.random.default_rng(0).bytes(500)),
])
def test_garbage_files_refused(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(VolumeError, match="unreadable") as info:
        read_volume(path)
    assert name in str(info.value)


def test_missing_and_unsupported_refused(tmp_path):
    with pytest.raises(VolumeError, match="no such file"):
        read_volume(tmp_path / "missing.nii.gz")
    (tmp_path / "image.mha").write_bytes(b"ObjectType = Image\n")
    with pytest.raises(VolumeError, match="unsupported file type"):
        read_volume(tmp_path / "image.mha")
    (tmp_path / "folder.nii").mkdir()
    with pytest.raises(VolumeError):
        read_volume(tmp_path / "folder.nii")


def test_singular_affine_refused(tmp_path):
    path = tmp_path / "singular.nrrd"
    nrrd.write(str(path), _labels(dtype=np.uint8),
               {"space": "left-posterior-superior", "space directions": np.diag([1.0, 0.0, 1.0]),
                "space origin": [0, 0, 0]})
    with pytest.raises(VolumeError, match="singular"):
        read_volume(path)


def test_unsupported_nrrd_space_refused(tmp_path):
    path = tmp_path / "scanner.nrrd"
    nrrd.write(str(path), _labels(dtype=np.uint8),
               {"space": "scanner-xyz", "space directions": np.eye(3), "space origin": [0, 0, 0]})
    with pytest.raises(VolumeError, match="not supported"):
        read_volume(path)


# --------------------------------------------------------------------------- atomic writes
def test_write_shape_mismatch_leaves_nothing(tmp_path):
    like = Volume(_labels(), np.eye(4))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    with pytest.raises(VolumeError, match="does not match"):
        write_volume(out_dir / "x.nii.gz", np.zeros((3, 3, 3), np.uint8), like)
    assert _dir_listing(out_dir) == []


@pytest.mark.parametrize("suffix", [".nii.gz", ".nrrd"])
def test_failed_write_leaves_no_file_and_keeps_existing(tmp_path, suffix):
    array = _labels(dtype=np.uint8)
    src = _nifti(tmp_path / "src.nii.gz", array, np.eye(4))
    like = read_volume(src)
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    unwritable = np.empty(array.shape, dtype=object)  # neither NIfTI nor NRRD can hold Python objects
    with pytest.raises(Exception):  # noqa: B017 - the writer's own error type is not ours to choose
        write_volume(out_dir / f"new{suffix}", unwritable, like)
    assert _dir_listing(out_dir) == []
    existing = write_volume(out_dir / f"old{suffix}", array, like)
    before = existing.read_bytes()
    with pytest.raises(Exception):  # noqa: B017
        write_volume(existing, unwritable, like)
    assert _dir_listing(out_dir) == [f"old{suffix}"]
    assert existing.read_bytes() == before


def test_written_files_get_usual_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        like = Volume(_labels(dtype=np.uint8), np.eye(4), None, "nrrd")
        for name in ("a.nii.gz", "a.nrrd"):
            mode = stat.S_IMODE(write_volume(tmp_path / name, like.array, like).stat().st_mode)
            assert mode == 0o644, f"{name}: {oct(mode)}"
    finally:
        os.umask(old)


def test_write_creates_parent_directories(tmp_path):
    like = Volume(_labels(dtype=np.uint8), np.eye(4), None, "nrrd")
    out = write_volume(tmp_path / "a" / "b" / "c.nrrd", like.array, like)
    assert out.is_file()
