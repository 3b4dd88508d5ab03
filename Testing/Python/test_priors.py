"""Prior files: safetensors round trip, manifest checksums, and refusal of anything else (never unpickled);
metadata and config validation; every bad prior refused with a one-line PriorError, by ``verify_prior``
and by each way the engine loads priors."""

from __future__ import annotations

import copy
import dataclasses
import json
import math
import pickle
import shutil

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from inr_engine import strainer
from inr_engine.cli.prior_check import open_prior, verify_prior
from inr_engine.intensity import IntensityReference
from inr_engine.meta import MetaLearner
from inr_engine.priors import (
    CONFIG_VALUES,
    KNOWN_TASKS,
    MANIFEST,
    PRIOR_FORMAT,
    PRIOR_FORMAT_VERSION,
    SEGMENTATION_TASKS,
    PriorError,
    bundled_priors,
    initialisation_tensors,
    load_prior,
    read_metadata,
    resolve,
    save_prior,
    set_metadata,
    sha256,
    typed_config,
    write_manifest,
)
from inr_engine.segmentation import metaseg, nisf, refinement
from inr_engine.segmentation import strainer as segmentation_strainer
from inr_engine.segmentation.segment import load_segmenter
from inr_engine.shape import strainer as shape_strainer
from inr_engine.shape.completer import ShapeCompleter
from inr_engine.shape.model import TASK, OccupancyINR, ShapeConfig, prior_metadata, prior_tensors

METASEG_TASK, NISF_TASK = SEGMENTATION_TASKS["metaseg"], SEGMENTATION_TASKS["nisf"]


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
    meta = {"task": TASK, "name": "toy", "nested": {"a": [1, 2, 3], "b": 0.5}, "description": "unit test"}
    path = save_prior(tmp_path / "sub" / "toy.safetensors", tensors, meta)
    assert path.is_file()
    assert [p.name for p in path.parent.iterdir()] == ["toy.safetensors"]  # no temporary files left
    prior = load_prior(path)
    assert prior.task == TASK and prior.name == "toy" and prior.path == path
    assert prior.metadata == {"format": PRIOR_FORMAT, "format_version": PRIOR_FORMAT_VERSION, **meta}
    assert prior.tensors.keys() == tensors.keys()
    for k, v in tensors.items():
        assert prior.tensors[k].dtype == torch.float32
        torch.testing.assert_close(prior.tensors[k], v, rtol=0, atol=0)
    assert read_metadata(path) == prior.metadata
    assert resolve(path) == path and resolve(str(path)) == path


def test_save_prior_converts_to_float32_cpu(tmp_path):
    path = save_prior(tmp_path / "p.safetensors", {"w": torch.arange(6, dtype=torch.float64).reshape(2, 3).t()},
                      {"task": TASK})
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
    a = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": TASK, "description": "first"})
    b = save_prior(tmp_path / "b.safetensors", _tensors(), {"task": METASEG_TASK})
    manifest = write_manifest(tmp_path, {"b": "second"})
    assert manifest == tmp_path / MANIFEST
    data = json.loads(manifest.read_text())
    assert data["format"] == PRIOR_FORMAT
    assert data["priors"] == {
        "a": {"file": "a.safetensors", "sha256": sha256(a), "task": TASK, "description": "first"},
        "b": {"file": "b.safetensors", "sha256": sha256(b), "task": METASEG_TASK, "description": "second"},
    }
    import hashlib

    assert sha256(a) == hashlib.sha256(a.read_bytes()).hexdigest()
    assert load_prior(a).task == TASK
    assert load_prior(b).task == METASEG_TASK


def test_checksum_mismatch_refused(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": TASK})
    write_manifest(tmp_path)
    # Replace the file by another valid prior: readable, but not what the manifest lists.
    save_prior(path, {k: v + 1 for k, v in _tensors().items()}, {"task": TASK})
    with pytest.raises(PriorError, match="SHA256"):
        load_prior(path)


def test_unreadable_manifest_refused(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": TASK})
    (tmp_path / MANIFEST).write_text("{not json")
    with pytest.raises(PriorError, match="manifest"):
        load_prior(path)


def _flip_middle(path):
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid - 16: mid + 16] = bytes(b ^ 0xFF for b in data[mid - 16: mid + 16])
    path.write_bytes(bytes(data))


def test_corrupted_payload_refused_by_manifest(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": TASK})
    write_manifest(tmp_path)
    _flip_middle(path)
    with pytest.raises(PriorError):
        load_prior(path)


def test_corrupted_header_refused(tmp_path):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": TASK})
    data = bytearray(path.read_bytes())
    data[10:40] = np.random.default_rng(0).bytes(30)  # inside the JSON header
    path.write_bytes(bytes(data))
    with pytest.raises(PriorError):
        load_prior(path)


@pytest.mark.parametrize("keep", [0.5, 0.95, 7 / 8])
def test_truncated_file_refused(tmp_path, keep):
    path = save_prior(tmp_path / "a.safetensors", _tensors(), {"task": TASK})
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
    path = save_prior(tmp_path / "seg.safetensors", _tensors(), {"task": METASEG_TASK})
    assert load_prior(path).task == METASEG_TASK
    with pytest.raises(PriorError, match="'segmentation/metaseg' prior"):
        load_prior(path, task="shape_completion")
    with pytest.raises(PriorError, match="shape completion needs"):
        ShapeCompleter.from_prior(load_prior(path))


def test_prior_of_an_unknown_task_refused(tmp_path):
    for task in ("segmentation", "toy"):
        path = save_prior(tmp_path / f"{task}.safetensors", _tensors(), {"task": task})
        for load, kwargs in ((load_prior, {}), (load_prior, {"task": TASK}), (read_metadata, {})):
            with pytest.raises(PriorError, match=f"'{task}' prior, a task this engine does not know"):
                load(path, **kwargs)


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


# --------------------------------------------------------------------------- validation: config values
def test_config_value_types_agree_with_the_config_classes():
    import typing

    for cls in (ShapeConfig, metaseg.MetaSegConfig, nisf.NISFConfig):
        hints = typing.get_type_hints(cls)
        for field in dataclasses.fields(cls):
            if field.name in CONFIG_VALUES:
                assert CONFIG_VALUES[field.name][0] == hints[field.name], (cls.__name__, field.name)
        # every default passes the rules
        assert typed_config(cls, dataclasses.asdict(cls())) == cls()


def test_typed_config_checks_types_and_keeps_unknown_keys_out():
    cfg = typed_config(ShapeConfig, {"omega_0": 30, "encoder_channels": [8, 16], "from_a_newer_engine": "x",
                                     "default_steps": 0})
    assert cfg == ShapeConfig(omega_0=30.0, encoder_channels=(8, 16), default_steps=0)
    assert isinstance(cfg.omega_0, float) and cfg.encoder_channels == (8, 16)
    for values, message in [
        ({"default_steps": "abc"}, 'config.default_steps is "abc" (string); it must be an integer >= 0'),
        ({"default_steps": 2.0}, "config.default_steps is 2.0 (number); it must be an integer"),
        ({"default_steps": True}, "config.default_steps is true"),
        ({"default_steps": -1}, "config.default_steps is -1 (integer); it must be >= 0"),
        ({"scale_mm": "32"}, "config.scale_mm"),
        ({"scale_mm": -3.0}, "it must be > 0"),
        ({"scale_mm": math.inf}, "config.scale_mm is Infinity"),
        ({"encoder_channels": [16, 0]}, "each entry must be >= 1"),
        ({"encoder_channels": [16, "32"]}, "it must be a list of integers"),
        ({"algorithm": 3}, "config.algorithm is 3 (integer); it must be a string"),
        ({"acquisition_axis_prob": 2}, "from 0 to 1"),
    ]:
        with pytest.raises(PriorError, match="^where: ") as info:
            typed_config(ShapeConfig, values, "where")
        assert message in str(info.value) and "\n" not in str(info.value)
    with pytest.raises(PriorError, match="config is"):
        typed_config(ShapeConfig, [1, 2], "where")


# --------------------------------------------------------------------------- validation: whole priors
BUNDLED = ("adrenal", "head-neck-organs", "hippocampus-metaseg", "hippocampus-nisf")


@pytest.fixture(scope="module")
def bundled():
    """``bundled(name)``: a bundled prior, loaded once."""
    cache = {}

    def get(name):
        if name not in cache:
            cache[name] = load_prior(name)
        return cache[name]

    return get


@pytest.mark.parametrize("name", sorted(bundled_priors()))
def test_bundled_priors_verify(name):
    line = verify_prior(name)
    assert line == f"{resolve(name)}: OK ({bundled_priors()[name]['task']}, " \
                   f"{sum(t.numel() for t in load_prior(name).tensors.values())} values)"


def test_open_prior_builds_what_the_engine_runs(bundled):
    assert set(BUNDLED) <= set(bundled_priors())
    assert isinstance(open_prior("adrenal"), ShapeCompleter) and open_prior("adrenal").encoder is not None
    seg = open_prior("hippocampus-metaseg")
    assert isinstance(seg, metaseg.MetaSegSegmenter) and seg.prior.path == resolve("hippocampus-metaseg")
    seg = open_prior(resolve("hippocampus-nisf"))
    assert isinstance(seg, nisf.NISFSegmenter) and seg.procedure == "fast"


def test_priors_built_by_the_test_suite_verify(tiny_prior, tmp_path):
    values = sum(t.numel() for t in load_prior(tiny_prior).tensors.values())
    assert verify_prior(tiny_prior) == f"{tiny_prior}: OK ({TASK}, {values} values)"
    assert verify_prior(_shape_prior(tmp_path, ShapeConfig(hidden_features=8, hidden_layers=1), "small"))


def _strainer_priors(directory):
    """A STRAINER shape prior and a STRAINER MetaSeg prior, as the strainer module writes them
    (untrained: fresh networks, zero step sizes)."""
    fit = strainer.EncoderFit({}, 1, 0.1)
    meta = strainer.strainer_metadata(strainer.StrainerSettings(), fit, ["a", "b"])
    torch.manual_seed(0)
    cfg = shape_strainer.shape_config(hidden_features=8, hidden_layers=1)
    init = {k: v.detach() for k, v in OccupancyINR(cfg).named_parameters()}
    shape = save_prior(directory / "strainer-shape.safetensors",
                       initialisation_tensors(init, strainer.zero_step_sizes(init)),
                       prior_metadata(cfg, name="strainer-shape", **meta))
    cfg = segmentation_strainer.segmentation_config(hidden_features=8, hidden_layers=1)
    init = {k: v.detach() for k, v in metaseg.MetaSegINR(cfg).named_parameters()}
    sizes = strainer.zero_step_sizes({k: v for k, v in init.items() if k.startswith("siren.")})
    stats = ("mean", "std", "median", "zero_fraction")
    reference = IntensityReference(dict.fromkeys(stats, 0.5), dict.fromkeys(stats, 0.1))
    seg = save_prior(directory / "strainer-seg.safetensors", initialisation_tensors(init, sizes),
                     metaseg.prior_metadata(cfg, reference, ["background", "left", "right"], name="strainer-seg",
                                            **meta))
    return shape, seg


def test_strainer_priors_verify_and_are_checked(tmp_path):
    shape, seg = _strainer_priors(tmp_path)
    assert f"OK ({TASK}," in verify_prior(shape)
    assert f"OK ({METASEG_TASK}," in verify_prior(seg)
    assert open_prior(seg).cfg.decoder_init == "least_squares"
    prior = load_prior(seg)
    for change, message in [({"decoder_init": "ridge"}, "config.decoder_init 'ridge'"),
                            ({"algorithm": "strainer2"}, "config.algorithm 'strainer2'"),
                            ({"default_steps": "10"}, "config.default_steps")]:
        bad = save_prior(tmp_path / "bad.safetensors", prior.tensors,
                         {**prior.metadata, "config": {**prior.metadata["config"], **change}})
        with pytest.raises(PriorError, match=message):
            verify_prior(bad)


def _config(**values):
    return lambda meta, tensors: ({**meta, "config": {**meta["config"], **values}}, tensors)


def _meta(**values):
    return lambda meta, tensors: ({**meta, **values}, tensors)


def _without(key):
    return lambda meta, tensors: ({k: v for k, v in meta.items() if k != key}, tensors)


def _architecture(**values):
    return lambda meta, tensors: ({**meta, "architecture": {**meta["architecture"], **values}}, tensors)


def _intensity(part, **values):
    def change(meta, tensors):
        intensity = copy.deepcopy(meta["intensity"])
        intensity[part].update(values)
        intensity[part] = {k: v for k, v in intensity[part].items() if v is not None}
        return {**meta, "intensity": intensity}, tensors

    return change


def _drop_tensors(prefix):
    return lambda meta, tensors: (meta, {k: v for k, v in tensors.items() if not k.startswith(prefix)})


def _narrow_tensor(key):
    return lambda meta, tensors: (meta, {**tensors, key: tensors[key][..., :-1].clone()})


def _int_tensor(key):
    return lambda meta, tensors: (meta, {**tensors, key: tensors[key].round().to(torch.int64)})


ENCODER_WEIGHT = "encoder.unet.model.0.conv.unit0.conv.weight"
# (bundled prior, one change, what the message says): each used to verify OK, and most then failed
# with a KeyError, TypeError, AttributeError, ValueError or ZeroDivisionError when used.
BAD_PRIORS = [
    ("adrenal", _without("task"), "the metadata names no task"),
    ("adrenal", _meta(task="segmentation"), "'segmentation' prior, a task this engine does not know"),
    ("adrenal", _meta(task=5), "task is 5 (integer)"),
    ("adrenal", _meta(format_version="1"), 'format_version is "1" (string), not an integer'),
    ("adrenal", _meta(config=[1]), "config is [1] (list); it must be an object"),
    ("adrenal", _config(default_steps="abc"), 'config.default_steps is "abc" (string); it must be an integer >= 0'),
    ("adrenal", _config(default_steps=-1), "config.default_steps is -1 (integer); it must be >= 0"),
    ("adrenal", _config(default_steps=2.5), "config.default_steps is 2.5 (number); it must be an integer"),
    ("adrenal", _config(scale_mm="32"), 'config.scale_mm is "32" (string); it must be a finite number > 0'),
    ("adrenal", _config(scale_mm=0), "config.scale_mm is 0 (integer); it must be > 0"),
    ("adrenal", _config(scale_mm=math.nan), "config.scale_mm is NaN"),
    ("adrenal", _config(hidden_features=64.5), "config.hidden_features is 64.5"),
    ("adrenal", _config(hidden_features=True), "config.hidden_features is true"),
    ("adrenal", _config(hidden_features=32), "architectures differ"),
    ("adrenal", _config(omega_0=0), "config.omega_0 is 0"),
    ("adrenal", _config(mixed_orientation_prob=1.5), "config.mixed_orientation_prob is 1.5"),
    ("adrenal", _config(encoder_channels="16,32,64"), "config.encoder_channels is \"16,32,64\""),
    ("adrenal", _config(encoder_channels=[16]), "config.encoder_channels [16] does not make a context encoder"),
    ("adrenal", _config(encoder_channels=[16, 32, 48]), "context encoder does not match"),
    ("adrenal", _config(algorithm="reptile"), "config.algorithm 'reptile'"),
    ("adrenal", _meta(frame="ras"), 'frame is "ras" (string)'),
    ("adrenal", _meta(frame={"convention": "lps; v0"}), "coordinate convention"),
    ("adrenal", _meta(architecture=["x"]), "architecture is"),
    ("adrenal", _architecture(evidence="slice-evidence v1"), "use a prior trained with this engine version"),
    ("adrenal", _meta(classes=5), "classes is 5 (integer)"),
    ("adrenal", _meta(description=["x"]), "description is"),
    ("adrenal", _drop_tensors("init.siren.out.bias"), "lacks tensor 'init.siren.out.bias'"),
    ("adrenal", _drop_tensors("step_size.alpha"), "lacks tensor 'step_size.alpha'"),
    ("adrenal", _narrow_tensor("step_size.siren.out.weight"), "tensor step_size.siren.out.weight has shape"),
    ("adrenal", _narrow_tensor(ENCODER_WEIGHT), "context encoder does not match"),
    ("adrenal", _drop_tensors("encoder."), "context encoder does not match"),
    ("adrenal", _int_tensor("init.beta"), "tensor init.beta is torch.int64, not float32"),
    ("hippocampus-metaseg", _config(num_classes="3"), 'config.num_classes is "3"'),
    ("hippocampus-metaseg", _config(num_classes=1), "config.num_classes is 1 (integer); it must be >= 2"),
    ("hippocampus-metaseg", _config(num_classes=4), "config.num_classes (4) and architecture.num_classes (3) differ"),
    ("hippocampus-metaseg", _config(fit_points=0), "config.fit_points is 0"),
    ("hippocampus-metaseg", _config(decoder_init="random"), "config.decoder_init 'random'"),
    ("hippocampus-metaseg", _meta(classes=["background", "hippocampus"]), "classes has 2 names; the network has 3"),
    ("hippocampus-metaseg", _meta(classes=[0, 1, 2]), "classes is [0, 1, 2] (list); it must be a list of class names"),
    ("hippocampus-metaseg", _meta(classes=["background", "a", "a"]), "repeats a name"),
    ("hippocampus-metaseg", _meta(class_colors=[[0, 0, 0], [1, 1, 1]]), "class_colors is"),
    ("hippocampus-metaseg", _meta(class_colors=[[0, 0, 0], [1, 1, "1"], [0, 1, 0]]), "class_colors is"),
    ("hippocampus-metaseg", _meta(class_colors=[[0, 0, 0], [1, 1, 2], [0, 1, 0]]), "class_colors is"),
    ("hippocampus-metaseg", _meta(intensity=[0.5]), "intensity is [0.5] (list)"),
    ("hippocampus-metaseg", _intensity("std", median=None), "intensity.std.median is missing"),
    ("hippocampus-metaseg", _intensity("mean", mean="high"), 'intensity.mean.mean is "high" (string)'),
    ("hippocampus-metaseg", _meta(refinement="yes"), 'refinement is "yes" (string)'),
    ("hippocampus-metaseg", _drop_tensors("refine.head.predictor"), "the boundary refiner does not match this engine"),
    ("hippocampus-metaseg", _drop_tensors("refine."), "holds no refine.* tensors"),
    ("hippocampus-metaseg", _narrow_tensor("init.head.2.weight"), "tensor init.head.2.weight has shape"),
    ("hippocampus-metaseg", _drop_tensors("step_size.siren.out"), "lacks tensor 'step_size.siren.out"),
    ("hippocampus-nisf", _drop_tensors("step_size."), "no meta-learned step sizes"),
    ("hippocampus-nisf", _drop_tensors("fast.latent"), "tensor fast.latent is missing"),
    ("hippocampus-nisf", _narrow_tensor("paper.intensity.weight"), "tensor paper.intensity.weight has shape (1, 127)"),
    ("hippocampus-nisf", _config(fast_adapts="weights"), "config.fast_adapts 'weights'"),
    ("hippocampus-nisf", _config(paper_steps="400"), 'config.paper_steps is "400"'),
    ("hippocampus-nisf", _config(latent_size=0), "config.latent_size is 0"),
    ("hippocampus-nisf", _config(sigma_0=-10.0), "config.sigma_0 is -10.0"),
    ("hippocampus-nisf", _meta(refinement={"procedure": "paper"}), "holds no refine.* tensors"),
    ("hippocampus-nisf", _meta(refinement={"procedure": 2}), "refinement.procedure is 2"),
]


def _bad_prior(directory, bundled, name, change):
    prior = bundled(name)
    meta, tensors = change(copy.deepcopy(prior.metadata), dict(prior.tensors))
    path = directory / f"bad-{name}.safetensors"
    if "task" in meta and all(t.dtype == torch.float32 for t in tensors.values()):
        return save_prior(path, tensors, meta)
    # save_prior writes float32 tensors and refuses metadata without a task: write such files directly
    save_file({k: v.contiguous() for k, v in tensors.items()}, str(path), metadata={"inr_engine": json.dumps(meta)})
    return path


@pytest.mark.parametrize("name, change, message", BAD_PRIORS,
                         ids=[f"{n}-{m[:40]}" for n, _, m in BAD_PRIORS])
def test_verify_refuses_a_bad_prior_in_one_line(tmp_path, bundled, name, change, message):
    path = _bad_prior(tmp_path, bundled, name, change)
    with pytest.raises(PriorError) as info:
        verify_prior(path)
    text = str(info.value)
    assert message in text, text
    assert str(path) in text and "\n" not in text and len(text) < 500, text


def _engine_loads(path, task):
    """Every way the CLI and the Slicer logic load a prior of ``task`` (each a callable)."""

    def refined(segmenter):
        if "refinement" in segmenter.prior.metadata:
            refinement.load_refiner(segmenter)
        return segmenter

    if task == TASK:
        return [lambda: ShapeCompleter.from_prior(load_prior(path, task=TASK))]
    if task == METASEG_TASK:
        return [lambda: refined(load_segmenter("metaseg", str(path)))]
    return [lambda procedure=procedure: refined(load_segmenter("nisf", str(path), procedure=procedure))
            for procedure in nisf.PROCEDURES]


@pytest.mark.parametrize("name, change, message", BAD_PRIORS,
                         ids=[f"{n}-{m[:40]}" for n, _, m in BAD_PRIORS])
def test_the_engine_refuses_a_bad_prior_with_a_prior_error(tmp_path, bundled, name, change, message):
    """Loading as complete/segment and the Slicer modules do: a PriorError (one line), never another exception."""
    path = _bad_prior(tmp_path, bundled, name, change)
    errors = []
    for load in _engine_loads(path, bundled(name).task):
        try:
            load()
        except PriorError as exc:
            errors.append(str(exc))
    assert errors, "the engine used a prior that verify refuses"
    assert all("\n" not in e and str(path) in e for e in errors), errors


def test_read_metadata_refuses_bad_metadata_and_write_manifest_lists_checksums_only(tmp_path, bundled):
    path = _bad_prior(tmp_path, bundled, "adrenal", _config(default_steps="abc"))
    with pytest.raises(PriorError, match="config.default_steps"):
        read_metadata(path)
    write_manifest(tmp_path)  # a manifest records checksums; loading the prior refuses it
    assert json.loads((tmp_path / MANIFEST).read_text())["priors"][path.stem]["sha256"] == sha256(path)
    with pytest.raises(PriorError, match="config.default_steps"):
        load_prior(path)


# --------------------------------------------------------------------------- set_metadata validates
def _copy_bundled(directory, name):
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.safetensors"
    shutil.copy(resolve(name), path)
    write_manifest(directory)
    return path


@pytest.mark.parametrize("changes, message", [
    ({"classes": 5}, "classes is 5 (integer)"),
    ({"classes": "background, left"}, "classes is"),
    ({"classes": ["background", 1, "right"]}, "classes is"),
    ({"classes": ["background", "left"]}, "classes has 2 names; the network has 3 classes"),
    ({"class_colors": "red"}, "class_colors is"),
    ({"class_colors": [[0, 0, 0], [1, 0, 0], [0, 1, "0"]]}, "class_colors is"),
    ({"class_colors": [[0, 0, 0], [1, 0, 0]]}, "class_colors is"),
    ({"class_colors": [[0, 0, 0], [1, 0, 0], [0, 1, -0.5]]}, "class_colors is"),
    ({"description": 5}, "description is 5"),
    ({"name": ["x"]}, "name is"),
    ({"intensity": {"mean": 1}}, "intensity cannot be changed"),
    ({"refinement": "none"}, "refinement cannot be changed"),
    ({"default_steps": '"abc"'}, "config.default_steps = 20"),
    ({"default_steps": 10}, "choose the number of steps when running (--steps)"),
    ({"scale_mm": 16}, "part of the prior's config"),
    ({"config": {"default_steps": 10}}, "cannot be changed"),
    ({"training": {"a": 1}}, "training cannot be changed"),
])
def test_set_metadata_refuses_bad_values_and_leaves_the_file_alone(tmp_path, changes, message):
    path = _copy_bundled(tmp_path / "priors", "hippocampus-metaseg")
    files = {p: p.read_bytes() for p in path.parent.iterdir()}
    with pytest.raises(PriorError) as info:
        set_metadata(path, changes)
    assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert {p: p.read_bytes() for p in path.parent.iterdir()} == files


def test_set_metadata_accepts_good_values_and_the_prior_still_verifies(tmp_path):
    path = _copy_bundled(tmp_path / "priors", "hippocampus-metaseg")
    set_metadata(path, {"classes": ["background", "head", "tail"],
                        "class_colors": [[0, 0, 0], [1, 0.5, 0], [0, 0.5, 1]], "description": "mine",
                        "license": {"name": "CC-BY-4.0"}})
    assert load_prior(path).metadata["classes"] == ["background", "head", "tail"]
    assert "OK (segmentation/metaseg" in verify_prior(path)


def test_known_tasks():
    assert set(KNOWN_TASKS) == {TASK, METASEG_TASK, NISF_TASK}


def test_the_shape_prior_is_chosen_for_the_input():
    from inr_engine.priors import AUTO, shape_prior_for
    from inr_slicer.priors import prior_choices

    small = np.zeros((64, 64, 64), np.uint8)
    small[20:40, 20:40, 20:40:4] = 1
    assert shape_prior_for(small, np.eye(4)) == "adrenal"  # 20 mm, 1 mm isotropic
    assert shape_prior_for(small, np.diag([1.0, 1.0, 2.5, 1.0])) == "head-neck-organs"  # 2.5 mm slices
    large = np.zeros((100, 100, 40), np.uint8)
    large[5:95, 10:60, 0:40:4] = 1
    assert shape_prior_for(large, np.eye(4)) == "head-neck-organs"  # 90 mm
    assert shape_prior_for(large, np.eye(4), "adrenal") == "adrenal"  # a named prior is kept
    assert shape_prior_for(small, np.eye(4), "") == shape_prior_for(small, np.eye(4), AUTO)
    assert prior_choices("shape_completion")[:1] == [AUTO]  # the Slicer modules' default entry
