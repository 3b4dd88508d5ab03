"""``complete``, ``segment`` and ``demo``: the commands that run a prior on a volume."""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

from ..data import SAMPLES_DIR
from ..data import samples as shipped_samples
from ..files import RunOutputs
from ..frames import GeometryError
from ..inputs import MESH_SUFFIXES, SliceError
from ..io import VolumeError
from .batch import Loaded, run_inputs
from .common import UsageError, prior_input, volume_input, volume_output, write_json


def parse_slices(text: str | None) -> dict[int, list[int]] | None:
    """``"2:10,18,26;0:30"`` -> ``{2: [10, 18, 26], 0: [30]}`` (axis: voxel indices)."""
    if not text:
        return None
    out: dict[int, list[int]] = {}
    try:
        for part in text.split(";"):
            axis, idx = part.split(":")
            out[int(axis)] = [int(i) for i in idx.split(",") if i.strip()]
    except ValueError as exc:
        raise UsageError(f"--slices {text!r}: expected AXIS:I,J,...[;AXIS:...], e.g. 2:10,18,26") from exc
    if any(a not in (0, 1, 2) for a in out):
        raise UsageError("--slices: axes are 0, 1 or 2")
    return out


def _plan_complete(args, run: RunOutputs) -> None:
    """Check ``complete``'s arguments and register its files, before any work."""

    parse_slices(args.slices)
    _plan_volume_run(args, run)
    if args.mesh:
        if Path(args.mesh).suffix.lower() not in MESH_SUFFIXES:
            raise UsageError(f"--mesh {args.mesh}: use one of {', '.join(MESH_SUFFIXES)}")
        run.add_output("--mesh", args.mesh)


def _plan_volume_run(args, run: RunOutputs) -> None:
    """The files every run on a volume has: the input and ``--reference``, ``--prior``, ``--output``, ``--report``."""
    volume_input(run, "the input", args.input)
    volume_input(run, "--reference", args.reference)
    prior_input(run, "--prior", args.prior)
    volume_output(run, "--output", args.output)
    if args.report:
        run.add_output("--report", args.report)


def _start(args, model: Loaded):
    """(start time, the model, the input volume, the reference volume or None), seeded. The
    inputs are read and checked before the model is loaded (the first time)."""
    from ..io import read_volume
    from ..runtime import seed_everything

    t_start = time.perf_counter()
    volume = read_volume(args.input)
    reference = _reference(args.reference, volume)
    loaded = model(args, volume)
    seed_everything(args.seed)
    return t_start, loaded, volume, reference


def shape_prior_for(args, volume) -> str:
    """``--prior``, or with ``--prior auto`` the bundled prior chosen for this input's grid and structure."""
    from ..priors import shape_prior_for as chosen

    return chosen(volume.array, volume.affine, args.prior)


def _load_completer(args, prior: str):
    from ..priors import load_prior
    from ..runtime import resolve_device
    from ..shape.completer import ShapeCompleter

    return ShapeCompleter.from_prior(load_prior(prior, task="shape_completion"), resolve_device(args.device))


def _load_segmenter(args, prior: str | None):
    from ..runtime import resolve_device
    from ..segmentation.segment import load_segmenter

    return load_segmenter(args.method, prior, resolve_device(args.device), args.procedure, args.fit_weights)


def completers() -> Loaded:
    return Loaded(shape_prior_for, _load_completer)


def segmenters() -> Loaded:
    return Loaded(lambda args, _volume: args.prior, _load_segmenter)


# --------------------------------------------------------------------------- complete
def run_complete(args) -> dict:
    """Complete sparse label map files; each input's outputs are written only when all of them succeeded."""
    return run_inputs(args, "_completed", _plan_complete, _complete, completers())


def _complete(args, run: RunOutputs, model: Loaded) -> dict:
    from tqdm import tqdm

    t_start, completer, volume, reference = _start(args, model)  # bad input is refused before the engine loads
    from ..shape.complete import complete_labelmap

    t_loaded = time.perf_counter()
    steps = completer.cfg.default_steps if args.steps is None else args.steps
    bars: dict[int, tqdm] = {}

    def on_step(label, st, _case):
        if label not in bars:
            bars[label] = tqdm(total=steps, desc=f"label {label}: fitting", unit="step", leave=False,
                               disable=args.quiet)
        bars[label].update(1)
        bars[label].set_postfix(loss=f"{st.loss:.4f}")

    try:
        result = complete_labelmap(volume.array, volume.affine, completer, steps, args.label,
                                   parse_slices(args.slices), args.mesh_step if args.mesh else None, on_step)
    finally:
        for bar in bars.values():
            bar.close()
    report = {"input": str(args.input), "output": str(args.output), "mesh": args.mesh,
              "prior": {"name": completer.prior.name, "path": str(completer.prior.path)},
              **result.report, "load_seconds": model.seconds, "read_seconds": t_loaded - t_start - model.seconds}
    if reference is not None:
        report["dice"] = _dice(reference, result.labels)
    _stage_completion(args, run, volume, result, report)
    return report


def _reference(path: str | None, volume):
    """The ``--reference`` label map, checked against the input's grid before any work."""
    from ..inputs import input_labels
    from ..io import read_volume

    if path is None:
        return None
    ref = read_volume(path)
    if ref.shape != volume.shape or not np.allclose(ref.affine, volume.affine, atol=1e-4):
        raise GeometryError(f"--reference {path} is not on the input's grid")
    if ref.array.any():
        try:
            input_labels(ref.array)
        except SliceError as exc:
            raise VolumeError(f"--reference {path} is not a label map: {exc}") from exc
    return ref


def _dice(reference, labels: np.ndarray) -> dict[str, float]:
    from ..metrics import dice

    return {str(lab): dice(labels == lab, reference.array == lab) for lab in np.unique(labels) if lab != 0}


def _stage_completion(args, run: RunOutputs, volume, result, report) -> None:
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData

    from ..io import write_volume
    from ..mesh import write_mesh

    write_volume(run.stage(args.output), result.labels, volume)
    if args.mesh:
        append = vtkAppendPolyData()
        for surface in result.surfaces.values():
            append.AddInputData(surface)
        append.Update()
        if append.GetOutput().GetNumberOfPoints() == 0:
            raise UsageError(f"--mesh {args.mesh}: the surface is empty at --mesh-step {args.mesh_step}; "
                             "use a smaller --mesh-step")
        write_mesh(run.stage(args.mesh), append.GetOutput())
    if args.report:
        write_json(run.stage(args.report), report)


# --------------------------------------------------------------------------- segment
def run_segment(args) -> dict:
    """Segment image files with MetaSeg or NISF; each input's outputs are written only when all succeeded."""
    return run_inputs(args, "_segmented", _plan_volume_run, _segment, segmenters())


def _segment(args, run: RunOutputs, model: Loaded) -> dict:
    from tqdm import tqdm

    from ..io import write_volume

    t_start, segmenter, volume, reference = _start(args, model)  # bad input is refused before the engine loads
    from ..segmentation.segment import segment_image

    t_loaded = time.perf_counter()
    steps = segmenter.default_steps if args.steps is None else args.steps
    with tqdm(total=steps, desc=f"{args.method}: fitting", unit="step", leave=False, disable=args.quiet) as bar:
        def on_step(st, _volume):
            bar.update(1)
            bar.set_postfix(loss=f"{st.loss:.4f}")

        result = segment_image(volume.array, volume.affine, segmenter, steps, on_step, args.refine)
    for message in result.report["warnings"]:
        print(f"inr-engine segment: warning: {message}", file=sys.stderr)
    report = {"input": str(args.input), "output": str(args.output), "method": args.method, "refine": args.refine,
              "prior": {"name": segmenter.prior.name, "path": str(segmenter.prior.path)},
              **result.report, "load_seconds": model.seconds, "read_seconds": t_loaded - t_start - model.seconds}
    if args.method == "nisf":
        report["procedure"], report["fit_weights"] = args.procedure, args.fit_weights
    if reference is not None:
        report["dice"] = _dice(reference, result.labels)
    write_volume(run.stage(args.output), result.labels, volume)
    if args.report:
        write_json(run.stage(args.report), report)
    return report


# --------------------------------------------------------------------------- demo
def run_demo(args) -> dict:
    """Complete the shipped sparse sample and segment the shipped image with the bundled priors."""
    from .overview import write_overview

    out = Path(args.out)
    samples = shipped_samples()
    sample = next(s for s in samples if s.get("demo") and s["kind"] == "sparse")
    completion = argparse.Namespace(
        input=str(SAMPLES_DIR / sample["file"]), output=str(out / "completed.nii.gz"), mesh=str(out / "completed.stl"),
        prior=sample["prior"], steps=None, device=args.device, report=str(out / "report.json"), label=None,
        slices=None, mesh_step=1.0, seed=0, quiet=args.quiet, reference=str(SAMPLES_DIR / sample["ground_truth"]))
    image = next(s for s in samples if s.get("demo") and s["kind"] == "image")
    segmentation = argparse.Namespace(
        input=str(SAMPLES_DIR / image["file"]), output=str(out / "segmented.nii.gz"), method="metaseg",
        prior=image["prior"], steps=None, procedure="fast", fit_weights=False, refine=False, device=args.device,
        report=str(out / "segmentation_report.json"), seed=0, quiet=args.quiet,
        reference=str(SAMPLES_DIR / image["labels"]))
    with RunOutputs() as run:
        _plan_complete(completion, run)
        _plan_volume_run(segmentation, run)
        run.add_output("the overview", out / "overview.png")
        report = _complete(completion, run, completers())
        write_overview(run.stage(out / "overview.png"), completion.input, str(run.stage(completion.output)),
                       completion.reference, report)
        seg_report = _segment(segmentation, run, segmenters())
        run.commit()
    print(f"completed {sample['file']} with prior '{sample['prior']}':")
    for lab, d in report["dice"].items():
        print(f"  label {lab}: Dice {d:.3f} against the full ground truth")
    phases = report["labels"][next(iter(report["labels"]))]["phases"]
    print("  phases (s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))
    names = seg_report["classes"] or []
    print(f"segmented {image['file']} with MetaSeg prior '{image['prior']}' (labels never seen):")
    for lab, d in seg_report["dice"].items():
        name = names[int(lab)] if int(lab) < len(names) else f"label {lab}"
        print(f"  {name}: Dice {d:.3f} against the ground truth")
    print("  phases (s): " + ", ".join(f"{k} {v:.3f}" for k, v in seg_report["phases"].items()))
    print(f"outputs in {out}/: completed.nii.gz, completed.stl, overview.png, report.json, segmented.nii.gz, "
          "segmentation_report.json")
    return {"completion": report, "segmentation": seg_report}
