"""Draw the extension icon, ``Resources/Icons/INRSegmentation.png`` (128x128 PNG).

A smooth shaded blob (an implicit shape) cut by a few parallel slice planes: the sparse
slices from which the shape is completed. Deterministic; run from the repository root:

    python scripts/make_icon.py
"""

from __future__ import annotations

import argparse
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

SIZE = 128
BLOB = np.array([0.50, 0.68, 0.50])  # Slicer's segment green (tissue), RGB in [0, 1]
SLICE = np.array([0.95, 0.85, 0.25])  # yellow, as Slicer's green/yellow slice views
OUTLINE = np.array([0.10, 0.25, 0.45])


def blob_height(n: int = 4 * SIZE) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Front surface z(x, y) of a lumpy ellipsoid seen from the front, NaN outside; and x, y."""
    t = np.linspace(-1.0, 1.0, n)
    x, y = np.meshgrid(t, -t)
    angle = np.arctan2(y, x)
    radius = 0.80 + 0.07 * np.sin(3 * angle + 0.6) + 0.04 * np.cos(5 * angle)  # star-shaped outline
    rho = np.hypot(x / 0.95, y / 0.85) / radius
    z = np.sqrt(np.clip(1.0 - rho**2, 0.0, None)) * 0.8
    z[rho >= 1.0] = np.nan
    return x, y, z


def render(path: Path) -> None:
    x, y, z = blob_height()
    inside = np.isfinite(z)
    zf = np.where(inside, z, 0.0)
    step = x[0, 1] - x[0, 0]
    gy, gx = np.gradient(zf, -step, step)
    normal = np.stack([-gx, -gy, np.ones_like(zf)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.array([-0.5, 0.6, 0.8])
    light /= np.linalg.norm(light)
    diffuse = np.clip(normal @ light, 0.0, 1.0)
    half = light + np.array([0.0, 0.0, 1.0])
    half /= np.linalg.norm(half)
    specular = np.clip(normal @ half, 0.0, 1.0) ** 40
    rgb = BLOB * (0.30 + 0.75 * diffuse)[..., None] + 0.45 * specular[..., None]
    rgba = np.concatenate([np.clip(rgb, 0, 1), inside[..., None].astype(float)], axis=-1)

    fig = plt.figure(figsize=(1, 1), dpi=SIZE)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(rgba, extent=(-1, 1, -1, 1), interpolation="antialiased")
    # Slice planes tilted towards the viewer: their cuts through the surface are curved lines.
    plane = y * 0.92 + zf * 0.40
    levels = np.linspace(-0.50, 0.50, 4)
    ax.contour(x, y, np.where(inside, plane, np.nan), levels=levels, colors=[SLICE], linewidths=2.2, linestyles="solid")
    ax.contour(x, y, inside.astype(float), levels=[0.5], colors=[OUTLINE], linewidths=1.6)
    ax.set_xlim(-1, 1)
    ax.set_ylim(-1, 1)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=SIZE, transparent=True, metadata={"Software": None}, pil_kwargs={"optimize": True})
    plt.close(fig)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("Resources/Icons/INRSegmentation.png"))
    args = parser.parse_args()
    render(args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size} bytes)")


if __name__ == "__main__":
    main()
