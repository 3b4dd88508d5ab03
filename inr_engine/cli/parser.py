"""The ``inr-engine`` argument parser: one-line errors, checked numbers, every command's options."""

from __future__ import annotations

import argparse
import math
import sys
import typing

from ..inputs import MAX_MESH_STEP
from ..priors import AUTO, DEFAULT_PRIORS, SCAN_SHAPE_PRIOR
from ..priors.metadata import LARGE_STRUCTURE_MM
from ..runtime import DeviceError, check_device_name
from ..settings import (
    REFINER_ITERATIONS,
    MetaSegTrainingSettings,
    NISFTrainingSettings,
    ShapeTrainingSettings,
    StrainerSettings,
)
from .priors import run_priors
from .running import run_complete, run_demo, run_segment
from .training import run_train_refine, run_train_segmentation, run_train_shape, run_train_strainer

PLUGIN_GROUP = "inr_engine.commands"  # entry points: functions that add subcommands (see _add_plugins)
DESCRIPTION = ("Segmentation, shape completion, prior training and prior management with implicit neural "
               "representations.")


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
    p = Parser(prog="inr-engine", description=DESCRIPTION)
    sub = p.add_subparsers(dest="command", required=True)
    _add_complete(sub)
    _add_segment(sub)
    _add_demo(sub)
    train = sub.add_parser("train", help="train a prior on your own data").add_subparsers(dest="method", required=True)
    _add_train_shape(train)
    _add_train_segmentation(train)
    _add_train_strainer(train)
    _add_train_refine(train)
    _add_priors(sub)
    _add_plugins(sub)
    return p


def _add_plugins(sub) -> None:
    """Commands other installed packages add through the ``inr_engine.commands`` entry points (the web
    front end's ``web``): each entry is a function given the subparsers. A broken plugin is skipped."""
    from importlib.metadata import entry_points

    for entry in entry_points(group=PLUGIN_GROUP):
        try:
            entry.load()(sub)
        except Exception as exc:  # another package's bug must not break the engine's commands
            print(f"inr-engine: warning: command {entry.name!r} from {entry.value} not loaded: {exc}", file=sys.stderr)


def _add_run_options(p: argparse.ArgumentParser, report: str, reference: str) -> None:
    """What every run on a volume takes: device, report, reference, seed, quiet."""
    p.add_argument("--device", type=device_name, default="auto", help="auto, cpu or cuda (default: auto)")
    p.add_argument("--report", help=report)
    p.add_argument("--reference", help=reference)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--quiet", action="store_true", help="no progress bar")


def _add_outputs(p: argparse.ArgumentParser, what: str, suffix: str) -> None:
    p.add_argument("--output", help=f"{what} (one input)")
    p.add_argument("--output-dir", help=f"folder for the outputs of every input, named <input name>{suffix} (with "
                                        "several inputs: the prior is loaded once, a bad input is reported and "
                                        "skipped, --report covers the batch)")


def _add_training_options(p: argparse.ArgumentParser, out: str = "prior file to write (.safetensors)") -> None:
    """What every training takes: --out, --seed, --device, --threads, --description."""
    p.add_argument("--out", required=True, help=out)
    p.add_argument("--seed", type=non_negative_int, default=0)
    p.add_argument("--device", type=device_name, default="auto")
    p.add_argument("--threads", type=positive_int, help="torch CPU threads")
    p.add_argument("--description")


def _add_complete(sub) -> None:
    c = sub.add_parser("complete", help="complete a sparse label map (a few annotated slices) into a 3D shape")
    c.add_argument("input", nargs="+",
                   help="sparse label map(s) (.nii, .nii.gz, .nrrd): annotated slices, 0 elsewhere")
    _add_outputs(c, "dense label map on exactly the input's grid", "_completed")
    c.add_argument("--mesh", help="surface mesh (.stl, .ply, .vtp; LPS coordinates as 3D Slicer expects)")
    c.add_argument("--mesh-format", choices=["stl", "ply", "vtp"],
                   help="with --output-dir: a surface mesh per input, <input name>_completed.<format>")
    c.add_argument("--mesh-step", type=_number(float, 0, inclusive=False, high=MAX_MESH_STEP), default=1.0,
                   help="mesh sampling in voxels (0.5 = twice as fine)")
    c.add_argument("--prior", default=AUTO,
                   help=f"bundled prior name, prior file, or {AUTO} (the default): "
                        f"{DEFAULT_PRIORS['shape_completion']} for small structures on isotropic grids, "
                        f"{SCAN_SHAPE_PRIOR} for anisotropic scans or "
                        f"structures over {LARGE_STRUCTURE_MM:g} mm")
    c.add_argument("--steps", type=step_count,
                   help="fitting steps on the annotated slices (default: the prior's)")
    c.add_argument("--label", type=positive_int, help="complete only this label (default: every label)")
    c.add_argument("--slices", help="annotated slices, e.g. '2:10,18,26;0:30' (default: found automatically)")
    _add_run_options(c, "JSON report: slices used, per-step loss, time of each phase",
                     "full ground-truth label map: adds Dice to the report")
    c.set_defaults(func=run_complete)


def _add_segment(sub) -> None:
    s = sub.add_parser("segment", help="segment an image with MetaSeg or NISF (the labels are never given)")
    s.add_argument("input", nargs="+", help="image(s) (.nii, .nii.gz, .nrrd), raw scanner intensities")
    _add_outputs(s, "label map on exactly the input's grid", "_segmented")
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
    _add_run_options(s, "JSON report: per-step loss, time of each phase, warnings",
                     "ground-truth label map: adds Dice per class to the report")
    s.set_defaults(func=run_segment)


def _add_demo(sub) -> None:
    d = sub.add_parser("demo", help="complete and segment the shipped samples with the bundled priors")
    d.add_argument("--out", default="inr-engine-demo", help="output folder (default: ./inr-engine-demo)")
    d.add_argument("--device", type=device_name, default="auto")
    d.add_argument("--quiet", action="store_true")
    d.set_defaults(func=run_demo)


def _add_train_shape(train) -> None:

    defaults = ShapeTrainingSettings()
    ts = train.add_parser("shape", help="meta-learn a shape-completion prior")
    ts.add_argument("--data", required=True,
                    help="a folder of NIfTI/NRRD label maps: every label of every file is a training shape")
    _add_training_options(ts)
    ts.add_argument("--steps", type=positive_int, default=defaults.steps, help="outer (meta) steps")
    ts.add_argument("--meta-batch", type=positive_int, default=defaults.meta_batch)
    ts.add_argument("--lr", type=positive_float, default=defaults.lr, help="outer Adam learning rate")
    ts.add_argument("--split-seed", type=non_negative_int, default=0)
    ts.add_argument("--max-val", type=non_negative_int, default=24, help="validation shapes scored during training")
    ts.add_argument("--config", nargs="*", help="ShapeConfig overrides, e.g. hidden_features=96 scale_mm=60")
    ts.add_argument("--data-workers", type=_number(int, 1, high=64), default=defaults.data_workers,
                    help="threads drawing training tasks (slice registration); the task sequence depends on "
                         "the seed and this number")
    ts.add_argument("--time-limit", type=positive_float, help="stop after this many seconds")
    ts.add_argument("--encoder-steps", type=non_negative_int, default=defaults.encoder.steps,
                    help="context encoder (--config encoder_channels=16,32,64): supervised steps before meta-learning")
    ts.add_argument("--encoder-time-limit", type=positive_float,
                    help="stop the context encoder's training after this many s")
    ts.add_argument("--encoder-batch", type=positive_int, default=defaults.encoder.batch,
                    help="context encoder: examples per step")
    ts.add_argument("--encoder-lr", type=positive_float, default=defaults.encoder.lr,
                    help="context encoder: Adam learning rate")
    ts.add_argument("--encoder-echo", type=positive_int, default=defaults.encoder.echo,
                    help="context encoder: use each prepared example about this many times (data echoing: on a "
                         "CPU, preparing examples is slower than training on them)")
    ts.add_argument("--init", help="continue training this prior (name or file): its configuration and weights are "
                                   "the start; --encoder-steps 0 keeps its context encoder")
    ts.add_argument("--log", help="JSON-lines training log")
    ts.set_defaults(func=run_train_shape)


def _add_train_segmentation(train) -> None:

    for method, what, defaults in (
            ("metaseg", "meta-learn a MetaSeg prior (intensity INR + class head)", MetaSegTrainingSettings()),
            ("nisf", "train a NISF auto-decoder prior, then its fast latent initialisation", NISFTrainingSettings())):
        tm = train.add_parser(method, help=what)
        tm.add_argument("--data", required=True, help="folder with images/ and labels/ (or imagesTr/, labelsTr/): "
                                                      "NIfTI/NRRD files of the same names")
        _add_training_options(tm)
        tm.add_argument("--steps", type=positive_int, default=defaults.steps,
                        help="outer (meta) steps, or auto-decoder steps (nisf)")
        batch = defaults.meta_batch if method == "metaseg" else defaults.batch
        tm.add_argument("--batch", type=positive_int, default=batch, help="subjects per step")
        tm.add_argument("--lr", type=positive_float, default=defaults.lr)
        tm.add_argument("--holdout", type=non_negative_int, default=0,
                        help="subjects left out entirely (for benchmarking)")
        tm.add_argument("--val", type=positive_int, help="validation subjects for checkpoint selection (default 10%%)")
        tm.add_argument("--classes", nargs="*", help="class names, background first")
        tm.add_argument("--split-seed", type=non_negative_int, default=0)
        tm.add_argument("--config", nargs="*", help="configuration overrides, e.g. hidden_features=96")
        tm.add_argument("--time-limit", type=positive_float, help="stop (the first stage) after this many seconds")
        tm.add_argument("--log", help="JSON-lines training log")
        if method == "nisf":
            tm.add_argument("--latent-steps", type=positive_int, default=defaults.latent_steps,
                            help="meta-learning steps of the fast latent initialisation")
        tm.set_defaults(func=run_train_segmentation)


def _add_train_strainer(train) -> None:

    defaults = StrainerSettings()
    tst = train.add_parser("strainer", help="build a STRAINER prior from a few cases (about a minute on a CPU)")
    tst.add_argument("--data", required=True, help="a folder of NIfTI/NRRD label maps (a shape-completion prior; "
                                                   "every label of every file is a case), or a folder with images/ "
                                                   "and labels/ (a MetaSeg segmentation prior)")
    _add_training_options(tst)
    tst.add_argument("--kind", choices=["auto", "shape", "segmentation"], default="auto",
                     help="auto: segmentation if the folder has images/, else shape")
    tst.add_argument("--cases", type=positive_int, default=10,
                     help="use at most this many cases (the first, by file name)")
    tst.add_argument("--steps", type=positive_int, default=defaults.steps,
                     help="joint fitting steps of the shared encoder")
    tst.add_argument("--time-limit", type=positive_float, default=defaults.time_limit_s,
                     help="stop the encoder's fit after this many seconds")
    tst.add_argument("--fit-steps", type=positive_int,
                     help="the prior's default test-time fitting steps (default: 20 for "
                          "shapes; 10 for segmentation, whose labels fade in longer fits)")
    tst.add_argument("--classes", nargs="*", help="segmentation: class names, background first")
    tst.set_defaults(func=run_train_strainer)


def _add_train_refine(train) -> None:

    tr = train.add_parser("refine", help="add a MORSE-style boundary refiner to a MetaSeg or NISF prior")
    tr.add_argument("--prior", default=DEFAULT_PRIORS["metaseg"],
                    help="MetaSeg or NISF prior (bundled name or file); NISF: for its fast procedure")
    tr.add_argument("--data", required=True, help="folder with images/ and labels/ (or imagesTr/, labelsTr/)")
    tr.add_argument("--out", required=True, help="prior file to write: the prior with its refiner")
    tr.add_argument("--cases", type=positive_int, default=48,
                    help="use at most this many subjects (the first, by file name)")
    tr.add_argument("--iterations", type=positive_int, default=REFINER_ITERATIONS,
                    help="training iterations of the refiner")
    tr.add_argument("--holdout", type=non_negative_int, default=0,
                    help="subjects left out (as in 'train metaseg --holdout')")
    tr.add_argument("--split-seed", type=non_negative_int, default=0)
    tr.add_argument("--seed", type=non_negative_int, default=0)
    tr.add_argument("--threads", type=positive_int, help="torch CPU threads")
    tr.set_defaults(func=run_train_refine)


def _add_priors(sub) -> None:
    pr = sub.add_parser("priors", help="list, show, verify or annotate priors; write a folder's SHA256 manifest")
    pr.add_argument("action", choices=["list", "show", "verify", "set", "manifest"])
    pr.add_argument("prior", nargs="?",
                    help="bundled name or file (show, verify; default: adrenal), a prior file (set), a folder of "
                         "priors (manifest)")
    pr.add_argument("--set", action="append", metavar="KEY=JSON",
                    help="set: change descriptive metadata, e.g. --set class_colors='[[0,0,0],[1,0.8,0.2]]' "
                         "(description, classes, class_colors, name, license; repeatable)")
    pr.set_defaults(func=run_priors)
