"""Bad inputs through the command line and both Slicer logic classes, as one table.

Every case must end with exit status 2 (the CLI) or one exception (the logic), a one-line
message, no traceback, every file as it was (content and permission bits) with no file left
behind, and the MRML scene unchanged. Ctrl-C and SIGTERM are run on a real process.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest

from inr_engine.cli import main
from inr_engine.cli.training import checkpoint_path
from inr_engine.priors import load_prior, save_prior, write_manifest
from inr_engine.shape.slices import sparsify

SHAPE = (28, 28, 20)
D = "{d}"  # the workspace folder in the argument tables


def _save(path: Path, array: np.ndarray, affine=None) -> None:
    nib.save(nib.Nifti1Image(array, np.eye(4) if affine is None else affine), str(path))


@pytest.fixture(scope="module")
def ws(tmp_path_factory, ellipsoid_factory, tiny_prior) -> Path:
    """A user's folder: good inputs, earlier outputs (mode 0640), and every kind of bad input."""
    d = tmp_path_factory.mktemp("user")
    mask, affine = ellipsoid_factory(SHAPE, (9, 7, 14), spacing=(1.0, 1.0, 2.0))
    sparse, _ = sparsify(mask, 2, 4)
    _save(d / "sparse.nii.gz", sparse.astype(np.uint8), affine)
    _save(d / "full.nii.gz", mask.astype(np.uint8), affine)
    rng = np.random.default_rng(0)
    image = (rng.normal(100, 20, SHAPE) + 80 * mask).astype(np.float32)
    _save(d / "image.nii.gz", image, affine)
    # refused volumes
    _save(d / "four_d.nii.gz", np.stack([sparse, sparse], -1).astype(np.uint8), affine)
    _save(d / "flat.nii.gz", sparse[:, :, 10].astype(np.uint8))
    _save(d / "empty.nii.gz", np.zeros(SHAPE, np.uint8), affine)
    _save(d / "half.nii.gz", sparse.astype(np.float32) * 0.5, affine)
    _save(d / "negative.nii.gz", sparse.astype(np.int16) * -1, affine)
    _save(d / "nan.nii.gz", np.where(sparse, np.nan, 0).astype(np.float32), affine)
    _save(d / "huge_label.nii.gz", sparse.astype(np.float32) * 1e30, affine)
    _save(d / "nan_image.nii.gz", np.where(mask, np.nan, image).astype(np.float32), affine)
    _save(d / "constant.nii.gz", np.full(SHAPE, 7.0, np.float32), affine)
    many = (np.arange(np.prod(SHAPE)).reshape(SHAPE) // 60 % 264).astype(np.int16)  # 263 labels in blocks
    _save(d / "many_labels.nii.gz", many, affine)
    directions = np.diag([1.0, 1.0, 0.0])  # NIfTI cannot even store this
    nrrd.write(str(d / "zero_spacing.nrrd"), sparse.astype(np.uint8),
               {"space": "left-posterior-superior", "space directions": directions, "space origin": np.zeros(3)})
    _save(d / "other_grid.nii.gz", np.zeros((10, 10, 10), np.uint8), affine)
    (d / "zero.nrrd").write_bytes(b"")
    (d / "garbage.nii.gz").write_bytes(b"not a nifti file" * 64)
    (d / "notes.txt").write_text("a file of another kind")
    # priors
    shutil.copy(tiny_prior, d / "prior.safetensors")
    prior = load_prior(tiny_prior)
    meta = {k: v for k, v in prior.metadata.items() if k not in ("format", "format_version")}
    save_prior(d / "string_steps.safetensors", prior.tensors,
               {**meta, "config": {**meta["config"], "default_steps": "five"}})
    from safetensors.torch import save_file

    save_file({"w": prior.tensors[next(iter(prior.tensors))]}, str(d / "foreign.safetensors"))
    no_task = {k: v for k, v in prior.metadata.items() if k != "task"}
    save_file(prior.tensors, str(d / "no_task.safetensors"), metadata={"inr_engine": json.dumps(no_task)})
    import torch

    torch.save({"w": torch.zeros(3)}, d / "pickled.safetensors")
    # earlier outputs, a regular file and a folder where outputs would go
    (d / "out").mkdir()
    shutil.copy(d / "full.nii.gz", d / "out" / "old.nii.gz")
    (d / "out" / "old.json").write_text('{"earlier": "report"}')
    (d / "out" / "old.log").write_text('{"earlier": "log"}\n')
    shutil.copy(tiny_prior, d / "out" / "old.safetensors")
    for file in (d / "out").iterdir():
        file.chmod(0o640)
    (d / "priors").mkdir()  # a prior with a manifest, and a broken file beside them
    shutil.copy(tiny_prior, d / "priors" / "tiny.safetensors")
    write_manifest(d / "priors")
    (d / "priors" / "broken.safetensors").write_bytes(b"garbage")
    (d / "link_to_sparse.nii.gz").symlink_to(d / "sparse.nii.gz")
    os.link(d / "full.nii.gz", d / "hardlink_to_full.nii.gz")
    big = nib.Nifti1Image(np.zeros((2, 2, 2)), np.eye(4))
    big.header.set_data_shape((1000, 1000, 1000))  # float64: 8 GB claimed by a 1 kB file
    (d / "claims_8_GB.nii").write_bytes(big.header.binaryblock + bytes(1028))
    os.mkfifo(d / "pipe.json")
    os.mkfifo(d / "pipe.nii.gz")
    (d / "out" / "interrupted.checkpoints").mkdir()
    shutil.copy(tiny_prior, d / "out" / "interrupted.checkpoints" / "interrupted.safetensors")
    (d / "afile").write_text("a regular file")
    (d / "adir").mkdir()
    # training folders
    (d / "one_shape").mkdir()
    shutil.copy(d / "full.nii.gz", d / "one_shape" / "a.nii.gz")
    (d / "shapes_bad").mkdir()
    shutil.copy(d / "full.nii.gz", d / "shapes_bad" / "a.nii.gz")
    shutil.copy(d / "half.nii.gz", d / "shapes_bad" / "b.nii.gz")
    for name in ("one_subject", "two_subjects"):
        for sub in ("images", "labels"):
            (d / name / sub).mkdir(parents=True)
    for name, count in (("one_subject", 1), ("two_subjects", 2)):
        for n in range(count):
            shutil.copy(d / "image.nii.gz", d / name / "images" / f"s{n}.nii.gz")
            shutil.copy(d / "full.nii.gz", d / name / "labels" / f"s{n}.nii.gz")
    (d / "with_prior").mkdir()
    shutil.copy(d / "full.nii.gz", d / "with_prior" / "a.nii.gz")
    shutil.copy(tiny_prior, d / "with_prior" / "kept.safetensors")
    return d


def run_cli(argv: list[str], folder: Path) -> int:
    """``inr-engine ARGV`` in process ({d} is ``folder``); argparse's errors exit through SystemExit."""
    try:
        return main([a.replace(D, str(folder)) for a in argv])
    except SystemExit as exc:
        return exc.code


def snapshot(folder: Path) -> dict[str, tuple[str, int]]:
    """Every file and folder under ``folder`` (hidden ones too): content hash and permission bits."""
    out = {}
    for path in sorted(folder.rglob("*")):
        digest = (hashlib.sha256(path.read_bytes()).hexdigest() if path.is_file() else
                  "folder" if path.is_dir() else "special file")
        out[str(path.relative_to(folder))] = (digest, path.stat().st_mode & 0o7777)
    return out


COMPLETE = ["complete", f"{D}/sparse.nii.gz", "--prior", f"{D}/prior.safetensors", "--quiet"]
SEGMENT = ["segment", f"{D}/image.nii.gz", "--quiet"]
TRAIN_SHAPE = ["train", "shape", "--data", f"{D}/one_shape", "--out", f"{D}/out/n.safetensors"]

# (case id, arguments, a piece of the message)
CLI_CASES = [
    # a user's files: no output may be an input or another output
    ("output-is-reference", COMPLETE + ["--output", f"{D}/full.nii.gz", "--reference", f"{D}/full.nii.gz"],
     "is the same file as --reference"),
    ("report-is-reference", COMPLETE + ["--output", f"{D}/out/new.nii.gz", "--report", f"{D}/full.nii.gz",
                                        "--reference", f"{D}/full.nii.gz"], "is the same file as --reference"),
    ("output-is-input", COMPLETE + ["--output", f"{D}/sparse.nii.gz"], "is the same file as the input"),
    ("output-is-prior", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--report", f"{D}/prior.safetensors"],
     "is the same file as --prior"),
    ("report-is-output", COMPLETE + ["--output", f"{D}/out/old.nii.gz", "--report", f"{D}/out/old.nii.gz"],
     "is also --output"),
    ("report-is-folder", COMPLETE + ["--output", f"{D}/out/old.nii.gz", "--report", f"{D}/adir"], "is a folder"),
    ("output-is-folder", COMPLETE + ["--output", f"{D}/adir"], "unsupported file type"),
    ("mesh-under-file", COMPLETE + ["--output", f"{D}/out/old.nii.gz", "--mesh", f"{D}/afile/m.stl"],
     "is a file, not a folder"),
    ("segment-output-is-input", SEGMENT + ["--output", f"{D}/image.nii.gz"], "is the same file as the input"),
    ("segment-report-is-reference", SEGMENT + ["--output", f"{D}/out/old.nii.gz", "--report", f"{D}/full.nii.gz",
                                               "--reference", f"{D}/full.nii.gz"], "is the same file as --reference"),
    # arguments
    ("device-nonsense", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--device", "nonsense"], "unknown device"),
    ("mesh-step-0", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--mesh", f"{D}/out/m.stl", "--mesh-step", "0"],
     "more than 0"),
    ("mesh-step-nan", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--mesh-step", "nan"], "a finite number"),
    ("mesh-step-huge", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--mesh-step", "1e6"], "at most 8"),
    ("steps-negative", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--steps", "-1"], "at least 0"),
    ("label-0", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--label", "0"], "at least 1"),
    ("label-absent", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--label", "9"], "label 9 is not in the input"),
    ("slices-garbage", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--slices", "x"], "--slices"),
    ("mesh-suffix", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--mesh", f"{D}/out/m.obj"], "--mesh"),
    ("output-suffix", COMPLETE + ["--output", f"{D}/out/o.txt"], "unsupported file type"),
    # volumes
    *[(f"complete-{name}", ["complete", f"{D}/{name}", "--prior", f"{D}/prior.safetensors", "--output",
                            f"{D}/out/o.nii.gz", "--quiet"], message)
      for name, message in [("four_d.nii.gz", "expected a 3D volume"), ("flat.nii.gz", "expected a 3D volume"),
                            ("empty.nii.gz", "no foreground"), ("half.nii.gz", "fractional values"),
                            ("negative.nii.gz", "negative labels"), ("nan.nii.gz", "NaN"),
                            ("huge_label.nii.gz", "larger than a label map holds"),
                            ("zero_spacing.nrrd", "singular"), ("zero.nrrd", "unreadable NRRD"),
                            ("garbage.nii.gz", "unreadable NIFTI"), ("notes.txt", "unsupported file type"),
                            ("missing.nii.gz", "no such file"), ("image.nii.gz", "fractional values")]],
    ("reference-other-grid", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--reference", f"{D}/other_grid.nii.gz"],
     "not on the input's grid"),
    *[(f"segment-{name}", ["segment", f"{D}/{name}", "--output", f"{D}/out/o.nii.gz", "--quiet"], message)
      for name, message in [("many_labels.nii.gz", "label map, not an image"), ("sparse.nii.gz", "label map"),
                            ("nan_image.nii.gz", "NaN"), ("constant.nii.gz", "constant"),
                            ("four_d.nii.gz", "expected a 3D volume")]],
    # priors
    *[(f"prior-{name}", ["complete", f"{D}/sparse.nii.gz", "--output", f"{D}/out/o.nii.gz", "--quiet", "--prior",
                         f"{D}/{name}"], message)
      for name, message in [("pickled.safetensors", "not a readable safetensors prior"),
                            ("foreign.safetensors", "not an inr-engine prior"),
                            ("string_steps.safetensors", "default_steps"),
                            ("no_task.safetensors", "task"),
                            ("missing.safetensors", "no prior")]],
    ("segment-shape-prior", SEGMENT + ["--output", f"{D}/out/o.nii.gz", "--prior", f"{D}/prior.safetensors"],
     "shape_completion"),
    ("verify-foreign", ["priors", "verify", f"{D}/foreign.safetensors"], "not an inr-engine prior"),
    ("verify-string-steps", ["priors", "verify", f"{D}/string_steps.safetensors"], "default_steps"),
    ("set-bad-type", ["priors", "set", f"{D}/out/old.safetensors", "--set", "classes=5"], "classes"),
    # training
    ("train-out-is-data", ["train", "shape", "--data", f"{D}/with_prior", "--out",
                           f"{D}/with_prior/kept.safetensors"], "is the same file as --data"),
    ("train-out-is-init", ["train", "shape", "--data", f"{D}/one_shape", "--init", f"{D}/out/old.safetensors",
                           "--out", f"{D}/out/old.safetensors"], "is the same file as --init"),
    ("train-out-suffix", ["train", "shape", "--data", f"{D}/one_shape", "--out", f"{D}/out/old.json"],
     "ends in .safetensors"),
    ("train-log-is-data", ["train", "shape", "--data", f"{D}/one_shape", "--out", f"{D}/out/new.safetensors",
                           "--log", f"{D}/one_shape/a.nii.gz"], "is the same file as --data"),
    ("train-steps-0", TRAIN_SHAPE + ["--steps", "0"], "at least 1"),
    ("train-one-shape", TRAIN_SHAPE, "one_shape"),
    ("train-fractional-shape", ["train", "shape", "--data", f"{D}/shapes_bad", "--out", f"{D}/out/n.safetensors"],
     "fractional"),
    ("train-threads-negative", TRAIN_SHAPE + ["--threads", "-1"], "at least 1"),
    ("train-config-abc", TRAIN_SHAPE + ["--config", "hidden_features=abc"], "it must be an integer"),
    ("train-config-unknown", TRAIN_SHAPE + ["--config", "colour=red"], "unknown key"),
    ("train-config-negative", TRAIN_SHAPE + ["--config", "scale_mm=-3"], "it must be > 0"),
    ("train-data-missing", ["train", "shape", "--data", f"{D}/nowhere", "--out", f"{D}/out/n.safetensors"],
     "no such file or folder"),
    ("train-metaseg-val-1", ["train", "metaseg", "--data", f"{D}/one_subject", "--out", f"{D}/out/n.safetensors",
                             "--val", "1"], "one_subject"),
    ("train-metaseg-holdout", ["train", "metaseg", "--data", f"{D}/two_subjects", "--out", f"{D}/out/n.safetensors",
                               "--holdout", "2"], "two_subjects"),
    ("train-strainer-few", ["train", "strainer", "--data", f"{D}/one_shape", "--out", f"{D}/out/n.safetensors"],
     "too few to train on"),
    # found by an independent probe
    ("report-is-prior-manifest", ["complete", f"{D}/sparse.nii.gz", "--prior", f"{D}/priors/tiny.safetensors",
                                  "--output", f"{D}/out/o.nii.gz", "--report", f"{D}/priors/manifest.json"],
     "is the same file as the manifest of --prior"),
    ("output-symlink-to-input", COMPLETE + ["--output", f"{D}/link_to_sparse.nii.gz"], "same file as the input"),
    ("output-hardlink-to-reference", COMPLETE + ["--output", f"{D}/hardlink_to_full.nii.gz", "--reference",
                                                 f"{D}/full.nii.gz"], "same file as --reference"),
    ("slices-without-annotation", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--slices", "2:0,1"],
     "hold no annotation"),
    ("slices-out-of-range", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--slices", "2:100"], "out of range"),
    ("reference-fractional", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--reference", f"{D}/half.nii.gz"],
     "is not a label map"),
    ("header-claims-8-GB", ["complete", f"{D}/claims_8_GB.nii", "--output", f"{D}/out/o.nii.gz"],
     "more memory than this engine reads"),
    ("lr-infinite", TRAIN_SHAPE + ["--lr", "inf"], "a finite number"),
    ("data-workers-3000", TRAIN_SHAPE + ["--data-workers", "3000"], "at most 64"),
    ("set-bundled-prior", ["priors", "set", "adrenal", "--set", 'description="x"'], "bundled prior"),
    ("set-provenance", ["priors", "set", f"{D}/out/old.safetensors", "--set", 'training={"a": 1}'],
     "cannot be changed"),
    ("set-beside-broken-prior", ["priors", "set", f"{D}/priors/tiny.safetensors", "--set", 'description="x"'],
     "broken.safetensors"),
    ("manifest-missing-folder", ["priors", "manifest", f"{D}/no/such/folder"], "is not a folder"),
    ("manifest-no-argument", ["priors", "manifest"], "name the prior file"),
    ("report-is-a-pipe", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--report", f"{D}/pipe.json"],
     "not a regular file"),
    ("input-is-a-pipe", ["complete", f"{D}/pipe.nii.gz", "--output", f"{D}/out/o.nii.gz"], "not a regular file"),
    ("steps-huge", COMPLETE + ["--output", f"{D}/out/o.nii.gz", "--steps", "99999999999"], "at most 100000"),
    ("train-over-an-earlier-checkpoint", ["train", "shape", "--data", f"{D}/one_shape", "--out",
                                         f"{D}/out/interrupted.safetensors"], "continue it with --init"),
    ("train-more-classes-than-labels", ["train", "metaseg", "--data", f"{D}/two_subjects", "--out",
                                        f"{D}/out/n.safetensors", "--val", "1", "--classes", "bg", "a", "b", "c"],
     "name one class per label"),
    ("train-refine-is-prior", ["train", "refine", "--data", f"{D}/two_subjects", "--out",
                               f"{D}/out/old.safetensors", "--prior", f"{D}/out/old.safetensors"],
     "is the same file as --prior"),
]


@pytest.mark.parametrize("argv, message", [pytest.param(a, m, id=i) for i, a, m in CLI_CASES])
def test_cli_bad_input(ws, capsys, argv, message):
    before = snapshot(ws)
    code = run_cli(argv, ws)
    err = capsys.readouterr().err.strip()
    assert code == 2, err
    assert "Traceback" not in err and "\n" not in err, err
    assert "error:" in err and message in err, err
    assert snapshot(ws) == before


# ------------------------------------------------------------------------ the Slicer logic
def _volume_node(scene, array: np.ndarray, affine: np.ndarray, labelmap: bool = False):
    import vtk
    from vtk.util.numpy_support import numpy_to_vtk

    from inr_slicer.nodes import array_to_matrix

    node = scene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode" if labelmap else "vtkMRMLScalarVolumeNode", "input")
    image = vtk.vtkImageData()
    image.SetDimensions(*array.shape)
    image.GetPointData().SetScalars(numpy_to_vtk(np.ascontiguousarray(array.transpose(2, 1, 0)).ravel(), deep=True))
    node.SetAndObserveImageData(image)
    node.SetIJKToRASMatrix(array_to_matrix(affine))
    return node


def _raw_volume(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A file's voxels and affine as they are, unchecked (what a scene node may hold)."""
    if path.suffix == ".nrrd":
        from inr_engine.io import _nrrd_affine

        data, header = nrrd.read(str(path))
        return data, _nrrd_affine(header)
    image = nib.load(str(path))
    return np.asarray(image.dataobj), image.affine


def _scene_state(scene) -> list[tuple[str, int]]:
    nodes = [scene.GetNthNode(i) for i in range(scene.GetNumberOfNodes())]
    return [(n.GetID(), n.GetSegmentation().GetNumberOfSegments() if n.IsA("vtkMRMLSegmentationNode") else -1)
            for n in nodes]


def _cli_message(ws, capsys, argv) -> str:
    assert run_cli(argv, ws) == 2
    return capsys.readouterr().err.strip().split("error: ", 1)[1]


# (case id, file in the workspace, the logic, a piece of the message)
# (a zero spacing set on a node reads back as NaN directions: both refuse the affine)
LOGIC_CASES = [
    ("half-labels", "half.nii.gz", "complete", "fractional values"),
    ("negative-labels", "negative.nii.gz", "complete", "negative labels"),
    ("nan-labels", "nan.nii.gz", "complete", "NaN"),
    ("huge-label", "huge_label.nii.gz", "complete", "larger than a label map holds"),
    ("empty-labels", "empty.nii.gz", "complete", "no foreground"),
    ("zero-spacing-labels", "zero_spacing.nrrd", "complete", "affine"),
    ("labels-as-image", "many_labels.nii.gz", "segment", "label map, not an image"),
    ("nan-image", "nan_image.nii.gz", "segment", "NaN"),
    ("constant-image", "constant.nii.gz", "segment", "constant"),
    ("zero-spacing-image", "zero_spacing.nrrd", "segment", "affine"),
]


@pytest.fixture
def scene():
    slicer = pytest.importorskip("slicer")  # the slicer-core wheel (the test extra)
    scene = slicer.vtkMRMLScene()
    logic = slicer.vtkSlicerSegmentationsModuleLogic()
    logic.SetMRMLScene(scene)
    yield scene
    logic.SetMRMLScene(None)


@pytest.mark.parametrize("name, logic, message", [pytest.param(f, lg, m, id=i) for i, f, lg, m in LOGIC_CASES])
def test_logic_bad_input_same_as_cli(ws, capsys, scene, tiny_prior, name, logic, message):
    from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest
    from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest

    array, affine = _raw_volume(ws / name)
    output = scene.AddNewNodeByClass("vtkMRMLSegmentationNode", "earlier output")
    if logic == "complete":
        node = _volume_node(scene, array, affine, labelmap=True)
        request = ReconstructionRequest(node, prior=str(tiny_prior), output=output)
        start = ReconstructionLogic(scene).start
        argv = ["complete", f"{D}/{name}", "--prior", str(tiny_prior), "--output", f"{D}/out/o.nii.gz"]
    else:
        node = _volume_node(scene, array, affine)
        request = SegmentationRequest(node, output=output)
        start = SegmentationLogic(scene).start
        argv = ["segment", f"{D}/{name}", "--output", f"{D}/out/o.nii.gz"]
    before = _scene_state(scene)
    with pytest.raises(ValueError) as error:
        start(request)
    text = str(error.value)
    assert message in text and "\n" not in text, text
    assert _scene_state(scene) == before
    cli = _cli_message(ws, capsys, argv)
    if "zero_spacing" in name:  # a node turns a zero spacing into NaN directions: the same check, another cause
        assert "affine" in cli
    else:
        assert cli in text  # the same message (the logic may name the node first)


@pytest.mark.parametrize("field, value, message", [
    ("steps", 2.5, "whole number"), ("steps", None, "whole number"), ("model_step", float("nan"), "model step"),
    ("model_step", 1e6, "model step"), ("output", "volume", "not a vtkMRMLSegmentationNode"),
    ("output", "input", "not a vtkMRMLSegmentationNode"), ("output_model", "segmentation", "not a vtkMRMLModelNode"),
    ("prior", 123, "must be text"), ("device", None, "must be text"), ("model_step", "0.5", "model step"),
])
def test_logic_request_fields_are_checked_before_the_run(ws, scene, tiny_prior, field, value, message):
    from inr_slicer.reconstruction import ReconstructionLogic, ReconstructionRequest

    array, affine = _raw_volume(ws / "sparse.nii.gz")
    node = _volume_node(scene, array, affine, labelmap=True)
    nodes = {"volume": lambda: _volume_node(scene, array, affine), "input": lambda: node,
             "segmentation": lambda: scene.AddNewNodeByClass("vtkMRMLSegmentationNode")}
    request = ReconstructionRequest(node, prior=str(tiny_prior))
    setattr(request, field, nodes[value]() if field.startswith("output") else value)
    before = _scene_state(scene)
    with pytest.raises(ValueError, match=message):
        ReconstructionLogic(scene).start(request)
    assert _scene_state(scene) == before


def test_segmentation_logic_checks_its_output_node(ws, scene):
    from inr_slicer.segmentation import SegmentationLogic, SegmentationRequest

    array, affine = _raw_volume(ws / "image.nii.gz")
    volume = _volume_node(scene, array, affine)
    before = _scene_state(scene)
    with pytest.raises(ValueError, match="not a vtkMRMLSegmentationNode"):
        SegmentationLogic(scene).start(SegmentationRequest(volume, output=volume))
    assert _scene_state(scene) == before


def test_a_failed_run_removes_the_folders_it_made(tmp_path):
    from inr_engine.files import RunOutputs

    with pytest.raises(KeyboardInterrupt), RunOutputs() as run:
        for name in ("a.nii.gz", "b.json", "sub/c.stl"):
            run.add_output(name, tmp_path / "new" / "deep" / name)
            run.stage(tmp_path / "new" / "deep" / name).write_text("staged")
        raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------ signals, on a real process
def _cli_process(*argv, cwd: Path) -> subprocess.Popen:
    code = "import sys; from inr_engine.cli import main; sys.exit(main(sys.argv[1:]))"
    return subprocess.Popen([sys.executable, "-c", code, *map(str, argv)], cwd=cwd, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, preexec_fn=_sigint_default)


def _sigint_default() -> None:
    """In the child: SIGINT as in a terminal, even if this test runs where it is ignored (a background job)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _wait_for(condition, timeout: float) -> None:
    end = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < end, "timed out"
        time.sleep(0.05)


def test_interrupted_training_keeps_out_and_leaves_a_checkpoint(tmp_path, ellipsoid_factory, tiny_prior):
    data = tmp_path / "shapes"
    data.mkdir()
    for n, radii in enumerate([(7, 5, 6), (5, 8, 6), (6, 6, 9), (8, 4, 5), (6, 7, 5)]):
        mask, affine = ellipsoid_factory((20, 20, 20), radii)
        _save(data / f"s{n}.nii.gz", mask.astype(np.uint8), affine)
    out, log = tmp_path / "prior.safetensors", tmp_path / "train.log"
    shutil.copy(tiny_prior, out)
    log.write_text("earlier\n")
    out.chmod(0o640)
    before = snapshot(tmp_path)
    # 600 steps: a validation (and a checkpoint) every 50, a minute or more in all
    proc = _cli_process("train", "shape", "--data", data, "--out", out, "--log", log, "--steps", "600",
                        "--max-val", "1", "--threads", "1", "--config", "hidden_features=16", "hidden_layers=1",
                        "context_points=128", "target_points=128", "inner_steps=1", cwd=tmp_path)
    try:
        _wait_for(lambda: checkpoint_path(out).is_file(), 240)
        assert proc.poll() is None, "training ended before it could be interrupted"
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 130, err
    assert "Traceback" not in err
    assert f"the best prior so far is {checkpoint_path(out)}" in err
    after = snapshot(tmp_path)
    checkpoint = str(checkpoint_path(out).relative_to(tmp_path))
    assert {k: v for k, v in after.items() if not k.startswith(checkpoint.split("/")[0])} == before
    load_prior(checkpoint_path(out))  # a usable prior to continue from, as the message says
    proc = _cli_process("train", "shape", "--data", data, "--out", out, "--init", checkpoint_path(out), "--steps",
                        "50", "--max-val", "1", "--threads", "1", cwd=tmp_path)
    _, err = proc.communicate(timeout=240)
    assert proc.returncode == 0, err
    assert load_prior(out).metadata["training"]["continued_from"]
    assert not checkpoint_path(out).parent.exists()


@pytest.mark.parametrize("signum, status", [(signal.SIGINT, 130), (signal.SIGTERM, 143)])
def test_interrupted_completion_changes_nothing(ws, tmp_path, signum, status):
    before = snapshot(ws)
    proc = _cli_process("complete", ws / "sparse.nii.gz", "--prior", "adrenal", "--steps", "100000", "--output",
                        ws / "out" / "old.nii.gz", "--report", ws / "out" / "old.json", "--mesh", ws / "out" / "m.stl",
                        cwd=tmp_path)
    try:
        time.sleep(6)  # PyTorch loaded, the prior read, fitting under way
        assert proc.poll() is None
        proc.send_signal(signum)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == status, err
    assert "Traceback" not in err and "interrupted" in err
    assert snapshot(ws) == before


def test_outputs_replace_together_and_keep_permissions(ws, tmp_path, capsys, tiny_prior):
    out = tmp_path / "out"
    out.mkdir()
    for name in ("c.nhdr", "c.json"):
        (out / name).write_text("earlier")
        (out / name).chmod(0o600)
    code = main(["complete", str(ws / "sparse.nii.gz"), "--prior", str(tiny_prior), "--output", str(out / "c.nhdr"),
                 "--report", str(out / "c.json"), "--quiet"])
    assert code == 0, capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == ["c.json", "c.nhdr", "c.raw.gz"]  # no temporary file
    assert (out / "c.nhdr").stat().st_mode & 0o777 == 0o600
    assert (out / "c.json").stat().st_mode & 0o777 == 0o600
    assert "data file: c.raw.gz" in (out / "c.nhdr").read_text()
    assert os.path.getsize(out / "c.raw.gz") > 0
