"""Evaluate restoration methods over a sweep of noise settings, with per-tile values and 95 % CIs.

Protocol:

* Each noise setting degrades every clean tile once, with a generator seeded from
  (seed, the setting, the tile index), so every method restores *the same* noisy tiles and a
  setting's noise does not depend on which other settings are in the sweep.
* Methods are per-image callables (classical filters) or batch callables (Keras models);
  ``per_image`` / ``batched`` wrap them, and ``as_method`` guesses (objects with ``predict`` are
  batched). Outputs are clipped to [0, 1], as a saved image would be.
* "noisy input" (the degraded tile itself) is always a method: the floor to beat. "clean" is
  the ceiling (PSNR inf, SSIM/accuracy/Dice 1) and a check of the pipeline; on by default.
* Downstream thresholds are fitted once on all clean tiles (Otsu, see ``ihclib.downstream``).

``evaluate_per_image`` gives one row per (method, noise, amount, tile); ``evaluate`` the long
summary (method, noise, amount, metric, mean, ci_low, ci_high, n).
"""

from __future__ import annotations

import json
import time
import zlib
from dataclasses import dataclass
from typing import Callable, Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from .downstream import Thresholds, downstream_scores, fit_thresholds
from .metrics import format_ci, image_metrics, summarise
from .noise import GAUSSIAN_SIGMAS, SP_AMOUNTS, NoiseSpec, apply_noise

NOISY = "noisy input"
CLEAN = "clean"
METRIC_COLUMNS = ("psnr", "ssim", "accuracy", "mse", "dice_dab", "dice_nuclei", "dab_fraction_error", "seconds")
# measured, not computed: they vary from run to run, so result tables leave them out (issue 16)
TIMING_COLUMNS = ("seconds",)
LONG_COLUMNS = ("method", "noise", "amount", "metric", "mean", "ci_low", "ci_high", "n")


def noise_sweep(sp_amounts: Sequence[float] = SP_AMOUNTS, per_pixel_amounts: Sequence[float] = (),
                gaussian_sigmas: Sequence[float] | None = None) -> tuple[NoiseSpec, ...]:
    """The evaluation's noise settings: s&p per channel at ``sp_amounts``, s&p per pixel at
    ``per_pixel_amounts``, Gaussian at ``gaussian_sigmas`` (None: ``ihclib.noise.GAUSSIAN_SIGMAS``)."""
    sigmas = GAUSSIAN_SIGMAS if gaussian_sigmas is None else gaussian_sigmas
    return (*(NoiseSpec("s&p", a) for a in sp_amounts),
            *(NoiseSpec("s&p", a, per_pixel=True) for a in per_pixel_amounts),
            *(NoiseSpec("gaussian", s) for s in sigmas))


DEFAULT_SWEEP = noise_sweep()
METRIC_LABELS = {
    "psnr": "PSNR (dB)", "ssim": "SSIM", "accuracy": "paper 'accuracy'", "mse": "MSE",
    "dice_dab": "Dice, DAB mask", "dice_nuclei": "Dice, nuclei mask",
    "dab_fraction_error": "DAB area error (pp)", "seconds": "seconds per tile",
}


@dataclass(frozen=True)
class Method:
    """A restoration method: ``fn`` maps one image (batched=False) or a batch (batched=True)."""

    fn: Callable[[np.ndarray], np.ndarray]
    batched: bool = False

    def __call__(self, batch: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Restore a batch (N, H, W, 3); returns (restored float32 in [0, 1], seconds per tile)."""
        if self.batched:
            t0 = time.perf_counter()
            out = np.asarray(self.fn(batch))
            seconds = np.full(len(batch), (time.perf_counter() - t0) / max(len(batch), 1))
        else:
            outs, seconds = [], []
            for img in batch:
                t0 = time.perf_counter()
                outs.append(np.asarray(self.fn(img)))
                seconds.append(time.perf_counter() - t0)
            out = np.stack(outs) if outs else np.zeros_like(batch)
            seconds = np.asarray(seconds)
        if out.shape != batch.shape:
            raise ValueError(f"method returned shape {out.shape} for input {batch.shape}")
        return np.clip(out, 0.0, 1.0).astype(np.float32), seconds


def per_image(fn: Callable[[np.ndarray], np.ndarray]) -> Method:
    """Wrap a callable that restores one image (H, W, 3)."""
    return Method(fn, batched=False)


def batched(fn: Callable[[np.ndarray], np.ndarray]) -> Method:
    """Wrap a callable that restores a whole batch (N, H, W, 3) at once."""
    return Method(fn, batched=True)


def as_method(obj) -> Method:
    """A Method as is; an object with ``predict`` (a Keras model) batched; any other callable per image."""
    if isinstance(obj, Method):
        return obj
    if hasattr(obj, "predict"):
        return batched(lambda b: obj.predict(b, verbose=0))
    if callable(obj):
        return per_image(obj)
    raise TypeError(f"not a method: {obj!r}")


def noise_name(spec: NoiseSpec) -> str:
    """The ``noise`` column: the kind, plus what differs from the study's defaults."""
    name = spec.kind
    if spec.kind == "s&p" and spec.per_pixel:
        name += " per pixel"
    if spec.kind == "s&p" and spec.salt_vs_pepper != 0.5:
        name += f" salt={spec.salt_vs_pepper:g}"
    if spec.contrast != 1.0 or spec.brightness != 0.0:
        name += f" contrast={spec.contrast:g} brightness={spec.brightness:+g}"
    return name


def _spec_key(spec: NoiseSpec) -> int:
    return zlib.crc32(json.dumps(spec.to_dict(), sort_keys=True).encode())


def degrade(clean_tiles: np.ndarray, spec: NoiseSpec, seed: int = 0) -> np.ndarray:
    """The noisy tiles of one setting: tile i gets its own generator seeded by (seed, spec, i)."""
    key = _spec_key(spec)
    return np.stack([apply_noise(t, spec, np.random.default_rng([seed, key, i]))
                     for i, t in enumerate(clean_tiles)]).astype(np.float32)


def _check_tiles(clean_tiles: np.ndarray) -> np.ndarray:
    clean_tiles = np.asarray(clean_tiles)
    if clean_tiles.ndim != 4 or clean_tiles.shape[-1] != 3 or len(clean_tiles) == 0:
        raise ValueError(f"expected clean tiles (N, H, W, 3) with N >= 1, got shape {clean_tiles.shape}")
    return clean_tiles.astype(np.float32, copy=False)


def evaluate_per_image(
    clean_tiles: np.ndarray,
    methods: Mapping[str, object],
    noise_specs: Iterable[NoiseSpec] = DEFAULT_SWEEP,
    seed: int = 0,
    include_clean: bool = True,
    thresholds: Thresholds | None = None,
    min_size: int = 0,
    progress: Callable[[str], None] | None = None,
    sources: Sequence[str] | None = None,
) -> pd.DataFrame:
    """One row per (method, noise, amount, tile) with every metric and the seconds per tile.

    ``sources`` (one name per tile) adds a ``source`` column, for per-source summaries."""
    clean_tiles = _check_tiles(clean_tiles)
    if sources is not None and len(sources) != len(clean_tiles):
        raise ValueError(f"{len(sources)} source names for {len(clean_tiles)} tiles")
    thresholds = thresholds or fit_thresholds(clean_tiles)
    wrapped = {name: as_method(m) for name, m in methods.items()}
    rows = []
    for spec in noise_specs:
        noisy = degrade(clean_tiles, spec, seed)
        outputs = {NOISY: (noisy, np.zeros(len(noisy)))}
        if include_clean:
            outputs[CLEAN] = (clean_tiles, np.zeros(len(noisy)))
        for name, method in wrapped.items():
            if name in outputs:
                raise ValueError(f"method name {name!r} is reserved")
            if progress:
                progress(f"{noise_name(spec)} {spec.level:g}: {name}")
            outputs[name] = method(noisy)
        for name, (restored, seconds) in outputs.items():
            for i, (c, r) in enumerate(zip(clean_tiles, restored)):
                rows.append({
                    "method": name, "noise": noise_name(spec), "amount": spec.level, "tile": i,
                    "source": None if sources is None else sources[i],
                    **image_metrics(c, r), **downstream_scores(c, r, thresholds, min_size),
                    "seconds": float(seconds[i]),
                })
    df = pd.DataFrame(rows, columns=["method", "noise", "amount", "tile", "source", *METRIC_COLUMNS])
    return df if sources is not None else df.drop(columns="source")


def evaluate(
    clean_tiles: np.ndarray,
    methods: Mapping[str, object],
    noise_specs: Iterable[NoiseSpec] = DEFAULT_SWEEP,
    seed: int = 0,
    confidence: float = 0.95,
    **kwargs,
) -> pd.DataFrame:
    """Long table: method, noise, amount, metric, mean, ci_low, ci_high, n (see module doc).

    ``kwargs`` go to ``evaluate_per_image`` (include_clean, thresholds, min_size, progress).
    """
    per = evaluate_per_image(clean_tiles, methods, noise_specs, seed, **kwargs)
    return long_table(per, confidence)


def long_table(per_image_df: pd.DataFrame, confidence: float = 0.95, by_source: bool = False,
               timings: bool = False) -> pd.DataFrame:
    """Summarise a per-image table into the long format (mean and t-interval per group);
    ``by_source`` keeps one group per source (the table then has a ``source`` column).
    Results only, unless ``timings``: then the timing columns (seconds per tile) only."""
    by = ("source", "method", "noise", "amount") if by_source else ("method", "noise", "amount")
    wanted = TIMING_COLUMNS if timings else tuple(m for m in METRIC_COLUMNS if m not in TIMING_COLUMNS)
    metrics = [m for m in wanted if m in per_image_df.columns]
    return summarise(per_image_df, by=by, metrics=metrics, confidence=confidence)


def headline_table(
    long_df: pd.DataFrame,
    metric: str = "psnr",
    noise: str | None = "s&p",
    with_ci: bool = False,
    digits: int = 2,
) -> pd.DataFrame:
    """Method x amount table of one metric (rows keep the order methods first appear in).

    ``with_ci`` gives strings "mean [low, high]"; otherwise the numeric means.
    """
    df = long_df[long_df.metric == metric]
    if noise is not None:
        df = df[df.noise == noise]
    if df.empty:
        raise ValueError(f"no rows for metric {metric!r} and noise {noise!r}")
    order = list(dict.fromkeys(df.method))
    if with_ci:
        df = df.assign(value=[format_ci(m, lo, hi, digits) for m, lo, hi in zip(df["mean"], df.ci_low, df.ci_high)])
        table = df.pivot(index="method", columns="amount", values="value")
    else:
        table = df.pivot(index="method", columns="amount", values="mean")
    table = table.reindex(order)
    table.columns.name = f"{metric} / {noise or 'noise'} amount"
    return table
