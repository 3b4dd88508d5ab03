"""``train shape|segmentation|strainer|refine``: priors trained on the user's data, written when training finished."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from ..datasets import check_split
from ..files import RunOutputs
from .common import UsageError, config_overrides, prior_input, set_threads


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
        self.resume = (f"continue it with --init {self.checkpoint}" if prior_option == "--init" else
                       "it is a usable prior (copy it to keep it)")
        continued = prior is not None and Path(prior).resolve() == self.checkpoint.resolve()
        if not continued:  # continuing from --out's own checkpoint: the new best ones replace it
            if self.checkpoint.exists():
                raise UsageError(f"{self.checkpoint} holds the best prior of an earlier, interrupted training to "
                                 f"--out {args.out}: {self.resume}, or remove it")
            prior_input(run, prior_option, prior)
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
                      f"{self.checkpoint}: {self.resume}", file=sys.stderr)
            raise
        if self.rank == 0:
            if not self.checkpoint.is_file():
                raise UsageError("training ended before its first validation: give more --steps or --time-limit")
            shutil.copyfile(self.checkpoint, self.out_file())

    def commit(self) -> None:
        from ..training import end_distributed

        if self.rank == 0:  # under torchrun rank 0 writes the files
            self.run.commit()
            self.checkpoint.unlink(missing_ok=True)
            with suppress(OSError):
                self.checkpoint.parent.rmdir()
        end_distributed()


@dataclass
class TrainingShapes:
    """The shapes a shape prior trains and validates on, and how they were chosen."""

    train: list
    val: list
    split: dict
    source: str  # named in the prior's description
    protocols: tuple[tuple[str, int], ...] | None = None  # validation settings (default: the engine's)


def label_folder_shapes(args) -> TrainingShapes:
    """``--data``: a folder of label maps; a seeded tenth (at least one) validates, at most ``--max-val``."""
    from ..datasets import label_directory_shapes

    shapes = label_directory_shapes(args.data)
    n_val = max(1, len(shapes) // 10)
    check_split(len(shapes), n_val, what=f"shapes in {args.data}", val_option=None)
    order = np.random.default_rng(args.split_seed).permutation(len(shapes))
    val, train = [shapes[i] for i in order[:n_val]], [shapes[i] for i in order[n_val:]]
    return TrainingShapes(train, val[: args.max_val or None], {"validation": [s.name for s in val],
                                                                "split_seed": args.split_seed}, Path(args.data).name)


def run_train_shape(args, shapes_from: Callable[[Any], TrainingShapes] = label_folder_shapes) -> dict:
    """``train shape``: meta-learn a shape prior on the shapes ``shapes_from(args)`` gives (by
    default the label maps of ``--data``; the scripts that trained the bundled priors pass their
    data sets' loaders)."""
    from ..priors import sha256
    from ..runtime import resolve_device
    from ..settings import EncoderTrainingSettings, ShapeTrainingSettings
    from ..shape.training import train_shape_prior

    with RunOutputs() as run:
        training = _Training(args, run, "--init", args.init)
        device = resolve_device(args.device)
        set_threads(args)
        init, cfg = _shape_training_start(args)
        shapes = shapes_from(args)
        encoder = EncoderTrainingSettings(steps=args.encoder_steps, batch=args.encoder_batch, lr=args.encoder_lr,
                                          time_limit_s=args.encoder_time_limit, echo=args.encoder_echo)
        settings = ShapeTrainingSettings(steps=args.steps, meta_batch=args.meta_batch, lr=args.lr, seed=args.seed,
                                         time_limit_s=args.time_limit, data_workers=args.data_workers,
                                         encoder=encoder)
        if shapes.protocols:
            settings.protocols = shapes.protocols
        data = {"dataset": shapes.source, "data": str(args.data), "shapes_train": len(shapes.train),
                "shapes_val": len(shapes.val), "split": shapes.split, "command": " ".join(sys.argv)}
        if init is not None:
            data["continued_from"] = {"prior": init.prior.name, "sha256": sha256(init.prior.path),
                                      "training": init.prior.metadata.get("training", {}),
                                      "training_steps": init.prior.metadata.get("training_steps")}
        with training.checkpointed() as checkpoint:
            result = train_shape_prior(
                shapes.train, shapes.val, cfg, checkpoint, settings, device=device,
                description=args.description or f"shape completion prior ({shapes.source})", training_data=data,
                log_path=training.log, init=init)
        training.commit()
    return result


def _shape_training_start(args):
    """(prior to continue or None, configuration): ``--init``'s configuration with ``--config``
    changes that keep its architecture, or the defaults with ``--config``."""
    from dataclasses import asdict

    from ..meta import STRAINER
    from ..priors import load_prior
    from ..shape.completer import ShapeCompleter
    from ..shape.model import ShapeConfig, prior_metadata

    overrides = config_overrides(args.config, ShapeConfig)
    if not args.init:
        return None, ShapeConfig(**overrides)
    init = ShapeCompleter.from_prior(load_prior(args.init, task="shape_completion"))
    meta_learning = {}
    if init.cfg.algorithm == STRAINER:  # meta-learning starts from its weights, with the default meta-learning
        defaults = ShapeConfig()
        meta_learning = {k: getattr(defaults, k) for k in ("algorithm", "inner_steps", "inner_lr", "adam_lr",
                                                             "default_steps")}
    cfg = ShapeConfig(**{**asdict(init.cfg), **meta_learning, **overrides})
    if prior_metadata(cfg)["architecture"] != init.prior.metadata["architecture"]:
        raise UsageError(f"--config {' '.join(args.config or [])}: changes the architecture of --init {args.init}; "
                         "only training settings may change when a prior's training continues")
    return init, cfg


def run_train_segmentation(args) -> dict:
    """``train metaseg`` / ``train nisf`` on a folder of images with label maps."""
    from ..datasets import labelled_image_names, labelled_images, seeded_split
    from ..runtime import resolve_device
    from ..segmentation import metaseg, nisf
    from ..segmentation.training import train_metaseg_prior, train_nisf_prior
    from ..segmentation.volume import default_class_names
    from ..settings import MetaSegTrainingSettings, NISFTrainingSettings

    config_cls = metaseg.MetaSegConfig if args.method == "metaseg" else nisf.NISFConfig
    with RunOutputs() as run:
        training = _Training(args, run)
        device = resolve_device(args.device)
        set_threads(args)
        cfg = config_cls(**config_overrides(args.config, config_cls))
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
        classes = args.classes or default_class_names(cfg.num_classes)
        data = {"data": str(args.data), "subjects_train": len(train), "subjects_val": len(val),
                "split": {"held_out": held_out, "validation": val_names, "split_seed": args.split_seed},
                "command": " ".join(sys.argv)}
        common = dict(device=device, class_names=classes, training_data=data, log_path=training.log,
                      description=args.description or f"{args.method} segmentation prior ({Path(args.data).name})")
        with training.checkpointed() as checkpoint:
            if args.method == "metaseg":
                settings = MetaSegTrainingSettings(steps=args.steps, meta_batch=args.batch, lr=args.lr,
                                                   seed=args.seed, time_limit_s=args.time_limit)
                result = train_metaseg_prior(train, val, cfg, checkpoint, settings, **common)
            else:
                settings = NISFTrainingSettings(steps=args.steps, batch=args.batch, lr=args.lr,
                                                latent_steps=args.latent_steps, seed=args.seed,
                                                time_limit_s=args.time_limit)
                result = train_nisf_prior(train, val, cfg, checkpoint, settings, **common)
        training.commit()
    return result


def run_train_strainer(args) -> dict:
    """``train strainer``: a prior from a handful of cases; a shape prior from label maps, or a
    MetaSeg prior from images with label maps (``images/`` and ``labels/``)."""
    from .. import strainer
    from ..datasets import label_directory_shapes, labelled_image_names, labelled_images
    from ..runtime import resolve_device
    from ..segmentation import strainer as segmentation_strainer
    from ..shape import strainer as shape_strainer

    if args.cases < strainer.MIN_SIGNALS:
        raise UsageError(f"--cases: STRAINER needs at least {strainer.MIN_SIGNALS} cases")
    if args.classes is not None and len(args.classes) < 2:
        raise UsageError("--classes: name the background and at least one class")
    with RunOutputs() as run:
        training = _Training(args, run)
        device = resolve_device(args.device)
        set_threads(args)
        settings = strainer.StrainerSettings(steps=args.steps, time_limit_s=args.time_limit, seed=args.seed)
        kind = args.kind
        if kind == "auto":
            kind = "segmentation" if any((Path(args.data) / d).is_dir() for d in ("images", "imagesTr")) else "shape"
        data = {"data": str(args.data), "command": " ".join(sys.argv)}
        if kind == "shape":
            shapes = label_directory_shapes(args.data)[: args.cases]
            check_split(len(shapes), 0, minimum_train=strainer.MIN_SIGNALS, what=f"shapes in {args.data}")
            cfg = shape_strainer.shape_config(**({"default_steps": args.fit_steps} if args.fit_steps else {}))
            meta = shape_strainer.build_shape_prior(shapes, training.out_file(), cfg, settings, device, training=data,
                                              description=args.description or f"STRAINER shape prior ({len(shapes)} "
                                                                                "shapes)")
        else:
            names = labelled_image_names(args.data)[: args.cases]
            check_split(len(names), 0, minimum_train=strainer.MIN_SIGNALS, what=f"subjects in {args.data}")
            images = labelled_images(args.data, names)
            config = {"default_steps": args.fit_steps} if args.fit_steps else None
            meta = segmentation_strainer.build_segmentation_prior(
                images, training.out_file(), settings, args.classes, device, config, training=data,
                description=args.description or f"STRAINER MetaSeg prior ({len(images)} subjects)")
        training.commit()
    print(f"wrote {args.out}: {meta['task']} prior from {len(meta['strainer']['cases'])} cases, "
          f"encoder {meta['strainer']['steps_done']} steps in {meta['strainer']['encoder_seconds']} s")
    return meta


def run_train_refine(args) -> dict:
    """``train refine``: add a MORSE-style boundary refiner to a MetaSeg or NISF prior."""
    from ..datasets import labelled_image_names, labelled_images, seeded_split
    from ..segmentation import refinement

    with RunOutputs() as run:
        training = _Training(args, run, "--prior", args.prior)
        set_threads(args)
        names = labelled_image_names(args.data)
        check_split(len(names), 0, args.holdout, what=f"subjects in {args.data}")
        if args.holdout:
            names, _ = seeded_split(names, args.holdout, args.split_seed)
        images = labelled_images(args.data, names[: args.cases])
        info = refinement.refine_prior(args.prior, images, training.out_file(), iterations=args.iterations,
                                       seed=args.seed)
        training.commit()
    print(f"wrote {args.out}: boundary refiner trained on {info['subjects']} subjects ({info['points']} points) "
          f"in {info['seconds']} s")
    return info
