"""The study's data: the embedded default image or a folder of IHC images, cut into tiles.

* No folder given (and ``IHC_DATA_DIR`` unset): scikit-image's real IHC image
  (``skimage.data.immunohistochemistry()``, 512x512, DAB + hematoxylin), shipped in its wheel.
* A folder: PNG/JPEG/TIFF files, optionally one subfolder per category (as IHCDBI: IHC
  categories plus histology). Files directly in the folder get the category ``uncategorised``.

Tiles keep their provenance (source file, category, pixel row/column of the top-left corner,
split). Splits are **by source image** so that tiles of one image never land on two sides; with
fewer than three images every image is instead cut into disjoint regions (bands of the tile
grid), one per split. ``stride`` applies to training tiles (overlap there is augmentation);
validation and test tiles never overlap, so every held-out pixel counts once. Pixels are read one image at a time, so a folder of large slides is tiled
without holding every tile of every image in memory.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from .images import IMAGE_EXTENSIONS, ImageError, load_image, to_float

DEFAULT_SOURCE = "skimage:immunohistochemistry"
ENV_VAR = "IHC_DATA_DIR"
SPLITS = ("train", "val", "test")
UNCATEGORISED = "uncategorised"


class DataError(ValueError):
    """A data folder that cannot be used (empty, missing, no usable image)."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class SourceImage:
    """One usable image: where it is, its category and size."""

    name: str  # path relative to the data folder, or DEFAULT_SOURCE
    path: str | None  # absolute path on this machine, None for the embedded image
    category: str
    height: int
    width: int


@dataclass(frozen=True)
class Tile:
    """Provenance of one tile: which image, which category, where, which split."""

    source: str
    category: str
    row: int  # pixel row of the top-left corner
    col: int  # pixel column of the top-left corner
    size: int
    split: str


@dataclass(frozen=True)
class BadFile:
    path: str
    reason: str


def default_image() -> np.ndarray:
    """The embedded default data: scikit-image's IHC image as float32 RGB in [0, 1]."""
    from skimage import data

    return to_float(data.immunohistochemistry())


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The folder to use: the argument, else $IHC_DATA_DIR, else None (the embedded image)."""
    if data_dir in (None, ""):
        data_dir = os.environ.get(ENV_VAR) or None
    return None if data_dir is None else Path(data_dir).expanduser()


def scan_folder(root: str | os.PathLike, min_size: int = 1, verify: bool = True) -> tuple[list[SourceImage], list[BadFile]]:
    """Find the usable images under ``root`` and the bad ones with their reasons.

    ``verify`` decodes every file fully (one at a time) so that truncated files are caught here
    rather than halfway through training. Images smaller than ``min_size`` on a side are bad.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise DataError(root, "no such folder")
    if not root.is_dir():
        raise DataError(root, "not a folder")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise DataError(root, "no image files (PNG, JPEG or TIFF) found")
    good: list[SourceImage] = []
    bad: list[BadFile] = []
    for p in files:
        rel = p.relative_to(root)
        category = rel.parts[0] if len(rel.parts) > 1 else UNCATEGORISED
        try:
            img = load_image(p) if verify else None
            h, w = img.shape if img is not None else _header_size(p)
        except ImageError as exc:
            bad.append(BadFile(str(p), exc.reason))
            continue
        if min(h, w) < min_size:
            bad.append(BadFile(str(p), f"image {w}x{h} is smaller than one {min_size}x{min_size} tile"))
            continue
        good.append(SourceImage(rel.as_posix(), str(p), category, h, w))
    return good, bad


def _header_size(p: Path) -> tuple[int, int]:
    from .images import image_size

    return image_size(p)


def _bands(n: int, fractions: tuple[float, float, float]) -> list[int]:
    """Split n grid rows into (train, val, test) counts, val and test at least one each."""
    val = max(1, round(n * fractions[1]))
    test = max(1, round(n * fractions[2]))
    return [n - val - test, val, test]


def _regions(h: int, w: int, size: int, fractions: tuple[float, float, float]) -> dict[str, tuple[int, int, int, int]]:
    """Disjoint rectangles (y0, y1, x0, x1) per split, aligned to the tile grid of one image.

    Bands of grid rows when there are at least three; otherwise the top rows train and the last
    row is cut into a validation and a test half (a 2x2 grid gives 2 / 1 / 1 tiles).
    """
    rows, cols = h // size, w // size
    if rows < cols and cols >= 3 and rows < 3:  # wide image: use columns as the band axis
        flipped = _regions(w, h, size, fractions)
        return {k: (x0, x1, y0, y1) for k, (y0, y1, x0, x1) in flipped.items()}
    if rows >= 3:
        n_train, n_val, _ = _bands(rows, fractions)
        a, b = n_train * size, (n_train + n_val) * size
        return {"train": (0, a, 0, w), "val": (a, b, 0, w), "test": (b, rows * size, 0, w)}
    if rows * cols < 3:
        raise DataError("image", f"{w}x{h} holds {rows * cols} tile(s) of {size}px; need 3 for train/val/test")
    if rows == 1:  # 1 x cols with cols >= 3 is handled by the flip above; keep for safety
        raise DataError("image", f"{w}x{h} is too narrow for a region split at tile size {size}")
    half = max(1, cols // 2) * size
    top = (rows - 1) * size
    return {"train": (0, top, 0, w), "val": (top, rows * size, 0, half), "test": (top, rows * size, half, cols * size)}


def _positions(lo: int, hi: int, size: int, stride: int) -> range:
    return range(lo, hi - size + 1, stride)


@dataclass
class TileDataset:
    """Sources, their tiles and the split; pixels are read lazily, one image at a time."""

    sources: list[SourceImage]
    tiles: list[Tile]
    tile_size: int
    stride: int
    seed: int
    root: str | None
    split_mode: str  # "by-image" or "by-region"
    bad_files: list[BadFile] = field(default_factory=list)
    _cache: OrderedDict = field(default_factory=OrderedDict, repr=False)

    def split(self, name: str) -> list[Tile]:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; choose from {SPLITS}")
        return [t for t in self.tiles if t.split == name]

    def read_source(self, name: str) -> np.ndarray:
        """Float RGB pixels of one source image (the last two are kept in memory)."""
        if name in self._cache:
            self._cache.move_to_end(name)
            return self._cache[name]
        src = next(s for s in self.sources if s.name == name)
        pixels = default_image() if src.path is None else load_image(src.path).rgb
        self._cache[name] = pixels
        while len(self._cache) > 2:
            self._cache.popitem(last=False)
        return pixels

    def iter_tiles(self, split: str) -> Iterator[tuple[Tile, np.ndarray]]:
        """(tile, pixels) for one split, reading each source image once."""
        for tile in sorted(self.split(split), key=lambda t: (t.source, t.row, t.col)):
            img = self.read_source(tile.source)
            yield tile, img[tile.row : tile.row + tile.size, tile.col : tile.col + tile.size]

    def load(self, split: str, limit: int | None = None) -> np.ndarray:
        """All tiles of a split as one float32 array (N, size, size, 3) (first ``limit`` only)."""
        out = []
        for i, (_, px) in enumerate(self.iter_tiles(split)):
            if limit is not None and i >= limit:
                break
            out.append(px)
        if not out:
            return np.zeros((0, self.tile_size, self.tile_size, 3), np.float32)
        return np.stack(out).astype(np.float32)

    def sample(self, n: int, split: str | None = None, seed: int = 0) -> list[tuple[Tile, np.ndarray]]:
        """Up to ``n`` tiles spread over categories (round robin), chosen with ``seed``."""
        pool = self.tiles if split is None else self.split(split)
        rng = np.random.default_rng(seed)
        by_cat: dict[str, list[Tile]] = {}
        for t in pool:
            by_cat.setdefault(t.category, []).append(t)
        queues = {c: [ts[i] for i in rng.permutation(len(ts))] for c, ts in sorted(by_cat.items())}
        chosen: list[Tile] = []
        while len(chosen) < n and any(queues.values()):
            for q in queues.values():
                if q and len(chosen) < n:
                    chosen.append(q.pop())
        return [(t, self.read_source(t.source)[t.row:t.row + t.size, t.col:t.col + t.size]) for t in chosen]

    def region(self, split: str = "test", max_size: int = 512) -> np.ndarray:
        """The held-out area of one source: the box around a split's tiles in its first source
        image, cut to at most ``max_size`` a side (for figures of whole regions, not tiles)."""
        tiles = self.split(split)
        if not tiles:
            raise ValueError(f"split {split!r} has no tiles")
        source = tiles[0].source
        mine = [t for t in tiles if t.source == source]
        y0, x0 = min(t.row for t in mine), min(t.col for t in mine)
        y1 = min(max(t.row + t.size for t in mine), y0 + max_size)
        x1 = min(max(t.col + t.size for t in mine), x0 + max_size)
        return self.read_source(source)[y0:y1, x0:x1]

    def tile_table(self) -> pd.DataFrame:
        """One row per tile with its provenance."""
        return pd.DataFrame([asdict(t) for t in self.tiles], columns=list(Tile.__dataclass_fields__))

    def summary(self) -> pd.DataFrame:
        """Images, sizes and tiles per split, one row per category plus a total row."""
        rows = []
        tiles = self.tile_table()
        for cat in sorted({s.category for s in self.sources}):
            srcs = [s for s in self.sources if s.category == cat]
            t = tiles[tiles.category == cat]
            rows.append(_summary_row(cat, srcs, t))
        rows.append(_summary_row("total", self.sources, tiles))
        return pd.DataFrame(rows)

    def describe(self) -> dict:
        """What goes into a model's sidecar: where the data came from and how it was cut."""
        counts = {s: len(self.split(s)) for s in SPLITS}
        return {
            "root": "default" if self.root is None else Path(self.root).name,
            "sources": len(self.sources),
            "tile_size": self.tile_size,
            "stride": self.stride,
            "split_mode": self.split_mode,
            "seed": self.seed,
            "tiles": counts,
        }


def _summary_row(category: str, srcs: list[SourceImage], tiles: pd.DataFrame) -> dict:
    hs = [s.height for s in srcs]
    ws = [s.width for s in srcs]
    row = {
        "category": category,
        "images": len(srcs),
        "min size": f"{min(ws)}x{min(hs)}" if srcs else "",
        "max size": f"{max(ws)}x{max(hs)}" if srcs else "",
    }
    for split in SPLITS:
        row[f"{split} tiles"] = int((tiles.split == split).sum()) if len(tiles) else 0
    row["images per split"] = "/".join(
        str(tiles[tiles.split == s].source.nunique()) if len(tiles) else "0" for s in SPLITS
    )
    return row


def make_dataset(
    data_dir: str | os.PathLike | None = None,
    tile_size: int = 256,
    stride: int | None = None,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    skip_bad: bool = False,
    verify: bool = True,
) -> TileDataset:
    """Scan, split and tile a dataset.

    ``data_dir`` None uses ``$IHC_DATA_DIR`` or else the embedded default image. A bad file
    raises ImageError naming it, unless ``skip_bad`` (then it is listed in ``bad_files``).
    """
    if tile_size < 8:
        raise ValueError(f"tile_size must be at least 8, got {tile_size}")
    stride = stride or tile_size
    if stride <= 0:
        raise ValueError("stride must be positive")
    if abs(sum(fractions) - 1.0) > 1e-6 or min(fractions) < 0:
        raise ValueError(f"split fractions must be non-negative and sum to 1, got {fractions}")
    root = resolve_data_dir(data_dir)
    if root is None:
        img = default_image()
        sources = [SourceImage(DEFAULT_SOURCE, None, "ihc", *img.shape[:2])]
        bad: list[BadFile] = []
    else:
        sources, bad = scan_folder(root, min_size=tile_size, verify=verify)
        if bad and not skip_bad:
            raise ImageError(bad[0].path, bad[0].reason + (f" (and {len(bad) - 1} more bad files; "
                                                          "use skip_bad / --skip-bad to continue)" if len(bad) > 1 else ""))
        if not sources:
            raise DataError(root, f"no usable image of at least {tile_size}x{tile_size} px ({len(bad)} bad file(s))")
    return tile_sources(sources, tile_size, stride, seed, fractions, root, bad)


def tile_sources(
    sources: list[SourceImage],
    tile_size: int,
    stride: int,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    root: Path | None = None,
    bad: list[BadFile] | None = None,
) -> TileDataset:
    """Split already-scanned sources (by image, or by region when fewer than three) and tile them."""
    rng = np.random.default_rng(seed)
    tiles: list[Tile] = []
    if len(sources) >= 3:
        mode = "by-image"
        order = rng.permutation(len(sources))
        n_train, n_val, _ = _bands(len(sources), fractions)
        assign = {}
        for rank, idx in enumerate(order):
            assign[idx] = "train" if rank < n_train else ("val" if rank < n_train + n_val else "test")
        for i, src in enumerate(sources):
            step = stride if assign[i] == "train" else tile_size
            for y in _positions(0, src.height, tile_size, step):
                for x in _positions(0, src.width, tile_size, step):
                    tiles.append(Tile(src.name, src.category, y, x, tile_size, assign[i]))
    else:
        mode = "by-region"
        for src in sources:
            try:
                regions = _regions(src.height, src.width, tile_size, fractions)
            except DataError as exc:
                raise DataError(src.path or src.name, exc.reason) from None
            for split, (y0, y1, x0, x1) in regions.items():
                step = stride if split == "train" else tile_size
                for y in _positions(y0, y1, tile_size, step):
                    for x in _positions(x0, x1, tile_size, step):
                        tiles.append(Tile(src.name, src.category, y, x, tile_size, split))
    return TileDataset(sources, tiles, tile_size, stride, seed, None if root is None else str(root), mode, list(bad or []))
