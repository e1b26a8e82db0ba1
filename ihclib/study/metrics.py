"""Image-quality metrics of the study, per image, with a mean and a 95 % confidence interval.

* ``psnr`` and ``ssim``: scikit-image, ``data_range=1`` (images are float RGB in [0, 1]; uint8
  and uint16 pixels are converted at their own scale first).
* ``paper_accuracy``: what the paper's "accuracy" column is. The paper compiles a regression
  network with ``metrics=["accuracy"]``; Keras 3 resolves that string for a 3-channel output to
  ``CategoricalAccuracy``, i.e. the share of pixels whose *brightest channel* (argmax over R, G,
  B) is the same in the clean and the restored image. It is not a measure of restoration
  quality (a uniformly darkened image scores 1.0); we report it only to compare with the paper.
* ``mean_ci``: t-interval over images (scipy), NaNs ignored.
"""

from __future__ import annotations

import math
from typing import Iterable, Sequence

import numpy as np
import pandas as pd
from skimage.metrics import mean_squared_error, peak_signal_noise_ratio, structural_similarity

from ihclib.images import unit_scale

METRICS = ("psnr", "ssim", "accuracy", "mse")
SSIM_WIN_SIZE = 7  # scikit-image's default uniform window; fits every tile of 7 px and more


def _pair(clean: np.ndarray, restored: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    clean = np.asarray(unit_scale(clean), dtype=np.float64)
    restored = np.asarray(unit_scale(restored), dtype=np.float64)
    if clean.shape != restored.shape:
        raise ValueError(f"shape mismatch: clean {clean.shape} vs restored {restored.shape}")
    if clean.ndim != 3 or clean.shape[-1] != 3:
        raise ValueError(f"expected one RGB image (H, W, 3), got shape {clean.shape}")
    return clean, restored


def mse(clean: np.ndarray, restored: np.ndarray) -> float:
    """Mean squared error over all pixels and channels."""
    clean, restored = _pair(clean, restored)
    return float(mean_squared_error(clean, restored))


def psnr(clean: np.ndarray, restored: np.ndarray) -> float:
    """Peak signal-to-noise ratio in dB (data_range=1); ``inf`` for identical images."""
    clean, restored = _pair(clean, restored)
    if np.array_equal(clean, restored):  # skimage would divide by zero and warn
        return math.inf
    return float(peak_signal_noise_ratio(clean, restored, data_range=1.0))


def ssim(clean: np.ndarray, restored: np.ndarray) -> float:
    """Mean structural similarity over the RGB channels (data_range=1).

    Uniform 7x7 window (scikit-image's default), so tiles down to 7 px work (the study's
    smallest tile is 32 px); smaller images use the largest odd window that fits.
    """
    clean, restored = _pair(clean, restored)
    side = min(clean.shape[:2])
    win = min(SSIM_WIN_SIZE, side if side % 2 else side - 1)
    if win < 3:
        raise ValueError(f"image of {clean.shape[1]}x{clean.shape[0]} px is too small for SSIM")
    return float(structural_similarity(clean, restored, data_range=1.0, channel_axis=-1, win_size=win))


def paper_accuracy(clean: np.ndarray, restored: np.ndarray) -> float:
    """The paper's "accuracy": share of pixels whose argmax over RGB matches (Keras CategoricalAccuracy).

    Works on one image (H, W, 3) or a batch (N, H, W, 3); ties go to the first channel, as
    ``np.argmax`` and ``tf.argmax`` both do.
    """
    clean = np.asarray(clean)
    restored = np.asarray(restored)
    if clean.shape != restored.shape:
        raise ValueError(f"shape mismatch: clean {clean.shape} vs restored {restored.shape}")
    return float(np.mean(np.argmax(clean, axis=-1) == np.argmax(restored, axis=-1)))


def image_metrics(clean: np.ndarray, restored: np.ndarray) -> dict[str, float]:
    """All metrics of one image pair."""
    return {
        "psnr": psnr(clean, restored),
        "ssim": ssim(clean, restored),
        "accuracy": paper_accuracy(clean, restored),
        "mse": mse(clean, restored),
    }


def mean_ci(
    values: Iterable[float],
    confidence: float = 0.95,
    bounds: tuple[float, float] = (-math.inf, math.inf),
) -> tuple[float, float, float]:
    """(mean, low, high): Student-t interval for the mean; NaNs are ignored.

    Identical values (including all ``inf``, e.g. PSNR of the clean image) give a zero-width
    interval; fewer than two values give NaN bounds. ``bounds`` is the metric's possible range
    (Dice in [0, 1]): the interval is clipped to it, since the t-interval knows no range.
    """
    m, lo, hi = _mean_ci(values, confidence)
    if not math.isnan(lo):
        lo, hi = max(lo, bounds[0]), min(hi, bounds[1])
    return m, lo, hi


# Possible range of each metric, used to clip confidence intervals.
METRIC_BOUNDS = {
    "psnr": (0.0, math.inf), "ssim": (-1.0, 1.0), "accuracy": (0.0, 1.0), "mse": (0.0, 1.0),
    "dice_dab": (0.0, 1.0), "dice_nuclei": (0.0, 1.0), "dab_fraction_error": (0.0, 100.0),
    "seconds": (0.0, math.inf),
}


def _mean_ci(values: Iterable[float], confidence: float) -> tuple[float, float, float]:
    x = np.asarray(list(values), dtype=np.float64)
    x = x[~np.isnan(x)]
    if x.size == 0:
        return math.nan, math.nan, math.nan
    if np.all(x == x[0]):
        m = float(x[0])
        return (m, m, m) if x.size > 1 else (m, math.nan, math.nan)
    if not np.all(np.isfinite(x)):
        return float(np.mean(x)), math.nan, math.nan
    m = float(x.mean())
    sem = float(x.std(ddof=1) / math.sqrt(x.size))
    from scipy import stats  # a scikit-image dependency, pinned in pyproject.toml

    q = float(stats.t.ppf(0.5 + confidence / 2, df=x.size - 1))
    return m, m - q * sem, m + q * sem


def format_ci(mean: float, low: float, high: float, digits: int = 2) -> str:
    """"mean [low, high]" with ``digits`` decimals; just the mean when there is no interval."""
    if np.isfinite(low) and np.isfinite(high):
        return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
    return f"{mean:.{digits}f}"


def summarise(
    per_image: pd.DataFrame,
    by: Sequence[str] = ("method", "noise", "amount"),
    metrics: Sequence[str] | None = None,
    confidence: float = 0.95,
) -> pd.DataFrame:
    """Long table: one row per group and metric with mean, ci_low, ci_high and n (non-NaN images).

    Intervals of the known metrics are clipped to their range (``METRIC_BOUNDS``).
    ``metrics`` defaults to every numeric column not in ``by`` (and not ``image``/``tile``).
    """
    by = [c for c in by if c in per_image.columns]
    if metrics is None:
        skip = set(by) | {"image", "tile"}
        metrics = [c for c in per_image.columns if c not in skip and pd.api.types.is_numeric_dtype(per_image[c])]
    rows = []
    groups = per_image.groupby(by, sort=False, dropna=False) if by else [((), per_image)]
    for key, g in groups:
        key = key if isinstance(key, tuple) else (key,)
        for metric in metrics:
            m, lo, hi = mean_ci(g[metric], confidence, METRIC_BOUNDS.get(metric, (-math.inf, math.inf)))
            rows.append({**dict(zip(by, key)), "metric": metric, "mean": m, "ci_low": lo, "ci_high": hi,
                         "n": int(g[metric].notna().sum())})
    return pd.DataFrame(rows, columns=[*by, "metric", "mean", "ci_low", "ci_high", "n"])
