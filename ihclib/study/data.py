"""The study's data: a folder of IHC images (by default the project's ``data/``) cut into tiles.

Which data (``resolve_data_dir``):

* A folder: PNG/JPEG/TIFF files, optionally one subfolder per category (as IHCDBI: IHC
  categories plus histology; in the project's ``data/``: one subfolder per source). Files
  directly in the folder get the category ``uncategorised``.
* Nothing given: ``$IHC_DATA_DIR``, else the repository's ``data/`` (``PROJECT_DATA``, six
  public sources; present in a checkout), else the embedded image below.
* ``"skimage"`` (``EMBEDDED``): scikit-image's real IHC image
  (``skimage.data.immunohistochemistry()``, 512x512, DAB + hematoxylin), shipped in its wheel.

Tiles keep their provenance (source file, category, pixel row/column of the top-left corner,
split). Splits, in order of precedence:

* **by source** when the folder holds a ``splits.json`` naming whole categories for ``val`` and
  ``test`` (every other category trains), so a model is judged on sources it never saw;
* **by image** otherwise, so that tiles of one image never land on two sides;
* **by region** with fewer than three images: every image is cut into disjoint regions (bands
  of the tile grid), one per split.

``stride`` applies to training tiles (overlap there is augmentation); validation and test tiles
never overlap, so every held-out pixel counts once. Pixels are read one image at a time, so a
folder of large slides is tiled without holding every tile of every image in memory.
"""

from __future__ import annotations

import json
import math
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import pandas as pd

from ihclib.images import IMAGE_EXTENSIONS, ImageError, load_image, to_float
from ihclib.study import EMBEDDED

DEFAULT_SOURCE = "skimage:immunohistochemistry"
ENV_VAR = "IHC_DATA_DIR"
# The repository's own data folder; it exists in a checkout or an editable install, not in a wheel.
PROJECT_DATA = Path(__file__).resolve().parents[2] / "data"
SPLITS = ("train", "val", "test")
SPLITS_FILE = "splits.json"
UNCATEGORISED = "uncategorised"
# A pixel whose darkest channel is at least this bright is background (empty glass, or white
# saturated by the camera): stained and counterstained tissue absorbs in at least one channel.
BACKGROUND_LEVEL = 0.85


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


def tissue_fraction(rgb: np.ndarray) -> float:
    """Share of pixels that are not bright background, in [0, 1].

    A pixel is background when its darkest channel is >= ``BACKGROUND_LEVEL`` (0.85 of full
    scale): near-white glass, including saturated white. ``rgb`` is (..., 3), float in [0, 1] or
    8/16-bit integers.
    """
    rgb = np.asarray(rgb)
    if rgb.size == 0:
        return 0.0
    if rgb.dtype.kind in "ui":
        rgb = to_float(rgb)
    return float((rgb.min(axis=-1) < BACKGROUND_LEVEL).mean())


def _has_images(root: Path) -> bool:
    return root.is_dir() and any(
        p.suffix.lower() in IMAGE_EXTENSIONS and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
        for p in root.rglob("*")
    )


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path | None:
    """The folder to use, or None for the embedded scikit-image image.

    An explicit path is used as given; the string ``"skimage"`` (``EMBEDDED``) means the embedded
    image; None or "" means ``$IHC_DATA_DIR`` if set (it may itself say ``skimage``), else the
    repository's ``data/`` (``PROJECT_DATA``) if it holds image files, else the embedded image.
    (A folder really called ``skimage`` is reached as ``./skimage``.)
    """
    if data_dir in (None, ""):
        data_dir = os.environ.get(ENV_VAR) or None
        if data_dir is None:
            return PROJECT_DATA if _has_images(PROJECT_DATA) else None
    if isinstance(data_dir, str) and data_dir == EMBEDDED:
        return None
    return Path(data_dir).expanduser()


def data_label(data_dir: str | os.PathLike | None) -> str:
    """One line saying which data ``data_dir`` resolves to (for logs and manifests)."""
    root = resolve_data_dir(data_dir)
    if root is None:
        return "embedded default (skimage.data.immunohistochemistry)"
    if root.resolve() == PROJECT_DATA:
        return "project data (data/)"
    return str(root)


def read_splits(root: str | os.PathLike | None) -> dict[str, list[str]] | None:
    """The split-by-source declaration ``<root>/splits.json``, or None when there is none.

    The file maps ``val`` / ``test`` (``train`` is allowed too, but everything unlisted trains
    anyway) to lists of category names, e.g. ``{"val": ["a"], "test": ["b", "c"]}``. Only its
    shape is checked here; ``tile_sources`` checks the names against the scanned categories.
    """
    if root is None:
        return None
    path = Path(root).expanduser() / SPLITS_FILE
    if not path.is_file():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ImageError(path, f"not valid JSON ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise ImageError(path, 'expected an object like {"val": ["category"], "test": ["category", ...]}')
    splits: dict[str, list[str]] = {}
    for key, names in raw.items():
        if key not in SPLITS:
            raise ImageError(path, f"unknown split {key!r} (use {', '.join(SPLITS)})")
        if not isinstance(names, list) or not all(isinstance(n, str) and n for n in names):
            raise ImageError(path, f"split {key!r} must be a list of category names")
        splits[key] = list(names)
    return splits


def _assign_categories(splits: dict[str, list[str]], categories: set[str], path: str) -> dict[str, str]:
    """category -> split from a splits.json declaration; unlisted categories train."""
    assign: dict[str, str] = {}
    for split in SPLITS:  # fixed order so that the error for a duplicate is reproducible
        for name in splits.get(split, []):
            if name in assign:
                where = "twice in " + split if assign[name] == split else f"in both {assign[name]} and {split}"
                raise ImageError(path, f"category {name!r} is listed {where}")
            if name not in categories:
                raise ImageError(path, f"unknown category {name!r} (categories: {', '.join(sorted(categories))})")
            assign[name] = split
    for cat in categories:
        assign.setdefault(cat, "train")
    if "train" not in assign.values():
        raise ImageError(path, "no category left for training (every category is listed for val or test)")
    return assign


def scan_folder(root: str | os.PathLike, min_size: int = 1, verify: bool = True) -> tuple[list[SourceImage], list[BadFile]]:
    """Find the usable images under ``root`` and the bad ones with their reasons.

    ``verify`` decodes every file fully (one at a time) so that truncated files are caught here
    rather than halfway through training. Images smaller than ``min_size`` on a side are bad.
    """
    root = Path(root).expanduser()
    if not root.exists():
        raise ImageError(root, "no such folder")
    if not root.is_dir():
        raise ImageError(root, "not a folder")
    files = sorted(
        p for p in root.rglob("*")
        if p.is_file() and p.suffix.lower() in IMAGE_EXTENSIONS
        and not any(part.startswith(".") for part in p.relative_to(root).parts)
    )
    if not files:
        raise ImageError(root, "no image files (PNG, JPEG or TIFF) found")
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
    from ihclib.images import image_size

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
        raise ImageError("image", f"{w}x{h} holds {rows * cols} tile(s) of {size}px; need 3 for train/val/test")
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
    split_mode: str  # "by-source", "by-image" or "by-region"
    bad_files: list[BadFile] = field(default_factory=list)
    # by-source only: split -> sorted category names (from splits.json)
    split_categories: dict[str, list[str]] = field(default_factory=dict)
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
            yield tile, _crop(img, tile)

    def load_by_category(self, split: str, max_pixels: float | None = None, seed: int = 0) -> dict[str, np.ndarray]:
        """All tiles of a split as float32 (N, size, size, 3) arrays, one per category (sorted).

        Categories without tiles in the split are left out. ``max_pixels``: where the split
        holds more tile pixels than that, an even share of tiles per category instead, spread
        over its images (:meth:`sample_per_category` with ``seed``), so a large folder does not
        fill the memory. Tiles are copied into place as their image is read, so no decoded
        image is kept alive by its tiles.
        """
        if self.over(split, max_pixels):
            quota = int(max_pixels) // self.tile_size**2 // len({t.category for t in self.split(split)})
            sampled: dict[str, list[np.ndarray]] = {}
            for tile, px in self.sample_per_category(split, max(1, quota), seed=seed):
                sampled.setdefault(tile.category, []).append(px)
            return {c: np.stack(sampled[c]).astype(np.float32, copy=False) for c in sorted(sampled)}
        tiles = self.split(split)
        counts = {c: sum(t.category == c for t in tiles) for c in sorted({t.category for t in tiles})}
        return self._filled(split, counts, lambda tile: tile.category)

    def over(self, split: str, max_pixels: float | None) -> bool:
        """Whether the tiles of ``split`` hold more than ``max_pixels`` pixels (None: no limit)."""
        return max_pixels is not None and len(self.split(split)) * self.tile_size**2 > max_pixels

    def _filled(self, split: str, counts: dict, key) -> dict:
        """Arrays of ``counts[k]`` tiles each, filled in :meth:`iter_tiles` order with the tiles
        whose ``key(tile)`` is ``k``: every tile is copied into place as its image is read (no
        decoded image stays alive through views of it, and nothing is stacked or concatenated)."""
        s = self.tile_size
        out = {k: np.empty((n, s, s, 3), np.float32) for k, n in counts.items()}
        filled = dict.fromkeys(out, 0)
        if not any(counts.values()):
            return out
        for tile, px in self.iter_tiles(split):
            k = key(tile)
            if k in out and filled[k] < counts[k]:
                out[k][filled[k]] = px
                filled[k] += 1
                if all(filled[j] == counts[j] for j in out):
                    break
        return out

    def sample_per_category(self, split: str, n: int, seed: int = 0,
                            min_tissue: float = 0.0) -> list[tuple[Tile, np.ndarray]]:
        """Up to ``n`` tiles of each category of a split, spread evenly over its images.

        Within a category, images (sorted by name) take turns (round robin); each image offers its
        tiles in a random order drawn from ``seed``, skipping tiles whose ``tissue_fraction`` is
        below ``min_tissue``. An image that runs out leaves its turns to the others. The result is
        grouped by category (sorted), then in round-robin order; the same seed gives the same list.
        Images are read one at a time and once each: without ``min_tissue`` only those that
        give tiles; with it every image of the category, to test its tiles (one is read again
        only when another image ran short and it has to give more than its even share).
        """
        if n < 0:
            raise ValueError(f"n must be non-negative, got {n}")
        if n == 0:
            return []
        rng = np.random.default_rng(seed)
        by_cat: dict[str, dict[str, list[Tile]]] = {}
        for t in self.split(split):
            by_cat.setdefault(t.category, {}).setdefault(t.source, []).append(t)
        # every permutation is drawn up front, so the order does not depend on n or min_tissue
        orders = {c: {s: [ts[i] for i in rng.permutation(len(ts))] for s, ts in sorted(srcs.items())}
                  for c, srcs in sorted(by_cat.items())}
        out: list[tuple[Tile, np.ndarray]] = []
        for per_source in orders.values():
            pixels: dict[Tile, np.ndarray] = {}
            if min_tissue <= 0:  # no pixel test: choose from metadata, read only the images needed
                chosen = _round_robin([order[:n] for order in per_source.values()], n)
            else:
                share = math.ceil(n / len(per_source))  # each image's turns if none runs out
                accepted: list[list[Tile]] = []
                for source, order in per_source.items():
                    img = self.read_source(source)
                    mine: list[Tile] = []
                    for t in order:
                        if len(mine) >= n:
                            break
                        px = _crop(img, t)
                        if tissue_fraction(px) < min_tissue:
                            continue
                        mine.append(t)
                        if len(mine) <= share:
                            pixels[t] = px.copy()  # a copy, so the whole image is not kept alive
                    accepted.append(mine)
                chosen = _round_robin(accepted, n)
            for t in sorted((t for t in chosen if t not in pixels), key=lambda t: t.source):
                pixels[t] = _crop(self.read_source(t.source), t).copy()
            out.extend((t, pixels[t]) for t in chosen)
        return out

    def load(self, split: str, limit: int | None = None, max_pixels: float | None = None,
             seed: int = 0) -> np.ndarray:
        """All tiles of a split as one float32 array (N, size, size, 3) (first ``limit`` only).

        ``max_pixels``: as in :meth:`load_by_category` (then the categories one after another)."""
        if self.over(split, max_pixels):
            return np.concatenate(list(self.load_by_category(split, max_pixels, seed).values()))[:limit]
        n = len(self.split(split)) if limit is None else min(limit, len(self.split(split)))
        return self._filled(split, {"all": n}, lambda tile: "all")["all"]

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
        return [(t, _crop(self.read_source(t.source), t)) for t in chosen]

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
        info = {
            "root": "default" if self.root is None else Path(self.root).name,
            "sources": len(self.sources),
            "tile_size": self.tile_size,
            "stride": self.stride,
            "split_mode": self.split_mode,
            "seed": self.seed,
            "tiles": counts,
        }
        if self.split_categories:  # by-source only, so sidecars of other modes stay as they were
            info["split_categories"] = {s: list(self.split_categories.get(s, [])) for s in SPLITS}
        return info


def _crop(img: np.ndarray, t: Tile) -> np.ndarray:
    return img[t.row:t.row + t.size, t.col:t.col + t.size]


def _round_robin(queues: list[list[Tile]], n: int) -> list[Tile]:
    """Take one item from each queue in turn until ``n`` are taken or all are empty."""
    chosen: list[Tile] = []
    depth = 0
    while len(chosen) < n and any(depth < len(q) for q in queues):
        for q in queues:
            if depth < len(q) and len(chosen) < n:
                chosen.append(q[depth])
        depth += 1
    return chosen


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
    splits: dict[str, list[str]] | None = None,
) -> TileDataset:
    """Scan, split and tile a dataset.

    ``splits`` replaces the folder's ``splits.json`` (same form), e.g. to train on every source.

    ``data_dir`` is resolved by ``resolve_data_dir``: a folder, ``"skimage"`` for the embedded
    image, or None for ``$IHC_DATA_DIR``, else the project's ``data/``, else the embedded image.
    A ``splits.json`` in the folder makes the split by source (see ``read_splits``). A bad file
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
            raise ImageError(root, f"no usable image of at least {tile_size}x{tile_size} px ({len(bad)} bad file(s))")
    return tile_sources(sources, tile_size, stride, seed, fractions, root, bad,
                        splits=read_splits(root) if splits is None else splits)


def tile_sources(
    sources: list[SourceImage],
    tile_size: int,
    stride: int,
    seed: int = 0,
    fractions: tuple[float, float, float] = (0.7, 0.15, 0.15),
    root: Path | None = None,
    bad: list[BadFile] | None = None,
    splits: dict[str, list[str]] | None = None,
) -> TileDataset:
    """Split already-scanned sources and tile them.

    By source when ``splits`` (from ``read_splits``) is given: whole categories go to the split
    that lists them, the rest to train (``fractions`` is then unused). Otherwise by image, or by
    region when there are fewer than three images.
    """
    rng = np.random.default_rng(seed)
    tiles: list[Tile] = []
    split_categories: dict[str, list[str]] = {}
    if splits is not None:
        mode = "by-source"
        where = str(Path(root) / SPLITS_FILE) if root is not None else SPLITS_FILE
        by_category = _assign_categories(splits, {s.category for s in sources}, where)
        for split in SPLITS:
            split_categories[split] = sorted(c for c, s in by_category.items() if s == split)
        for src in sources:
            split = by_category[src.category]
            step = stride if split == "train" else tile_size
            for y in _positions(0, src.height, tile_size, step):
                for x in _positions(0, src.width, tile_size, step):
                    tiles.append(Tile(src.name, src.category, y, x, tile_size, split))
    elif len(sources) >= 3:
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
            except ImageError as exc:
                raise ImageError(src.path or src.name, exc.reason) from None
            for split, (y0, y1, x0, x1) in regions.items():
                step = stride if split == "train" else tile_size
                for y in _positions(y0, y1, tile_size, step):
                    for x in _positions(x0, x1, tile_size, step):
                        tiles.append(Tile(src.name, src.category, y, x, tile_size, split))
    return TileDataset(sources, tiles, tile_size, stride, seed, None if root is None else str(root), mode,
                       list(bad or []), split_categories)
