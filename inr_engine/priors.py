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
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import atomic_output
from .frames import FRAME_CONVENTION

if TYPE_CHECKING:
    import torch

PRIOR_FORMAT = "inr-engine-prior"
PRIOR_FORMAT_VERSION = 1
MANIFEST = "manifest.json"
BUNDLED_DIR = Path(__file__).resolve().parent / "data" / "priors"
MAX_PRIOR_BYTES = 512 * 1024 * 1024

# What a prior is for (its metadata's "task"), and the bundled prior each method uses by default.
SHAPE_COMPLETION_TASK = "shape_completion"
SEGMENTATION_TASKS = {"metaseg": "segmentation/metaseg", "nisf": "segmentation/nisf"}  # method -> task
DEFAULT_PRIORS = {"shape_completion": "adrenal", "metaseg": "hippocampus-metaseg", "nisf": "hippocampus-nisf"}


class PriorError(ValueError):
    """A prior file that cannot be used."""


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
    descriptions = descriptions or {}
    entries = {}
    for file in sorted(directory.glob("*.safetensors")):
        meta = read_metadata(file)
        entries[file.stem] = {
            "file": file.name,
            "sha256": sha256(file),
            "task": meta["task"],
            "description": descriptions.get(file.stem, meta.get("description", "")),
        }
    out = directory / MANIFEST
    with atomic_output(out) as tmp:
        Path(tmp).write_text(json.dumps({"format": PRIOR_FORMAT, "priors": entries}, indent=2) + "\n")
    return out


def read_metadata(path: str | Path) -> dict[str, Any]:
    """Metadata of a prior file, validated; raises :class:`PriorError` for anything else."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise PriorError(f"prior file not found: {path}")
    if path.stat().st_size > MAX_PRIOR_BYTES:
        raise PriorError(f"{path} is larger than {MAX_PRIOR_BYTES >> 20} MB; not a prior of this engine")
    try:
        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PriorError(f"{path} is not a readable safetensors prior ({exc})") from exc
    try:
        meta = json.loads(header["inr_engine"])
    except (KeyError, json.JSONDecodeError) as exc:
        raise PriorError(f"{path} is a safetensors file but not an inr-engine prior (no metadata)") from exc
    if meta.get("format") != PRIOR_FORMAT:
        raise PriorError(f"{path} is not an inr-engine prior (format {meta.get('format')!r})")
    if meta.get("format_version", 0) > PRIOR_FORMAT_VERSION:
        raise PriorError(f"{path} needs a newer inr-engine (prior format {meta['format_version']})")
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
        return path
    names = ", ".join(sorted(bundled)) or "none"
    raise PriorError(f"no prior {str(name_or_path)!r}: not a file, and not a bundled prior ({names})")


def prior_config(prior: Prior, task: str, config_cls: type, method: str):
    """The prior's configuration as ``config_cls``, after checking its task and coordinate frame.

    Unknown keys (from a newer engine) are ignored; missing ones take the class's defaults.
    """
    if prior.task != task:
        raise PriorError(f"{prior.path} is a {prior.task!r} prior; {method} needs a {task!r} prior")
    frame = prior.metadata.get("frame", {})
    if frame.get("convention") != FRAME_CONVENTION:
        raise PriorError(f"{prior.path} uses coordinate convention {frame}, not {FRAME_CONVENTION!r}")
    known = config_cls.__dataclass_fields__
    return config_cls(**{k: v for k, v in prior.metadata.get("config", {}).items() if k in known})


Tensors = dict[str, "torch.Tensor"]


def initialisation_tensors(init: Tensors, step_sizes: Tensors) -> Tensors:
    """The tensors of a prior that is an initialisation: ``init.<name>`` for every parameter and
    ``step_size.<name>`` (the inner-loop step sizes, broadcast to the parameter's shape) for
    each parameter the test-time fit changes."""
    out = {f"init.{k}": v.detach() for k, v in init.items()}
    out.update({f"step_size.{k}": s.detach().expand_as(init[k]).clone() for k, s in step_sizes.items()})
    return out


# Metadata the engine rebuilds a network from: fixed for the life of a prior file.
STRUCTURAL_METADATA = ("format", "format_version", "task", "frame", "config", "architecture")


def set_metadata(name_or_path: str | Path, changes: dict[str, Any]) -> Path:
    """Change a prior's descriptive metadata (e.g. ``description``, ``classes``, ``class_colors``)
    in place, keeping its tensors; the manifest beside it, if any, gets the new checksum."""
    fixed = sorted(set(changes) & set(STRUCTURAL_METADATA))
    if fixed:
        raise PriorError(f"{', '.join(fixed)} cannot be changed: the network is rebuilt from them")
    prior = load_prior(name_or_path)
    metadata = {**prior.metadata, **changes}
    _check_classes(metadata)
    save_prior(prior.path, prior.tensors, metadata)
    manifest = prior.path.parent / MANIFEST
    if manifest.is_file():
        entries = json.loads(manifest.read_text())["priors"]
        write_manifest(prior.path.parent, {name: e.get("description", "") for name, e in entries.items()})
    return prior.path


def _check_classes(metadata: dict[str, Any]) -> None:
    classes, colors = metadata.get("classes"), metadata.get("class_colors")
    num = metadata.get("architecture", {}).get("num_classes") or metadata.get("config", {}).get("num_classes")
    if classes is not None and num is not None and len(classes) != num:
        raise PriorError(f"classes has {len(classes)} names; the network has {num} classes")
    if colors is not None:
        count = len(classes) if classes is not None else num
        valid = all(len(c) == 3 and all(0.0 <= float(v) <= 1.0 for v in c) for c in colors)
        if not valid or (count is not None and len(colors) != count):
            raise PriorError(f"class_colors must hold one [r, g, b] (0 to 1) per class ({count}), background first")


def load_prior(name_or_path: str | Path, task: str | None = None) -> Prior:
    """Load and verify a prior; ``task`` (e.g. ``"shape_completion"``) refuses priors of other tasks."""
    import torch
    from safetensors import SafetensorError, safe_open

    path = resolve(name_or_path)
    meta = read_metadata(path)
    entry = _manifest_entry(path)
    if entry is not None and entry["sha256"] != sha256(path):
        raise PriorError(f"{path} does not match the SHA256 in its manifest: the file is corrupted or was altered")
    if task is not None and meta["task"] != task:
        raise PriorError(f"{path} is a {meta['task']!r} prior, but {task!r} needs a {task!r} prior")
    try:
        with safe_open(str(path), framework="pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as exc:
        raise PriorError(f"{path}: tensors unreadable ({exc})") from exc
    bad = [k for k, t in tensors.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise PriorError(f"{path}: tensors {bad[:3]} hold NaN or infinite values (corrupted or diverged prior)")
    return Prior(meta, tensors, path)
