"""STRAINER priors from 10 cases against a random SIREN and the meta-learned priors, by fitting steps.

Intensity (MSD Task04 Hippocampus): a STRAINER MetaSeg prior is built from the first ``--cases``
subjects of the training side of the shared split; on the first ``--held-out`` held-out subjects,
PSNR of the fitted intensity (all voxels, normalised [0, 1] image) and mean foreground Dice of
the labels after 1, 10, 100 and 1000 steps, for:

* random SIREN: MetaSeg's SIREN freshly initialised, fitted by the same Adam (1e-4, 4096 voxels
  per step), plain and with its decoder solved by least squares first (as STRAINER's is);
* STRAINER: the shared encoder, its fresh decoder solved by least squares, then Adam;
* meta-learned: the bundled ``hippocampus-metaseg`` prior (trained on 148 subjects), by its own fit.

Shapes: STRAINER shape-completion priors from ``--cases`` training shapes of AdrenalMNIST3D and
of the head-and-neck organs (parotids, mandible, brainstem, spinal cord), each used in its own
domain and in the other (transfer), beside a randomly initialised occupancy INR (same
architecture and fit) and the bundled meta-learned priors; Dice on held-out shapes with every
8th slice kept (adrenal: along each axis in turn; head and neck: axial).

Example::

    python -m benchmarks.strainer --threads 2
"""

from __future__ import annotations

import platform
import sys
import time

import numpy as np
import torch
from torch.func import functional_call

from benchmarks import harness
from benchmarks.datasets import (
    ADRENAL_NPZ,
    HIPPOCAMPUS,
    HIPPOCAMPUS_CLASSES,
    HN_OAR,
    HN_VALIDATION_ORGANS,
    adrenal_shapes,
    hn_shapes,
    hn_split,
)
from inr_engine import strainer
from inr_engine.datasets import labelled_image_names, labelled_images, seeded_split
from inr_engine.meta import sub_params
from inr_engine.priors import load_prior
from inr_engine.segmentation import metaseg
from inr_engine.segmentation import strainer as segmentation_strainer
from inr_engine.segmentation.training import foreground_dice
from inr_engine.shape import strainer as shape_strainer
from inr_engine.shape.completer import ShapeCompleter
from inr_engine.shape.model import OccupancyINR
from inr_engine.shape.slices import SliceError
from inr_engine.shape.training import plane_axis, protocol_dice

STEPS = (1, 10, 100, 1000)
EVERY = 8


# --------------------------------------------------------------------------- intensity
def psnr(segmenter: metaseg.MetaSegSegmenter, volume, params) -> float:
    with torch.no_grad():
        pred = functional_call(segmenter.model.siren, sub_params(params, "siren."), (volume.coords,))[..., 0]
    pred = pred.clamp(0, 1)
    return 10 * float(np.log10(1.0 / float((pred - volume.intensity).pow(2).mean())))


def intensity_curves(segmenter, images, steps, with_dice: bool) -> dict:
    rows = []
    for im in images:
        volume = segmenter.prepare(im.image, im.affine)
        row = {"name": im.name}
        for st in segmenter.fit(volume, max(steps)):
            if st.step in steps:
                row[f"psnr_{st.step}"] = psnr(segmenter, volume, st.params)
                if with_dice:
                    labels = segmenter.labels(volume, st.params)
                    row[f"dice_{st.step}"] = float(np.mean(foreground_dice(labels, im.labels, 3)))
        rows.append(row)
    return {"per_case": rows, **{k: float(np.median([r[k] for r in rows])) for k in rows[0] if k != "name"}}


def intensity_part(args) -> dict:
    train_names, val_names = seeded_split(labelled_image_names(args.hippocampus), 40, 0)
    cases = labelled_images(args.hippocampus, train_names[: args.cases])
    held_out = labelled_images(args.hippocampus, val_names[: args.held_out])
    prior_path = args.work / "strainer-hippocampus.safetensors"
    start = time.perf_counter()
    meta = segmentation_strainer.build_segmentation_prior(cases, prior_path, class_names=list(HIPPOCAMPUS_CLASSES),
                                                          settings=strainer.StrainerSettings(seed=args.seed))
    build_seconds = time.perf_counter() - start
    harness.log(f"STRAINER MetaSeg prior from {len(cases)} subjects in {build_seconds:.0f} s")
    st = metaseg.MetaSegSegmenter.from_prior(load_prior(prior_path))
    plain_cfg = segmentation_strainer.segmentation_config(decoder_init="prior")
    methods = {
        "random SIREN": (segmentation_strainer.random_segmenter(plain_cfg, args.seed), False),
        "random SIREN, least-squares decoder": (segmentation_strainer.random_segmenter(st.cfg, args.seed), False),
        f"STRAINER ({len(cases)} cases)": (st, True),
        "meta-learned (hippocampus-metaseg, 148 cases)": (
            metaseg.MetaSegSegmenter.from_prior(load_prior("hippocampus-metaseg")), True),
    }
    results = {}
    for name, (segmenter, with_dice) in methods.items():
        results[name] = intensity_curves(segmenter, held_out, args.steps, with_dice)
        harness.log(f"{name}: " + ", ".join(f"{k} {v:.3f}" for k, v in results[name].items() if k != "per_case"))
    return {"build_seconds": build_seconds, "strainer": meta["strainer"], "cases": [c.name for c in cases],
            "held_out": [h.name for h in held_out], "methods": results}


# --------------------------------------------------------------------------- shapes
def shape_sets(args) -> dict[str, tuple[list, list]]:
    """Domain -> (STRAINER training shapes, held-out shapes)."""
    adrenal_train = adrenal_shapes(args.adrenal_npz, "train")[: args.cases]
    adrenal_val = adrenal_shapes(args.adrenal_npz, "val")[: args.held_out_shapes]
    train_scans, val_scans = hn_split(args.hn_root)
    hn_train, hn_val = [], []
    for scan in train_scans:
        hn_train += hn_shapes(args.hn_root, [scan], ("oncologist",), HN_VALIDATION_ORGANS, cache_dir=args.cache_dir)
        if len(hn_train) >= args.cases:
            break
    for scan in val_scans:
        hn_val += hn_shapes(args.hn_root, [scan], ("oncologist",), HN_VALIDATION_ORGANS, cache_dir=args.cache_dir)
    return {"adrenal": (adrenal_train, adrenal_val), "hn": (hn_train[: args.cases], hn_val[: args.held_out_shapes])}


def shape_dice(completer: ShapeCompleter, shapes, domain: str, steps) -> dict:
    per_step: dict[int, list[float]] = {s: [] for s in steps}
    for shape in shapes:
        axes = [plane_axis(shape.affine, "axial")] if domain == "hn" else [0, 1, 2]
        for axis in axes:
            try:
                scores = protocol_dice(completer, shape, axis, EVERY, steps)
            except SliceError:
                continue
            for s, d in scores.items():
                per_step[s].append(d)
    return {f"dice_{s}": float(np.median(v)) for s, v in per_step.items()} | {"cases": len(per_step[steps[0]])}


def shape_part(args) -> dict:
    sets = shape_sets(args)
    completers, builds = {}, {}
    cfg = shape_strainer.shape_config()
    torch.manual_seed(args.seed)
    completers["random occupancy INR"] = ShapeCompleter(
        cfg, *(lambda init: (init, strainer.zero_step_sizes(init)))(
            {k: v.detach() for k, v in OccupancyINR(cfg).named_parameters()}))
    for domain, (train, _) in sets.items():
        path = args.work / f"strainer-{domain}.safetensors"
        start = time.perf_counter()
        shape_strainer.build_shape_prior(train, path, settings=strainer.StrainerSettings(seed=args.seed))
        builds[domain] = time.perf_counter() - start
        harness.log(f"STRAINER shape prior from {len(train)} {domain} shapes in {builds[domain]:.0f} s")
        completers[f"STRAINER ({domain}, {len(train)} shapes)"] = ShapeCompleter.from_prior(load_prior(path))
    completers["meta-learned (adrenal)"] = ShapeCompleter.from_prior(load_prior("adrenal"))
    completers["meta-learned (head-neck-organs)"] = ShapeCompleter.from_prior(load_prior("head-neck-organs"))
    results: dict[str, dict] = {}
    for domain, (_, held_out) in sets.items():
        for name, completer in completers.items():
            results.setdefault(domain, {})[name] = shape_dice(completer, held_out, domain, args.steps)
            harness.log(f"{domain} / {name}: {results[domain][name]}")
    return {"build_seconds": builds, "methods": results}


# --------------------------------------------------------------------------- report
def markdown(result: dict, steps) -> str:
    lines = []
    if "intensity" in result:
        part = result["intensity"]
        lines += [f"Intensity fitting, {len(part['held_out'])} held-out hippocampus subjects (median); "
                  f"STRAINER prior built from {len(part['cases'])} subjects in {part['build_seconds']:.0f} s.", "",
                  "| initialisation | " + " | ".join(f"PSNR {s}" for s in steps) + " | "
                  + " | ".join(f"Dice {s}" for s in steps) + " |",
                  "|---|" + "---|" * (2 * len(steps))]
        for name, r in part["methods"].items():
            dice = [f"{r[f'dice_{s}']:.3f}" if f"dice_{s}" in r else "-" for s in steps]
            lines.append(f"| {name} | " + " | ".join(f"{r[f'psnr_{s}']:.2f}" for s in steps) + " | "
                         + " | ".join(dice) + " |")
        lines.append("")
    if "shapes" in result:
        part = result["shapes"]
        for domain, methods in part["methods"].items():
            cases = next(iter(methods.values()))["cases"]
            lines += [f"Shape completion, {domain}, every {EVERY}th slice, {cases} held-out completions (median Dice).",
                      "", "| initialisation | " + " | ".join(f"{s} steps" for s in steps) + " |",
                      "|---|" + "---|" * len(steps)]
            lines += [f"| {name} | " + " | ".join(f"{r[f'dice_{s}']:.3f}" for s in steps) + " |"
                      for name, r in methods.items()]
            lines.append("")
        lines.append("STRAINER shape priors built in " + ", ".join(
            f"{d} {s:.0f} s" for d, s in part["build_seconds"].items()) + ".")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__, "strainer", threads=2, seed=True)
    p.add_argument("--part", choices=["intensity", "shapes", "all"], default="all")
    p.add_argument("--cases", type=int, default=10, help="training cases of each STRAINER prior")
    p.add_argument("--held-out", type=int, default=5, help="held-out hippocampus subjects")
    p.add_argument("--held-out-shapes", type=int, default=10, help="held-out shapes per domain")
    p.add_argument("--steps", type=int, nargs="+", default=list(STEPS))
    args = harness.parse(p, argv)
    args.hippocampus, args.adrenal_npz = args.data_root / HIPPOCAMPUS, args.data_root / ADRENAL_NPZ
    args.hn_root, args.cache_dir = args.data_root / HN_OAR, args.work_dir / "cache"
    args.work = args.work_dir / "strainer"  # the STRAINER priors
    args.work.mkdir(parents=True, exist_ok=True)
    result: dict = {"command": harness.command(), "threads": args.threads,
                    "date": time.strftime("%Y-%m-%d"), "platform": platform.platform(),
                    "versions": {"torch": torch.__version__, "python": platform.python_version()}}
    if args.part in ("intensity", "all"):
        result["intensity"] = intensity_part(args)
    if args.part in ("shapes", "all"):
        result["shapes"] = shape_part(args)
    suffix = "" if args.part == "all" else f"_{args.part}"
    harness.write_results(args.out, f"strainer{suffix}", result, markdown(result, args.steps))
    return 0


if __name__ == "__main__":
    sys.exit(main())
