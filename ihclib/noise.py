"""Noise models of the study, each seeded by a numpy Generator.

Salt-and-pepper comes in two conventions:

* ``per_pixel=False`` (**the study's default**): every channel value is hit independently, which
  is what ``skimage.util.random_noise(mode="s&p")`` does to an RGB image and so, most likely,
  what the paper did. A hit pixel becomes a saturated colour (e.g. (1, 0.4, 0.3)).
* ``per_pixel=True``: the whole pixel turns black or white, as a dead or hot sensor pixel does.

``amount`` is the expected share of hit values (per channel) or hit pixels (per pixel).
Gaussian, Poisson and speckle use ``random_noise`` directly; the contrast and brightness changes
the paper names are a plain affine map around mid-grey.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
from skimage.util import random_noise

KINDS = ("s&p", "gaussian", "poisson", "speckle", "none")
# the study's sweeps, defined once: s&p amounts (Figure 2, notebook 05) and Gaussian sigmas
SP_AMOUNTS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5)
GAUSSIAN_SIGMAS = (0.02, 0.05, 0.1)


def _as_float(image: np.ndarray) -> np.ndarray:
    image = np.asarray(image)
    if not np.issubdtype(image.dtype, np.floating):
        raise TypeError("noise functions take float images in [0, 1]; use ihclib.images.to_float")
    return image


def salt_and_pepper(
    image: np.ndarray,
    amount: float,
    rng: np.random.Generator,
    salt_vs_pepper: float = 0.5,
    per_pixel: bool = False,
) -> np.ndarray:
    """Impulse noise: a share ``amount`` of values (or whole pixels) set to 0 or 1."""
    image = _as_float(image)
    if not 0.0 <= amount <= 1.0:
        raise ValueError(f"amount must be in [0, 1], got {amount}")
    if not 0.0 <= salt_vs_pepper <= 1.0:
        raise ValueError(f"salt_vs_pepper must be in [0, 1], got {salt_vs_pepper}")
    if not per_pixel:
        return random_noise(image, mode="s&p", amount=amount, salt_vs_pepper=salt_vs_pepper,
                            rng=rng, clip=True).astype(image.dtype)
    # scikit-image has no whole-pixel mode: draw one decision per pixel and broadcast it
    out = image.copy()
    hit = rng.random(image.shape[:-1]) < amount
    salt = rng.random(image.shape[:-1]) < salt_vs_pepper
    out[hit & salt] = 1.0
    out[hit & ~salt] = 0.0
    return out


def gaussian(image: np.ndarray, sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise of standard deviation ``sigma`` (in [0, 1] units), clipped."""
    image = _as_float(image)
    return random_noise(image, mode="gaussian", var=sigma**2, rng=rng, clip=True).astype(image.dtype)


def poisson(image: np.ndarray, rng: np.random.Generator, peak: float | None = None) -> np.ndarray:
    """Shot noise. ``peak`` = photons at full brightness (lower is noisier); None = random_noise's
    own choice from the number of distinct values."""
    image = _as_float(image)
    if peak is None:
        return random_noise(image, mode="poisson", rng=rng, clip=True).astype(image.dtype)
    if peak <= 0:
        raise ValueError("peak must be positive")
    return np.clip(rng.poisson(image * peak) / peak, 0, 1).astype(image.dtype)


def speckle(image: np.ndarray, var: float, rng: np.random.Generator) -> np.ndarray:
    """Multiplicative noise: image + image * n, n ~ N(0, var)."""
    image = _as_float(image)
    return random_noise(image, mode="speckle", var=var, rng=rng, clip=True).astype(image.dtype)


def adjust_contrast_brightness(image: np.ndarray, contrast: float = 1.0, brightness: float = 0.0) -> np.ndarray:
    """out = (image - 0.5) * contrast + 0.5 + brightness, clipped to [0, 1]."""
    image = _as_float(image)
    return np.clip((image - 0.5) * contrast + 0.5 + brightness, 0.0, 1.0).astype(image.dtype)


@dataclass(frozen=True)
class NoiseSpec:
    """One noise setting of the study, serialisable to the model's JSON sidecar.

    ``level`` is the amount for s&p, sigma for gaussian, var for speckle and the peak for
    poisson (None/0 there means random_noise's own choice).
    """

    kind: str = "s&p"
    level: float = 0.1
    salt_vs_pepper: float = 0.5
    per_pixel: bool = False
    contrast: float = 1.0
    brightness: float = 0.0

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"unknown noise kind {self.kind!r}; choose from {KINDS}")

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "NoiseSpec":
        return cls(**d)

    def label(self) -> str:
        """Short human label, e.g. 's&p 10% (per channel)'."""
        if self.kind == "s&p":
            return f"s&p {self.level:.0%} ({'per pixel' if self.per_pixel else 'per channel'})"
        if self.kind == "gaussian":
            return f"gaussian sigma={self.level:g}"
        return f"{self.kind} {self.level:g}"


def apply_noise(image: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> np.ndarray:
    """Degrade a clean float image: contrast/brightness change first, then the noise."""
    out = _as_float(image)
    if spec.contrast != 1.0 or spec.brightness != 0.0:
        out = adjust_contrast_brightness(out, spec.contrast, spec.brightness)
    if spec.kind == "s&p":
        return salt_and_pepper(out, spec.level, rng, spec.salt_vs_pepper, spec.per_pixel)
    if spec.kind == "gaussian":
        return gaussian(out, spec.level, rng)
    if spec.kind == "poisson":
        return poisson(out, rng, spec.level or None)
    if spec.kind == "speckle":
        return speckle(out, spec.level, rng)
    return out.copy()


def noisy_copies(clean: np.ndarray, spec: NoiseSpec, seed: int) -> np.ndarray:
    """Noisy float32 copies of clean tiles (N, h, w, 3), drawn in order from one generator keyed
    by ``[seed, 1]``: the validation pairs of every training run (the same for every model)."""
    rng = np.random.default_rng([seed, 1])
    return np.stack([apply_noise(t, spec, rng) for t in clean]).astype(np.float32)


def impulse_share(noisy: np.ndarray, clean: np.ndarray, per_pixel: bool = False) -> float:
    """Measured share of values (or pixels) that the noise changed to 0 or 1."""
    changed = (noisy != clean) & ((noisy == 0.0) | (noisy == 1.0))
    if per_pixel:
        changed = changed.any(axis=-1)
    return float(changed.mean())


def noise_statistics(clean: np.ndarray, spec: NoiseSpec, rng: np.random.Generator) -> dict:
    """Measured statistics of one draw: what the noise notebook tabulates."""
    noisy = apply_noise(clean, spec, rng)
    diff = noisy - clean
    return {
        "noise": spec.label(),
        "impulse_share_values": impulse_share(noisy, clean, per_pixel=False),
        "impulse_share_pixels": impulse_share(noisy, clean, per_pixel=True),
        "changed_pixels": float((diff != 0).any(axis=-1).mean()),
        "rmse": float(np.sqrt(np.mean(diff**2))),
        "mean_shift": float(diff.mean()),
    }
