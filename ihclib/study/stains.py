"""Colour and stain statistics of IHC tiles (notebook 01).

Stain channels come from colour deconvolution (``skimage.color.rgb2hed``, Ruifrok & Johnston):
hematoxylin (nuclei), eosin (little in IHC) and DAB (the brown immunostain). Values are optical
densities: 0 where no stain absorbs, larger where more stain is.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from ihclib.study.data import SPLITS, TileDataset
from ihclib.study.downstream import hed

__all__ = ["CHANNELS", "hed", "most_stained", "stain_statistics"]
CHANNELS = ("hematoxylin", "eosin", "DAB")


def stain_statistics(ds: TileDataset) -> pd.DataFrame:
    """Mean and spread of RGB and stain channels per category and split, one image at a time."""
    rows = []
    for split in SPLITS:
        groups: dict[str, list[np.ndarray]] = {}
        for tile, px in ds.iter_tiles(split):
            groups.setdefault(tile.category, []).append(px)
        for category, tiles in groups.items():
            batch = np.stack(tiles)
            stains = hed(batch).reshape(-1, 3)
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
    od = hed(tiles)[..., [0, 2]].mean(axis=(1, 2, 3))
    return int(np.argmax(od))
