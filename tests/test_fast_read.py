"""8-bit RGB(A) PNGs and RGB JPEGs are decoded by libspng and libjpeg-turbo through imagecodecs
instead of Pillow: faster, and without the GIL, so ``ihclib denoise`` traces its model meanwhile
(issue 13). Pillow stays the reference: the same pixels and metadata, and every file the fast
path is not sure of goes to Pillow."""

from __future__ import annotations

import struct
import zlib

import imagecodecs
import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from ihclib import images, native
from ihclib.images import ImageError, ImageMeta, load_image, save_image


def _pillow_only(path, fast: str = "_read_png_fast"):
    """What the Pillow path reads (the reference): ``images.<fast>`` turned off for one read."""
    reader = getattr(images, fast)
    setattr(images, fast, lambda p: None)
    try:
        return images._read_raw(path)
    finally:
        setattr(images, fast, reader)


def _counted_calls(monkeypatch, name: str) -> list[int]:
    """The sizes of the files ``imagecodecs.<name>`` decodes from now on."""
    calls = []
    decode = getattr(imagecodecs, name)

    def counted(data, *args, **kwargs):
        calls.append(len(data))
        return decode(data, *args, **kwargs)

    monkeypatch.setattr(imagecodecs, name, counted)
    return calls


@pytest.fixture
def spng_calls(monkeypatch):
    return _counted_calls(monkeypatch, "spng_decode")


def _pixels(channels=3, seed=0):
    return np.random.default_rng(seed).integers(0, 256, (37, 53, channels), dtype=np.uint8)


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _before_iend(png: bytes, chunk: bytes) -> bytes:
    """``png`` with ``chunk`` inserted after its pixels (before IEND, the last 12 bytes)."""
    return png[:-12] + chunk + png[-12:]


def _exif_with_orientation(value: int) -> bytes:
    exif = Image.Exif()
    exif[274] = value
    return exif.tobytes()


def _write_cases(folder):
    """PNGs the fast path takes: plain, RGBA, and with metadata ahead of the pixels."""
    text = PngImagePlugin.PngInfo()
    text.add_text("Software", "a scanner")
    cases = {"plain": ({}, 3), "rgba": ({}, 4), "dpi": ({"dpi": (300, 300)}, 3),
             "exif": ({"exif": _exif_with_orientation(6)}, 3), "text": ({"pnginfo": text}, 3),
             "icc": ({"icc_profile": b"not a real profile, kept as it is " * 4}, 3)}
    for name, (kwargs, channels) in cases.items():
        Image.fromarray(_pixels(channels)).save(folder / f"{name}.png", **kwargs)
    meta = ImageMeta((4000.0, 4000.0), "cm", 3, None, None)
    save_image(folder / "ours.png", _pixels() / 255.0, meta=meta)  # ihclib's own writer
    return sorted(folder.glob("*.png"))


@pytest.fixture
def inflated(monkeypatch):
    """The files :func:`ihclib.images._png_inflated` decoded (ISA-L and the compiled filters)."""
    calls = []
    decode = images._png_inflated

    def counted(data):
        pixels = decode(data)
        if pixels is not None:
            calls.append(len(data))
        return pixels

    monkeypatch.setattr(images, "_png_inflated", counted)
    return calls


def test_the_fast_path_reads_what_pillow_reads(tmp_path, spng_calls, inflated):
    paths = _write_cases(tmp_path)
    for path in paths:
        assert images._png_for_imagecodecs(path.read_bytes()), path.name
        got, want = images._read_raw(path), _pillow_only(path)
        assert got[0].dtype == want[0].dtype and np.array_equal(got[0], want[0]), path.name
        assert got[1] == want[1], path.name
    # each one decoded by ISA-L and the compiled filters where they are here, else by libspng
    assert len(inflated) == (len(paths) if native.available() else 0)
    assert len(spng_calls) + len(inflated) == len(paths)
    assert images._read_raw(tmp_path / "exif.png")[1].orientation == 6
    assert images._read_raw(tmp_path / "ours.png")[1].orientation == 3


def test_pngs_the_fast_path_is_not_sure_of_go_to_pillow(tmp_path, spng_calls):
    rgb = _pixels()
    plain = tmp_path / "plain.png"
    Image.fromarray(rgb).save(plain)
    data = plain.read_bytes()
    # metadata after the pixels: only Pillow's full read finds it
    (tmp_path / "exif_after.png").write_bytes(_before_iend(data, _chunk(b"eXIf", _exif_with_orientation(8)[6:])))
    xmp = b'<x:xmpmeta><rdf:Description tiff:Orientation="5"/></x:xmpmeta>'
    (tmp_path / "xmp_after.png").write_bytes(
        _before_iend(data, _chunk(b"iTXt", b"XML:com.adobe.xmp\x00\x00\x00\x00\x00" + xmp)))
    Image.fromarray(rgb).save(tmp_path / "trns.png", transparency=(1, 2, 3))
    Image.fromarray(rgb[..., 0]).save(tmp_path / "grey.png")
    Image.fromarray(rgb).convert("P").save(tmp_path / "palette.png")
    (tmp_path / "rgb16.png").write_bytes(imagecodecs.png_encode(rgb.astype(np.uint16) * 257))
    for name in ("exif_after", "xmp_after", "trns", "grey", "palette", "rgb16"):
        assert not images._png_for_imagecodecs((tmp_path / f"{name}.png").read_bytes()), name
    assert load_image(tmp_path / "exif_after.png").meta.orientation == 8
    assert load_image(tmp_path / "xmp_after.png").meta.orientation == 5
    assert load_image(tmp_path / "rgb16.png").dtype == np.uint16
    np.testing.assert_array_equal(np.round(load_image(tmp_path / "trns.png").rgb * 255), rgb)
    assert spng_calls == []  # none of them through libspng (16 bit: libpng, as before)


def test_damaged_pngs_are_named_as_before(tmp_path, spng_calls):
    Image.fromarray(_pixels()).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[:300])
    assert not images._png_for_imagecodecs(data[:300])  # a chunk runs past the end
    # whole chunks, but pixel data that is not zlib: libspng refuses it, Pillow says why
    start = data.index(b"IDAT") - 4
    length = struct.unpack_from(">I", data, start)[0]
    garbage = bytes(range(256)) * (length // 256) + bytes(length % 256)
    (tmp_path / "garbage.png").write_bytes(data[:start] + _chunk(b"IDAT", garbage) + data[start + 12 + length:])
    assert images._png_for_imagecodecs((tmp_path / "garbage.png").read_bytes())
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "cut.png")
    with pytest.raises(ImageError) as raised:
        load_image(tmp_path / "garbage.png")
    assert "garbage.png" in str(raised.value) and str(raised.value) == str(_error(lambda: _pillow_only(tmp_path / "garbage.png")))
    assert len(spng_calls) == 1  # tried on the garbage, then left to Pillow


def _paeth(a: int, b: int, c: int) -> int:
    p = a + b - c
    pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
    return a if pa <= pb and pa <= pc else b if pb <= pc else c


def _filtered_png(pixels: np.ndarray, types: list[int], interlace: int = 0) -> bytes:
    """An 8-bit RGB(A) PNG of ``pixels`` whose row y is filtered with ``types[y]``, as the PNG
    specification (section 9) writes each filter: plain Python, the reference."""
    h, w, c = pixels.shape
    rows, out = pixels.reshape(h, w * c).astype(int), []
    for y, kind in enumerate(types):
        cur, up = rows[y], rows[y - 1] if y else np.zeros(w * c, int)
        left, upleft = np.r_[np.zeros(c, int), cur[:-c]], np.r_[np.zeros(c, int), up[:-c]]
        guess = {0: 0 * cur, 1: left, 2: up, 3: (left + up) // 2,
                 4: np.array([_paeth(*abc) for abc in zip(left, up, upleft)], int)}.get(kind, 0 * cur)
        out.append(bytes([kind]) + ((cur - guess) % 256).astype(np.uint8).tobytes())
    header = struct.pack(">IIBBBBB", w, h, 8, 2 if c == 3 else 6, 0, 0, interlace)
    return (images.PNG_SIGNATURE + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(b"".join(out)))
            + _chunk(b"IEND", b""))


needs_native = pytest.mark.skipif(not native.available(), reason="no compiled ihclib.native here")


@needs_native
@pytest.mark.parametrize("channels", [3, 4])
@pytest.mark.parametrize("width", [1, 2, 53, 64])
def test_every_png_filter_is_undone_as_libspng_and_pillow_undo_it(channels, width):
    rng = np.random.default_rng(width)
    pixels = rng.integers(0, 256, (40, width, channels), dtype=np.uint8)
    pixels[5:9] = pixels[4]  # flat runs, where filtered bytes are zero
    types = [4, 3, 1, 2, 0, *rng.integers(0, 5, 35)]  # each type on the first row (no row above) too
    for first in range(5):
        data = _filtered_png(pixels, [first, *types[1:]])
        got = images._png_inflated(data)
        assert got is not None and got.dtype == np.uint8 and got.shape == pixels.shape
        np.testing.assert_array_equal(got, pixels)
        np.testing.assert_array_equal(got, imagecodecs.spng_decode(data))


@needs_native
@pytest.mark.parametrize("width", [1, 21, 64, 70])
def test_filters_undone_in_place_give_the_same_pixels(width):
    rng = np.random.default_rng(width)
    pixels = rng.integers(0, 256, (30, width, 3), dtype=np.uint8)
    types = [*range(5), *rng.integers(0, 5, 25)]
    raw = zlib.decompress(_filtered_png(pixels, types)[41:-16])  # IDAT's data (one chunk), inflated
    apart = native.png_unfilter(raw, 30, width, 3)  # bytes: into a new array
    buffer = np.frombuffer(raw, np.uint8).copy()
    in_place = native.png_unfilter(buffer, 30, width, 3)  # a writable array: in place
    np.testing.assert_array_equal(apart, pixels)
    np.testing.assert_array_equal(in_place, pixels)
    assert np.shares_memory(in_place, buffer)
    bad = np.frombuffer(raw, np.uint8).copy()
    bad[5 * (width * 3 + 1)] = 7  # row 5's filter type: none of the five
    assert native.png_unfilter(bad, 30, width, 3) is None


@needs_native
def test_the_inflated_path_leaves_anything_amiss_to_libspng_and_pillow(tmp_path):
    pixels = _pixels()
    good = _filtered_png(pixels, [1] * len(pixels))
    assert np.array_equal(images._png_inflated(good), pixels)
    start = good.index(b"IDAT") - 4
    bad_crc = good[: start + len(good[start:]) - 12 - 4] + b"\0\0\0\0" + good[-12:]  # the IDAT's CRC
    assert bad_crc != good and images._png_inflated(bad_crc) is None
    assert images._png_inflated(_filtered_png(pixels, [1] * 10 + [5] + [1] * 26)) is None  # no filter type 5
    assert images._png_inflated(good[:-12 - 20] + good[-12:]) is None  # the IDAT cut short
    rows = _filtered_png(pixels[:-1], [1] * (len(pixels) - 1))  # a row fewer than its header says
    header = struct.pack(">II", pixels.shape[1], len(pixels)) + rows[24:29]
    short = rows[:8] + _chunk(b"IHDR", header) + rows[33:]
    assert images._png_inflated(short) is None
    with native.disabled():
        assert images._png_inflated(good) is None  # libspng reads it as before
    # an interlaced PNG (Adam7): not this path (Pillow's files, read as before)
    assert images._png_inflated(_filtered_png(pixels, [0] * len(pixels), interlace=1)) is None
    # such a file is read as before this path: libspng, then Pillow
    (tmp_path / "crc.png").write_bytes(bad_crc)
    np.testing.assert_array_equal(load_image(tmp_path / "crc.png").pixels, imagecodecs.spng_decode(bad_crc))


def _error(read):
    with pytest.raises(ImageError) as raised:
        read()
    return raised.value


def test_a_png_with_broken_pixel_data_is_an_error_not_a_black_image(tmp_path):
    # before: Pillow's decode error was raised inside the metadata's getexif, ignored there, and
    # the second load returned the pixels it had (zeros): exit 0 with a black image
    Image.fromarray(_pixels()).save(tmp_path / "whole.png")
    data = (tmp_path / "whole.png").read_bytes()
    start = data.index(b"IDAT") - 4
    length = struct.unpack_from(">I", data, start)[0]
    broken = data[:start] + _chunk(b"IDAT", bytes(length)) + data[start + 12 + length:]  # zeros: no zlib stream
    (tmp_path / "broken.png").write_bytes(broken)
    with pytest.raises(ImageError, match="broken.png: cannot decode as PNG image"):
        load_image(tmp_path / "broken.png")


# ---------------------------------------------------------------- JPEG


@pytest.fixture
def jpeg_calls(monkeypatch):
    return _counted_calls(monkeypatch, "jpeg8_decode")


def _pillow_only_jpeg(path):
    return _pillow_only(path, "_read_jpeg_fast")


def _ihc_like(h=96, w=120):
    """Smooth stain-like colours with specks: something a JPEG codec works on."""
    y, x = np.mgrid[:h, :w] / 16.0
    rgb = np.stack([np.sin(x) * 60 + 170, np.cos(y) * 50 + 140, np.sin(x + y) * 40 + 120], -1)
    rgb[np.random.default_rng(0).random((h, w)) < 0.05] = 255
    return np.clip(rgb, 0, 255).astype(np.uint8)


def test_the_fast_jpeg_path_reads_what_pillow_reads(tmp_path, jpeg_calls):
    from PIL import ImageFile

    paths = []
    for sub in (0, 1, 2):  # 4:4:4, 4:2:2, 4:2:0
        for progressive in (False, True):
            path = tmp_path / f"s{sub}_p{int(progressive)}.jpg"
            ImageFile.MAXBLOCK = max(ImageFile.MAXBLOCK, 1 << 20)  # Pillow's progressive writer needs room
            Image.fromarray(_ihc_like()).save(path, quality=85, subsampling=sub, progressive=progressive)
            paths.append(path)
    meta = tmp_path / "meta.jpg"
    Image.fromarray(_ihc_like()).save(meta, quality=90, dpi=(300, 300), exif=_exif_with_orientation(6),
                                      icc_profile=b"not a real profile " * 4)
    paths.append(meta)
    for path in paths:
        got, want = images._read_raw(path), _pillow_only_jpeg(path)
        assert got[0].shape == want[0].shape and np.array_equal(got[0], want[0]), path.name
        assert got[1] == want[1], path.name
    assert len(jpeg_calls) == len(paths)  # each one decoded by imagecodecs
    assert load_image(meta).meta.orientation == 6


def test_jpegs_the_fast_path_is_not_sure_of_go_to_pillow(tmp_path, jpeg_calls):
    rgb = _ihc_like()
    whole = tmp_path / "whole.jpg"
    Image.fromarray(rgb).save(whole, quality=90)
    data = whole.read_bytes()
    # cut short: imagecodecs would return the missing rows grey, without an error; Pillow says
    # truncated (or, with only the end marker missing, may read all the rows there are)
    (tmp_path / "half.jpg").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="truncated"):
        load_image(tmp_path / "half.jpg")
    (tmp_path / "no_end_marker.jpg").write_bytes(data[:-2])
    try:
        want = _pillow_only_jpeg(tmp_path / "no_end_marker.jpg")[0]
    except ImageError as exc:
        with pytest.raises(ImageError, match=str(exc).split(": ", 1)[1][:20]):
            load_image(tmp_path / "no_end_marker.jpg")
    else:
        np.testing.assert_array_equal(images._read_raw(tmp_path / "no_end_marker.jpg")[0], want)
    (tmp_path / "trailing.jpg").write_bytes(data + b"trailing bytes")  # read, by Pillow
    np.testing.assert_array_equal(load_image(tmp_path / "trailing.jpg").rgb, load_image(whole).rgb)
    Image.fromarray(rgb).convert("CMYK").save(tmp_path / "cmyk.jpg")
    assert load_image(tmp_path / "cmyk.jpg").rgb.shape == rgb.shape
    assert jpeg_calls == [len(data)]  # only the whole file, read as the reference above
