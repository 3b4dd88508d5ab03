"""Intensity normalisation robust to raw scanner ranges, and a check against a prior's data.

MRI intensities have no absolute scale (one data set can mix float32 values in the
thousands with uint8 ranges), so every image is mapped to [0, 1] by its own robust
percentiles. Priors store the distribution of simple statistics of their training images
after this mapping; an image far outside it gets a warning, not a refusal.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

LOW_PERCENTILE = 0.5
HIGH_PERCENTILE = 99.5
STATISTICS = ("mean", "std", "median", "zero_fraction")
WARN_Z = 4.0


class IntensityError(ValueError):
    """An image that cannot be normalised (NaN, infinite or constant values, wrong dimensionality)."""


def normalize_intensity(image: np.ndarray) -> np.ndarray:
    """Map ``image`` to float32 [0, 1] by its 0.5th and 99.5th percentiles (clipped outside)."""
    image = np.asarray(image)
    if image.ndim != 3:
        raise IntensityError(f"expected a 3D image, got {image.ndim}D data of shape {image.shape}")
    if not np.issubdtype(image.dtype, np.number) or np.issubdtype(image.dtype, np.complexfloating):
        raise IntensityError(f"expected a real-valued image, got {image.dtype}")
    values = image.astype(np.float32, copy=False)
    if not np.all(np.isfinite(values)):
        raise IntensityError("the image contains NaN or infinite values")
    lo, hi = np.percentile(values, [LOW_PERCENTILE, HIGH_PERCENTILE])
    if hi - lo <= 1e-6 * max(abs(lo), abs(hi), 1.0):
        raise IntensityError("the image is (nearly) constant: there is nothing to fit")
    return np.clip((values - lo) / (hi - lo), 0.0, 1.0).astype(np.float32)


def intensity_statistics(normalized: np.ndarray) -> dict[str, float]:
    """Statistics of a normalised image that priors record and compare."""
    return {
        "mean": float(normalized.mean()),
        "std": float(normalized.std()),
        "median": float(np.median(normalized)),
        "zero_fraction": float((normalized <= 0.0).mean()),
    }


@dataclass(frozen=True)
class IntensityReference:
    """Mean and standard deviation of each statistic over a prior's training images."""

    mean: dict[str, float]
    std: dict[str, float]

    @classmethod
    def from_images(cls, normalized_images: list[np.ndarray]) -> IntensityReference:
        stats = [intensity_statistics(im) for im in normalized_images]
        return cls({k: float(np.mean([s[k] for s in stats])) for k in STATISTICS},
                   {k: float(np.std([s[k] for s in stats])) for k in STATISTICS})

    @classmethod
    def from_metadata(cls, meta: dict) -> IntensityReference:
        return cls(dict(meta["mean"]), dict(meta["std"]))

    def to_metadata(self) -> dict:
        return {"mean": self.mean, "std": self.std, "normalisation":
                f"percentiles {LOW_PERCENTILE}-{HIGH_PERCENTILE} -> [0, 1], clipped"}

    def warnings(self, normalized: np.ndarray) -> list[str]:
        """Messages for each statistic more than ``WARN_Z`` training standard deviations away."""
        out = []
        for key, value in intensity_statistics(normalized).items():
            z = (value - self.mean[key]) / max(self.std[key], 1e-3)
            if abs(z) > WARN_Z:
                out.append(f"intensity {key} {value:.3f} is {z:+.1f} standard deviations from the prior's "
                           f"training images ({self.mean[key]:.3f} +- {self.std[key]:.3f}): another contrast, "
                           "modality or crop? Check the result carefully.")
        return out
