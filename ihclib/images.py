"""Reading and writing image files: one place for formats, dtypes, alpha and errors.

Every image inside the study is float32 RGB in [0, 1], shape (H, W, 3). Files may be PNG,
JPEG or TIFF, 8- or 16-bit, RGB or RGBA. Grayscale files are *refused* with a clear message:
the models are trained on colour IHC (hematoxylin + DAB), and a grayscale image is nearly
always a wrong file, not something to guess at (convert it to RGB yourself if you mean it).
"""

from __future__ import annotations

import os
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".tif", ".tiff")


class ImageError(ValueError):
    """A file that cannot be used, with the file and the reason in one line."""

    def __init__(self, path: str | os.PathLike, reason: str):
        self.path = str(path)
        self.reason = reason
        super().__init__(f"{self.path}: {reason}")


@dataclass
class LoadedImage:
    """An image as read from disk: float RGB for the study plus what is needed to write it back."""

    rgb: np.ndarray  # float32 (H, W, 3) in [0, 1]
    dtype: np.dtype  # uint8 or uint16, as stored
    alpha: np.ndarray | None  # (H, W) in the stored dtype, or None
    path: str

    @property
    def shape(self) -> tuple[int, int]:
        return self.rgb.shape[:2]


def _is_png16_colour(path: Path) -> bool:
    """True for a 16-bit RGB/RGBA PNG, which Pillow would silently decode as 8-bit."""
    with open(path, "rb") as f:
        head = f.read(26)
    # signature (8) + IHDR length and type (8) + width, height (8) + bit depth + colour type
    return len(head) == 26 and head[:8] == b"\x89PNG\r\n\x1a\n" and head[12:16] == b"IHDR" and head[24] == 16 and head[25] in (2, 6)


def _imagecodecs():
    try:
        import imagecodecs
    except ImportError:
        raise RuntimeError("16-bit colour PNG needs the imagecodecs package (pip install imagecodecs)") from None
    return imagecodecs


def _read_raw(path: Path) -> np.ndarray:
    """Decode a file to an ndarray, turning every decoder failure into ImageError."""
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

                return np.asarray(tifffile.imread(path))
            if ext == ".png" and _is_png16_colour(path):
                return np.asarray(_imagecodecs().png_decode(path.read_bytes()))
            from PIL import Image

            with Image.open(path) as im:
                im.load()  # forces a full decode so truncated files fail here
                if im.mode in ("P", "PA"):
                    im = im.convert("RGBA" if "transparency" in im.info or im.mode == "PA" else "RGB")
                elif im.mode in ("CMYK", "YCbCr", "LAB", "HSV"):
                    im = im.convert("RGB")
                elif im.mode == "I;16B":
                    im = im.convert("I;16")
                return np.asarray(im)
    except ImageError:
        raise
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


def to_float(arr: np.ndarray) -> np.ndarray:
    """Integer or float pixels to float32 in [0, 1]."""
    if arr.dtype == np.uint8:
        return arr.astype(np.float32) / 255.0
    if arr.dtype == np.uint16:
        return arr.astype(np.float32) / 65535.0
    if np.issubdtype(arr.dtype, np.floating):
        return np.clip(arr, 0.0, 1.0).astype(np.float32)
    raise TypeError(f"unsupported pixel type {arr.dtype}")


def from_float(rgb: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Float in [0, 1] back to uint8 / uint16 with rounding."""
    dtype = np.dtype(dtype)
    top = {np.dtype(np.uint8): 255.0, np.dtype(np.uint16): 65535.0}[dtype]
    return np.round(np.clip(rgb, 0.0, 1.0) * top).astype(dtype)


def load_image(path: str | os.PathLike) -> LoadedImage:
    """Read an RGB(A) image file; raise ImageError naming the file and the reason."""
    path = Path(path)
    arr = _read_raw(path)
    rgb, alpha = _normalise_layout(arr, path)
    if rgb.dtype not in (np.uint8, np.uint16):
        if rgb.dtype == bool or np.issubdtype(rgb.dtype, np.integer):
            raise ImageError(path, f"unsupported pixel type {rgb.dtype} (use 8- or 16-bit)")
        # float TIFFs are taken as [0, 1] and written back as 16-bit
        return LoadedImage(to_float(rgb), np.dtype(np.uint16), alpha, str(path))
    return LoadedImage(to_float(rgb), rgb.dtype, alpha, str(path))


def read_rgb(path: str | os.PathLike) -> np.ndarray:
    """Float32 RGB (H, W, 3) in [0, 1] from a file (alpha dropped)."""
    return load_image(path).rgb


def image_size(path: str | os.PathLike) -> tuple[int, int]:
    """(height, width) of an image file without decoding all its pixels where possible."""
    path = Path(path)
    ext = path.suffix.lower()
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            with tifffile.TiffFile(path) as tf:
                shape = tf.series[0].shape
            if len(shape) == 3 and shape[0] in (3, 4) and shape[-1] not in (3, 4):
                return int(shape[1]), int(shape[2])
            return int(shape[0]), int(shape[1])
        from PIL import Image

        with Image.open(path) as im:
            return im.height, im.width
    except Exception:
        return load_image(path).shape


def default_file_mode() -> int:
    """Permissions a plain ``open()`` would give a new file (0666 minus the umask)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def save_image(
    path: str | os.PathLike,
    rgb: np.ndarray,
    dtype: np.dtype | type = np.uint8,
    alpha: np.ndarray | None = None,
    overwrite: bool = False,
) -> Path:
    """Write float RGB (plus optional alpha) atomically: temporary file, then rename.

    An existing file is never touched unless ``overwrite`` is true, and a failed write leaves
    whatever was there before.
    """
    path = Path(path)
    if path.exists() and not overwrite:
        raise ImageError(path, "already exists (pass overwrite=True / --overwrite to replace it)")
    ext = path.suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        raise ImageError(path, f"unsupported output extension '{ext}' (use .png, .jpg or .tif)")
    pixels = from_float(rgb, dtype)
    if alpha is not None:
        pixels = np.concatenate([pixels, alpha.astype(pixels.dtype)[..., None]], axis=-1)
    if ext in (".jpg", ".jpeg") and (pixels.dtype != np.uint8 or pixels.shape[-1] == 4):
        raise ImageError(path, "JPEG holds only 8-bit RGB; write PNG or TIFF to keep 16-bit or alpha")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=ext + ".tmp", dir=path.parent)
    os.close(fd)
    try:
        if ext in (".tif", ".tiff"):
            import tifffile

            tifffile.imwrite(tmp, pixels, photometric="rgb")
        else:
            from PIL import Image

            if pixels.dtype == np.uint16:
                # neither PIL nor imageio's PIL plugin writes 16-bit colour PNG
                Path(tmp).write_bytes(_imagecodecs().png_encode(pixels))
            else:
                Image.fromarray(pixels).save(tmp, format="PNG" if ext == ".png" else "JPEG", quality=95)
        os.chmod(tmp, default_file_mode())  # mkstemp creates 0600; give the usual permissions
        os.replace(tmp, path)
    except Exception as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, ImageError):
            raise
        raise ImageError(path, f"cannot write ({exc})") from None
    return path
