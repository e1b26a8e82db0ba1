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

Tiles are cut and predicted ``batch_size`` at a time while walking over the grid; memory is
the input, the output, a (H, W) weight accumulator and one batch, whatever the image size.
Keras models are called through one ``tf.function`` with a fixed input signature
``(batch_size, tile_size, tile_size, 3)``: the last batch is padded to that size, so the model
is traced once per (model, tile size, batch size) and not per call.
"""

from __future__ import annotations

import importlib.resources
import math
import os
import sys
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from .images import to_float

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


def _model_tile_size(model: Any) -> int | None:
    """The spatial input size a Keras model was built for, if fixed and square."""
    shape = getattr(model, "input_shape", None) if _is_keras_model(model) else None
    if isinstance(shape, tuple) and len(shape) == 4 and shape[1] and shape[1] == shape[2]:
        return int(shape[1])
    return None


def resolve_tile_size(model: Any, tile_size: int | None = None) -> int:
    """``tile_size`` if given (checked against a model with a fixed input size), else the
    model's fixed input size, else 256."""
    fixed = _model_tile_size(model)
    if tile_size is None:
        return fixed or DEFAULT_TILE
    if fixed and fixed != tile_size:
        raise ValueError(f"this model takes {fixed}x{fixed} tiles only, not tile size {tile_size}")
    return tile_size


def compiled_predictor(model: Any, tile_size: int, batch_size: int, jit_compile: bool = False) -> Predictor:
    """numpy (batch_size, tile, tile, 3) -> numpy prediction, through one traced tf.function.

    Cached per model, so repeated calls (many files) reuse the trace. The ``tf.function`` is
    available as the ``.function`` attribute of the returned callable (for tracing counts).
    ``jit_compile`` (XLA) is off by default: on CPU it was slower (benchmarks/bench.py).
    """
    from .backends import predictor

    return predictor(model, tile_size, batch_size, "keras", jit_compile)


def _batches(starts: list[tuple[int, int]], batch_size: int) -> Iterator[list[tuple[int, int]]]:
    for i in range(0, len(starts), batch_size):
        yield starts[i : i + batch_size]


def denoise(
    model: Any,
    image: np.ndarray,
    tile_size: int | None = None,
    overlap: int = DEFAULT_OVERLAP,
    batch_size: int = 8,
    progress: bool | None = None,
    jit_compile: bool = False,
    backend: str | None = None,
    multiple: int = DOWNSAMPLING,
) -> np.ndarray:
    """Denoise an RGB image of any size; returns float32 (H, W, 3) like the input.

    ``model``: a Keras model (fully convolutional, 3 channels in and out), called through a
    compiled ``tf.function``, or any callable mapping a float32 batch (n, tile, tile, 3) to a
    batch of the same shape (every call gets exactly ``min(batch_size, number of tiles)``
    tiles; the last batch is padded). ``image``: (H, W, 3) float in [0, 1] or uint8/uint16.
    ``tile_size``: multiple of 32; default the model's fixed input size, else 256.
    ``overlap``: minimum overlap between neighbouring tiles; the outer quarter of it is
    discarded, so ``overlap >= 4 * (receptive-field radius + 1)`` gives the same result as
    predicting the whole image at once (for the paper's U-Net, whose receptive field exceeds a
    tile, it is what hides the seams).
    ``progress``: tqdm bar on stderr; ``None`` = only when there are more than a few batches.
    ``backend`` (Keras models only): "keras", "openvino", "onnxruntime" or "auto" (the fastest
    installed); ``None`` = the ``IHCLIB_BACKEND`` environment variable, else "keras". See
    :mod:`ihclib.backends`; the converted model is cached on the model object.
    ``multiple``: what tile sides must be a multiple of for this model (``input_multiple`` of
    its sidecar, see :func:`input_multiple`; default 32, which every registry model accepts).
    The output is not clipped (a model may overshoot [0, 1]; writing an image clips). A model
    output with NaN or Inf is refused (ValueError) rather than written as a black image.
    """
    tile_size = resolve_tile_size(model, tile_size)
    check_tiling(tile_size, overlap, batch_size, multiple)
    image = np.asarray(image)
    if image.ndim != 3 or image.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {image.shape}")
    if image.dtype != np.float32:
        image = to_float(image)
    height, width = image.shape[:2]
    if height < tile_size or width < tile_size:
        # smaller than one tile: mirror it out to a tile (a copy, but of a small image)
        pad = ((0, max(0, tile_size - height)), (0, max(0, tile_size - width)), (0, 0))
        image = np.pad(image, pad, mode="reflect" if min(height, width) > 1 else "edge")
    ph, pw = image.shape[:2]

    rows, cols = tile_starts(ph, tile_size, overlap), tile_starts(pw, tile_size, overlap)
    starts = [(r, c) for r in rows for c in cols]
    batch_size = min(batch_size, len(starts))
    if _is_keras_model(model):
        from .backends import predictor

        predict = predictor(model, tile_size, batch_size, backend, jit_compile)
    else:
        predict = model
    # the 2-D blending window of a tile depends only on which of its sides face a neighbour
    win_1d = {(a, b): _window_1d(tile_size, overlap, a, b) for a in (False, True) for b in (False, True)}
    windows: dict[tuple, np.ndarray] = {}

    out = np.zeros((ph, pw, 3), np.float32)
    weight = np.zeros((ph, pw), np.float32)
    batch = np.zeros((batch_size, tile_size, tile_size, 3), np.float32)
    n_batches = math.ceil(len(starts) / batch_size)
    show = n_batches > AUTO_PROGRESS_BATCHES if progress is None else bool(progress)
    bar = None
    if show:
        from tqdm import tqdm  # plain text bar: no widgets in executed notebooks

        bar = tqdm(total=n_batches, desc="denoise", unit="batch", file=sys.stderr, leave=False)
    try:
        for group in _batches(starts, batch_size):
            for i, (r, c) in enumerate(group):
                batch[i] = image[r : r + tile_size, c : c + tile_size]
            batch[len(group) :] = 0.0  # padding of the last batch: fixed shape, one trace
            pred = np.asarray(predict(batch))
            if pred.shape != batch.shape:
                raise ValueError(f"model returned shape {pred.shape} for input {batch.shape}; "
                                 "denoising needs a fully convolutional RGB -> RGB model")
            if not np.isfinite(pred[: len(group)]).all():
                # NaN/Inf would be clipped to black when written, and exit 0: a broken model
                raise ValueError("model output contains NaN or Inf (a broken or diverged model)")
            for i, (r, c) in enumerate(group):
                sides = (r > 0, r + tile_size < ph, c > 0, c + tile_size < pw)
                w = windows.get(sides)
                if w is None:
                    w = windows[sides] = np.outer(win_1d[sides[:2]], win_1d[sides[2:]])
                out[r : r + tile_size, c : c + tile_size] += pred[i] * w[..., None]
                weight[r : r + tile_size, c : c + tile_size] += w
            if bar is not None:
                bar.update(1)
    finally:
        if bar is not None:
            bar.close()
    out /= weight[..., None]  # in place: no second output-sized array
    if (ph, pw) != (height, width):
        out = np.ascontiguousarray(out[:height, :width])
    return out


# --- models: loading, checking, the bundled default ----------------------------------------

MODELS_ENV_VAR = "IHCLIB_MODELS_DIR"
DEFAULT_MODEL_FILE = "default.keras"


def load_model(path: str | Path) -> tuple[Any, dict]:
    """A ``.keras`` denoiser (safe mode) and its JSON sidecar, checked for use by :func:`denoise`.

    Errors are one line naming the file (FileNotFoundError / ValueError): not a Keras file,
    a sidecar that is not JSON, a model that does not map RGB to RGB.
    """
    from .model import load_model as train_load_model  # imports keras: only when a model is needed

    model, sidecar = train_load_model(path)
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
