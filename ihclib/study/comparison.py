"""The study's comparative tables: Table 1 beside the paper's, models against classical filters,
architectures against each other, and the quality target, with a plain-words conclusion.

Inputs are the long table of ``ihclib.study.evaluate`` (method, noise, amount, metric, mean, ci_low,
ci_high, n) and the trained models of ``ihclib.study.runs``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from ihclib.study.architectures import paper_table1
from ihclib.study.evaluate import NOISY, Method, batched, long_table
from ihclib.infer import compiled_predictor
from ihclib.study.metrics import format_ci
from ihclib.model import count_flops
from ihclib.study.runs import TrainedModel

TABLE1_COLUMNS = ["accuracy", "loss", "val_accuracy", "val_loss"]


def model_method(model, tile_size: int, batch_size: int = 16) -> Method:
    """A Keras model as a batched evaluation method on tiles of ``tile_size`` (the project's
    compiled inference path, so its timing is what ``ihclib denoise`` pays per tile)."""

    def run(tiles: np.ndarray) -> np.ndarray:
        n = len(tiles)
        size = min(batch_size, n)
        predict = compiled_predictor(model, tile_size, size)
        out = np.empty_like(tiles)
        for i in range(0, n, size):
            chunk = tiles[i:i + size]
            if len(chunk) < size:  # pad the last chunk: one trace for every call
                chunk = np.concatenate([chunk, np.zeros((size - len(chunk), *chunk.shape[1:]), chunk.dtype)])
            out[i:i + size] = predict(chunk)[: min(size, n - i)]
        return out

    return batched(run)


def study_methods(models: Mapping[str, TrainedModel], tile_size: int, baselines: Mapping[str, object]) -> dict:
    """Models first (in the given order), then the classical filters."""
    out: dict[str, object] = {name: model_method(tm.model, tile_size) for name, tm in models.items()}
    out.update(baselines)
    return out


def model_denoiser(model, tile_size: int = 256):
    """A Keras model as a whole-image restorer (``ihclib.infer.denoise``: overlapping tiles)."""
    from ihclib.infer import denoise

    return lambda image: denoise(model, image, tile_size=tile_size, overlap=tile_size // 4, progress=False)


def examples_per_source(clean_tiles: np.ndarray, sources: Sequence[str], restorers: Mapping[str, object],
                        spec, seed: int = 0) -> dict[str, tuple]:
    """For the first tile of each source: (clean, noisy, {method: restored}, {name: "PSNR .. dB"}),
    the arguments of ``figures.plot_restoration``."""
    from ihclib.study.evaluate import degrade
    from ihclib.study.metrics import psnr

    out = {}
    for src in dict.fromkeys(sources):
        clean = clean_tiles[list(sources).index(src)]
        noisy = degrade(clean[None], spec, seed=seed)[0]
        restored = {name: np.clip(fn(noisy), 0, 1) for name, fn in restorers.items()}
        scores = {name: f"PSNR {psnr(clean, img):.2f} dB" for name, img in {"noisy input": noisy, **restored}.items()}
        out[src] = (clean, noisy, restored, None, scores)
    return out


def table1_side_by_side(history: pd.DataFrame, epochs: int = 5) -> pd.DataFrame:
    """The paper's Table 1 (five epochs) beside the first ``epochs`` rows of our history."""
    paper = paper_table1().set_index("epoch")[TABLE1_COLUMNS].head(epochs)
    ours = history[TABLE1_COLUMNS].reset_index(drop=True).head(epochs)
    ours.index.name = "epoch"
    both = pd.concat({"paper": paper, "ours": ours}, axis=1)
    both.columns = [f"{who} {col}" for who, col in both.columns]
    return both


def training_summary(models: Mapping[str, TrainedModel]) -> pd.DataFrame:
    """One row per trained model: size, epochs and best validation scores (timings: :func:`timings_table`)."""
    rows = []
    for name, tm in models.items():
        s = tm.sidecar
        best = s.get("final_metrics", {})
        training = s.get("training", {})
        rows.append({
            "model": name,
            "params": s.get("params", {}).get("total"),
            "epochs": training.get("epochs_run"),
            "best epoch": best.get("best_epoch"),
            "val_loss (MSE)": best.get("val_loss"),
            "val_accuracy": best.get("val_accuracy"),
        })
    return pd.DataFrame(rows)


def _value(long_df: pd.DataFrame, method: str, metric: str, amount: float, noise: str) -> pd.Series | None:
    sel = long_df[(long_df.method == method) & (long_df.metric == metric) & (long_df.noise == noise)
                  & np.isclose(long_df.amount, amount)]
    return None if sel.empty else sel.iloc[0]


def _fmt(row: pd.Series | None, digits: int = 2) -> str:
    return "n/a" if row is None else format_ci(row["mean"], row.ci_low, row.ci_high, digits)


ALL_SOURCES = "all held-out"


def held_out_tiles(eval_ds, n_per_source: int | None, seed: int = 0, min_tissue: float = 0.0):
    """(tiles (N, t, t, 3), source name per tile): up to ``n_per_source`` test tiles of each
    held-out source, spread over its images, each with at least ``min_tissue`` tissue."""
    n = n_per_source or max(1, len(eval_ds.split("test")))
    picked = eval_ds.sample_per_category("test", n, seed=seed, min_tissue=min_tissue)
    if not picked:
        raise ValueError("no held-out test tiles with enough tissue")
    return np.stack([px for _, px in picked]).astype(np.float32), [t.category for t, _ in picked]


def _scopes(per_image: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """(scope name, rows): every held-out tile together, then each source alone."""
    scopes = [(ALL_SOURCES, per_image)]
    if "source" in per_image.columns and per_image.source.nunique() > 1:
        scopes += [(src, g) for src, g in per_image.groupby("source", sort=True)]
    return scopes


def per_source_table(per_image: pd.DataFrame, methods: Sequence[str], amounts: Sequence[float] = (0.1, 0.3),
                     metrics: Mapping[str, str] = {"psnr": "PSNR", "ssim": "SSIM"}, noise: str = "s&p") -> pd.DataFrame:
    """Rows (source, method), columns "metric @amount": "mean [95 % CI]" over that source's tiles."""
    rows = []
    for scope, g in _scopes(per_image):
        long_df = long_table(g)
        for m in methods:
            row = {"source": scope, "method": m, "tiles": int(g.tile.nunique())}
            for metric, label in metrics.items():
                for a in amounts:
                    row[f"{label} @{a:.0%}"] = _fmt(_value(long_df, m, metric, a, noise), 2 if metric == "psnr" else 4)
            rows.append(row)
    return pd.DataFrame(rows)


def quality_target(per_image: pd.DataFrame, model_names: Sequence[str], baseline_names: Sequence[str],
                   amounts: Sequence[float] = (0.1, 0.3), noise: str = "s&p", overall_margin: float = 1.0,
                   source_margin: float = 0.0) -> pd.DataFrame:
    """Best model against the strongest classical filter (by mean PSNR), per scope and amount.

    Scopes: every held-out tile together (required margin ``overall_margin`` dB) and each
    held-out source alone (``source_margin`` dB). Met when the PSNR margin reaches the required
    one *and* the model's mean SSIM is not below the filter's."""
    from ihclib.study.evaluate import long_table

    rows = []
    for scope, g in _scopes(per_image):
        long_df = long_table(g)
        for amount in amounts:
            best = {kind: max(((n, _value(long_df, n, "psnr", amount, noise)) for n in names),
                              key=lambda nv: -np.inf if nv[1] is None else nv[1]["mean"])
                    for kind, names in (("model", model_names), ("filter", baseline_names))}
            (m_name, m), (b_name, b) = best["model"], best["filter"]
            if m is None or b is None:
                continue  # amount not in the sweep
            m_ssim = _value(long_df, m_name, "ssim", amount, noise)
            b_ssim = _value(long_df, b_name, "ssim", amount, noise)
            margin = float(m["mean"] - b["mean"])
            required = overall_margin if scope == ALL_SOURCES else source_margin
            rows.append({
                "scope": scope, "amount": amount,
                "best model": m_name, "model psnr": _fmt(m),
                "strongest filter": b_name, "filter psnr": _fmt(b),
                "margin": round(margin, 3), "required margin": required,
                "model ssim": round(float(m_ssim["mean"]), 4), "filter ssim": round(float(b_ssim["mean"]), 4),
                "met": bool(margin >= required and m_ssim["mean"] >= b_ssim["mean"]),
                "clear (CIs disjoint)": bool(m.ci_low > b.ci_high) if np.isfinite(m.ci_low) else False,
            })
    return pd.DataFrame(rows, columns=["scope", "amount", "best model", "model psnr", "strongest filter",
                                       "filter psnr", "margin", "required margin", "model ssim", "filter ssim",
                                       "met", "clear (CIs disjoint)"])


def clean_input_table(tiles: np.ndarray, methods: Mapping[str, object], brightness: float = 60 / 255) -> pd.DataFrame:
    """What each method does to an image with no noise: PSNR of its output against its input
    (from the MSE pooled over tiles, so an untouched tile does not make the mean infinite), on
    the held-out tiles as they are and brightened by ``brightness`` and clipped, which saturates
    the background to pure white as an over-exposed scan does."""
    from ihclib.study.evaluate import as_method
    from ihclib.noise import adjust_contrast_brightness

    bright = np.stack([adjust_contrast_brightness(t, 1.0, brightness) for t in tiles])
    cases = {"clean input": tiles, f"clean, brightened +{brightness * 255:.0f}/255": bright}
    rows = []
    for name, m in methods.items():
        row = {"method": name}
        for case, x in cases.items():
            out, _ = as_method(m)(x)
            mse = float(np.mean((out - x) ** 2))
            row[f"PSNR vs input, {case}"] = math.inf if mse == 0 else 10 * math.log10(1.0 / mse)
        rows.append(row)
    table = pd.DataFrame(rows)
    for case, x in cases.items():
        table[f"saturated pixels, {case}"] = f"{float((x == 1.0).all(axis=-1).mean()):.1%}"
    return table


def architecture_table(models: Mapping[str, TrainedModel], long_df: pd.DataFrame, amount: float = 0.1,
                       noise: str = "s&p", tile_size: int = 256) -> pd.DataFrame:
    """Architectures side by side: size, cost and quality at ``amount`` (timings: :func:`timings_table`)."""
    rows = []
    for name, tm in models.items():
        row = {
            "model": name,
            "params": tm.sidecar.get("params", {}).get("total"),
            f"GFLOPs / {tile_size}px tile": count_flops(tm.model, tile_size) / 1e9,
        }
        for metric in ("psnr", "ssim", "accuracy", "dice_dab", "dice_nuclei"):
            v = _value(long_df, name, metric, amount, noise)
            row[metric] = None if v is None else v["mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def timings_table(models: Mapping[str, TrainedModel], per_image_df: pd.DataFrame | None = None,
                  amount: float = 0.1, noise: str = "s&p") -> pd.DataFrame:
    """What was measured rather than computed, one row per model: training wall time and tiles/s
    (from the sidecar), the intra- and inter-op threads it trained with, and inference ms per evaluation
    tile at ``amount`` (from the per-image table). Apart from the results: it differs run to run."""
    secs = None
    if per_image_df is not None:
        timing = long_table(per_image_df, timings=True)
        secs = timing[(timing.metric == "seconds") & (timing.noise == noise) & np.isclose(timing.amount, amount)]
    rows = []
    for name, tm in models.items():
        training = tm.sidecar.get("training", {})
        threads = training.get("threads") or {}
        row = {"model": name, "training time (s)": training.get("wall_time_s"),
               "training tiles/s": training.get("tiles_per_s"),
               "intra-op threads": threads.get("intra_op"), "inter-op threads": threads.get("inter_op")}
        if secs is not None:
            mine = secs[secs.method == name]
            row["inference ms / eval tile"] = 1e3 * float(mine["mean"].iloc[0]) if len(mine) else None
        rows.append(row)
    return pd.DataFrame(rows)


def conclusion(long_df: pd.DataFrame, target: pd.DataFrame, paper_model: str = "paper_unet",
               noise: str = "s&p", amounts: Sequence[float] = (0.1, 0.3)) -> str:
    """Plain-words Markdown summary of where the paper's model and the best model stand (and,
    given the model and filter names, at which amounts of the whole sweep each side leads)."""
    lines = []
    overall = target[(target.scope == ALL_SOURCES) & target.amount.isin(amounts)]
    for _, t in overall.iterrows():
        a = t.amount
        noisy = _value(long_df, NOISY, "psnr", a, noise)
        paper = _value(long_df, paper_model, "psnr", a, noise)
        paper_acc = _value(long_df, paper_model, "accuracy", a, noise)
        noisy_acc = _value(long_df, NOISY, "accuracy", a, noise)
        filt = t["strongest filter"]
        filt_psnr = _value(long_df, filt, "psnr", a, noise)
        parts = [f"**s&p {a:.0%}:** the noisy input has PSNR {_fmt(noisy)} dB"]
        if noisy_acc is not None:
            parts.append(f"and already scores {noisy_acc['mean']:.3f} on the paper's \"accuracy\"")
        text = " ".join(parts) + ". "
        if paper is not None:
            verdict = "above" if paper["mean"] > filt_psnr["mean"] else "below"
            acc = "" if paper_acc is None else f" (accuracy {paper_acc['mean']:.3f})"
            text += (f"The paper's network reaches {_fmt(paper)} dB{acc}, "
                     f"{verdict} the strongest classical filter, {filt}, at {_fmt(filt_psnr)} dB. ")
        gap = (f"beats it by {t.margin:.2f} dB" if t.margin >= 0.005 else
               f"falls short of it by {-t.margin:.2f} dB" if t.margin <= -0.005 else "ties with it")
        text += (f"The best model, {t['best model']}, {gap}"
                 + (" (confidence intervals disjoint)." if t["clear (CIs disjoint)"] else
                    " (confidence intervals overlap: not a clear difference)."))
        lines.append(text)
    missed = target[~target.met]
    if len(missed):
        lines.append("Where the target is missed: " + "; ".join(
            f"{r.scope} at {r.amount:.0%} ({r['best model']} {r.margin:+.2f} dB against {r['strongest filter']}, "
            f"required {r['required margin']:+.1f}; SSIM {r['model ssim']:.4f} vs {r['filter ssim']:.4f})"
            for _, r in missed.iterrows()) + ".")
    met = bool(len(target)) and bool(target.met.all())
    lines.append("**Quality target** (best model at least 1.0 dB above the strongest classical filter in PSNR over "
                 "all held-out tiles, at least level with it on each held-out source, SSIM not lower, at every "
                 f"amount listed): **{'met' if met else 'not met'}**.")
    return "\n\n".join(lines)


HEADLINE_METRICS = {"psnr": "PSNR", "ssim": "SSIM", "dice_dab": "Dice DAB", "dice_nuclei": "Dice nuclei",
                    "dab_fraction_error": "DAB area err (pp)"}


def headline(long_df: pd.DataFrame, amounts: Sequence[float] = (0.1, 0.3), noise: str = "s&p",
             metrics: Mapping[str, str] = HEADLINE_METRICS) -> pd.DataFrame:
    """Methods x (metric, amount): "mean [ci_low, ci_high]" strings, methods in evaluation order."""
    methods = list(dict.fromkeys(long_df.method))
    cols = {}
    for metric, label in metrics.items():
        digits = 2 if metric in ("psnr", "dab_fraction_error") else 3
        for a in amounts:
            cols[f"{label} @{a:.0%}"] = [_fmt(_value(long_df, m, metric, a, noise), digits) for m in methods]
    return pd.DataFrame(cols, index=pd.Index(methods, name="method"))


def noisy_input_scores(clean_tiles: np.ndarray, amounts: Sequence[float], seed: int = 0) -> pd.DataFrame:
    """What doing nothing scores: mean PSNR, SSIM and the paper's "accuracy" of the noisy input
    at each salt-and-pepper amount (the floor every restoration has to be read against)."""
    from ihclib.study.evaluate import evaluate
    from ihclib.noise import NoiseSpec

    long_df = evaluate(clean_tiles, {}, [NoiseSpec("s&p", a) for a in amounts], seed=seed, include_clean=False)
    table = long_df[long_df.method == NOISY].pivot(index="amount", columns="metric", values="mean")
    table = table[["accuracy", "psnr", "ssim"]].rename(columns={"accuracy": "accuracy of noisy input",
                                                               "psnr": "PSNR (dB)", "ssim": "SSIM"})
    table.index.name = "s&p amount"
    table.columns.name = None
    return table.reset_index()


def score_sources(root, restorers: Mapping[str, object], amounts: Sequence[float] = (0.1, 0.3),
                  tile: int = 256, seed: int = 0) -> pd.DataFrame:
    """Every source folder of ``root`` scored the way issue 10 re-scored the bundled model.

    From each image two ``tile`` x ``tile`` tiles, one at the centre and one at the top-left;
    per-channel salt-and-pepper from ``skimage.util.random_noise`` with ``rng=seed``; mean PSNR
    and SSIM over the tiles of a source, per method (``restorers``: name -> image -> image).
    """
    from pathlib import Path

    from skimage.util import random_noise

    from ihclib.study.data import scan_folder
    from ihclib.images import load_image
    from ihclib.study.metrics import psnr, ssim

    sources, _ = scan_folder(root, min_size=tile, verify=False)
    rows = []
    for src in sources:
        img = load_image(src.path).rgb
        h, w = img.shape[:2]
        for where, (r, c) in (("centre", ((h - tile) // 2, (w - tile) // 2)), ("top-left", (0, 0))):
            clean = img[r:r + tile, c:c + tile]
            for a in amounts:
                noisy = random_noise(clean, mode="s&p", amount=a, rng=seed).astype(np.float32)
                for name, fn in restorers.items():
                    out = np.clip(fn(noisy), 0, 1)
                    rows.append({"source": src.category, "image": Path(src.name).name, "tile": where,
                                 "amount": a, "method": name, "psnr": psnr(clean, out), "ssim": ssim(clean, out)})
    return pd.DataFrame(rows)


def source_scores_table(scores: pd.DataFrame) -> pd.DataFrame:
    """Mean PSNR / SSIM per (source, amount) with one column per method, plus tiles per source."""
    table = scores.pivot_table(index=["source", "amount"], columns="method", values=["psnr", "ssim"],
                               aggfunc="mean", sort=False)
    table.columns = [f"{m} {metric.upper()}" for metric, m in table.columns]
    table.insert(0, "tiles", scores.groupby(["source", "amount"], sort=False).size()
                 // scores.method.nunique())
    return table


def saturated_case(restorers: Mapping[str, object], brightness: float = 60 / 255, amount: float = 0.1,
                   seed: int = 0) -> pd.DataFrame:
    """Issue 10's saturated case: scikit-image's IHC image brightened by ``brightness`` and clipped
    (a third of it pure white), restored clean and with per-channel s&p ``amount``; PSNR and
    SSIM of each method against the brightened image."""
    from skimage.util import random_noise

    from ihclib.study.data import default_image
    from ihclib.study.metrics import psnr, ssim
    from ihclib.noise import adjust_contrast_brightness

    image = adjust_contrast_brightness(default_image(), 1.0, brightness)
    noisy = random_noise(image, mode="s&p", amount=amount, rng=seed).astype(np.float32)
    rows = []
    for name, fn in restorers.items():
        row = {"method": name, "pure-white pixels": f"{float((image == 1).all(axis=-1).mean()):.1%}"}
        for case, x in (("clean", image), (f"s&p {amount:.0%}", noisy)):
            out = np.clip(fn(x), 0, 1)
            row[f"PSNR {case}"], row[f"SSIM {case}"] = psnr(image, out), ssim(image, out)
        rows.append(row)
    return pd.DataFrame(rows)
