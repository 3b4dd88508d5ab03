"""Priors: network weights in safetensors, JSON metadata in its header, a SHA256 manifest.

Loading never unpickles anything: safetensors holds raw tensors only. A file that is not a
safetensors file, lacks our metadata, was made for another task, or does not match the
manifest's checksum is refused with :class:`PriorError`.

Listing the bundled priors needs neither PyTorch nor safetensors (they are imported where
tensors are read or written), so the Slicer modules can show them before those are installed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..data import PRIORS_DIR
from ..files import RunOutputs, atomic_output
from ..frames import FRAME_CONVENTION
from .metadata import (
    AUTO,
    LOAD_ADVICE,
    PriorError,
    check_metadata,
    classes_problem,
    default_shape_prior,
    error_summary,
    is_int,
    shown,
    typed_config,
)

if TYPE_CHECKING:
    import torch

PRIOR_FORMAT = "inr-engine-prior"
PRIOR_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLED_DIR = PRIORS_DIR
MAX_PRIOR_BYTES = 512 * 1024 * 1024


@dataclass
class Prior:
    metadata: dict[str, Any]
    tensors: dict[str, torch.Tensor]
    path: Path

    @property
    def task(self) -> str:
        return self.metadata["task"]

    @property
    def name(self) -> str:
        return self.metadata.get("name", self.path.stem)


def sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def save_prior(path: str | Path, tensors: dict[str, torch.Tensor], metadata: dict[str, Any]) -> Path:
    """Write a prior atomically (temporary file, then rename) and return its path."""
    import torch
    from safetensors.torch import save_file

    path = Path(path)
    meta = {"format": PRIOR_FORMAT, "format_version": PRIOR_FORMAT_VERSION, **metadata}
    if "task" not in meta:
        raise ValueError("prior metadata must name its task")
    tensors = {k: v.detach().to("cpu", torch.float32).contiguous() for k, v in tensors.items()}
    with atomic_output(path) as tmp:
        save_file(tensors, tmp, metadata={"inr_engine": json.dumps(meta, sort_keys=True)})
    return path


def write_manifest(directory: str | Path, descriptions: dict[str, str] | None = None) -> Path:
    """(Re)write ``manifest.json`` listing every prior in ``directory`` with its SHA256."""
    directory = Path(directory)
    text = _manifest_text(directory, descriptions)
    with RunOutputs() as run:
        out = run.add_output("the manifest", directory / MANIFEST)
        run.stage(out).write_text(text)
        run.commit()
    return out


def _manifest_text(directory: Path, descriptions: dict[str, str] | None = None,
                   replaced: dict[str, Path] | None = None) -> str:
    """The manifest of the priors in ``directory``; ``replaced`` maps a file name to the file that
    will replace it (a staged new version), whose checksum is recorded instead."""
    if not directory.is_dir():
        raise PriorError(f"{directory} is not a folder: give the folder that holds the priors")
    files = sorted(p for p in directory.glob("*.safetensors") if p.is_file())
    if not files:
        raise PriorError(f"{directory} holds no .safetensors priors: nothing to list in a manifest")
    descriptions, replaced = descriptions or {}, replaced or {}
    entries = {}
    for file in files:
        source = replaced.get(file.name, file)
        meta = _read_header(source)  # checksums only: loading checks the rest
        entries[file.stem] = {
            "file": file.name,
            "sha256": sha256(source),
            "task": meta.get("task"),
            "description": descriptions.get(file.stem, meta.get("description", "")),
        }
    return json.dumps({"format": PRIOR_FORMAT, "priors": entries}, indent=2) + "\n"


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a prior file, validated (:func:`check_metadata`); raises :class:`PriorError` for
    anything else."""
    path = Path(path)
    meta = _read_header(path)
    check_metadata(meta, path)
    return meta


def _read_header(path: Path) -> dict[str, Any]:
    """The metadata of a prior file, checked only for being an inr-engine prior of a known format."""
    from safetensors import SafetensorError, safe_open

    if not path.is_file():
        raise PriorError(f"prior file not found: {path}")
    if path.stat().st_size > MAX_PRIOR_BYTES:
        raise PriorError(f"{path} is larger than {MAX_PRIOR_BYTES >> 20} MB; not a prior of this engine")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PriorError(f"{path} is not a readable safetensors prior ({error_summary(exc)})") from exc
    try:
        meta = json.loads(header["inr_engine"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise PriorError(f"{path} is a safetensors file but not an inr-engine prior (no metadata)") from exc
    if not isinstance(meta, dict) or meta.get("format") != PRIOR_FORMAT:
        found = meta.get("format") if isinstance(meta, dict) else type(meta).__name__
        raise PriorError(f"{path} is not an inr-engine prior (format {found!r})")
    version = meta.get("format_version", 0)
    if not is_int(version):
        raise PriorError(f"{path}: format_version is {shown(version)}, not an integer: the file is damaged; "
                         "re-create the prior or restore the original file")
    if version > PRIOR_FORMAT_VERSION:
        raise PriorError(f"{path} needs a newer inr-engine (prior format {version})")
    return meta


def _manifest_entry(path: Path) -> dict[str, Any] | None:
    manifest = path.parent / MANIFEST
    if not manifest.is_file():
        return None
    try:
        entries = json.loads(manifest.read_text())["priors"]
    except (json.JSONDecodeError, KeyError) as exc:
        raise PriorError(f"manifest {manifest} is unreadable: {exc}") from exc
    return next((e for e in entries.values() if e.get("file") == path.name), None)


def bundled_priors(task: str | None = None) -> dict[str, dict[str, Any]]:
    """Name -> manifest entry of the priors shipped with the engine (only ``task``'s, if given)."""
    manifest = BUNDLED_DIR / MANIFEST
    if not manifest.is_file():
        return {}
    entries = json.loads(manifest.read_text())["priors"]
    return {name: e for name, e in entries.items() if task is None or e["task"] == task}


def resolve(name_or_path: str | Path) -> Path:
    """A bundled prior's name, or a path to a prior file."""
    bundled = bundled_priors()
    if str(name_or_path) in bundled:
        return BUNDLED_DIR / bundled[str(name_or_path)]["file"]
    path = Path(name_or_path)
    if path.is_file():
        if not os.access(path, os.R_OK):
            raise PriorError(f"{path} cannot be read (permission denied)")
        return path
    names = ", ".join(sorted(bundled)) or "none"
    raise PriorError(f"no prior {str(name_or_path)!r}: not a file, and not a bundled prior ({names})")



def shape_prior_for(array, affine, prior: str = AUTO) -> str:
    """``prior``, or for ``""`` or ``auto`` the bundled shape prior chosen for this sparse label map
    (:func:`~.metadata.default_shape_prior`: from its grid's spacing and its annotation's extent)."""
    import numpy as np

    from ..frames import foreground_box, spacing

    if prior not in ("", AUTO):
        return prior
    array = np.asarray(array)
    box = foreground_box(array) or tuple(slice(0, n) for n in array.shape)
    steps = spacing(affine)
    return default_shape_prior(steps, [(b.stop - b.start) * s for b, s in zip(box, steps)])

def prior_config(prior: Prior, task: str, config_cls: type, method: str):
    """The prior's configuration as ``config_cls``, after checking its metadata, task and coordinate frame.

    The values must have the types ``config_cls`` declares (see :func:`typed_config`); unknown keys
    (from a newer engine) are ignored; missing ones take the class's defaults.
    """
    check_metadata(prior.metadata, prior.path)
    if prior.task != task:
        raise PriorError(f"{prior.path} is a {prior.task!r} prior; {method} needs a {task!r} prior")
    frame = prior.metadata.get("frame", {})
    if frame.get("convention") != FRAME_CONVENTION:
        raise PriorError(f"{prior.path} uses coordinate convention {frame}, not {FRAME_CONVENTION!r}: "
                         "use a prior trained with this engine version")
    cfg = typed_config(config_cls, prior.metadata.get("config", {}), prior.path)
    num_classes = getattr(cfg, "num_classes", None)
    if num_classes is not None:
        problem = classes_problem(prior.metadata, num_classes)
        if problem:
            raise PriorError(f"{prior.path}: {problem}; {LOAD_ADVICE}")
    return cfg


Tensors = dict[str, "torch.Tensor"]


def initialisation_tensors(init: Tensors, step_sizes: Tensors) -> Tensors:
    """The tensors of a prior that is an initialisation: ``init.<name>`` for every parameter and
    ``step_size.<name>`` (the inner-loop step sizes, broadcast to the parameter's shape) for
    each parameter the test-time fit changes."""
    out = {f"init.{k}": v.detach() for k, v in init.items()}
    out.update({f"step_size.{k}": s.detach().expand_as(init[k]).clone() for k, s in step_sizes.items()})
    return out




EDITABLE_METADATA = ("description", "classes", "class_colors", "name", "license")  # what `priors set` changes


def set_metadata(name_or_path: str | Path, changes: dict[str, Any]) -> Path:
    """Change a prior's descriptive metadata (:data:`EDITABLE_METADATA`) in place, keeping its
    tensors; the manifest beside it, if any, gets the new checksum. The prior and its manifest are
    replaced together, or neither.

    The changed metadata must pass :func:`check_metadata`; otherwise :class:`PriorError` and the
    file is left as it was. A bundled prior's name is refused: the installed package is not edited.
    """
    if str(name_or_path) in bundled_priors():
        raise PriorError(f"{name_or_path} is a bundled prior, part of the installed engine: copy its file "
                         f"({resolve(name_or_path)}) and change the copy")
    prior = load_prior(name_or_path)
    config = prior.metadata.get("config", {})
    in_config = sorted(set(changes) & set(config))
    if in_config:
        key = in_config[0]
        hint = "; choose the number of steps when running (--steps)" if key == "default_steps" else ""
        raise PriorError(f"{key} is part of the prior's config (config.{key} = {json.dumps(config[key])}), which "
                         f"cannot be changed: a top-level {key} would be ignored{hint}")
    refused = sorted(set(changes) - set(EDITABLE_METADATA))
    if refused:
        raise PriorError(f"{', '.join(refused)} cannot be changed: priors set changes {', '.join(EDITABLE_METADATA)}")
    metadata = {**prior.metadata, **changes}
    check_metadata(metadata, prior.path, advice="nothing was changed")
    manifest = prior.path.parent / MANIFEST
    with RunOutputs() as run:
        run.add_output("the prior", prior.path)
        if manifest.is_file():
            run.add_output("its manifest", manifest)
        staged = save_prior(run.stage(prior.path), prior.tensors, metadata)
        if manifest.is_file():
            try:
                entries = json.loads(manifest.read_text())["priors"]
                descriptions = {name: e.get("description", "") for name, e in entries.items()}
            except (json.JSONDecodeError, KeyError, TypeError, AttributeError) as exc:
                raise PriorError(f"manifest {manifest} is unreadable ({exc}); nothing was changed") from exc
            text = _manifest_text(prior.path.parent, descriptions, {prior.path.name: staged})
            run.stage(manifest).write_text(text)
        run.commit()
    return prior.path



def build_network(prior: Prior, network_cls: type, cfg: Any):
    """``network_cls(cfg)`` for ``prior``; a configuration that builds no network is a :class:`PriorError`."""
    try:
        return network_cls(cfg)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as exc:
        raise PriorError(f"{prior.path}: its config does not build a network ({error_summary(exc)})") from exc



def load_prior(name_or_path: str | Path, task: str | None = None) -> Prior:
    """Load and verify a prior (format, manifest checksum, metadata as :func:`check_metadata` says,
    float32 finite tensors); ``task`` (e.g. ``"shape_completion"``) refuses priors of other tasks.

    Whether the tensors build the network the metadata describes is checked by the methods'
    ``from_prior`` (all of it at once: :func:`inr_engine.cli.prior_check.open_prior`).
    """
    import torch
    from safetensors import SafetensorError, safe_open

    path = resolve(name_or_path)
    meta = _read_header(path)
    entry = _manifest_entry(path)
    if entry is not None and entry.get("sha256") != sha256(path):
        raise PriorError(f"{path} does not match the SHA256 in its manifest: the file is corrupted or was altered")
    check_metadata(meta, path)
    if task is not None and meta["task"] != task:
        raise PriorError(f"{path} is a {meta['task']!r} prior; this needs a {task!r} prior (see 'inr-engine priors "
                         "list')")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PriorError(f"{path}: tensors unreadable ({error_summary(exc)})") from exc
    other = sorted(k for k, t in tensors.items() if t.dtype != torch.float32)
    if other:
        raise PriorError(f"{path}: tensor {other[0]} is {tensors[other[0]].dtype}, not float32: not a prior written "
                         "by this engine")
    bad = [k for k, t in tensors.items() if not torch.isfinite(t).all()]
    if bad:
        raise PriorError(f"{path}: tensors {bad[:3]} hold NaN or infinite values (corrupted or diverged prior)")
    return Prior(meta, tensors, path)
