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

from ihclib import images
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


def test_the_fast_path_reads_what_pillow_reads(tmp_path, spng_calls):
    paths = _write_cases(tmp_path)
    for path in paths:
        assert images._png_for_imagecodecs(path.read_bytes()), path.name
        got, want = images._read_raw(path), _pillow_only(path)
        assert got[0].dtype == want[0].dtype and np.array_equal(got[0], want[0]), path.name
        assert got[1] == want[1], path.name
    assert len(spng_calls) == len(paths)  # each one decoded by libspng
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
