"""A PNG overview of a completion: orthogonal slices through the shape's centre."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def write_overview(path: str | Path, sparse_file: str, completed_file: str, reference_file: str | None,
                   report: dict) -> Path:
    """Three orthogonal slices: annotated slices (filled), completion (red), ground truth (green)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from ..frames import spacing
    from ..io import read_volume

    sparse = read_volume(sparse_file)
    completed = read_volume(completed_file).array > 0
    reference = read_volume(reference_file).array > 0 if reference_file else None
    spc = spacing(sparse.affine)
    centre = np.argwhere(completed).mean(0).round().astype(int) if completed.any() else np.array(completed.shape) // 2
    union = np.argwhere(completed | (sparse.array > 0))
    box_lo = np.maximum(union.min(0) - 8, 0) - 0.5
    box_hi = np.minimum(union.max(0) + 8, np.array(completed.shape) - 1) + 0.5
    fig, axes = plt.subplots(1, 3, figsize=(12, 4.4))
    for axis, ax in enumerate(axes):
        cut = [slice(None)] * 3
        cut[axis] = int(centre[axis])
        plane = [b for b in range(3) if b != axis]
        aspect = spc[plane[0]] / spc[plane[1]]
        ax.imshow((sparse.array[tuple(cut)] > 0).T, cmap="Blues", origin="lower", aspect=1 / aspect, alpha=0.9)
        ax.contour(completed[tuple(cut)].T.astype(float), levels=[0.5], colors="red", linewidths=1.5)
        if reference is not None:
            ax.contour(reference[tuple(cut)].T.astype(float), levels=[0.5], colors="lime", linewidths=1.0,
                       linestyles="--")
        ax.set_xlim(box_lo[plane[0]], box_hi[plane[0]])
        ax.set_ylim(box_lo[plane[1]], box_hi[plane[1]])
        ax.set_title(f"axis {axis} slice {centre[axis]}")
        ax.set_xticks([])
        ax.set_yticks([])
    dice = report.get("dice", {})
    fig.suptitle("blue: annotated voxels in this plane, red: completion, green dashed: ground truth"
                 + (f"  |  Dice {', '.join(f'{v:.3f}' for v in dice.values())}" if dice else ""), fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path
