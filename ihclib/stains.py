"""Colour and stain statistics of IHC tiles (notebook 01).

Stain channels come from colour deconvolution (``skimage.color.rgb2hed``, Ruifrok & Johnston):
hematoxylin (nuclei), eosin (little in IHC) and DAB (the brown immunostain). Values are optical
densities: 0 where no stain absorbs, larger where more stain is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
from skimage.color import rgb2hed

from .data import SPLITS, TileDataset

CHANNELS = ("hematoxylin", "eosin", "DAB")


def hed(rgb: np.ndarray) -> np.ndarray:
    """Stain optical densities (H, W, 3): hematoxylin, eosin, DAB."""
    return rgb2hed(np.clip(rgb, 0.0, 1.0))


def stain_statistics(ds: TileDataset) -> pd.DataFrame:
    """Mean and spread of RGB and stain channels per category and split, one image at a time."""
    rows = []
    for split in SPLITS:
        groups: dict[str, list[np.ndarray]] = {}
        for tile, px in ds.iter_tiles(split):
            groups.setdefault(tile.category, []).append(px)
        for category, tiles in groups.items():
            batch = np.stack(tiles)
            stains = hed(batch.reshape(-1, batch.shape[2], 3)).reshape(-1, 3)
            rgb = batch.reshape(-1, 3)
            row = {"category": category, "split": split, "tiles": len(tiles)}
            for i, c in enumerate("RGB"):
                row[f"{c} mean"] = float(rgb[:, i].mean())
            for i, c in enumerate(CHANNELS):
                row[f"{c} mean"] = float(stains[:, i].mean())
                row[f"{c} p95"] = float(np.percentile(stains[:, i], 95))
            rows.append(row)
    return pd.DataFrame(rows)


def most_stained(tiles: np.ndarray) -> int:
    """Index of the tile with the most hematoxylin + DAB: the most informative one to show."""
    tiles = np.asarray(tiles)
    od = np.stack([hed(t)[..., [0, 2]].mean() for t in tiles])
    return int(np.argmax(od))
