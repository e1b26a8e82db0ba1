"""`ihclib denoise INPUT... (-o OUTPUT | --out-dir DIR)`: restore images of any size.

Outputs keep the input's format, bit depth (8 or 16) and alpha channel. With ``--out-dir``
each input ``NAME.ext`` is written as ``DIR/NAME_denoised.ext`` (a distinct name, so that an
output folder equal to the input folder never collides with the originals). Existing files
are never replaced without ``--overwrite``. A bad input is reported on one line and skipped;
the others are still processed and the exit status is 1. With several files, the next one is
read and the last one written while an image is denoised, where memory allows both; lines and
errors keep the input order (``IHCLIB_OVERLAP=0``: one after another). Whatever can be checked before the
work is (output name and format, existing file, folder, memory), so a wrong ``-o`` does not
cost a whole denoise. Resolution (physical pixel size), EXIF orientation and ICC profile are kept.

Whole slides (SVS, NDPI, MRXS, ... and tiled, pyramidal or OME-TIFF; see :mod:`ihclib.slides`)
are read block by block, never whole, denoised on Dask (a local cluster on this machine's
cores, ``--scheduler ADDRESS`` for an existing one, ``--workers 0`` in this process) with
background blocks copied through, and written as a tiled pyramidal OME-TIFF named
``NAME_denoised.ome.tif``. A progress bar per slide shows tiles done and MP/s; each slide ends
with a summary line (time, MP/s, share of background skipped, peak memory).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import ExitStack
from pathlib import Path
from typing import Any

from ..images import (DENOISE_BYTES_PER_PIXEL, LOAD_BYTES_PER_PIXEL, ImageError, LoadedImage, available_memory,
                      check_memory, check_output, image_size, load_image, save_image)
from ..infer import (DEFAULT_OVERLAP, auto_tiling, check_tiling, default_batch, denoise, input_multiple,
                     load_default_model, load_model, model_tile_size, prepare, resolve_tile_size)

SUFFIX = "_denoised"


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("denoise", help="denoise PNG/JPEG/TIFF images of any size with a trained model",
                       description="Denoise images tile by tile with seamless blending. Bit depth "
                                   "and alpha are kept; JPEG inputs are re-encoded as JPEG (quality 95).")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="PNG, JPEG or TIFF files (RGB or RGBA)")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("-o", "--output", help="output file (only with a single input)")
    where.add_argument("--out-dir", help=f"folder for outputs, named <stem>{SUFFIX}<ext>")
    p.add_argument("--model", help="a .keras model (default: the bundled model)")
    p.add_argument("--overwrite", action="store_true", help="replace existing output files")
    p.add_argument("--tile-size", type=int, default=None,
                   help="a multiple of the model's input multiple (default: the model's fixed input size; "
                        "else per image, the size in 256-1088 that recomputes the least overlap; for slides, "
                        "that of a block with its halo)")
    p.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP, help="minimum tile overlap in pixels")
    p.add_argument("--batch-size", type=int, default=None,
                   help="tiles per model call (default: about 0.5 megapixels, e.g. 8 tiles of 256)")
    p.add_argument("--backend", default=None, choices=["auto", "keras", "openvino"],
                   help="inference runtime (default: $IHCLIB_BACKEND, else auto: keras for a model with fused "
                        "classical layers such as the bundled one or with a GPU, openvino for any other)")
    slide = p.add_argument_group("whole slides (SVS, NDPI, MRXS, tiled/pyramidal/OME-TIFF)")
    slide.add_argument("--workers", type=int, default=None,
                       help="local Dask worker processes (default: one per core; 0: in this process)")
    slide.add_argument("--scheduler", metavar="ADDRESS",
                       help="run on an existing Dask cluster, e.g. tcp://host:8786 (its workers must see "
                            "the slide and model files)")
    slide.add_argument("--block-size", type=int, default=1024,
                       help="side of the blocks that are the Dask tasks, a multiple of 256 (default 1024)")
    slide.add_argument("--tissue-threshold", type=float, default=0.15,
                       help="optical density above which a 16 px cell is tissue (default 0.15)")
    slide.add_argument("--no-tissue-mask", action="store_true", help="denoise background blocks too")
    slide.add_argument("--compression", default="zlib", choices=["zlib", "zstd", "jpeg", "none"],
                       help="compression of the pyramidal OME-TIFF (default zlib, lossless)")
    p.set_defaults(func=run, needs_tensorflow=True, lean_keras=True)


def _outputs(args: argparse.Namespace) -> list[Path]:
    """Output path per input, refusing -o with several inputs and name clashes between inputs."""
    from ..slides import is_slide, slide_output_name

    inputs = [Path(p) for p in args.inputs]
    if args.output is not None and len(inputs) == 1 and is_slide(inputs[0]) \
            and not args.output.lower().endswith((".tif", ".tiff")):
        raise ValueError(f"{args.output}: a slide is written as a pyramidal OME-TIFF; name it *.ome.tif")
    if args.output is not None:
        if len(inputs) != 1:
            raise ValueError(f"-o/--output takes a single input, got {len(inputs)}; use --out-dir DIR")
        # name, format and folder now, before the model loads; an existing file is the file's error
        return [check_output(args.output, overwrite=True)]
    out_dir = Path(args.out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"{out_dir}: --out-dir is not a folder")
    outputs = [out_dir / (slide_output_name(p, SUFFIX) if is_slide(p) else f"{p.stem}{SUFFIX}{p.suffix}")
               for p in inputs]
    seen: dict[Path, Path] = {}
    for src, dst in zip(inputs, outputs):
        if dst in seen:
            raise ValueError(f"{src} and {seen[dst]} would both be written to {dst}; denoise them separately")
        seen[dst] = src
    return outputs


def _slide_job(args: argparse.Namespace, src: str, tile_size: int | None, multiple: int) -> Any:
    """The Dask job of one slide; ``tile_size`` None: :func:`auto_tiling` of a block with its halo."""
    from ..infer import bundled_model_path
    from ..slides import BlockJob

    model = str(Path(args.model).resolve()) if args.model else str(bundled_model_path())
    halo = max(args.overlap, 8)
    if tile_size is None:  # one tiling for every block (edge blocks are read as large where they can be)
        tile_size, batch_size = auto_tiling((args.block_size + 2 * halo,) * 2, args.overlap, multiple)
    else:
        batch_size = default_batch(tile_size)
    return BlockJob(str(Path(src).resolve()), model, block_size=args.block_size, halo=halo,
                    tile_size=tile_size, overlap=args.overlap, batch_size=args.batch_size or batch_size,
                    backend=args.backend, multiple=multiple, tissue_od=None if args.no_tissue_mask else args.tissue_threshold)


def _peak_rss_gb() -> float:
    from ..distributed import peak_rss  # standard library only: no Dask imported

    return peak_rss() / 1e9


def _denoise_slide(args: argparse.Namespace, src: str, dst: Path, model: Any, tile_size: int | None, multiple: int,
                   clients: dict, stack: ExitStack) -> None:
    """One slide on Dask (the client made on the first slide and kept for the next) or in this
    process (``--workers 0``); prints its summary line."""
    from ..slides import denoise_slide, open_slide, use_model

    check_output(dst, overwrite=args.overwrite)  # a bad output or slide is named before a cluster starts
    open_slide(src).close()
    if "client" not in clients:
        clients["client"] = None
        if args.scheduler or args.workers != 0:
            from ..distributed import dask_client

            clients["client"] = stack.enter_context(dask_client(args.scheduler, args.workers))
    client = clients["client"]
    job = _slide_job(args, src, tile_size, multiple)
    if client is None:
        use_model(job.model, model)
    elif clients.setdefault("loaded", None) != job.model:
        from ..distributed import load_on_workers

        load_on_workers(client, job.model)
        clients["loaded"] = job.model
    report = denoise_slide(job, dst, client, overwrite=args.overwrite,
                           compression=None if args.compression == "none" else args.compression,
                           progress=sys.stderr.isatty())
    rss = f"peak RSS {_peak_rss_gb():.2f} GB"
    if client is not None:
        from ..distributed import worker_peak_rss

        rss += f" here, {worker_peak_rss(client) / 1e9:.2f} GB per worker at most"
    print(f"{src} -> {dst} ({report.width}x{report.height}, {report.levels} levels, "
          f"{report.skipped} of {report.blocks} blocks background ({100 * report.skipped_share:.0f} %) copied, "
          f"{report.seconds:.1f} s, {report.megapixels_per_s:.2f} MP/s, {rss})")


def _read_image(args: argparse.Namespace, src: str, dst: Path) -> LoadedImage:
    """One PNG/JPEG/TIFF, loaded whole, after everything knowable before the work is checked:
    the input's header first (so that a bad input is named as such), memory, the output."""
    check_memory(src, *image_size(src), DENOISE_BYTES_PER_PIXEL, task="denoise")
    check_output(dst, overwrite=args.overwrite)
    image = load_image(src)
    check_output(dst, image.dtype, image.alpha is not None, overwrite=args.overwrite)
    return image


def _read_quietly(args: argparse.Namespace, src: str, dst: Path) -> LoadedImage | None:
    """:func:`_read_image`, or None on any error: a file read ahead that fails is read again
    at its turn, which reports its error in order and with the memory it would have then."""
    try:
        return _read_image(args, src, dst)
    except Exception:
        return None


def _fits(bytes_needed: int) -> bool:
    avail = available_memory()
    return avail is None or bytes_needed <= avail


def _tiling(args: argparse.Namespace, shape: tuple[int, int], tile_size: int | None, multiple: int) -> tuple[int, int]:
    """(tile size, batch size) for an image of ``shape``. ``tile_size`` None: :func:`auto_tiling`."""
    if tile_size is None:
        tile_size, batch_size = auto_tiling(shape, args.overlap, multiple)
    else:
        batch_size = default_batch(tile_size)
    return tile_size, args.batch_size or batch_size


def _restore(args: argparse.Namespace, image: LoadedImage, model: Any, tile_size: int | None, multiple: int) -> Any:
    """The denoised pixels of ``image``, in the type it is written as (from its stored pixels and
    straight into that type, tile by tile: no float32 copy of the image in or out)."""
    tile_size, batch_size = _tiling(args, image.shape, tile_size, multiple)
    return denoise(model, image.pixels, tile_size=tile_size, overlap=args.overlap, batch_size=batch_size,
                   backend=args.backend, multiple=multiple, precision="auto", out_dtype=image.dtype)


def _read_beside_trace(args: argparse.Namespace, src: str, dst: Path, io: ThreadPoolExecutor, model: Any,
                       tile_size: int | None, multiple: int) -> LoadedImage:
    """:func:`_read_image` in ``io`` while this thread traces the model for the size in the
    file's header (:func:`ihclib.infer.prepare`): a PNG decodes without the GIL, so the two
    overlap (issue 13). Then, in ``io`` beside the rest of the read, the compiled layers' output
    arrays for that tile are made (:func:`ihclib.native.make_expected`). A file that cannot be
    read or denoised says so from the read or the denoise, as without this."""
    read = io.submit(_read_image, args, src, dst)
    try:
        shape = image_size(src)
        tile, batch = _tiling(args, shape, tile_size, multiple)
        from ..native import make_expected, noting_expected

        with noting_expected() as expected:
            prepare(model, shape, tile, args.overlap, batch, backend=args.backend, multiple=multiple, precision="auto")
        io.submit(make_expected, expected)  # the compiled layers' outputs for this tile, beside the read's end
    except Exception:  # reported by the read or by the denoise itself
        pass
    return read.result()


def _write_image(args: argparse.Namespace, src: str, dst: Path, image: LoadedImage, rgb: Any, seconds: float) -> str:
    """Write ``rgb`` (pixels of ``image.dtype``) as ``image`` was stored; the file's line: its
    time is ``seconds`` (reading and denoising) plus the write's, not the wait for other files'
    work beside it."""
    start = time.perf_counter()
    save_image(dst, rgb, dtype=image.dtype, alpha=image.alpha, overwrite=args.overwrite, meta=image.meta)
    h, w = image.shape
    # hundredths: make bench times the command from this line, and tenths of a 3 s run moved
    # its share of the peak by up to 1.6 points either way
    return f"{src} -> {dst} ({w}x{h}, {image.dtype}, {seconds + time.perf_counter() - start:.2f} s)"


def _report(src: str, exc: BaseException) -> None:
    """The one line a failed file gets."""
    if isinstance(exc, ImageError):
        print(f"ihclib denoise: error: {exc}", file=sys.stderr)
    else:  # e.g. a model that outputs NaN on this image, or a full disk
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc) or type(exc).__name__
        print(f"ihclib denoise: error: {src}: {reason}", file=sys.stderr)


FILE_ERRORS = (ImageError, ValueError, OSError, MemoryError)


class _Overlapped:
    """Images one after another, with the next one read and the last output written while an
    image is denoised (the tile loop leaves part of a core idle: on three 4096 px PNGs, x0.83
    of the time per file in ``make bench``, x0.91 by hand). Lines and errors come out in input
    order, and each overlap happens only where memory allows both; else the steps run one after
    another, as for a single file. ``overlap`` False: always one after another (``make bench``
    compares the two; ``IHCLIB_OVERLAP=0`` on the command line)."""

    def __init__(self, args: argparse.Namespace, pairs: list[tuple[str, Path]], io: ThreadPoolExecutor,
                 overlap: bool = True):
        self.args, self.pairs, self.io, self.overlap = args, pairs, io, overlap
        self.ahead: tuple[int, Future] | None = None  # (input index, its read)
        self.behind: tuple[str, Future] | None = None  # (input, its write)
        self.failed = 0

    def fail(self, src: str, exc: BaseException) -> None:
        self.finish_write()  # the file before prints first
        _report(src, exc)
        self.failed += 1

    def finish_write(self) -> None:
        """Wait for the output being written; print its line (or its error)."""
        if self.behind is not None:
            src, future = self.behind
            self.behind = None
            try:
                print(future.result())
            except FILE_ERRORS as exc:
                self.fail(src, exc)

    def image(self, i: int, model: Any, tile_size: int | None, multiple: int) -> None:
        """Denoise input ``i``; its line is printed once it is written (by the next call or
        :meth:`finish_write`)."""
        args, (src, dst) = self.args, self.pairs[i]
        start = time.perf_counter()
        image = self.ahead[1].result() if self.ahead and self.ahead[0] == i else None
        self.ahead = None
        if image is None:
            self.finish_write()  # memory as a run of this file alone would have it
            if self.overlap:
                image = _read_beside_trace(args, src, dst, self.io, model, tile_size, multiple)
            else:
                image = _read_image(args, src, dst)
        pixels = image.shape[0] * image.shape[1]
        if self.behind is not None and not _fits((DENOISE_BYTES_PER_PIXEL - LOAD_BYTES_PER_PIXEL) * pixels):
            self.finish_write()
        self._read_ahead(i + 1, pixels)
        rgb = _restore(args, image, model, tile_size, multiple)
        seconds = time.perf_counter() - start
        self.finish_write()
        self.behind = (src, self.io.submit(_write_image, args, src, dst, image, rgb, seconds))
        if not self.overlap:
            self.finish_write()

    def _read_ahead(self, j: int, pixels_now: int) -> None:
        from ..slides import is_slide

        if not self.overlap or j >= len(self.pairs) or is_slide(self.pairs[j][0]):
            return
        src, dst = self.pairs[j]
        try:
            h, w = image_size(src)
        except Exception:  # reported at its turn
            return
        if _fits(DENOISE_BYTES_PER_PIXEL * pixels_now + LOAD_BYTES_PER_PIXEL * h * w):
            self.ahead = (j, self.io.submit(_read_quietly, self.args, src, dst))


def command_backend(chosen: str | None) -> str:
    """The command's runtime: ``--backend``, else ``$IHCLIB_BACKEND``, else "auto" (the faster
    measured runtime for the model, :func:`ihclib.backends.resolve_backend`; the library's own
    default stays Keras, which the study's numbers are made with)."""
    from ..backends import ENV_VAR

    return chosen or os.environ.get(ENV_VAR) or "auto"


def run(args: argparse.Namespace) -> int:
    """Denoise every input; 1 if any failed (each reported on one line), 2 for a bad option."""
    from ..native import numpy_small_pages
    from ..slides import OUTPUT_TILE, is_slide

    if args.block_size <= 0 or args.block_size % OUTPUT_TILE:
        raise ValueError(f"block size must be a multiple of {OUTPUT_TILE}, got {args.block_size}")
    if args.workers is not None and args.workers < 0:
        raise ValueError(f"--workers must be 0 or more, got {args.workers}")
    outputs = _outputs(args)
    args.backend = command_backend(args.backend)
    if args.model:
        model, sidecar = load_model(args.model)
    else:
        model, sidecar = load_default_model()
    # not the training tile size: a fully convolutional model denoises faster with large tiles
    # (less overlap recomputed) and gives the same result (checked: 49.11 vs 49.12 dB, 64 vs 256)
    tile_size = resolve_tile_size(model, args.tile_size)
    multiple = input_multiple(sidecar)
    check_tiling(tile_size, args.overlap, args.batch_size or 1, multiple)  # once, before any file
    # images: the given or the model's fixed tile size, else one chosen per image (auto_tiling)
    image_tile = None if args.tile_size is None and model_tile_size(model) is None else tile_size
    clients: dict = {}
    with ExitStack() as stack:  # the Dask cluster, if a slide needed one, closes at the end
        stack.enter_context(numpy_small_pages())
        io = stack.enter_context(ThreadPoolExecutor(2, "ihclib-io"))  # one read ahead, one write behind
        files = _Overlapped(args, list(zip(args.inputs, outputs)), io, os.environ.get("IHCLIB_OVERLAP", "1") != "0")
        try:
            for i, (src, dst) in enumerate(files.pairs):
                try:
                    if is_slide(src):
                        files.finish_write()
                        _denoise_slide(args, src, dst, model, image_tile, multiple, clients, stack)
                    else:
                        files.image(i, model, image_tile, multiple)
                except FILE_ERRORS as exc:
                    files.fail(src, exc)
        finally:  # also on Ctrl-C or SIGTERM: an output being written is finished and says so
            files.finish_write()
    failed = files.failed
    if failed:
        print(f"ihclib denoise: {failed} of {len(outputs)} file(s) failed", file=sys.stderr)
    return 1 if failed else 0
