"""MetaSeg and NISF on held-out hippocampus subjects, beside the MONAI U-Net baseline.

Held-out subjects: ``seeded_split(labelled_image_names(root), 40, seed=0)`` of MSD Task04
Hippocampus, never used in training (the priors select checkpoints on an inner validation
split of the other 160). Methods:

* MetaSeg (bundled ``hippocampus-metaseg`` or ``--metaseg``): fitted to intensities only;
* NISF (bundled ``hippocampus-nisf`` or ``--nisf``), fast procedure (meta-learned latent start
  and step sizes) and the paper's procedure (latent from N(0, 1e-4), Adam, the step count
  chosen on validation data during training);
* MONAI U-Net: read from ``<out>/unet.json``, written by ``benchmarks.unet_baseline``.

Metrics: per-class foreground Dice (anterior, posterior) and their mean, HD95 in mm (MONAI,
file spacing), trainable parameters (fitted at test time, and in the prior file), fit time per
volume (median over ``--timing-repeats`` runs after a warm-up, ``--threads`` threads), and Dice
against fitting steps (PNG).

Example::

    python -m benchmarks.segmentation --threads 2
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.datasets import HIPPOCAMPUS
from inr_engine.datasets import LabelledImage, labelled_image_names, labelled_images, seeded_split
from inr_engine.frames import spacing
from inr_engine.metrics import segmentation_scores
from inr_engine.segmentation.metaseg import MetaSegSegmenter
from inr_engine.segmentation.segment import load_segmenter

CLASSES = ("anterior", "posterior")
CURVE_STEPS = {"MetaSeg": (0, 1, 2, 3, 5, 10, 20, 50), "NISF fast": (0, 1, 2, 3, 5, 10, 20, 50),
               "NISF paper": (0, 10, 25, 50, 100, 150, 200, 300, 400)}


METHODS = ("MetaSeg", "NISF fast", "NISF paper")


def methods(args) -> dict:
    make = {"MetaSeg": lambda: load_segmenter("metaseg", args.metaseg),
            "NISF fast": lambda: load_segmenter("nisf", args.nisf, procedure="fast"),
            "NISF paper": lambda: load_segmenter("nisf", args.nisf, procedure="paper")}
    return {name: make[name]() for name in args.methods}


def scores(pred: np.ndarray, subject: LabelledImage) -> dict:
    out = {}
    for c, name in enumerate(CLASSES, start=1):
        s = segmentation_scores(pred == c, subject.labels == c, spacing(subject.affine))
        out[name] = {"dice": s["dice"], "hd95": s["hd95"]}
    return out


def evaluate(segmenter, subject: LabelledImage, steps: tuple[int, ...], default: int) -> dict:
    """Scores after each step count in ``steps`` (one fit), and the full scores at ``default``."""
    volume = segmenter.prepare(subject.image, subject.affine)
    wanted = sorted(set(steps) | {default})
    curve, full = {}, None
    params = None
    fits = iter(segmenter.fit(volume, max(wanted))) if max(wanted) else iter(())
    for n in wanted:
        while n and (params is None or params[0] < n):
            st = next(fits)
            params = (st.step, st.params)
        pred = segmenter.labels(volume, params[1] if params else None)
        s = scores(pred, subject)
        curve[n] = float(np.mean([s[c]["dice"] for c in CLASSES]))
        if n == default:
            full = s
    return {"curve": curve, "scores": full}


def fit_seconds(segmenter, subjects: list[LabelledImage], repeats: int) -> float:
    """Median seconds of prepare + default fit + decode per volume, after a warm-up."""
    times = []
    for n in range(repeats + 1):
        subject = subjects[n % len(subjects)]
        start = time.perf_counter()
        volume = segmenter.prepare(subject.image, subject.affine)
        params = None
        for st in segmenter.fit(volume):
            params = st.params
        segmenter.labels(volume, params)
        if n:
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def parameters(segmenter) -> dict:
    """Trainable parameters of the network run at test time, and of the part that is fitted."""
    if isinstance(segmenter, MetaSegSegmenter):  # the SIREN is fitted, the head is not
        return {"network": sum(t.numel() for t in segmenter.init.values()),
                "fitted": sum(segmenter.init[k].numel() for k in segmenter.step_sizes)}
    fitted = set(segmenter.step_sizes) if segmenter.procedure == "fast" else {"latent"}
    return {"network": sum(t.numel() for t in segmenter.weights.values()),
            "fitted": sum(segmenter.weights[k].numel() for k in fitted)}


def summarise(rows: dict, name: str) -> dict:
    per = rows[name]
    out = {}
    for c in CLASSES:
        d = [r["scores"][c]["dice"] for r in per]
        h = [r["scores"][c]["hd95"] for r in per if np.isfinite(r["scores"][c]["hd95"])]
        out[c] = {"dice": float(np.mean(d)), "dice_std": float(np.std(d)), "hd95": float(np.mean(h))}
    out["mean_dice"] = float(np.mean([out[c]["dice"] for c in CLASSES]))
    out["curve"] = {str(k): float(np.mean([r["curve"][k] for r in per])) for k in per[0]["curve"]}
    return out


def plot(summary: dict, unet: dict | None, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for name, s in summary.items():
        steps = [int(k) for k in s["curve"]]
        ax.plot([max(k, 0.5) for k in steps], list(s["curve"].values()), "o-", label=name)
    if unet is not None:
        ax.axhline(unet["mean_dice"], color="k", ls="--", label="MONAI U-Net (supervised)")
    ax.axhline(0.682, color="grey", ls=":", label="location-only atlas")
    ax.set_xscale("log")
    ax.set_xlabel("fitting steps on the image's intensities (0 plotted at 0.5)")
    ax.set_ylabel("mean foreground Dice (anterior, posterior)")
    ax.set_title("Held-out MSD hippocampus subjects")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def read_unet(out: Path) -> dict | None:
    path = out / "unet.json"
    if not path.is_file():
        return None
    data = json.loads(path.read_text())
    return {"mean_dice": data["scores"]["mean"]["dice_mean"], "raw": data}


def main(argv: list[str] | None = None) -> None:
    p = harness.parser(__doc__, "hippocampus", threads=2)
    p.add_argument("--metaseg", help="MetaSeg prior (default: bundled)")
    p.add_argument("--nisf", help="NISF prior (default: bundled)")
    p.add_argument("--max-subjects", type=int)
    p.add_argument("--timing-repeats", type=int, default=7)
    p.add_argument("--reuse-rows", action="store_true", help="reuse the per-subject rows of an interrupted run")
    p.add_argument("--methods", nargs="*", default=list(METHODS), choices=METHODS,
                   help="a subset updates those rows of an existing segmentation.json")
    args = harness.parse(p, argv)
    data = args.data_root / HIPPOCAMPUS
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    _, held_out = seeded_split(labelled_image_names(data), 40, 0)
    subjects = labelled_images(data, held_out[: args.max_subjects])
    segmenters = methods(args)
    (args.work_dir / "segmentation").mkdir(parents=True, exist_ok=True)
    rows: dict[str, list] = {}
    for name, seg in segmenters.items():  # rows are kept as they come, so a later failure loses nothing
        cache = args.work_dir / "segmentation" / f"rows-{name.replace(' ', '-')}.json"
        if args.reuse_rows and cache.is_file():
            rows[name] = json.loads(cache.read_text())["rows"]
            harness.log(f"{name}: rows reused from {cache}")
            continue
        harness.log(f"{name}: {len(subjects)} subjects, default {seg.default_steps} steps")
        rows[name] = [evaluate(seg, s, CURVE_STEPS[name], seg.default_steps) for s in subjects]
        cache.write_text(json.dumps({"rows": rows[name]}))
    summary = {name: summarise(rows, name) for name in rows}
    for name, seg in segmenters.items():
        summary[name]["steps"] = seg.default_steps
        summary[name]["parameters"] = parameters(seg)
        summary[name]["seconds_per_volume"] = fit_seconds(seg, subjects, args.timing_repeats)
        summary[name]["prior"] = {"name": seg.prior.name, "path": str(seg.prior.path)}
    previous = out / "segmentation.json"
    if set(args.methods) != set(METHODS) and previous.is_file():  # keep the other methods' rows
        old = json.loads(previous.read_text())
        summary = {**{k: v for k, v in old["summary"].items() if k not in summary}, **summary}
        rows = {**{k: v for k, v in old["per_subject"].items() if k not in rows}, **rows}
        summary = {k: summary[k] for k in METHODS if k in summary}
    unet = read_unet(out)
    plot(summary, unet, out / "segmentation_dice_vs_steps.png")
    result = {"subjects": held_out[: args.max_subjects], "summary": summary,
              "unet": unet["raw"] if unet else None, "per_subject": rows,
              "machine": {"platform": platform.platform(), "processor": platform.processor(),
                          "threads": args.threads, "torch": torch.__version__, "dtype": "float32"},
              "command": harness.command()}
    harness.write_results(out, "segmentation", result, markdown(summary, unet))


def markdown(summary: dict, unet: dict | None) -> str:
    lines = ["| method | steps | Dice anterior | Dice posterior | mean Dice | HD95 ant. / post. (mm) | parameters "
             "(fitted) | time per volume |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary.items():
        a, b = s["anterior"], s["posterior"]
        lines.append(f"| {name} | {s['steps']} | {a['dice']:.3f} | {b['dice']:.3f} | **{s['mean_dice']:.3f}** | "
                     f"{a['hd95']:.2f} / {b['hd95']:.2f} | {s['parameters']['network']:,} "
                     f"({s['parameters']['fitted']:,}) | {s['seconds_per_volume']:.2f} s |")
    if unet is not None:
        raw = unet["raw"]
        m = raw["scores"]["mean"]
        lines.append(f"| MONAI U-Net (supervised) | - | {m['dice_anterior']:.3f} | {m['dice_posterior']:.3f} | "
                     f"**{m['dice_mean']:.3f}** | {m['hd95_anterior']:.2f} / {m['hd95_posterior']:.2f} | "
                     f"{raw['parameters']:,} | {raw['scores']['inference_seconds_median']:.2f} s |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
