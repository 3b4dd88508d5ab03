"""Prior files: safetensors round trip, manifest checksums, and refusal of anything else (never unpickled)."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inr_engine.meta import MetaLearner
from inr_engine.methods.shape_completion import (
    TASK,
    OccupancyINR,
    ShapeCompleter,
    ShapeConfig,
    prior_metadata,
    prior_tensors,
)
from inr_engine.priors import (
    MANIFEST,
    PRIOR_FORMAT,
    PRIOR_FORMAT_VERSION,
    PriorError,
    load_prior,
    read_metadata,
    resolve,
    save_prior,
    set_metadata,
    sha256,
    write_manifest,
)


def _tensors():
    g = torch.Generator().manual_seed(0)
    return {"layer.weight": torch.randn(5, 3, generator=g), "layer.bias": torch.randn(5, generator=g),
            "scalar": torch.tensor(2.5)}


def _shape_prior(directory, cfg, name="shape"):
    torch.manual_seed(0)
    learner = MetaLearner(OccupancyINR(cfg), cfg.algorithm, cfg.inner_steps, cfg.inner_lr)
    return save_prior(directory / f"{name}.safetensors", prior_tensors(learner), prior_metadata(cfg, name=name))


def test_save_load_round_trip(tmp_path):
    tensors = _tensors()
    meta = {"task": "toy", "name": "toy", "nested": {"a": [1, 2, 3], "b": 0.5}, "description": "unit test"}
    path = save_prior(tmp_path / "sub" / "toy.safetensors", tensors, meta)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["toy.safetensors"]  # no temporary files left
    prior = load_prior(path)
    assert prior.task == "toy" and prior.name == "toy" and prior.path == path
    assert prior.metadata == {"format": PRIOR_FORMAT, "format_version": PRIOR_FORMAT_VERSION, **meta}
    assert prior.tensors.keys() == tensors.keys()
    for k, v in tensors.items():
        assert prior.tensors[k].dtype == torch.float32
        torch.testing.assert_close(prior.tensors[k], v, rtol=0, atol=0)
    assert read_metadata(path) == prior.metadata
    assert resolve(path) == path and resolve(str(path)) == path


def test_save_prior_converts_to_float32_cpu(tmp_path):
    path = save_prior(tmp_path / "p.safetensors", {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3).t()},
                      {"task": "toy"})
    w = load_prior(path).tensors["w"]
    assert w.dtype == torch.float32 and w.shape == (3, 2)
    torch.testing.assert_close(w, torch.arange(6, dtype=torch.float32).reshape(2, 3).t())


def test_save_prior_requires_task(tmp_path):
    with pytest.raises(ValueError, match="task"):
        save_prior(tmp_path / "p.safetensors", _tensors(), {"name": "no task"})
    assert list(tmp_path.iterdir()) == []


def test_shape_prior_round_trip_builds_same_completer(tmp_path, tiny_cfg):
    path = _shape_prior(tmp_path, tiny_cfg)
    prior = load_prior(path, task=TASK)
    completer = ShapeCompleter.from_prior(prior)
    assert completer.cfg == tiny_cfg
    assert completer.prior is prior
    torch.manual_seed(0)
    learner = MetaLearner(OccupancyINR(tiny_cfg), tiny_cfg.algorithm, tiny_cfg.inner_steps, tiny_cfg.inner_lr)
    for k, p in learner.model.named_parameters():
        torch.testing.assert_close(completer.init[k], p.detach(), rtol=0, atol=0)
        torch.testing.assert_close(completer.step_sizes[k], torch.full_like(p, tiny_cfg.inner_lr), rtol=0, atol=0)


def test_manifest_and_checksum(tmp_path):
    a = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": "toy", "description": "first"})
    b = save_prior(tmp_path / "b.safetensors", _tensors(), {"task": "other"})
    manifest = write_manifest(tmp_path, {"b": "second"})
    assert manifest == tmp_path / MANIFEST
    data = json.loads(manifest.read_text())
    assert data["format"] == PRIOR_FORMAT
    assert data["priors"] == {
        "a": {"file": "a.safetensors", "sha256": sha256(a), "task": "toy", "description": "first"},
        "b": {"file": "b.safetensors", "sha256": sha256(b), "task": "other", "description": "second"},
    }
    import hashlib

    assert sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert load_prior(a).task == "toy"
    assert load_prior(b).task == "other"


def test_checksum_mismatch_refused(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": "toy"})
    write_manifest(tmp_path)
    # Replace the file by another valid prior: readable, but not what the manifest lists.
    save_prior(path, {k: v + 1 for k, v in _tensors().items()}, {"task": "toy"})
    with pytest.raises(PriorError, match="SHA256"):
        load_prior(path)


def test_unreadable_manifest_refused(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": "toy"})
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(PriorError, match="manifest"):
        load_prior(path)


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid - 16: mid + 16] = bytes(b ^ 0xFF for b in data[mid - 16: mid + 16])
    path.write_bytes(bytes(data))


def test_corrupted_payload_refused_by_manifest(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": "toy"})
    write_manifest(tmp_path)
    _flip_middle(path)
    with pytest.raises(PriorError):
        load_prior(path)


def test_corrupted_header_refused(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": "toy"})
    data = bytearray(path.read_bytes())
    data[10:40] = np.random.default_rng(0).bytes(30)  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(PriorError):
        load_prior(path)


@pytest.mark.parametrize("keep", [0.5, 0.95, 7 / 8])
def test_truncated_file_refused(tmp_path, keep):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": "toy"})
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])
    with pytest.raises(PriorError):
        load_prior(path)


@pytest.mark.parametrize("size", [0, 7, 8, 4096])
def test_random_bytes_refused(tmp_path, size):
    path = tmp_path / "random.safetensors"
    path.write_bytes(np.random.default_rng(size).bytes(size))
    with pytest.raises(PriorError):
        load_prior(path)


def test_safetensors_without_our_metadata_refused(tmp_path):
    path = tmp_path / "foreign.safetensors"
    save_file(_tensors(), str(path))
    with pytest.raises(PriorError, match="not an inr-engine prior"):
        load_prior(path)
    save_file(_tensors(), str(path), metadata={"inr_engine": json.dumps({"format": "something-else", "task": "x"})})
    with pytest.raises(PriorError, match="not an inr-engine prior"):
        load_prior(path)
    save_file(_tensors(), str(path), metadata={"inr_engine": "{broken json"})
    with pytest.raises(PriorError):
        load_prior(path)


def test_newer_format_version_refused(tmp_path):
    path = tmp_path / "future.safetensors"
    meta = {"format": PRIOR_FORMAT, "format_version": PRIOR_FORMAT_VERSION + 1, "task": TASK}
    save_file(_tensors(), str(path), metadata={"inr_engine": json.dumps(meta)})
    with pytest.raises(PriorError, match="newer"):
        load_prior(path)


class _Trap:
    """Unpickling this object would create a marker file: a refused pickle must leave none."""

    marker = None

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


def test_pickle_file_is_refused_and_never_unpickled(tmp_path):
    marker = tmp_path / "UNPICKLED"
    trap = _Trap()
    trap.marker = marker
    # A torch.save() checkpoint (zip of pickles) and a plain pickle, both renamed .safetensors.
    torch_file = tmp_path / "checkpoint.safetensors"
    torch.save({"state": _tensors(), "trap": trap}, torch_file)
    plain = tmp_path / "plain.safetensors"
    plain.write_bytes(pickle.dumps({"trap": trap, "w": np.ones(3)}))
    legacy = tmp_path / "legacy.safetensors"
    torch.save(_tensors(), legacy, _use_new_zipfile_serialization=False)
    for path in (torch_file, plain, legacy):
        with pytest.raises(PriorError):
            load_prior(path)
        with pytest.raises(PriorError):
            read_metadata(path)
    assert not marker.exists()


def test_prior_of_another_task_refused(tmp_path):
    path = save_prior(tmp_path / "seg.safetensors", _tensors(), {"task": "segmentation"})
    assert load_prior(path).task == "segmentation"
    with pytest.raises(PriorError, match="'segmentation' prior"):
        load_prior(path, task="shape_completion")
    with pytest.raises(PriorError, match="shape completion needs"):
        ShapeCompleter.from_prior(load_prior(path))


def test_missing_prior_refused(tmp_path):
    with pytest.raises(PriorError, match="no prior"):
        load_prior("definitely-not-a-bundled-prior")
    with pytest.raises(PriorError, match="no prior"):
        load_prior(tmp_path / "missing.safetensors")
    with pytest.raises(PriorError, match="not found"):
        read_metadata(tmp_path / "missing.safetensors")


def test_directory_is_not_a_prior(tmp_path):
    (tmp_path / "dir.safetensors").mkdir()
    with pytest.raises(PriorError):
        load_prior(tmp_path / "dir.safetensors")


def test_wrong_architecture_refused(tmp_path, tiny_cfg):
    path = _shape_prior(tmp_path, tiny_cfg)
    prior = load_prior(path, task=TASK)
    # Metadata claims a wider network than the tensors hold.
    wider = dict(prior.metadata, config={**prior.metadata["config"], "hidden_features": 32})
    other = save_prior(tmp_path / "wider.safetensors", prior.tensors, wider)
    with pytest.raises(PriorError, match="architectures differ"):
        ShapeCompleter.from_prior(load_prior(other, task=TASK))
    # A tensor is missing (e.g. a prior from an engine with another network layout).
    missing = {k: v for k, v in prior.tensors.items() if not k.startswith("step_size.alpha")}
    other = save_prior(tmp_path / "missing.safetensors", missing, prior.metadata)
    with pytest.raises(PriorError, match="lacks tensor"):
        ShapeCompleter.from_prior(load_prior(other, task=TASK))
    # Fewer input features (older evidence layout): first-layer weight shape disagrees.
    fewer = dict(prior.tensors)
    key = "init.siren.body.0.linear.weight"
    fewer[key] = fewer[key][:, :-2].contiguous()
    other = save_prior(tmp_path / "fewer.safetensors", fewer, prior.metadata)
    with pytest.raises(PriorError, match="architectures differ"):
        ShapeCompleter.from_prior(load_prior(other, task=TASK))


def test_prior_of_other_slice_evidence_refused(tmp_path, tiny_cfg):
    prior = load_prior(_shape_prior(tmp_path, tiny_cfg), task=TASK)
    for architecture in ({k: v for k, v in prior.metadata["architecture"].items() if k != "evidence"},
                         {**prior.metadata["architecture"], "evidence": "slice-evidence v1"}):
        other = save_prior(tmp_path / "old.safetensors", prior.tensors, dict(prior.metadata, architecture=architecture))
        with pytest.raises(PriorError, match="use a prior trained with this engine version"):
            ShapeCompleter.from_prior(load_prior(other, task=TASK))


def test_other_frame_convention_refused(tmp_path, tiny_cfg):
    prior = load_prior(_shape_prior(tmp_path, tiny_cfg), task=TASK)
    meta = dict(prior.metadata, frame={"convention": "lps-something; v0"})
    other = save_prior(tmp_path / "frame.safetensors", prior.tensors, meta)
    with pytest.raises(PriorError, match="convention"):
        ShapeCompleter.from_prior(load_prior(other, task=TASK))


def test_shape_config_round_trips_through_metadata(tmp_path):
    cfg = ShapeConfig(hidden_features=8, hidden_layers=1, scale_mm=20.0, algorithm="fomaml", inner_steps=3)
    path = _shape_prior(tmp_path, cfg, "cfg")
    completer = ShapeCompleter.from_prior(load_prior(path, task=TASK))
    assert completer.cfg == cfg
    # fomaml has one scalar inner rate; the prior stores it expanded per parameter.
    for k, v in completer.step_sizes.items():
        assert v.shape == completer.init[k].shape
        torch.testing.assert_close(v, torch.full_like(v, cfg.inner_lr))


def test_descriptive_metadata_can_change_and_the_manifest_follows(tmp_path, tiny_prior):
    folder = tmp_path / "priors"
    folder.mkdir()
    path = folder / tiny_prior.name
    path.write_bytes(tiny_prior.read_bytes())
    write_manifest(folder)
    before = load_prior(path)
    set_metadata(path, {"description": "left adrenal, my clinic", "class_colors": [[0, 0, 0], [0.9, 0.7, 0.1]]})
    after = load_prior(path)  # verifies the manifest's new checksum
    assert after.metadata["description"] == "left adrenal, my clinic"
    assert after.metadata["class_colors"] == [[0, 0, 0], [0.9, 0.7, 0.1]]
    assert after.metadata["config"] == before.metadata["config"]
    assert all(torch.equal(after.tensors[k], v) for k, v in before.tensors.items())
    assert json.loads((folder / MANIFEST).read_text())["priors"][path.stem]["sha256"] == sha256(path)


@pytest.mark.parametrize("changes, message", [
    ({"task": "segmentation/metaseg"}, "cannot be changed"),
    ({"config": {}}, "cannot be changed"),
    ({"class_colors": [[0, 0, 2]]}, "class_colors"),
    ({"class_colors": [[0, 0]]}, "class_colors"),
])
def test_structural_or_malformed_metadata_is_refused(tmp_path, tiny_prior, changes, message):
    path = tmp_path / tiny_prior.name
    path.write_bytes(tiny_prior.read_bytes())
    content = path.read_bytes()
    with pytest.raises(PriorError, match=message):
        set_metadata(path, changes)
    assert path.read_bytes() == content
