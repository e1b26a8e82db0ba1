"""Reading and writing image files: one place for formats, dtypes, alpha, metadata and errors.

Every image inside the study is float32 RGB in [0, 1], shape (H, W, 3). Files may be PNG,
JPEG or TIFF, 8- or 16-bit (or floating point, TIFF), RGB or RGBA. Grayscale files are
*refused* with a clear message: the models are trained on colour IHC (hematoxylin + DAB), and a
grayscale image is nearly always a wrong file, not something to guess at (convert it to RGB
yourself if you mean it).

What a file says besides its pixels and that a pathologist needs back (the physical pixel
size, the EXIF orientation, the colour profile) is read into :class:`ImageMeta` and written
again by :func:`save_image`. Every file this package writes goes through :func:`atomic_write`.
"""

from __future__ import annotations

import functools
import os
import struct
import tempfile
import warnings
import zlib
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")

# Memory per pixel, for refusing an image before running out of memory halfway (a 13,500 px
# square slide is 182 Mpx): loading keeps the decoded file (up to 4 x 16 bit) and float32 RGB
# (LoadedImage.rgb, made when asked for; a floating-point file's pixels are float32 already);
# ihclib denoise adds its output pixels (up to 3 x 16 bit: it blends tiles straight into them,
# ihclib.infer.denoise's out_dtype), the alpha joined to them when written (up to 4 x 16 bit)
# and the PNG's filtered rows and compressed stream (each at most about the pixels' size).
LOAD_BYTES_PER_PIXEL = 8 + 12
DENOISE_BYTES_PER_PIXEL = LOAD_BYTES_PER_PIXEL + 6 + 8 + 8 + 8
# the float scales a floating-point file may use (ImageJ writes 32-bit images on 0-255)
FLOAT_SCALES = (1.0, 255.0, 65535.0)


class ImageError(ValueError):
    """A file that cannot be used, with the file and the reason in one line."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass(frozen=True)
class ImageMeta:
    """What a file says besides its pixels, kept from input to output.

    ``resolution`` is pixels per ``unit`` ("inch" or "cm") in x and y: the physical pixel size
    (0.25 um/px is 40000 px/cm). ``orientation`` is the EXIF/TIFF orientation (1-8): pixels are
    kept as stored, so the tag must travel with them. ``exif`` is a PNG/JPEG file's whole EXIF
    block, ``icc_profile`` its colour profile.
    """

    resolution: tuple[float, float] | None = None
    unit: str | None = None
    orientation: int | None = None
    exif: bytes | None = None
    icc_profile: bytes | None = None

    def dpi(self) -> tuple[float, float] | None:
        """Pixels per inch, or None when the file states no physical size."""
        if self.resolution is None or self.unit not in ("inch", "cm"):
            return None
        f = 2.54 if self.unit == "cm" else 1.0
        return (self.resolution[0] * f, self.resolution[1] * f)

    def microns_per_pixel(self) -> tuple[float, float] | None:
        """Physical pixel size in micrometres (x, y), or None."""
        dpi = self.dpi()
        return None if dpi is None or not all(dpi) else (25400.0 / dpi[0], 25400.0 / dpi[1])


@dataclass
class LoadedImage:
    """An image as read from disk: its pixels as stored, float RGB for the study (converted on
    first use), and what is needed to write it back."""

    pixels: np.ndarray  # (H, W, 3) as stored: uint8 / uint16, or float32 in [0, 1] (a floating-point file)
    dtype: np.dtype  # uint8 or uint16, as stored (uint16 for floating-point files)
    alpha: np.ndarray | None  # (H, W) in ``dtype``, or None
    path: str
    meta: ImageMeta | None = None

    @functools.cached_property
    def rgb(self) -> np.ndarray:
        """float32 (H, W, 3) in [0, 1] (:func:`to_float` of :attr:`pixels`, made once): ``ihclib
        denoise`` works from the pixels and never makes this 12-byte-per-pixel copy."""
        return self.pixels if self.pixels.dtype == np.float32 else to_float(self.pixels)

    @property
    def shape(self) -> tuple[int, int]:
        return self.pixels.shape[:2]


# ---------------------------------------------------------------- memory


def available_memory() -> int | None:
    """Bytes this process can still use (MemAvailable, capped by a cgroup limit); None if unknown."""
    avail = None
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                avail = int(line.split()[1]) * 1024
                break
    except (OSError, ValueError, IndexError):
        try:
            avail = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
        except (ValueError, OSError, AttributeError):
            avail = None
    # a container's limit is lower than the host's free memory that /proc/meminfo reports
    for limit_file, usage_file in (("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
                                   ("/sys/fs/cgroup/memory/memory.limit_in_bytes",
                                    "/sys/fs/cgroup/memory/memory.usage_in_bytes")):
        try:
            limit = Path(limit_file).read_text().strip()
            if limit == "max" or int(limit) >= 1 << 60:
                continue
            left = int(limit) - int(Path(usage_file).read_text().strip())
            avail = left if avail is None else min(avail, left)
            break
        except (OSError, ValueError):
            continue
    return avail


def _gb(n: float) -> str:
    return f"{n / 1e9:.1f} GB"


def check_memory(path: str | os.PathLike, height: int, width: int, bytes_per_pixel: int, task: str = "load") -> None:
    """Raise ImageError when a ``width`` x ``height`` image needs more memory for ``task`` than is free."""
    need = int(height) * int(width) * bytes_per_pixel
    avail = available_memory()
    if avail is not None and need > avail:
        raise ImageError(path, f"{width}x{height} px needs about {_gb(need)} of memory to {task}, "
                               f"but only {_gb(avail)} is available")


@contextmanager
def _pil_without_pixel_limit():
    """Pillow with its fixed 179 Mpx "decompression bomb" limit lifted for one call: the limit
    here is the memory the image needs (:func:`check_memory`), which is checked instead."""
    from PIL import Image

    saved = Image.MAX_IMAGE_PIXELS
    Image.MAX_IMAGE_PIXELS = None
    try:
        yield Image
    finally:
        Image.MAX_IMAGE_PIXELS = saved


# ---------------------------------------------------------------- reading


PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _is_png16_colour(path: Path) -> bool:
    """True for a 16-bit RGB/RGBA PNG, which Pillow would silently decode as 8-bit."""
    with open(path, "rb") as f:
        head = f.read(26)
    # signature (8) + IHDR length and type (8) + width, height (8) + bit depth + colour type
    return len(head) == 26 and head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        raise RuntimeError("16-bit colour PNG needs the imagecodecs package (pip install imagecodecs)") from None
    return imagecodecs


def _tiff_meta(tf) -> ImageMeta:
    tags = tf.pages[0].tags
    res = unit = None
    if "XResolution" in tags and "YResolution" in tags:
        x, y = tags["XResolution"].value, tags["YResolution"].value  # rationals (numerator, denominator)
        res = (x[0] / x[1] if x[1] else 0.0, y[0] / y[1] if y[1] else 0.0)
        code = int(tags["ResolutionUnit"].value) if "ResolutionUnit" in tags else 2  # TIFF's default: inch
        unit = {2: "inch", 3: "cm"}.get(code)
    orientation = int(tags["Orientation"].value) if "Orientation" in tags else None
    icc = tags["InterColorProfile"].value if "InterColorProfile" in tags else None
    if not (res and all(res) and unit):  # tifffile writes 1 px per "no unit" when nothing is known
        res = unit = None
    return ImageMeta(res, unit, orientation, None, bytes(icc) if icc is not None else None)


def _pil_meta(im, header_only: bool = False) -> ImageMeta:
    """The metadata Pillow read. ``header_only``: from the chunks before the pixels alone (a
    PNG's ``getexif`` otherwise decodes the whole image to look for EXIF after them;
    :func:`_png_for_imagecodecs` has checked that there is none there)."""
    from PIL import Image

    info = im.info
    dpi = info.get("dpi")
    exif = info.get("exif")
    try:
        orientation = (Image.Image.getexif(im) if header_only else im.getexif()).get(274)
    except Exception:  # a damaged EXIF block must not make the pixels unreadable
        orientation = None
    res = (float(dpi[0]), float(dpi[1])) if dpi and all(dpi) else None
    return ImageMeta(res, "inch" if res else None, int(orientation) if orientation else None,
                     bytes(exif) if exif else None, info.get("icc_profile") or None)


_PNG_META = (b"eXIf", b"tEXt", b"zTXt", b"iTXt")  # EXIF, or XMP / raw EXIF in text: orientation


def _png_chunks(data: bytes):
    """(type, offset, data length) of each chunk of a PNG after its signature, in order; a chunk
    that runs past the end of ``data`` ends them as (None, offset, length)."""
    pos = 8
    while pos + 12 <= len(data):
        length, kind = struct.unpack_from(">I4s", data, pos)
        if pos + 12 + length > len(data):
            yield None, pos, length
            return
        yield kind, pos, length
        pos += 12 + length


def _png_for_imagecodecs(data: bytes) -> bool:
    """Whether libspng (through imagecodecs) may decode this PNG instead of Pillow: 8-bit RGB or
    RGBA without a transparent colour, every chunk whole, and no metadata that :func:`_pil_meta`
    reads after the first IDAT (Pillow has the rest from the header).

    libspng decodes a 4096 x 4096 RGB PNG in 0.28 s against Pillow's 0.40 s, and releases the
    GIL meanwhile (Pillow holds it), so ``ihclib denoise`` traces its model beside it (measured
    on the 2-core EPYC, issue 13); unlike libpng it prints no warnings (e.g. on odd ICC
    profiles). Anything else, and any file libspng refuses, goes to Pillow, whose errors and
    conversions stay the reference.
    """
    if len(data) < 33 or data[:8] != PNG_SIGNATURE or data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in (2, 6):
        return False
    seen_idat = False
    for kind, _, _ in _png_chunks(data):
        if kind is None:
            return False  # cut short: Pillow names it truncated
        if kind == b"IDAT":
            seen_idat = True
        elif kind in _PNG_META and seen_idat or kind == b"tRNS":  # tRNS: Pillow's reading of a
            return False  # transparent colour stays the reference
        elif kind == b"IEND":
            return seen_idat
    return False


def _read_png_fast(path: Path) -> tuple[np.ndarray, ImageMeta] | None:
    """(pixels, metadata) of an 8-bit RGB(A) PNG decoded by libspng (imagecodecs), or None where
    :func:`_png_for_imagecodecs` says no or libspng fails: then Pillow reads it as before."""
    with _pil_without_pixel_limit() as Image, Image.open(path) as im:  # the header and metadata only
        if im.format != "PNG" or im.mode not in ("RGB", "RGBA"):
            return None
        check_memory(path, im.height, im.width, LOAD_BYTES_PER_PIXEL)
        meta = _pil_meta(im, header_only=True)
    data = path.read_bytes()
    if not _png_for_imagecodecs(data):
        return None
    pixels = _png_inflated(data)
    if pixels is not None:
        return pixels, meta
    import imagecodecs

    try:
        pixels = imagecodecs.spng_decode(data)
    except Exception:  # Pillow reads it again and says what is wrong in its own words
        return None
    return np.asarray(pixels), meta


def _png_inflated(data: bytes) -> np.ndarray | None:
    """The pixels of a PNG that :func:`_png_for_imagecodecs` accepted, inflated by libdeflate
    (:func:`_inflate_exact`) and unfiltered by compiled C (:func:`ihclib.native.png_unfilter`);
    None (libspng then reads it) without a fast inflate or the compiled code, for an interlaced
    PNG, or on anything amiss: a chunk's CRC, the stream, its length, a filter type. The same
    pixels as libspng's, bit for bit (tests/test_fast_read.py). libspng inflates with the
    system's zlib: 0.22 s of a 4096 px RGB PNG, against 0.09 s here plus 0.02 s for the
    filters, undone in place in libdeflate's output (the 2-core Zen 5, issue 13; the whole
    read 0.155 -> 0.121 s with ISA-L's inflate before); in ``ihclib denoise`` the read runs
    beside the model's trace, which then waits less for it."""
    if data[28] != 0:  # Adam7 interlacing
        return None
    from . import native

    width, height = struct.unpack_from(">II", data, 16)
    channels = 3 if data[25] == 2 else 4
    idat = []
    crc32 = _deflate().crc32
    for kind, pos, length in _png_chunks(data):
        if kind is None:
            return None
        body = memoryview(data)[pos + 4 : pos + 8 + length]  # the type and the data, as the CRC covers
        if kind in (b"IHDR", b"IDAT"):
            if crc32(body) & 0xFFFFFFFF != struct.unpack_from(">I", data, pos + 8 + length)[0]:
                return None
            if kind == b"IDAT":
                idat.append(body[4:])
        elif kind == b"IEND":
            break
    raw = _inflate_exact(idat[0] if len(idat) == 1 else b"".join(idat), height * (width * channels + 1))
    return None if raw is None else native.png_unfilter(raw, height, width, channels)


def _inflate_exact(stream: bytes | memoryview, size: int) -> np.ndarray | bytes | None:
    """A zlib ``stream`` inflated, where it holds exactly ``size`` bytes and its checksum is
    right; None otherwise, or where neither libdeflate (through imagecodecs) nor ISA-L is there
    (zlib is no faster than libspng's own read).

    libdeflate first: 0.086 s for the 4096 px test image's 50 MB against ISA-L's 0.109 s, and it
    releases the GIL while it works. ISA-L's Python module holds it for much of its inflate, so
    beside ``ihclib denoise``'s trace (Python, in the other thread) the read took 0.23-0.29 s
    instead of 0.15 s (the 2-core Zen 5, issue 13)."""
    try:
        import imagecodecs

        libdeflate = imagecodecs.DEFLATE.available
    except (ImportError, AttributeError):
        libdeflate = False
    if libdeflate:
        out = np.empty(size, np.uint8)
        try:  # a stream longer or shorter than the buffer, or a wrong checksum: an error
            raw = imagecodecs.deflate_decode(stream, out=out)
        except Exception:  # a damaged stream: libspng or Pillow says what is wrong
            return None
        return out if len(raw) == size else None
    deflate = _deflate()
    if deflate is zlib:
        return None
    try:
        raw = deflate.decompress(stream, bufsize=size)
    except Exception:
        return None
    return raw if len(raw) == size else None


def _read_jpeg_fast(path: Path) -> tuple[np.ndarray, ImageMeta] | None:
    """(pixels, metadata) of an RGB JPEG decoded by libjpeg-turbo through imagecodecs, or None:
    then Pillow reads it as before.

    Pillow's libjpeg-turbo holds the GIL while it decodes (a pure Python loop of 0.42 s beside
    it ended after 0.59 s, beside imagecodecs' after 0.41 s), so ``ihclib denoise`` could not
    trace its model meanwhile; imagecodecs is also faster (0.13 against 0.20 s for the 4096 px
    test image as a JPEG). The pixels are the same bit for bit (4:4:4, 4:2:2 and 4:2:0, baseline
    and progressive, and every JPEG in data/; tests/test_fast_read.py). Only a JFIF/EXIF JPEG
    that Pillow reads as 8-bit RGB without an Adobe colour transform, and that ends with its
    end-of-image marker: imagecodecs returns a cut file's missing rows as grey without an
    error, where Pillow says it is truncated. Anything else, and any file libjpeg refuses, goes
    to Pillow."""
    with _pil_without_pixel_limit() as Image, Image.open(path) as im:  # the header and metadata only
        if im.format != "JPEG" or im.mode != "RGB" or "adobe" in im.info or getattr(im, "bits", 8) != 8:
            return None
        check_memory(path, im.height, im.width, LOAD_BYTES_PER_PIXEL)
        meta = _pil_meta(im)  # a JPEG's EXIF is in its header: nothing decoded here
        shape = (im.height, im.width, 3)
    data = path.read_bytes()
    if data[-2:] != b"\xff\xd9":  # cut short (or bytes after the image): Pillow's reading
        return None
    import imagecodecs

    try:
        pixels = imagecodecs.jpeg8_decode(data)
    except Exception:  # Pillow reads it again and says what is wrong in its own words
        return None
    return (np.asarray(pixels), meta) if pixels.shape == shape else None


def _read_raw(path: Path) -> tuple[np.ndarray, ImageMeta]:
    """Decode a file to an ndarray and its metadata, turning every decoder failure into ImageError."""
    if not path.exists():
        raise ImageError(path, "no such file")
    if path.is_dir():
        raise ImageError(path, "is a folder, not an image file")
    if path.stat().st_size == 0:
        raise ImageError(path, "empty file (0 bytes)")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ImageError(path, f"unsupported extension '{ext}' (use PNG, JPEG or TIFF)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ext in (".tif", ".tiff"):
                import tifffile

                with tifffile.TiffFile(path) as tf:
                    shape = tf.series[0].shape
                    planar = len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4)
                    if len(shape) >= 2:
                        check_memory(path, *(shape[1:3] if planar else shape[:2]), LOAD_BYTES_PER_PIXEL)
                    return np.asarray(tf.asarray()), _tiff_meta(tf)
            fast_reader = {".png": _read_png_fast, ".jpg": _read_jpeg_fast, ".jpeg": _read_jpeg_fast}.get(ext)
            fast = fast_reader(path) if fast_reader else None  # None: Pillow reads it
            if fast is not None:
                return fast
            with _pil_without_pixel_limit() as Image, Image.open(path) as im:
                check_memory(path, im.height, im.width, LOAD_BYTES_PER_PIXEL)
                if ext == ".png" and _is_png16_colour(path):
                    return np.asarray(_imagecodecs().png_decode(path.read_bytes())), _pil_meta(im)
                # a full decode, so that truncated and damaged files fail here; before the
                # metadata, as a PNG's getexif decodes too and _pil_meta ignores its errors
                # (a PNG with broken pixel data was read as black)
                im.load()
                meta = _pil_meta(im)
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "I;16B":
                    im = im.convert("I;16")
                return np.asarray(im), meta
    except ImageError:
        raise
    except MemoryError:
        raise ImageError(path, "not enough memory to decode this image") from None
    except Exception as exc:  # decoders raise many unrelated types; report them uniformly
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        if "truncated" in reason.lower() or isinstance(exc, (OSError, EOFError)) and "truncat" in reason.lower():
            reason = f"truncated or corrupt image ({reason})"
        else:
            reason = f"cannot decode as {ext[1:].upper()} image ({reason})"
        raise ImageError(path, reason) from None


def _normalise_layout(arr: np.ndarray, path: Path) -> tuple[np.ndarray, np.ndarray | None]:
    """Return (rgb, alpha) from a decoded array, refusing layouts the study cannot use."""
    if arr.ndim == 2 or (arr.ndim == 3 and arr.shape[-1] in (1, 2)):
        raise ImageError(path, "grayscale image; IHC models need RGB (convert it to RGB first)")
    if arr.ndim == 3 and arr.shape[0] in (3, 4) and arr.shape[-1] not in (3, 4):
        arr = np.moveaxis(arr, 0, -1)  # planar TIFF (C, H, W)
    if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
        raise ImageError(path, f"unsupported image layout {arr.shape} (expected H x W x 3 or 4)")
    if arr.shape[-1] == 4:
        return arr[..., :3], arr[..., 3]
    return arr, None


def float_scale(arr: np.ndarray, path: str | os.PathLike = "image") -> float:
    """The full scale of floating-point pixels: 1, 255 or 65535, whichever their maximum fits.

    A float TIFF may hold [0, 1] or, as ImageJ writes it, 0-255 (or 0-65535); clipping the
    latter to 1 would turn the image white. NaN/Inf, negative values and values above 65535
    are refused (ImageError): there is no scale to guess for them.
    """
    if arr.size == 0:
        return 1.0
    if not np.isfinite(arr).all():
        raise ImageError(path, "floating-point image holds NaN or infinite values")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < -1e-3:
        raise ImageError(path, f"floating-point image has negative values (min {lo:.4g}); "
                               "expected a 0-1, 0-255 or 0-65535 scale")
    for top in FLOAT_SCALES:
        if hi <= top * (1 + 1e-3):  # a [0, 1] image rounded to 1.0000001 is still [0, 1]
            return top
    raise ImageError(path, f"floating-point image has values up to {hi:.4g}; expected a 0-1, 0-255 or 0-65535 scale")


def to_float(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixels to float32 in [0, 1] (floats are taken as [0, 1] and clipped)."""
    # one pass, in float32: the same values as astype(float32) / 255, 13x faster on 4096 x 4096
    if arr.dtype == np.uint8:
        return np.divide(arr, np.float32(255.0), dtype=np.float32)
    if arr.dtype == np.uint16:
        return np.divide(arr, np.float32(65535.0), dtype=np.float32)
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    raise TypeError(f"unsupported pixel type {arr.dtype}")


def unit_scale(arr: np.ndarray) -> np.ndarray:
    """``arr`` as values in [0, 1]: uint8/uint16 pixels converted at their own full scale
    (:func:`to_float`; TypeError for other integer types), floats returned as they are."""
    arr = np.asarray(arr)
    # integers compared or scored as if in [0, 1] fail silently (a uint8 image is "white")
    return to_float(arr) if arr.dtype.kind in "biu" else arr


FROM_FLOAT_BLOCK = 1 << 18
PIXEL_TOPS = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}


def from_float(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float in [0, 1] back to uint8 / uint16 with rounding. Integer pixels are taken at their
    own full scale (uint8 0-255, uint16 0-65535) and converted, not clipped to [0, 1]."""
    dtype = np.dtype(dtype)
    if dtype not in PIXEL_TOPS:
        raise KeyError(dtype)
    if np.asarray(rgb).dtype == dtype:  # pixels already of that type
        return np.array(rgb, dtype)
    # read as floats in [0, 1], a uint8 image was white wherever it was not 0 (make bench wrote
    # its test image so)
    rgb = unit_scale(rgb)
    out = np.empty(np.shape(rgb), dtype)
    float_to_pixels(rgb, out)
    return out


def float_to_pixels(src: np.ndarray, out: np.ndarray) -> None:
    """``out[...] = round(clip(src, 0, 1) * top)`` for float ``src`` and a uint8 / uint16
    ``out`` of the same shape (either may be a view, e.g. a rectangle of an image): what
    :func:`from_float` computes, bit for bit, so a denoised image written tile by tile
    (:func:`ihclib.infer.denoise` with ``out_dtype``) equals one converted at the end.

    In one compiled pass (:func:`ihclib.native.float_to_pixels`) where rows are contiguous,
    else in blocks of :data:`FROM_FLOAT_BLOCK` values through one small buffer: whole-array
    temporaries of a 4096 x 4096 image cost 0.6 s, mostly page faults; blocks 0.1 s."""
    top = PIXEL_TOPS[out.dtype]
    if src.shape != out.shape:
        raise ValueError(f"shapes differ: {src.shape} and {out.shape}")
    if src.size == 0:
        return
    from . import native

    if native.float_to_pixels(src, out, top):  # one compiled pass, the same bits
        return
    if src.ndim == 0:
        src, out = src.reshape(1), out.reshape(1)  # a view: written through
    # rows of the leading axis per block (a row of a 4096 px RGB image is 12 Ki values)
    per_row = src.size // src.shape[0]
    rows = max(1, FROM_FLOAT_BLOCK // per_row)
    buf = np.empty((min(rows, src.shape[0]), *src.shape[1:]), src.dtype)
    for start in range(0, src.shape[0], rows):
        part = buf[: min(rows, src.shape[0] - start)]
        np.clip(src[start : start + rows], 0.0, 1.0, out=part)
        part *= top
        np.rint(part, out=part)
        out[start : start + rows] = part  # whole numbers in range: the cast is exact


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read an RGB(A) image file; raise ImageError naming the file and the reason."""
    path = Path(path)
    arr, meta = _read_raw(path)
    rgb, alpha = _normalise_layout(arr, path)
    if rgb.dtype not in (np.uint8, np.uint16):
        if rgb.dtype == bool or not np.issubdtype(rgb.dtype, np.floating):
            raise ImageError(path, f"unsupported pixel type {rgb.dtype} (use 8- or 16-bit)")
        # floating point: scaled by the range it uses, written back as 16-bit
        top = float_scale(arr, path)
        rgb = to_float(np.asarray(rgb, np.float32) / np.float32(top))
        if alpha is not None:
            alpha = from_float(np.asarray(alpha, np.float32) / np.float32(top), np.uint16)
        return LoadedImage(rgb, np.dtype(np.uint16), alpha, str(path), meta)
    return LoadedImage(np.asarray(rgb), rgb.dtype, alpha, str(path), meta)


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file without decoding all its pixels where possible."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:  # Pillow would read a BMP that load_image refuses
        raise ImageError(path, f"unsupported extension '{ext}' (use PNG, JPEG or TIFF)")
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape
            if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
                return int(shape[1]), int(shape[2])
            return int(shape[0]), int(shape[1])
        with _pil_without_pixel_limit() as Image, Image.open(path) as im:
            return im.height, im.width
    except Exception:
        return load_image(path).shape


# ---------------------------------------------------------------- writing


def default_file_mode() -> int:
    """Permissions a plain ``open()`` would give a new file (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def atomic_write(path: str | os.PathLike, write: Callable[[str], object], suffix: str = ".tmp") -> Path:
    """Create or replace ``path`` with what ``write(tmp)`` writes to a temporary file beside it.

    The file appears complete or not at all. The temporary file (``.NAME.XXXX<suffix>``) is
    removed on every way out, KeyboardInterrupt and SystemExit (SIGTERM in the CLI) included.
    The new file gets the permissions a plain ``open()`` would give it.
    """
    path = Path(path)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
        os.close(fd)
        write(tmp)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600
        os.replace(tmp, path)
    except BaseException:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        raise
    return path



def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Create or replace a text file atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text))

def _writable_folder(folder: Path) -> str | None:
    """Why files cannot be created in ``folder`` (or the ancestor that would hold it), or None."""
    probe = folder
    while not probe.exists():
        if probe.parent == probe:
            return None
        probe = probe.parent
    if not probe.is_dir():
        return f"{probe} is a file, not a folder"
    if not os.access(probe, os.W_OK | os.X_OK):
        return f"folder {probe} is not writable"
    return None


def check_output(
    path: str | os.PathLike,
    dtype: np.dtype | type | None = None,
    has_alpha: bool = False,
    overwrite: bool = False,
) -> Path:
    """Raise ImageError if an image cannot be written to ``path``; return it as a Path.

    Everything that can be known before the work: a folder instead of a file name (also
    ``dir/``), a missing or unsupported extension, an existing file without ``overwrite``, an
    unwritable folder, and (when ``dtype`` is given) 16-bit or alpha into JPEG.
    """
    raw = os.fspath(path)
    path = Path(path)
    if raw.endswith(("/", os.sep)) or path.is_dir():
        raise ImageError(path, "is a folder; give an output file name (or use --out-dir for a folder)")
    ext = path.suffix.lower()
    if not ext:
        raise ImageError(path, "output name has no extension; end it in .png, .jpg or .tif")
    if ext not in IMAGE_EXTENSIONS:
        raise ImageError(path, f"unsupported output extension '{ext}' (use .png, .jpg or .tif)")
    if path.exists() and not overwrite:
        raise ImageError(path, "already exists (pass --overwrite to replace it)")
    if dtype is not None and ext in (".jpg", ".jpeg") and (np.dtype(dtype) != np.uint8 or has_alpha):
        raise ImageError(path, "JPEG holds only 8-bit RGB; write PNG or TIFF to keep 16-bit or alpha")
    problem = _writable_folder(path.parent)
    if problem:
        raise ImageError(path, f"cannot write: {problem}")
    return path


PNG_LEVEL = 1  # deflate level of written PNGs (Pillow's default is 6, libpng's 3)
PNG_PART_BYTES = 4 << 20  # deflate pieces of at least this much image data, one per thread
# rows filtered and deflated at a time, through one buffer per piece that stays in the core's
# cache: the whole filtered image (50 MB for 4096 px RGB) was fresh pages each time (issue 13)
PNG_BLOCK_BYTES = 1 << 20


def _adler32_combine(first: int, second: int, second_length: int) -> int:
    """The Adler-32 of two byte strings one after the other, from theirs and the second's length
    (zlib's adl32_combine: the sums of the second shift by the first's, mod 65521)."""
    base = 65521
    rem = second_length % base
    sum1 = (first & 0xFFFF) + (second & 0xFFFF) + base - 1
    sum2 = rem * (first & 0xFFFF) % base + ((first >> 16) & 0xFFFF) + ((second >> 16) & 0xFFFF) + base - rem
    sum1 = sum1 - base if sum1 >= base else sum1
    sum1 = sum1 - base if sum1 >= base else sum1
    sum2 = sum2 - (base << 1) if sum2 >= (base << 1) else sum2
    sum2 = sum2 - base if sum2 >= base else sum2
    return (sum2 << 16) | sum1


def _deflate():
    """ISA-L's zlib-compatible module (the ``isal`` package, a dependency) where it imports,
    else zlib. Both write the same format (raw deflate with sync flushes, Adler-32, CRC-32); on
    make bench's denoised 4096 x 4096 image, level 1 in two threads: 0.064 s and 26.4 MB with
    ISA-L, 0.306 s and 26.5 MB with zlib (measured on the 2-core EPYC, issue 13)."""
    try:
        from isal import isal_zlib
    except ImportError:  # e.g. a platform without its wheel: the same files, slower
        return zlib
    return isal_zlib


def png_encode_8bit(pixels: np.ndarray, level: int = PNG_LEVEL, threads: int | None = None) -> bytes:
    """An 8-bit PNG (grey, grey+alpha, RGB or RGBA) of ``pixels``: IHDR, one IDAT, IEND
    (:func:`png_parts_8bit`, joined)."""
    return b"".join(png_parts_8bit(pixels, level, threads))


def png_parts_8bit(pixels: np.ndarray, level: int = PNG_LEVEL, threads: int | None = None) -> list:
    """The bytes of an 8-bit PNG of ``pixels`` (IHDR, one IDAT, IEND) as a list of pieces, in
    order, to be written one after the other (``writelines``) rather than joined: joining
    copies the image's 30-odd MB twice or three times into fresh pages (0.1 s of a 4096 px
    write on this project's machine, issue 13).

    Written here rather than by libpng or Pillow because they compress on one core: the rows
    (each with PNG's "sub" filter, a difference to the pixel on the left) are cut into up to
    ``threads`` pieces that are filtered and deflated at once, each ended by a sync flush so
    that their streams join into one (pigz's method; numpy and the compressor release the GIL),
    with ISA-L where installed (:func:`_deflate`). On make bench's denoised 4096 x 4096 image
    with zlib: 0.45 s with 2 threads, against 0.92 s (libpng, level 1, fast filters), 1.32 s
    (libpng's defaults) and 2.4 s (Pillow's), for 26.9 MB (27.2, 26.8 and 25.4 MB); ISA-L
    deflates it about 5x faster. Each piece goes through :data:`PNG_BLOCK_BYTES` of rows at a
    time, filtered into one buffer that stays in cache (the whole filtered image was 50 MB of
    fresh pages: 0.053 -> 0.048 s warm, more in a fresh process), and its Adler-32 is taken
    there and combined (:func:`_adler32_combine`).
    """
    if pixels.dtype != np.uint8 or pixels.ndim not in (2, 3):
        raise ValueError(f"expected uint8 (H, W) or (H, W, C) pixels, got {pixels.dtype} {pixels.shape}")
    h, w = pixels.shape[:2]
    c = 1 if pixels.ndim == 2 else pixels.shape[2]
    color = {1: 0, 2: 4, 3: 2, 4: 6}[c]  # PNG colour types: grey, grey+alpha, RGB, RGBA
    rows = np.ascontiguousarray(pixels).reshape(h, w * c)
    if threads is None:
        from .backends import cpu_threads  # the cores this process may use

        threads = cpu_threads()
    parts = max(1, min(threads, h * (w * c + 1) // PNG_PART_BYTES, h))
    cuts = [h * i // parts for i in range(parts + 1)]  # row boundaries
    deflater = _deflate()
    row = w * c + 1
    block = max(1, PNG_BLOCK_BYTES // row)  # rows filtered at a time, into one buffer per piece

    def filter_and_deflate(i: int) -> tuple[list[bytes], int, int]:
        """Piece i's deflated rows (ended by a sync flush, the last by the stream's end), the
        Adler-32 of its filtered rows and their length."""
        packer = deflater.compressobj(level, deflater.DEFLATED, -15)  # raw deflate: one header for all
        filtered = np.empty((min(block, cuts[i + 1] - cuts[i]), row), np.uint8)
        filtered[:, 0] = 1  # filter type 1, sub
        out, adler = [], 1
        for start in range(cuts[i], cuts[i + 1], block):
            part = rows[start : min(start + block, cuts[i + 1])]
            buf = filtered[: len(part)]
            buf[:, 1 : c + 1] = part[:, :c]
            np.subtract(part[:, c:], part[:, :-c], out=buf[:, c + 1 :])  # modulo 256, as PNG wants
            adler = deflater.adler32(buf, adler)
            out.append(packer.compress(buf))
        out.append(packer.flush(deflater.Z_FINISH if i == parts - 1 else deflater.Z_SYNC_FLUSH))
        return out, adler, (cuts[i + 1] - cuts[i]) * row

    if parts == 1:
        done = [filter_and_deflate(0)]
    else:
        from concurrent.futures import ThreadPoolExecutor

        with ThreadPoolExecutor(parts) as pool:
            done = list(pool.map(filter_and_deflate, range(parts)))
    adler = 1
    for _, part_adler, length in done:  # the zlib stream's checksum of all the filtered rows, in order
        adler = _adler32_combine(adler, part_adler, length)
    stream = [b"\x78\x01", *(piece for pieces, _, _ in done for piece in pieces if piece), struct.pack(">I", adler)]
    header = struct.pack(">IIBBBBB", w, h, 8, color, 0, 0, 0)
    return [PNG_SIGNATURE, _png_chunk(b"IHDR", header), *_png_chunk_parts(b"IDAT", stream), _png_chunk(b"IEND", b"")]


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return b"".join(_png_chunk_parts(kind, [data]))


def _png_chunk_parts(kind: bytes, pieces: list) -> list:
    """A PNG chunk of the concatenated ``pieces`` (length, type, data, CRC) as pieces: the CRC
    runs over them one after the other, without joining them."""
    crc = _deflate().crc32(kind)
    for piece in pieces:
        crc = _deflate().crc32(piece, crc)
    return [struct.pack(">I", sum(len(p) for p in pieces)) + kind, *pieces, struct.pack(">I", crc & 0xFFFFFFFF)]


PNG_IHDR_END = 8 + 8 + 13 + 4  # signature, then the IHDR chunk: length, type, 13 bytes, CRC


def _png_with_meta(png: list, meta: ImageMeta) -> list:
    """The pieces of a PNG (:func:`png_parts_8bit`, or one ``bytes``) with pHYs / iCCP / eXIf
    chunks added after IHDR (imagecodecs writes none)."""
    chunks = b""
    dpi = meta.dpi()
    if dpi:
        ppm = [int(round(d / 0.0254)) for d in dpi]
        chunks += _png_chunk(b"pHYs", struct.pack(">IIB", ppm[0], ppm[1], 1))
    if meta.icc_profile:
        chunks += _png_chunk(b"iCCP", b"icc\x00\x00" + zlib.compress(meta.icc_profile))
    exif = _exif_bytes(meta)
    if exif:
        chunks += _png_chunk(b"eXIf", exif[6:] if exif.startswith(b"Exif\x00\x00") else exif)
    if isinstance(png, (bytes, bytearray)):
        png = [png[:PNG_IHDR_END], memoryview(png)[PNG_IHDR_END:]]
    elif len(png[0]) + len(png[1]) != PNG_IHDR_END:
        raise ValueError("expected a PNG's signature and IHDR chunk as its first two pieces")
    else:
        png = [png[0] + png[1], *png[2:]]
    return [png[0], chunks, *png[1:]]


def _exif_bytes(meta: ImageMeta, resolution_in_exif: bool = False) -> bytes | None:
    """The EXIF block to write: the input's, or one made for an orientation (and resolution)."""
    if meta.exif and not resolution_in_exif:
        return meta.exif
    if meta.orientation is None and not (resolution_in_exif and meta.resolution) and not meta.exif:
        return None
    from PIL import Image

    exif = Image.Exif()
    if meta.exif:
        exif.load(meta.exif)
    if meta.orientation is not None:
        exif[274] = meta.orientation
    if resolution_in_exif and meta.resolution:
        exif[282], exif[283] = float(meta.resolution[0]), float(meta.resolution[1])
        exif[296] = 3 if meta.unit == "cm" else 2
    return exif.tobytes()


def _write_pixels(tmp: str, pixels: np.ndarray, ext: str, meta: ImageMeta) -> None:
    if ext in (".tif", ".tiff"):
        import tifffile

        kwargs: dict = {}
        if meta.resolution and meta.unit in ("inch", "cm"):
            kwargs["resolution"] = meta.resolution
            kwargs["resolutionunit"] = "CENTIMETER" if meta.unit == "cm" else "INCH"
        if meta.icc_profile:
            kwargs["iccprofile"] = meta.icc_profile
        if meta.orientation is not None:
            kwargs["extratags"] = [(274, "H", 1, int(meta.orientation), True)]
        tifffile.imwrite(tmp, pixels, photometric="rgb", **kwargs)
        return
    if ext == ".png":
        if pixels.dtype == np.uint8:
            png = png_parts_8bit(pixels)
        else:  # 16-bit colour, which Pillow cannot write: libpng through imagecodecs
            png = _imagecodecs().png_encode(pixels, level=PNG_LEVEL)
        with open(tmp, "wb") as f:
            f.writelines(_png_with_meta(png, meta))
        return
    from PIL import Image

    kwargs = {}
    dpi = meta.dpi()
    # JFIF stores the density in 16 bits: a microscope's 101,600 dpi goes into EXIF instead
    big_for_jfif = dpi is not None and max(dpi) > 65535
    if dpi and not big_for_jfif:
        kwargs["dpi"] = dpi
    exif = _exif_bytes(meta, resolution_in_exif=big_for_jfif)
    if exif:
        kwargs["exif"] = exif
    if meta.icc_profile:
        kwargs["icc_profile"] = meta.icc_profile
    Image.fromarray(pixels).save(tmp, format="JPEG", quality=95, **kwargs)


def save_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    dtype: np.dtype | type = np.uint8,
    alpha: np.ndarray | None = None,
    overwrite: bool = False,
    meta: ImageMeta | None = None,
) -> Path:
    """Write RGB (float in [0, 1], or uint8/uint16 pixels; plus optional alpha and metadata) as
    ``dtype``, atomically: temporary file, then rename.

    An existing file is never touched unless ``overwrite`` is true, and a failed or interrupted
    write leaves whatever was there before and no temporary file. Every failure is an
    ImageError naming ``path``.
    """
    path = check_output(path, dtype, alpha is not None, overwrite)
    ext = path.suffix.lower()
    # pixels already of the type written (ihclib denoise's) are only read: no copy
    pixels = rgb if isinstance(rgb, np.ndarray) and rgb.dtype == np.dtype(dtype) else from_float(rgb, dtype)
    if alpha is not None:
        pixels = np.concatenate([pixels, alpha.astype(pixels.dtype)[..., None]], axis=-1)
    try:
        atomic_write(path, lambda tmp: _write_pixels(tmp, pixels, ext, meta or ImageMeta()), suffix=ext + ".tmp")
    except ImageError:
        raise
    except Exception as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc).strip().splitlines()[0]
        raise ImageError(path, f"cannot write ({reason})") from None
    return path

