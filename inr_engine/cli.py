"""``inr-engine``: segmentation, shape completion, prior training and prior management from the command line."""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import sys
import time
import typing
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import numpy as np

from .complete import MAX_MESH_STEP
from .datasets import check_split
from .files import COMMITTED, OutputError, RunOutputs
from .frames import GeometryError
from .io import VolumeError
from .methods.segmentation import SegmentationError
from .methods.slices import SliceError
from .priors import DEFAULT_PRIORS, PriorError
from .runtime import DeviceError, check_device_name

USER_ERRORS = (VolumeError, SliceError, SegmentationError, PriorError, GeometryError, OutputError, DeviceError,
               OSError)
HN_VALIDATION_ORGANS = {"Parotid-Lt", "Parotid-Rt", "Mandible", "Brainstem", "Spinal-Cord"}
SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"


class UsageError(ValueError):
    """A command-line argument that cannot work."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) or SIGTERM; carries the exit status the shell expects."""

    def __init__(self, signum: int):
        super().__init__(signal.Signals(signum).name)
        self.status = 128 + signum


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


def _write_json(path: str | Path, data: dict) -> None:
    Path(path).write_text(json.dumps(data, indent=2))


def _volume_input(run: RunOutputs, option: str, path: str | None) -> None:
    from .io import volume_files

    if path is not None:
        run.add_input(option, *volume_files(path, reading=True))


def _prior_input(run: RunOutputs, option: str, name_or_path: str | None) -> None:
    """A prior the run reads (a bundled name, or a file) and the manifest beside it, whose
    checksum it checks: no output may overwrite either."""
    from .priors import MANIFEST, resolve

    if name_or_path is not None:
        path = resolve(name_or_path)
        run.add_input(option, path)
        if (path.parent / MANIFEST).is_file():
            run.add_input(f"the manifest of {option}", path.parent / MANIFEST)


def _volume_output(run: RunOutputs, option: str, path: str) -> None:
    from .io import file_format, volume_files

    file_format(path)
    run.add_output(option, path, companions=volume_files(path)[1:])


def _plan_complete(args, run: RunOutputs) -> None:
    """Check ``complete``'s arguments and register its files, before any work."""
    from .mesh import MESH_SUFFIXES

    parse_slices(args.slices)
    _volume_input(run, "the input", args.input)
    _volume_input(run, "--reference", args.reference)
    _prior_input(run, "--prior", args.prior)
    _volume_output(run, "--output", args.output)
    if args.mesh:
        if Path(args.mesh).suffix.lower() not in MESH_SUFFIXES:
            raise UsageError(f"--mesh {args.mesh}: use one of {', '.join(MESH_SUFFIXES)}")
        run.add_output("--mesh", args.mesh)
    if args.report:
        run.add_output("--report", args.report)


# --------------------------------------------------------------------------- complete
def run_complete(args) -> dict:
    """Complete a sparse label map file; writes the outputs only when everything succeeded."""
    return _one_run(args, _plan_complete, _complete)


def _one_run(args, plan, work) -> dict:
    """``plan`` checks the arguments and registers the run's files, ``work`` stages the outputs;
    they are committed together at the end."""
    with RunOutputs() as run:
        plan(args, run)
        report = work(args, run)
        run.commit()
    return report


def _complete(args, run: RunOutputs) -> dict:
    from tqdm import tqdm

    from .complete import complete_labelmap
    from .io import read_volume
    from .methods.shape_completion import ShapeCompleter
    from .priors import load_prior
    from .runtime import resolve_device, seed_everything

    seed_everything(args.seed)
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    volume = read_volume(args.input)
    reference = _reference(args.reference, volume)
    completer = ShapeCompleter.from_prior(load_prior(args.prior, task="shape_completion"), device)
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
              **result.report, "load_seconds": t_loaded - t_start}
    if reference is not None:
        report["dice"] = _dice(reference, result.labels)
    _stage_completion(args, run, volume, result, report)
    return report


def _reference(path: str | None, volume):
    """The ``--reference`` label map, checked against the input's grid before any work."""
    from .complete import input_labels
    from .io import read_volume

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
    from .metrics import dice

    return {str(lab): dice(labels == lab, reference.array == lab) for lab in np.unique(labels) if lab != 0}


def _stage_completion(args, run: RunOutputs, volume, result, report) -> None:
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData

    from .io import write_volume
    from .mesh import write_mesh

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
        _write_json(run.stage(args.report), report)


# --------------------------------------------------------------------------- segment
def _plan_segment(args, run: RunOutputs) -> None:
    _volume_input(run, "the input", args.input)
    _volume_input(run, "--reference", args.reference)
    _prior_input(run, "--prior", args.prior)
    _volume_output(run, "--output", args.output)
    if args.report:
        run.add_output("--report", args.report)


def run_segment(args) -> dict:
    """Segment an image file with MetaSeg or NISF; writes the outputs only when everything succeeded."""
    return _one_run(args, _plan_segment, _segment)


def _segment(args, run: RunOutputs) -> dict:
    from tqdm import tqdm

    from .io import read_volume, write_volume
    from .runtime import resolve_device, seed_everything
    from .segment import load_segmenter, segment_image

    seed_everything(args.seed)
    t_start = time.perf_counter()
    device = resolve_device(args.device)
    volume = read_volume(args.input)
    reference = _reference(args.reference, volume)
    segmenter = load_segmenter(args.method, args.prior, device, args.procedure, args.fit_weights)
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
              **result.report, "load_seconds": t_loaded - t_start}
    if args.method == "nisf":
        report["procedure"], report["fit_weights"] = args.procedure, args.fit_weights
    if reference is not None:
        report["dice"] = _dice(reference, result.labels)
    write_volume(run.stage(args.output), result.labels, volume)
    if args.report:
        _write_json(run.stage(args.report), report)
    return report


# --------------------------------------------------------------------------- demo
def run_demo(args) -> dict:
    """Complete the shipped sparse sample and segment the shipped image with the bundled priors."""
    from .overview import write_overview

    out = Path(args.out)
    samples = json.loads((SAMPLES_DIR / "samples.json").read_text())["samples"]
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
        _plan_segment(segmentation, run)
        run.add_output("the overview", out / "overview.png")
        report = _complete(completion, run)
        write_overview(run.stage(out / "overview.png"), completion.input, str(run.stage(completion.output)),
                       completion.reference, report)
        seg_report = _segment(segmentation, run)
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


# --------------------------------------------------------------------------- train
def checkpoint_path(out: str | Path) -> Path:
    """Where training keeps its best prior so far: ``<stem>.checkpoints/<name>`` beside ``--out``
    (never ``--out`` itself, which is replaced only by the finished prior)."""
    out = Path(out)
    return out.parent / f"{out.stem}.checkpoints" / out.name


def _data_files(data: str | Path) -> list[Path]:
    path = Path(data)
    if path.is_file():
        return [path]
    if path.is_dir():
        return [p for p in path.rglob("*") if p.is_file()]
    raise UsageError(f"--data {data}: no such file or folder")


class _Training:
    """A training command's files: ``--data`` (and a prior it starts from) in; ``--out`` and
    ``--log`` out, committed only when training finished; checkpoints beside ``--out``."""

    def __init__(self, args, run: RunOutputs, prior_option: str | None = None, prior: str | None = None):
        if Path(args.out).suffix.lower() != ".safetensors":
            raise UsageError(f"--out {args.out}: a prior file ends in .safetensors")
        self.args, self.run = args, run
        run.add_input("--data", *_data_files(args.data))
        self.checkpoint = checkpoint_path(args.out)
        continued = prior is not None and Path(prior).resolve() == self.checkpoint.resolve()
        if not continued:  # continuing from --out's own checkpoint: the new best ones replace it
            if self.checkpoint.exists():
                raise UsageError(f"{self.checkpoint} holds the best prior of an earlier, interrupted training to "
                                 f"--out {args.out}: continue it with --init {self.checkpoint}, or remove it")
            _prior_input(run, prior_option, prior)
            run.reserve("the checkpoint", self.checkpoint)
        run.add_output("--out", args.out)
        self.log = None
        if getattr(args, "log", None):
            run.add_output("--log", args.log)
            self.log = run.stage(args.log)  # the log grows there; the existing one is kept until the end
            if Path(args.log).is_file():
                shutil.copyfile(args.log, self.log)
        self.started = time.time()

    @property
    def rank(self) -> int:
        return int(os.environ.get("RANK", "0"))

    def out_file(self) -> Path:
        """For trainings that write once, at the end: the staged ``--out``."""
        return self.run.stage(self.args.out)

    @contextmanager
    def checkpointed(self) -> Iterator[Path]:
        """Yield the checkpoint path to train into; afterwards the best checkpoint becomes ``--out``."""
        try:
            yield self.checkpoint
        except BaseException:
            if self.rank == 0 and self.checkpoint.is_file() and self.checkpoint.stat().st_mtime >= self.started:
                print(f"inr-engine train: --out {self.args.out} was not changed; the best prior so far is "
                      f"{self.checkpoint} (continue with --init {self.checkpoint})", file=sys.stderr)
            raise
        if self.rank == 0:
            if not self.checkpoint.is_file():
                raise UsageError("training ended before its first validation: give more --steps or --time-limit")
            shutil.copyfile(self.checkpoint, self.out_file())

    def commit(self) -> None:
        if self.rank != 0:  # under torchrun rank 0 writes the files
            return
        self.run.commit()
        self.checkpoint.unlink(missing_ok=True)
        with suppress(OSError):
            self.checkpoint.parent.rmdir()


def _set_threads(args) -> None:
    if args.threads:
        import torch

        torch.set_num_threads(args.threads)


def run_train_shape(args) -> dict:
    from .datasets import adrenal_shapes, hn_shapes, hn_split, label_directory_shapes
    from .methods.shape_training import train_shape_prior
    from .priors import sha256
    from .runtime import resolve_device

    with RunOutputs() as run:
        training = _Training(args, run, "--init", args.init)
        device = resolve_device(args.device)
        _set_threads(args)
        init, cfg = _shape_training_start(args)
        if args.dataset == "adrenalmnist3d":
            train, val = adrenal_shapes(args.data, "train"), adrenal_shapes(args.data, "val")
            settings = [("0", 8), ("1", 8), ("2", 8), ("0", 4)]
            split = {"train": "npz train split (all)", "validation": "npz val split (the last --max-val shapes)"}
        elif args.dataset == "hn-oar":
            train_scans, val_scans = hn_split(args.data, n_val=args.val_scans, seed=args.split_seed)
            train = hn_shapes(args.data, train_scans, organs=args.organs, cache_dir=args.cache_dir)
            val = hn_shapes(args.data, val_scans, raters=("oncologist",), organs=HN_VALIDATION_ORGANS,
                            cache_dir=args.cache_dir)
            settings = [("axial", 8), ("axial", 4)]
            split = {"train": train_scans, "validation": val_scans, "split_seed": args.split_seed}
        else:
            shapes = label_directory_shapes(args.data)
            n_val = max(1, len(shapes) // 10)
            check_split(len(shapes), n_val, what=f"shapes in {args.data}", val_option=None)
            order = np.random.default_rng(args.split_seed).permutation(len(shapes))
            val, train = [shapes[i] for i in order[:n_val]], [shapes[i] for i in order[n_val:]]
            settings = [("axial", 8), ("axial", 4)]
            split = {"validation": [s.name for s in val], "split_seed": args.split_seed}
        if args.max_val:
            # adrenal: the last shapes of the val split, so that the benchmark's first 40 stay unseen
            val = val[-args.max_val:] if args.dataset == "adrenalmnist3d" else val[: args.max_val]
        data = {"dataset": args.dataset, "data": str(args.data), "shapes_train": len(train),
                "shapes_val": len(val), "split": split, "command": " ".join(sys.argv)}
        if init is not None:
            data["continued_from"] = {"prior": init.prior.name, "sha256": sha256(init.prior.path),
                                      "training": init.prior.metadata.get("training", {}),
                                      "training_steps": init.prior.metadata.get("training_steps")}
        with training.checkpointed() as checkpoint:
            result = train_shape_prior(
                train, val, cfg, checkpoint, steps=args.steps, meta_batch=args.meta_batch, lr=args.lr,
                seed=args.seed, device=device, settings=settings,
                description=args.description or f"shape completion prior ({args.dataset})", training_data=data,
                log_path=training.log, time_limit_s=args.time_limit, data_workers=args.data_workers,
                encoder_steps=args.encoder_steps, encoder_time_limit_s=args.encoder_time_limit,
                encoder_batch=args.encoder_batch, encoder_lr=args.encoder_lr, encoder_echo=args.encoder_echo,
                init=init)
        training.commit()
    return result


def _shape_training_start(args):
    """(prior to continue or None, configuration): ``--init``'s configuration with ``--config``
    changes that keep its architecture, or the defaults with ``--config``."""
    from dataclasses import asdict

    from .meta import ALGORITHMS
    from .methods.shape_completion import ShapeCompleter, ShapeConfig, prior_metadata
    from .priors import load_prior

    overrides = _config_overrides(args.config, ShapeConfig)
    if not args.init:
        return None, ShapeConfig(**overrides)
    init = ShapeCompleter.from_prior(load_prior(args.init, task="shape_completion"))
    if init.cfg.algorithm not in ALGORITHMS:
        raise UsageError(f"--init {args.init} is a {init.cfg.algorithm} prior, not a meta-learned one: continue from "
                         "a prior made by 'train shape'")
    cfg = ShapeConfig(**{**asdict(init.cfg), **overrides})
    if prior_metadata(cfg)["architecture"] != init.prior.metadata["architecture"]:
        raise UsageError(f"--config {' '.join(args.config or [])}: changes the architecture of --init {args.init}; "
                         "only training settings may change when a prior's training continues")
    return init, cfg


def run_train_segmentation(args) -> dict:
    """``train metaseg`` / ``train nisf`` on a folder of images with label maps."""
    from .datasets import labelled_image_names, labelled_images, seeded_split
    from .methods import metaseg, nisf
    from .methods.seg_training import train_metaseg_prior, train_nisf_prior
    from .runtime import resolve_device

    config_cls = metaseg.MetaSegConfig if args.method == "metaseg" else nisf.NISFConfig
    with RunOutputs() as run:
        training = _Training(args, run)
        device = resolve_device(args.device)
        _set_threads(args)
        cfg = config_cls(**_config_overrides(args.config, config_cls))
        if args.classes is not None:
            if len(args.classes) < 2:
                raise UsageError("--classes: name the background and at least one class")
            cfg.num_classes = len(args.classes)
        names = labelled_image_names(args.data)
        n_val = args.val if args.val is not None else max(1, (len(names) - args.holdout) // 10)
        check_split(len(names), n_val, args.holdout, what=f"subjects in {args.data}")
        held_out: list[str] = []
        if args.holdout:
            names, held_out = seeded_split(names, args.holdout, args.split_seed)
        train_names, val_names = seeded_split(names, n_val, args.split_seed + 1)
        train, val = labelled_images(args.data, train_names), labelled_images(args.data, val_names)
        found = max(int(image.labels.max()) for image in train + val) + 1
        if args.classes is not None and len(args.classes) != found:
            raise UsageError(f"--classes names {len(args.classes)} classes, but the label maps of {args.data} hold "
                             f"labels 0 to {found - 1}: name one class per label, background first")
        classes = args.classes or ["background"] + [f"class {c}" for c in range(1, cfg.num_classes)]
        data = {"data": str(args.data), "subjects_train": len(train), "subjects_val": len(val),
                "split": {"held_out": held_out, "validation": val_names, "split_seed": args.split_seed},
                "command": " ".join(sys.argv)}
        common = dict(steps=args.steps, lr=args.lr, seed=args.seed, device=device,
                      description=args.description or f"{args.method} segmentation prior ({Path(args.data).name})",
                      training_data=data, log_path=training.log, time_limit_s=args.time_limit)
        with training.checkpointed() as checkpoint:
            if args.method == "metaseg":
                result = train_metaseg_prior(train, val, cfg, checkpoint, meta_batch=args.batch, class_names=classes,
                                             **common)
            else:
                result = train_nisf_prior(train, val, cfg, checkpoint, latent_steps=args.latent_steps,
                                          batch=args.batch, class_names=classes, **common)
        training.commit()
    return result


def run_train_strainer(args) -> dict:
    """``train strainer``: a prior from a handful of cases; a shape prior from label maps, or a
    MetaSeg prior from images with label maps (``images/`` and ``labels/``)."""
    from .datasets import label_directory_shapes, labelled_image_names, labelled_images
    from .methods import strainer
    from .runtime import resolve_device

    if args.cases < strainer.MIN_SIGNALS:
        raise UsageError(f"--cases: STRAINER needs at least {strainer.MIN_SIGNALS} cases")
    if args.classes is not None and len(args.classes) < 2:
        raise UsageError("--classes: name the background and at least one class")
    with RunOutputs() as run:
        training = _Training(args, run)
        device = resolve_device(args.device)
        _set_threads(args)
        settings = strainer.StrainerSettings(steps=args.steps, time_limit_s=args.time_limit, seed=args.seed)
        kind = args.kind
        if kind == "auto":
            kind = "segmentation" if any((Path(args.data) / d).is_dir() for d in ("images", "imagesTr")) else "shape"
        data = {"data": str(args.data), "command": " ".join(sys.argv)}
        if kind == "shape":
            shapes = label_directory_shapes(args.data)[: args.cases]
            check_split(len(shapes), 0, minimum_train=strainer.MIN_SIGNALS, what=f"shapes in {args.data}")
            cfg = strainer.shape_config(**({"default_steps": args.fit_steps} if args.fit_steps else {}))
            meta = strainer.build_shape_prior(shapes, training.out_file(), cfg, settings, device, training=data,
                                              description=args.description or f"STRAINER shape prior ({len(shapes)} "
                                                                                "shapes)")
        else:
            names = labelled_image_names(args.data)[: args.cases]
            check_split(len(names), 0, minimum_train=strainer.MIN_SIGNALS, what=f"subjects in {args.data}")
            images = labelled_images(args.data, names)
            config = {"default_steps": args.fit_steps} if args.fit_steps else None
            meta = strainer.build_segmentation_prior(
                images, training.out_file(), settings, args.classes, device, config, training=data,
                description=args.description or f"STRAINER MetaSeg prior ({len(images)} subjects)")
        training.commit()
    print(f"wrote {args.out}: {meta['task']} prior from {len(meta['strainer']['cases'])} cases, "
          f"encoder {meta['strainer']['steps_done']} steps in {meta['strainer']['encoder_seconds']} s")
    return meta


def run_train_refine(args) -> dict:
    """``train refine``: add a MORSE-style boundary refiner to a MetaSeg or NISF prior."""
    from .datasets import labelled_image_names, labelled_images, seeded_split
    from .methods import inr_refine

    with RunOutputs() as run:
        training = _Training(args, run, "--prior", args.prior)
        _set_threads(args)
        names = labelled_image_names(args.data)
        check_split(len(names), 0, args.holdout, what=f"subjects in {args.data}")
        if args.holdout:
            names, _ = seeded_split(names, args.holdout, args.split_seed)
        images = labelled_images(args.data, names[: args.cases])
        info = inr_refine.refine_prior(args.prior, images, training.out_file(), iterations=args.iterations,
                                       seed=args.seed)
        training.commit()
    print(f"wrote {args.out}: boundary refiner trained on {info['subjects']} subjects ({info['points']} points) "
          f"in {info['seconds']} s")
    return info


def _config_overrides(pairs: list[str] | None, config_cls) -> dict:
    """``--config KEY=VALUE`` pairs as values of ``config_cls``'s fields, checked as a prior's are."""
    from .priors import config_value_problem

    hints = typing.get_type_hints(config_cls)
    overrides = {}
    for pair in pairs or []:
        key, sep, text = pair.partition("=")
        if not sep:
            raise UsageError(f"--config {pair!r}: expected KEY=VALUE, e.g. hidden_features=96")
        if key not in hints:
            raise UsageError(f"--config {key}: unknown key; known: {', '.join(sorted(hints))}")
        is_tuple = typing.get_origin(hints[key]) is tuple
        value = _json_or_text(f"[{text}]" if is_tuple else text)  # encoder_channels=16,32,64
        problem = config_value_problem(config_cls, key, value)
        choices = _config_choices().get(key)
        if problem is None and choices is not None and value not in choices:
            problem = f"{key} is {value!r}; it must be one of {', '.join(choices)}"
        if problem:
            raise UsageError(f"--config {key}={text}: {problem.removeprefix('config.')}")
        overrides[key] = tuple(value) if is_tuple else float(value) if hints[key] is float else value
    return overrides


def _config_choices() -> dict[str, tuple[str, ...]]:
    """The values each text field of a configuration may take."""
    from .meta import ALGORITHMS
    from .methods.metaseg import DECODER_INITS
    from .methods.nisf import FAST_ADAPTS

    return {"algorithm": ALGORITHMS, "decoder_init": DECODER_INITS, "fast_adapts": FAST_ADAPTS}


def _json_or_text(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


# --------------------------------------------------------------------------- priors
def run_priors(args) -> dict:
    from .priors import BUNDLED_DIR, bundled_priors, load_prior, set_metadata, write_manifest

    if args.action in ("set", "manifest") and args.prior is None:
        raise UsageError(f"priors {args.action}: name the prior file (set) or the folder of priors (manifest)")
    if args.action == "set":
        changes = dict(_metadata_change(item) for item in args.set or [])
        if not changes:
            raise UsageError("priors set: give at least one --set KEY=JSON")
        path = set_metadata(args.prior, changes)
        print(f"updated {path}: {', '.join(sorted(changes))}")
        return load_prior(path).metadata
    if args.action == "manifest":
        path = write_manifest(args.prior)
        print(f"wrote {path}")
        return {"manifest": str(path)}
    if args.action == "list":
        entries = bundled_priors()
        for name, e in entries.items():
            print(f"{name:24s} {e['task']:18s} {e['description']}")
        print(f"({BUNDLED_DIR})")
        return entries
    prior = args.prior or DEFAULT_PRIORS["shape_completion"]
    if args.action == "show":
        meta = dict(load_prior(prior).metadata)  # verifies format, metadata and checksum
        print(json.dumps(meta, indent=2))
        return meta
    from .prior_check import verify_prior

    print(verify_prior(prior))  # every check that loading for use runs, the network built
    return dict(load_prior(prior).metadata)


def _metadata_change(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--set {item!r}: expected KEY=JSON, e.g. classes='[\"background\", \"liver\"]'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--set {key}: the value is not JSON ({exc})") from exc


# --------------------------------------------------------------------------- parser
class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (no usage block), exit status 2."""

    def error(self, message: str) -> typing.NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _number(kind: type, low: float, inclusive: bool = True, high: float = math.inf):
    """An argparse type: a finite ``kind`` number, at least ``low`` (above it if not ``inclusive``),
    at most ``high``."""
    def parse(text: str):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected {'an integer' if kind is int else 'a number'}, "
                                             f"got {text!r}") from None
        if not math.isfinite(value) or value < low or (value == low and not inclusive):
            bound = f"at least {low}" if inclusive else f"more than {low}"
            finite = "" if kind is int else "a finite number "
            raise argparse.ArgumentTypeError(f"must be {finite}{bound}, got {text}")
        if value > high:
            raise argparse.ArgumentTypeError(f"must be at most {high}, got {text}")
        return value

    parse.__name__ = kind.__name__
    return parse


positive_int = _number(int, 1)
non_negative_int = _number(int, 0)
positive_float = _number(float, 0, inclusive=False)
step_count = _number(int, 0, high=100_000)  # test-time fitting steps


def device_name(text: str) -> str:
    try:
        return check_device_name(text)
    except DeviceError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="inr-engine", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("complete", help="complete a sparse label map (a few annotated slices) into a 3D shape")
    c.add_argument("input", help="sparse label map (.nii, .nii.gz, .nrrd): annotated slices, 0 elsewhere")
    c.add_argument("--output", required=True, help="dense label map on exactly the input's grid")
    c.add_argument("--mesh", help="surface mesh (.stl, .ply, .vtp; LPS coordinates as 3D Slicer expects)")
    c.add_argument("--mesh-step", type=_number(float, 0, inclusive=False, high=MAX_MESH_STEP), default=1.0,
                   help="mesh sampling in voxels (0.5 = twice as fine)")
    c.add_argument("--prior", default=DEFAULT_PRIORS["shape_completion"],
                   help=f"bundled prior name or prior file (default: {DEFAULT_PRIORS['shape_completion']})")
    c.add_argument("--steps", type=step_count,
                   help="fitting steps on the annotated slices (default: the prior's)")
    c.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda (default: auto)")
    c.add_argument("--report", help="JSON report: slices used, per-step loss, time of each phase")
    c.add_argument("--label", type=positive_int, help="complete only this label (default: every label)")
    c.add_argument("--slices", help="annotated slices, e.g. '2:10,18,26;0:30' (default: found automatically)")
    c.add_argument("--reference", help="full ground-truth label map: adds Dice to the report")
    c.add_argument("--seed", type=non_negative_int, default=0)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_complete)

    s = sub.add_parser("segment", help="segment an image with MetaSeg or NISF (the labels are never given)")
    s.add_argument("input", help="image (.nii, .nii.gz, .nrrd), raw scanner intensities")
    s.add_argument("--output", required=True, help="label map on exactly the input's grid")
    s.add_argument("--method", choices=["metaseg", "nisf"], default="metaseg")
    s.add_argument("--prior", help="bundled prior name or prior file (default: the method's hippocampus prior)")
    s.add_argument("--steps", type=step_count,
                   help="fitting steps on the image's intensities (default: the prior's)")
    s.add_argument("--procedure", choices=["fast", "paper"], default="fast",
                   help="nisf: meta-learned latent start (fast) or the paper's N(0, 1e-4) start with Adam")
    s.add_argument("--fit-weights", action="store_true",
                   help="nisf: fit every weight, not only what the procedure adapts (the paper procedure fits "
                        "the latent; the bundled prior's fast procedure already adapts every weight)")
    s.add_argument("--refine", action="store_true",
                   help="refine boundaries: re-label the most uncertain voxels with the prior's MORSE-style "
                        "refiner (priors that have one, e.g. hippocampus-metaseg; NISF: fast procedure)")
    s.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda (default: auto)")
    s.add_argument("--report", help="JSON report: per-step loss, time of each phase, warnings")
    s.add_argument("--reference", help="ground-truth label map: adds Dice per class to the report")
    s.add_argument("--seed", type=non_negative_int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_segment)

    d = sub.add_parser("demo", help="complete and segment the shipped samples with the bundled priors")
    d.add_argument("--out", default="inr-engine-demo", help="output folder (default: ./inr-engine-demo)")
    d.add_argument("--device", type=device_name, default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_demo)

    t = sub.add_parser("train", help="train a prior on your own data")
    tsub = t.add_subparsers(dest="method", required=True)
    ts = tsub.add_parser("shape", help="meta-learn a shape-completion prior")
    ts.add_argument("--dataset", choices=["adrenalmnist3d", "hn-oar", "labels"], default="labels",
                    help="adrenalmnist3d (.npz), hn-oar (DeepMind head-and-neck folder) or labels (a folder of "
                         "NIfTI/NRRD label maps: every label of every file is a training shape)")
    ts.add_argument("--data", required=True)
    ts.add_argument("--out", required=True, help="prior file to write (.safetensors)")
    ts.add_argument("--steps", type=positive_int, default=4000, help="outer (meta) steps")
    ts.add_argument("--meta-batch", type=positive_int, default=8)
    ts.add_argument("--lr", type=positive_float, default=3e-4, help="outer Adam learning rate")
    ts.add_argument("--seed", type=non_negative_int, default=0)
    ts.add_argument("--split-seed", type=non_negative_int, default=0)
    ts.add_argument("--val-scans", type=positive_int, default=5, help="hn-oar: validation scans")
    ts.add_argument("--max-val", type=non_negative_int, default=24, help="validation shapes scored during training")
    ts.add_argument("--config", nargs="*", help="ShapeConfig overrides, e.g. hidden_features=96 scale_mm=60")
    ts.add_argument("--device", type=device_name, default="auto")
    ts.add_argument("--threads", type=positive_int, help="torch CPU threads")
    ts.add_argument("--data-workers", type=_number(int, 1, high=64), default=1,
                    help="threads drawing training tasks (slice registration); the task sequence depends on "
                         "the seed and this number")
    ts.add_argument("--time-limit", type=positive_float, help="stop after this many seconds")
    ts.add_argument("--encoder-steps", type=non_negative_int, default=3000,
                    help="context encoder (--config encoder_channels=16,32,64): supervised steps before meta-learning")
    ts.add_argument("--encoder-time-limit", type=positive_float,
                    help="stop the context encoder's training after this many s")
    ts.add_argument("--encoder-batch", type=positive_int, default=4, help="context encoder: examples per step")
    ts.add_argument("--encoder-lr", type=positive_float, default=1e-3, help="context encoder: Adam learning rate")
    ts.add_argument("--encoder-echo", type=positive_int, default=1,
                    help="context encoder: use each prepared example about this many times (data echoing: on a "
                         "CPU, preparing examples is slower than training on them)")
    ts.add_argument("--init", help="continue training this prior (name or file): its configuration and weights are "
                                   "the start; --encoder-steps 0 keeps its context encoder")
    ts.add_argument("--log", help="JSON-lines training log")
    ts.add_argument("--cache-dir", help="hn-oar: keep cropped masks here (reading the full masks is slow)")
    ts.add_argument("--organs", nargs="+", help="hn-oar: train on these organs only (default: all 21)")
    ts.add_argument("--description")
    ts.set_defaults(func=run_train_shape)

    for method, what in (("metaseg", "meta-learn a MetaSeg prior (intensity INR + class head)"),
                         ("nisf", "train a NISF auto-decoder prior, then its fast latent initialisation")):
        tm = tsub.add_parser(method, help=what)
        tm.add_argument("--data", required=True, help="folder with images/ and labels/ (or imagesTr/, labelsTr/): "
                                                      "NIfTI/NRRD files of the same names")
        tm.add_argument("--out", required=True, help="prior file to write (.safetensors)")
        tm.add_argument("--steps", type=positive_int, default=3000,
                        help="outer (meta) steps, or auto-decoder steps (nisf)")
        tm.add_argument("--batch", type=positive_int, default=4 if method == "metaseg" else 8, help="subjects per step")
        tm.add_argument("--lr", type=positive_float, default=3e-4 if method == "metaseg" else 5e-4)
        tm.add_argument("--holdout", type=non_negative_int, default=0,
                        help="subjects left out entirely (for benchmarking)")
        tm.add_argument("--val", type=positive_int, help="validation subjects for checkpoint selection (default 10%%)")
        tm.add_argument("--classes", nargs="*", help="class names, background first")
        tm.add_argument("--seed", type=non_negative_int, default=0)
        tm.add_argument("--split-seed", type=non_negative_int, default=0)
        tm.add_argument("--config", nargs="*", help="configuration overrides, e.g. hidden_features=96")
        tm.add_argument("--device", type=device_name, default="auto")
        tm.add_argument("--threads", type=positive_int, help="torch CPU threads")
        tm.add_argument("--time-limit", type=positive_float, help="stop (the first stage) after this many seconds")
        tm.add_argument("--log", help="JSON-lines training log")
        tm.add_argument("--description")
        if method == "nisf":
            tm.add_argument("--latent-steps", type=positive_int, default=300,
                            help="meta-learning steps of the fast latent "
                                                                        "initialisation")
        tm.set_defaults(func=run_train_segmentation)

    tst = tsub.add_parser("strainer", help="build a STRAINER prior from a few cases (about a minute on a CPU)")
    tst.add_argument("--data", required=True, help="a folder of NIfTI/NRRD label maps (a shape-completion prior; "
                                                   "every label of every file is a case), or a folder with images/ "
                                                   "and labels/ (a MetaSeg segmentation prior)")
    tst.add_argument("--out", required=True, help="prior file to write (.safetensors)")
    tst.add_argument("--kind", choices=["auto", "shape", "segmentation"], default="auto",
                     help="auto: segmentation if the folder has images/, else shape")
    tst.add_argument("--cases", type=positive_int, default=10,
                     help="use at most this many cases (the first, by file name)")
    tst.add_argument("--steps", type=positive_int, default=1000, help="joint fitting steps of the shared encoder")
    tst.add_argument("--time-limit", type=positive_float, default=75.0,
                     help="stop the encoder's fit after this many seconds")
    tst.add_argument("--fit-steps", type=positive_int,
                     help="the prior's default test-time fitting steps (default: 20 for "
                                                   "shapes; 10 for segmentation, whose labels fade in longer fits)")
    tst.add_argument("--classes", nargs="*", help="segmentation: class names, background first")
    tst.add_argument("--seed", type=non_negative_int, default=0)
    tst.add_argument("--device", type=device_name, default="auto")
    tst.add_argument("--threads", type=positive_int, help="torch CPU threads")
    tst.add_argument("--description")
    tst.set_defaults(func=run_train_strainer)

    tr = tsub.add_parser("refine", help="add a MORSE-style boundary refiner to a MetaSeg or NISF prior")
    tr.add_argument("--prior", default=DEFAULT_PRIORS["metaseg"],
                    help="MetaSeg or NISF prior (bundled name or file); NISF: for its fast procedure")
    tr.add_argument("--data", required=True, help="folder with images/ and labels/ (or imagesTr/, labelsTr/)")
    tr.add_argument("--out", required=True, help="prior file to write: the prior with its refiner")
    tr.add_argument("--cases", type=positive_int, default=48,
                    help="use at most this many subjects (the first, by file name)")
    tr.add_argument("--iterations", type=positive_int, default=800, help="training iterations of the refiner")
    tr.add_argument("--holdout", type=non_negative_int, default=0,
                    help="subjects left out (as in 'train metaseg --holdout')")
    tr.add_argument("--split-seed", type=non_negative_int, default=0)
    tr.add_argument("--seed", type=non_negative_int, default=0)
    tr.add_argument("--threads", type=positive_int, help="torch CPU threads")
    tr.set_defaults(func=run_train_refine)

    pr = sub.add_parser("priors", help="list, show, verify or annotate priors; write a folder's SHA256 manifest")
    pr.add_argument("action", choices=["list", "show", "verify", "set", "manifest"])
    pr.add_argument("prior", nargs="?",
                    help="bundled name or file (show, verify; default: adrenal), a prior file (set), a folder of "
                         "priors (manifest)")
    pr.add_argument("--set", action="append", metavar="KEY=JSON",
                    help="set: change descriptive metadata, e.g. --set class_colors='[[0,0,0],[1,0.8,0.2]]' "
                         "(description, classes, class_colors, name, license; repeatable)")
    pr.set_defaults(func=run_priors)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    COMMITTED.clear()  # what this run writes
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        args.func(args)
    except (UsageError, *USER_ERRORS) as exc:
        return _fail(args, exc)
    except MemoryError as exc:
        return _fail(args, f"not enough memory for this input or configuration ({exc or 'MemoryError'}); use a "
                           "smaller input, configuration or batch")
    except RuntimeError as exc:
        if "allocate" in str(exc):
            return _fail(args, "not enough memory for this input or configuration; use a smaller input, "
                               "configuration or batch")
        if "CUDA" not in str(exc) and "cuda" not in str(exc):  # other RuntimeErrors are bugs
            raise
        return _fail(args, exc)
    except KeyboardInterrupt as exc:
        done = (f"after its outputs were written ({', '.join(p.name for p in COMMITTED)})" if COMMITTED else
                "; no output was written or changed")
        print(f"inr-engine {args.command}: interrupted{' ' if COMMITTED else ''}{done}", file=sys.stderr)
        return getattr(exc, "status", 128 + signal.SIGINT)
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def console_main() -> None:
    """The ``inr-engine`` program: :func:`main`, then exit; once it has finished, a late Ctrl-C
    cannot turn a finished run into an exit status of 130."""
    status = main()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    sys.exit(status)


def _interrupt(signum: int, _frame) -> None:
    raise Interrupted(signum)


def _fail(args, exc: BaseException | str) -> int:
    message = " ".join(str(exc).split())  # one line, whatever a library put in its message
    print(f"inr-engine {args.command}: error: {message}", file=sys.stderr)
    return 2


if __name__ == "__main__":
    console_main()
