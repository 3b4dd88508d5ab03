"""``inr-engine``: segmentation, shape completion, prior training and prior management from the command line."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from .files import atomic_output
from .frames import GeometryError
from .io import VolumeError
from .methods.segmentation import SegmentationError
from .methods.slices import SliceError
from .priors import DEFAULT_PRIORS, PriorError

USER_ERRORS = (VolumeError, SliceError, SegmentationError, PriorError, GeometryError, OSError)
HN_VALIDATION_ORGANS = {"Parotid-Lt", "Parotid-Rt", "Mandible", "Brainstem", "Spinal-Cord"}
SAMPLES_DIR = Path(__file__).resolve().parent / "data" / "samples"


class UsageError(ValueError):
    """A command-line argument that cannot work."""


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
    with atomic_output(path) as tmp:
        Path(tmp).write_text(json.dumps(data, indent=2))


def _check_outputs(args) -> None:
    from .io import file_format
    from .mesh import MESH_SUFFIXES

    file_format(args.output)
    if getattr(args, "mesh", None) and Path(args.mesh).suffix.lower() not in MESH_SUFFIXES:
        raise UsageError(f"--mesh {args.mesh}: use one of {', '.join(MESH_SUFFIXES)}")
    paths = [Path(p).resolve() for p in (args.input, args.output, getattr(args, "mesh", None), args.report) if p]
    if len(set(paths)) != len(paths):
        raise UsageError("the output files must differ from each other and from the input: "
                         "one would overwrite another")


# --------------------------------------------------------------------------- complete
def run_complete(args) -> dict:
    """Complete a sparse label map file; writes the outputs only when everything succeeded."""
    from tqdm import tqdm

    from .complete import complete_labelmap
    from .io import read_volume
    from .methods.shape_completion import ShapeCompleter
    from .priors import load_prior
    from .runtime import resolve_device, seed_everything

    _check_outputs(args)
    seed_everything(args.seed)
    t_start = time.perf_counter()
    volume = read_volume(args.input)
    completer = ShapeCompleter.from_prior(load_prior(args.prior, task="shape_completion"),
                                          resolve_device(args.device))
    t_loaded = time.perf_counter()
    steps = completer.cfg.default_steps if args.steps is None else args.steps
    if steps < 0:
        raise UsageError("--steps must be >= 0")
    bars: dict[int, tqdm] = {}

    def on_step(label, st, _case):
        if label not in bars:
            bars[label] = tqdm(total=steps, desc=f"label {label}: fitting", unit="step", leave=False,
                               disable=args.quiet)
        bars[label].update(1)
        bars[label].set_postfix(loss=f"{st.loss:.4f}")

    result = complete_labelmap(volume.array, volume.affine, completer, steps, args.label,
                               parse_slices(args.slices), args.mesh_step if args.mesh else None, on_step)
    for bar in bars.values():
        bar.close()
    report = {"input": str(args.input), "output": str(args.output), "mesh": args.mesh,
              "prior": {"name": completer.prior.name, "path": str(completer.prior.path)},
              **result.report, "load_seconds": t_loaded - t_start}
    if args.reference:
        report["dice"] = _dice_against(args.reference, volume, result.labels)
    _write_outputs(args, volume, result, report)
    return report


def _dice_against(reference: str, volume, labels: np.ndarray) -> dict[str, float]:
    from .io import read_volume
    from .metrics import dice

    ref = read_volume(reference)
    if ref.shape != volume.shape or not np.allclose(ref.affine, volume.affine, atol=1e-4):
        raise GeometryError(f"--reference {reference} is not on the input's grid")
    return {str(lab): dice(labels == lab, ref.array == lab) for lab in np.unique(labels) if lab != 0}


def _write_outputs(args, volume, result, report) -> None:
    from vtkmodules.vtkFiltersCore import vtkAppendPolyData

    from .io import write_volume
    from .mesh import write_mesh

    written: list[Path] = []
    try:
        written.append(write_volume(args.output, result.labels, volume))
        if args.mesh:
            append = vtkAppendPolyData()
            for surface in result.surfaces.values():
                append.AddInputData(surface)
            append.Update()
            written.append(write_mesh(args.mesh, append.GetOutput()))
        if args.report:
            _write_json(args.report, report)
            written.append(Path(args.report))
    except BaseException:
        for path in written:
            path.unlink(missing_ok=True)
        raise


# --------------------------------------------------------------------------- segment
def run_segment(args) -> dict:
    """Segment an image file with MetaSeg or NISF; writes the outputs only when everything succeeded."""
    from tqdm import tqdm

    from .io import read_volume, write_volume
    from .runtime import resolve_device, seed_everything
    from .segment import load_segmenter, segment_image

    _check_outputs(args)
    seed_everything(args.seed)
    t_start = time.perf_counter()
    volume = read_volume(args.input)
    segmenter = load_segmenter(args.method, args.prior, resolve_device(args.device), args.procedure,
                               args.fit_weights)
    t_loaded = time.perf_counter()
    steps = segmenter.default_steps if args.steps is None else args.steps
    if steps < 0:
        raise UsageError("--steps must be >= 0")
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
    if args.reference:
        report["dice"] = _dice_against(args.reference, volume, result.labels)
    written = [write_volume(args.output, result.labels, volume)]
    try:
        if args.report:
            _write_json(args.report, report)
    except BaseException:
        written[0].unlink(missing_ok=True)
        raise
    return report


# --------------------------------------------------------------------------- demo
def run_demo(args) -> dict:
    """Complete the shipped sparse sample and segment the shipped image with the bundled priors."""
    out = Path(args.out)
    samples = json.loads((SAMPLES_DIR / "samples.json").read_text())["samples"]
    sample = next(s for s in samples if s.get("demo") and s["kind"] == "sparse")
    ns = argparse.Namespace(input=str(SAMPLES_DIR / sample["file"]), output=str(out / "completed.nii.gz"),
                            mesh=str(out / "completed.stl"), prior=sample["prior"], steps=None,
                            device=args.device, report=str(out / "report.json"), label=None, slices=None,
                            mesh_step=1.0, seed=0, quiet=args.quiet,
                            reference=str(SAMPLES_DIR / sample["ground_truth"]))
    report = run_complete(ns)
    from .overview import write_overview

    write_overview(out / "overview.png", ns.input, ns.output, ns.reference, report)
    print(f"completed {sample['file']} with prior '{sample['prior']}':")
    for lab, d in report["dice"].items():
        print(f"  label {lab}: Dice {d:.3f} against the full ground truth")
    phases = report["labels"][next(iter(report["labels"]))]["phases"]
    print("  phases (s): " + ", ".join(f"{k} {v:.3f}" for k, v in phases.items()))

    image = next(s for s in samples if s.get("demo") and s["kind"] == "image")
    ns = argparse.Namespace(input=str(SAMPLES_DIR / image["file"]), output=str(out / "segmented.nii.gz"),
                            method="metaseg", prior=image["prior"], steps=None, procedure="fast", fit_weights=False,
                            refine=False, device=args.device, report=str(out / "segmentation_report.json"), seed=0,
                            quiet=args.quiet, reference=str(SAMPLES_DIR / image["labels"]))
    seg_report = run_segment(ns)
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
def run_train_shape(args) -> dict:
    import torch

    from .datasets import adrenal_shapes, hn_shapes, hn_split, label_directory_shapes
    from .methods.shape_training import train_shape_prior
    from .priors import sha256
    from .runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
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
        rng = np.random.default_rng(args.split_seed)
        order = rng.permutation(len(shapes))
        n_val = max(1, len(shapes) // 10)
        val, train = [shapes[i] for i in order[:n_val]], [shapes[i] for i in order[n_val:]]
        settings = [("axial", 8), ("axial", 4)]
        split = {"validation": [s.name for s in val], "split_seed": args.split_seed}
    if args.max_val:
        # adrenal: the last shapes of the val split, so that the benchmark's first 40 stay unseen
        val = val[-args.max_val:] if args.dataset == "adrenalmnist3d" else val[: args.max_val]
    training = {"dataset": args.dataset, "data": str(args.data), "shapes_train": len(train),
                "shapes_val": len(val), "split": split, "command": " ".join(sys.argv)}
    if init is not None:
        training["continued_from"] = {"prior": init.prior.name, "sha256": sha256(init.prior.path),
                                      "training": init.prior.metadata.get("training", {}),
                                      "training_steps": init.prior.metadata.get("training_steps")}
    return train_shape_prior(train, val, cfg, args.out, steps=args.steps, meta_batch=args.meta_batch, lr=args.lr,
                             seed=args.seed, device=resolve_device(args.device), settings=settings,
                             description=args.description or f"shape completion prior ({args.dataset})",
                             training_data=training, log_path=args.log, time_limit_s=args.time_limit,
                             data_workers=args.data_workers, encoder_steps=args.encoder_steps,
                             encoder_time_limit_s=args.encoder_time_limit, encoder_batch=args.encoder_batch,
                             encoder_lr=args.encoder_lr, encoder_echo=args.encoder_echo, init=init)


def _shape_training_start(args):
    """(prior to continue or None, configuration): ``--init``'s configuration with ``--config``
    changes that keep its architecture, or the defaults with ``--config``."""
    from dataclasses import asdict

    from .methods.shape_completion import ShapeCompleter, ShapeConfig, prior_metadata
    from .priors import load_prior

    overrides = _config_overrides(args.config, ShapeConfig)
    if not args.init:
        return None, ShapeConfig(**overrides)
    init = ShapeCompleter.from_prior(load_prior(args.init, task="shape_completion"))
    cfg = ShapeConfig(**{**asdict(init.cfg), **overrides})
    if prior_metadata(cfg)["architecture"] != init.prior.metadata["architecture"]:
        raise UsageError(f"--config {' '.join(args.config or [])}: changes the architecture of --init {args.init}; "
                         "only training settings may change when a prior's training continues")
    return init, cfg


def run_train_segmentation(args) -> dict:
    """``train metaseg`` / ``train nisf`` on a folder of images with label maps."""
    import torch

    from .datasets import labelled_image_names, labelled_images, seeded_split
    from .methods import metaseg, nisf
    from .methods.seg_training import train_metaseg_prior, train_nisf_prior
    from .runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    config_cls = metaseg.MetaSegConfig if args.method == "metaseg" else nisf.NISFConfig
    cfg = config_cls(**_config_overrides(args.config, config_cls))
    names = labelled_image_names(args.data)
    held_out: list[str] = []
    if args.holdout:
        names, held_out = seeded_split(names, args.holdout, args.split_seed)
    n_val = args.val if args.val is not None else max(1, len(names) // 10)
    train_names, val_names = seeded_split(names, n_val, args.split_seed + 1)
    train, val = labelled_images(args.data, train_names), labelled_images(args.data, val_names)
    if args.classes:
        if len(args.classes) < 2:
            raise UsageError("--classes: name the background and at least one class")
        cfg.num_classes = len(args.classes)
    classes = args.classes or ["background"] + [f"class {c}" for c in range(1, cfg.num_classes)]
    training = {"data": str(args.data), "subjects_train": len(train), "subjects_val": len(val),
                "split": {"held_out": held_out, "validation": val_names, "split_seed": args.split_seed},
                "command": " ".join(sys.argv)}
    common = dict(steps=args.steps, lr=args.lr, seed=args.seed, device=resolve_device(args.device),
                  description=args.description or f"{args.method} segmentation prior ({Path(args.data).name})",
                  training_data=training, log_path=args.log, time_limit_s=args.time_limit)
    if args.method == "metaseg":
        return train_metaseg_prior(train, val, cfg, args.out, meta_batch=args.batch, class_names=classes,
                                   **common)
    return train_nisf_prior(train, val, cfg, args.out, latent_steps=args.latent_steps, batch=args.batch,
                            class_names=classes, **common)


def run_train_strainer(args) -> dict:
    """``train strainer``: a prior from a handful of cases; a shape prior from label maps, or a
    MetaSeg prior from images with label maps (``images/`` and ``labels/``)."""
    import torch

    from .datasets import label_directory_shapes, labelled_image_names, labelled_images
    from .methods import strainer
    from .runtime import resolve_device

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cases < strainer.MIN_SIGNALS:
        raise UsageError(f"--cases: STRAINER needs at least {strainer.MIN_SIGNALS} cases")
    settings = strainer.StrainerSettings(steps=args.steps, time_limit_s=args.time_limit, seed=args.seed)
    device = resolve_device(args.device)
    kind = args.kind
    if kind == "auto":
        kind = "segmentation" if any((Path(args.data) / d).is_dir() for d in ("images", "imagesTr")) else "shape"
    training = {"data": str(args.data), "command": " ".join(sys.argv)}
    if kind == "shape":
        shapes = label_directory_shapes(args.data)[: args.cases]
        if len(shapes) < strainer.MIN_SIGNALS:
            raise UsageError(f"{args.data}: {len(shapes)} shape(s) found; STRAINER needs at least "
                             f"{strainer.MIN_SIGNALS}")
        cfg = strainer.shape_config(**({"default_steps": args.fit_steps} if args.fit_steps else {}))
        meta = strainer.build_shape_prior(shapes, args.out, cfg,
                                          settings, device, training=training,
                                          description=args.description or f"STRAINER shape prior ({len(shapes)} "
                                                                            "shapes)")
    else:
        images = labelled_images(args.data, labelled_image_names(args.data)[: args.cases])
        classes = args.classes
        if classes is not None and len(classes) < 2:
            raise UsageError("--classes: name the background and at least one class")
        config = {"default_steps": args.fit_steps} if args.fit_steps else None
        meta = strainer.build_segmentation_prior(images, args.out, settings, classes, device, config, training=training,
                                                 description=args.description or f"STRAINER MetaSeg prior "
                                                                                 f"({len(images)} subjects)")
    print(f"wrote {args.out}: {meta['task']} prior from {len(meta['strainer']['cases'])} cases, "
          f"encoder {meta['strainer']['steps_done']} steps in {meta['strainer']['encoder_seconds']} s")
    return meta


def run_train_refine(args) -> dict:
    """``train refine``: add a MORSE-style boundary refiner to a MetaSeg or NISF prior."""
    import torch

    from .datasets import labelled_image_names, labelled_images, seeded_split
    from .methods import inr_refine

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.cases < 1:
        raise UsageError("--cases must be at least 1")
    names = labelled_image_names(args.data)
    if args.holdout:
        names, _ = seeded_split(names, args.holdout, args.split_seed)
    images = labelled_images(args.data, names[: args.cases])
    info = inr_refine.refine_prior(args.prior, images, args.out, iterations=args.iterations, seed=args.seed)
    print(f"wrote {args.out}: boundary refiner trained on {info['subjects']} subjects ({info['points']} points) "
          f"in {info['seconds']} s")
    return info


def _config_overrides(pairs: list[str] | None, config_cls) -> dict:
    overrides = dict(kv.split("=", 1) for kv in pairs or [])
    fields = config_cls.__dataclass_fields__
    unknown = set(overrides) - set(fields)
    if unknown:
        raise UsageError(f"unknown --config keys {sorted(unknown)}; known: {sorted(fields)}")
    return {k: _config_value(fields[k].default, v) for k, v in overrides.items()}


def _config_value(default, text: str):
    if isinstance(default, tuple):  # comma-separated integers, e.g. encoder_channels=16,32,64
        return tuple(int(x) for x in text.split(",") if x.strip())
    return type(default)(text)


# --------------------------------------------------------------------------- priors
def run_priors(args) -> dict:
    from .priors import BUNDLED_DIR, bundled_priors, load_prior, set_metadata, write_manifest

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
    prior = load_prior(args.prior)  # verifies format, metadata and checksum
    meta = dict(prior.metadata)
    if args.action == "show":
        print(json.dumps(meta, indent=2))
    else:
        print(f"{prior.path}: OK ({meta['task']}, {sum(t.numel() for t in prior.tensors.values())} values)")
    return meta


def _metadata_change(item: str) -> tuple[str, object]:
    key, sep, value = item.partition("=")
    if not sep or not key:
        raise UsageError(f"--set {item!r}: expected KEY=JSON, e.g. classes='[\"background\", \"liver\"]'")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError as exc:
        raise UsageError(f"--set {key}: the value is not JSON ({exc})") from exc


# --------------------------------------------------------------------------- parser
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="inr-engine", description=__doc__)
    sub = p.add_subparsers(dest="command", required=True)

    c = sub.add_parser("complete", help="complete a sparse label map (a few annotated slices) into a 3D shape")
    c.add_argument("input", help="sparse label map (.nii, .nii.gz, .nrrd): annotated slices, 0 elsewhere")
    c.add_argument("--output", required=True, help="dense label map on exactly the input's grid")
    c.add_argument("--mesh", help="surface mesh (.stl, .ply, .vtp; LPS coordinates as 3D Slicer expects)")
    c.add_argument("--mesh-step", type=float, default=1.0, help="mesh sampling in voxels (0.5 = twice as fine)")
    c.add_argument("--prior", default=DEFAULT_PRIORS["shape_completion"],
                   help=f"bundled prior name or prior file (default: {DEFAULT_PRIORS['shape_completion']})")
    c.add_argument("--steps", type=int, help="fitting steps on the annotated slices (default: the prior's)")
    c.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    c.add_argument("--report", help="JSON report: slices used, per-step loss, time of each phase")
    c.add_argument("--label", type=int, help="complete only this label (default: every label)")
    c.add_argument("--slices", help="annotated slices, e.g. '2:10,18,26;0:30' (default: found automatically)")
    c.add_argument("--reference", help="full ground-truth label map: adds Dice to the report")
    c.add_argument("--seed", type=int, default=0)
    c.add_argument("--quiet", action="store_true", help="no progress bar")
    c.set_defaults(func=run_complete)

    s = sub.add_parser("segment", help="segment an image with MetaSeg or NISF (the labels are never given)")
    s.add_argument("input", help="image (.nii, .nii.gz, .nrrd), raw scanner intensities")
    s.add_argument("--output", required=True, help="label map on exactly the input's grid")
    s.add_argument("--method", choices=["metaseg", "nisf"], default="metaseg")
    s.add_argument("--prior", help="bundled prior name or prior file (default: the method's hippocampus prior)")
    s.add_argument("--steps", type=int, help="fitting steps on the image's intensities (default: the prior's)")
    s.add_argument("--procedure", choices=["fast", "paper"], default="fast",
                   help="nisf: meta-learned latent start (fast) or the paper's N(0, 1e-4) start with Adam")
    s.add_argument("--fit-weights", action="store_true",
                   help="nisf: fit every weight, not only what the procedure adapts (the paper procedure fits "
                        "the latent; the bundled prior's fast procedure already adapts every weight)")
    s.add_argument("--refine", action="store_true",
                   help="refine boundaries: re-label the most uncertain voxels with the prior's MORSE-style "
                        "refiner (priors that have one, e.g. hippocampus-metaseg; NISF: fast procedure)")
    s.add_argument("--device", default="auto", help="auto, cpu or cuda (default: auto)")
    s.add_argument("--report", help="JSON report: per-step loss, time of each phase, warnings")
    s.add_argument("--reference", help="ground-truth label map: adds Dice per class to the report")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--quiet", action="store_true", help="no progress bar")
    s.set_defaults(func=run_segment)

    d = sub.add_parser("demo", help="complete and segment the shipped samples with the bundled priors")
    d.add_argument("--out", default="inr-engine-demo", help="output folder (default: ./inr-engine-demo)")
    d.add_argument("--device", default="auto")
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
    ts.add_argument("--steps", type=int, default=4000, help="outer (meta) steps")
    ts.add_argument("--meta-batch", type=positive_int, default=8)
    ts.add_argument("--lr", type=float, default=3e-4, help="outer Adam learning rate")
    ts.add_argument("--seed", type=int, default=0)
    ts.add_argument("--split-seed", type=int, default=0)
    ts.add_argument("--val-scans", type=int, default=5, help="hn-oar: validation scans")
    ts.add_argument("--max-val", type=int, default=24, help="validation shapes scored during training")
    ts.add_argument("--config", nargs="*", help="ShapeConfig overrides, e.g. hidden_features=96 scale_mm=60")
    ts.add_argument("--device", default="auto")
    ts.add_argument("--threads", type=int, help="torch CPU threads")
    ts.add_argument("--data-workers", type=int, default=1,
                    help="threads drawing training tasks (slice registration); the task sequence depends on "
                         "the seed and this number")
    ts.add_argument("--time-limit", type=float, help="stop after this many seconds")
    ts.add_argument("--encoder-steps", type=int, default=3000,
                    help="context encoder (--config encoder_channels=16,32,64): supervised steps before meta-learning")
    ts.add_argument("--encoder-time-limit", type=float, help="stop the context encoder's training after this many s")
    ts.add_argument("--encoder-batch", type=positive_int, default=4, help="context encoder: examples per step")
    ts.add_argument("--encoder-lr", type=float, default=1e-3, help="context encoder: Adam learning rate")
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
        tm.add_argument("--steps", type=int, default=3000, help="outer (meta) steps, or auto-decoder steps (nisf)")
        tm.add_argument("--batch", type=int, default=4 if method == "metaseg" else 8, help="subjects per step")
        tm.add_argument("--lr", type=float, default=3e-4 if method == "metaseg" else 5e-4)
        tm.add_argument("--holdout", type=int, default=0, help="subjects left out entirely (for benchmarking)")
        tm.add_argument("--val", type=int, help="validation subjects for checkpoint selection (default 10%%)")
        tm.add_argument("--classes", nargs="*", help="class names, background first")
        tm.add_argument("--seed", type=int, default=0)
        tm.add_argument("--split-seed", type=int, default=0)
        tm.add_argument("--config", nargs="*", help="configuration overrides, e.g. hidden_features=96")
        tm.add_argument("--device", default="auto")
        tm.add_argument("--threads", type=int, help="torch CPU threads")
        tm.add_argument("--time-limit", type=float, help="stop (the first stage) after this many seconds")
        tm.add_argument("--log", help="JSON-lines training log")
        tm.add_argument("--description")
        if method == "nisf":
            tm.add_argument("--latent-steps", type=int, default=300, help="meta-learning steps of the fast latent "
                                                                        "initialisation")
        tm.set_defaults(func=run_train_segmentation)

    tst = tsub.add_parser("strainer", help="build a STRAINER prior from a few cases (about a minute on a CPU)")
    tst.add_argument("--data", required=True, help="a folder of NIfTI/NRRD label maps (a shape-completion prior; "
                                                   "every label of every file is a case), or a folder with images/ "
                                                   "and labels/ (a MetaSeg segmentation prior)")
    tst.add_argument("--out", required=True, help="prior file to write (.safetensors)")
    tst.add_argument("--kind", choices=["auto", "shape", "segmentation"], default="auto",
                     help="auto: segmentation if the folder has images/, else shape")
    tst.add_argument("--cases", type=int, default=10, help="use at most this many cases (the first, by file name)")
    tst.add_argument("--steps", type=int, default=1000, help="joint fitting steps of the shared encoder")
    tst.add_argument("--time-limit", type=float, default=75.0, help="stop the encoder's fit after this many seconds")
    tst.add_argument("--fit-steps", type=int, help="the prior's default test-time fitting steps (default: 20 for "
                                                   "shapes; 10 for segmentation, whose labels fade in longer fits)")
    tst.add_argument("--classes", nargs="*", help="segmentation: class names, background first")
    tst.add_argument("--seed", type=int, default=0)
    tst.add_argument("--device", default="auto")
    tst.add_argument("--threads", type=int, help="torch CPU threads")
    tst.add_argument("--description")
    tst.set_defaults(func=run_train_strainer)

    tr = tsub.add_parser("refine", help="add a MORSE-style boundary refiner to a MetaSeg or NISF prior")
    tr.add_argument("--prior", default=DEFAULT_PRIORS["metaseg"],
                    help="MetaSeg or NISF prior (bundled name or file); NISF: for its fast procedure")
    tr.add_argument("--data", required=True, help="folder with images/ and labels/ (or imagesTr/, labelsTr/)")
    tr.add_argument("--out", required=True, help="prior file to write: the prior with its refiner")
    tr.add_argument("--cases", type=int, default=48, help="use at most this many subjects (the first, by file name)")
    tr.add_argument("--iterations", type=int, default=800, help="training iterations of the refiner")
    tr.add_argument("--holdout", type=int, default=0, help="subjects left out (as in 'train metaseg --holdout')")
    tr.add_argument("--split-seed", type=int, default=0)
    tr.add_argument("--seed", type=int, default=0)
    tr.add_argument("--threads", type=int, help="torch CPU threads")
    tr.set_defaults(func=run_train_refine)

    pr = sub.add_parser("priors", help="list, show, verify or annotate priors; write a folder's SHA256 manifest")
    pr.add_argument("action", choices=["list", "show", "verify", "set", "manifest"])
    pr.add_argument("prior", nargs="?", default="adrenal",
                    help="bundled name or file (show, verify, set); a folder of priors (manifest)")
    pr.add_argument("--set", action="append", metavar="KEY=JSON",
                    help="set: change descriptive metadata, e.g. --set class_colors='[[0,0,0],[1,0.8,0.2]]' "
                         "(description, classes, class_colors; repeatable)")
    pr.set_defaults(func=run_priors)
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (UsageError, *USER_ERRORS) as exc:
        print(f"inr-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except RuntimeError as exc:
        if "CUDA" not in str(exc) and "cuda" not in str(exc):
            raise
        print(f"inr-engine {args.command}: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
