"""Whole slides (ihclib.slides): lazy reading, tissue mask, block seams, pyramidal OME-TIFF output."""

from __future__ import annotations

import numpy as np
import pytest
import tifffile

from helpers import keras_model
from ihclib import slides
from ihclib.cli import main
from ihclib.images import ImageError, from_float, to_float
from ihclib.infer import denoise

MPP = 0.25  # um per pixel of the synthetic slides (40,000 px per cm)


def synthetic_slide(h: int = 600, w: int = 1100, seed: int = 0) -> np.ndarray:
    """White glass (value 240) with impulse noise, and stained 'tissue' only in the left part
    (x < 400), so blocks that start at x >= 512 hold background only."""
    rng = np.random.default_rng(seed)
    img = np.full((h, w, 3), 240, np.uint8)
    img[:, :400] = rng.integers(60, 200, (h, min(w, 400), 3), dtype=np.uint8)
    hits = rng.random((h, w, 3))
    img[hits < 0.05] = 0
    img[hits > 0.95] = 255
    return img


def write_pyramid_tiff(path, img: np.ndarray, ome: bool = False) -> None:
    """A tiled two-level pyramid (level 0 + one SubIFD) with the resolution tags, as scanners write."""
    with tifffile.TiffWriter(path, ome=ome) as tw:
        tw.write(img, tile=(256, 256), photometric="rgb", subifds=1, resolution=(1e4 / MPP, 1e4 / MPP),
                 resolutionunit="CENTIMETER", metadata={"axes": "YXS"} if ome else None)
        tw.write(img[::2, ::2], tile=(256, 256), photometric="rgb", subfiletype=1)


@pytest.fixture(scope="module")
def slide(tmp_path_factory):
    path = tmp_path_factory.mktemp("slide") / "slide.tif"
    img = synthetic_slide()
    write_pyramid_tiff(path, img)
    return path, img


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    folder = tmp_path_factory.mktemp("models")
    return {"identity": keras_model(folder / "identity.keras"), "half": keras_model(folder / "half.keras", weight=0.5),
            "nan": keras_model(folder / "nan.keras", weight=float("nan")), "blur": blur_model(folder / "blur.keras")}


def blur_model(path) -> str:
    """A 5x5 convolution with random weights: a model whose output depends on neighbours, so
    block seams would show if the halo were missing."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((None, None, 3))
    conv = keras.layers.Conv2D(3, 5, padding="same", use_bias=False)
    model = keras.Model(inp, conv(inp))
    w = np.random.default_rng(1).uniform(0, 1, (5, 5, 3, 3)).astype(np.float32)
    conv.set_weights([w / w.sum(axis=(0, 1, 2), keepdims=True)])
    model.save(path)
    return str(path)


def job(slide_path, model: str, **kw) -> slides.BlockJob:
    opts = dict(block_size=512, halo=32, tile_size=128, overlap=32, batch_size=4)
    return slides.BlockJob(str(slide_path), model, **{**opts, **kw})


# ---------------------------------------------------------------- reading


def test_which_files_are_slides(tmp_path, slide):
    tifffile.imwrite(tmp_path / "strip.tif", synthetic_slide(64, 64), photometric="rgb")
    assert slides.is_slide(slide[0])
    assert not slides.is_slide(tmp_path / "strip.tif")  # a plain TIFF loads whole, as before
    assert slides.is_slide(tmp_path / "x.svs") and slides.is_slide(tmp_path / "x.ome.tiff")
    assert slides.slide_output_name("a/b.svs", "_d") == "b_d.ome.tif"
    assert slides.slide_output_name("b.ome.tiff", "_d") == "b_d.ome.tif"


@pytest.mark.parametrize("reader", ["tifffile", "openslide"])
def test_lazy_read_matches_pixels_and_pixel_size(slide, reader):
    path, img = slide
    src = slides.open_slide(path, reader)
    try:
        assert (src.height, src.width) == img.shape[:2]
        np.testing.assert_array_equal(src.read(100, 300, 250, 500), img[100:350, 300:800])
        assert src.meta.microns_per_pixel() == pytest.approx((MPP, MPP))
    finally:
        src.close()


def test_aperio_svs_through_openslide(tmp_path):
    img = synthetic_slide(300, 400)
    tifffile.imwrite(tmp_path / "s.svs", img, tile=(256, 256), photometric="rgb", metadata=None,
                     description="Aperio Image Library v10.0.0\n400x300 (256x256) RGB|AppMag = 40|MPP = 0.5000")
    src = slides.open_slide(tmp_path / "s.svs")
    assert isinstance(src, slides.OpenSlideSource)
    np.testing.assert_array_equal(src.read(0, 0, 300, 400), img)
    assert src.meta.microns_per_pixel() == pytest.approx((0.5, 0.5))


def test_ome_physical_size_read_when_no_resolution_tags(tmp_path):
    img = synthetic_slide(300, 300)
    tifffile.imwrite(tmp_path / "a.ome.tif", img, tile=(256, 256), photometric="rgb",
                     metadata={"axes": "YXS", "PhysicalSizeX": 0.5, "PhysicalSizeY": 0.5})
    assert slides.open_slide(tmp_path / "a.ome.tif").meta.microns_per_pixel() == pytest.approx((0.5, 0.5))


def test_bad_slides_named_with_reason(tmp_path):
    (tmp_path / "text.svs").write_text("not a slide\n")
    with pytest.raises(ImageError, match="text.svs: cannot read as a slide"):
        slides.open_slide(tmp_path / "text.svs")
    tifffile.imwrite(tmp_path / "gray.tif", np.zeros((300, 300), np.uint8), tile=(256, 256))
    with pytest.raises(ImageError, match="gray.tif: grayscale slide"):
        slides.open_slide(tmp_path / "gray.tif")
    with pytest.raises(ImageError, match="no such file"):
        slides.open_slide(tmp_path / "missing.tif")


# ---------------------------------------------------------------- mask and blocks


def test_tissue_mask_ignores_impulses_on_glass():
    img = synthetic_slide(64, 64)
    img[:, :32] = 240  # glass with impulses only on the left half
    hits = np.random.default_rng(3).random((64, 64, 3))
    img[hits < 0.2] = 0  # 20 % black impulses
    img[:, 32:] = 150  # tissue on the right half
    cells = slides.tissue_cells(img)
    assert cells.shape == (4, 4) and not cells[:, :2].any() and cells[:, 2:].all()


def test_background_blocks_copied_tissue_blocks_denoised(tmp_path, slide, models):
    path, img = slide
    report = slides.denoise_slide(job(path, models["half"]), tmp_path / "o.ome.tif", progress=False)
    out = tifffile.imread(tmp_path / "o.ome.tif")
    # blocks of 512: columns 0-511 hold tissue (x < 400), 512-1023 and 1024-1099 glass only
    np.testing.assert_array_equal(out[:, 512:], img[:, 512:])
    expected = to_float(img[:, :512]) * 0.5 * 255  # within the float32 rounding of .5 to 8 bits
    np.testing.assert_allclose(out[:, :512], expected, atol=0.51)
    assert (report.blocks, report.skipped) == (6, 4)
    assert report.skipped_share == pytest.approx(4 / 6)


def test_blocks_match_the_in_memory_path(tmp_path, slide, models):
    """A model with a 5x5 footprint: the halo makes block seams invisible (<= 1 grey level,
    the rounding to 8 bits) against denoising the whole image at once."""
    path, img = slide
    slides.denoise_slide(job(path, models["blur"], tissue_od=None), tmp_path / "o.ome.tif", progress=False)
    from ihclib.infer import load_model

    whole = from_float(denoise(load_model(models["blur"])[0], img, tile_size=128, overlap=32, batch_size=4), np.uint8)
    out = tifffile.imread(tmp_path / "o.ome.tif")
    assert np.abs(out.astype(int) - whole.astype(int)).max() <= 1


# ---------------------------------------------------------------- the written pyramid


def test_output_is_a_pyramid_with_the_resolution(tmp_path, slide, models):
    path, img = slide
    report = slides.denoise_slide(job(path, models["identity"]), tmp_path / "o.ome.tif", progress=False)
    with tifffile.TiffFile(tmp_path / "o.ome.tif") as tf:
        assert tf.is_ome
        levels = tf.series[0].levels
        assert [lv.shape for lv in levels] == [(600, 1100, 3), (300, 550, 3), (150, 275, 3), (75, 138, 3)]
        assert report.levels == len(levels) == 4
        np.testing.assert_array_equal(levels[0].asarray(), img)
        np.testing.assert_array_equal(levels[1].asarray(), slides.half(img))
        np.testing.assert_array_equal(levels[2].asarray(), slides.half(slides.half(img)))
        page = tf.pages.first
        assert page.is_tiled and page.tilewidth == slides.OUTPUT_TILE
        assert page.tags["XResolution"].value[0] / page.tags["XResolution"].value[1] == pytest.approx(1e4 / MPP)
        assert page.tags["ResolutionUnit"].value == 3  # centimetre
        assert 'PhysicalSizeX="0.25"' in tf.ome_metadata
    assert slides.open_slide(tmp_path / "o.ome.tif").meta.microns_per_pixel() == pytest.approx((MPP, MPP))


def test_failure_leaves_nothing_and_keeps_the_old_file(tmp_path, slide, models):
    path, _ = slide
    dst = tmp_path / "o.ome.tif"
    dst.write_bytes(b"the user's file")
    with pytest.raises(ValueError, match="NaN"):
        slides.denoise_slide(job(path, models["nan"]), dst, overwrite=True, progress=False)
    assert dst.read_bytes() == b"the user's file"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o.ome.tif"]  # no temp file, no scratch folder
    with pytest.raises(ImageError, match="already exists"):
        slides.denoise_slide(job(path, models["identity"]), dst, progress=False)


# ---------------------------------------------------------------- the command


def test_cli_denoises_a_slide_and_a_png_together(tmp_path, slide, models, capsys):
    from ihclib.images import save_image

    path, img = slide
    save_image(tmp_path / "small.png", to_float(img[:64, :64]))
    args = ["denoise", str(path), str(tmp_path / "small.png"), "--out-dir", str(tmp_path / "out"),
            "--model", models["identity"], "--tile-size", "128", "--overlap", "32", "--workers", "0",
            "--block-size", "512"]
    assert main(args) == 0
    out = capsys.readouterr()
    np.testing.assert_array_equal(tifffile.imread(tmp_path / "out" / "slide_denoised.ome.tif"), img)
    assert (tmp_path / "out" / "small_denoised.png").exists()
    line = next(ln for ln in out.out.splitlines() if "slide_denoised.ome.tif" in ln)
    for part in ("1100x600", "4 levels", "background", "MP/s", "peak RSS"):
        assert part in line, line


def test_cli_bad_slide_is_one_line_and_others_go_on(tmp_path, slide, models, capsys):
    (tmp_path / "bad.svs").write_text("not a slide\n")
    args = ["denoise", str(tmp_path / "bad.svs"), str(slide[0]), "--out-dir", str(tmp_path), "--workers", "0",
            "--model", models["identity"], "--tile-size", "128", "--block-size", "512"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "bad.svs: cannot read as a slide" in err and "Traceback" not in err
    assert (tmp_path / "slide_denoised.ome.tif").exists() and not (tmp_path / "bad_denoised.ome.tif").exists()


def test_cli_refuses_bad_block_size(tmp_path, slide, models, capsys):
    args = ["denoise", str(slide[0]), "-o", str(tmp_path / "o.ome.tif"), "--workers", "0",
            "--model", models["identity"], "--block-size", "500"]
    assert main(args) == 2
    assert "block size must be a multiple of 256" in capsys.readouterr().err


def test_progress_bar_counts_tiles_and_megapixels(tmp_path, slide, models, capsys):
    path, _ = slide
    slides.denoise_slide(job(path, models["identity"]), tmp_path / "o.ome.tif", progress=True)
    err = capsys.readouterr().err
    # 600x1100 px in 256 px tiles: 3 rows x 5 columns
    assert "slide.tif" in err and "15/15" in err and "MP/s" in err, err


def test_a_worker_sees_a_model_or_slide_written_again_under_the_same_name(tmp_path):
    # workers of an existing cluster (--scheduler) outlive a run and kept what they had opened
    # by path: a model retrained into the same file, or a slide exported again, went unseen
    import os

    def saved_later(path):
        st = os.stat(path)  # as a file written a second later
        os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))

    slide_path, model_path = tmp_path / "slide.tif", tmp_path / "model.keras"
    first, second = synthetic_slide(300, 300, seed=1), synthetic_slide(300, 300, seed=2)
    write_pyramid_tiff(slide_path, first)
    keras_model(model_path, weight=0.5)
    b = job(slide_path, str(model_path), block_size=256, tile_size=128)
    out, denoised = slides.denoise_block(b, 0, 0)
    assert denoised
    np.testing.assert_allclose(out, to_float(first[:256, :256]) * 0.5 * 255, atol=0.51)

    keras_model(model_path, weight=1.0)
    saved_later(model_path)
    np.testing.assert_allclose(slides.denoise_block(b, 0, 0)[0], first[:256, :256], atol=0.51)

    write_pyramid_tiff(slide_path, second)
    saved_later(slide_path)
    np.testing.assert_allclose(slides.denoise_block(b, 0, 0)[0], second[:256, :256], atol=0.51)
    # one model and one open slide per file: the earlier ones were let go (and closed)
    assert sum(k[0] == str(model_path) for k in slides._MODELS) == 1
    assert sum(k[0] == str(slide_path) for k in slides._SOURCES) == 1
    # another reader of the same version is kept beside it, not closed in its place
    auto = slides._source(b)
    slides._source(job(slide_path, str(model_path), reader="tifffile"))
    assert slides._source(b) is auto and auto.read(0, 0, 2, 2).shape == (2, 2, 3)
