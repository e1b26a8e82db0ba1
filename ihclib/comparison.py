"""The study's comparative tables: Table 1 beside the paper's, models against classical filters,
architectures against each other, and the quality target, with a plain-words conclusion.

Inputs are the long table of ``ihclib.evaluate`` (method, noise, amount, metric, mean, ci_low,
ci_high, n) and the trained models of ``ihclib.runs``.
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from .evaluate import NOISY, Method, batched
from .infer import compiled_predictor
from .model import count_flops, paper_table1
from .runs import TrainedModel

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


def table1_side_by_side(history: pd.DataFrame, epochs: int = 5) -> pd.DataFrame:
    """The paper's Table 1 (five epochs) beside the first ``epochs`` rows of our history."""
    paper = paper_table1().set_index("epoch")[TABLE1_COLUMNS].head(epochs)
    ours = history[TABLE1_COLUMNS].reset_index(drop=True).head(epochs)
    ours.index.name = "epoch"
    both = pd.concat({"paper": paper, "ours": ours}, axis=1)
    both.columns = [f"{who} {col}" for who, col in both.columns]
    return both


def training_summary(models: Mapping[str, TrainedModel]) -> pd.DataFrame:
    """One row per trained model: size, cost, training time and best validation scores."""
    rows = []
    for name, tm in models.items():
        s = tm.sidecar
        best = s.get("final_metrics", {})
        training = s.get("training", {})
        rows.append({
            "model": name,
            "params": s.get("params", {}).get("total"),
            "epochs": training.get("epochs_run"),
            "training time (s)": training.get("wall_time_s"),
            "training tiles/s": training.get("tiles_per_s"),
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
    if row is None:
        return "n/a"
    if np.isfinite(row.ci_low):
        return f"{row['mean']:.{digits}f} [{row.ci_low:.{digits}f}, {row.ci_high:.{digits}f}]"
    return f"{row['mean']:.{digits}f}"


def quality_target(long_df: pd.DataFrame, model_names: Sequence[str], baseline_names: Sequence[str],
                   amounts: Sequence[float] = (0.1, 0.3), noise: str = "s&p", metric: str = "psnr") -> pd.DataFrame:
    """Best model against the strongest classical filter, per amount (the issue's quality target:
    the best model must beat the best classical baseline in PSNR on held-out tiles)."""
    rows = []
    for amount in amounts:
        best = {kind: max(((n, _value(long_df, n, metric, amount, noise)) for n in names),
                          key=lambda nv: -np.inf if nv[1] is None else nv[1]["mean"])
                for kind, names in (("model", model_names), ("filter", baseline_names))}
        (m_name, m), (b_name, b) = best["model"], best["filter"]
        if m is None or b is None:
            continue  # amount not in the sweep
        margin = m["mean"] - b["mean"]
        rows.append({
            "amount": amount,
            "best model": m_name, f"model {metric}": _fmt(m),
            "strongest filter": b_name, f"filter {metric}": _fmt(b),
            "margin": round(float(margin), 3),
            "met": bool(margin > 0),
            "clear (CIs disjoint)": bool(m.ci_low > b.ci_high) if np.isfinite(m.ci_low) else False,
        })
    return pd.DataFrame(rows, columns=["amount", "best model", f"model {metric}", "strongest filter",
                                       f"filter {metric}", "margin", "met", "clear (CIs disjoint)"])


def architecture_table(models: Mapping[str, TrainedModel], long_df: pd.DataFrame, amount: float = 0.1,
                       noise: str = "s&p", tile_size: int = 256) -> pd.DataFrame:
    """Architectures side by side: size, cost, training and inference time, and quality at ``amount``."""
    rows = []
    for name, tm in models.items():
        training = tm.sidecar.get("training", {})
        row = {
            "model": name,
            "params": tm.sidecar.get("params", {}).get("total"),
            f"GFLOPs / {tile_size}px tile": count_flops(tm.model, tile_size) / 1e9,
            "training time (s)": training.get("wall_time_s"),
        }
        secs = _value(long_df, name, "seconds", amount, noise)
        row["inference ms / eval tile"] = None if secs is None else 1e3 * secs["mean"]
        for metric in ("psnr", "ssim", "accuracy", "dice_dab", "dice_nuclei"):
            v = _value(long_df, name, metric, amount, noise)
            row[metric] = None if v is None else v["mean"]
        rows.append(row)
    return pd.DataFrame(rows)


def conclusion(long_df: pd.DataFrame, target: pd.DataFrame, paper_model: str = "paper_unet",
               noise: str = "s&p", model_names: Sequence[str] = (), baseline_names: Sequence[str] = ()) -> str:
    """Plain-words Markdown summary of where the paper's model and the best model stand (and,
    given the model and filter names, at which amounts of the whole sweep each side leads)."""
    lines = []
    for _, t in target.iterrows():
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
            text += (f"The paper's network reaches {_fmt(paper)} dB (accuracy {paper_acc['mean']:.3f}), "
                     f"{verdict} the strongest classical filter, {filt}, at {_fmt(filt_psnr)} dB. ")
        gap = f"beats it by {t.margin:.2f} dB" if t.met else f"falls short of it by {-t.margin:.2f} dB"
        text += (f"The best model, {t['best model']}, {gap}"
                 + (" (confidence intervals disjoint)." if t["clear (CIs disjoint)"] else
                    " (confidence intervals overlap: not a clear difference)."))
        lines.append(text)
    if model_names and baseline_names:
        amounts = sorted(set(long_df[(long_df.noise == noise) & (long_df.metric == "psnr")].amount))
        sweep = quality_target(long_df, model_names, baseline_names, amounts=amounts, noise=noise)
        ahead = [f"{a:.0%}" for a in sweep.amount[sweep.met]]
        behind = [f"{a:.0%} ({f}, {m:+.2f} dB)" for a, f, m in
                  zip(sweep.amount[~sweep.met], sweep["strongest filter"][~sweep.met], sweep.margin[~sweep.met])]
        lines.append(f"Across the whole {noise} sweep the best model leads the classical filters in PSNR at "
                     f"{', '.join(ahead) or 'no amount'}" + (f"; a filter leads at {', '.join(behind)}." if behind else "."))
    met = bool(len(target)) and bool(target.met.all())
    lines.append("**Quality target** (best model above the strongest classical filter in PSNR at every amount "
                 f"listed): **{'met' if met else 'not met'}**.")
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
    from .evaluate import evaluate
    from .noise import NoiseSpec

    long_df = evaluate(clean_tiles, {}, [NoiseSpec("s&p", a) for a in amounts], seed=seed, include_clean=False)
    table = long_df[long_df.method == NOISY].pivot(index="amount", columns="metric", values="mean")
    table = table[["accuracy", "psnr", "ssim"]].rename(columns={"accuracy": "accuracy of noisy input",
                                                               "psnr": "PSNR (dB)", "ssim": "SSIM"})
    table.index.name = "s&p amount"
    table.columns.name = None
    return table.reset_index()
