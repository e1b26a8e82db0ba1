"""Figures of the study (the paper's Figures 1, 2, 4 and 5, and our learning curves).

Each function returns a matplotlib Figure; notebooks show it and save it with
``ihclib.study.reports.save_figure``.
"""

from __future__ import annotations

import math
from typing import Mapping, Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from matplotlib.patches import Rectangle

from ihclib.study.evaluate import CLEAN, METRIC_LABELS, NOISY
from ihclib.noise import adjust_contrast_brightness, salt_and_pepper

SPLIT_COLOURS = {"train": "tab:blue", "val": "tab:orange", "test": "tab:red"}


def _grid(n: int, ncols: int, size: float = 2.4):
    nrows = max(1, math.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows), squeeze=False)
    for ax in axes.flat:
        ax.axis("off")
    return fig, axes.flat


def plot_tiles(tiles: Sequence[np.ndarray], titles: Sequence[str] | None = None, ncols: int = 4,
               suptitle: str | None = None):
    """A grid of RGB tiles (Figure 1: example tiles)."""
    fig, axes = _grid(len(tiles), ncols)
    for i, (ax, tile) in enumerate(zip(axes, tiles)):
        ax.imshow(np.clip(tile, 0, 1))
        if titles is not None:
            ax.set_title(titles[i], fontsize=8)
    if suptitle:
        fig.suptitle(suptitle)
    fig.tight_layout()
    return fig


def plot_split_map(image: np.ndarray, tiles: Sequence, title: str = ""):
    """The source image with every tile outlined in its split's colour (train / val / test)."""
    fig, ax = plt.subplots(figsize=(6, 6))
    ax.imshow(np.clip(image, 0, 1))
    for t in tiles:
        ax.add_patch(Rectangle((t.col, t.row), t.size, t.size, fill=False, lw=0.8 if t.split == "train" else 1.5,
                               ec=SPLIT_COLOURS[t.split], alpha=0.5 if t.split == "train" else 0.9))
    handles = [Rectangle((0, 0), 1, 1, fc="none", ec=c, label=s) for s, c in SPLIT_COLOURS.items()]
    ax.legend(handles=handles, loc="upper right", fontsize=8)
    ax.set_title(title or "tiles by split")
    ax.axis("off")
    fig.tight_layout()
    return fig


def plot_stains(rgb: np.ndarray, hed: np.ndarray):
    """An RGB tile beside its hematoxylin and DAB optical-density channels."""
    fig, axes = plt.subplots(1, 3, figsize=(10, 3.4))
    axes[0].imshow(np.clip(rgb, 0, 1))
    axes[0].set_title("RGB")
    for ax, i, name, cmap in ((axes[1], 0, "hematoxylin", "Blues"), (axes[2], 2, "DAB", "Oranges")):
        im = ax.imshow(hed[..., i], cmap=cmap)
        ax.set_title(f"{name} (optical density)")
        fig.colorbar(im, ax=ax, fraction=0.046)
    for ax in axes:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_noise_grid(clean: np.ndarray, amounts: Sequence[float], seed: int = 0):
    """Figure 2: the same tile under salt-and-pepper at several densities, both conventions.

    Constrained layout leaves room for each row's titles (tight_layout with a suptitle let the
    second row's titles overlap the first row's images)."""
    ncols = len(amounts) + 1
    fig, axes = plt.subplots(2, ncols, figsize=(2.2 * ncols, 5.4), squeeze=False, layout="constrained")
    for r, per_pixel in enumerate((False, True)):
        axes[r, 0].imshow(clean)
        axes[r, 0].set_title("clean", fontsize=9)
        axes[r, 0].set_ylabel("per pixel" if per_pixel else "per channel\n(default)", fontsize=9)
        for c, amount in enumerate(amounts, 1):
            noisy = salt_and_pepper(clean, amount, np.random.default_rng(seed), per_pixel=per_pixel)
            axes[r, c].imshow(noisy)
            axes[r, c].set_title(f"{amount:.0%}", fontsize=9)
    for ax in axes.flat:
        ax.set_xticks([])
        ax.set_yticks([])
    fig.suptitle("Salt-and-pepper noise: share of values (top) or of whole pixels (bottom)")
    return fig


def plot_contrast_brightness(clean: np.ndarray, settings: Sequence[tuple[float, float]]):
    """The paper's other degradations: contrast and brightness changes, (contrast, brightness) pairs."""
    fig, axes = _grid(len(settings), len(settings))
    for ax, (c, b) in zip(axes, settings):
        ax.imshow(adjust_contrast_brightness(clean, c, b))
        ax.set_title(f"contrast x{c:g}, brightness {b:+g}", fontsize=8)
    fig.tight_layout()
    return fig


def _inbound(layer) -> list:
    out = []
    for node in getattr(layer, "_inbound_nodes", []):
        for t in node.input_tensors:
            out.append(t._keras_history[0])
    return out


def plot_architecture(model, title: str | None = None):
    """Figure 4: the encoder-decoder as a U; boxes are convolutions, dashed arcs the skip links.

    Activation and normalisation layers are folded into the convolution before them; the
    vertical position is the downsampling level (log2 of input size / output size).
    """
    in_size = model.inputs[0].shape[1]
    blocks, owner = [], {}
    for layer in model.layers:
        kind = type(layer).__name__
        shape = layer.output.shape
        if kind in ("InputLayer", "Conv2D", "Conv2DTranspose", "Concatenate", "Add", "Subtract", "Multiply") or not blocks:
            level = math.log2(in_size / shape[1]) if shape[1] else 0
            blocks.append({"layer": layer, "kind": kind, "shape": tuple(shape[1:]), "level": level})
        owner[layer.name] = len(blocks) - 1
    fig, ax = plt.subplots(figsize=(max(8, 0.75 * len(blocks)), 5))
    colours = {"InputLayer": "0.85", "Conv2D": "tab:blue", "Conv2DTranspose": "tab:green", "Concatenate": "tab:purple"}
    for i, b in enumerate(blocks):
        y = -b["level"]
        ax.add_patch(Rectangle((i - 0.4, y - 0.3), 0.8, 0.6, color=colours.get(b["kind"], "tab:gray"), alpha=0.8))
        layer = b["layer"]
        detail = ""
        if b["kind"] in ("Conv2D", "Conv2DTranspose"):
            k, s = layer.kernel_size, layer.strides
            detail = f"{k[0]}x{k[1]}" + (f"/{s[0]}" if s[0] > 1 else "")
        label = {"InputLayer": "input", "Conv2D": "conv", "Conv2DTranspose": "deconv",
                 "Concatenate": "concat"}.get(b["kind"], b["kind"].lower())
        ax.text(i, y, f"{label}\n{detail}", ha="center", va="center", fontsize=7, color="white" if b["kind"] != "InputLayer" else "black")
        ax.text(i, y - 0.45, "x".join(str(d) for d in b["shape"]), ha="center", va="top", fontsize=6)
        for src in _inbound(layer):
            j = owner.get(src.name)
            if j is None:
                continue
            if j == i - 1:
                ax.annotate("", xy=(i - 0.4, y), xytext=(j + 0.4, -blocks[j]["level"]),
                            arrowprops=dict(arrowstyle="->", lw=0.8))
            elif j < i - 1:
                ax.annotate("", xy=(i, y + 0.3), xytext=(j, -blocks[j]["level"] + 0.3),
                            arrowprops=dict(arrowstyle="->", lw=0.8, ls="--", color="tab:purple",
                                            connectionstyle="arc3,rad=-0.25"))
    ax.set_xlim(-1, len(blocks))
    ax.set_ylim(-max(b["level"] for b in blocks) - 1, 0.6 + 0.14 * len(blocks))  # room for the longest skip arc
    ax.axis("off")
    ax.set_title(title or f"{model.name}: {model.count_params():,} parameters")
    fig.tight_layout()
    return fig


def plot_history(histories: Mapping[str, pd.DataFrame]):
    """Learning curves: loss and val_loss (MSE, log scale) and the paper's accuracy, per model."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, h) in enumerate(histories.items()):
        colour = f"C{i}"
        epochs = np.arange(1, len(h) + 1)
        axes[0].plot(epochs, h["loss"], color=colour, ls="--", label=f"{name} train")
        axes[0].plot(epochs, h["val_loss"], color=colour, label=f"{name} val")
        axes[1].plot(epochs, h["accuracy"], color=colour, ls="--")
        axes[1].plot(epochs, h["val_accuracy"], color=colour)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("MSE")
    axes[1].set_ylabel('Keras "accuracy" (argmax RGB channel)')
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_history_by_tiles(runs: Mapping[str, tuple[pd.DataFrame, int]], reference: Mapping[str, float] | None = None):
    """val_loss (MSE) and val_accuracy against training tiles seen (log scale), for runs whose
    epochs differ in length: ``runs`` maps a name to (history, tiles per epoch); ``reference``
    draws horizontal val_loss lines (e.g. the paper's last epoch)."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.8))
    for i, (name, (h, tiles_per_epoch)) in enumerate(runs.items()):
        seen = (np.arange(len(h)) + 1) * tiles_per_epoch
        axes[0].plot(seen, h["val_loss"], color=f"C{i}", marker=".", label=name)
        axes[1].plot(seen, h["val_accuracy"], color=f"C{i}", marker=".")
    for j, (name, value) in enumerate((reference or {}).items()):
        axes[0].axhline(value, color="grey", ls=":" if j else "--", lw=1, label=name)
    axes[0].set_yscale("log")
    axes[0].set_ylabel("val_loss (MSE)")
    axes[1].set_ylabel('val_accuracy (Keras "accuracy")')
    for ax in axes:
        ax.set_xscale("log")
        ax.set_xlabel("training tiles seen")
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def plot_restoration(clean: np.ndarray, noisy: np.ndarray, restored: Mapping[str, np.ndarray],
                     box: tuple[int, int, int] | None = None, scores: Mapping[str, str] | None = None):
    """Figure 5: noisy / restored (one column per method) / clean, with a zoomed detail row.

    ``box`` = (row, col, size) of the detail; default: the centre quarter.
    """
    panels = [("noisy input", noisy)] + list(restored.items()) + [("clean", clean)]
    h, w = clean.shape[:2]
    if box is None:
        box = (h // 4, w // 4, max(8, min(h, w) // 4))
    r, c, s = box
    fig, axes = plt.subplots(2, len(panels), figsize=(2.8 * len(panels), 5.8), squeeze=False)
    for j, (name, img) in enumerate(panels):
        axes[0, j].imshow(np.clip(img, 0, 1))
        axes[0, j].add_patch(Rectangle((c, r), s, s, fill=False, ec="yellow", lw=1.2))
        title = name + (f"\n{scores[name]}" if scores and name in scores else "")
        axes[0, j].set_title(title, fontsize=8)
        axes[1, j].imshow(np.clip(img[r:r + s, c:c + s], 0, 1), interpolation="nearest")
        axes[1, j].set_title("detail", fontsize=8)
    for ax in axes.flat:
        ax.axis("off")
    fig.tight_layout()
    return fig


def plot_metric_vs_amount(
    long_df: pd.DataFrame,
    metric: str,
    ax=None,
    noise: str | None = None,
    methods: Sequence[str] | None = None,
    band: bool = True,
    legend: bool = True,
):
    """Mean of ``metric`` against the noise amount, one line per method, 95 % CI as a band.

    ``band`` draws the CI as a shaded band; ``legend`` adds a legend to ``ax``.
    ``noise`` picks the noise kind; by default the only one present, else "s&p". Non-finite
    means (the clean image's PSNR) are not drawn. Returns the matplotlib Axes.
    """
    df = long_df[long_df.metric == metric]
    kinds = list(dict.fromkeys(df.noise))
    if noise is None:
        if len(kinds) == 1:
            noise = kinds[0]
        elif "s&p" in kinds:
            noise = "s&p"
        else:
            raise ValueError(f"several noise kinds {kinds}; pass noise=")
    df = df[df.noise == noise]
    if df.empty:
        raise ValueError(f"no rows for metric {metric!r} and noise {noise!r}")
    if ax is None:
        _, ax = plt.subplots(figsize=(6, 4))
    # one colour per method across every plot of the same table, whatever is drawn
    others = [m for m in dict.fromkeys(long_df.method) if m not in (NOISY, CLEAN)]
    palette = plt.get_cmap("tab20").colors  # 20 distinct colours: a dozen methods never share one
    styles = {NOISY: {"color": "k", "linestyle": "--"}, CLEAN: {"color": "0.6", "linestyle": ":"},
              **{m: {"color": palette[(2 * i) % 20 + (2 * i) // 20 % 2]} for i, m in enumerate(others)}}
    for name in methods or list(dict.fromkeys(df.method)):
        d = df[(df.method == name) & np.isfinite(df["mean"])].sort_values("amount")
        if d.empty:
            continue
        style = styles.get(name, {})
        ax.plot(d.amount, d["mean"], marker="o", label=name, **style)
        ok = np.isfinite(d.ci_low) & np.isfinite(d.ci_high)
        if band:
            ax.fill_between(d.amount[ok], d.ci_low[ok], d.ci_high[ok], color=style.get("color"), alpha=0.12)
    ax.set_xlabel("s&p amount" if noise.startswith("s&p") else f"{noise} level")
    ax.set_ylabel(METRIC_LABELS.get(metric, metric))
    ax.set_title(f"{METRIC_LABELS.get(metric, metric)} vs {noise} level (mean, 95% CI)")
    ax.grid(alpha=0.3)
    if legend:
        ax.legend(fontsize="small")
    return ax


def plot_metrics_vs_amount(long_df: pd.DataFrame, metrics: Sequence[str], noise: str = "s&p",
                           bands: Sequence[str] = ()):
    """One panel per metric (``plot_metric_vs_amount``) and one legend for all, below them.

    ``bands`` names the metrics drawn with their 95 % CI band (a wide band hides the lines). The
    legend sits under the panels in several columns, in the panels' own font size, so that it
    stays readable when the notebook scales the figure to its width."""
    fig, axes = plt.subplots(1, len(metrics), figsize=(5.2 * len(metrics), 4.6), squeeze=False,
                             layout="constrained")
    for ax, metric in zip(axes.flat, metrics):
        plot_metric_vs_amount(long_df, metric, ax=ax, noise=noise, band=metric in bands, legend=False)
        ax.set_title(METRIC_LABELS.get(metric, metric))
    handles, labels = axes.flat[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="outside lower center", ncols=min(len(labels), 5), fontsize="large",
               frameon=False)
    fig.suptitle(f"Mean against the {noise} amount (bands: 95 % CI)")
    return fig
