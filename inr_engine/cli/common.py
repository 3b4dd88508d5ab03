"""What the commands share: their errors, and their inputs and outputs declared to a :class:`RunOutputs`."""

from __future__ import annotations

import json
import signal
import typing
from pathlib import Path

from ..files import OutputError, RunOutputs
from ..frames import GeometryError
from ..inputs import SegmentationError, SliceError
from ..io import VolumeError
from ..priors import PriorError
from ..runtime import DeviceError
from ..settings import TrainingDiverged

USER_ERRORS = (VolumeError, SliceError, SegmentationError, PriorError, GeometryError, OutputError, DeviceError,
               TrainingDiverged, OSError)  # and BatchError, below


class UsageError(ValueError):
    """A command-line argument that cannot work."""


class BatchError(ValueError):
    """Some inputs of a batch failed (each was reported); the others were written."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM; carries the exit status the shell expects."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


USER_ERRORS = (*USER_ERRORS, BatchError)


def write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2))


def volume_input(run: RunOutputs, option: str, path: str | None) -> None:
    from ..io import volume_files

    if path is not None:
        run.add_input(option, *volume_files(path, reading=True))


def prior_input(run: RunOutputs, option: str, name_or_path: str | None) -> None:
    """A prior the run reads (a bundled name, or a file) and the manifest beside it, whose
    checksum it checks: no output may overwrite either."""
    from ..priors import AUTO, DEFAULT_PRIORS, MANIFEST, SCAN_SHAPE_PRIOR, resolve

    names = [DEFAULT_PRIORS["shape_completion"], SCAN_SHAPE_PRIOR] if name_or_path == AUTO else [name_or_path]
    for path in [resolve(name) for name in names if name is not None]:
        run.add_input(option, path)
        if (path.parent / MANIFEST).is_file():
            run.add_input(f"the manifest of {option}", path.parent / MANIFEST)


def volume_output(run: RunOutputs, option: str, path: str) -> None:
    from ..io import file_format, volume_files

    file_format(path)
    run.add_output(option, path, companions=volume_files(path)[1:])


def one_run(args, plan, work) -> dict:
    """``plan`` checks the arguments and registers the run's files, ``work`` stages the outputs;
    they are committed together at the end."""
    with RunOutputs() as run:
        plan(args, run)
        report = work(args, run)
        run.commit()
    return report


def set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def config_overrides(pairs: list[str] | None, config_cls) -> dict:
    """``--config KEY=VALUE`` pairs as values of ``config_cls``'s fields, checked as a prior's are."""
    from ..priors import config_value_problem

    hints = typing.get_type_hints(config_cls)
    overrides = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"--config {pair!r}: expected KEY=VALUE, e.g. hidden_features=96")
        if key not in hints:
            raise UsageError(f"--config {key}: unknown key; known: {', '.join(sorted(hints))}")
        is_tuple = typing.get_origin(hints[key]) is tuple
        value = json_or_text(f"[{text}]" if is_tuple else text)  # encoder_channels=16,32,64
        problem = config_value_problem(config_cls, key, value)
        choices = config_choices().get(key)
        if problem is None and choices is not None and value not in choices:
            problem = f"{key} is {value!r}; it must be one of {', '.join(choices)}"
        if problem:
            raise UsageError(f"--config {key}={text}: {problem.removeprefix('config.')}")
        overrides[key] = tuple(value) if is_tuple else float(value) if hints[key] is float else value
    return overrides


def config_choices() -> dict[str, tuple[str, ...]]:
    """The values each text field of a configuration may take."""
    from ..meta import ALGORITHMS
    from ..segmentation.metaseg import DECODER_INITS
    from ..segmentation.nisf import FAST_ADAPTS

    return {"algorithm": ALGORITHMS, "decoder_init": DECODER_INITS, "fast_adapts": FAST_ADAPTS}


def json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text
