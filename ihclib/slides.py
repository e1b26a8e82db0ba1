"""Whole-slide images: lazy tile-by-tile reading, a tissue mask, streaming pyramidal OME-TIFF.

A slide (SVS, NDPI, MRXS, ... through OpenSlide; tiled, pyramidal or OME-TIFF through
tifffile + zarr) is never read whole. It is cut into *blocks* (``block_size`` squares, each
read with a ``halo`` of context on every side so that block seams do not show), each block is
denoised on its own (:func:`denoise_block`, a Dask task in :mod:`ihclib.distributed`) or, when
the tissue mask finds no tissue in it, copied through. Blocks come back row by row, in order,
and :func:`write_pyramid` streams them into a tiled OME-TIFF: level 0 tile by tile, each
lower level (2x smaller, down to one tile) as a SubIFD computed from the one above it, kept
meanwhile in a scratch zarr store on disk. Memory is a few block rows of the slide, whatever
its size. The output carries the source's physical pixel size (TIFF resolution tags and the
OME ``PhysicalSizeX/Y``), and appears complete or not at all (temporary file, then rename).

This module is part of the tool: it imports no study module (data, noise, metrics, ...).
"""

from __future__ import annotations

import math
import os
import tempfile
import threading
import warnings
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable, Iterator

import numpy as np

from .images import ImageError, ImageMeta, to_float

# formats only OpenSlide reads (vendor slides); TIFF-based ones go to tifffile first
OPENSLIDE_EXTENSIONS = (".svs", ".ndpi", ".mrxs", ".scn", ".vms", ".vmu", ".bif", ".svslide")
TIFF_EXTENSIONS = (".tif", ".tiff")
OME_SUFFIXES = (".ome.tif", ".ome.tiff")
OUTPUT_TILE = 256  # tile side of the written OME-TIFF (and the unit block sizes are a multiple of)
DEFAULT_BLOCK = 1024
MASK_CELL = 16  # the tissue mask decides on 16x16 px cells
# a cell is tissue when the summed optical density of its median colour exceeds this; the median
# because salt-and-pepper noise (up to 50 %) would make a mean of white background look stained
DEFAULT_TISSUE_OD = 0.15


# ---------------------------------------------------------------- which files are slides


def is_slide(path: str | os.PathLike) -> bool:
    """True for files to denoise block by block: vendor slides (OpenSlide), OME-TIFF, and TIFFs
    that are tiled or pyramidal. Plain PNG/JPEG and strip TIFFs are not (they load whole)."""
    name = str(path).lower()
    if name.endswith(OPENSLIDE_EXTENSIONS) or name.endswith(OME_SUFFIXES):
        return True
    if not name.endswith(TIFF_EXTENSIONS) or not Path(path).is_file():
        return False
    import tifffile

    try:
        with tifffile.TiffFile(path) as tf:
            page = tf.pages.first
            return bool(page.is_tiled or len(tf.series[0].levels) > 1 or tf.is_ome)
    except Exception:  # unreadable: the ordinary path reports it with its reason
        return False


def slide_output_name(src: str | os.PathLike, suffix: str) -> str:
    """``NAME<suffix>.ome.tif`` for a slide ``NAME.svs`` / ``NAME.ome.tif`` / ``NAME.tif``."""
    name = Path(src).name
    lower = name.lower()
    for ext in OME_SUFFIXES + OPENSLIDE_EXTENSIONS + TIFF_EXTENSIONS:
        if lower.endswith(ext):
            name = name[: -len(ext)]
            break
    return f"{name}{suffix}.ome.tif"


# ---------------------------------------------------------------- reading


class SlideSource:
    """Level 0 of a slide, read region by region. ``meta`` holds its physical pixel size."""

    path: str
    height: int
    width: int
    dtype: np.dtype
    meta: ImageMeta

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        """Pixels ``[y:y+h, x:x+w]`` as (h, w, 3) in ``dtype``."""
        raise NotImplementedError

    def close(self) -> None:
        """Release the file."""


def _ome_meta(xml: str | None) -> ImageMeta | None:
    """Physical pixel size from OME-XML ``Pixels`` (PhysicalSizeX/Y, default unit um)."""
    if not xml:
        return None
    try:
        root = ET.fromstring(xml)
    except ET.ParseError:
        return None
    pixels = next((e for e in root.iter() if e.tag.endswith("}Pixels") or e.tag == "Pixels"), None)
    if pixels is None or "PhysicalSizeX" not in pixels.attrib:
        return None
    scale = {"µm": 1.0, "um": 1.0, "nm": 1e-3, "mm": 1e3, "cm": 1e4}
    sx = float(pixels.attrib["PhysicalSizeX"]) * scale.get(pixels.attrib.get("PhysicalSizeXUnit", "µm"), 1.0)
    sy = float(pixels.attrib.get("PhysicalSizeY", sx)) * scale.get(pixels.attrib.get("PhysicalSizeYUnit", "µm"), 1.0)
    if sx <= 0 or sy <= 0:
        return None
    return ImageMeta(resolution=(1e4 / sx, 1e4 / sy), unit="cm")


class TiffSlide(SlideSource):
    """A tiled, pyramidal or OME-TIFF through ``tifffile`` + ``zarr``: only the tiles a region
    touches are decoded."""

    def __init__(self, path: str | os.PathLike):
        import tifffile
        import zarr

        from .images import _tiff_meta

        self.path = str(path)
        self._tf = tifffile.TiffFile(path)
        try:
            series = self._tf.series[0]
            axes, shape = series.levels[0].axes, series.levels[0].shape
            self._layout = _layout(axes, shape, self.path)
            self._z = zarr.open(series.aszarr(level=0), mode="r")
            meta = _tiff_meta(self._tf)
            if meta.resolution is None:
                meta = _ome_meta(self._tf.ome_metadata if self._tf.is_ome else None) or meta
            self.meta = meta
        except BaseException:
            self._tf.close()
            raise
        y_axis, x_axis = axes.index("Y"), axes.index("X")
        self.height, self.width = int(shape[y_axis]), int(shape[x_axis])
        self.dtype = _checked_dtype(np.dtype(series.dtype), self.path)

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        axes = self._layout
        if axes == "YXS":
            arr = self._z[y : y + h, x : x + w, :3]
        else:  # "SYX": planar samples
            arr = np.moveaxis(self._z[:3, y : y + h, x : x + w], 0, -1)
        return np.ascontiguousarray(arr)

    def close(self) -> None:
        self._tf.close()


def _layout(axes: str, shape: tuple, path: str) -> str:
    """'YXS' or 'SYX' (C counts as S) for an RGB(A) slide; ImageError for anything else."""
    axes = axes.replace("C", "S")
    dims = dict(zip(axes, shape))
    extra = {a: n for a, n in dims.items() if a not in "YXS" and n > 1}
    if extra:
        raise ImageError(path, f"slide has more than one plane ({', '.join(f'{a}={n}' for a, n in extra.items())}); "
                               "denoising needs a single RGB image")
    if dims.get("S", 1) not in (3, 4):
        raise ImageError(path, "grayscale slide; IHC models need RGB")
    kept = "".join(a for a in axes if a in "YXS")
    if kept not in ("YXS", "SYX") or any(a not in "YXS" for a in axes if dims[a] > 1):
        raise ImageError(path, f"unsupported slide layout {axes} {shape}")
    if len(kept) != len(axes):
        raise ImageError(path, f"unsupported slide layout {axes} {shape} (singleton axes)")
    return kept


def _checked_dtype(dtype: np.dtype, path: str) -> np.dtype:
    if dtype not in (np.uint8, np.uint16):
        raise ImageError(path, f"unsupported slide pixel type {dtype} (use 8- or 16-bit)")
    return dtype


class OpenSlideSource(SlideSource):
    """A vendor slide (SVS, NDPI, MRXS, ...) through OpenSlide, always 8-bit RGB; transparent
    pixels (outside the scanned area) become white, the colour of glass."""

    def __init__(self, path: str | os.PathLike):
        try:
            import openslide
        except ImportError as exc:  # openslide-bin missing or the binary not loadable
            raise ImageError(path, f"reading this slide format needs openslide-python and openslide-bin ({exc})") from None
        self.path = str(path)
        self._slide = openslide.OpenSlide(self.path)
        self.width, self.height = (int(v) for v in self._slide.dimensions)
        self.dtype = np.dtype(np.uint8)
        props = self._slide.properties
        mpp_x, mpp_y = props.get(openslide.PROPERTY_NAME_MPP_X), props.get(openslide.PROPERTY_NAME_MPP_Y)
        if mpp_x and mpp_y and float(mpp_x) > 0 and float(mpp_y) > 0:
            self.meta = ImageMeta(resolution=(1e4 / float(mpp_x), 1e4 / float(mpp_y)), unit="cm")
        else:
            self.meta = ImageMeta()

    def read(self, y: int, x: int, h: int, w: int) -> np.ndarray:
        rgba = np.asarray(self._slide.read_region((x, y), 0, (w, h)))
        alpha = rgba[..., 3:4].astype(np.uint16)
        rgb = (rgba[..., :3] * alpha + 255 * (255 - alpha) + 127) // 255  # over white
        return rgb.astype(np.uint8)

    def close(self) -> None:
        self._slide.close()


def open_slide(path: str | os.PathLike, reader: str = "auto") -> SlideSource:
    """Open a slide for lazy reading; ``reader`` "auto" (by extension), "tifffile" or "openslide".

    Errors are ImageError naming the file and the reason.
    """
    path = Path(path)
    if not path.exists():
        raise ImageError(path, "no such file")
    if path.is_dir() and not path.name.lower().endswith(".mrxs"):
        raise ImageError(path, "is a folder, not a slide file")
    if reader == "auto":
        reader = "openslide" if path.name.lower().endswith(OPENSLIDE_EXTENSIONS) else "tifffile"
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return TiffSlide(path) if reader == "tifffile" else OpenSlideSource(path)
    except ImageError:
        raise
    except Exception as exc:  # decoders raise many unrelated types; report them uniformly
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ImageError(path, f"cannot read as a slide ({reason})") from None


# ---------------------------------------------------------------- tissue mask


def tissue_cells(rgb: np.ndarray, threshold: float = DEFAULT_TISSUE_OD, cell: int = MASK_CELL) -> np.ndarray:
    """Boolean (ceil(h/cell), ceil(w/cell)): which cells hold tissue.

    Each cell's per-channel median colour (robust to impulse noise) is turned into optical
    density, -log10(I / I_max) summed over R, G, B; glass is near 0, stained tissue well above.
    """
    h, w = rgb.shape[:2]
    ch, cw = math.ceil(h / cell), math.ceil(w / cell)
    padded = np.pad(rgb, ((0, ch * cell - h), (0, cw * cell - w), (0, 0)), mode="edge")
    cells = padded.reshape(ch, cell, cw, cell, 3).transpose(0, 2, 1, 3, 4).reshape(ch, cw, cell * cell, 3)
    med = np.median(cells, axis=2)
    top = 255.0 if rgb.dtype == np.uint8 else 65535.0 if rgb.dtype == np.uint16 else 1.0
    od = -np.log10(np.clip(med / top, 1.0 / 255.0, 1.0)).sum(axis=-1)
    return od > threshold


# ---------------------------------------------------------------- one block (a Dask task)


@dataclass(frozen=True)
class BlockJob:
    """Everything a worker needs to denoise one block of a slide: paths, not objects, so the
    job pickles small and each worker opens the slide and loads the model once."""

    slide: str
    model: str
    reader: str = "auto"
    block_size: int = DEFAULT_BLOCK
    halo: int = 32
    tile_size: int = 256
    overlap: int = 32
    batch_size: int = 8
    backend: str | None = None
    multiple: int = 32
    tissue_od: float | None = DEFAULT_TISSUE_OD  # None: denoise every block

    def blocks(self, height: int, width: int) -> list[list[tuple[int, int]]]:
        """Block origins (y, x), row by row."""
        b = self.block_size
        return [[(y, x) for x in range(0, width, b)] for y in range(0, height, b)]


# per worker process: opened slides and loaded models, reused by every task that needs them,
# keyed by the file's path, size and modification time (_file_key); a lock each, for workers
# that run several tasks at once
_SOURCES: dict[tuple, SlideSource] = {}
_MODELS: dict[tuple, Any] = {}
_SOURCES_LOCK, _MODELS_LOCK = threading.Lock(), threading.Lock()


def _file_key(path: str) -> tuple:
    """``path`` with its size and modification time: a file written again under the same name
    (a retrained model, a slide exported again) is another key, so a worker that outlives one
    run (an existing cluster, ``--scheduler``) does not go on with what it opened before."""
    try:
        st = os.stat(path)
    except OSError:  # the reader says what is wrong with it, naming the file
        return (str(path), None, None)
    return (str(path), st.st_size, st.st_mtime_ns)


def _forget_other_versions(cache: dict, key: tuple) -> None:
    """Drop (and close) what ``cache`` holds for other versions of the file ``key`` names."""
    for old in [k for k in cache if k[0] == key[0] and k[1:3] != key[1:3]]:
        value = cache.pop(old)
        if isinstance(value, SlideSource):
            value.close()


def use_model(path: str, model: Any) -> None:
    """Let blocks that name ``path`` use ``model``, already loaded in this process (the
    in-process path: the command has loaded it once to check it; no second copy)."""
    key = _file_key(path)
    with _MODELS_LOCK:
        _forget_other_versions(_MODELS, key)
        _MODELS[key] = model


def _source(job: BlockJob) -> SlideSource:
    key = (*_file_key(job.slide), job.reader)
    with _SOURCES_LOCK:
        if key not in _SOURCES:
            _forget_other_versions(_SOURCES, key)
            _SOURCES[key] = open_slide(job.slide, job.reader)
        return _SOURCES[key]


def _model(path: str) -> Any:
    key = _file_key(path)
    with _MODELS_LOCK:
        if key not in _MODELS:
            from .infer import load_model

            _forget_other_versions(_MODELS, key)
            _MODELS[key] = load_model(path)[0]
        return _MODELS[key]


def denoise_block(job: BlockJob, y: int, x: int) -> tuple[np.ndarray, bool]:
    """Denoise the block at (y, x) of ``job.slide``: (pixels in the slide's dtype, denoised?).

    The block is read with ``job.halo`` px of context on each side (clipped to the slide, and
    at least one tile) and cropped back after denoising. Without tissue it is returned as read, not denoised.
    """
    src = _source(job)
    h, w = min(job.block_size, src.height - y), min(job.block_size, src.width - x)
    top, left = max(0, y - job.halo), max(0, x - job.halo)
    bottom, right = min(src.height, y + h + job.halo), min(src.width, x + w + job.halo)
    # a region smaller than a tile would be mirrored out to one, while the whole-image path
    # sees the slide's border there: grow it inwards to a tile instead
    top, left = max(0, min(top, bottom - job.tile_size)), max(0, min(left, right - job.tile_size))
    region = src.read(top, left, bottom - top, right - left)
    block = region[y - top : y - top + h, x - left : x - left + w]
    if job.tissue_od is not None and not tissue_cells(block, job.tissue_od).any():
        return np.ascontiguousarray(block), False
    from .infer import denoise

    # integer pixels in and out, converted tile by tile (no float32 copy of the region), as
    # `ihclib denoise` on a whole image: the same pixels as from_float(denoise(to_float(region)))
    pixels = region if region.dtype in (np.uint8, np.uint16) else to_float(region)
    out = denoise(_model(job.model), pixels, tile_size=job.tile_size, overlap=job.overlap,
                  batch_size=job.batch_size, progress=False, backend=job.backend, multiple=job.multiple,
                  precision="auto", out_dtype=src.dtype)
    return np.ascontiguousarray(out[y - top : y - top + h, x - left : x - left + w]), True


# ---------------------------------------------------------------- writing the pyramid


def level_shapes(height: int, width: int, tile: int = OUTPUT_TILE) -> list[tuple[int, int]]:
    """(h, w) of each pyramid level: halved (rounded up) until the slide fits in one tile."""
    shapes = [(height, width)]
    while max(shapes[-1]) > tile:
        h, w = shapes[-1]
        shapes.append(((h + 1) // 2, (w + 1) // 2))
    return shapes


def half(rgb: np.ndarray) -> np.ndarray:
    """2x2 mean (edge pixels repeated for odd sides), rounded half up, in the input's dtype.

    Summed in integers a quarter of the strip at a time: a float32 copy of a 40,000 px wide
    strip of blocks would be half a gigabyte.
    """
    h, w = rgb.shape[:2]
    if h % 2 or w % 2:
        rgb = np.pad(rgb, ((0, h % 2), (0, w % 2), (0, 0)), mode="edge")
    acc = rgb[0::2, 0::2].astype(np.uint32 if rgb.dtype == np.uint16 else np.uint16)
    acc += rgb[1::2, 0::2]
    acc += rgb[0::2, 1::2]
    acc += rgb[1::2, 1::2]
    acc += 2
    acc //= 4
    return acc.astype(rgb.dtype)


def _tiles(rows: Iterable[tuple[int, np.ndarray]], tile: int, below: Any | None) -> Iterator[np.ndarray]:
    """Tiles of each row of the level, in TIFF order; each row's 2x reduction goes to ``below``."""
    for y, row in rows:
        if below is not None:
            below[y // 2 : y // 2 + (row.shape[0] + 1) // 2] = half(row)
        for ty in range(0, row.shape[0], tile):
            for tx in range(0, row.shape[1], tile):
                yield row[ty : ty + tile, tx : tx + tile]


def _zarr_rows(level: Any, tile: int) -> Iterator[tuple[int, np.ndarray]]:
    for y in range(0, level.shape[0], tile):
        yield y, np.asarray(level[y : y + tile])


def _ome_metadata(meta: ImageMeta) -> dict:
    md: dict = {"axes": "YXS"}
    mpp = meta.microns_per_pixel()
    if mpp:
        md.update(PhysicalSizeX=mpp[0], PhysicalSizeXUnit="µm", PhysicalSizeY=mpp[1], PhysicalSizeYUnit="µm")
    return md


def write_pyramid(
    path: str | os.PathLike,
    rows: Iterable[tuple[int, np.ndarray]],
    shape: tuple[int, int],
    dtype: np.dtype,
    meta: ImageMeta,
    compression: str | None = "zlib",
    tile: int = OUTPUT_TILE,
    scratch: str | os.PathLike | None = None,
) -> int:
    """Stream ``rows`` ((y, pixels) of level 0, in order, heights multiples of ``tile``) into a
    tiled pyramidal OME-TIFF at ``path``; returns the number of levels.

    Level 0 is the main image, the others SubIFDs, each with the resolution tags scaled to it.
    Lower levels wait in zarr arrays under ``scratch`` (a folder; default a temporary one next
    to ``path``), so memory stays at one row per level.
    """
    import tifffile
    import zarr

    shapes = level_shapes(*shape, tile)
    res = meta.resolution if meta.resolution and meta.unit in ("inch", "cm") else None
    unit = "CENTIMETER" if meta.unit == "cm" else "INCH"
    options = dict(photometric="rgb", tile=(tile, tile), compression=compression, dtype=dtype)
    with tempfile.TemporaryDirectory(prefix=".pyramid-", dir=scratch or Path(path).parent) as tmp:
        store = [None] + [zarr.create_array(store=os.path.join(tmp, f"level{k}"), shape=(*s, 3), dtype=dtype,
                                            chunks=(tile, min(s[1], 8 * tile), 3), compressors=None)
                          for k, s in enumerate(shapes[1:], 1)]
        with tifffile.TiffWriter(path, bigtiff=True, ome=True) as tw:
            for k, s in enumerate(shapes):
                level_rows = rows if k == 0 else _zarr_rows(store[k], tile)
                below = store[k + 1] if k + 1 < len(shapes) else None
                extra = {"resolution": (res[0] / 2**k, res[1] / 2**k), "resolutionunit": unit} if res else {}
                if k == 0:
                    extra.update(subifds=len(shapes) - 1, metadata=_ome_metadata(meta))
                else:
                    extra.update(subfiletype=1, metadata=None)
                tw.write(_tiles(level_rows, tile, below), shape=(*s, 3), **options, **extra)
    return len(shapes)


# ---------------------------------------------------------------- a whole slide


@dataclass
class SlideReport:
    """What :func:`denoise_slide` did: size, levels, the share of blocks copied as background,
    wall time and throughput (megapixels of the slide per second)."""

    src: str
    dst: str
    width: int
    height: int
    levels: int
    blocks: int
    skipped: int
    seconds: float

    @property
    def skipped_share(self) -> float:
        return self.skipped / self.blocks if self.blocks else 0.0

    @property
    def megapixels_per_s(self) -> float:
        return self.width * self.height / 1e6 / self.seconds if self.seconds > 0 else float("nan")


def _progress_rows(results: Iterator[list[tuple[np.ndarray, bool]]], origins: list[list[tuple[int, int]]],
                   width: int, counts: list[int], bar: Any | None) -> Iterator[tuple[int, np.ndarray]]:
    """Assemble each row of blocks into one strip (y, pixels); count skipped blocks; move the bar."""
    import time

    start = time.perf_counter()
    done_px = 0
    for row, blocks in zip(origins, results):
        strip = np.concatenate([pixels for pixels, _ in blocks], axis=1)
        counts[0] += sum(1 for _, denoised in blocks if not denoised)
        del blocks  # the strip has the pixels now: one copy of the row in memory, not two
        done_px += strip.shape[0] * width
        if bar is not None:
            bar.update(math.ceil(strip.shape[0] / OUTPUT_TILE) * math.ceil(width / OUTPUT_TILE))
            bar.set_postfix_str(f"{done_px / 1e6 / max(time.perf_counter() - start, 1e-9):.2f} MP/s")  # redraws: a row takes seconds
        yield row[0][0], strip


def _progress_bar(slide: str | os.PathLike, height: int, width: int) -> Any:
    """A tqdm bar on stderr counting the slide's 256 px output tiles."""
    import sys

    from tqdm import tqdm

    total = math.ceil(height / OUTPUT_TILE) * math.ceil(width / OUTPUT_TILE)
    return tqdm(total=total, desc=Path(slide).name, unit="tile", leave=False, file=sys.stderr)


def denoise_slide(
    job: BlockJob,
    dst: str | os.PathLike,
    client: Any | None = None,
    overwrite: bool = False,
    compression: str | None = "zlib",
    progress: bool = True,
) -> SlideReport:
    """Denoise the slide ``job.slide`` block by block into a pyramidal OME-TIFF at ``dst``.

    Parameters
    ----------
    job : BlockJob
        The slide, the model file and the tiling; ``job.block_size`` must be a multiple of 256.
    dst : path
        Output file (``.ome.tif``); written to a temporary file beside it and renamed when
        complete, so a failure or an interrupt leaves no partial slide and whatever was there.
    client : distributed.Client, optional
        Where the blocks run (:mod:`ihclib.distributed`); ``None`` runs them in this process.
    overwrite, compression, progress
        Replace an existing ``dst``; TIFF compression ("zlib", "zstd", "jpeg", None); a tqdm
        bar on stderr (tiles of 256 px done of total, MP/s).

    Returns
    -------
    SlideReport
    """
    import time

    from .distributed import ordered_map
    from .images import atomic_write, check_output

    if job.block_size % OUTPUT_TILE:
        raise ValueError(f"block size must be a multiple of {OUTPUT_TILE}, got {job.block_size}")
    dst = check_output(dst, overwrite=overwrite)
    start = time.perf_counter()
    src = open_slide(job.slide, job.reader)  # here too: a bad slide is named before any task runs
    try:
        height, width, dtype, meta = src.height, src.width, src.dtype, src.meta
    finally:
        src.close()
    origins = job.blocks(height, width)
    counts = [0]
    bar = _progress_bar(job.slide, height, width) if progress else None
    levels = [0]
    try:
        rows = [[(job, y, x) for y, x in row] for row in origins]
        strips = _progress_rows(ordered_map(client, denoise_block, rows), origins, width, counts, bar)

        def write(tmp: str) -> None:
            levels[0] = write_pyramid(tmp, strips, (height, width), dtype, meta, compression)

        atomic_write(dst, write, suffix=".ome.tif.tmp")
    finally:
        if bar is not None:
            bar.close()
    blocks = sum(len(r) for r in origins)
    return SlideReport(job.slide, str(dst), width, height, levels[0], blocks, counts[0], time.perf_counter() - start)
