"""MORSE boundary refinement on the MONAI U-Net baseline, MSD Task04 Hippocampus.

Trains the U-Net of ``benchmarks.unet_baseline`` by exactly its recipe (same split, loss,
optimiser, schedule, augmentation and time budget) together with a MORSE rendering head
(``inr_engine.segmentation.morse.BoundaryRenderer``), then scores on the same 40 held-out subjects:

* the plain U-Net (the baseline's weights, ``--baseline-weights``; trained by ``benchmarks.unet_baseline``);
* the U-Net trained with MORSE, its own coarse output (what joint training alone changed);
* the U-Net trained with MORSE, with its most uncertain voxels re-rendered (the method).

MORSE here: experts are the U-Net decoder's four coarser scales (bottom 256 channels at 1/16,
then 64, 32 and 16 channels at 1/8, 1/4 and 1/2), sampled at each point; the head also gets the
coarse logits and the image intensity at the point. Training points: 2048 per volume, 3x
oversampled, 75 % most uncertain by top-two margin; the point cross-entropy is added with a
weight 0 for the first half of training, then rising linearly to 1 (relative to Dice + CE,
the paper's 0.5 relative to 0.5 (Dice + CE)). Inference: the 8192 most uncertain voxels of
each volume are re-rendered. The paper's SGD recipe is replaced by the baseline's Adam recipe
so that the module is the only difference.

Example::

    python -m benchmarks.morse_unet --train-seconds 1500 --threads 1
    python -m benchmarks.morse_unet --eval-only
"""

from __future__ import annotations

import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from benchmarks import harness
from benchmarks import unet_baseline as base
from benchmarks.datasets import HIPPOCAMPUS
from inr_engine.datasets import labelled_image_names, labelled_images, seeded_split
from inr_engine.runtime import resolve_device, seed_everything
from inr_engine.segmentation import morse

# MONAI UNet module names whose outputs are the decoder's scales, coarsest first, and their channels.
DECODER_SCALES = {
    "model.1.submodule.1.submodule.1.submodule.1.submodule": 256,  # bottom, 1/16
    "model.1.submodule.1.submodule.1.submodule.2": 64,  # 1/8
    "model.1.submodule.1.submodule.2": 32,  # 1/4
    "model.1.submodule.2": 16,  # 1/2
}
POINT_LOSS_MAX = 1.0


class MorseUNet:
    """A MONAI U-Net whose decoder scales are recorded on every forward, and its rendering head."""

    def __init__(self, unet: torch.nn.Module, renderer: morse.BoundaryRenderer):
        self.unet, self.renderer = unet, renderer
        self.maps: dict[str, torch.Tensor] = {}
        modules = dict(unet.named_modules())
        for name in DECODER_SCALES:
            modules[name].register_forward_hook(lambda _m, _i, out, name=name: self.maps.__setitem__(name, out))

    @classmethod
    def build(cls) -> MorseUNet:
        renderer = morse.BoundaryRenderer(list(DECODER_SCALES.values()), classes=base.UNET["out_channels"],
                                          extra_features=1)
        return cls(base.build_unet(), renderer)

    def render(self, x: torch.Tensor, logits: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
        """Refined logits at ``points`` (B, N, 3) of the last forward pass (input ``x``, output ``logits``)."""
        scales = [morse.sample_grid(self.maps[name], points) for name in DECODER_SCALES]
        return self.renderer(points, scales, morse.sample_grid(logits, points), morse.sample_grid(x, points))

    def point_loss(self, x: torch.Tensor, y: torch.Tensor, logits: torch.Tensor, progress: float) -> torch.Tensor:
        weight = morse.point_loss_weight(progress, POINT_LOSS_MAX)
        if weight == 0.0:
            return logits.new_zeros(())
        points = morse.select_points(lambda p: morse.sample_grid(logits.detach(), p), len(x), morse.TRAIN_POINTS,
                                     device=x.device)
        target = morse.sample_grid(y.float(), points, mode="nearest")[..., 0].long()
        pred = self.render(x, logits, points)
        return weight * F.cross_entropy(pred.reshape(-1, pred.shape[-1]), target.reshape(-1))

    def refine(self, x: torch.Tensor, logits: torch.Tensor, dst: tuple[slice, ...]) -> torch.Tensor:
        """``unet_baseline.predict``'s hook: re-render the most uncertain voxels of the volume's region."""
        offset = torch.tensor([s.start for s in dst], device=x.device)
        region = logits[0][(slice(None), *dst)]

        def render(voxels: torch.Tensor) -> torch.Tensor:
            points = morse.voxels_to_points(voxels + offset, base.CANVAS)[None]
            return self.render(x, logits, points)[0]

        refined, _ = morse.refine_logits(region, render)
        out = logits.clone()
        out[0][(slice(None), *dst)] = refined
        return out

    def state(self) -> dict:
        return {"unet": self.unet.state_dict(), "renderer": self.renderer.state_dict()}


def markdown(rows: dict[str, dict]) -> str:
    lines = ["| model | Dice ant. / post. | mean Dice | HD95 ant. / post. (mm) | ASD ant. / post. (mm) | time |",
             "|---|---|---|---|---|---|"]
    for label, scores in rows.items():
        m = scores["mean"]
        lines.append(f"| {label} | {m['dice_anterior']:.3f} / {m['dice_posterior']:.3f} | "
                     f"**{m['dice_foreground']:.3f}** | {m['hd95_anterior']:.2f} / {m['hd95_posterior']:.2f} | "
                     f"{m['asd_anterior']:.3f} / {m['asd_posterior']:.3f} | "
                     f"{scores['inference_seconds_median'] * 1000:.0f} ms |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = harness.parser(__doc__, "hippocampus", threads=1, seed=True, device=True)
    p.add_argument("--train-seconds", type=float, default=1500.0)
    p.add_argument("--epochs", type=int, default=300)
    p.add_argument("--weights", type=Path, help="U-Net + MORSE weights (default: <work-dir>/morse/morse_unet.pt)")
    p.add_argument("--baseline-weights", type=Path,
                   help="the plain U-Net, trained by benchmarks.unet_baseline (default: <work-dir>/unet/unet.pt)")
    p.add_argument("--eval-only", action="store_true")
    args = harness.parse(p, argv)

    device = resolve_device(args.device)
    data = args.data_root / HIPPOCAMPUS
    train_names, val_names = seeded_split(labelled_image_names(data), base.N_VAL, base.SPLIT_SEED)
    seed_everything(args.seed)
    net = MorseUNet.build()
    net.unet.to(device)
    net.renderer.to(device)
    weights = args.weights or args.work_dir / "morse" / "morse_unet.pt"
    if args.eval_only:
        saved = torch.load(weights, map_location=device, weights_only=True)
        net.unet.load_state_dict(saved["unet"])
        net.renderer.load_state_dict(saved["renderer"])
        training = saved["training"]
    else:
        harness.log(f"training U-Net + MORSE for at most {args.train_seconds:g} s / {args.epochs} epochs")
        training = base.train(net.unet, labelled_images(data, train_names), device, args.train_seconds,
                              args.epochs, args.seed, extra_loss=net.point_loss, extra_modules=(net.renderer,))
        training["command"] = harness.command()
        weights.parent.mkdir(parents=True, exist_ok=True)
        torch.save({**net.state(), "training": training}, weights)
        harness.log(f"wrote {weights}")

    val = labelled_images(data, val_names)
    plain = base.build_unet().to(device)
    saved = torch.load(args.baseline_weights or args.work_dir / "unet" / "unet.pt", map_location=device,
                       weights_only=True)
    plain.load_state_dict(saved["state_dict"])
    for module in (plain, net.unet, net.renderer):
        module.eval()
    with torch.no_grad():
        rows = {
            f"U-Net ({saved['training']['steps']} steps)": base.evaluate(
                lambda im: base.predict(plain, im, device), val, device),
            f"U-Net trained with MORSE ({training['steps']} steps), coarse output": base.evaluate(
                lambda im: base.predict(net.unet, im, device), val, device),
            f"U-Net trained with MORSE ({training['steps']} steps), refined": base.evaluate(
                lambda im: base.predict(net.unet, im, device, net.refine), val, device),
        }
    params = sum(p.numel() for p in net.renderer.parameters())
    result = {"dataset": "MSD Task04 Hippocampus", "n_val": len(val_names), "val_names": val_names,
              "renderer_parameters": params, "training": training, "baseline_training": saved["training"],
              "recipe": {**base.recipe(), "morse": __doc__.split("\n\n")[3]}, "threads": torch.get_num_threads(),
              "device": str(device), "scores": rows, "command": harness.command(),
              "versions": {"python": platform.python_version(), "torch": torch.__version__},
              "date": time.strftime("%Y-%m-%d")}
    harness.write_results(args.out, "morse", result, markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
