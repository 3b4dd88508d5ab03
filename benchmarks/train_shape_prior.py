"""Train a shape prior on a benchmark data set, as the bundled ``adrenal`` and ``head-neck-organs`` were trained.

``inr-engine train shape`` on the shapes of :mod:`benchmarks.datasets` instead of a folder of label maps,
with the splits the benchmarks rely on:

* ``adrenalmnist3d``: the npz's train split; validation on the LAST ``--max-val`` shapes of its val
  split, so that the first 40, which the benchmarks score, stay unseen;
* ``hn-oar``: both raters' masks of the training scans of ``hn_split`` (``--val-scans``,
  ``--split-seed``), ``--organs`` only; validation on the oncologist's masks of the validation
  organs (parotids, mandible, brainstem, spinal cord) of the validation scans.

Every other option (``--out``, ``--steps``, ``--init``, ``--config``, ``--threads``, ...) is ``inr-engine train
shape``'s: see ``inr-engine train shape --help``. The prior is written when training finished, as the CLI
writes it. ``scripts/train_bundled_priors.sh`` has the commands that trained the bundled priors, e.g.::

    python -m benchmarks.train_shape_prior --dataset adrenalmnist3d --max-val 12 --steps 1000 \\
        --config encoder_channels=16,32,64 --out runs/adrenal.safetensors
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path

from benchmarks import harness
from benchmarks.datasets import ADRENAL_NPZ, HN_OAR, HN_VALIDATION_ORGANS, adrenal_shapes, hn_shapes, hn_split
from inr_engine.cli.parser import build_parser
from inr_engine.cli.training import TrainingShapes, run_train_shape


def adrenal(args) -> TrainingShapes:
    train, val = adrenal_shapes(args.data, "train"), adrenal_shapes(args.data, "val")
    return TrainingShapes(train, val[-args.max_val:] if args.max_val else val,
                          {"train": "npz train split (all)", "validation": "npz val split (the last --max-val shapes)"},
                          "adrenalmnist3d", protocols=(("0", 8), ("1", 8), ("2", 8), ("0", 4)))


def head_neck(args) -> TrainingShapes:
    train_scans, val_scans = hn_split(args.data, n_val=args.val_scans, seed=args.split_seed)
    train = hn_shapes(args.data, train_scans, organs=args.organs, cache_dir=args.cache_dir)
    val = hn_shapes(args.data, val_scans, raters=("oncologist",), organs=HN_VALIDATION_ORGANS, cache_dir=args.cache_dir)
    return TrainingShapes(train, val[: args.max_val or None],
                          {"train": train_scans, "validation": val_scans, "split_seed": args.split_seed},
                          "hn-oar", protocols=(("axial", 8), ("axial", 4)))


DATASETS: dict[str, tuple[str, Callable[[argparse.Namespace], TrainingShapes]]] = {
    "adrenalmnist3d": (ADRENAL_NPZ, adrenal), "hn-oar": (HN_OAR, head_neck)}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """This script's options, and ``inr-engine train shape``'s (``--data``: the data set's folder)."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], allow_abbrev=False,
                                epilog="Every other option is passed to 'inr-engine train shape'.")
    p.add_argument("--dataset", choices=sorted(DATASETS), required=True)
    p.add_argument("--data-root", type=Path, default=harness.DATA_ROOT, help="the shared data folder")
    p.add_argument("--val-scans", type=int, default=5, help="hn-oar: validation scans")
    p.add_argument("--organs", nargs="+", help="hn-oar: train on these organs only (default: all 21)")
    p.add_argument("--cache-dir", type=Path, default=harness.WORK / "cache",
                   help="hn-oar: cropped masks kept here (reading the full masks is slow)")
    ours, rest = p.parse_known_args(argv)
    if "--data" in rest:
        p.error("--data: give the shared data folder as --data-root")
    folder = ours.data_root / DATASETS[ours.dataset][0]
    args = build_parser().parse_args(["train", "shape", "--data", str(folder), *rest])
    return argparse.Namespace(**{**vars(args), **vars(ours)})


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    return run_train_shape(args, DATASETS[args.dataset][1])


if __name__ == "__main__":
    main()
