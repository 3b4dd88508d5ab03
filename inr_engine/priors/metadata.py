"""What a prior's metadata may hold, and the checks that keep a damaged or foreign prior from
reaching a network: its task, its descriptive fields, its config values (types and ranges), its
classes and intensity reference. Every failure is a one-line :class:`PriorError`."""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

# What a prior is for (its metadata's "task"), and the bundled prior each method uses by default.
SHAPE_COMPLETION_TASK = "shape_completion"
SEGMENTATION_TASKS = {"metaseg": "segmentation/metaseg", "nisf": "segmentation/nisf"}  # method -> task
DEFAULT_PRIORS = {"shape_completion": "adrenal", "metaseg": "hippocampus-metaseg", "nisf": "hippocampus-nisf"}
AUTO = "auto"  # shape completion: the bundled prior chosen for the input (default_shape_prior)
SCAN_SHAPE_PRIOR = "head-neck-organs"  # for anisotropic scans and large structures
LARGE_STRUCTURE_MM = 64.0  # the default prior's training crops: 64^3 voxels of 1 mm


def default_shape_prior(spacing, extent_mm) -> str:
    """The bundled shape prior for an input that names none: ``adrenal`` (trained on small
    structures on isotropic 1 mm grids) unless the grid is anisotropic (slices at least 1.5 times
    coarser than the in-plane pixels, as in most CT and MR scans) or the annotated structure is
    larger than :data:`LARGE_STRUCTURE_MM` along some axis; there ``head-neck-organs`` (trained on
    2.5 mm CT slices of 18 organs, its context encoder on a 2 mm grid) is as accurate and much faster.
    """
    spacing, extent_mm = [float(s) for s in spacing], [float(e) for e in extent_mm]
    if max(spacing) >= 1.5 * min(spacing) or max(extent_mm) > LARGE_STRUCTURE_MM:
        return SCAN_SHAPE_PRIOR
    return DEFAULT_PRIORS["shape_completion"]
KNOWN_TASKS = (SHAPE_COMPLETION_TASK, *SEGMENTATION_TASKS.values())


class PriorError(ValueError):
    """A prior file that cannot be used."""


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



def shown(value: Any, limit: int = 60) -> str:
    """A value as it appears in JSON metadata, with its JSON type, shortened to one line."""
    kind = {bool: "true/false", int: "integer", float: "number", str: "string", list: "list", tuple: "list",
            dict: "object", type(None): "null"}.get(type(value), type(value).__name__)
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        text = repr(value)
    text = text if len(text) <= limit else text[: limit - 3] + "..."
    return text if value is None else f"{text} ({kind})"


def is_int(value: Any) -> bool:
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
        return is_int(value)
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
        return f"config.{name} is {shown(value)}; it must be {_describe(hint)}" + (f" {bound}" if bound else "")
    if bound is not None:
        items = value if isinstance(value, (list, tuple)) else [value]
        bad = [v for v in items if _is_number(v) and not bound.holds(v)]
        if bad:
            what = "each entry" if isinstance(value, (list, tuple)) else "it"
            return f"config.{name} is {shown(value)}; {what} must be {bound}"
    return None


def config_value_problem(config_cls: type, name: str, value: Any) -> str | None:
    """Why ``value`` cannot be ``config_cls``'s field ``name`` (its declared type, the range in
    :data:`CONFIG_VALUES`), or None; for ``--config`` values as for a prior's."""
    hint = typing.get_type_hints(config_cls).get(name, Any)
    return _value_problem(name, value, hint, CONFIG_VALUES.get(name, (None, None))[1])


def _config_problem(config: Any) -> str | None:
    if not isinstance(config, dict):
        return f"config is {shown(config)}; it must be an object of named values"
    for name, value in config.items():
        if name in CONFIG_VALUES:
            problem = _value_problem(name, value, *CONFIG_VALUES[name])
            if problem:
                return problem
    return None


def classes_problem(metadata: dict[str, Any], num_classes: int | None) -> str | None:
    """Why ``classes`` or ``class_colors`` do not fit a network of ``num_classes`` classes (None: any), or None."""
    classes, colors = metadata.get("classes"), metadata.get("class_colors")
    if classes is not None:
        if not isinstance(classes, list) or not all(isinstance(c, str) and c.strip() for c in classes):
            return f"classes is {shown(classes)}; it must be a list of class names (strings), background first"
        if len(set(classes)) != len(classes):
            return f"classes {shown(classes)} repeats a name; each class needs its own"
        if num_classes is not None and len(classes) != num_classes:
            return f"classes has {len(classes)} names; the network has {num_classes} classes"
    if colors is not None:
        count = len(classes) if classes is not None else num_classes
        valid = isinstance(colors, list) and all(
            isinstance(c, list) and len(c) == 3 and all(_is_number(v) and 0.0 <= v <= 1.0 for v in c) for c in colors)
        if not valid or (count is not None and len(colors) != count):
            return (f"class_colors is {shown(colors)}; it must hold one [r, g, b] (0 to 1) per class"
                    f"{f' ({count})' if count is not None else ''}, background first")
    return None


def _intensity_problem(intensity: Any) -> str | None:
    """Why the intensity statistics of a segmentation prior's training images cannot be used, or None."""
    if not isinstance(intensity, dict):
        return f"intensity is {shown(intensity)}; it must be an object with the training images' mean and std"
    for part in ("mean", "std"):
        values = intensity.get(part)
        if values is None:
            return f"intensity.{part} is missing; it must be an object of {', '.join(INTENSITY_STATISTICS)}"
        if not isinstance(values, dict):
            return f"intensity.{part} is {shown(values)}; it must be an object of {', '.join(INTENSITY_STATISTICS)}"
        for stat in INTENSITY_STATISTICS:
            value = values.get(stat)
            if stat not in values:
                return f"intensity.{part}.{stat} is missing; it must be a finite number"
            if not (_is_number(value) and math.isfinite(value)):
                return f"intensity.{part}.{stat} is {shown(value)}; it must be a finite number"
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
        return f"task is {shown(task)}; it must name one of {', '.join(KNOWN_TASKS)}"
    if task not in KNOWN_TASKS:
        return f"it is a {task!r} prior, a task this engine does not know (it runs {', '.join(KNOWN_TASKS)})"
    for key in ("config", "frame", "architecture", "refinement"):
        if key in metadata and not isinstance(metadata[key], dict):
            return f"{key} is {shown(metadata[key])}; it must be an object of named values"
    problem = _config_problem(metadata.get("config", {}))
    if problem:
        return problem
    convention = metadata.get("frame", {}).get("convention")
    if convention is not None and not isinstance(convention, str):
        return f"frame.convention is {shown(convention)}; it must be a string"
    procedure = metadata.get("refinement", {}).get("procedure", "fast")
    if not isinstance(procedure, str):
        return f"refinement.procedure is {shown(procedure)}; it must be a string"
    if "intensity" in metadata:
        problem = _intensity_problem(metadata["intensity"])
        if problem:
            return problem
    for key, kind in DESCRIPTIVE_TYPES.items():
        if key in metadata and not isinstance(metadata[key], kind):
            return f"{key} is {shown(metadata[key])}; it must be a {'string' if kind is str else kind.__name__}"
    in_config = metadata.get("config", {}).get("num_classes")
    in_architecture = metadata.get("architecture", {}).get("num_classes")
    if in_architecture is not None and not is_int(in_architecture):
        return f"architecture.num_classes is {shown(in_architecture)}; it must be an integer"
    if in_config is not None and in_architecture is not None and in_config != in_architecture:
        return f"config.num_classes ({in_config}) and architecture.num_classes ({in_architecture}) differ"
    return classes_problem(metadata, in_config if in_config is not None else in_architecture)


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
        raise PriorError(f"{source}: config is {shown(values)}; it must be an object of named values; {LOAD_ADVICE}")
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
