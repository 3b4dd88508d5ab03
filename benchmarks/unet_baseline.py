"""MONAI 3D U-Net baseline for MSD Task04 Hippocampus: a supervised reference to compare INR methods against.

This is a comparison baseline only, not a method the extension ships. It trains on the training side of
the split shared with the other methods (``seeded_split(labelled_image_names(root), n_val=40, seed=0)``:
160 training, 40 held-out subjects) and reports per-class scores on the 40 held-out subjects.

Recipe (a standard, untuned MONAI setup):

* network: ``monai.networks.nets.UNet(spatial_dims=3, in_channels=1, out_channels=3,
  channels=(16, 32, 64, 128, 256), strides=(2, 2, 2, 2), num_res_units=2)`` (4.81 M trainable parameters);
* input: ``inr_engine.intensity.normalize_intensity`` (per-image 0.5/99.5 percentiles to [0, 1], as the INR
  methods use), zero-padded to a fixed 48 x 64 x 48 canvas (divisible by 16; every MSD Task04 volume,
  at most 43 x 59 x 47, fits; a larger volume would be cropped to the canvas, and its voxels outside the
  canvas predicted as background). At inference the volume is centred on the canvas and the prediction
  (argmax of the softmax) is un-padded back to the exact original grid;
* loss: ``monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)`` over the whole canvas;
* optimiser: Adam, lr 1e-3, cosine decay to 0 over the training budget, updated every step. The progress
  of the schedule is ``max(elapsed / --train-seconds, epoch / --epochs)``, so a time-limited run also ends
  with a decayed learning rate; batch size 4, one epoch = one pass over the 160 training subjects in a
  seeded random order (last partial batch kept);
* augmentation, intensity and position only: no flips or rotations, since the labels (1 anterior,
  2 posterior) are defined along the anterior-posterior axis and a flip would swap their meaning. On the
  normalised image, before padding: gamma ``x ** exp(U(-0.3, 0.3))``, then ``x * U(0.9, 1.1) + U(-0.1, 0.1)``;
  then a random placement of the volume within the padding (a shift of up to the padding margin along
  each axis) instead of the centred placement;
* model selection: none. The last checkpoint is kept and evaluated; the held-out subjects are never
  looked at during training.

Training stops at ``--train-seconds`` (default 1500) or ``--epochs`` (default 300), whichever comes first.
With a time limit, the number of steps depends on the machine, so runs are seeded but not bit-reproducible
across machines or loads; the number of epochs and steps reached is recorded.

Outputs: the weights (``--weights``, default ``<--work-dir>/unet/unet.pt``: the state dict plus a record of the
training, loadable with ``torch.load(..., weights_only=True)``), and ``<--out>/unet.json`` with the recipe,
parameter count, training time, per-subject and mean per-class Dice / HD95 / ASD (mm, MONAI, voxel spacing
of the file), inference time per volume (median; normalisation, padding, forward pass, argmax and
un-padding), the command line and the library versions. ``--eval-only`` re-evaluates saved weights.

Example::

    python -m benchmarks.unet_baseline --train-seconds 1500 --threads 1
    python -m benchmarks.unet_baseline --eval-only
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

from benchmarks import harness
from benchmarks.datasets import HIPPOCAMPUS
from inr_engine.datasets import LabelledImage, labelled_image_names, labelled_images, seeded_split
from inr_engine.frames import spacing
from inr_engine.intensity import normalize_intensity
from inr_engine.metrics import segmentation_scores
from inr_engine.runtime import resolve_device, seed_everything

N_VAL, SPLIT_SEED = 40, 0  # the split shared with the other methods on this data set
CANVAS = (48, 64, 48)
CLASSES = {1: "anterior", 2: "posterior"}
UNET = {"spatial_dims": 3, "in_channels": 1, "out_channels": 3, "channels": (16, 32, 64, 128, 256),
        "strides": (2, 2, 2, 2), "num_res_units": 2}
LR, BATCH = 1e-3, 4
GAMMA_LOG_RANGE, SCALE_RANGE, SHIFT_RANGE = 0.3, (0.9, 1.1), 0.1


def recipe() -> dict:
    return {
        "network": "monai.networks.nets.UNet", "unet": {k: list(v) if isinstance(v, tuple) else v
                                                          for k, v in UNET.items()},
        "input": "normalize_intensity (0.5/99.5 percentiles -> [0, 1]), zero-padded to the canvas",
        "canvas": list(CANVAS),
        "loss": "monai.losses.DiceCELoss(to_onehot_y=True, softmax=True)",
        "optimizer": f"Adam lr {LR:g}, cosine decay to 0 over max(time, epoch) progress, per step",
        "batch_size": BATCH,
        "augmentation": (f"gamma x**exp(U(-{GAMMA_LOG_RANGE}, {GAMMA_LOG_RANGE})), x*U{SCALE_RANGE} + "
                         f"U(-{SHIFT_RANGE}, {SHIFT_RANGE}), random placement within the padding; no flips"),
        "model_selection": "last checkpoint (no selection on any validation data)",
        "split": {"function": "seeded_split", "n_val": N_VAL, "seed": SPLIT_SEED},
    }


def build_unet() -> torch.nn.Module:
    from monai.networks.nets import UNet

    return UNet(**UNET)


def placement(shape, rng: np.random.Generator | None) -> tuple[tuple[slice, ...], tuple[slice, ...]]:
    """(volume slices, canvas slices): where the volume goes on the canvas, centred when ``rng`` is None,
    else at a random offset within the padding (or a random crop window along an axis that is too long)."""
    src, dst = [], []
    for n, size in zip(shape, CANVAS):
        slack = abs(size - n)
        offset = slack // 2 if rng is None else int(rng.integers(0, slack + 1))
        if n <= size:
            src.append(slice(0, n))
            dst.append(slice(offset, offset + n))
        else:
            src.append(slice(offset, offset + size))
            dst.append(slice(0, size))
    return tuple(src), tuple(dst)


def augment_intensity(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    x = x ** np.exp(rng.uniform(-GAMMA_LOG_RANGE, GAMMA_LOG_RANGE))
    return (x * rng.uniform(*SCALE_RANGE) + rng.uniform(-SHIFT_RANGE, SHIFT_RANGE)).astype(np.float32)


def training_batch(cases: list[tuple[np.ndarray, np.ndarray]], rng: np.random.Generator):
    images = np.zeros((len(cases), 1, *CANVAS), np.float32)
    labels = np.zeros((len(cases), 1, *CANVAS), np.int64)
    for b, (image, label) in enumerate(cases):
        src, dst = placement(image.shape, rng)
        images[(b, 0, *dst)] = augment_intensity(image[src], rng)
        labels[(b, 0, *dst)] = label[src]
    return torch.from_numpy(images), torch.from_numpy(labels)


def train(model: torch.nn.Module, train_set: list[LabelledImage], device: torch.device, train_seconds: float,
          epochs: int, seed: int, extra_loss=None, extra_modules: tuple[torch.nn.Module, ...] = ()) -> dict:
    """Train ``model`` by the recipe; ``extra_loss(x, y, logits, progress)``, if given, is added to
    the loss, and the parameters of ``extra_modules`` are trained with the network's."""
    from monai.losses import DiceCELoss

    rng = seed_everything(seed)
    cases = [(normalize_intensity(c.image), c.labels) for c in train_set]
    loss_fn = DiceCELoss(to_onehot_y=True, softmax=True)
    opt = torch.optim.Adam([p for m in (model, *extra_modules) for p in m.parameters()], lr=LR)
    steps_per_epoch = -(-len(cases) // BATCH)
    for m in (model, *extra_modules):
        m.train()
    start, step, epoch, history, done = time.perf_counter(), 0, 0, [], False
    while not done and epoch < epochs:
        order, losses = rng.permutation(len(cases)), []
        for first in range(0, len(cases), BATCH):
            progress = max((time.perf_counter() - start) / train_seconds, (epoch + first / len(cases)) / epochs)
            if progress >= 1.0:
                done = True
                break
            for group in opt.param_groups:
                group["lr"] = LR * 0.5 * (1.0 + np.cos(np.pi * progress))
            x, y = training_batch([cases[i] for i in order[first:first + BATCH]], rng)
            opt.zero_grad(set_to_none=True)
            x, y = x.to(device), y.to(device)
            logits = model(x)
            loss = loss_fn(logits, y)
            if extra_loss is not None:
                loss = loss + extra_loss(x, y, logits, progress)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
        if losses:
            epoch += len(losses) == steps_per_epoch
            history.append(round(float(np.mean(losses)), 5))
            harness.log(f"epoch {len(history)}: loss {history[-1]:.4f}, {step} steps, "
                f"lr {opt.param_groups[0]['lr']:.2e}, {time.perf_counter() - start:.0f} s")
    seconds = time.perf_counter() - start
    return {"seconds": round(seconds, 1), "steps": step, "epochs_completed": epoch,
            "epochs_started": len(history), "epoch_loss": history, "train_seconds_limit": train_seconds,
            "epochs_limit": epochs, "seed": seed, "n_train": len(cases), "steps_per_epoch": steps_per_epoch}


@torch.no_grad()
def predict(model: torch.nn.Module, image: np.ndarray, device: torch.device, refine=None) -> np.ndarray:
    """Label map on the exact grid of ``image`` (voxels outside the canvas, if any, are background).

    ``refine(canvas, logits, dst)``, if given, returns logits improved inside the volume's region ``dst``.
    """
    src, dst = placement(image.shape, None)
    canvas = np.zeros((1, 1, *CANVAS), np.float32)
    canvas[(0, 0, *dst)] = normalize_intensity(image)[src]
    x = torch.from_numpy(canvas).to(device)
    logits = model(x)
    if refine is not None:
        logits = refine(x, logits, dst)
    out = np.zeros(image.shape, np.int64)
    out[src] = logits.argmax(1)[0].cpu().numpy()[dst]
    return out


def evaluate(segment, val_set: list[LabelledImage], device: torch.device) -> dict:
    """Per-class scores of ``segment(image) -> label map`` on ``val_set``, and its time per volume."""
    rows, seconds = [], []
    for case in val_set:
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        pred = segment(case.image)
        seconds.append(time.perf_counter() - t)
        row = {"name": case.name, "seconds": round(seconds[-1], 4)}
        for value, cls in CLASSES.items():
            s = segmentation_scores(pred == value, case.labels == value, spacing(case.affine))
            row.update({f"{metric}_{cls}": round(v, 5) if np.isfinite(v) else None for metric, v in s.items()})
        row["dice_foreground"] = round(float(np.mean([row[f"dice_{c}"] for c in CLASSES.values()])), 5)
        rows.append(row)
    means = {}
    for metric in ("dice", "hd95", "asd"):
        for cls in CLASSES.values():
            values = np.array([r[f"{metric}_{cls}"] for r in rows], float)
            means[f"{metric}_{cls}"] = round(float(np.nanmean(values)), 4) if np.isfinite(values).any() else None
            if metric != "dice":
                means[f"{metric}_{cls}_undefined"] = int(np.isnan(values).sum())  # an empty prediction
        per_class = [means[f"{metric}_{cls}"] for cls in CLASSES.values()]
        means[f"{metric}_mean"] = None if None in per_class else round(float(np.mean(per_class)), 4)
    means["dice_foreground"] = round(float(np.mean([r["dice_foreground"] for r in rows])), 4)
    means["dice_foreground_std"] = round(float(np.std([r["dice_foreground"] for r in rows])), 4)
    return {"mean": means, "inference_seconds_median": round(float(np.median(seconds)), 4),
            "per_subject": rows}


def markdown(result: dict) -> str:
    m, tr = result["scores"]["mean"], result["training"]

    def fmt(v):
        return "n/a" if v is None else f"{v:.3f}" if abs(v) < 10 else f"{v:.2f}"

    return "\n".join([
        f"MONAI 3D U-Net, MSD Task04 Hippocampus, {result['n_val']} held-out subjects "
        f"({tr['epochs_completed']} epochs / {tr['steps']} steps in {tr['seconds']:.0f} s, "
        f"{result['threads']} thread(s), {result['parameters']:,} parameters)",
        "",
        "| class | Dice | HD95 (mm) | ASD (mm) |",
        "|---|---|---|---|",
        *(f"| {cls} | {fmt(m[f'dice_{cls}'])} | {fmt(m[f'hd95_{cls}'])} | {fmt(m[f'asd_{cls}'])} |"
          for cls in CLASSES.values()),
        f"| mean | {fmt(m['dice_foreground'])} | {fmt(m['hd95_mean'])} | {fmt(m['asd_mean'])} |",
        "",
        f"Inference: {result['scores']['inference_seconds_median'] * 1000:.0f} ms per volume (median).",
    ])


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__, "hippocampus", threads=1, seed=True, device=True)
    p.add_argument("--train-seconds", type=float, default=1500.0, help="training time limit")
    p.add_argument("--epochs", type=int, default=300, help="epoch limit (the first limit reached stops training)")
    p.add_argument("--weights", type=Path,
                   help="weights written by training / read by --eval-only (default: <work-dir>/unet/unet.pt)")
    p.add_argument("--eval-only", action="store_true", help="evaluate --weights without training")
    args = harness.parse(p, argv)
    if args.train_seconds <= 0 or args.epochs <= 0:
        p.error("--train-seconds and --epochs must be positive")

    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass  # already set by an earlier parallel call (only possible when imported, not as a script)
    device = resolve_device(args.device)
    import monai

    data = args.data_root / HIPPOCAMPUS
    names = labelled_image_names(data)
    train_names, val_names = seeded_split(names, N_VAL, SPLIT_SEED)
    harness.log(f"{data}: {len(train_names)} training, {len(val_names)} held-out subjects; device {device}, "
        f"{torch.get_num_threads()} thread(s)")
    seed_everything(args.seed)
    model = build_unet().to(device)
    n_params = sum(p.numel() for p in model.parameters() if p.requires_grad)
    weights = args.weights or args.work_dir / "unet" / "unet.pt"
    if args.eval_only:
        saved = torch.load(weights, map_location=device, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        training = saved["training"]
        harness.log(f"loaded {weights} ({training['steps']} steps, {training['seconds']:.0f} s of training)")
    else:
        harness.log(f"training {n_params:,} parameters for at most {args.train_seconds:g} s / {args.epochs} epochs")
        training = train(model, labelled_images(data, train_names), device, args.train_seconds,
                         args.epochs, args.seed)
        training["command"] = harness.command()
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": model.state_dict(), "training": training}, weights)
        harness.log(f"wrote {weights}")

    model.eval()
    scores = evaluate(lambda image: predict(model, image, device), labelled_images(data, val_names), device)
    result = {
        "method": "MONAI 3D U-Net (supervised baseline)",
        "dataset": "MSD Task04 Hippocampus", "data": str(data),
        "n_train": len(train_names), "n_val": len(val_names), "val_names": val_names,
        "recipe": recipe(), "parameters": n_params,
        "training": training, "threads": torch.get_num_threads(), "device": str(device),
        "scores": scores, "weights": str(weights),
        "command": harness.command(), "eval_only": args.eval_only,
        "versions": {"python": platform.python_version(), "torch": torch.__version__, "monai": monai.__version__,
                     "numpy": np.__version__},
        "platform": platform.platform(), "processor": platform.processor() or platform.machine(),
    }
    harness.write_results(args.out, "unet", result)  # no unet.md: segmentation.md has its row
    harness.log(f"wrote {args.out / 'unet.json'}")
    print(markdown(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
