"""crosschannel_unet's classical prefix (``prefix.c``), its trunk's depth-to-space
concatenation (``trunk.c``) and PNG rows' filters undone (``png.c``, :func:`png_unfilter`, for
:mod:`ihclib.images`) as compiled C, built on first use.

:func:`prefix` computes what :class:`ihclib.fast_layers.CrossChannelPrefix` computes (up to
float32 rounding) in one cache-blocked pass over each band of rows, in threads; the fused
TensorFlow version spends most of its time in ~40 depthwise convolutions that each stream the
whole tile through memory (issue 13, README Performance). :func:`upsample_concat` is
``concat([depth_to_space(up), skip])`` in one pass, the same bits
(:class:`ihclib.fast_trunk.UpsampleConcat`).

The library is compiled with the machine's C compiler (``$CC``, else ``cc``; ``-O3
-march=native``: it runs where it was built) into ``$XDG_CACHE_HOME/ihclib/native``
(``~/.cache/ihclib/native``), once per source, compiler and CPU; ``make setup`` builds it ahead.
A second process compiling at the same time is harmless: each writes a temporary file and
renames it into place. Where there is no compiler, or it fails, or ``IHCLIB_NATIVE=0``,
:func:`available` is False and ihclib uses the TensorFlow layers: never an error.
"""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Iterator, Sequence

import ml_dtypes  # installed with TensorFlow
import numpy as np

ENV_VAR = "IHCLIB_NATIVE"
SOURCE = Path(__file__).with_name("prefix.c")
SOURCES = (SOURCE, *(Path(__file__).with_name(name) for name in ("trunk.c", "png.c", "pixels.c", "head.c")))  # one library
FLAGS = ("-O3", "-march=native", "-shared", "-fPIC", "-std=c99")
# what prefix.c supports: spatial windows odd and at most 7, the cross-channel and contrast windows 5
MAX_WINDOW, FIXED_WINDOW = 7, 5
FEATURES = 13
# rows x columns of the rectangles prefix.c works on, each with its halo (measured on the 2-core
# Zen 5, one thread, a 1056 px tile: 32 x 1056 33.5 ms, 32 x 256 38.2 ms, 32 x 128 41.1 ms; 66 x
# 1056 34.0 ms): whole rows, in bands of 32
BLOCK = (32, 1056)
_BFLOAT16 = np.dtype(ml_dtypes.bfloat16)  # TensorFlow's own bfloat16 NumPy type

_lib: ctypes.CDLL | None = None
_tried = False
_error: str | None = None


def _cpu_key() -> str:
    """The CPU's instruction-set flags (what -march=native compiles for)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return line
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "ihclib" / "native"


def library_path(compiler: str) -> Path:
    """Where the library built from this source, with ``compiler``, for this CPU is kept."""
    key = hashlib.sha256(b"\0".join([*(source.read_bytes() for source in SOURCES), compiler.encode(),
                                     " ".join(FLAGS).encode(), _cpu_key().encode()])).hexdigest()[:16]
    return cache_dir() / f"prefix-{key}.so"


def build(timeout_s: float = 120) -> Path:
    """Compile :data:`SOURCES` (unless already built) and return the library's path; RuntimeError
    saying why where it cannot be built."""
    compiler = os.environ.get("CC") or "cc"
    if shutil.which(compiler) is None:
        raise RuntimeError(f"no C compiler ({compiler!r} not found)")
    path = library_path(compiler)
    if path.is_file():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so", dir=path.parent)
    os.close(fd)
    try:
        done = subprocess.run([compiler, *FLAGS, "-o", tmp, *map(str, SOURCES), "-lm"], capture_output=True,
                              text=True, timeout=timeout_s)
        if done.returncode != 0:
            *first, last = (source.name for source in SOURCES)
            names = f"{', '.join(first)} and {last}" if first else last
            raise RuntimeError(f"{compiler} failed on {names}: {done.stderr.strip()[-500:]}")
        os.replace(tmp, path)  # atomic: another process sees the old state or the whole library
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


_load_lock = threading.Lock()


def _load() -> ctypes.CDLL | None:
    # one build per process: a second thread asking meanwhile waits for it rather than taking
    # "not available" (a predictor traced then would keep the TensorFlow prefix for good)
    with _load_lock:
        return _load_locked()


def _load_locked() -> ctypes.CDLL | None:
    global _lib, _tried, _error
    if _tried:
        return _lib
    _tried = True
    if os.environ.get(ENV_VAR, "1").lower() in ("0", "off", "false", "no"):
        _error = f"{ENV_VAR}={os.environ[ENV_VAR]}"
        return None
    try:
        lib = ctypes.CDLL(str(build()))
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        _error = str(e)
        return None
    f32 = ctypes.POINTER(ctypes.c_float)
    lib.ihclib_prefix_rows.argtypes = [f32, *[ctypes.c_int] * 6, ctypes.POINTER(ctypes.c_int), ctypes.c_int,
                                       ctypes.c_float, ctypes.c_int, ctypes.c_void_p, ctypes.c_int, f32, f32, f32, f32]
    lib.ihclib_prefix_rows.restype = ctypes.c_int
    lib.ihclib_upsample_concat_rows.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, *[ctypes.c_int] * 3,
                                                ctypes.c_void_p, *[ctypes.c_int] * 3, ctypes.c_void_p, ctypes.c_int,
                                                ctypes.c_int]
    lib.ihclib_upsample_concat_rows.restype = ctypes.c_int
    lib.ihclib_png_unfilter.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 3, ctypes.c_void_p]
    lib.ihclib_png_unfilter.restype = ctypes.c_int
    lib.ihclib_png_unfilter_inplace.argtypes = [ctypes.c_void_p, *[ctypes.c_int] * 3]
    lib.ihclib_png_unfilter_inplace.restype = ctypes.c_int
    lib.ihclib_float_to_pixels.argtypes = [ctypes.c_void_p, ctypes.c_ssize_t, ctypes.c_int, ctypes.c_int, ctypes.c_void_p,
                                           ctypes.c_ssize_t, ctypes.c_int, ctypes.c_float]
    lib.ihclib_float_to_pixels.restype = ctypes.c_int
    lib.ihclib_head_rows.argtypes = [*[ctypes.c_void_p] * 6, *[ctypes.c_int] * 4, ctypes.c_void_p, ctypes.c_int,
                                     ctypes.c_int]
    lib.ihclib_head_rows.restype = ctypes.c_int
    _lib = lib
    return lib


_off = threading.local()


@contextlib.contextmanager
def disabled():
    """Within: :func:`available` is False in this thread (the TensorFlow layers run instead), for
    comparisons and tests."""
    before = getattr(_off, "value", False)
    _off.value = True
    try:
        yield
    finally:
        _off.value = before


def available() -> bool:
    """Whether the compiled prefix can be used in this process (building it if needed)."""
    return not getattr(_off, "value", False) and _load() is not None


def unavailable_reason() -> str | None:
    """Why :func:`available` is False (None when it is True or was not asked yet)."""
    return _error


def supports(windows, window: int, contrast_window: int) -> bool:
    """Whether ``prefix.c`` computes a prefix with these windows."""
    windows = tuple(int(w) for w in windows)
    return (0 < len(windows) <= 3 and all(w % 2 == 1 and 0 < w <= MAX_WINDOW for w in windows)
            and list(windows) == sorted(set(windows))  # prefix.c nests them, smallest first
            and int(window) == FIXED_WINDOW and int(contrast_window) == FIXED_WINDOW)


_pool: ThreadPoolExecutor | None = None
# sets of output arrays by purpose and shape, reused (see prefix). Not per thread: TensorFlow calls a NumPy
# function from threads of its own, which Python sees as a new thread at every call
_sets: dict = {}
_sets_lock = threading.Lock()

# TensorFlow takes a NumPy function's output array as it is where its data is this aligned
# (Eigen's alignment), and copies it otherwise: the prefix's outputs of a 1056 px tile are about
# 100 MB, and a NumPy function returning 125 MB took 1.9 ms aligned against 10.5 ms (NumPy's own
# arrays are 16-byte aligned), measured on the 2-core Zen 5
ALIGN = 64
MAX_SETS = 2  # output sets kept per shape (the prefix's, about 100 MB for a 1056 px tile, for its last shape only)


def _threads() -> int:
    return max(1, min(os.cpu_count() or 1, 8))


_MADV_NOHUGEPAGE = 15  # Linux's


def _no_huge_pages(array: np.ndarray) -> None:
    """Ask Linux for small pages under ``array`` (NumPy asks for huge ones above 4 MB). The C
    code first touches its outputs from several threads at once, and on the machines measured
    (2-core VMs, transparent huge pages on request) huge pages first touched so took up to
    10 times as long as small ones: a 1056 px tile's first call spent 168 ms, not 8, writing the
    bundled model's 143 MB full-resolution concatenation. Elsewhere, or where it fails: nothing."""
    if not sys.platform.startswith("linux") or array.nbytes < 1 << 22:
        return
    page = 4096
    start = -(-array.ctypes.data // page) * page
    end = (array.ctypes.data + array.nbytes) // page * page
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.madvise(ctypes.c_void_p(start), ctypes.c_size_t(end - start), _MADV_NOHUGEPAGE)
    except (OSError, AttributeError):
        pass


@contextlib.contextmanager
def numpy_small_pages() -> Iterator[None]:
    """While inside, NumPy does not ask Linux for huge pages under its large arrays (its
    default above 4 MB; :func:`_no_huge_pages` for why that is slow here); the setting is put
    back after. ``ihclib denoise`` runs inside: its decoded image, tile buffers, blended output
    and PNG rows are all first touched once. On a 4096 px PNG it took 3.23 s against 3.35 s,
    five runs each, alternating (2-core Zen 5, README Performance). NumPy without the switch
    (it is private to NumPy): nothing changes."""
    try:
        from numpy._core import multiarray
    except ImportError:  # NumPy 1.x
        from numpy.core import multiarray
    set_ = getattr(multiarray, "_set_madvise_hugepage", None)
    if set_ is None:
        yield
        return
    before = set_(False)  # returns the setting it replaced
    try:
        yield
    finally:
        set_(before)


def _bands(rows: int, threads: int) -> list[tuple[int, int]]:
    """``rows`` cut into one band of rows per thread (none under 16 rows), as (start, stop)."""
    edges = np.linspace(0, rows, min(threads, max(1, rows // 16)) + 1).astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:]) if b > a]


def _run_all(run, jobs: list, threads: int) -> list[int]:
    """``run(job)`` for every job: in this thread where there is one thread or one job, else in
    the module's pool of ``threads`` (the C code runs without the GIL)."""
    global _pool
    if threads == 1 or len(jobs) == 1:
        return [run(job) for job in jobs]
    if _pool is None or _pool._max_workers != threads:
        _pool = ThreadPoolExecutor(threads, thread_name_prefix="ihclib-native")
    return list(_pool.map(run, jobs))


def _aligned_empty(shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
    """An uninitialised C-order array whose data starts on an :data:`ALIGN`-byte boundary."""
    dtype = np.dtype(dtype)
    size = int(np.prod(shape)) * dtype.itemsize
    raw = np.empty(size + ALIGN, np.uint8)
    _no_huge_pages(raw)
    offset = -raw.ctypes.data % ALIGN
    return raw[offset : offset + size].view(dtype).reshape(shape)


def _references(arrays: list[np.ndarray]) -> list[int]:
    return [sys.getrefcount(a) for a in arrays]


# what _references counts for arrays held by nothing but one list (this Python's own count)
_UNSHARED = max(_references([np.empty(1)]))


def _reused(purpose: str, shapes: list[tuple[int, ...]], dtypes: list, reuse: bool, keys: int = 1) -> tuple[np.ndarray, ...]:
    """New :data:`ALIGN`-aligned arrays of ``shapes`` and ``dtypes``, or (``reuse``) a set made
    for an earlier call of ``purpose`` with the same shapes that nothing else refers to any more.
    Sets are kept for the last ``keys`` shapes each purpose asked for, :data:`MAX_SETS` each."""

    def made() -> list[np.ndarray]:
        return [_aligned_empty(s, d) for s, d in zip(shapes, dtypes)]

    if not reuse:
        return tuple(made())
    key = (tuple(shapes), tuple(map(np.dtype, dtypes)))
    with _sets_lock:  # taken here (the tuple holds them) before another thread can look
        sets = _sets_for(purpose, key, keys)
        for arrays in sets:
            # TensorFlow holds a reference to each array it took without a copy for as long as
            # its tensor lives: a set it still holds is never written again
            if max(_references(arrays)) <= _UNSHARED:
                return tuple(arrays)
        arrays = made()
        if len(sets) < MAX_SETS:
            sets.append(arrays)
        return tuple(arrays)


def _prefix_request(shape: tuple[int, int, int], features_dtype: np.dtype) -> tuple:
    """What :func:`prefix` asks :func:`_reused` for on (N, H, W, 3) input: (purpose, shapes,
    dtypes, keys)."""
    n, height, width = shape
    dtypes = [np.dtype(features_dtype), *[np.dtype(np.float32)] * 4]
    return "prefix", [(n, height, width, k) for k in (FEATURES, 3, 3, 3, 6)], dtypes, 1


def _sets_for(purpose: str, key: tuple, keys: int) -> list:
    """The output sets kept for ``purpose`` and ``key`` (shapes, dtypes); a new key drops the one
    asked for longest ago beyond ``keys``. The caller holds ``_sets_lock``."""
    kept = _sets.setdefault(purpose, {})
    if key not in kept and len(kept) >= keys:
        kept.pop(next(iter(kept)))
    return kept.setdefault(key, [])


def _output_arrays(shape: tuple[int, int, int], features_dtype: np.dtype, reuse: bool) -> tuple[np.ndarray, ...]:
    purpose, shapes, dtypes, keys = _prefix_request(shape, features_dtype)
    return _reused(purpose, shapes, dtypes, reuse, keys)


def _upsample_request(up_shape: tuple[int, ...], skip_shape: tuple[int, ...], block: int, dtype: np.dtype) -> tuple:
    """What :func:`upsample_concat` asks :func:`_reused` for: (purpose, shapes, dtypes, keys)."""
    n, h, w, c4 = up_shape
    return ("upsample_concat", [(n, block * h, block * w, c4 // (block * block) + skip_shape[-1])], [np.dtype(dtype)],
            UPSAMPLE_SHAPES_KEPT)


_noting = threading.local()  # the list that expect_* add to in this thread, inside noting_expected


@contextlib.contextmanager
def noting_expected() -> Iterator[list]:
    """Within, the compiled layers traced in this thread note in the list yielded the output
    arrays their calls will ask for (:func:`expect_prefix`, :func:`expect_upsample_concat`), for
    :func:`make_expected`. Outside, nothing is noted."""
    noted: list = []
    before = getattr(_noting, "noted", None)
    _noting.noted = noted
    try:
        yield noted
    finally:
        _noting.noted = before


def expect_prefix(input_shape: tuple, features_dtype: str) -> None:
    """Note (inside :func:`noting_expected`) that a traced model will call :func:`prefix`
    (``reuse``) on ``input_shape`` (N, H, W, 3). Shapes with unknown sizes are not noted."""
    if len(input_shape) == 4 and all(isinstance(d, int) for d in input_shape):
        dtype = _BFLOAT16 if str(features_dtype) == "bfloat16" else np.dtype(np.float32)
        _expect(_prefix_request(tuple(input_shape[:3]), dtype))


def expect_upsample_concat(up_shape: tuple, skip_shape: tuple, block: int, dtype) -> None:
    """As :func:`expect_prefix`, for :func:`upsample_concat` (``reuse``)."""
    if all(isinstance(d, int) for d in (*up_shape, *skip_shape)):
        _expect(_upsample_request(tuple(up_shape), tuple(skip_shape), block, dtype))


def _expect(request: tuple) -> None:
    noted = getattr(_noting, "noted", None)
    purpose, shapes, dtypes, keys = request
    request = (purpose, tuple(map(tuple, shapes)), tuple(dtypes), keys)
    if noted is not None and request not in noted:
        noted.append(request)


def make_expected(requests: list) -> int:
    """Make (and write to, so that Linux has given them their pages) the output arrays noted
    in ``requests`` (:func:`noting_expected`) that are not made yet, for the next calls to
    reuse; returns how many sets were made. ``ihclib denoise`` runs it beside the read
    of the image once the model is traced: the first tile otherwise spent about 0.08 s on their
    pages (about 290 MB for a 1056 px tile of the bundled model; the 2-core Zen 5), two threads
    faulting them in at once. Each set is offered for reuse only once it is written, so a call
    that comes first makes its own."""
    made = 0
    for purpose, shapes, dtypes, keys in requests:
        key = (shapes, dtypes)
        with _sets_lock:
            if _sets.get(purpose, {}).get(key):
                continue  # a call made it already
        arrays = [_aligned_empty(s, d) for s, d in zip(shapes, dtypes)]
        for a in arrays:
            a.reshape(-1).view(np.uint8)[::4096] = 0  # a byte a page: each page given now
        with _sets_lock:
            sets = _sets_for(purpose, key, keys)
            if len(sets) < MAX_SETS:
                sets.append(arrays)
                made += 1
    return made


def prefix(x: np.ndarray, windows=(3, 5, 7), eps: float = 1e-3, min_clean: int = 3, features_dtype: str = "float32",
           threads: int | None = None, reuse: bool = False) -> tuple[np.ndarray, ...]:
    """``(features, flag, spatial fill, cross-channel fill, box sums of [prior, prior^2])`` of
    ``x`` (N, H, W, 3), as :class:`ihclib.fast_layers.CrossChannelPrefix` with window 5 and
    contrast window 5 (float32; the features in ``features_dtype``, float32 or bfloat16). Row
    bands run in ``threads`` threads (the C code runs without the GIL).

    ``reuse``: write into arrays of an earlier call with the same shapes that nothing else
    refers to any more, instead of new ones, and return those. New arrays (fresh
    pages from the system for about 100 MB) made a 1056 px tile 33-36 ms instead of 24-27 ms
    (best of 12 each, alternating, on the 2-core Zen 5 while another job ran). The arrays are
    :data:`ALIGN`-byte aligned, so ``tf.numpy_function`` keeps them as its tensors instead of
    copying them; while such a tensor lives, its array is not reused (tests/test_native.py)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the compiled prefix is not available: {_error}")
    x = np.ascontiguousarray(x, dtype=np.float32)
    n, height, width, channels = x.shape
    if channels != 3:
        raise ValueError(f"expected 3 channels, got {channels}")
    bf16 = str(features_dtype) == "bfloat16"
    if not bf16 and str(features_dtype) != "float32":
        raise ValueError(f"features_dtype must be float32 or bfloat16, got {features_dtype!r}")
    outs = _output_arrays((n, height, width), _BFLOAT16 if bf16 else np.float32, reuse)
    wins = (ctypes.c_int * len(windows))(*windows)
    f32 = ctypes.POINTER(ctypes.c_float)
    threads = threads or _threads()
    # one band of rows per thread and image: each band recomputes a halo of 10 rows
    jobs = []
    for i in range(n):
        ptrs = [x[i].ctypes.data_as(f32), outs[0][i].ctypes.data_as(ctypes.c_void_p),
                *(a[i].ctypes.data_as(f32) for a in outs[1:])]
        jobs += [(ptrs, a, b) for a, b in _bands(height, threads)]
    block = (BLOCK[0], min(BLOCK[1], width))

    def run(job) -> int:
        (xp, fp, *op), y0, y1 = job
        return lib.ihclib_prefix_rows(xp, height, width, y0, y1, *block, wins, len(windows), eps, int(min_clean),
                                      fp, int(bf16), *op)

    codes = _run_all(run, jobs, threads)
    if any(codes):
        raise RuntimeError(f"compiled prefix failed (code {min(codes)}) on {x.shape}")
    return tuple(outs)


def head(x: np.ndarray, flag: np.ndarray, spatial: np.ndarray, xc: np.ndarray, sums: np.ndarray,
         heads: np.ndarray, window: int = 5, threads: int | None = None, reuse: bool = False) -> np.ndarray:
    """crosschannel_unet's gate (``head.c``; :class:`ihclib.fast_layers.CrossChannelHead`) of
    the prefix's ``x``, ``flag``, ``spatial`` and ``xc`` fills (N, H, W, 3) and box sums of
    [prior, prior^2] over ``window`` (N, H, W, 6), float32, and the merged heads (N, H, W, 9),
    float32 or bfloat16: float32 (N, H, W, 3), ``x`` exactly where ``flag`` is 0. Bands of rows
    run in ``threads`` threads; ``reuse`` as :func:`prefix`'s."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the compiled library is not available: {_error}")
    x, flag, spatial, xc, sums = (np.ascontiguousarray(a, dtype=np.float32) for a in (x, flag, spatial, xc, sums))
    heads = np.ascontiguousarray(heads)
    n, height, width, channels = x.shape
    wanted = {"flag": (flag, 3), "spatial": (spatial, 3), "xc": (xc, 3), "sums": (sums, 6), "heads": (heads, 9)}
    for name, (a, k) in wanted.items():
        if channels != 3 or a.shape != (n, height, width, k):
            raise ValueError(f"{name} {a.shape} does not go with x {x.shape} ({k} channels expected)")
    if heads.dtype not in (np.dtype(np.float32), _BFLOAT16):
        raise ValueError(f"heads must be float32 or bfloat16, got {heads.dtype}")
    if window < 1 or window % 2 == 0:
        raise ValueError(f"window must be odd and positive, got {window}")
    (out,) = _reused("head", [(n, height, width, 3)], [np.float32], reuse)
    threads = threads or _threads()
    jobs = [(i, a, b) for i in range(n) for a, b in _bands(height, threads)]

    def run(job) -> int:
        i, y0, y1 = job
        return lib.ihclib_head_rows(x[i].ctypes.data, flag[i].ctypes.data, spatial[i].ctypes.data,
                                    xc[i].ctypes.data, sums[i].ctypes.data, heads[i].ctypes.data,
                                    int(heads.dtype == _BFLOAT16), height, width, window // 2, out[i].ctypes.data,
                                    y0, y1)

    codes = _run_all(run, jobs, threads)
    if any(codes):
        raise RuntimeError(f"compiled head failed (code {min(codes)}) on {x.shape}")
    return out


# the trunk's levels: a U-Net's way up concatenates once per level (the bundled model: 2)
UPSAMPLE_SHAPES_KEPT = 4
MAX_BLOCK = 8  # trunk.c's largest upsampling factor


def png_unfilter(raw: bytes | np.ndarray, height: int, width: int, channels: int) -> np.ndarray | None:
    """The (height, width, channels) uint8 pixels of an 8-bit PNG's inflated, filtered rows
    ``raw`` (``png.c``), or None where a row's filter type is not one of the PNG's five or the
    compiled code is not available (the caller then decodes the file another way). A writable
    uint8 array ``raw`` is unfiltered in place and the pixels returned are a view of its start
    (no fresh pages for them); it then holds no rows any more, whatever the outcome."""
    lib = _load() if available() else None
    row_bytes = width * channels
    if lib is None or len(raw) != height * (row_bytes + 1):
        return None
    if isinstance(raw, np.ndarray) and raw.dtype == np.uint8 and raw.ndim == 1 and raw.flags.writeable \
            and raw.flags.c_contiguous:
        code = lib.ihclib_png_unfilter_inplace(raw.ctypes.data, height, row_bytes, channels)
        return raw[: height * row_bytes].reshape(height, width, channels) if code == 0 else None
    src = np.frombuffer(raw, np.uint8)
    out = np.empty((height, width, channels), np.uint8)
    code = lib.ihclib_png_unfilter(src.ctypes.data, height, row_bytes, channels, out.ctypes.data)
    return out if code == 0 else None


def float_to_pixels(src: np.ndarray, out: np.ndarray, top: float) -> bool:
    """``out[...] = round(clip(src, 0, 1) * top)`` in one compiled pass (``pixels.c``), for a
    float32 ``src`` and a uint8 / uint16 ``out`` of the same shape, each with every row (the
    last two axes of a 3-D array, the last of a 2-D one) contiguous, as a rectangle of an image
    is; False (nothing written) where that does not hold or the compiled code is not available."""
    lib = _load() if available() else None
    if (lib is None or src.dtype != np.float32 or out.dtype not in (np.uint8, np.uint16) or src.shape != out.shape
            or src.ndim not in (2, 3) or src.size == 0 or not out.flags.writeable):
        return False
    inner = src.shape[1:]
    row_len = int(np.prod(inner))

    def rows_contiguous(a: np.ndarray) -> bool:
        return a[0].flags.c_contiguous and a.strides[0] % a.itemsize == 0

    if not (rows_contiguous(src) and rows_contiguous(out)):
        return False
    code = lib.ihclib_float_to_pixels(src.ctypes.data, src.strides[0] // src.itemsize, src.shape[0], row_len,
                                      out.ctypes.data, out.strides[0] // out.itemsize, out.itemsize, float(top))
    return code == 0


def upsample_concat(up: np.ndarray | Sequence[np.ndarray], skip: np.ndarray, block: int = 2,
                    threads: int | None = None, reuse: bool = False) -> np.ndarray:
    """``concat([depth_to_space(up, block), skip], -1)`` of (N, H, W, block**2 * CU) and (N,
    block * H, block * W, CS) arrays of one dtype, in one pass (``trunk.c``): the same bits as
    ``tf.nn.depth_to_space`` (DCR order) and ``tf.concat``. ``up`` may also be its block**2
    phases as arrays of their own, each (N, H, W, CU), phase a * block + b going to pixels
    (block * y + a, block * x + b) (what ``tf.concat(phases, -1)`` would put side by side,
    without that pass). Bands of rows run in ``threads`` threads. ``reuse``: as :func:`prefix`'s
    (the bundled model's full-resolution output is 143 MB)."""
    lib = _load()
    if lib is None:
        raise RuntimeError(f"the compiled library is not available: {_error}")
    skip = np.ascontiguousarray(skip)
    apart = not isinstance(up, np.ndarray)
    phases = [np.ascontiguousarray(p) for p in up] if apart else [np.ascontiguousarray(up)]
    shapes = {p.shape for p in phases}
    n, h, w, c = phases[0].shape
    c4 = c * len(phases)
    if (len(shapes) > 1 or any(p.dtype != skip.dtype for p in phases) or c4 % (block * block)
            or skip.shape[:3] != (n, block * h, block * w) or (apart and len(phases) != block * block)
            or block > MAX_BLOCK):
        got = [p.shape for p in phases] if apart else phases[0].shape
        raise ValueError(f"cannot put {got} {phases[0].dtype} up by {block} beside {skip.shape} {skip.dtype}")
    cu, cs, size = c4 // (block * block), skip.shape[-1], skip.dtype.itemsize
    (out,) = _reused("upsample_concat", [(n, block * h, block * w, cu + cs)], [skip.dtype], reuse,
                     UPSAMPLE_SHAPES_KEPT)
    rows = block * h
    threads = threads or _threads()
    # each phase's first pixel and the bytes from one pixel to the next
    pixel = cu * size if apart else c4 * size
    bases = [(ctypes.c_void_p * (block * block))(
        *([p[i].ctypes.data for p in phases] if apart else
          [phases[0][i].ctypes.data + k * cu * size for k in range(block * block)])) for i in range(n)]
    jobs = [(i, a, b) for i in range(n) for a, b in _bands(rows, threads)]

    def run(job) -> int:
        i, r0, r1 = job
        return lib.ihclib_upsample_concat_rows(bases[i], pixel, h, w, cu, skip[i].ctypes.data, cs, block, size,
                                               out[i].ctypes.data, r0, r1)

    codes = _run_all(run, jobs, threads)
    if any(codes):
        raise RuntimeError(f"compiled upsample_concat failed (code {min(codes)}) on {phases[0].shape}, {skip.shape}")
    return out
