"""Real-size completion, start-up, batch and segmentation speed (issue 20).

Sections (``--sections``, default all):

* ``completion``: every organ of held-out head-and-neck scans (the first ``--scans`` of the
  validation split) on its native 512x512xN grid, keeping every k-th axial slice, k = round(gap /
  slice spacing) and at least 2, for each gap of ``--gaps-mm``. In process, per ``--prior``: the
  report's phases (prepare, fit, decode, total), the wall time of ``complete_labelmap``, Dice
  against the full mask; 3D Slicer's Fill between slices on the same input (time, Dice); the ratio
  of the wall times. With ``--memory``, the peak resident memory of a child process that reads the
  mask, loads the prior and runs one completion (slow: a process per case).
* ``startup``: the wall time of ``inr-engine --help`` and of ``python -c "import torch"``.
* ``batch``: one ``inr-engine complete`` of the shipped 64^3 sample, and one call completing ten
  copies of it with ``--output-dir``.
* ``segmentation``: MetaSeg's and NISF's (fast procedure) fit with their default steps on the
  shipped hippocampus sample, and decoding every voxel of a 128^3 volume (the sample resampled).

Medians over ``--repeats``, after one warm-up run. Child processes get ``OMP_NUM_THREADS`` and
Fill between slices ``ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS`` set to ``--threads``.

Example::

    python -m benchmarks.real_size --data-root ../shared/data --threads 2 --memory --prior adrenal auto
"""

from __future__ import annotations

import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from benchmarks import harness
from benchmarks.datasets import HN_OAR, canonical_organ, hn_split
from inr_engine.data import SAMPLES_DIR
from inr_engine.frames import spacing
from inr_engine.io import read_volume
from inr_engine.metrics import dice
from inr_engine.priors import DEFAULT_PRIORS

SECTIONS = ("completion", "startup", "batch", "segmentation")
SAMPLE = SAMPLES_DIR / "adrenal_val000_sparse_w8_axis0.nii.gz"
HIPPOCAMPUS = SAMPLES_DIR / "hippocampus_004_image.nii.gz"
DECODE_GRID = (128, 128, 128)
PHASES = ("prepare", "fit", "decode", "total")


def parse_args(argv=None):
    p = harness.parser(__doc__, "real_size", threads=2, device=True)
    p.set_defaults(device="cpu")  # the targets are for 2 CPU cores
    p.add_argument("--sections", nargs="+", choices=SECTIONS, default=list(SECTIONS), help="what to measure")
    p.add_argument("--scans", type=int, default=2, help="held-out head-and-neck scans (validation split)")
    p.add_argument("--organs", nargs="+", help="organs to complete (default: every organ of those scans)")
    p.add_argument("--gaps-mm", nargs="+", type=float, default=[5.0, 10.0, 20.0],
                   help="gaps between annotated axial slices")
    p.add_argument("--prior", nargs="+", default=[DEFAULT_PRIORS["shape_completion"]],
                   help="shape priors, each reported (bundled names, files, or auto: the CLI's choice per input)")
    p.add_argument("--repeats", type=int, default=3, help="timed runs per measurement (medians)")
    p.add_argument("--memory", action="store_true", help="peak memory of a child process per completion (slow)")
    args = harness.parse(p, argv)
    if args.threads:
        os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", str(args.threads))
    return args


def timed(fn, repeats: int):
    """(the last result, the median wall time in seconds) of ``repeats`` calls after a warm-up call."""
    fn()
    seconds = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        seconds.append(time.perf_counter() - t0)
    return result, float(np.median(seconds))


# --------------------------------------------------------------------------- completion
def organ_files(root: Path, scans: list[str], organs: list[str] | None):
    wanted = None if organs is None else {canonical_organ(o) for o in organs}
    for scan in scans:
        for file in sorted((root / "oncologist" / scan / "segmentations").glob("*.nrrd")):
            if wanted is None or canonical_organ(file.stem) in wanted:
                yield scan, canonical_organ(file.stem), file


def sparse_input(mask: np.ndarray, affine: np.ndarray, gap_mm: float):
    """(sparse uint8 mask, axial axis, every, kept slices) of ``mask`` at ``gap_mm``."""
    from inr_engine.shape.slices import sparsify
    from inr_engine.shape.training import plane_axis

    axis = plane_axis(affine, "axial")
    every = max(2, round(gap_mm / spacing(affine)[axis]))
    sparse, kept = sparsify(mask, axis, every)
    return sparse.astype(np.uint8), axis, every, kept


def chosen_prior(name: str, sparse: np.ndarray, affine: np.ndarray) -> str:
    """``name``, or for ``auto`` the bundled prior the CLI chooses for this input."""
    from inr_engine.cli.running import shape_prior_for

    return shape_prior_for(SimpleNamespace(prior=name), SimpleNamespace(array=sparse, affine=affine))


class Completers:
    """Shape completers by prior, loaded once (and warmed up on the shipped sample)."""

    def __init__(self, device: str):
        self.device, self.loaded = device, {}

    def __call__(self, prior: str):
        if prior not in self.loaded:
            from inr_engine.priors import load_prior
            from inr_engine.runtime import resolve_device
            from inr_engine.shape.complete import complete_labelmap
            from inr_engine.shape.completer import ShapeCompleter

            completer = ShapeCompleter.from_prior(load_prior(prior, task="shape_completion"),
                                                  resolve_device(self.device))
            sample = read_volume(SAMPLE)
            complete_labelmap(sample.array, sample.affine, completer)
            self.loaded[prior] = completer
        return self.loaded[prior]


def ours(sparse, affine, full, completer, repeats: int) -> dict:
    from inr_engine.shape.complete import complete_labelmap

    reports = []  # not the completions: each holds a label map of the whole grid

    def run():
        result = complete_labelmap(sparse, affine, completer)
        reports.append(result.report)
        return result

    result, wall = timed(run, repeats)
    phases = [r["labels"]["1"]["phases"] for r in reports[1:]]
    return {"phases": {k: float(np.median([p[k] for p in phases])) for k in PHASES}, "wall_s": wall,
            "dice": dice(result.labels > 0, full), "steps": result.report["steps"]}


def fill(sparse, axis: int, full, repeats: int) -> dict:
    from benchmarks.baselines.fill_between_slices import fill_between_slices

    filled, wall = timed(lambda: fill_between_slices(sparse, axis), repeats)
    return {"wall_s": wall, "dice": dice(filled, full)}


def peak_memory(file: Path, gap_mm: float, prior: str, threads: int | None, device: str) -> dict:
    """Memory (MB) of a fresh process that runs one completion of this case: its peak resident
    memory over the whole run, and the most the completion added to what was resident before it."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(_one_completion, str(file), gap_mm, prior, threads, device).result()


def _one_completion(file: str, gap_mm: float, prior: str, threads: int | None, device: str) -> dict:
    from inr_engine.priors import load_prior
    from inr_engine.shape.complete import complete_labelmap
    from inr_engine.shape.completer import ShapeCompleter

    if threads:
        torch.set_num_threads(threads)
    volume = read_volume(file)
    sparse, *_ = sparse_input(volume.array > 0, volume.affine, gap_mm)
    completer = ShapeCompleter.from_prior(load_prior(prior, task="shape_completion"), device)
    peak, before = _memory_mb("VmHWM"), _memory_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to what is resident now
    complete_labelmap(sparse, volume.affine, completer)
    during = _memory_mb("VmHWM")
    return {"peak_mb": max(peak, during), "completion_added_mb": during - before}


def _memory_mb(key: str) -> float:
    """A ``/proc/self/status`` figure in MB (Linux). Not ``ru_maxrss``: a spawned child inherits its
    parent's high-water mark across ``exec``."""
    line = next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith(key + ":"))
    return int(line.split()[1]) / 1024


def complete_case(args, completers, file: Path, mask, affine, gap_mm: float) -> dict | None:
    sparse, axis, every, kept = sparse_input(mask, affine, gap_mm)
    if len(kept) < 2:
        return None
    case = {"gap_mm": gap_mm, "every": every, "axis": axis, "kept_slices": len(kept),
            "fill": fill(sparse, axis, mask, args.repeats), "ours": {}}
    for name in args.prior:
        prior = chosen_prior(name, sparse, affine)
        row = {"prior": prior, **ours(sparse, affine, mask, completers(prior), args.repeats)}
        row["ratio"] = row["wall_s"] / case["fill"]["wall_s"]
        if args.memory:
            row.update(peak_memory(file, gap_mm, prior, args.threads, args.device))
        case["ours"][name] = row
    return case


def completion(args) -> list[dict]:
    root = args.data_root / HN_OAR
    scans = hn_split(root)[1][: args.scans]
    completers, cases = Completers(args.device), []
    for scan, organ, file in organ_files(root, scans, args.organs):
        volume = read_volume(file)
        mask = volume.array > 0
        if not mask.any():
            continue
        for gap in args.gaps_mm:
            harness.log(f"{scan} {organ} {gap:g} mm ({int(mask.sum())} voxels)")
            case = complete_case(args, completers, file, mask, volume.affine, gap)
            if case is not None:
                cases.append({"scan": scan, "organ": organ, "shape": list(mask.shape), "voxels": int(mask.sum()),
                              **case})
    return cases


def summary(cases: list[dict], priors: list[str], gaps: list[float]) -> list[dict]:
    """Per prior and gap: median ratio over organs, median Dice, the lung-size time, the peak memory."""
    rows = []
    for name in priors:
        for gap in gaps:
            here = [c for c in cases if c["gap_mm"] == gap]
            if not here:
                continue
            ours_ = [c["ours"][name] for c in here]
            lungs = [o["wall_s"] for c, o in zip(here, ours_) if c["organ"].startswith("Lung")]
            peaks = [o["peak_mb"] for o in ours_ if "peak_mb" in o]
            rows.append({"prior": name, "gap_mm": gap, "cases": len(here),
                         "median_ratio": float(np.median([o["ratio"] for o in ours_])),
                         "median_dice": float(np.median([o["dice"] for o in ours_])),
                         "median_fill_dice": float(np.median([c["fill"]["dice"] for c in here])),
                         "lung_wall_s": float(np.median(lungs)) if lungs else None,
                         "max_wall_s": max(o["wall_s"] for o in ours_),
                         "max_peak_mb": max(peaks) if peaks else None})
    return rows


def plot(cases: list[dict], priors: list[str], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    sizes = [c["voxels"] for c in cases]
    ax.scatter(sizes, [c["fill"]["wall_s"] for c in cases], marker="s", label="Fill between slices")
    for name in priors:
        ax.scatter(sizes, [c["ours"][name]["wall_s"] for c in cases], label=f"ours (--prior {name})")
    ax.set(xscale="log", yscale="log", xlabel="structure size (foreground voxels)",
           ylabel="completion time (s, in process)", title="Real-size completion, every gap")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=150)
    plt.close(fig)


# --------------------------------------------------------------------------- start-up and batch
def cli() -> list[str]:
    script = Path(sys.executable).with_name("inr-engine")
    return [str(script)] if script.is_file() else [sys.executable, "-m", "inr_engine.cli"]


def child_env(threads: int | None) -> dict:
    return {**os.environ, **({"OMP_NUM_THREADS": str(threads)} if threads else {})}


def wall(cmd: list[str], env: dict, prepare=None) -> float:
    """Wall time of ``cmd`` (after ``prepare()``, which gives extra arguments, untimed)."""
    extra = prepare() if prepare else []
    t0 = time.perf_counter()
    proc = subprocess.run([*cmd, *extra], capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} exited {proc.returncode}: {proc.stderr.strip()[-2000:]}")
    return seconds


def median_wall(cmd: list[str], env: dict, repeats: int, prepare=None) -> float:
    wall(cmd, env, prepare)  # warm-up (file caches)
    return float(np.median([wall(cmd, env, prepare) for _ in range(repeats)]))


def startup(args) -> dict:
    env = child_env(args.threads)
    result = {"help_s": median_wall([*cli(), "--help"], env, args.repeats),
              "import_torch_s": median_wall([sys.executable, "-c", "import torch"], env, args.repeats)}
    result["help_over_import_torch"] = result["help_s"] / result["import_torch_s"]
    return result


def batch(args) -> dict:
    env, work = child_env(args.threads), Path(tempfile.mkdtemp(prefix="real_size_"))
    runs = iter(range(10**6))

    def one():
        return [str(SAMPLE), "--output", str(work / f"one{next(runs)}.nii.gz")]

    def ten():
        folder = work / f"ten{next(runs)}"
        folder.mkdir()
        inputs = [shutil.copy(SAMPLE, folder / f"case{n:02d}.nii.gz") for n in range(10)]
        return [*map(str, inputs), "--output-dir", str(folder / "out")]

    try:
        complete = [*cli(), "complete", "--quiet", "--device", args.device]
        result = {"one_s": median_wall(complete, env, args.repeats, one),
                  "ten_s": median_wall(complete, env, args.repeats, ten)}
        written = {len(list(out.glob("*_completed.nii.gz"))) for out in work.glob("ten*/out")}
        if written != {10}:
            raise RuntimeError(f"a batch of ten wrote {written} completions, not 10")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    result["ten_over_one"] = result["ten_s"] / result["one_s"]
    return result


# --------------------------------------------------------------------------- segmentation
def resampled(image: np.ndarray, affine: np.ndarray, shape=DECODE_GRID) -> tuple[np.ndarray, np.ndarray]:
    """``image`` resampled (linear) onto ``shape`` voxels over the same extent, and its affine."""
    from scipy import ndimage

    zoom = [n / m for n, m in zip(shape, image.shape)]
    scale = [(m - 1) / (n - 1) for n, m in zip(shape, image.shape)]
    return ndimage.zoom(image.astype(np.float32), zoom, order=1), affine @ np.diag([*scale, 1.0])


def segmentation(args) -> dict:
    image = read_volume(HIPPOCAMPUS)
    big, big_affine = resampled(image.array, image.affine)
    result = {"fit_volume": list(image.shape), "decode_volume": list(big.shape)}
    for method in ("metaseg", "nisf"):
        result[method] = segmenter_times(method, image, (big, big_affine), args)
    return result


def segmenter_times(method: str, image, large: tuple, args) -> dict:
    """Fit time (default steps) on ``image``, and the time to decode every voxel of ``large``."""
    from inr_engine.runtime import resolve_device
    from inr_engine.segmentation.segment import load_segmenter

    segmenter = load_segmenter(method, device=resolve_device(args.device))
    volume = segmenter.prepare(image.array, image.affine)
    steps, fit_s = timed(lambda: list(segmenter.fit(volume)), args.repeats)
    large = segmenter.prepare(*large)
    _, decode_s = timed(lambda: segmenter.labels(large, steps[-1].params), args.repeats)
    return {"steps": len(steps), "fit_s": fit_s, "decode_s": decode_s}


# --------------------------------------------------------------------------- report
def fmt(seconds) -> str:
    return "-" if seconds is None else f"{seconds:.2f}"


def mb(value) -> str:
    return "-" if value is None else f"{value:.0f}"


def completion_table(cases: list[dict], priors: list[str], gaps: list[float]) -> list[str]:
    rows = ["## Completion (in process, seconds)", "",
            "| scan | organ | gap mm (every) | voxels | prior | prepare | fit | decode | total | wall | Dice "
            "| Fill wall | Fill Dice | ratio | peak MB |", "|" + "---|" * 15]
    for c in cases:
        for name in priors:
            o = c["ours"][name]
            shown = name if o["prior"] == name else f"{name}: {o['prior']}"
            rows.append(f"| {c['scan']} | {c['organ']} | {c['gap_mm']:g} ({c['every']}) | {c['voxels']} | {shown} | "
                        + " | ".join(fmt(o["phases"][k]) for k in PHASES)
                        + f" | {fmt(o['wall_s'])} | {o['dice']:.3f} | {c['fill']['wall_s']:.3f} "
                        f"| {c['fill']['dice']:.3f} | {o['ratio']:.1f} | {mb(o.get('peak_mb'))} |")
    rows += ["", "Summary over organs, per prior and gap:", "",
             "| prior | gap mm | cases | median ratio (ours / Fill) | median Dice | median Fill Dice "
             "| lung-size wall | slowest wall | max peak MB |", "|" + "---|" * 9]
    for s in summary(cases, priors, gaps):
        rows.append(f"| {s['prior']} | {s['gap_mm']:g} | {s['cases']} | {s['median_ratio']:.1f} | "
                    f"{s['median_dice']:.3f} | {s['median_fill_dice']:.3f} | {fmt(s['lung_wall_s'])} | "
                    f"{fmt(s['max_wall_s'])} | {mb(s['max_peak_mb'])} |")
    return rows


def other_tables(results: dict) -> list[str]:
    rows = []
    if "startup" in results:
        s = results["startup"]
        rows += ["## Start-up", "", "| `inr-engine --help` | `python -c \"import torch\"` | ratio |", "|---|---|---|",
                 f"| {s['help_s']:.2f} s | {s['import_torch_s']:.2f} s | {s['help_over_import_torch']:.2f} |", ""]
    if "batch" in results:
        b = results["batch"]
        rows += ["## Batch (64^3 sample)", "", "| one completion, one call | ten, one call | ratio |", "|---|---|---|",
                 f"| {b['one_s']:.2f} s | {b['ten_s']:.2f} s | {b['ten_over_one']:.2f} |", ""]
    if "segmentation" in results:
        s = results["segmentation"]
        rows += ["## Segmentation", "", f"| method | steps | fit ({'x'.join(map(str, s['fit_volume']))}) "
                 f"| decode every voxel of {'x'.join(map(str, s['decode_volume']))} |", "|---|---|---|---|"]
        rows += [f"| {m} | {s[m]['steps']} | {s[m]['fit_s']:.2f} s | {s[m]['decode_s']:.2f} s |"
                 for m in ("metaseg", "nisf")]
    return rows


def table(results: dict, args) -> str:
    rows = ["# Real-size completion and start-up (issue 20)", "", f"`{results['command']}`", "",
            f"Medians of {args.repeats} timed run(s) after a warm-up, {args.threads} threads, {args.device}; "
            "ratio: our wall time over Fill between slices'.", ""]
    if "completion" in results:
        rows += [*completion_table(results["completion"], args.prior, args.gaps_mm), "",
                 "![completion time against structure size](real_size_time_vs_size.png)", ""]
    return "\n".join(rows + other_tables(results))


def machine(args) -> dict:
    return {"cpu": platform.processor() or platform.machine(), "cpu_count": os.cpu_count(),
            "threads": args.threads, "device": args.device, "python": platform.python_version(),
            "torch": torch.__version__, "load_average": os.getloadavg()}


def main(argv=None) -> int:
    args = parse_args(argv)
    results = {"command": harness.command(), "machine": machine(args), "priors": args.prior,
               "gaps_mm": args.gaps_mm, "repeats": args.repeats}
    for section, run in (("completion", completion), ("startup", startup), ("batch", batch),
                         ("segmentation", segmentation)):
        if section in args.sections:
            harness.log(section)
            results[section] = run(args)
            harness.write_results(args.out, "real_size", results)  # kept if a later section fails
    if "completion" in results:
        results["summary"] = summary(results["completion"], args.prior, args.gaps_mm)
        plot(results["completion"], args.prior, args.out / "real_size_time_vs_size.png")
    harness.write_results(args.out, "real_size", results, table(results, args))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
