"""Classical denoising filters: the baselines a CNN has to beat.

Every filter maps a float RGB image (H, W, 3) in [0, 1] to a float32 RGB image of the same
shape in [0, 1]. Parameters are fixed a priori (textbook defaults), never tuned on test data.

* ``median 3x3`` / ``median 5x5``: per-channel median (scipy.ndimage, mirrored borders).
* ``adaptive median``: Hwang & Haddad (1995), per channel, window 3 -> ``max_size``.
* ``switching median``: decision-based; only values detected as impulses are replaced.
  Detector: a channel value is an impulse iff it is exactly 0.0 or 1.0 (what salt-and-pepper
  writes, per channel or per pixel alike). Genuinely saturated pixels of a clean image are
  also "detected"; they are then replaced by the median of their non-saturated neighbours.
* ``switching mean``: the same detector, replaced by the mean of the non-impulse neighbours
  (the fixed prior inside the modified CNNs: the baseline their learned part must beat).
* ``cross-channel``: the same detector; each impulse value is predicted from the clean channels
  of its own pixel by a local linear regression (5x5, guided-filter style), else the switching
  median. The strongest classical filter here against per-channel impulses on IHC images.
* ``nl-means``: scikit-image non-local means, sigma from ``estimate_sigma`` (fast mode; listed
  only if PyWavelets, which ``estimate_sigma`` needs, is installed).
* ``wavelet``: BayesShrink soft thresholding in YCbCr (needs PyWavelets; listed only if present).
* ``tv``: total-variation (Chambolle), weight 0.1.
* ``bm3d``: opt-in extra (``EXTRA_BASELINES``, ``get_baselines(extras=True)``), only when the
  ``bm3d`` package is importable; never a dependency (non-commercial licence, and slow).

The median family is vectorised with numpy (no per-pixel Python loops): for each window size
the windows of the still-undecided values are gathered with ``sliding_window_view`` and
reduced along one axis.
"""

from __future__ import annotations

import importlib.util
from typing import Callable

import numpy as np
from numpy.lib.stride_tricks import sliding_window_view
from scipy import ndimage

from ihclib.images import unit_scale

Filter = Callable[[np.ndarray], np.ndarray]


def _check(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"filters take one RGB image (H, W, 3), got shape {image.shape}")
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError("filters take float images in [0, 1]; use ihclib.images.to_float")
    return image.astype(np.float32, copy=False)


def _out(image: np.ndarray) -> np.ndarray:
    return np.clip(image, 0.0, 1.0).astype(np.float32, copy=False)


def median(image: np.ndarray, size: int = 3) -> np.ndarray:
    """Per-channel ``size`` x ``size`` median filter."""
    image = _check(image)
    return _out(ndimage.median_filter(image, size=(size, size, 1), mode="reflect"))


def median3(image: np.ndarray) -> np.ndarray:
    """Per-channel 3x3 median."""
    return median(image, 3)


def median5(image: np.ndarray) -> np.ndarray:
    """Per-channel 5x5 median."""
    return median(image, 5)


def _windows(image: np.ndarray, k: int, idx: tuple[np.ndarray, ...]) -> np.ndarray:
    """(n, k*k) windows of side ``k`` centred on the values at ``idx`` = (rows, cols, channels)."""
    r = k // 2
    padded = np.pad(image, ((r, r), (r, r), (0, 0)), mode="symmetric")
    view = sliding_window_view(padded, (k, k), axis=(0, 1))  # (H, W, C, k, k), no copy
    rows, cols, chans = idx
    return view[rows, cols, chans].reshape(len(rows), k * k)


def _masked_median(values: np.ndarray, valid: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Row-wise median of the valid entries (lower/upper mean for even counts) and the counts."""
    count = valid.sum(axis=1)
    s = np.sort(np.where(valid, values, np.inf), axis=1)  # invalid entries sort last
    lo = np.maximum((count - 1) // 2, 0)  # rows with count 0 give inf; callers skip them
    hi = np.minimum(count // 2, values.shape[1] - 1)
    rows = np.arange(len(values))
    return 0.5 * (s[rows, lo] + s[rows, hi]), count


def adaptive_median(image: np.ndarray, max_size: int = 7) -> np.ndarray:
    """Adaptive median filter (Hwang & Haddad 1995), per channel.

    For every value, grow the window 3, 5, ... ``max_size`` until its median is not an impulse
    (zmin < zmed < zmax). Then keep the value if it is itself not an extreme of the window
    (zmin < z < zmax), else replace it by the median. Values whose window never qualifies get
    the median of the largest window.
    """
    image = _check(image)
    if max_size < 3 or max_size % 2 == 0:
        raise ValueError("max_size must be an odd number >= 3")
    out = image.copy()
    idx = np.nonzero(np.ones(image.shape, dtype=bool))
    for k in range(3, max_size + 1, 2):
        w = _windows(image, k, idx)
        zmin, zmax = w.min(axis=1), w.max(axis=1)
        zmed = np.median(w, axis=1)
        z = image[idx]
        level_b = (zmin < zmed) & (zmed < zmax)
        last = k + 2 > max_size
        decided = level_b | last
        keep = (zmin < z) & (z < zmax) & level_b
        value = np.where(keep, z, zmed)
        out[tuple(i[decided] for i in idx)] = value[decided]
        idx = tuple(i[~decided] for i in idx)
        if len(idx[0]) == 0:
            break
    return _out(out)


def impulse_mask(image: np.ndarray) -> np.ndarray:
    """The switching median's detector: True where a channel value is exactly 0.0 or 1.0 (for
    uint8/uint16 pixels: 0 or the type's maximum)."""
    image = unit_scale(image)
    return (image == 0.0) | (image == 1.0)


def switching_median(image: np.ndarray, max_size: int = 7) -> np.ndarray:
    """Decision-based median: replace only impulse values (exactly 0 or 1, per channel).

    Each impulse gets the median of the non-impulse values of the same channel in the smallest
    window (3, 5, ... ``max_size``) that holds at least one; if none does, the plain median of the
    largest window. Every other value is returned unchanged.
    """
    image = _check(image)
    if max_size < 3 or max_size % 2 == 0:
        raise ValueError("max_size must be an odd number >= 3")
    impulses = impulse_mask(image)
    out = image.copy()
    idx = np.nonzero(impulses)
    for k in range(3, max_size + 1, 2):
        if len(idx[0]) == 0:
            break
        w = _windows(image, k, idx)
        valid = ~_windows(impulses, k, idx)
        med, count = _masked_median(w, valid)
        found = count > 0
        if k + 2 > max_size:  # last window: fall back to the plain median where nothing was found
            med = np.where(found, med, np.median(w, axis=1))
            found = np.ones_like(found)
        out[tuple(i[found] for i in idx)] = med[found]
        idx = tuple(i[~found] for i in idx)
    return _out(out)


def switching_mean(image: np.ndarray, max_size: int = 7) -> np.ndarray:
    """Decision-based mean: like ``switching_median`` but the replacement is the *mean* of the
    non-impulse values of the same channel in the smallest window (3, 5, ... ``max_size``) that
    holds one (the grey value 0.5 if none does). This is also the fixed starting point that the
    modified CNNs (``dncnn_residual``, ``switching_unet``) learn corrections to, so it is the
    baseline that tells how much their learned part adds.
    """
    image = _check(image)
    if max_size < 3 or max_size % 2 == 0:
        raise ValueError("max_size must be an odd number >= 3")
    impulses = impulse_mask(image)
    valid = (~impulses).astype(np.float32)
    out = image.copy()
    todo = impulses.copy()
    for k in range(3, max_size + 1, 2):
        if not todo.any():
            break
        # box sums per channel (size 1 across channels): mean of the valid neighbours
        total = ndimage.uniform_filter(image * valid, size=(k, k, 1), mode="mirror")
        count = ndimage.uniform_filter(valid, size=(k, k, 1), mode="mirror")
        found = todo & (count > 1e-6)
        out[found] = total[found] / count[found]
        todo &= ~found
    out[todo] = 0.5
    return _out(out)


def cross_channel(image: np.ndarray, window: int = 5, eps: float = 1e-3, min_clean: int = 3) -> np.ndarray:
    """Cross-channel switching filter: each impulse value predicted from its pixel's clean channels.

    IHC colours are mixtures of two or three stains, so the RGB channels are strongly correlated,
    and per-channel impulses leave most hit pixels with one or two clean channels. For each
    impulse value (detector as ``switching_median``), a linear regression of its channel on the
    pixel's clean channel(s) is fitted on the fully clean pixels of the ``window`` x ``window``
    neighbourhood (guided-filter style: one guide a = cov / (var + eps); two guides the 2x2
    ridge solution) and evaluated at the pixel. Where the pixel has no clean channel or the window
    fewer than ``min_clean`` fully clean pixels, the switching median's value is used. The same
    computation runs inside the ``crosschannel_unet`` model (``ihclib.model.CrossChannelFill``).
    """
    image = _check(image)
    flags = impulse_mask(image)
    out = switching_median(image)
    if not flags.any():
        return out
    clean = (~flags.any(axis=-1)).astype(np.float32)

    def box(a: np.ndarray) -> np.ndarray:  # window sums with zero padding: exact counts at borders
        return ndimage.uniform_filter(a, size=window, mode="constant", cval=0.0) * (window * window)

    n = box(clean)
    enough = n >= min_clean - 0.5
    safe = np.where(enough, n, 1.0)
    ch = [image[..., c] for c in range(3)]
    mu = [box(clean * ch[c]) / safe for c in range(3)]
    cov = {}
    for a in range(3):
        for b in range(a, 3):
            cov[a, b] = cov[b, a] = box(clean * ch[a] * ch[b]) / safe - mu[a] * mu[b]
    for c in range(3):
        d, e = [k for k in range(3) if k != c]
        one_d = mu[c] + cov[c, d] / (cov[d, d] + eps) * (ch[d] - mu[d])
        one_e = mu[c] + cov[c, e] / (cov[e, e] + eps) * (ch[e] - mu[e])
        a11, a22, a12 = cov[d, d] + eps, cov[e, e] + eps, cov[d, e]
        det = a11 * a22 - a12 * a12
        two = (mu[c] + (a22 * cov[c, d] - a12 * cov[c, e]) / det * (ch[d] - mu[d])
               + (a11 * cov[c, e] - a12 * cov[c, d]) / det * (ch[e] - mu[e]))
        hit, fd, fe = flags[..., c] & enough, flags[..., d], flags[..., e]
        for sel, pred in ((hit & ~fd & fe, one_d), (hit & fd & ~fe, one_e), (hit & ~fd & ~fe, two)):
            out[..., c][sel] = pred[sel]
    return _out(out)


def nl_means(image: np.ndarray) -> np.ndarray:
    """Non-local means (fast mode, 5x5 patches, search distance 3), h = 0.8 * estimated sigma."""
    from skimage.restoration import denoise_nl_means, estimate_sigma

    image = _check(image)
    sigma = float(estimate_sigma(image, channel_axis=-1, average_sigmas=True))
    sigma = max(sigma, 1e-3)  # a flat tile estimates 0, which would make nl-means a no-op/NaN
    return _out(denoise_nl_means(image, h=0.8 * sigma, sigma=sigma, fast_mode=True, patch_size=5,
                                 patch_distance=3, channel_axis=-1))


def wavelet(image: np.ndarray) -> np.ndarray:
    """Wavelet denoising: BayesShrink, soft thresholds, in YCbCr (needs PyWavelets)."""
    from skimage.restoration import denoise_wavelet

    image = _check(image)
    return _out(denoise_wavelet(image, channel_axis=-1, convert2ycbcr=True, method="BayesShrink",
                                mode="soft", rescale_sigma=True))


def tv(image: np.ndarray, weight: float = 0.1) -> np.ndarray:
    """Total-variation denoising (Chambolle), ``weight`` 0.1."""
    from skimage.restoration import denoise_tv_chambolle

    image = _check(image)
    return _out(denoise_tv_chambolle(image, weight=weight, channel_axis=-1))


def bm3d_filter(image: np.ndarray) -> np.ndarray:
    """BM3D (``bm3d`` package, optional) with sigma from ``estimate_sigma``.

    The ``bm3d`` package is free for non-commercial use only (Tampere University licence); it is
    never a dependency of ihclib and is offered only when installed by the user.
    """
    import bm3d
    from skimage.restoration import estimate_sigma

    image = _check(image)
    sigma = max(float(estimate_sigma(image, channel_axis=-1, average_sigmas=True)), 1e-3)
    return _out(bm3d.bm3d_rgb(image, sigma_psd=sigma))


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _registry() -> dict[str, Filter]:
    reg: dict[str, Filter] = {
        "median 3x3": median3,
        "median 5x5": median5,
        "adaptive median": adaptive_median,
        "switching median": switching_median,
        "switching mean": switching_mean,
        "cross-channel": cross_channel,
    }
    # estimate_sigma and denoise_wavelet need PyWavelets, an optional scikit-image dependency
    if _has("pywt"):
        reg["nl-means"] = nl_means
        reg["wavelet"] = wavelet
    reg["tv"] = tv
    return reg


BASELINES: dict[str, Filter] = _registry()
# Opt-in extras: BM3D takes ~8 s per 128x128 RGB image on one CPU core (bm3d 4.0.3), far too
# slow for a default sweep, and its licence is non-commercial.
EXTRA_BASELINES: dict[str, Filter] = {"bm3d": bm3d_filter} if _has("bm3d") and _has("pywt") else {}


def get_baselines(extras: bool = False) -> dict[str, Filter]:
    """name -> filter for every usable baseline, the opt-in extras included if ``extras``."""
    return {**BASELINES, **(EXTRA_BASELINES if extras else {})}
