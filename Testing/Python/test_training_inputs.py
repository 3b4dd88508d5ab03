"""Training inputs (issue 18): a data worker's error reaches the trainer (no hang, Ctrl-C too),
training folders are checked like the inputs of ``complete`` and ``segment`` before any
training work, and label maps with many labels are not taken for images.

Everything runs on small synthetic volumes and the shipped samples; nothing is mocked.
"""

from __future__ import annotations

import _thread
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest
import torch
from scipy import ndimage
from scipy.spatial import cKDTree

from inr_engine.data import SAMPLES_DIR
from inr_engine.datasets import (
    Shape,
    TrainingDataError,
    check_split,
    label_directory_shapes,
    labelled_image_names,
    labelled_images,
    seeded_split,
)
from inr_engine.inputs import equal_neighbours, looks_like_labels
from inr_engine.io import VolumeError, read_volume
from inr_engine.segmentation.volume import SegmentationError, prepare_volume
from inr_engine.settings import ShapeTrainingSettings
from inr_engine.shape.slices import SliceError
from inr_engine.shape.training import train_shape_prior
from inr_engine.streams import TaskStream

SAMPLES = SAMPLES_DIR
SHARED = Path(__file__).resolve().parents[3] / "shared" / "data" / "msd_hippocampus"


def in_thread(fn, timeout_s: float = 60.0):
    """Run ``fn`` in a daemon thread; its exception (or result) once it ends, failing if it hangs."""
    out: dict = {}

    def target():
        try:
            out["result"] = fn()
        except BaseException as exc:  # noqa: B036 - handed to the test
            out["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    assert not thread.is_alive(), f"still running after {timeout_s} s: a hang"
    return out


def save(path: Path, array: np.ndarray, affine=None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    nib.save(nib.Nifti1Image(np.asarray(array), np.eye(4) if affine is None else affine), str(path))
    return path


def ball(shape=(20, 20, 20), radius=6.0, dtype=np.uint8) -> np.ndarray:
    ijk = np.indices(shape) - (np.asarray(shape)[:, None, None, None] - 1) / 2
    return ((ijk**2).sum(0) <= radius**2).astype(dtype)


def noisy_image(shape=(20, 20, 20), seed=0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return (ball(shape, dtype=np.float32) * 100 + rng.normal(300, 20, shape)).astype(np.float32)


def voronoi_labels(side: int, labels: int = 263, seed: int = 0) -> np.ndarray:
    """A TotalSegmentator-like label map: ``labels`` cells filling a body-shaped ellipsoid."""
    rng = np.random.default_rng(seed)
    grid = np.indices((side,) * 3).reshape(3, -1).T
    cells = cKDTree(rng.uniform(0, side, (labels, 3))).query(grid)[1].reshape((side,) * 3) + 1
    body = (((np.indices((side,) * 3) - (side - 1) / 2) / (side / 2)) ** 2).sum(0) < 0.9
    return np.where(body, cells, 0).astype(np.uint16)


def one_line(exc: BaseException) -> str:
    text = str(exc)
    assert "\n" not in text and text
    return text


# --------------------------------------------------------------------------- worker errors
class Boom(SliceError):
    pass


@pytest.mark.parametrize("workers", [1, 3])
def test_task_stream_forwards_a_worker_exception(workers):
    local = threading.local()

    def draw(rng):
        local.n = getattr(local, "n", 0) + 1
        if local.n > 2:  # every worker draws two batches, then fails
            raise Boom(f"bad shape after {local.n - 1} batches")
        return float(rng.random())

    def consume():
        with TaskStream(draw, seed=0, workers=workers) as stream:
            batches = [stream() for _ in range(2 * workers)]
            with pytest.raises(Boom, match="bad shape after 2 batches"):
                stream()
            with pytest.raises(Boom):  # and every later call
                stream()
            return batches

    out = in_thread(consume, 30)
    assert "error" not in out, out.get("error")
    assert len(out["result"]) == 2 * workers


def test_task_stream_order_is_unchanged_by_the_error_handling():
    def draw(rng):
        return int(rng.integers(1 << 30))

    def first(workers):
        with TaskStream(draw, seed=5, workers=workers) as stream:
            return [stream() for _ in range(6)]

    assert first(2) == first(2)
    expected = np.random.default_rng(5)
    assert first(1) == [int(expected.integers(1 << 30)) for _ in range(6)]


def test_closing_does_not_wait_forever_for_a_stuck_worker():
    never = threading.Event()

    def draw(_rng):
        never.wait()  # a worker stuck inside a batch
        return 0

    stream = TaskStream(draw, seed=0, workers=2, close_timeout_s=0.3)
    start = time.perf_counter()
    with pytest.warns(RuntimeWarning, match="still drawing"):
        stream.close()
    assert time.perf_counter() - start < 5
    never.set()


def test_ctrl_c_while_waiting_for_a_batch_does_not_hang():
    never = threading.Event()

    def draw(_rng):
        never.wait()  # no batch ever comes: the consumer is waiting when Ctrl-C comes
        return 0

    timer = threading.Timer(0.3, _thread.interrupt_main)
    start = time.perf_counter()
    # interrupt_main does nothing while SIGINT is ignored (as in a job a shell put in the background)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt), pytest.warns(RuntimeWarning, match="still drawing"):
            with TaskStream(draw, seed=0, workers=2, close_timeout_s=0.5) as stream:
                timer.start()
                stream()
    finally:
        never.set()
        signal.signal(signal.SIGINT, previous)
    assert time.perf_counter() - start < 5


def test_training_with_no_usable_shape_raises_instead_of_hanging(tmp_path, tiny_cfg):
    """What ``train shape`` on a folder of one label map did: every shape went to validation and
    the data worker died on an empty training list while the trainer waited for ever."""
    shape = Shape(ball().astype(bool), np.eye(4), "ball")
    settings = ShapeTrainingSettings(steps=3, meta_batch=2, lr=1e-3, data_workers=2, protocols=(("0", 4),))
    out = in_thread(lambda: train_shape_prior([], [shape], tiny_cfg, tmp_path / "x.safetensors", settings,
                                              device=torch.device("cpu"), description="test", training_data={}), 60)
    assert isinstance(out.get("error"), SliceError), out
    assert "no training shapes" in one_line(out["error"])
    assert not (tmp_path / "x.safetensors").exists()


def test_shapes_that_never_give_a_task_raise_instead_of_looping():
    from inr_engine.shape.tasks import draw_tasks

    shape = Shape(ball().astype(bool), np.eye(4), "ball")
    out = in_thread(lambda: draw_tasks([shape], np.random.default_rng(0), 2, lambda _shape: None), 60)
    assert isinstance(out.get("error"), SliceError) and "too small" in one_line(out["error"])


def test_train_shape_on_one_label_map_is_refused_not_hung(tmp_path):
    """The command of issue 18, in a process of its own (the CLI handles signals) with a timeout."""
    save(tmp_path / "one" / "ball.nii.gz", ball())
    run = subprocess.run([sys.executable, "-m", "inr_engine.cli", "train", "shape", "--data", str(tmp_path / "one"),
                          "--out", str(tmp_path / "x.safetensors"), "--steps", "3", "--device", "cpu"],
                         capture_output=True, text=True, timeout=180)
    err = run.stderr.strip()
    assert run.returncode == 2, err
    assert "1 shape in" in err and "train on" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x.safetensors").exists()


# --------------------------------------------------------------------------- label-map folders
@pytest.mark.parametrize("array, message", [
    (np.where(ball(dtype=np.float32) > 0, np.nan, 0).astype(np.float32), "NaN"),
    (ball(dtype=np.int16) - 1, "negative"),
    (ball(dtype=np.float32) * 0.5, "fractional"),
    (noisy_image(), "fractional"),  # a float image given as a label map
    (np.clip(noisy_image() - 200, 0, 255).astype(np.uint8), "looks like an image"),  # a uint8 image
])
def test_bad_label_maps_in_a_training_folder_are_refused(tmp_path, array, message):
    save(tmp_path / "good.nii.gz", ball())
    bad = save(tmp_path / "sub" / "bad.nii.gz", array)
    with pytest.raises(TrainingDataError, match=message) as info:
        label_directory_shapes(tmp_path)
    assert str(bad) in one_line(info.value)
    assert isinstance(info.value, VolumeError)  # a user error for the CLI


def test_label_folders_that_do_not_exist_or_hold_nothing_are_refused(tmp_path):
    with pytest.raises(TrainingDataError, match="no such folder"):
        label_directory_shapes(tmp_path / "missing")
    save(tmp_path / "file.nii.gz", ball())
    with pytest.raises(TrainingDataError, match="not a folder"):
        label_directory_shapes(tmp_path / "file.nii.gz")
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no volumes here")
    with pytest.raises(TrainingDataError, match="no label maps found"):
        label_directory_shapes(tmp_path / "empty")
    save(tmp_path / "zeros" / "a.nii.gz", np.zeros((8, 8, 8), np.uint8))
    with pytest.raises(TrainingDataError, match="none of the 1 label maps has a label"):
        label_directory_shapes(tmp_path / "zeros")


def test_good_label_folders_still_load(tmp_path):
    two = ball()
    two[:, :, :10] *= 2
    save(tmp_path / "a.nii.gz", two)
    save(tmp_path / "b.nii.gz", np.zeros((8, 8, 8), np.uint8))  # all background: skipped
    save(tmp_path / "c.nii.gz", voronoi_labels(32, 40).astype(np.float32))  # many labels, float storage
    shapes = label_directory_shapes(tmp_path)
    names = [s.name for s in shapes]
    assert names[:2] == ["a.nii.gz:1", "a.nii.gz:2"] and len(shapes) == 2 + len(np.unique(voronoi_labels(32, 40))) - 1
    for file in sorted(SAMPLES.glob("*_full*")) + sorted(SAMPLES.glob("*_labels*")):
        assert label_directory_shapes(_copy(file, tmp_path / file.stem))


def _copy(file: Path, folder: Path) -> Path:
    folder.mkdir(parents=True)
    (folder / file.name).write_bytes(file.read_bytes())
    return folder


# --------------------------------------------------------------------------- image/label folders
def labelled_folder(root: Path, n: int = 3, image=None, labels=None, label_affine=None) -> Path:
    for k in range(n):
        save(root / "images" / f"s{k}.nii.gz", noisy_image(seed=k) if image is None or k else image)
        save(root / "labels" / f"s{k}.nii.gz", ball() if labels is None or k else labels,
             label_affine if k == 0 else None)
    return root


def test_good_labelled_folders_load(tmp_path):
    images = labelled_images(labelled_folder(tmp_path / "ok"))
    assert [im.name for im in images] == ["s0", "s1", "s2"] and images[0].labels.dtype == np.int64
    root = tmp_path / "samples"
    for stem in ("hippocampus_004", "hippocampus_007"):
        save(root / "imagesTr" / f"{stem}.nii.gz", read_volume(SAMPLES / f"{stem}_image.nii.gz").array)
        save(root / "labelsTr" / f"{stem}.nii.gz", read_volume(SAMPLES / f"{stem}_labels.nii.gz").array)
    assert len(labelled_images(root)) == 2


@pytest.mark.parametrize("case, message, bad", [
    ("label map as image", "label map, not an image", "images"),
    ("uint8 image as label map", "looks like an image", "labels"),
    ("float image as label map", "fractional", "labels"),
    ("NaN labels", "NaN", "labels"),
    ("negative labels", "negative", "labels"),
    ("NaN image", "NaN", "images"),
    ("other shape", "resample the label map", "labels"),
    ("other affine", "resample the label map", "labels"),
])
def test_bad_image_label_pairs_are_refused(tmp_path, case, message, bad):
    image, labels, affine = None, None, None
    if case == "label map as image":
        image = ball()
    elif case == "uint8 image as label map":
        labels = np.clip(noisy_image() - 200, 0, 255).astype(np.uint8)
    elif case == "float image as label map":
        labels = noisy_image()
    elif case == "NaN labels":
        labels = np.where(ball() > 0, np.nan, 0).astype(np.float32)
    elif case == "negative labels":
        labels = ball(dtype=np.int16) - 1
    elif case == "NaN image":
        image = np.where(ball() > 0, np.nan, noisy_image()).astype(np.float32)
    elif case == "other shape":
        labels = ball((20, 20, 18))
    else:
        affine = np.diag([1.0, 1.0, 2.0, 1.0])
    root = labelled_folder(tmp_path, image=image, labels=labels, label_affine=affine)
    with pytest.raises(TrainingDataError, match=message) as info:
        labelled_images(root)
    assert str(root / bad / "s0.nii.gz") in one_line(info.value)


def test_labelled_folders_that_do_not_exist_or_do_not_match_are_refused(tmp_path):
    with pytest.raises(TrainingDataError, match="no such folder"):
        labelled_image_names(tmp_path / "missing")
    (tmp_path / "flat").mkdir()
    with pytest.raises(TrainingDataError, match="expected sub-folders images/ and labels/"):
        labelled_image_names(tmp_path / "flat")
    save(tmp_path / "mismatch" / "images" / "a.nii.gz", noisy_image())
    save(tmp_path / "mismatch" / "labels" / "b.nii.gz", ball())
    with pytest.raises(TrainingDataError, match="no image in images/ has a label map of the same name"):
        labelled_image_names(tmp_path / "mismatch")


# --------------------------------------------------------------------------- splits
def test_split_checks_name_what_is_missing():
    with pytest.raises(TrainingDataError) as info:
        check_split(3, 1, 2, what="subjects in DIR")
    assert one_line(info.value) == ("3 subjects in DIR: 1 for validation (--val) and 2 held out (--holdout) leave "
                                    "none to train on; add subjects, or lower --val / --holdout")
    with pytest.raises(TrainingDataError, match=r"^1 shape in DIR: 1 for validation leaves none to train on; add"):
        check_split(1, 1, what="shapes in DIR", val_option=None)
    with pytest.raises(TrainingDataError, match=r"^1 subject in DIR: too few to train on \(at least 2 needed\)"):
        check_split(1, 0, minimum_train=2, what="subjects in DIR")
    with pytest.raises(TrainingDataError, match="--holdout -1: must not be negative"):
        check_split(5, 1, -1)
    with pytest.raises(TrainingDataError, match="--val 0: at least 1 must be set aside for validation"):
        check_split(5, 0, minimum_validation=1)
    assert check_split(3, 1, 1) == 1 and check_split(2, 0, minimum_train=2) == 2


def test_seeded_split_refuses_impossible_splits_clearly():
    assert seeded_split(["a", "b", "c"], 1, 0)[1] in (["a"], ["b"], ["c"])
    for n in (0, 3, 4):
        with pytest.raises(TrainingDataError, match=f"cannot set aside {n} of 3"):
            seeded_split(["a", "b", "c"], n, 0)


# --------------------------------------------------------------------------- label maps given to segment
def test_label_maps_with_many_labels_are_recognised():
    for side in (48, 96):
        labels = voronoi_labels(side)
        assert len(np.unique(labels)) > 150
        assert looks_like_labels(labels) and looks_like_labels(labels.astype(np.float32))
        assert looks_like_labels(labels.astype(np.int32) * 3 + 1000)  # any integer values
        with pytest.raises(SegmentationError, match="label map"):
            prepare_volume(labels, np.eye(4), 32.0)
    for file in sorted(SAMPLES.glob("*.nii.gz")) + sorted(SAMPLES.glob("*.nrrd")):
        if "image" not in file.name:  # shipped label maps: full, sparse and hippocampus labels
            assert looks_like_labels(read_volume(file).array), file.name


def test_images_are_not_taken_for_label_maps():
    rng = np.random.default_rng(0)
    for stem in ("hippocampus_004", "hippocampus_007"):
        image = read_volume(SAMPLES / f"{stem}_image.nii.gz").array
        as_uint8 = np.round((image - image.min()) / np.ptp(image) * 255).astype(np.uint8)
        for candidate in (image, as_uint8, np.round(image).astype(np.int16),
                          np.rint(ndimage.gaussian_filter(as_uint8.astype(float), 2)).astype(np.uint8)):
            assert not looks_like_labels(candidate)
            assert equal_neighbours(candidate) < 0.3
        prepare_volume(as_uint8, np.eye(4), 32.0)  # accepted
    body = voronoi_labels(48, 12, seed=1)
    ct = np.where(body > 0, rng.choice([-100, 0, 40, 60, 300, 1000], 13)[body], -1024)
    ct = np.rint(ct + (body > 0) * rng.normal(0, 10, body.shape)).astype(np.int16)  # CT: air exact, tissue noisy
    assert not looks_like_labels(ct) and equal_neighbours(ct) < 0.1


def test_real_images_and_label_maps_of_the_shared_data():
    if not SHARED.is_dir():
        pytest.skip("no shared data")
    names = sorted(p.name for p in (SHARED / "images").glob("*.nii.gz"))[:30]
    for name in names:
        assert not looks_like_labels(read_volume(SHARED / "images" / name).array), name
        assert looks_like_labels(read_volume(SHARED / "labels" / name).array), name


def test_the_label_map_check_is_fast_on_large_volumes():
    rng = np.random.default_rng(0)
    ct = rng.normal(40, 20, (256, 256, 256)).astype(np.int16)
    labels = voronoi_labels(64).repeat(4, 0).repeat(4, 1).repeat(4, 2)
    floats = rng.random((256, 256, 256), dtype=np.float32)
    for array, expected in ((ct, False), (labels, True), (floats, False)):
        start = time.perf_counter()
        assert looks_like_labels(array) is expected
        assert time.perf_counter() - start < 1.0
