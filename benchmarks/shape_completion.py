"""Sparse-slice shape completion on held-out shapes: our method beside the baselines.

Protocol and metrics: ``docs/evaluation.md`` (shared). Methods, on the same sparse inputs
(``sparsify``: every w-th slice, starting w // 2 after the object's first slice):

* ours: the bundled prior (``adrenal``, ``head-neck-organs``), after 0, 1, 5 and 50 steps;
* random SIREN, B.(ii) pretrained SIREN, B.(i) auto-decoder (``benchmarks.baselines.coordinate_inr``),
  after 1, 5 and 50 steps; B.(i) and B.(ii) are trained on the training split first (cached
  under ``<--work-dir>/baselines``);
* Fill between slices (3D Slicer, ITK morphological contour interpolation);
* head and neck: the inter-rater agreement (oncologist vs radiographer, full masks).

Settings: AdrenalMNIST3D validation split, w = 4 and 8 along each axis; head-and-neck validation
scans (``hn_split``), every 4th and 8th axial slice of the oncologist's mask, per organ
(``--hn-planes`` adds or swaps in sagittal and coronal slicing).
Metrics: Dice, HD95 and symmetric ASD in mm (MONAI), time per completion. A timing section
runs whole completions (prepare, fit 5 steps, decode, mesh) of 64^3, 128^3 and 256^3 grids.

Example (see ``--help``)::

    python -m benchmarks.shape_completion --dataset all --baseline-train-seconds 1800
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.baselines.coordinate_inr import CoordinateBaseline, completions
from benchmarks.baselines.coordinate_inr import baselines as coordinate_baselines
from benchmarks.baselines.fill_between_slices import fill_between_slices
from benchmarks.datasets import ADRENAL_NPZ, HN_OAR, adrenal_shapes, hn_shapes, hn_split
from inr_engine.datasets import Shape
from inr_engine.frames import spacing
from inr_engine.metrics import segmentation_scores
from inr_engine.priors import load_prior, sha256
from inr_engine.shape.case import Case, prepare_case
from inr_engine.shape.complete import complete_labelmap
from inr_engine.shape.completer import ShapeCompleter
from inr_engine.shape.model import ShapeConfig
from inr_engine.shape.slices import SliceError, sparsify
from inr_engine.shape.training import PLANE_NORMALS, setting_axis

OURS, FBS, INTER_RATER = "ours", "Fill between slices", "inter-rater"
OURS_STEPS, BASELINE_STEPS = (0, 1, 5, 50), (1, 5, 50)
PLOT_EVERY = 8
Completions = dict[int, tuple[np.ndarray, float]]  # step -> (labelmap, seconds)


@dataclass
class Dataset:
    key: str
    prior: str  # bundled prior name or path
    val: list[Shape]  # held-out shapes (ground truth)
    settings: list[tuple[str, int]]  # (axis: "0"/"1"/"2" or a plane's name, every)
    train: Callable[[], list[Shape]]  # training shapes of the B.(i)/B.(ii) baselines (read lazily)
    train_key: str  # names the trained baselines' cache files


# --------------------------------------------------------------------------- data
def hn_first_shapes(root: str, scans: Iterable[str], rater: str, organs: list[str] | None, limit: int | None,
                    cache_dir: str | None) -> list[Shape]:
    """``hn_shapes`` of one rater, read scan by scan until ``limit`` shapes are read."""
    out: list[Shape] = []
    for scan in scans:
        out += hn_shapes(root, [scan], (rater,), organs, cache_dir=cache_dir)
        if limit is not None and len(out) >= limit:
            return out[:limit]
    return out


def organ_of(name: str) -> str:
    return name.split("/")[-1]


def datasets(args: argparse.Namespace) -> list[Dataset]:
    out = []
    if args.dataset in ("adrenal", "all"):
        val = adrenal_shapes(args.adrenal_npz, "val")[: args.max_shapes]
        out.append(Dataset("adrenal", args.prior_adrenal, val, [(str(a), w) for w in (4, 8) for a in range(3)],
                           lambda: adrenal_shapes(args.adrenal_npz, "train"), "adrenal"))
    if args.dataset in ("hn", "all"):
        train_scans, val_scans = hn_split(args.hn_root)
        val = hn_first_shapes(args.hn_root, val_scans, "oncologist", args.organs, args.max_shapes, args.cache_dir)
        train_scans = train_scans[: args.hn_train_scans]

        def train() -> list[Shape]:
            return hn_shapes(args.hn_root, train_scans, cache_dir=args.cache_dir)

        key = "hn" if args.hn_train_scans is None else f"hn{len(train_scans)}scans"
        settings = [(plane, every) for plane in args.hn_planes for every in (4, 8)]
        out.append(Dataset("hn", args.prior_hn, val, settings, train, key))
    return out


# --------------------------------------------------------------------------- metrics
def on_common_grid(a: Shape, b: Shape) -> tuple[np.ndarray, np.ndarray]:
    """Two crops of the same scan's grid pasted into their union box."""
    if not np.allclose(a.affine[:3, :3], b.affine[:3, :3]):
        raise ValueError(f"{a.name} and {b.name} are not on the same voxel grid")
    offset = np.rint(np.linalg.solve(a.affine[:3, :3], b.affine[:3, 3] - a.affine[:3, 3])).astype(int)
    lo = np.minimum(0, offset)
    hi = np.maximum(a.mask.shape, offset + np.asarray(b.mask.shape))
    out = []
    for mask, start in ((a.mask, -lo), (b.mask, offset - lo)):
        grid = np.zeros(hi - lo, bool)
        grid[tuple(slice(s, s + n) for s, n in zip(start, mask.shape))] = mask
        out.append(grid)
    return out[0], out[1]


# --------------------------------------------------------------------------- methods
def complete_ours(completer: ShapeCompleter, sparse: np.ndarray, affine: np.ndarray, axis: int, kept: list[int],
                  steps: Iterable[int]) -> tuple[Completions, Case]:
    """Our completion after each of ``steps``; seconds = prepare + fit to that step + decode."""
    start = time.perf_counter()
    case = completer.prepare(sparse, affine, {axis: kept})
    prepare_s = time.perf_counter() - start
    return completions(lambda n: completer.fit(case, n), lambda params: completer.labelmap(case, params), steps,
                       prepare_s), case


def run_case(shape: Shape, axis: int, every: int, completer: ShapeCompleter,
             coordinate: dict[str, CoordinateBaseline], steps: dict[str, tuple[int, ...]]) -> list[dict]:
    """Every method on one sparse input; one row per (method, step); ``steps``: ``ours`` and ``baselines``.

    An input of one slice (small objects at large w) is refused by the INR methods (they need the
    extent along the axis); their completion is then the sparse input, flagged ``fallback``.
    """
    sparse, kept = sparsify(shape.mask, axis, every)
    spc = spacing(shape.affine)
    rows = []

    def add(method: str, step: int | None, pred: np.ndarray, seconds: float, fallback: bool = False) -> None:
        rows.append({"method": method, "step": step, **segmentation_scores(pred, shape.mask, spc),
                     "seconds": seconds,
                     "fallback": fallback})

    start = time.perf_counter()
    filled = fill_between_slices(sparse, axis)
    add(FBS, None, filled, time.perf_counter() - start)
    try:
        ours, case = complete_ours(completer, sparse, shape.affine, axis, kept, steps["ours"])
    except SliceError:
        for method, kind in [(OURS, "ours")] + [(name, "baselines") for name in coordinate]:
            for step in steps[kind]:
                add(method, step, sparse, 0.0, fallback=True)
        return rows
    for step, (labelmap, seconds) in ours.items():
        add(OURS, step, labelmap, seconds)
    if coordinate:
        case = baseline_case(completer.cfg, sparse, shape.affine, axis, kept)
    for name, baseline in coordinate.items():
        for step, (labelmap, seconds) in baseline.fit_and_decode(case, steps["baselines"]).items():
            add(name, step, labelmap, seconds)
    return rows


def baseline_case(cfg: ShapeConfig, sparse: np.ndarray, affine: np.ndarray, axis: int, kept: list[int]) -> Case:
    """The case the coordinate baselines fit: our region and frame, context points drawn evenly from
    every annotated slice (our prior may draw half of them from a few held-out slices, which only
    our evidence features use)."""
    return prepare_case(sparse, affine, replace(cfg, encoder_channels=(), held_out_slices=0), {axis: kept})


def run_dataset(ds: Dataset, completer: ShapeCompleter, coordinate: dict[str, CoordinateBaseline],
                steps: dict[str, tuple[int, ...]]) -> list[dict]:
    axis_name, every = ds.settings[0]  # warm-up (imports, first calls) on a middle-sized shape, not recorded
    warm = sorted(ds.val, key=lambda s: s.mask.size)[len(ds.val) // 2]
    run_case(warm, setting_axis(warm.affine, axis_name), every, completer, coordinate,
             {"ours": (1,), "baselines": (1,)})
    rows = []
    for n, shape in enumerate(ds.val):
        start = time.perf_counter()
        for axis_name, every in ds.settings:
            axis = setting_axis(shape.affine, axis_name)
            setting = f"{'axis' if axis_name.isdigit() else ''}{axis_name}-w{every}"
            for row in run_case(shape, axis, every, completer, coordinate, steps):
                rows.append({"dataset": ds.key, "setting": setting, "shape": shape.name,
                             "organ": organ_of(shape.name) if ds.key == "hn" else None, **row})
        harness.log(f"{ds.key} {n + 1}/{len(ds.val)} {shape.name}: {time.perf_counter() - start:.1f} s")
    return rows


def inter_rater(root: str, val: list[Shape], cache_dir: str | None) -> list[dict]:
    """Oncologist vs radiographer full masks of the validation shapes, on their common grid."""
    scans = sorted({s.name.split("/")[0] for s in val})
    other = {(s.name.split("/")[0], organ_of(s.name)): s
             for s in hn_shapes(root, scans, ("radiographer",), cache_dir=cache_dir)}
    rows = []
    for shape in val:
        match = other.get((shape.name.split("/")[0], organ_of(shape.name)))
        if match is None:
            continue
        a, b = on_common_grid(shape, match)
        rows.append({"dataset": "hn", "setting": "full masks", "shape": shape.name, "organ": organ_of(shape.name),
                     "method": INTER_RATER, "step": None, **segmentation_scores(b, a, spacing(shape.affine)),
                     "seconds": None,
                     "fallback": False})
    return rows


# --------------------------------------------------------------------------- timing section
def one_completion(completer: ShapeCompleter, sparse: np.ndarray, affine: np.ndarray, axis: int, kept: list[int],
                   steps: int) -> dict[str, float]:
    """Phases of a whole completion (prepare, fit, decode, mesh), exactly as ``inr-engine complete`` runs it."""
    result = complete_labelmap(sparse.astype(np.uint8), affine, completer, steps, slices={axis: kept}, mesh_step=1.0)
    entry = result.report["labels"]["1"]
    return {**entry["phases"], "region_voxels": float(np.prod(np.subtract(entry["region"]["hi"],
                                                                           entry["region"]["lo"]))),
            "mesh_points": float(result.surfaces[1].GetNumberOfPoints())}


def timing_section(completer: ShapeCompleter, shape: Shape, repeats: int, steps: int = 5,
                   gap_mm: int = 8) -> list[dict]:
    """Whole completions of ``shape`` resampled to 64^3 (1 mm), 128^3 (0.5 mm) and 256^3 (0.25 mm),
    annotated every ``gap_mm`` mm along axis 0: medians of ``repeats`` runs after a warm-up."""
    from scipy import ndimage

    out = []
    for factor in (1, 2, 4):
        mask = ndimage.zoom(shape.mask.astype(np.uint8), factor, order=0) > 0
        affine = np.diag([1.0 / factor] * 3 + [1.0])
        sparse, kept = sparsify(mask, 0, gap_mm * factor)
        runs = [one_completion(completer, sparse, affine, 0, kept, steps) for _ in range(repeats + 1)][1:]
        medians = {k: float(np.median([r[k] for r in runs])) for k in runs[0]}
        out.append({"grid": f"{mask.shape[0]}^3", "spacing_mm": 1.0 / factor, "every": gap_mm * factor,
                    "repeats": repeats, **medians})
        harness.log(f"timing {mask.shape[0]}^3: total {medians['total']:.3f} s")
    return out


# --------------------------------------------------------------------------- summaries
def summarize(rows: list[dict], keys: tuple[str, ...]) -> list[dict]:
    groups: dict[tuple, list[dict]] = defaultdict(list)
    for r in rows:
        groups[tuple(r[k] for k in keys)].append(r)
    out = []
    for key, rs in groups.items():
        hd = np.array([r["hd95"] for r in rs], float)
        asd = np.array([r["asd"] for r in rs], float)
        secs = [r["seconds"] for r in rs if r["seconds"] is not None and not r["fallback"]]
        out.append({**dict(zip(keys, key)), "n": len(rs), "dice": float(np.mean([r["dice"] for r in rs])),
                    "hd95": float(np.nanmean(hd)) if np.isfinite(hd).any() else float("nan"),
                    "asd": float(np.nanmean(asd)) if np.isfinite(asd).any() else float("nan"),
                    "undefined_distances": int((~np.isfinite(hd)).sum()),
                    "median_seconds": float(np.median(secs)) if secs else None,
                    "mean_seconds": float(np.mean(secs)) if secs else None,
                    "fallbacks": int(sum(r["fallback"] for r in rs))})
    return out


def label(method: str, step: int | None) -> str:
    return method if step is None else f"{method}, {step} step{'s' if step != 1 else ''}"


def _fmt(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def _method_order(summary: list[dict]) -> list[tuple[str, int | None]]:
    rank = {OURS: 0, FBS: 1}
    keys = {(s["method"], s["step"]) for s in summary if s["method"] != INTER_RATER}
    return sorted(keys, key=lambda k: (rank.get(k[0], 2), k[0], -1 if k[1] is None else k[1]))


def markdown_dataset(key: str, summary: list[dict]) -> str:
    """Dice per setting (pivot), then every metric per method and setting."""
    summ = [s for s in summary if s["dataset"] == key and s["method"] != INTER_RATER]
    settings = sorted({s["setting"] for s in summ}, key=lambda x: (x.split("-w")[1].zfill(3), x))
    cell = {(s["method"], s["step"], s["setting"]): s for s in summ}
    pivot = [[label(*m)] + [_fmt(cell[(*m, st)]["dice"]) if (*m, st) in cell else "" for st in settings]
             for m in _method_order(summ)]
    long = [[label(*m), st, _fmt(c["dice"]), _fmt(c["hd95"], 2), _fmt(c["asd"], 2),
             _fmt(1000 * c["median_seconds"], 1) if c["median_seconds"] is not None else "n/a", str(c["n"]),
             str(c["fallbacks"])]
            for m in _method_order(summ) for st in settings if (c := cell.get((*m, st)))]
    return "\n\n".join([
        f"### {key}: mean Dice", _table(["method"] + settings, pivot),
        f"### {key}: Dice, HD95 (mm), ASD (mm), median time per completion (ms)",
        _table(["method", "setting", "Dice", "HD95", "ASD", "time ms", "n", "fallbacks"], long)])


def markdown_organs(summary_organs: list[dict]) -> str:
    """Head and neck: Dice per organ and setting, inter-rater Dice beside it."""
    cell = {(s["organ"], s["method"], s["step"], s["setting"]): s["dice"] for s in summary_organs}
    methods = [m for m in _method_order(summary_organs) if m[1] in (None, 0, 5, 50)]
    organs = sorted({s["organ"] for s in summary_organs})
    parts = []
    for setting in sorted({s["setting"] for s in summary_organs} - {"full masks"}):
        rows = [[organ] + [_fmt(cell.get((organ, *m, setting))) for m in methods]
                + [_fmt(cell.get((organ, INTER_RATER, None, "full masks")))] for organ in organs]
        parts += [f"### hn, {setting}: Dice per organ",
                  _table(["organ"] + [label(*m) for m in methods] + [INTER_RATER], rows)]
    return "\n\n".join(parts)


def markdown_parameters(runs: dict) -> str:
    methods = sorted({m for r in runs.values() for m in r["parameters"]})
    rows = [[m] + [f"{r['parameters'][m]['fitted']:,} / {r['parameters'][m]['stored']:,}" for r in runs.values()]
            for m in methods]
    return "\n\n".join(["### Parameters: fitted at test time / stored (prior or trained weights)",
                        _table(["method", *runs], rows)])


def markdown_timing(timing: list[dict], info: dict) -> str:
    phases = [k for k in timing[0] if k not in ("grid", "spacing_mm", "every", "repeats", "region_voxels",
                                                 "mesh_points")]
    rows = [[t["grid"], f"{t['spacing_mm']:g}", str(t["every"])] + [_fmt(1000 * t[p], 1) for p in phases]
            + [f"{int(t['region_voxels'])}"] for t in timing]
    return "\n\n".join([
        f"### Whole completion (ours): median ms over {timing[0]['repeats']} runs after a warm-up; "
        f"{info['device']}, {info['torch_threads']} torch threads, float32",
        _table(["grid", "spacing mm", "every (slices)", *[f"{p} ms" for p in phases], "region voxels"], rows)])


def plot(summary: list[dict], keys: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import FuncFormatter, LogLocator

    fig, axes = plt.subplots(1, len(keys), figsize=(6 * len(keys), 4.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        rows = [r for r in summary if r["dataset"] == key and r["method"] != INTER_RATER]
        for method in sorted({r["method"] for r in rows}, key=lambda m: (m != OURS, m != FBS, m)):
            pts = sorted((r["step"] or 0, r["mean_seconds"], r["dice"]) for r in rows if r["method"] == method)
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-" if len(pts) > 1 else "s", label=method)
            for step, x, y in pts:
                if method != FBS:
                    ax.annotate(str(step), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
        ax.set_xscale("log")
        seconds = FuncFormatter(lambda v, _: f"{v * 1000:g} ms" if v < 1 else f"{v:g} s")
        ax.xaxis.set_minor_locator(LogLocator(subs=(2.0, 5.0)))
        ax.xaxis.set_minor_formatter(seconds)
        ax.xaxis.set_major_formatter(seconds)
        ax.set_xlabel("mean time per completion (log)")
        ax.set_ylabel("mean Dice")
        ax.set_title(f"{key}, every {PLOT_EVERY}th slice (numbers: fitting steps)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --------------------------------------------------------------------------- run
def machine_info() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    code = "import time; t = time.perf_counter(); import inr_engine.shape.completer; " \
           "print(time.perf_counter() - t)"
    start = time.perf_counter()
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=os.environ)
    return {"device": f"CPU ({cpu})", "cpu_count": os.cpu_count(), "platform": platform.platform(),
            "python": platform.python_version(), "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
            "dtype": "float32", "load_average": os.getloadavg(),
            "import_seconds": float(imported.stdout.strip() or "nan"),
            "process_start_and_import_seconds": time.perf_counter() - start}


def load_completer(prior: str) -> tuple[ShapeCompleter, dict]:
    loaded = load_prior(prior)
    completer = ShapeCompleter.from_prior(loaded)
    return completer, {"prior": prior, "path": str(loaded.path), "name": loaded.name, "sha256": sha256(loaded.path),
                       "training_steps": loaded.metadata.get("training_steps"),
                       "parameters": {"fitted": sum(v.numel() for v in completer.init.values()),
                                      "stored": sum(v.numel() for v in loaded.tensors.values())}}


def run_dataset_all(ds: Dataset, args: argparse.Namespace, steps: dict[str, tuple[int, ...]]) -> tuple[list, dict]:
    """Every method on one dataset (baselines trained first if not cached); (rows, what was run)."""
    completer, prior = load_completer(ds.prior)
    harness.log(f"{ds.key}: {len(ds.val)} held-out shapes, prior {prior['path']}")
    coordinate = coordinate_baselines(ds.train_key, ds.train, args.baseline_train_seconds, completer.cfg,
                                      args.work_dir / "baselines", args.seed,
                                      lambda m: harness.log(f"{ds.key} baseline training: {m}"))
    rows = run_dataset(ds, completer, coordinate, steps)
    if ds.key == "hn":
        rows += inter_rater(args.hn_root, ds.val, args.cache_dir)
    info = {"prior": prior, "baseline_training": {k: b.training for k, b in coordinate.items() if b.training},
            "parameters": {OURS: prior["parameters"], FBS: {"fitted": 0, "stored": 0},
                           **{k: b.parameter_counts() for k, b in coordinate.items()}}}
    if ds.key == "adrenal" and args.timing_repeats > 0:
        info["timing"] = timing_section(completer, ds.val[0], args.timing_repeats)
    return rows, info


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = harness.parser(__doc__, seed=True)
    p.add_argument("--dataset", choices=["adrenal", "hn", "all"], default="all")
    p.add_argument("--max-shapes", type=int, default=None, help="first N held-out shapes per dataset (default all)")
    p.add_argument("--organs", nargs="+", default=None, help="head and neck: only these organs")
    p.add_argument("--baseline-train-seconds", type=float, default=1800.0,
                   help="training budget of B.(i) and of B.(ii), each, per dataset (cached in <work-dir>/baselines)")
    p.add_argument("--hn-planes", nargs="+", choices=sorted(PLANE_NORMALS), default=["axial"],
                   help="head and neck: slice planes to keep every 4th and 8th slice of (axial: the acquisition "
                        "plane)")
    p.add_argument("--hn-train-scans", type=int, default=None,
                   help="head and neck: train B.(i)/B.(ii) on the first N training scans only (quick checks)")
    p.add_argument("--prior-adrenal", default="adrenal")
    p.add_argument("--prior-hn", default="head-neck-organs")
    p.add_argument("--steps", type=int, nargs="+", default=list(OURS_STEPS), help="ours: fitting steps to score")
    p.add_argument("--baseline-steps", type=int, nargs="+", default=list(BASELINE_STEPS),
                   help="coordinate baselines: fitting steps to score (B.(i)'s paper: 1200)")
    p.add_argument("--replot", metavar="DIR", help="only redraw the plot of a finished run in DIR")
    p.add_argument("--timing-only", action="store_true", help="only time whole completions (64^3, 128^3, 256^3)")
    p.add_argument("--timing-repeats", type=int, default=5, help="0: skip the timing section")
    args = harness.parse(p, argv)
    args.adrenal_npz, args.hn_root = args.data_root / ADRENAL_NPZ, args.data_root / HN_OAR
    args.cache_dir = args.work_dir / "cache"  # head and neck: the cropped masks
    return args


def replot(out_dir: Path) -> None:
    """Redraw the plot from a finished run's ``shape_completion.json``."""
    result = json.loads((out_dir / "shape_completion.json").read_text())
    keys = sorted({r["dataset"] for r in result["summary_w8"]})
    plot(result["summary_w8"], keys, out_dir / "shape_completion_dice_vs_time.png")


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.replot:
        replot(Path(args.replot))
        return {}
    out_dir = args.out
    out_dir.mkdir(parents=True, exist_ok=True)
    info = machine_info()
    if args.timing_only:
        return timing_only(args, out_dir, info)
    rows, runs = [], {}
    steps = {"ours": tuple(args.steps), "baselines": tuple(args.baseline_steps)}
    for ds in datasets(args):
        ds_rows, runs[ds.key] = run_dataset_all(ds, args, steps)
        rows += ds_rows
    summary = summarize(rows, ("dataset", "setting", "method", "step"))
    organs = summarize([r for r in rows if r["dataset"] == "hn"], ("organ", "setting", "method", "step"))
    keys = sorted({r["dataset"] for r in rows})
    plot_summary = summarize([r for r in rows if r["setting"].endswith(f"-w{PLOT_EVERY}")], ("dataset", "method",
                                                                                               "step"))
    plot(plot_summary, keys, out_dir / "shape_completion_dice_vs_time.png")
    result = {"command": harness.command(), "machine": info, "datasets": runs, "steps": steps,
              "metrics": "Dice; HD95 and symmetric ASD in mm with MONAI (compute_hausdorff_distance percentile=95, "
                         "compute_average_surface_distance symmetric=True, spacing from the affine)",
              "summary": summary, "summary_hn_organs": organs, "summary_w8": plot_summary,
              "timing": runs.get("adrenal", {}).get("timing", []), "rows": rows}
    harness.write_results(out_dir, "shape_completion", result, markdown(result, keys))
    harness.log(f"wrote {out_dir}/shape_completion.{{json,md}} and shape_completion_dice_vs_time.png")
    return result


def timing_only(args: argparse.Namespace, out_dir: Path, info: dict) -> dict:
    """Only the whole-completion timing on 64^3, 128^3 and 256^3 grids (``--timing-only``)."""
    completer, prior = load_completer(args.prior_adrenal)
    shape = adrenal_shapes(args.adrenal_npz, "val")[0]
    timing = timing_section(completer, shape, max(args.timing_repeats, 1))
    result = {"command": harness.command(), "machine": info, "prior": prior["path"], "timing": timing}
    harness.write_results(out_dir, "timing", result, markdown_timing(timing, info))
    harness.log(f"wrote {out_dir}/timing.{{json,md}}")
    return result


def markdown(result: dict, keys: list[str]) -> str:
    info = result["machine"]
    parts = ["## Shape completion benchmark", f"Command: `{result['command']}`",
             f"Machine: {info['device']}, {info['cpu_count']} cores, torch {info['torch']} with "
             f"{info['torch_threads']} threads, float32. Import of the engine: {info['import_seconds']:.2f} s. "
             "Times are in-process: ours = prepare + fit + decode; coordinate baselines = fit + decode on the "
             "same region and frame, with context points drawn evenly from every annotated slice; "
             "Fill between slices = crop + interpolation; "
             "times exclude fallbacks. "
             "HD95/ASD: MONAI, mm; n/a where a completion is empty. Fallbacks: inputs of a single slice, "
             "which the INR methods refuse; their completion is then the sparse input."]
    parts += [markdown_dataset(k, result["summary"]) for k in keys]
    parts.append(markdown_parameters(result["datasets"]))
    if "hn" in keys:
        parts.append(markdown_organs(result["summary_hn_organs"]))
    if result["timing"]:
        parts.append(markdown_timing(result["timing"], info))
    return "\n\n".join(parts)


if __name__ == "__main__":
    main()
