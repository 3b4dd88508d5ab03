"""The benchmarks' harness (``benchmarks.harness``): common options, one results writer, and every
benchmark module importable as ``python -m benchmarks.<name>`` with its options parsed, without running."""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from pathlib import Path

import numpy as np
import pytest

import benchmarks
from benchmarks import harness

REPOSITORY = Path(__file__).resolve().parents[2]
BENCHMARKS = ["live_update", "morse_inr", "morse_unet", "real_size", "segmentation", "shape_completion", "strainer",
              "unet_baseline", "web"]
NEEDS_SLICER = {"live_update", "web"}
RESULTS = {"live_update": "live_update", "morse_inr": "hippocampus", "morse_unet": "hippocampus",
           "real_size": "real_size", "segmentation": "hippocampus", "shape_completion": "", "strainer": "strainer",
           "unet_baseline": "hippocampus", "web": "web"}


def benchmark(name: str):
    if name in NEEDS_SLICER:
        pytest.importorskip("slicer")
    return importlib.import_module(f"benchmarks.{name}")


def test_every_runnable_module_of_the_package_is_tested_here():
    runnable = {m.name for m in pkgutil.iter_modules(benchmarks.__path__)
                if not m.ispkg and m.name not in ("harness", "datasets")}
    assert runnable == {*BENCHMARKS, "train_shape_prior"}


def test_common_options_and_their_defaults(tmp_path):
    args = harness.parse(harness.parser("Doc line.\n\nMore.", "hippocampus", threads=3), [])
    assert args.data_root == REPOSITORY.parent / "shared" / "data"
    assert args.out == REPOSITORY / "benchmarks" / "results" / "hippocampus"
    assert args.work_dir == REPOSITORY / "runs"
    assert args.threads == 3 and not hasattr(args, "seed") and not hasattr(args, "device")
    p = harness.parser("Doc.", seed=True, device=True)
    args = p.parse_args(["--data-root", str(tmp_path), "--out", "o", "--work-dir", "w", "--seed", "4",
                         "--device", "cpu"])
    assert (args.data_root, args.out, args.work_dir) == (tmp_path, Path("o"), Path("w"))
    assert (args.seed, args.device, args.threads) == (4, "cpu", None)
    assert p.description == "Doc."
    with pytest.raises(SystemExit):
        p.parse_args(["--data", str(tmp_path)])  # no abbreviation of --data-root


def test_results_writer_round_trip(tmp_path, capsys):
    results = {"dice": np.float32(0.5), "n": np.int64(3), "ok": np.bool_(True), "hd95": float("nan"),
               "inf": np.inf, "pair": (1, 2.5), "nested": [{"x": np.float64(0.25)}], "name": "a"}
    harness.write_results(tmp_path / "new", "stem", results, "| a |\n|---|\n")
    text = (tmp_path / "new" / "stem.json").read_text()
    assert text.endswith("}\n") and "NaN" not in text and "Infinity" not in text  # strict JSON
    assert json.loads(text) == {"dice": 0.5, "n": 3, "ok": True, "hd95": None, "inf": None, "pair": [1, 2.5],
                                "nested": [{"x": 0.25}], "name": "a"}
    assert (tmp_path / "new" / "stem.md").read_text() == "| a |\n|---|\n"
    assert "| a |" in capsys.readouterr().out
    harness.write_results(tmp_path, "only_json", {"a": 1})
    assert json.loads((tmp_path / "only_json.json").read_text()) == {"a": 1}
    assert not (tmp_path / "only_json.md").exists()


def test_the_committed_results_read_back_as_the_writer_writes_them():
    for path in sorted((REPOSITORY / "benchmarks" / "results").rglob("*.json")):
        data = json.loads(path.read_text())  # strict JSON: what write_results writes (no NaN)
        assert harness.jsonable(data) == data, path


def test_command_names_the_interpreter():
    assert harness.command().startswith(sys.executable)


@pytest.mark.parametrize("name", BENCHMARKS)
def test_each_benchmark_parses_the_common_options_and_shows_its_help(name, capsys):
    module = benchmark(name)
    entry = getattr(module, "parse_args", None) or module.main
    with pytest.raises(SystemExit) as exit_:
        entry(["--help"])
    assert exit_.value.code == 0
    text = capsys.readouterr().out
    for option in ("--data-root", "--out", "--work-dir", "--threads"):
        assert option in text, f"benchmarks.{name}: no {option}"
    for old in ("--data ", "--hn-root", "--adrenal-npz", "--hippocampus", "--cache-dir", "--baseline-cache"):
        assert old not in text, f"benchmarks.{name}: still has {old.strip()}"
    assert str(Path("benchmarks") / "results" / RESULTS[name]) in " ".join(text.split())


def test_shape_completion_derives_its_data_and_caches_from_the_common_options(tmp_path):
    from benchmarks.shape_completion import parse_args

    args = parse_args(["--data-root", str(tmp_path / "data"), "--work-dir", str(tmp_path / "work")])
    assert args.adrenal_npz == tmp_path / "data" / "adrenalmnist3d" / "adrenalmnist3d_64.npz"
    assert args.hn_root == tmp_path / "data" / "deepmind_hn_oar"
    assert args.cache_dir == tmp_path / "work" / "cache"


def test_train_shape_prior_passes_the_training_options_to_the_cli(tmp_path):
    from benchmarks.train_shape_prior import adrenal, head_neck, parse_args

    args = parse_args(["--dataset", "hn-oar", "--data-root", str(tmp_path), "--organs", "Mandible", "Brainstem",
                       "--max-val", "15", "--config", "scale_mm=64", "every_max=24", "--steps", "3",
                       "--out", str(tmp_path / "p.safetensors"), "--cache-dir", str(tmp_path / "cache")])
    assert args.data == str(tmp_path / "deepmind_hn_oar")
    assert (args.organs, args.max_val, args.steps, args.val_scans) == (["Mandible", "Brainstem"], 15, 3, 5)
    assert args.config == ["scale_mm=64", "every_max=24"] and args.cache_dir == tmp_path / "cache"
    args = parse_args(["--dataset", "adrenalmnist3d", "--out", "p.safetensors"])
    assert args.data.endswith("adrenalmnist3d/adrenalmnist3d_64.npz") and args.max_val == 24
    assert adrenal and head_neck
    with pytest.raises(SystemExit):
        parse_args(["--dataset", "adrenalmnist3d", "--data", "x.npz", "--out", "p.safetensors"])


def test_adrenal_training_shapes_validate_on_the_last_of_the_val_split(tmp_path):
    from benchmarks.train_shape_prior import adrenal, parse_args

    masks = np.zeros((6, 8, 8, 8), np.uint8)
    masks[:, 2:6, 2:6, 2:6] = 255
    np.savez(tmp_path / "a.npz", train_images=masks[:4], val_images=masks)
    args = parse_args(["--dataset", "adrenalmnist3d", "--max-val", "2", "--out", "p.safetensors"])
    args.data = tmp_path / "a.npz"
    shapes = adrenal(args)
    assert [s.name for s in shapes.val] == ["adrenal-val-0004", "adrenal-val-0005"]
    assert len(shapes.train) == 4 and shapes.protocols == (("0", 8), ("1", 8), ("2", 8), ("0", 4))


def test_the_engine_keeps_no_benchmark_loaders():
    import inr_engine.datasets as engine

    for name in ("adrenal_shapes", "hn_shapes", "hn_split", "hn_scans", "canonical_organ"):
        assert not hasattr(engine, name), name
    assert not (REPOSITORY / "inr_engine" / "baselines").exists()


def test_train_shape_prior_refuses_a_file_that_is_not_the_data_set_in_one_line(tmp_path, capsys):
    """What ``train shape --dataset adrenalmnist3d`` refused before the loaders left the engine."""
    from benchmarks.train_shape_prior import main

    (tmp_path / "adrenalmnist3d").mkdir()
    (tmp_path / "adrenalmnist3d" / "adrenalmnist3d_64.npz").write_text("not an archive")
    with pytest.raises(ValueError, match="not an AdrenalMNIST3D .npz"):
        main(["--dataset", "adrenalmnist3d", "--data-root", str(tmp_path), "--out", str(tmp_path / "p.safetensors")])
    assert not (tmp_path / "p.safetensors").exists()
