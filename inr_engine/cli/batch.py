"""Several inputs in one call (``complete A B C --output-dir DIR``): the prior is loaded once, each
input is its own run (its outputs written together, or not at all), a bad input is reported and
skipped while the others go on, and ``--report`` is one report for the batch."""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..files import RunOutputs
from .common import USER_ERRORS, BatchError, UsageError, one_run, write_json

VOLUME_SUFFIXES = (".nii.gz", ".nii", ".nrrd", ".nhdr")


class Loaded:
    """The models of a command (completers, segmenters) by prior, each loaded the first time an
    input needs it (after that input was read and checked) and kept for the rest of the batch.

    ``which(args, volume)`` names the prior an input needs (``--prior``, or the one chosen for it);
    ``load(args, prior)`` loads it.
    """

    def __init__(self, which: Callable[[argparse.Namespace, Any], str],
                 load: Callable[[argparse.Namespace, str], Any]):
        self.which, self.load, self.models, self.seconds = which, load, {}, 0.0

    def __call__(self, args: argparse.Namespace, volume):
        prior = self.which(args, volume)
        if prior not in self.models:
            start = time.perf_counter()
            self.models[prior] = self.load(args, prior)
            self.seconds += time.perf_counter() - start
        return self.models[prior]


Work = Callable[[argparse.Namespace, RunOutputs, Loaded], dict]


def run_inputs(args: argparse.Namespace, suffix: str, plan, work: Work, model: Loaded) -> dict:
    """``work`` on every input of ``args`` with the models of ``model``; one input without
    ``--output-dir`` is a plain run. Outputs in ``--output-dir`` are named ``<input stem><suffix>``."""
    items = batch_items(args, suffix)
    if args.output_dir is None:
        return one_run(items[0], plan, lambda item, run: work(item, run, model))
    with RunOutputs() as batch:
        for item in items:
            batch.add_input("an input", item.input)
        if args.report:
            batch.add_output("--report", args.report)
        reports, failed = _each(args, items, plan, lambda item, run: work(item, run, model))
        summary = {"inputs": reports, "failed": failed, "load_seconds": model.seconds}
        if args.report:
            write_json(batch.stage(args.report), summary)
        batch.commit()
    if failed:
        raise BatchError(f"{len(failed)} of {len(items)} inputs failed (reported above); the other outputs were "
                         "written")
    return summary


def _each(args, items: list[argparse.Namespace], plan, work) -> tuple[dict, dict]:
    reports, failed = {}, {}
    for item in items:
        start = time.perf_counter()
        try:
            reports[item.input] = one_run(item, plan, work)
        except (UsageError, MemoryError, *USER_ERRORS) as exc:
            message = " ".join(str(exc).split()) or type(exc).__name__
            failed[item.input] = message if item.input in message else f"{item.input}: {message}"
            print(f"inr-engine {args.command}: error: {failed[item.input]}", file=sys.stderr)
            continue
        if not args.quiet:
            print(f"{item.input} -> {item.output} ({time.perf_counter() - start:.2f} s)", file=sys.stderr)
    return reports, failed


def batch_items(args: argparse.Namespace, suffix: str) -> list[argparse.Namespace]:
    """One set of arguments per input, with its own ``--output`` (and mesh, in a batch)."""
    if args.output_dir is None:
        if len(args.input) > 1:
            raise UsageError("several inputs: give --output-dir (the outputs are named after the inputs)")
        if args.output is None:
            raise UsageError("give --output (or --output-dir)")
        return [argparse.Namespace(**{**vars(args), "input": args.input[0]})]
    if args.output is not None:
        raise UsageError("--output names one file: with --output-dir the outputs are named after the inputs")
    if getattr(args, "mesh", None):
        raise UsageError("--mesh names one file: with --output-dir, give --mesh-format")
    if args.reference is not None and len(args.input) > 1:
        raise UsageError("--reference is the ground truth of one input: give one input with it")
    items, outputs = [], {}
    for path in args.input:
        stem, ext = split_volume_name(Path(path).name)
        output = str(Path(args.output_dir) / f"{stem}{suffix}{ext}")
        if output in outputs:
            raise UsageError(f"{path} and {outputs[output]} would both be written to {output}: rename one")
        outputs[output] = path
        mesh_format = getattr(args, "mesh_format", None)
        mesh = str(Path(args.output_dir) / f"{stem}{suffix}.{mesh_format}") if mesh_format else None
        items.append(argparse.Namespace(**{**vars(args), "input": path, "output": output, "mesh": mesh,
                                           "report": None}))
    return items


def split_volume_name(name: str) -> tuple[str, str]:
    """``"ct.nii.gz"`` -> ``("ct", ".nii.gz")``; names of other formats keep their last suffix."""
    for ext in VOLUME_SUFFIXES:
        if name.lower().endswith(ext):
            return name[: -len(ext)], name[-len(ext):]
    path = Path(name)
    return path.stem, path.suffix
