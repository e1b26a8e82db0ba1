#!/usr/bin/env python
"""Where one ``ihclib denoise`` run of an image spends its time, in process, as the command runs it.

Prints the seconds of TensorFlow's import, loading the bundled model, reading the image beside
making and tracing the predictor (as the command does), each call of the model (the first one
holds XLA and oneDNN set-up) and writing the result; the XLA cache is opened as the command opens it (``IHCLIB_XLA_CACHE=0``: off).
Used for the README's "Why ``ihclib denoise`` stays below 60 %" paragraph::

    .venv/bin/python benchmarks/denoise_timeline.py noisy4096.png
    .venv/bin/python benchmarks/denoise_timeline.py noisy4096.png --ops 5
    .venv/bin/python benchmarks/denoise_timeline.py noisy4096.png --model other.keras

``--ops N``: then N more calls on the image's first tile under TensorFlow's profiler, and the
milliseconds per call of each op type (``make bench``'s ``op_profile``; ops that run side by
side add up to more than the call) beside the call's own time and the classical prefix's alone
(:class:`ihclib.fast_layers.CrossChannelPrefix`, best of 10).
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("image", help="an image ihclib denoise reads (PNG, TIFF, JPEG)")
    p.add_argument("--ops", type=int, default=0, metavar="N", help="then N profiled calls on one tile")
    p.add_argument("--model", metavar="PATH", help="a .keras model with its sidecar (default: the bundled one)")
    p.add_argument("--calls", action="store_true", help="also print every call's seconds, in order")
    args = p.parse_args(argv)
    start = time.perf_counter()
    from ihclib.xla_cache import XlaCache

    cache = XlaCache()
    cached = cache.open()  # before TensorFlow reads its XLA flags, as the command does
    from ihclib.cli import import_tensorflow_quietly

    import_tensorflow_quietly()
    from ihclib import infer
    from ihclib.images import load_image, save_image

    from concurrent.futures import ThreadPoolExecutor

    from ihclib.images import image_size

    from ihclib.native import numpy_small_pages

    numpy_small_pages().__enter__()  # as the command runs (for the rest of this process)
    marks = {"import": time.perf_counter()}
    model, sidecar = infer.load_model(args.model) if args.model else infer.load_default_model()
    marks["model"] = time.perf_counter()
    calls: list[float] = []
    predictor_s: list[float] = []
    checked, predictor_for = infer._checked, infer._predictor_for
    multiple = infer.input_multiple(sidecar)
    # as the command: the image read in a thread while this one makes and traces the predictor
    # for the size in its header (ihclib.commands.denoise._read_beside_trace)
    tile, batch = infer.auto_tiling(image_size(args.image), infer.DEFAULT_OVERLAP, multiple)

    def timed_read():
        t = time.perf_counter()
        return load_image(args.image), time.perf_counter() - t

    with ThreadPoolExecutor(1) as io:
        read = io.submit(timed_read)
        t = time.perf_counter()
        infer.prepare(model, image_size(args.image), tile, batch_size=batch, multiple=multiple, precision="auto")
        trace_s = time.perf_counter() - t
        image, read_s = read.result()
    marks["read and trace"] = time.perf_counter()

    def timed_call(predict, batch, n):
        t = time.perf_counter()
        out = checked(predict, batch, n)
        calls.append(time.perf_counter() - t)
        return out

    def timed_predictor(*a, **k):
        t = time.perf_counter()
        out = predictor_for(*a, **k)
        predictor_s.append(time.perf_counter() - t)
        return out

    infer._checked, infer._predictor_for = timed_call, timed_predictor
    try:
        rgb = infer.denoise(model, image.pixels, tile_size=tile, batch_size=batch, multiple=multiple,
                            precision="auto", progress=False, out_dtype=image.dtype)  # as the command
    finally:
        infer._checked, infer._predictor_for = checked, predictor_for
    marks["denoise"] = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        save_image(Path(tmp) / "out.png", rgb, image.dtype, image.alpha)
        marks["write"] = time.perf_counter()
    cache.close()
    steps = dict(zip(marks, [marks["import"] - start, *(b - a for a, b in zip(marks.values(), list(marks.values())[1:]))]))
    print(f"XLA cache {'on' if cached else 'off'}; tile {tile}, batch {batch}, {len(calls)} calls")
    print(", ".join(f"{k} {v:.2f} s" for k, v in steps.items()) + f" (read {read_s:.2f} s beside trace {trace_s:.2f} s)")
    print(f"predictor (after the trace) {sum(predictor_s):.2f} s, first call {calls[0]:.2f} s, the other {len(calls) - 1} "
          f"{sum(calls[1:]):.2f} s (each {min(calls[1:], default=0):.3f}-{max(calls[1:], default=0):.3f} s)")
    if args.calls:
        print("calls (s): " + " ".join(f"{c:.3f}" for c in calls))
    if args.ops:
        tile_ops(model, image.rgb, tile, batch, args.ops)
    return 0


def tile_ops(model, rgb, tile: int, batch: int, calls: int) -> None:
    """Where one call of the predictor ``ihclib denoise`` uses goes, on the image's first tile."""
    import sys

    import numpy as np
    import tensorflow as tf

    from ihclib import infer
    from ihclib.fast_layers import CrossChannelPrefix, can_fuse_whole
    from ihclib.images import to_float

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from bench import op_profile, time_calls

    height, width = rgb.shape[:2]
    batch = infer._Plan((max(height, tile), max(width, tile)), tile, infer.DEFAULT_OVERLAP, batch).batch_size  # as denoise
    x = np.zeros((batch, tile, tile, 3), np.float32)
    first = to_float(rgb[:tile, :tile])
    x[:, : first.shape[0], : first.shape[1]] = first
    predict = infer._predictor_for(model, tile, batch, None, False, "auto")

    def best(fn) -> float:
        """ms of the fastest of 10 calls after one untimed."""
        return 1000 / time_calls(fn, 1, 0.0, min_calls=10)["tiles_per_s"]

    print(f"one call on {batch} tile(s) of {tile} px: {best(lambda: predict(x)):.0f} ms (best of 10)")
    if can_fuse_whole(model):
        prefix = CrossChannelPrefix(features_dtype="bfloat16" if infer.resolve_precision(model, "auto") == "bfloat16"
                                    else "float32")
        alone = tf.function(lambda t: prefix(t), autograph=False)
        from ihclib import native

        kind = "compiled, ihclib.native" if native.available() else "TensorFlow"
        print(f"the classical prefix alone ({kind}): {best(lambda: alone(tf.constant(x))):.0f} ms")
    print(", ".join(f"{r['op']} {r['ms_per_step']}" for r in op_profile(lambda: predict(x), calls, top=10)
                    if r["ms_per_step"] > 0) + " (ms per call)")


if __name__ == "__main__":
    raise SystemExit(main())
