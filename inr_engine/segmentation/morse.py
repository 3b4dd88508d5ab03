"""MORSE-style boundary refinement: implicit rendering of the most uncertain points.

After You et al., "Implicit Anatomical Rendering for Medical Image Segmentation with Stochastic
Experts" (MICCAI 2023), itself PointRend for medical images. A segmentation network's coarse
prediction is kept where it is confident; at the points where it is not, a small rendering
head predicts the label again from

* a Fourier encoding of the point's coordinates (``FourierFeatures``),
* fine-grained features: a stochastic mixture of experts over multi-scale features sampled at
  the point (``StochasticExperts``; the experts are a CNN decoder's scales, or an INR's layers),
* the coarse logits at the point, re-concatenated at every layer (``ImplicitPointHead``).

Training samples points by uncertainty (:func:`select_points`: ``oversample`` times too many
uniform candidates, the ``importance`` share of the most uncertain by top-two margin kept, the
rest uniform) and adds the point cross-entropy with a weight ramped from zero at mid-training
(:func:`point_loss_weight`). At inference the most uncertain voxels are re-labelled
(:func:`refine_logits`).

Differences from the reference code, all for 3D volumes of any size: gates and experts are
per point (MLPs on sampled features) rather than convolutions on upsampled maps, which is the
same function at the points that are rendered; the dropped experts' gates are renormalised so
that training and inference see the same feature scale.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

OVERSAMPLE = 3  # k_p
IMPORTANCE = 0.75  # rho
TRAIN_POINTS = 2048  # N_p per volume
DEFAULT_REFINE_POINTS = 8192  # points re-rendered per image at inference (MORSE: 2D slices, 4x upsampling)


def uncertainty(logits: torch.Tensor) -> torch.Tensor:
    """Minus the margin between the two largest logits (last dimension): high = uncertain."""
    top2 = logits.topk(2, dim=-1).values
    return top2[..., 1] - top2[..., 0]


def select_points(coarse_at: Callable[[torch.Tensor], torch.Tensor], batch: int, count: int, dims: int = 3,
                  oversample: int = OVERSAMPLE, importance: float = IMPORTANCE,
                  generator: torch.Generator | None = None, device: torch.device | str = "cpu") -> torch.Tensor:
    """Training points in ``[-1, 1]^dims`` (shape ``(batch, count, dims)``), PointRend's rule.

    ``coarse_at(points)`` returns the coarse logits at ``points`` (``(batch, n, classes)``).
    """
    candidates = torch.rand(batch, oversample * count, dims, generator=generator).to(device) * 2 - 1
    n_uncertain = int(importance * count)
    with torch.no_grad():
        scores = uncertainty(coarse_at(candidates))
    top = scores.topk(n_uncertain, dim=1).indices
    uncertain = torch.gather(candidates, 1, top[..., None].expand(-1, -1, dims))
    uniform = torch.rand(batch, count - n_uncertain, dims, generator=generator).to(device) * 2 - 1
    return torch.cat([uncertain, uniform], dim=1)


def sample_grid(volume: torch.Tensor, points: torch.Tensor, mode: str = "bilinear") -> torch.Tensor:
    """Values of ``volume`` (B, C, I, J, K) at ``points`` (B, N, 3) in ``[-1, 1]`` along (i, j, k),
    where -1 and 1 are the outer faces of the grid, so maps of every resolution of one network
    cover the same extent (``align_corners=False``); returns (B, N, C)."""
    grid = points.flip(-1)[:, :, None, None, :].to(volume.dtype)  # grid_sample wants (x=k, y=j, z=i)
    out = F.grid_sample(volume, grid, mode=mode, padding_mode="border", align_corners=False)
    return out[:, :, :, 0, 0].transpose(1, 2)


def point_loss_weight(progress: float, maximum: float = 0.5) -> float:
    """The point loss's weight: 0 in the first half of training, then linear up to ``maximum``."""
    return maximum * min(max(2.0 * progress - 1.0, 0.0), 1.0)


class FourierFeatures(nn.Module):
    """``[sin(2 pi p M), cos(2 pi p M)]`` for points ``p`` in ``[-1, 1]``; M is fixed, U[0, 1) as in MORSE."""

    def __init__(self, dims: int = 3, features: int = 128, seed: int = 0):
        super().__init__()
        generator = torch.Generator().manual_seed(seed)
        self.register_buffer("matrix", torch.rand(dims, features // 2, generator=generator))

    def forward(self, points: torch.Tensor) -> torch.Tensor:
        projected = 2 * torch.pi * points @ self.matrix
        return torch.cat([projected.sin(), projected.cos()], dim=-1)


class StochasticExperts(nn.Module):
    """Gated mixture of per-scale experts; in training a random number of experts is dropped.

    Each expert maps one scale's features to ``width`` channels (an MLP); gates come from all
    experts' outputs; a random set of up to ``max_dropped`` experts has its gates zeroed during
    training (the rest renormalised), so no single scale can carry the prediction alone.
    """

    def __init__(self, in_channels: Sequence[int], width: int = 64, max_dropped: int = 2, dropout: float = 0.1):
        super().__init__()
        if not 0 <= max_dropped < len(in_channels):
            raise ValueError("max_dropped must leave at least one expert")
        self.max_dropped = max_dropped
        self.experts = nn.ModuleList(
            nn.Sequential(nn.Linear(c, width), nn.ReLU(), nn.Linear(width, width)) for c in in_channels)
        self.gate = nn.Sequential(nn.Linear(width * len(in_channels), width), nn.ReLU(),
                                  nn.Linear(width, len(in_channels)))
        self.fuse = nn.Sequential(nn.Linear(width, width), nn.ReLU(), nn.Dropout(dropout), nn.Linear(width, width))

    def forward(self, features: Sequence[torch.Tensor]) -> torch.Tensor:
        outs = torch.stack([expert(f) for expert, f in zip(self.experts, features)], dim=-2)  # (..., E, W)
        gates = self.gate(outs.flatten(-2)).softmax(-1)
        if self.training and self.max_dropped:
            gates = gates * self._keep_mask(gates)
            gates = gates / gates.sum(-1, keepdim=True).clamp_min(1e-6)
        return self.fuse((gates[..., None] * outs).sum(-2))

    def _keep_mask(self, gates: torch.Tensor) -> torch.Tensor:
        experts = gates.shape[-1]
        dropped = int(torch.randint(0, self.max_dropped + 1, ()))
        mask = torch.ones(experts, device=gates.device)
        mask[torch.randperm(experts)[:dropped].to(gates.device)] = 0
        return mask


class ImplicitPointHead(nn.Module):
    """MLP on (Fourier features, fine features, coarse logits) with the coarse logits
    re-concatenated before every layer; predicts refined logits."""

    def __init__(self, in_features: int, classes: int, width: int = 128, layers: int = 3):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.Linear((in_features if n == 0 else width) + classes, width) for n in range(layers))
        self.predictor = nn.Linear(width + classes, classes)

    def forward(self, features: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        x = features
        for layer in self.layers:
            x = F.relu(layer(torch.cat([x, coarse], -1)))
        return self.predictor(torch.cat([x, coarse], -1))


class BoundaryRenderer(nn.Module):
    """The MORSE refinement head: ``forward(points, scale_features, coarse, extra)`` -> logits.

    ``scale_features`` holds one (..., C_s) tensor per expert; ``extra`` (..., E) are optional
    per-point inputs given to the head directly (e.g. the image intensity at the point).
    """

    def __init__(self, scale_channels: Sequence[int], classes: int, extra_features: int = 0, dims: int = 3,
                 width: int = 64, fourier_features: int = 64, head_width: int = 128, max_dropped: int = 2):
        super().__init__()
        self.classes = classes
        self.fourier = FourierFeatures(dims, fourier_features)
        self.experts = StochasticExperts(scale_channels, width, min(max_dropped, len(scale_channels) - 1))
        self.head = ImplicitPointHead(fourier_features + width + extra_features, classes, head_width)

    def forward(self, points: torch.Tensor, scale_features: Sequence[torch.Tensor], coarse: torch.Tensor,
                extra: torch.Tensor | None = None) -> torch.Tensor:
        parts = [self.fourier(points), self.experts(scale_features)]
        if extra is not None:
            parts.append(extra)
        return self.head(torch.cat(parts, -1), coarse)


def refine_logits(coarse: torch.Tensor, render: Callable[[torch.Tensor], torch.Tensor],
                  count: int = DEFAULT_REFINE_POINTS) -> tuple[torch.Tensor, torch.Tensor]:
    """Re-render the ``count`` most uncertain voxels of ``coarse`` (C, *grid) with ``render``.

    ``render(voxels)`` gets integer voxel indices (n, ndim) and returns logits (n, C). Returns
    the refined logits and the indices that were re-rendered.
    """
    classes, grid = coarse.shape[0], coarse.shape[1:]
    flat = coarse.reshape(classes, -1).T
    count = min(count, flat.shape[0])
    picked = uncertainty(flat).topk(count).indices
    voxels = torch.stack(torch.unravel_index(picked, grid), -1)
    refined = flat.clone()
    refined[picked] = render(voxels).to(refined.dtype)
    return refined.T.reshape(coarse.shape), voxels


def voxels_to_points(voxels: torch.Tensor, grid: Sequence[int]) -> torch.Tensor:
    """Integer voxel indices -> their centres in the ``[-1, 1]`` frame of :func:`sample_grid`."""
    size = torch.as_tensor(grid, dtype=torch.float32, device=voxels.device)
    return (2 * voxels.float() + 1) / size - 1
