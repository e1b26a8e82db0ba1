"""Denoise an image of any size with a fully convolutional model: overlapping tiles, blended.

The image is covered by a grid of ``tile_size`` tiles that overlap by at least ``overlap``
pixels and always lie inside the image (the last row/column of tiles is spread evenly rather
than running past the edge), so no padding is needed except for images smaller than one tile,
which are reflect-padded up to it. Each tile's prediction is weighted by a separable window
that is 1 in the middle and, on sides that face another tile, is 0 over the outer quarter of
the overlap (where the tile's border zero-padding corrupts the prediction) and rises as a
raised cosine over the middle half. At the regular stride the windows of neighbouring tiles
sum to 1, and the result is the weighted sum divided by the sum of weights, so an identity
model gives the input back exactly and seams do not show. Sides on the image border are not
tapered (there is no neighbour to hand over to).

Tiles are cut and predicted ``batch_size`` at a time while walking over the grid, in three
named steps (:func:`_cut_batches`, :func:`_checked` prediction, :class:`_Blender`) that run in a
pipeline: the next batch is cut and the previous one blended in two threads while the model
runs. Memory is the input, the output, a (H, W) weight accumulator and a few batches, whatever
the image size; an integer image is converted to float32 one tile at a time, and with
``out_dtype`` (``ihclib denoise``) the tiles are blended straight into uint8 / uint16 pixels,
so neither a float32 image nor the weights are made (the same pixels as converting the float
result). A model with a hard gate (:func:`has_hard_gate`: ``crosschannel_unet``)
returns a tile with no value near 0 or 1 unchanged, so such tiles skip the model (exactly the
same result). Keras models are called through one ``tf.function`` with a fixed input signature
``(batch_size, tile_size, tile_size, 3)``: the last batch is padded to that size, so the model
is traced once per (model, tile size, batch size) and not per call. With ``precision="auto"``
(``ihclib denoise``), on CPUs with bf16 dot products the hard-gated model runs its convolution
trunk in bfloat16 (:func:`resolve_precision`; ``IHCLIB_PRECISION=float32`` turns it off); the
library's default stays float32.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import sys
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .images import PIXEL_TOPS, float_to_pixels, to_float
from .registry import CROSSCHANNEL_MODELS

DOWNSAMPLING = 32  # the paper's U-Net halves the resolution five times
DEFAULT_TILE = 256
DEFAULT_OVERLAP = 32
AUTO_PROGRESS_BATCHES = 4  # show a progress bar when there are more batches than this

Predictor = Callable[[np.ndarray], np.ndarray]


def check_tiling(tile_size: int, overlap: int, batch_size: int = 1, multiple: int = DOWNSAMPLING) -> None:
    """Raise ValueError with a clear message for an unusable tile size, overlap or batch size.

    ``multiple``: what the model's input sides must be a multiple of (:func:`input_multiple`
    reads it from the sidecar); 32 by default, the paper's U-Net.
    """
    if not isinstance(tile_size, (int, np.integer)) or tile_size <= 0 or tile_size % multiple:
        raise ValueError(
            f"tile size must be a positive multiple of {multiple} (what the model's "
            f"downsampling needs), got {tile_size}"
        )
    if not 0 <= overlap < tile_size:
        raise ValueError(f"overlap must be in [0, tile size {tile_size}), got {overlap}")
    if batch_size < 1:
        raise ValueError(f"batch size must be at least 1, got {batch_size}")


def tile_starts(length: int, tile_size: int, overlap: int) -> list[int]:
    """Start offsets of tiles covering ``length`` pixels, each inside it, overlapping >= overlap.

    ``length`` must be at least ``tile_size``. Offsets are spread evenly, so the extra overlap
    needed to end exactly on the edge is shared by all neighbours instead of one thin slab.
    """
    if length <= tile_size:
        return [0]
    n = math.ceil((length - tile_size) / (tile_size - overlap)) + 1
    return [int(s) for s in np.round(np.linspace(0, length - tile_size, n))]


def _ramp(overlap: int) -> np.ndarray:
    """Weights rising from 0 to 1 across ``overlap`` pixels, starting at a tile's edge.

    Zero over the outer quarter (predictions there see the tile border), raised cosine over
    the middle half, one over the inner quarter; ramp + reversed ramp = 1 pixel by pixel.
    """
    margin = overlap // 4
    rise = overlap - 2 * margin
    t = np.clip((np.arange(overlap) - margin + 0.5) / rise, 0.0, 1.0)
    return (0.5 - 0.5 * np.cos(np.pi * t)).astype(np.float32)


def _window_1d(tile_size: int, overlap: int, taper_start: bool, taper_end: bool) -> np.ndarray:
    w = np.ones(tile_size, np.float32)
    if overlap:
        ramp = _ramp(overlap)
        if taper_start:
            w[:overlap] = np.minimum(w[:overlap], ramp)
        if taper_end:
            w[-overlap:] = np.minimum(w[-overlap:], ramp[::-1])
    return w


def _is_keras_model(model: Any) -> bool:
    keras = sys.modules.get("keras")  # no keras imported -> cannot be a keras model
    return keras is not None and isinstance(model, keras.Model)


def model_tile_size(model: Any) -> int | None:
    """The spatial input size a Keras model was built for, if fixed and square."""
    shape = getattr(model, "input_shape", None) if _is_keras_model(model) else None
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return None


def resolve_tile_size(model: Any, tile_size: int | None = None) -> int:
    """``tile_size`` if given (checked against a model with a fixed input size), else the
    model's fixed input size, else 256."""
    fixed = model_tile_size(model)
    if tile_size is None:
        return fixed or DEFAULT_TILE
    if fixed and fixed != tile_size:
        raise ValueError(f"this model takes {fixed}x{fixed} tiles only, not tile size {tile_size}")
    return tile_size


# auto_tiling's choices, multiples of 32: the predictor is traced (and the fused layers compiled)
# once per shape, about 0.9 s for the bundled model, so a folder of same-sized images shares one
AUTO_TILES = tuple(range(256, 1089, 32))  # up to 1088: 1 MP tiles (about 1.6 GB peak RSS on 4096 px)
PIXELS_PER_BATCH = 8 * 256 * 256  # the batch of 8 tiles of 256 that make bench measures best


def auto_tiling(shape: tuple[int, int], overlap: int = DEFAULT_OVERLAP, multiple: int = DOWNSAMPLING,
                tiles: tuple[int, ...] = AUTO_TILES) -> tuple[int, int]:
    """(tile size, batch size) that cover an image of ``shape`` with the fewest pixels computed.

    Neighbouring tiles recompute their overlap, so on a 4096 px image 256 px tiles compute 1.41x
    the image, 544 px tiles 1.13x and 1056 px tiles 1.06x (:func:`tile_starts` spreads the tiles
    over the side; a tile larger than a side is mirrored out to it, which counts too). Ties go
    to the larger tile (fewer calls); the batch holds about :data:`PIXELS_PER_BATCH` pixels.
    """
    def computed(tile: int) -> int:
        rows, cols = (len(tile_starts(max(side, tile), tile, overlap)) for side in shape)
        return rows * cols * tile * tile

    usable = [t for t in tiles if t % multiple == 0 and t > overlap] or [DEFAULT_TILE]
    tile = min(usable, key=lambda t: (computed(t), -t))
    return tile, default_batch(tile)


def default_batch(tile_size: int) -> int:
    """Tiles per model call for ``tile_size``: about :data:`PIXELS_PER_BATCH` pixels (8 at 256)."""
    return max(1, round(PIXELS_PER_BATCH / tile_size**2))


def compiled_predictor(model: Any, tile_size: int, batch_size: int, jit_compile: bool = False) -> Predictor:
    """numpy (batch_size, tile, tile, 3) -> numpy prediction, through one traced tf.function.

    Cached per model, so repeated calls (many files) reuse the trace. The ``tf.function`` is
    available as the ``.function`` attribute of the returned callable (for tracing counts).
    ``jit_compile`` (XLA) is off by default (``make bench`` compares it: reports/benchmarks.json).
    """
    from .backends import predictor

    return predictor(model, tile_size, batch_size, "keras", jit_compile)


class _Plan:
    """The tiling of one (padded) image: tile starts, batch size and blending windows."""

    def __init__(self, shape: tuple[int, int], tile_size: int, overlap: int, batch_size: int):
        self.height, self.width = shape
        self.tile = tile_size
        rows, cols = tile_starts(self.height, tile_size, overlap), tile_starts(self.width, tile_size, overlap)
        self.starts = [(r, c) for r in rows for c in cols]
        self.batch_size = min(batch_size, len(self.starts))
        # a tile's 2-D window depends only on which of its sides face a neighbour
        self._win_1d = {(a, b): _window_1d(tile_size, overlap, a, b) for a in (False, True) for b in (False, True)}
        self._windows: dict[tuple, np.ndarray] = {}
        self._own_rows = _own_ranges(rows, self.height, tile_size, self._axis_window)
        self._own_cols = _own_ranges(cols, self.width, tile_size, self._axis_window)

    def _axis_window(self, start: int, length: int) -> np.ndarray:
        return self._win_1d[(start > 0, start + self.tile < length)]

    def window(self, r: int, c: int) -> np.ndarray:
        """The (tile, tile) blending weights of the tile at (r, c)."""
        sides = (r > 0, r + self.tile < self.height, c > 0, c + self.tile < self.width)
        w = self._windows.get(sides)
        if w is None:
            w = self._windows[sides] = np.outer(self._win_1d[sides[:2]], self._win_1d[sides[2:]])
        return w

    def own(self, r: int, c: int) -> tuple[slice, slice]:
        """The rectangle of the tile at (r, c), in tile coordinates, that only it weighs (with
        weight exactly 1): there the blend is the tile itself, bit for bit."""
        return self._own_rows[r], self._own_cols[c]

    def shared_runs(self) -> Iterator[tuple[slice, slice]]:
        """(rows, columns) rectangles that together cover, once each, every pixel outside all
        tiles' :meth:`own` rectangles: the pixels whose blend is a weighted mean."""
        own_y, own_x = (_owned_mask(ranges, n) for ranges, n in ((self._own_rows, self.height),
                                                                  (self._own_cols, self.width)))
        for ys in _runs(~own_y):
            yield ys, slice(0, self.width)
        for ys in _runs(own_y):
            for xs in _runs(~own_x):
                yield ys, xs


def _own_ranges(starts: list[int], length: int, tile: int, window: Any) -> dict[int, slice]:
    """Per tile start along one axis: the positions (in tile coordinates) where its window is 1
    and no other tile's is above 0, as a slice (empty where there is none or it is not one run)."""
    cover = np.zeros(length, np.int32)
    for s in starts:
        cover[s : s + tile] += window(s, length) > 0
    ranges = {}
    for s in starts:
        own = (window(s, length) == 1) & (cover[s : s + tile] == 1)
        idx = np.flatnonzero(own)
        whole = idx.size and idx[-1] - idx[0] + 1 == idx.size
        ranges[s] = slice(int(idx[0]), int(idx[-1]) + 1) if whole else slice(0, 0)
    return ranges


def _owned_mask(ranges: dict[int, slice], length: int) -> np.ndarray:
    mask = np.zeros(length, bool)
    for s, own in ranges.items():
        mask[s + own.start : s + own.stop] = True
    return mask


def _runs(mask: np.ndarray) -> Iterator[slice]:
    """The runs of True in a 1-D boolean array, as slices."""
    edges = np.flatnonzero(np.diff(np.concatenate(([False], mask, [False])).astype(np.int8)))
    for a, b in zip(edges[::2], edges[1::2]):
        yield slice(int(a), int(b))


def _prepare_image(image: np.ndarray, tile_size: int) -> np.ndarray:
    """(H, W, 3) uint8 / uint16 / float32, mirrored out to one tile (as float32) where the image
    is smaller than that. Integer pixels stay integers: tiles are converted to float32 one at a
    time as they are cut (:func:`_tile_float`), so no float copy of the image is made."""
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.dtype not in (np.float32, np.uint8, np.uint16):
        image = to_float(image)
    height, width = image.shape[:2]
    if height < tile_size or width < tile_size:
        # smaller than one tile: mirror it out to a tile (a copy, but of a small image)
        pad = ((0, max(0, tile_size - height)), (0, max(0, tile_size - width)), (0, 0))
        image = np.pad(_tile_float(image), pad, mode="reflect" if min(height, width) > 1 else "edge")
    return image


def _tile_float(tile: np.ndarray, out: np.ndarray | None = None) -> np.ndarray:
    """A tile of :func:`_prepare_image`'s image as float32 in [0, 1]: integers through
    :func:`ihclib.images.to_float` (the same values, written into ``out`` where given), float32
    as it is (not clipped)."""
    if tile.dtype == np.float32:
        if out is None:
            return tile
        out[...] = tile
        return out
    if out is None:
        return to_float(tile)
    top = np.float32(PIXEL_TOPS[tile.dtype])
    return np.divide(tile, top, out=out, dtype=np.float32)  # to_float's one pass, into out


def has_hard_gate(model: Any) -> bool:
    """Whether ``model`` returns every value that is not flagged as a possible impulse unchanged.

    True for ``crosschannel_unet`` and ``crosschannel_s2d_unet`` (see
    :func:`ihclib.model.build_crosschannel_unet`): its output
    is input + flag * sigmoid(.) * (fill - input), with flag = 0 unless a value is within 0.001
    of 0 or 1, so on a tile without such values it is the input, bit for bit.
    """
    if not _is_keras_model(model) or getattr(model, "name", "") not in CROSSCHANNEL_MODELS:
        return False
    names = {layer.name for layer in model.layers}
    return {"impulse_hint", "impulse_mask", "switch", "restored"} <= names


# a margin inside the gate's threshold (0.999 on x and on 1 - x): no rounding can flag these
GATE_LOW, GATE_HIGH = 0.002, 0.998


def _unflagged(tile: np.ndarray) -> bool:
    """True when no value of ``tile`` can be flagged by a hard-gated model's impulse test."""
    lo, hi = tile.min(), tile.max()
    if tile.dtype != np.float32:  # the test on the float32 values the model would get
        lo, hi = to_float(np.array([lo, hi], tile.dtype))
    return bool(lo > GATE_LOW and hi < GATE_HIGH)


Entry = tuple[int, int, int]  # (row, column, index in the batch or -1: the tile is its own output)


def _cut_batches(image: np.ndarray, plan: _Plan, skip_unflagged: bool) -> Iterator[tuple[list[Entry], np.ndarray | None]]:
    """Yield (entries, batch) in the plan's order: each batch of fixed shape (one trace) with the
    entries of its tiles and, in between, of tiles the model would return unchanged
    (``skip_unflagged``), so that blending adds tiles in the same order either way.

    Two batch buffers take turns: a batch is written again only after the next one was asked
    for, by when the model has returned on it (the consumer predicts in order), so the cutting
    one batch ahead (:func:`_run_tiles`) never touches the batch being predicted. Fresh buffers
    for each batch cost their pages every time (16 x 13 MB for a 4096 px image), slow on the
    virtual machines this was measured on (issue 13)."""
    t, n = plan.tile, plan.batch_size
    buffers = [np.zeros((n, t, t, 3), np.float32)]
    entries: list[Entry] = []
    batch, filled, turn = buffers[0], 0, 0
    for r, c in plan.starts:
        tile = image[r : r + t, c : c + t]
        if skip_unflagged and _unflagged(tile):
            entries.append((r, c, -1))
            continue
        _tile_float(tile, out=batch[filled])
        entries.append((r, c, filled))
        filled += 1
        if filled == n:
            yield entries, batch
            entries, filled, turn = [], 0, 1 - turn
            if len(buffers) == 1:
                buffers.append(np.zeros_like(batch))
            batch = buffers[turn]
    if entries:
        if filled:
            batch[filled:] = 0  # the rest of a last batch: padding, zero as in a fresh buffer
        yield entries, batch if filled else None


def _checked(predict: Predictor, batch: np.ndarray, n: int) -> np.ndarray:
    """``predict(batch)``, refusing a wrong shape and NaN/Inf in the first ``n`` (real) tiles."""
    pred = np.asarray(predict(batch))
    if np.may_share_memory(pred, batch):  # e.g. an identity callable: the batch buffer is reused
        pred = pred.copy()
    if pred.shape != batch.shape:
        raise ValueError(f"model returned shape {pred.shape} for input {batch.shape}; "
                         "denoising needs a fully convolutional RGB -> RGB model")
    if not np.isfinite(pred[:n]).all():
        # NaN/Inf would be clipped to black when written, and exit 0: a broken model
        raise ValueError("model output contains NaN or Inf (a broken or diverged model)")
    return pred


def _tile_parts(plan: _Plan, entries: list[Entry], tiles: np.ndarray | None,
                image: np.ndarray) -> Iterator[tuple[int, int, np.ndarray, np.ndarray, tuple[slice, slice], list]]:
    """Per entry, what a blender adds: (row, column, the tile as float32, its window, its own
    rectangle (:meth:`_Plan.own`), the non-empty bands of the frame around it: the top and
    bottom bands, then the sides between them), all in tile coordinates."""
    t = plan.tile
    for r, c, i in entries:
        tile = _tile_float(image[r : r + t, c : c + t]) if i < 0 else tiles[i]
        ys, xs = plan.own(r, c)
        frame = [(by, bx) for by, bx in ((slice(0, ys.start), slice(0, t)), (slice(ys.stop, t), slice(0, t)),
                                         (ys, slice(0, xs.start)), (ys, slice(xs.stop, t)))
                 if by.stop > by.start and bx.stop > bx.start]
        yield r, c, tile, plan.window(r, c), (ys, xs), frame


class _Blender:
    """Weighted sum of tile predictions and of their windows; :meth:`result` divides.

    Where a tile is the only one with weight (its :meth:`_Plan.own` rectangle, most of it) the
    weighted sum is the tile itself: it is copied there, and only the overlaps are summed,
    weighed and divided. The result is the same bits as summing and dividing everywhere (x * 1
    + 0 and x / 1 are exact), at a third of the passes over memory, which on 2 cores are taken
    from the model running beside this thread.
    """

    def __init__(self, plan: _Plan):
        self.plan = plan
        self.out = np.zeros((plan.height, plan.width, 3), np.float32)
        self.weight = np.zeros((plan.height, plan.width), np.float32)

    def add(self, entries: list[Entry], tiles: np.ndarray | None, image: np.ndarray) -> None:
        """Add predicted ``tiles`` (index >= 0) and unchanged tiles of ``image`` (index -1)."""
        for r, c, tile, w, (ys, xs), frame in _tile_parts(self.plan, entries, tiles, image):
            self.out[r + ys.start : r + ys.stop, c + xs.start : c + xs.stop] = tile[ys, xs]
            for by, bx in frame:
                out = self.out[r + by.start : r + by.stop, c + bx.start : c + bx.stop]
                out += tile[by, bx] * w[by, bx, None]
                self.weight[r + by.start : r + by.stop, c + bx.start : c + bx.stop] += w[by, bx]

    def result(self, height: int, width: int) -> np.ndarray:
        for ys, xs in self.plan.shared_runs():  # in place: no second output-sized array
            self.out[ys, xs] /= self.weight[ys, xs, None]
        if (self.plan.height, self.plan.width) != (height, width):
            return np.ascontiguousarray(self.out[:height, :width])
        return self.out


class _PixelBlender:
    """:class:`_Blender` written straight into uint8 / uint16 pixels: :meth:`result` is
    ``from_float(_Blender(...).result(...), dtype)``, bit for bit, without the float32 image
    and weights (16 bytes a pixel; an image's worth of fresh pages, slow on the virtual
    machines this was measured on, issue 13).

    A tile's own rectangle is converted as it arrives (:func:`ihclib.images.float_to_pixels`).
    The other pixels, the overlaps, each lie in one of :meth:`_Plan.shared_runs`' rectangles,
    which keep float32 sums and weights of their own: the same additions in the same order as
    :class:`_Blender`'s (which also adds zero-weighted products onto other tiles' own
    rectangles; x + 0 is x there, so those are left out), then the same division."""

    def __init__(self, plan: _Plan, dtype: np.dtype):
        self.plan = plan
        self.out = np.empty((plan.height, plan.width, 3), dtype)
        self.runs = [(ys, xs, np.zeros((ys.stop - ys.start, xs.stop - xs.start, 3), np.float32),
                      np.zeros((ys.stop - ys.start, xs.stop - xs.start), np.float32))
                     for ys, xs in plan.shared_runs()]

    def add(self, entries: list[Entry], tiles: np.ndarray | None, image: np.ndarray) -> None:
        """Add predicted ``tiles`` (index >= 0) and unchanged tiles of ``image`` (index -1)."""
        for r, c, tile, w, (ys, xs), frame in _tile_parts(self.plan, entries, tiles, image):
            float_to_pixels(tile[ys, xs], self.out[r + ys.start : r + ys.stop, c + xs.start : c + xs.stop])
            for by, bx in frame:
                for ry, rx, total, weight in self.runs:  # the parts of the frame in each overlap
                    y0, y1 = max(r + by.start, ry.start), min(r + by.stop, ry.stop)
                    x0, x1 = max(c + bx.start, rx.start), min(c + bx.stop, rx.stop)
                    if y0 < y1 and x0 < x1:
                        ty, tx = slice(y0 - r, y1 - r), slice(x0 - c, x1 - c)  # in the tile
                        oy, ox = slice(y0 - ry.start, y1 - ry.start), slice(x0 - rx.start, x1 - rx.start)  # in the run
                        total[oy, ox] += tile[ty, tx] * w[ty, tx, None]
                        weight[oy, ox] += w[ty, tx]

    def result(self, height: int, width: int) -> np.ndarray:
        for ys, xs, total, weight in self.runs:
            total /= weight[..., None]
            float_to_pixels(total, self.out[ys, xs])
        if (self.plan.height, self.plan.width) != (height, width):
            return np.ascontiguousarray(self.out[:height, :width])
        return self.out


def _run_tiles(image: np.ndarray, plan: _Plan, predict: Predictor, skip_unflagged: bool,
               bar: Any, threads: bool, out_dtype: np.dtype | None = None) -> _Blender | _PixelBlender:
    """Cut, predict and blend every tile. With ``threads``, cutting runs one batch ahead and
    blending one batch behind, each in its own thread, beside the model (TensorFlow and numpy's
    copies release the GIL); blending stays in one thread and in order, as tiles overlap."""
    blender = _Blender(plan) if out_dtype is None else _PixelBlender(plan, out_dtype)

    def blend(entries: list[Entry], tiles: np.ndarray | None) -> None:
        blender.add(entries, tiles, image)
        if bar is not None:
            bar.update(len(entries))

    def predicted(items: Iterator) -> Iterator[tuple[list[Entry], np.ndarray | None]]:
        for entries, batch in items:
            n = sum(i >= 0 for _, _, i in entries)
            yield entries, None if batch is None else _checked(predict, batch, n)

    if not threads:
        for entries, tiles in predicted(_cut_batches(image, plan, skip_unflagged)):
            blend(entries, tiles)
        return blender
    with ThreadPoolExecutor(1, "ihclib-cut") as cutter, ThreadPoolExecutor(1, "ihclib-blend") as blender_thread:
        last: Future | None = None
        for entries, tiles in predicted(_prefetched(cutter, _cut_batches(image, plan, skip_unflagged))):
            if last is not None:
                last.result()  # at most one batch waiting to be blended: memory stays O(batch)
            last = blender_thread.submit(blend, entries, tiles)
        if last is not None:
            last.result()
    return blender


def _prefetched(pool: ThreadPoolExecutor, items: Iterator) -> Iterator:
    """``items``, each produced in ``pool`` while the previous one is being consumed."""
    sentinel = object()
    future = pool.submit(next, items, sentinel)
    while True:
        item = future.result()
        if item is sentinel:
            return
        future = pool.submit(next, items, sentinel)
        yield item


def _predictor_for(model: Any, tile_size: int, batch_size: int, backend: str | None, jit_compile: bool,
                   precision: str | None) -> Predictor:
    """The compiled predictor of a Keras model (in the precision :func:`resolve_precision`
    picks), or the callable itself."""
    if not _is_keras_model(model):
        if precision not in (None, "auto", "float32"):
            raise ValueError(f"precision {precision!r} needs a Keras model")
        return model
    from .backends import predictor, resolve_backend

    backend = resolve_backend(backend, model)
    bfloat16 = resolve_precision(model, precision, backend) == "bfloat16"
    if backend != "keras":  # other runtimes convert the float32 graph and pick the precision themselves
        return predictor(model, tile_size, batch_size, backend, precision="bfloat16" if bfloat16 else "float32")
    # the fused layers: for the tool ("auto") and with bf16 (both measured by make bench), on
    # Keras only (other runtimes convert the model's graph, and the fused layers call XLA)
    fused = (bfloat16 or precision == "auto") and has_fast_variants(model)
    if bfloat16 or fused:  # else the model as it is: a copy would change nothing (e.g. paper_unet)
        # XLA over the whole model (jit_compile) cannot call the compiled prefix's NumPy function
        model = _cached_inference_copy(model, bfloat16, fused, compiled_prefix=not jit_compile)
    return predictor(model, tile_size, batch_size, backend, jit_compile)


def _progress_bar(plan: _Plan, progress: bool | None) -> Any:
    """A tqdm bar over the tiles on stderr, or None (``progress`` None: only for many batches)."""
    n_batches = math.ceil(len(plan.starts) / plan.batch_size)
    if not (n_batches > AUTO_PROGRESS_BATCHES if progress is None else progress):
        return None
    from tqdm import tqdm  # plain text bar: no widgets in executed notebooks

    return tqdm(total=len(plan.starts), desc="denoise", unit="tile", file=sys.stderr, leave=False)


def prepare(model: Any, shape: tuple[int, int], tile_size: int | None = None, overlap: int = DEFAULT_OVERLAP,
            batch_size: int = 8, jit_compile: bool = False, backend: str | None = None,
            multiple: int = DOWNSAMPLING, precision: str | None = None) -> None:
    """Make and trace the predictor that :func:`denoise` with the same arguments will use for
    an image of ``shape`` (height, width), before the image is there.

    Tracing a Keras model is Python work (about 0.35 s for the bundled model on 1056 px tiles);
    ``ihclib denoise`` does it while a PNG decodes in another thread, since libspng releases
    the GIL (:func:`ihclib.images.load_image`)."""
    tile_size = resolve_tile_size(model, tile_size)
    check_tiling(tile_size, overlap, batch_size, multiple)
    height, width = shape
    plan = _Plan((max(height, tile_size), max(width, tile_size)), tile_size, overlap, batch_size)  # as _prepare_image pads
    predict = _predictor_for(model, tile_size, plan.batch_size, backend, jit_compile, precision)
    function = getattr(predict, "function", None)
    if function is not None:
        function.get_concrete_function()


def denoise(model: Any, image: np.ndarray, tile_size: int | None = None, overlap: int = DEFAULT_OVERLAP,
            batch_size: int = 8, progress: bool | None = None, jit_compile: bool = False,
            backend: str | None = None, multiple: int = DOWNSAMPLING, skip_unflagged: bool | None = None,
            threads: bool = True, precision: str | None = None, out_dtype: Any = None) -> np.ndarray:
    """Denoise an RGB image of any size; returns float32 (H, W, 3), or pixels of ``out_dtype``.

    Parameters
    ----------
    model : keras.Model or callable
        A Keras model (fully convolutional, 3 channels in and out), called through a compiled
        ``tf.function``, or any callable mapping a float32 batch (n, tile, tile, 3) to a batch of
        the same shape (every call gets exactly ``min(batch_size, number of tiles)`` tiles).
    image : ndarray
        (H, W, 3) float in [0, 1], or uint8/uint16.
    tile_size, multiple : int
        Tile side, a multiple of ``multiple`` (:func:`input_multiple` of the sidecar; 32 by
        default); tile default: the model's fixed input size, else 256.
    overlap : int
        Minimum overlap of neighbouring tiles; its outer quarter is discarded, so
        ``overlap >= 4 * (receptive-field radius + 1)`` gives the whole-image result.
    batch_size : int
        Tiles per model call (the last batch is padded to it).
    progress : bool, optional
        tqdm bar on stderr; None: only when there are more than a few batches.
    jit_compile, backend
        XLA for the Keras path; the runtime (None: ``$IHCLIB_BACKEND``, else "keras"; "auto",
        what ``ihclib denoise`` uses: Keras for fused layers, else OpenVINO:
        :func:`ihclib.backends.resolve_backend`).
    skip_unflagged : bool, optional
        Return tiles with no value within 0.002 of 0 or 1 unchanged without calling the model.
        None: when :func:`has_hard_gate` says the model does exactly that itself.
    threads : bool
        Cut and blend tiles in threads beside the model (same result either way).
    precision : str, optional
        "float32", "bfloat16" (:func:`bfloat16_copy`) or "auto" (bf16 where checked, as
        ``ihclib denoise`` runs); None: ``$IHCLIB_PRECISION``, else float32
        (:func:`resolve_precision`).
    out_dtype : optional
        uint8 or uint16: return ``from_float(result, out_dtype)`` (:func:`ihclib.images.from_float`),
        the same pixels, converted tile by tile without a float32 copy of the image (what
        ``ihclib denoise`` writes). An integer ``image`` is likewise converted to float one tile at
        a time.

    Returns
    -------
    ndarray
        float32 (H, W, 3), not clipped, or (H, W, 3) ``out_dtype``; a model output with NaN or Inf
        raises ValueError.
    """
    tile_size = resolve_tile_size(model, tile_size)
    check_tiling(tile_size, overlap, batch_size, multiple)
    if out_dtype is not None and np.dtype(out_dtype) not in PIXEL_TOPS:
        raise ValueError(f"out_dtype must be uint8 or uint16, not {np.dtype(out_dtype)}")
    height, width = np.shape(image)[:2]
    image = _prepare_image(image, tile_size)
    plan = _Plan(image.shape[:2], tile_size, overlap, batch_size)
    skip = has_hard_gate(model) if skip_unflagged is None else skip_unflagged
    predict = _predictor_for(model, tile_size, plan.batch_size, backend, jit_compile, precision)
    bar = _progress_bar(plan, progress)
    try:
        blender = _run_tiles(image, plan, predict, skip, bar, threads,
                             None if out_dtype is None else np.dtype(out_dtype))
    finally:
        if bar is not None:
            bar.close()
    return blender.result(height, width)


def inference_copy(model: Any, bfloat16: bool = False, fused: bool = True, compiled_prefix: bool = True) -> Any:
    """A copy of a Keras model for ``ihclib denoise``'s fast path (weights shared by value).

    ``fused``: the classical layers (the fills, the local contrast) are replaced by their fused
    variants (:mod:`ihclib.fast_layers`: the same functions up to float32 rounding, about three
    times faster); for ``crosschannel_unet`` everything before and after its convolution trunk
    becomes two fused layers (:func:`ihclib.fast_layers.fuse_crosschannel`), and each stride-2
    transposed convolution one convolution with its bias and LeakyReLU fused and a depth-to-space
    (:func:`ihclib.fast_trunk.rewrite_trunk`). ``bfloat16``: convolutions larger than 1x1, their activations and
    concatenations get Keras' ``mixed_bfloat16`` policy, so oneDNN can run them with bf16 dot
    products where the CPU has them (AVX512_BF16, AMX); 1x1 heads (but the fused copy's merged
    heads, which read the bf16 trunk), the custom layers (impulse flags, fills, the gate) and the
    output layer stay float32, so a hard gate stays exact.
    ``make bench`` measures the bf16 copy's speed and its PSNR change on held-out images
    (reports/benchmarks.json); :func:`denoise` uses it where :func:`resolve_precision` says so.
    The study never uses either (it calls :func:`denoise` with float32, the reference layers).
    """
    import keras

    from .fast_layers import FAST_VARIANTS, can_fuse_whole, fuse_crosschannel
    from .fast_trunk import rewrite_trunk

    outputs = {id(t) for t in model.outputs}
    from .model import CONTEXT_LAYERS, SpaceToDepth

    # SpaceToDepth: crosschannel_s2d_unet's features to half resolution, in the trunk's dtype
    trunk = (keras.layers.Conv2D, keras.layers.Conv2DTranspose, keras.layers.LeakyReLU, keras.layers.Concatenate,
             SpaceToDepth)
    # (not for a model fused whole: its classical layers are dropped by fuse_crosschannel below,
    # and the fast variants' calls on Keras' symbolic inputs trace XLA functions: 19 ms of the
    # bundled model's 92 ms copy, 2-core Zen 5)
    variants = FAST_VARIANTS if fused and not can_fuse_whole(model) else {}

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        one_by_one = getattr(layer, "kernel_size", None) == (1, 1)
        # crosschannel_s4d_cnn's residual scales and sums too (its other Add layers are its classical part)
        in_trunk = isinstance(layer, trunk) or (isinstance(layer, (keras.layers.Add, keras.layers.Rescaling))
                                                and layer.name.startswith("residual_"))
        # crosschannel_s4d_unet's way back from quarter resolution (a 1x1 convolution, not a head)
        context = layer.name in CONTEXT_LAYERS
        if bfloat16 and (in_trunk and not one_by_one or context) and id(layer.output) not in outputs:
            config["dtype"] = "mixed_bfloat16"
        for key in ("kernel_initializer", "bias_initializer"):  # the weights are set below: no random draws
            if key in config:
                config[key] = "zeros"
        if fused and _residual_scale(layer) is not None:  # folded into the convolution before it, below
            return keras.layers.Identity(name=layer.name, dtype=config["dtype"])
        return variants.get(type(layer), type(layer)).from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    if fused:
        _fold_residual_scales(model, copy)
    if fused and can_fuse_whole(copy):  # crosschannel_unet: prefix and head as two fused layers
        copy = fuse_crosschannel(copy, compiled_prefix)
    if fused:  # the transposed convolutions as convolutions with their bias and activation fused
        copy = rewrite_trunk(copy, compiled=compiled_prefix)
    return copy


def _residual_scale(layer: Any) -> float | None:
    """The scale of a quarter-resolution design's residual branch (``residual_<i>_scale``, a
    Rescaling without offset after the branch's last LeakyReLU), else None."""
    import keras

    if not (isinstance(layer, keras.layers.Rescaling) and layer.name.startswith("residual_")):
        return None
    scale, offset = layer.get_config()["scale"], layer.get_config()["offset"]
    return float(scale) if offset == 0 and isinstance(scale, (int, float)) and scale > 0 else None


def _fold_residual_scales(model: Any, copy: Any) -> None:
    """Each residual scale s of ``model`` (:func:`_residual_scale`; an Identity in ``copy``)
    multiplied into the kernel and bias of the convolution whose LeakyReLU it follows:
    LeakyReLU(s * z) = s * LeakyReLU(z) for s > 0, so the copy computes the same function (up
    to rounding) without a multiplication and an addition of zero over the branch's output per
    block (about 5 of the 200 ms of crosschannel_s4d_unet on a 1056 px tile, issue 13)."""
    import keras

    for layer in model.layers:
        scale = _residual_scale(layer)
        if scale is None:
            continue
        activation = copy.get_layer(layer.name).input._keras_history.operation
        conv = activation.input._keras_history.operation if isinstance(activation, keras.layers.LeakyReLU) else None
        if not isinstance(conv, keras.layers.Conv2D):
            raise ValueError(f"{layer.name}: expected Conv2D -> LeakyReLU before it, got {type(activation).__name__}")
        conv.set_weights([w * np.float32(scale) for w in conv.get_weights()])


def bfloat16_copy(model: Any) -> Any:
    """:func:`inference_copy` with a bfloat16 trunk and the fused classical layers."""
    return inference_copy(model, bfloat16=True)


PRECISION_ENV = "IHCLIB_PRECISION"
PRECISIONS = ("auto", "float32", "bfloat16")


def cpu_has_bf16(cpuinfo: str | None = None) -> bool:
    """Whether the CPU has bf16 dot products (AVX512_BF16 or AMX-BF16), from /proc/cpuinfo."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:  # not Linux: assume not
            return False
    flags = next((line.split(":", 1)[1].split() for line in cpuinfo.splitlines() if line.startswith("flags")), [])
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(model: Any, precision: str | None = None, backend: str = "keras") -> str:
    """"float32" or "bfloat16" for ``precision``.

    None (the library's default): ``$IHCLIB_PRECISION``, else float32, so the study's numbers
    stay bit for bit. "auto" (what ``ihclib denoise`` asks for): ``$IHCLIB_PRECISION`` if set,
    else bfloat16 for a hard-gated Keras model (:func:`has_hard_gate`, the bundled architecture,
    whose held-out PSNR ``make bench`` checks against float32) on the Keras backend of a CPU
    with bf16 dot products and no GPU (not measured there), else float32.
    """
    env = os.environ.get(PRECISION_ENV)
    if precision is None or precision == "auto":
        precision = env or ("float32" if precision is None else "auto")
    precision = precision.strip().lower()
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose from {', '.join(PRECISIONS)}")
    if precision == "auto":
        use = backend == "keras" and has_hard_gate(model) and cpu_has_bf16() and not _gpu_visible()
        return "bfloat16" if use else "float32"
    return precision


def _gpu_visible() -> bool:
    """Whether TensorFlow (imported by then: the model is a Keras model) sees a GPU."""
    import tensorflow as tf

    return bool(tf.config.list_physical_devices("GPU"))


def has_fast_variants(model: Any) -> bool:
    """Whether :func:`inference_copy` would swap any of ``model``'s layers for a fused one."""
    from .fast_layers import FAST_VARIANTS

    return any(type(layer) in FAST_VARIANTS for layer in model.layers)


def _cached_inference_copy(model: Any, bfloat16: bool, fused: bool = True, compiled_prefix: bool = True) -> Any:
    """:func:`inference_copy` of ``model``, made once per model object, setting and weights: the
    copy holds the weights it was made with, so it is made again once the model's have changed
    (further training, ``set_weights``), instead of denoising with the old ones."""
    from .backends import cached_for_weights

    return cached_for_weights(model, ("inference_copy", bfloat16, fused, compiled_prefix),
                              lambda: inference_copy(model, bfloat16, fused, compiled_prefix))


# --- models: loading, checking, the bundled default ----------------------------------------

MODELS_ENV_VAR = "IHCLIB_MODELS_DIR"
DEFAULT_MODEL_FILE = "default.keras"


def load_model(path: str | Path) -> tuple[Any, dict]:
    """A ``.keras`` denoiser (safe mode) and its JSON sidecar, checked for use by :func:`denoise`.

    Errors are one line naming the file (FileNotFoundError / ValueError): not a Keras file,
    a sidecar that is not JSON, a model that does not map RGB to RGB.
    """
    from .model import load_model as load_model_file  # imports keras: only when a model is needed

    model, sidecar = load_model_file(path)
    check_denoiser(model, path)
    return model, sidecar


def check_denoiser(model: Any, path: str | Path = "model") -> None:
    """ValueError naming ``path`` unless ``model`` takes and returns 3 channels (RGB).

    Checked on loading: a model for 1 or 4 channels would otherwise fail deep inside
    TensorFlow on the first tile, with a page of graph dump instead of a reason.
    """
    if not _is_keras_model(model):
        return
    try:
        inputs, outputs = model.inputs, model.outputs
    except (AttributeError, ValueError):  # a subclassed model that was never built
        return
    if len(inputs) != 1 or len(outputs) != 1:
        raise ValueError(f"{path}: model has {len(inputs)} inputs and {len(outputs)} outputs; "
                         "denoising needs one RGB image in and one out")
    shape_in, shape_out = tuple(inputs[0].shape), tuple(outputs[0].shape)
    if len(shape_in) != 4 or shape_in[-1] != 3:
        raise ValueError(f"{path}: model takes input of shape {shape_in[1:]}; denoising needs "
                         "RGB images (height, width, 3)")
    if len(shape_out) != 4 or shape_out[-1] != 3:
        raise ValueError(f"{path}: model returns shape {shape_out[1:]}; denoising needs RGB out "
                         "(height, width, 3)")


def input_multiple(sidecar: dict | None) -> int:
    """The number the model's input height and width must be a multiple of, from its sidecar
    (``input_multiple``, written by ``ihclib train``); 32 (the paper's U-Net) when unknown."""
    value = (sidecar or {}).get("input_multiple")
    return int(value) if isinstance(value, int) and value >= 1 else DOWNSAMPLING


def user_models_dir() -> Path:
    """Where ``ihclib train --bundle`` puts the default model: ``$IHCLIB_MODELS_DIR``, else the
    user's data folder (``~/.local/share/ihclib/models`` on Linux, ``~/Library/Application
    Support/ihclib/models`` on macOS, ``%LOCALAPPDATA%\\ihclib\\models`` on Windows).

    Not the package folder, which after ``pip install`` is site-packages: often read-only,
    shared between users and replaced by the next upgrade.
    """
    env = os.environ.get(MODELS_ENV_VAR)
    if env:
        return Path(env).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        base = Path(os.environ.get("LOCALAPPDATA") or home / "AppData" / "Local")
    elif sys.platform == "darwin":
        base = home / "Library" / "Application Support"
    else:
        base = Path(os.environ.get("XDG_DATA_HOME") or home / ".local" / "share")
    return base / "ihclib" / "models"


def packaged_model_path() -> Path:
    """The default model shipped inside the package (read-only after installation)."""
    return Path(str(importlib.resources.files("ihclib") / "models" / DEFAULT_MODEL_FILE))


def bundled_model_path() -> Path:
    """The default model ``ihclib denoise`` uses: the user's bundled one if there is one
    (:func:`user_models_dir`), else the one shipped in the package."""
    user = user_models_dir() / DEFAULT_MODEL_FILE
    return user if user.is_file() else packaged_model_path()


def load_default_model() -> tuple[Any, dict]:
    """The default model and its sidecar; a clear error if there is none."""
    path = bundled_model_path()
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: bundled model missing; create it with `ihclib train --bundle` "
            f"(it goes to {user_models_dir()}) or pass --model PATH.keras"
        )
    return load_model(path)
