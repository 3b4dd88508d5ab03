"""The ``inr-engine`` command line: completion outputs on the input's grid, reports, refusals, priors, demo."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import nibabel as nib
import nrrd
import numpy as np
import pytest
from vtkmodules.util.numpy_support import vtk_to_numpy
from vtkmodules.vtkIOGeometry import vtkSTLReader
from vtkmodules.vtkIOXML import vtkXMLPolyDataReader

from inr_engine.cli import main
from inr_engine.cli.running import parse_slices
from inr_engine.data import SAMPLES_DIR
from inr_engine.io import LPS_TO_RAS, read_volume
from inr_engine.meta import MetaLearner
from inr_engine.metrics import dice
from inr_engine.priors import BUNDLED_DIR, MANIFEST, save_prior, write_manifest
from inr_engine.shape.model import OccupancyINR, ShapeConfig, prior_metadata, prior_tensors
from inr_engine.shape.slices import sparsify

ANISO = dict(spacing=(0.8, 1.2, 2.0), angles_deg=(20, -10, 30), origin=(-40.0, 15.0, 60.0))
SHAPE = (28, 28, 20)
KEPT = [6, 10, 14]  # sparsify(mask, 2, 4) of the ellipsoid below


def _f32(affine):
    return affine.astype(np.float32).astype(np.float64)


def _listing(directory: Path) -> list[str]:
    """Every file and folder under ``directory``, hidden ones (temporary files) included."""
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


@pytest.fixture(scope="module")
def inputs(tmp_path_factory, ellipsoid_factory):
    """Sparse and full label maps in NIfTI and NRRD (oblique, anisotropic), plus refused inputs."""
    d = tmp_path_factory.mktemp("inputs")
    mask, affine = ellipsoid_factory(SHAPE, (9, 7, 12), **ANISO)
    affine = _f32(affine)
    sparse, kept = sparsify(mask, 2, 4)
    assert kept == KEPT
    nib.save(nib.Nifti1Image(sparse.astype(np.uint8), affine), str(d / "sparse.nii.gz"))
    nib.save(nib.Nifti1Image(mask.astype(np.uint8), affine), str(d / "full.nii.gz"))
    flip = LPS_TO_RAS
    header = {"space": "left-posterior-superior", "space directions": (flip @ affine[:3, :3]).T,
              "space origin": flip @ affine[:3, 3], "kinds": ["domain"] * 3, "encoding": "gzip"}
    nrrd.write(str(d / "sparse.nrrd"), sparse.astype(np.int16), header)
    # Two labels side by side.
    a, _ = ellipsoid_factory((36, 26, 20), (7, 6, 9), center_ijk=(9, 12, 9.5), **ANISO)
    b, _ = ellipsoid_factory((36, 26, 20), (6, 7, 8), center_ijk=(26, 13, 9.5), **ANISO)
    multi = (np.where(a, 3, 0) + np.where(b, 7, 0)).astype(np.uint8)
    sparse_multi = np.zeros_like(multi)
    sparse_multi[:, :, 3::4] = multi[:, :, 3::4]
    nib.save(nib.Nifti1Image(sparse_multi, affine), str(d / "multi.nii.gz"))
    # Refused inputs.
    nib.save(nib.Nifti1Image(np.zeros(SHAPE, np.uint8), affine), str(d / "empty.nii.gz"))
    single = np.zeros(SHAPE, np.uint8)
    single[:, :, 10] = mask[:, :, 10]
    nib.save(nib.Nifti1Image(single, affine), str(d / "single.nii.gz"))
    nib.save(nib.Nifti1Image(sparse[:, :, 10].astype(np.uint8), affine), str(d / "flat.nii.gz"))
    nib.save(nib.Nifti1Image(np.stack([sparse, sparse], -1).astype(np.uint8), affine), str(d / "two.nii.gz"))
    (d / "garbage.nii.gz").write_bytes(b"not a nifti file" * 64)
    image = np.random.default_rng(0).normal(100, 30, SHAPE).astype(np.float32)
    nib.save(nib.Nifti1Image(image, affine), str(d / "image.nii.gz"))
    return d


@pytest.fixture(scope="module")
def bad_priors(tmp_path_factory, tiny_prior):
    """Priors the CLI must refuse: another architecture, a corrupted file (manifest), another task."""
    d = tmp_path_factory.mktemp("bad_priors")
    cfg = ShapeConfig(hidden_features=8, hidden_layers=1)
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    meta = prior_metadata(cfg, name="wrongarch")
    meta["config"]["hidden_features"] = 24  # metadata and tensors disagree
    save_prior(d / "wrongarch.safetensors", prior_tensors(learner), meta)
    save_prior(d / "segmentation.safetensors", prior_tensors(learner), {"task": "segmentation"})
    shutil.copy(tiny_prior, d / "corrupted.safetensors")
    write_manifest(d)
    data = bytearray((d / "corrupted.safetensors").read_bytes())
    mid = len(data) // 2
    data[mid:mid + 64] = bytes(x ^ 0x5A for x in data[mid:mid + 64])
    (d / "corrupted.safetensors").write_bytes(bytes(data))
    torch_file = d / "pickled.safetensors"
    import torch

    torch.save(prior_tensors(learner), torch_file)
    (d / "truncated.safetensors").write_bytes((d / "wrongarch.safetensors").read_bytes()[:300])
    return d


def _run(capsys, *argv):
    try:
        code = main([str(a) for a in argv])
    except SystemExit as exc:  # argparse's refusals
        code = exc.code
    out = capsys.readouterr()
    return code, out.out, out.err


# --------------------------------------------------------------------------- complete: outputs
def test_complete_nifti_to_nifti(tmp_path, capsys, inputs, tiny_prior):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "done.nii.gz", "--mesh",
                        out / "done.stl", "--report", out / "report.json", "--prior", tiny_prior, "--steps", 4,
                        "--reference", inputs / "full.nii.gz", "--quiet", "--device", "cpu")
    assert code == 0, err
    assert _listing(out) == ["done.nii.gz", "done.stl", "report.json"]
    src, res = nib.load(str(inputs / "sparse.nii.gz")), nib.load(str(out / "done.nii.gz"))
    assert res.shape == src.shape
    np.testing.assert_array_equal(res.affine, src.affine)
    np.testing.assert_array_equal(res.get_sform(), src.get_sform())
    np.testing.assert_array_equal(res.get_qform(), src.get_qform())
    assert res.get_data_dtype() == src.get_data_dtype()
    labels = np.asarray(res.dataobj)
    assert set(np.unique(labels)) == {0, 1}
    full = read_volume(inputs / "full.nii.gz").array > 0
    assert dice(labels > 0, full) > 0.8
    report = json.loads((out / "report.json").read_text())
    assert report["steps"] == 4 and report["prior"]["name"] == "tiny"
    assert report["dice"]["1"] == pytest.approx(dice(labels > 0, full), abs=1e-9)
    entry = report["labels"]["1"]
    assert entry["slices"] == {"2": KEPT}
    assert [s["step"] for s in entry["fit_steps"]] == [1, 2, 3, 4]
    assert all(np.isfinite(s["loss"]) and s["seconds"] >= 0 for s in entry["fit_steps"])
    assert set(entry["phases"]) == {"prepare", "fit", "decode", "mesh", "total"}
    assert entry["phases"]["total"] == pytest.approx(sum(v for k, v in entry["phases"].items() if k != "total"))
    assert entry["voxels"] == int((labels == 1).sum())
    # The mesh is in LPS and lies over the labelled voxels.
    reader = vtkSTLReader()
    reader.SetFileName(str(out / "done.stl"))
    reader.Update()
    lps = vtk_to_numpy(reader.GetOutput().GetPoints().GetData()).astype(np.float64)
    ras = lps * np.array([-1.0, -1.0, 1.0])
    ijk = np.linalg.solve(src.affine[:3, :3], (ras - src.affine[:3, 3]).T).T
    assert np.all(ijk > -1.5) and np.all(ijk < np.array(SHAPE) + 0.5)
    np.testing.assert_allclose(ijk.mean(0), np.argwhere(labels).mean(0), atol=1.0)


def test_complete_nrrd_to_nrrd(tmp_path, capsys, inputs, tiny_prior):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "complete", inputs / "sparse.nrrd", "--output", out / "done.nrrd", "--prior",
                        tiny_prior, "--steps", 2, "--quiet")
    assert code == 0, err
    assert _listing(out) == ["done.nrrd"]
    data, header = nrrd.read(str(out / "done.nrrd"))
    _, src_header = nrrd.read(str(inputs / "sparse.nrrd"))
    assert data.shape == SHAPE and data.dtype == np.int16
    assert header["space"] == "left-posterior-superior"
    np.testing.assert_array_equal(header["space directions"], src_header["space directions"])
    np.testing.assert_array_equal(header["space origin"], src_header["space origin"])


def test_complete_nifti_to_nrrd_keeps_geometry(tmp_path, capsys, inputs, tiny_prior):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "done.nrrd", "--mesh",
                        out / "done.vtp", "--prior", tiny_prior, "--steps", 1, "--mesh-step", 0.5, "--quiet")
    assert code == 0, err
    assert _listing(out) == ["done.nrrd", "done.vtp"]
    src, res = read_volume(inputs / "sparse.nii.gz"), read_volume(out / "done.nrrd")
    assert res.shape == src.shape
    np.testing.assert_allclose(res.affine, src.affine, rtol=0, atol=1e-12)
    reader = vtkXMLPolyDataReader()
    reader.SetFileName(str(out / "done.vtp"))
    reader.Update()
    assert reader.GetOutput().GetNumberOfPoints() > 100


def test_complete_same_input_twice_is_identical(tmp_path, capsys, inputs, tiny_prior):
    outs = []
    for n in range(2):
        path = tmp_path / f"run{n}.nii.gz"
        code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", path, "--prior", tiny_prior,
                            "--steps", 3, "--quiet")
        assert code == 0, err
        outs.append(np.asarray(nib.load(str(path)).dataobj))
    np.testing.assert_array_equal(outs[0], outs[1])


def test_complete_multiple_labels_and_one_label(tmp_path, capsys, inputs, tiny_prior):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "complete", inputs / "multi.nii.gz", "--output", out / "all.nii.gz", "--report",
                        out / "all.json", "--prior", tiny_prior, "--steps", 1, "--quiet")
    assert code == 0, err
    labels = np.asarray(nib.load(str(out / "all.nii.gz")).dataobj)
    assert set(np.unique(labels)) == {0, 3, 7}
    assert set(json.loads((out / "all.json").read_text())["labels"]) == {"3", "7"}
    code, _, err = _run(capsys, "complete", inputs / "multi.nii.gz", "--output", out / "seven.nii.gz", "--prior",
                        tiny_prior, "--steps", 1, "--label", 7, "--quiet")
    assert code == 0, err
    seven = np.asarray(nib.load(str(out / "seven.nii.gz")).dataobj)
    assert set(np.unique(seven)) == {0, 7}
    np.testing.assert_array_equal(seven == 7, labels == 7)


def test_complete_with_explicit_slices(tmp_path, capsys, inputs, tiny_prior):
    out = tmp_path / "out"
    code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "s.nii.gz", "--report",
                        out / "s.json", "--slices", "2:" + ",".join(map(str, KEPT)), "--prior", tiny_prior,
                        "--steps", 0, "--quiet")
    assert code == 0, err
    report = json.loads((out / "s.json").read_text())
    assert report["labels"]["1"]["slices"] == {"2": KEPT}
    assert report["labels"]["1"]["fit_steps"] == []


def test_parse_slices():
    assert parse_slices("2:10,18,26;0:30") == {2: [10, 18, 26], 0: [30]}
    assert parse_slices(None) is None and parse_slices("") is None


# --------------------------------------------------------------------------- complete: refusals
REFUSED_INPUTS = [
    ("empty.nii.gz", "no foreground"),
    ("single.nii.gz", "only one annotated slice"),
    ("flat.nii.gz", "expected a 3D volume, got 2D"),
    ("two.nii.gz", "expected a 3D volume, got 4D"),
    ("garbage.nii.gz", "unreadable NIFTI file"),
    ("image.nii.gz", "fractional values"),
    ("missing.nii.gz", "no such file"),
]


@pytest.mark.parametrize("name, message", REFUSED_INPUTS)
def test_bad_inputs_exit_2_and_write_nothing(tmp_path, capsys, inputs, tiny_prior, name, message):
    out = tmp_path / "out"
    out.mkdir()
    before_inputs, before_prior = _listing(inputs), _listing(tiny_prior.parent)
    code, _, err = _run(capsys, "complete", inputs / name, "--output", out / "done.nii.gz", "--mesh",
                        out / "done.stl", "--report", out / "report.json", "--prior", tiny_prior, "--steps", 1,
                        "--quiet")
    assert code == 2
    assert err.startswith("inr-engine complete: error: ") and message in err, err
    assert "Traceback" not in err
    assert _listing(out) == []
    assert _listing(inputs) == before_inputs and _listing(tiny_prior.parent) == before_prior


@pytest.mark.parametrize("prior, message", [
    ("wrongarch.safetensors", "architectures differ"),
    ("corrupted.safetensors", "SHA256"),
    ("segmentation.safetensors", "'segmentation' prior"),
    ("pickled.safetensors", "not a readable safetensors prior"),
    ("truncated.safetensors", "not a readable safetensors prior"),
    ("no-such-prior", "no prior 'no-such-prior'"),
])
def test_bad_priors_exit_2_and_write_nothing(tmp_path, capsys, inputs, bad_priors, prior, message):
    out = tmp_path / "out"
    out.mkdir()
    before = _listing(bad_priors)
    arg = prior if prior == "no-such-prior" else bad_priors / prior
    code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "done.nii.gz", "--mesh",
                        out / "done.stl", "--report", out / "report.json", "--prior", arg, "--quiet")
    assert code == 2
    assert err.startswith("inr-engine complete: error: ") and message in err, err
    assert _listing(out) == [] and _listing(bad_priors) == before


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_non_finite_prior_exits_2(tmp_path, capsys, inputs, tiny_prior, value):
    from inr_engine.priors import load_prior

    prior = load_prior(tiny_prior)
    tensors = dict(prior.tensors)
    key = "init.siren.body.0.linear.weight"
    tensors[key] = tensors[key].clone()
    tensors[key][0, 0] = value
    bad = save_prior(tmp_path / "priors" / "bad.safetensors", tensors, prior.metadata)  # no manifest here
    out = tmp_path / "out"
    out.mkdir()
    try:
        code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "done.nii.gz", "--prior",
                            bad, "--steps", 1, "--quiet")
    finally:
        assert _listing(out) == []
    assert code == 2 and "bad.safetensors" in err


@pytest.mark.parametrize("extra, message", [
    (["--label", "9"], "label 9 is not in the input"),
    (["--steps", "-1"], "argument --steps: must be at least 0"),
    (["--mesh-step", "0"], "argument --mesh-step: must be a finite number more than 0"),
    (["--slices", "2:a,b"], "--slices"),
    (["--slices", "5:1,2"], "axes are 0, 1 or 2"),
    (["--slices", "2:3,40"], "out of range"),
    (["--mesh-placeholder"], "--mesh"),
    (["--reference", "wrong-grid"], "not on the input's grid"),
])
def test_bad_arguments_exit_2_and_write_nothing(tmp_path, capsys, inputs, tiny_prior, extra, message):
    out = tmp_path / "out"
    out.mkdir()
    if extra == ["--mesh-placeholder"]:
        extra = ["--mesh", str(out / "done.obj")]
    if extra == ["--reference", "wrong-grid"]:
        extra = ["--reference", str(inputs / "multi.nii.gz")]
    code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "done.nii.gz", "--report",
                        out / "report.json", "--prior", tiny_prior, "--steps", 1, "--quiet", *extra)
    assert code == 2
    assert message in err, err
    assert _listing(out) == []


def test_output_refusals(tmp_path, capsys, inputs, tiny_prior):
    work = tmp_path / "work"
    work.mkdir()
    src = work / "sparse.nii.gz"
    shutil.copy(inputs / "sparse.nii.gz", src)
    original = src.read_bytes()
    code, _, err = _run(capsys, "complete", src, "--output", src, "--prior", tiny_prior, "--quiet")
    assert code == 2 and "would be overwritten" in err
    assert src.read_bytes() == original
    code, _, err = _run(capsys, "complete", src, "--output", work / "done.mha", "--prior", tiny_prior, "--quiet")
    assert code == 2 and "unsupported file type" in err
    assert _listing(work) == ["sparse.nii.gz"]


def test_unwritable_output_exits_2(tmp_path, capsys, inputs, tiny_prior):
    out = tmp_path / "out"
    (out / "done.nii.gz").mkdir(parents=True)
    try:
        code, _, err = _run(capsys, "complete", inputs / "sparse.nii.gz", "--output", out / "done.nii.gz",
                            "--report", out / "report.json", "--prior", tiny_prior, "--steps", 1, "--quiet")
    finally:
        assert _listing(out) == ["done.nii.gz"]  # nothing else written, no temporary file left
    assert code == 2 and "done.nii.gz is a folder" in err


def test_argparse_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main(["complete"])
    assert info.value.code == 2
    assert "input" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["frobnicate"])
    assert info.value.code == 2
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["train", "shape", "--data", "x", "--out", "y.safetensors", "--encoder-echo", "0"])
    assert info.value.code == 2
    assert "--encoder-echo: must be at least 1" in capsys.readouterr().err


# --------------------------------------------------------------------------- priors
def test_priors_show_and_verify(capsys, tiny_prior, bad_priors):
    code, out, _ = _run(capsys, "priors", "show", tiny_prior)
    assert code == 0
    meta = json.loads(out)
    assert meta["task"] == "shape_completion" and meta["name"] == "tiny"
    assert meta["config"]["hidden_features"] == 16
    code, out, _ = _run(capsys, "priors", "verify", tiny_prior)
    assert code == 0 and "OK" in out and "shape_completion" in out
    for bad in ("corrupted.safetensors", "pickled.safetensors", "truncated.safetensors"):
        code, out, err = _run(capsys, "priors", "verify", bad_priors / bad)
        assert code == 2 and err.startswith("inr-engine priors: error: "), bad
        assert "OK" not in out
    code, _, err = _run(capsys, "priors", "show", "no-such-prior")
    assert code == 2 and "no prior" in err


def test_priors_list(capsys):
    code, out, _ = _run(capsys, "priors", "list")
    assert code == 0
    assert str(BUNDLED_DIR) in out
    manifest = BUNDLED_DIR / MANIFEST
    if manifest.is_file():
        for name in json.loads(manifest.read_text())["priors"]:
            assert name in out


# --------------------------------------------------------------------------- as a program
def _program():
    script = Path(sys.executable).parent / "inr-engine"
    return [str(script)] if script.is_file() else [sys.executable, "-m", "inr_engine.cli"]


def test_program_exit_codes(tmp_path, inputs, tiny_prior):
    out = tmp_path / "out"
    ok = subprocess.run([*_program(), "complete", str(inputs / "sparse.nii.gz"), "--output", str(out / "a.nrrd"),
                         "--prior", str(tiny_prior), "--steps", "1", "--quiet"], capture_output=True, text=True,
                        timeout=120)
    assert ok.returncode == 0, ok.stderr
    assert (out / "a.nrrd").is_file()
    bad = subprocess.run([sys.executable, "-m", "inr_engine.cli", "complete", str(inputs / "single.nii.gz"),
                          "--output", str(out / "b.nii.gz"), "--prior", str(tiny_prior), "--quiet"],
                         capture_output=True, text=True, timeout=120)
    assert bad.returncode == 2
    assert "only one annotated slice" in bad.stderr and "Traceback" not in bad.stderr
    assert _listing(out) == ["a.nrrd"]


# --------------------------------------------------------------------------- demo
@pytest.mark.skipif(not (BUNDLED_DIR / MANIFEST).is_file(),
                    reason="the bundled prior (inr_engine/data/priors/manifest.json) is not there yet")
def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = _run(capsys, "demo", "--out", out, "--quiet", "--device", "cpu")
    assert code == 0, err
    for name in ("completed.nii.gz", "completed.stl", "overview.png", "report.json", "segmented.nii.gz",
                 "segmentation_report.json"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    segmentation = json.loads((out / "segmentation_report.json").read_text())
    assert segmentation["method"] == "metaseg" and segmentation["classes"] == ["background", "anterior", "posterior"]
    assert all(d > 0.75 for d in segmentation["dice"].values()), segmentation["dice"]  # held-out subject
    report = json.loads((out / "report.json").read_text())
    assert report["dice"] and all(d > 0.70 for d in report["dice"].values()), report["dice"]
    assert "Dice" in stdout
    assert (out / "overview.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    src = nib.load(report["input"])
    res = nib.load(str(out / "completed.nii.gz"))
    assert res.shape == src.shape
    np.testing.assert_array_equal(res.affine, src.affine)


def test_help_and_argument_errors_need_no_pytorch(tmp_path):
    """``--help`` of every command and an argument error answer without importing PyTorch (it takes
    seconds to import; a batch script calls the program many times)."""
    code = textwrap.dedent(f"""
        import contextlib, io, sys
        from inr_engine.cli import main
        commands = [[], ["complete"], ["segment"], ["demo"], ["train", "shape"], ["train", "metaseg"],
                    ["train", "nisf"], ["train", "strainer"], ["train", "refine"], ["priors"]]
        for command in commands:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.suppress(SystemExit):
                main([*command, "--help"])
        with contextlib.redirect_stderr(io.StringIO()) as err, contextlib.suppress(SystemExit):
            main(["complete", "x.nii.gz", "--output", "y.nii.gz", "--steps", "-1"])
        assert "--steps" in err.getvalue(), err.getvalue()
        assert main(["complete", "{tmp_path}/missing.nii.gz", "--output", "{tmp_path}/y.nii.gz"]) == 2
        heavy = sorted(m for m in ("torch", "monai", "vtkmodules") if m in sys.modules)
        assert not heavy, heavy
    """)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]


def test_a_batch_loads_the_prior_once_and_skips_a_bad_input(tmp_path, capsys, monkeypatch):
    from inr_engine.shape.completer import ShapeCompleter

    loads = []
    from_prior = ShapeCompleter.from_prior.__func__
    monkeypatch.setattr(ShapeCompleter, "from_prior", classmethod(lambda cls, *a, **k: loads.append(1) or
                                                                  from_prior(cls, *a, **k)))
    inputs = tmp_path / "in"
    inputs.mkdir()
    for name in ("adrenal_val000_sparse_w8_axis0.nii.gz", "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd"):
        shutil.copy(SAMPLES_DIR / name, inputs / name)
    (inputs / "broken.nii.gz").write_text("not a volume")
    out, report = tmp_path / "out", tmp_path / "batch.json"
    code = main(["complete", *sorted(str(p) for p in inputs.iterdir()), "--output-dir", str(out), "--mesh-format",
                 "stl", "--report", str(report), "--prior", "adrenal", "--quiet"])
    err = capsys.readouterr().err
    assert code == 2 and "1 of 3 inputs failed" in err and "broken.nii.gz" in err
    assert sorted(p.name for p in out.iterdir()) == [
        "adrenal_val000_sparse_w8_axis0_completed.nii.gz", "adrenal_val000_sparse_w8_axis0_completed.stl",
        "hn_0522c0331_parotid_lt_sparse_axial_every4_completed.nrrd",
        "hn_0522c0331_parotid_lt_sparse_axial_every4_completed.stl"]
    summary = json.loads(report.read_text())
    assert len(summary["inputs"]) == 2 and list(summary["failed"]) == [str(inputs / "broken.nii.gz")]
    assert len(loads) == 1  # the prior, loaded once for the batch
    completed = read_volume(out / "hn_0522c0331_parotid_lt_sparse_axial_every4_completed.nrrd")
    assert completed.shape == read_volume(inputs / "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd").shape


@pytest.mark.parametrize("args, message", [
    (["A.nii.gz", "B.nii.gz", "--output", "x.nii.gz"], "give --output-dir"),
    (["A.nii.gz", "--output-dir", "out", "--output", "x.nii.gz"], "--output names one file"),
    (["a/A.nii.gz", "b/A.nii.gz", "--output-dir", "out"], "would both be written"),
    (["A.nii.gz", "B.nii.gz", "--output-dir", "out", "--reference", "R.nii.gz"], "ground truth of one input"),
])
def test_batch_arguments_are_checked_before_any_work(tmp_path, capsys, monkeypatch, args, message):
    monkeypatch.chdir(tmp_path)
    assert main(["complete", *args]) == 2
    assert message in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_the_default_prior_is_chosen_for_each_input(tmp_path):
    """``--prior auto``: the adrenal prior for a small structure on an isotropic grid, the
    head-and-neck prior for a scan with 2.5 mm slices; each loaded once in a batch."""
    inputs = [SAMPLES_DIR / "adrenal_val000_sparse_w8_axis0.nii.gz",
              SAMPLES_DIR / "hn_0522c0331_parotid_lt_sparse_axial_every4.nrrd"]
    report = tmp_path / "batch.json"
    assert main(["complete", *map(str, inputs), "--output-dir", str(tmp_path), "--report", str(report), "--quiet"]) == 0
    chosen = {Path(k).name: v["prior"]["name"] for k, v in json.loads(report.read_text())["inputs"].items()}
    assert chosen == {inputs[0].name: "adrenal", inputs[1].name: "head-neck-organs"}
