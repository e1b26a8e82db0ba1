"""What pathologists measure: DAB-positive area and hematoxylin (nuclei) masks, before and after.

Colour deconvolution with ``skimage.color.rgb2hed`` (Ruifrok & Johnston) gives per-pixel
hematoxylin (H) and DAB optical densities. A pixel is DAB-positive when its DAB density exceeds
a threshold, and part of a nucleus when its H density does.

**Thresholds come from the clean image and are then frozen**: Otsu on the clean image's channel
(or on the pooled clean tiles of a data set, see ``fit_thresholds``), applied unchanged to the
noisy and restored images. Re-fitting Otsu on each degraded image would move the threshold with
the noise and hide part of the damage; frozen thresholds make every mask comparable to the
clean one, as a fixed lab protocol would be.

``rgb2hed`` clips values below 1e-6 before its logarithm (checked in scikit-image 0.26:
``np.maximum(rgb, 1e-6)`` in ``separate_stains``), so pepper noise (exact 0) gives a large but
finite density rather than ``inf``; we clip the input to [0, 1] as well.

Dice convention: two empty masks agree perfectly (1.0). In ``downstream_scores`` the Dice of a
stain is NaN when the *clean* mask is empty (nothing to find: Dice is then undefined and would
be 0 or 1 on a single stray pixel); such tiles still count in ``dab_fraction_error``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu
from skimage.morphology import remove_small_objects

from ihclib.images import unit_scale

H, DAB = 0, 2  # channels of rgb2hed's output (hematoxylin, eosin, DAB)


@dataclass(frozen=True)
class Thresholds:
    """Frozen optical-density thresholds for the DAB and hematoxylin channels of ``rgb2hed``."""

    dab: float
    hematoxylin: float

    def to_dict(self) -> dict:
        return {"dab": self.dab, "hematoxylin": self.hematoxylin}


def hed(image: np.ndarray) -> np.ndarray:
    """Stain densities (H, E, DAB) of one RGB image (H, W, 3) or a batch (N, H, W, 3)."""
    image = np.clip(np.asarray(unit_scale(image), dtype=np.float64), 0.0, 1.0)
    if image.shape[-1] != 3:
        raise ValueError(f"expected RGB images (..., 3), got shape {image.shape}")
    flat = image.reshape(-1, image.shape[-2], 3) if image.ndim > 3 else image
    return rgb2hed(flat).reshape(image.shape)


def fit_thresholds(clean: np.ndarray) -> Thresholds:
    """Otsu thresholds of the DAB and H densities of the clean image(s), pooled over a batch."""
    d = hed(clean)
    return Thresholds(dab=float(threshold_otsu(d[..., DAB])), hematoxylin=float(threshold_otsu(d[..., H])))


def _clean_small(mask: np.ndarray, min_size: int) -> np.ndarray:
    if min_size <= 1:
        return mask
    return remove_small_objects(mask, max_size=min_size - 1)  # drop objects of < min_size pixels


def masks(image: np.ndarray, thresholds: Thresholds, min_size: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(DAB-positive mask, nuclei mask) of one image; objects under ``min_size`` pixels removed."""
    d = hed(image)
    if d.ndim != 3:
        raise ValueError(f"masks takes one RGB image (H, W, 3), got shape {np.shape(image)}")
    return (_clean_small(d[..., DAB] > thresholds.dab, min_size),
            _clean_small(d[..., H] > thresholds.hematoxylin, min_size))


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice coefficient 2|A∩B| / (|A|+|B|) of two boolean masks; 1.0 when both are empty."""
    a = np.asarray(a, dtype=bool)
    b = np.asarray(b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"mask shapes differ: {a.shape} vs {b.shape}")
    total = int(a.sum()) + int(b.sum())
    if total == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / total


def dab_area_fraction(mask: np.ndarray) -> float:
    """Share of pixels that are DAB-positive, in [0, 1]."""
    return float(np.mean(np.asarray(mask, dtype=bool)))


def downstream_scores(
    clean: np.ndarray,
    other: np.ndarray,
    thresholds: Thresholds | None = None,
    min_size: int = 0,
) -> dict[str, float]:
    """Agreement of ``other`` (noisy or restored) with ``clean`` on what a pathologist measures.

    Returns dice_dab, dice_nuclei (NaN where the clean mask is empty) and dab_fraction_error:
    |DAB area % of other - DAB area % of clean| in percentage points. ``thresholds`` default to
    Otsu on this clean image; pass ``fit_thresholds(all_clean_tiles)`` to share them across tiles.
    """
    if thresholds is None:
        thresholds = fit_thresholds(clean)
    dab_c, nuc_c = masks(clean, thresholds, min_size)
    dab_o, nuc_o = masks(other, thresholds, min_size)
    return {
        "dice_dab": dice(dab_c, dab_o) if dab_c.any() else math.nan,
        "dice_nuclei": dice(nuc_c, nuc_o) if nuc_c.any() else math.nan,
        "dab_fraction_error": 100.0 * abs(dab_area_fraction(dab_o) - dab_area_fraction(dab_c)),
    }
