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
import math
import os
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .files import RunOutputs, atomic_output
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
KNOWN_TASKS = (SHAPE_COMPLETION_TASK, *SEGMENTATION_TASKS.values())


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
    if not _is_int(version):
        raise PriorError(f"{path}: format_version is {_show(version)}, not an integer: the file is damaged; "
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
        problem = _classes_problem(prior.metadata, num_classes)
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


# --------------------------------------------------------------------------- metadata validation
LOAD_ADVICE = "this prior cannot be used: re-create it with this engine, or restore the original file"


@dataclass(frozen=True)
class Bound:
    """The range of a numeric value: ``low`` (excluded if ``low_open``) to ``high``, ends optional."""

    low: float | None = None
    high: float | None = None
    low_open: bool = False

    def holds(self, value: float) -> bool:
        if self.low is not None and (value <= self.low if self.low_open else value < self.low):
            return False
        return self.high is None or value <= self.high

    def __str__(self) -> str:
        if self.low is not None and self.high is not None:
            return f"from {self.low:g} to {self.high:g}"
        if self.low is not None:
            return f"{'>' if self.low_open else '>='} {self.low:g}"
        return "" if self.high is None else f"<= {self.high:g}"


_COUNT, _POSITIVE, _SIZE = Bound(0), Bound(0, low_open=True), Bound(1)
_TUPLE_OF_INTS = tuple[int, ...]

# Config values the engine relies on, whichever method's config holds them: name -> (type, range).
# The methods' config classes declare the same types (a test checks it); values outside the range
# would fail, or silently misbehave, when a network is built or fitted.
CONFIG_VALUES: dict[str, tuple[Any, Bound | None]] = {
    "default_steps": (int, _COUNT),  # test-time steps when the user gives none
    "paper_steps": (int, _COUNT),
    "inner_steps": (int, _COUNT),
    "num_classes": (int, Bound(2)),  # background and at least one structure
    "hidden_features": (int, _SIZE),
    "hidden_layers": (int, _COUNT),
    "latent_size": (int, _SIZE),
    "context_points": (int, _SIZE),
    "target_points": (int, _SIZE),
    "fit_points": (int, _SIZE),
    "points": (int, _SIZE),
    "every_min": (int, _SIZE),
    "every_max": (int, _SIZE),
    "held_out_slices": (int, _COUNT),
    "encoder_channels": (_TUPLE_OF_INTS, _SIZE),  # the range applies to each entry
    "scale_mm": (float, _POSITIVE),  # the network frame: u = (ras - centre) / scale_mm
    "encoder_pitch_mm": (float, _POSITIVE),
    "margin_mm": (float, _COUNT),
    "omega_0": (float, _POSITIVE),
    "first_omega_0": (float, _POSITIVE),
    "sigma_0": (float, _POSITIVE),
    "mixed_orientation_prob": (float, Bound(0, 1)),
    "acquisition_axis_prob": (float, Bound(0, 1)),
    "inner_lr": (float, None),
    "weights_inner_lr": (float, None),
    "adam_lr": (float, _COUNT),
    "fit_lr": (float, _COUNT),
    "latent_lr": (float, _COUNT),
    "weight_decay": (float, _COUNT),
    "latent_decay": (float, _COUNT),
    "intensity_weight": (float, _COUNT),
    "algorithm": (str, None),
    "decoder_init": (str, None),
    "fast_adapts": (str, None),
}

# Top-level descriptive metadata the engine and the Slicer modules read: name -> type.
DESCRIPTIVE_TYPES = {"name": str, "description": str}
INTENSITY_STATISTICS = ("mean", "std", "median", "zero_fraction")  # as inr_engine.intensity.STATISTICS


def error_summary(exc: BaseException, limit: int = 240) -> str:
    """``exc``'s message on one line (PyTorch's state-dict errors span several), at most ``limit`` characters."""
    text = " ".join(line.strip() for line in str(exc).splitlines() if line.strip()) or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def build_network(prior: Prior, network_cls: type, cfg: Any):
    """``network_cls(cfg)`` for ``prior``; a configuration that builds no network is a :class:`PriorError`."""
    try:
        return network_cls(cfg)
    except (ValueError, TypeError, RuntimeError, ArithmeticError) as exc:
        raise PriorError(f"{prior.path}: its config does not build a network ({error_summary(exc)})") from exc


def _show(value: Any, limit: int = 60) -> str:
    """A value as it appears in JSON metadata, with its JSON type, shortened to one line."""
    kind = {bool: "true/false", int: "integer", float: "number", str: "string", list: "list", tuple: "list",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text if value is None else f"{text} ({kind})"


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _describe(hint: Any) -> str:
    """What a type annotation asks of a JSON value, in words."""
    names = {int: "an integer", float: "a finite number", bool: "true or false", str: "a string",
             type(None): "null"}
    if hint in names:
        return names[hint]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        return f"a list of {_describe(args[0]).split(' ', 1)[-1]}s" if args else "a list"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in args)
    return getattr(hint, "__name__", str(hint))


def _matches(value: Any, hint: Any) -> bool:
    """Whether a JSON value fits a type annotation (int for int, int or float for float, ...);
    annotations this check does not know accept anything (the class itself then decides)."""
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return _is_int(value)
    if hint is float:
        return _is_number(value) and math.isfinite(value)
    if hint is str:
        return isinstance(value, str)
    if hint is type(None):
        return value is None
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_matches(v, a) for v, a in zip(value, args))
        return not args or all(_matches(v, args[0]) for v in value)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, a) for a in args)
    if origin is dict or hint is dict:
        return isinstance(value, dict)
    return True


def _value_problem(name: str, value: Any, hint: Any, bound: Bound | None) -> str | None:
    """Why ``config.<name> = value`` cannot be used, or None."""
    if not _matches(value, hint):
        return f"config.{name} is {_show(value)}; it must be {_describe(hint)}" + (f" {bound}" if bound else "")
    if bound is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if _is_number(v) and not bound.holds(v)]
        if bad:
            what = "each entry" if isinstance(value, (list, tuple)) else "it"
            return f"config.{name} is {_show(value)}; {what} must be {bound}"
    return None


def config_value_problem(config_cls: type, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``config_cls``'s field ``name`` (its declared type, the range in
    :data:`CONFIG_VALUES`), or None; for ``--config`` values as for a prior's."""
    hint = typing.get_type_hints(config_cls).get(name, Any)
    return _value_problem(name, value, hint, CONFIG_VALUES.get(name, (None, None))[1])


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return f"config is {_show(config)}; it must be an object of named values"
    for name, value in config.items():
        if name in CONFIG_VALUES:
            problem = _value_problem(name, value, *CONFIG_VALUES[name])
            if problem:
                return problem
    return None


def _classes_problem(metadata: dict[str, Any], num_classes: int | None) -> str | None:
    """Why ``classes`` or ``class_colors`` do not fit a network of ``num_classes`` classes (None: any), or None."""
    classes, colors = metadata.get("classes"), metadata.get("class_colors")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
            return f"classes is {_show(classes)}; it must be a list of class names (strings), background first"
        if len(set(classes)) != len(classes):
            return f"classes {_show(classes)} repeats a name; each class needs its own"
        if num_classes is not None and len(classes) != num_classes:
            return f"classes has {len(classes)} names; the network has {num_classes} classes"
    if colors is not None:
        count = len(classes) if classes is not None else num_classes
        valid = isinstance(colors, list) and all(
            isinstance(c, list) and len(c) == 3 and all(_is_number(v) and 0.0 <= v <= 1.0 for v in c) for c in colors)
        if not valid or (count is not None and len(colors) != count):
            return (f"class_colors is {_show(colors)}; it must hold one [r, g, b] (0 to 1) per class"
                    f"{f' ({count})' if count is not None else ''}, background first")
    return None


def _intensity_problem(intensity: Any) -> str | None:
    """Why the intensity statistics of a segmentation prior's training images cannot be used, or None."""
    if not isinstance(intensity, dict):
        return f"intensity is {_show(intensity)}; it must be an object with the training images' mean and std"
    for part in ("mean", "std"):
        values = intensity.get(part)
        if values is None:
            return f"intensity.{part} is missing; it must be an object of {', '.join(INTENSITY_STATISTICS)}"
        if not isinstance(values, dict):
            return f"intensity.{part} is {_show(values)}; it must be an object of {', '.join(INTENSITY_STATISTICS)}"
        for stat in INTENSITY_STATISTICS:
            value = values.get(stat)
            if stat not in values:
                return f"intensity.{part}.{stat} is missing; it must be a finite number"
            if not (_is_number(value) and math.isfinite(value)):
                return f"intensity.{part}.{stat} is {_show(value)}; it must be a finite number"
    return None


def metadata_problem(metadata: dict[str, Any]) -> str | None:
    """The first reason why the engine could not use a prior with this metadata, in one line, or None.

    Checked: a known task; ``config``, ``frame``, ``architecture``, ``intensity`` and ``refinement``
    are objects; the config values the engine relies on have the right type and range
    (:data:`CONFIG_VALUES`); ``num_classes`` agrees between config and architecture; ``classes``
    and ``class_colors`` fit it; ``name`` and ``description`` are strings. Other keys (from a
    newer engine, or added by users) are not checked.
    """
    task = metadata.get("task")
    if task is None:
        return "the metadata names no task"
    if not isinstance(task, str):
        return f"task is {_show(task)}; it must name one of {', '.join(KNOWN_TASKS)}"
    if task not in KNOWN_TASKS:
        return f"it is a {task!r} prior, a task this engine does not know (it runs {', '.join(KNOWN_TASKS)})"
    for key in ("config", "frame", "architecture", "refinement"):
        if key in metadata and not isinstance(metadata[key], dict):
            return f"{key} is {_show(metadata[key])}; it must be an object of named values"
    problem = _config_problem(metadata.get("config", {}))
    if problem:
        return problem
    convention = metadata.get("frame", {}).get("convention")
    if convention is not None and not isinstance(convention, str):
        return f"frame.convention is {_show(convention)}; it must be a string"
    procedure = metadata.get("refinement", {}).get("procedure", "fast")
    if not isinstance(procedure, str):
        return f"refinement.procedure is {_show(procedure)}; it must be a string"
    if "intensity" in metadata:
        problem = _intensity_problem(metadata["intensity"])
        if problem:
            return problem
    for key, kind in DESCRIPTIVE_TYPES.items():
        if key in metadata and not isinstance(metadata[key], kind):
            return f"{key} is {_show(metadata[key])}; it must be a {'string' if kind is str else kind.__name__}"
    in_config = metadata.get("config", {}).get("num_classes")
    in_architecture = metadata.get("architecture", {}).get("num_classes")
    if in_architecture is not None and not _is_int(in_architecture):
        return f"architecture.num_classes is {_show(in_architecture)}; it must be an integer"
    if in_config is not None and in_architecture is not None and in_config != in_architecture:
        return f"config.num_classes ({in_config}) and architecture.num_classes ({in_architecture}) differ"
    return _classes_problem(metadata, in_config if in_config is not None else in_architecture)


def check_metadata(metadata: dict[str, Any], source: str | Path = "prior", advice: str = LOAD_ADVICE) -> None:
    """:class:`PriorError` (one line: ``source``, what is wrong, ``advice``) unless the engine can
    use a prior with this metadata (see :func:`metadata_problem`)."""
    problem = metadata_problem(metadata) if isinstance(metadata, dict) else "the metadata is not an object"
    if problem:
        raise PriorError(f"{source}: {problem}; {advice}")


def typed_config(config_cls: type, values: dict[str, Any], source: str | Path = "prior"):
    """``config_cls`` (a dataclass) from a prior's config values, each checked against the type
    the class declares for it (int for int, an int or a finite float for float, bool for bool, a
    list of ints for ``tuple[int, ...]``, ...) and against :data:`CONFIG_VALUES`' range.

    Keys the class does not have (from a newer engine) are ignored; missing ones take the class's
    defaults. Raises :class:`PriorError` naming the first value that does not fit.
    """
    if not isinstance(values, dict):
        raise PriorError(f"{source}: config is {_show(values)}; it must be an object of named values; {LOAD_ADVICE}")
    hints = typing.get_type_hints(config_cls)
    kwargs = {}
    for f in fields(config_cls):
        if f.name not in values:
            continue
        value, hint = values[f.name], hints.get(f.name, Any)
        problem = config_value_problem(config_cls, f.name, value)
        if problem:
            raise PriorError(f"{source}: {problem}; {LOAD_ADVICE}")
        if hint is float:
            value = float(value)
        elif typing.get_origin(hint) is tuple:
            value = tuple(value)
        kwargs[f.name] = value
    try:
        return config_cls(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PriorError(f"{source}: its config does not make a {config_cls.__name__} ({error_summary(exc)}); "
                         f"{LOAD_ADVICE}") from exc


def load_prior(name_or_path: str | Path, task: str | None = None) -> Prior:
    """Load and verify a prior (format, manifest checksum, metadata as :func:`check_metadata` says,
    float32 finite tensors); ``task`` (e.g. ``"shape_completion"``) refuses priors of other tasks.

    Whether the tensors build the network the metadata describes is checked by the methods'
    ``from_prior`` (all of it at once: :func:`inr_engine.prior_check.open_prior`).
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
