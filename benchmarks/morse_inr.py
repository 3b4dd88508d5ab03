"""MetaSeg or NISF with and without MORSE-style boundary refinement on the held-out hippocampus subjects.

Scores a prior that carries a refiner (default: the bundled ``hippocampus-metaseg``,
whose refiner ``scripts/train_bundled_priors.sh`` trains with ``inr-engine train refine`` on 48
training-side subjects) on the 40 subjects held out of every training here: the same fit, then
labels decoded plainly and with the 2048 most uncertain voxels re-rendered. Per-class Dice,
HD95 and ASD (mm, MONAI), medians and means over subjects, and the refinement's time.

Example::

    python -m benchmarks.morse_inr --threads 2
    inr-engine train refine --prior hippocampus-nisf --data DATA --holdout 40 --out runs/nisf-refined.safetensors
    python -m benchmarks.morse_inr --method nisf --prior runs/nisf-refined.safetensors
"""

from __future__ import annotations

import sys
import time

import numpy as np

from benchmarks import harness
from benchmarks.datasets import HIPPOCAMPUS
from inr_engine.datasets import labelled_image_names, labelled_images, seeded_split
from inr_engine.frames import spacing
from inr_engine.metrics import segmentation_scores
from inr_engine.segmentation import refinement
from inr_engine.segmentation.segment import load_segmenter

CLASSES = {1: "anterior", 2: "posterior"}


def scores(labels: np.ndarray, truth: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    out = {}
    for value, name in CLASSES.items():
        for metric, v in segmentation_scores(labels == value, truth == value, spacing(affine)).items():
            out[f"{metric}_{name}"] = float(v)
    return out


def summary(rows: list[dict]) -> dict:
    keys = [k for k in rows[0] if k != "name"]
    return {f"{stat}_{k}": float(fn([r[k] for r in rows])) for k in keys
            for stat, fn in (("median", np.nanmedian), ("mean", np.nanmean))}


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__, "hippocampus", threads=2)
    p.add_argument("--method", choices=["metaseg", "nisf"], default="metaseg")
    p.add_argument("--prior", default="hippocampus-metaseg")
    args = harness.parse(p, argv)
    data = args.data_root / HIPPOCAMPUS
    _, held_out = seeded_split(labelled_image_names(data), 40, 0)
    segmenter = load_segmenter(args.method, args.prior)
    refiner = refinement.load_refiner(segmenter)
    rows: dict[str, list[dict]] = {"plain": [], "refined": []}
    seconds = []
    for image in labelled_images(data, held_out):
        volume = segmenter.prepare(image.image, image.affine)
        params = [st.params for st in segmenter.fit(volume)][-1]
        rows["plain"].append({"name": image.name, **scores(segmenter.labels(volume, params), image.labels,
                                                              image.affine)})
        start = time.perf_counter()
        refined = refinement.refined_labels(segmenter, refiner, volume, params)
        seconds.append(time.perf_counter() - start)
        rows["refined"].append({"name": image.name, **scores(refined, image.labels, image.affine)})
    result = {"prior": str(segmenter.prior.path), "refinement": segmenter.prior.metadata["refinement"],
              "steps": segmenter.default_steps, "held_out": held_out, "threads": args.threads,
              "refine_seconds_median": float(np.median(seconds)), "command": harness.command(),
              "date": time.strftime("%Y-%m-%d"), "summary": {k: summary(v) for k, v in rows.items()}, "rows": rows}
    lines = [f"| {args.method} labels | Dice ant. / post. (median) | HD95 ant. / post. (mm, median) | "
             "ASD ant. / post. (mm, median) | mean Dice (mean over subjects) |", "|---|---|---|---|---|"]
    for name, s in result["summary"].items():
        lines.append(f"| {name} | {s['median_dice_anterior']:.3f} / {s['median_dice_posterior']:.3f} | "
                     f"{s['median_hd95_anterior']:.2f} / {s['median_hd95_posterior']:.2f} | "
                     f"{s['median_asd_anterior']:.3f} / {s['median_asd_posterior']:.3f} | "
                     f"{(s['mean_dice_anterior'] + s['mean_dice_posterior']) / 2:.4f} |")
    lines.append(f"\nRefinement: {result['refine_seconds_median'] * 1000:.0f} ms per volume (median), "
                 f"{len(held_out)} held-out subjects, {result['steps']} fitting steps.")
    harness.write_results(args.out, "morse_inr" if args.method == "metaseg" else f"morse_inr_{args.method}", result,
                  "\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
