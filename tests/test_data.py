import numpy as np
import pytest
from PIL import Image

from ihclib.cli import main
from ihclib.data import DataError, default_image, make_dataset, scan_folder
from ihclib.images import ImageError, from_float, load_image, save_image


def _write(path, h=80, w=100, mode="RGB", dtype=np.uint8, seed=0):
    rng = np.random.default_rng(seed)
    rgb = rng.uniform(0.1, 0.9, (h, w, 3)).astype(np.float32)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix in (".tif", ".tiff"):
        import tifffile

        tifffile.imwrite(path, from_float(rgb, dtype), photometric="rgb")
    elif mode == "RGBA":
        alpha = np.full((h, w, 1), 128, np.uint8)
        Image.fromarray(np.concatenate([from_float(rgb, np.uint8), alpha], -1)).save(path)
    elif mode == "L":
        Image.fromarray(from_float(rgb[..., 0], np.uint8)).save(path)
    else:
        save_image(path, rgb, dtype)
    return rgb


# ---------- the embedded default image ----------

def test_default_image_is_real_ihc():
    img = default_image()
    assert img.shape == (512, 512, 3) and img.dtype == np.float32
    assert 0.0 <= img.min() and img.max() <= 1.0 and img.std() > 0.05


def test_default_split_is_disjoint_regions():
    ds = make_dataset(None, tile_size=64, stride=16, seed=0, fractions=(0.6, 0.2, 0.2))
    assert ds.split_mode == "by-region"
    boxes = {s: [(t.row, t.row + t.size, t.col, t.col + t.size) for t in ds.split(s)] for s in ("train", "val", "test")}
    assert all(boxes.values())
    covered = {s: np.zeros((512, 512), bool) for s in boxes}
    for s, bs in boxes.items():
        for y0, y1, x0, x1 in bs:
            covered[s][y0:y1, x0:x1] = True
    assert not (covered["train"] & covered["val"]).any()
    assert not (covered["train"] & covered["test"]).any()
    assert not (covered["val"] & covered["test"]).any()
    # held-out tiles never overlap each other; training tiles do (stride 16)
    assert len(ds.split("test")) == (512 // 64) * 2
    tiles = ds.load("test")
    assert tiles.shape == (16, 64, 64, 3)


def test_paper_tile_size_on_default_image_gives_all_three_splits():
    ds = make_dataset(None, tile_size=256)
    assert [len(ds.split(s)) for s in ("train", "val", "test")] == [2, 1, 1]


def test_split_deterministic_by_seed(tmp_path):
    for i in range(8):
        _write(tmp_path / f"img{i}.png", 64, 64, seed=i)
    a = make_dataset(tmp_path, tile_size=32, seed=1)
    b = make_dataset(tmp_path, tile_size=32, seed=1)
    c = make_dataset(tmp_path, tile_size=32, seed=2)
    assert a.tiles == b.tiles
    assert a.tiles != c.tiles


# ---------- folder datasets ----------

def test_folder_with_categories_formats_and_provenance(tmp_path):
    rgb8 = _write(tmp_path / "ER" / "a.png", 70, 90)
    _write(tmp_path / "ER" / "b.jpg", 64, 64, seed=1)
    _write(tmp_path / "Ki67" / "c.tif", 64, 96, dtype=np.uint16, seed=2)
    _write(tmp_path / "Ki67" / "d.tiff", 64, 64, seed=3)
    _write(tmp_path / "histology" / "e.png", 64, 64, mode="RGBA", seed=4)
    (tmp_path / "README.txt").write_text("not an image; ignored")
    ds = make_dataset(tmp_path, tile_size=32, seed=0)
    assert ds.split_mode == "by-image"
    assert {s.category for s in ds.sources} == {"ER", "Ki67", "histology"}
    # every split used, and no image on two sides
    per_source = ds.tile_table().groupby("source").split.nunique()
    assert (per_source == 1).all()
    assert {t.split for t in ds.tiles} == {"train", "val", "test"}
    # provenance points at the right pixels
    split = next(t.split for t in ds.tiles if t.source == "ER/a.png")
    tile, px = next((t, p) for t, p in ds.iter_tiles(split) if t.source == "ER/a.png" and t.col == 32)
    np.testing.assert_allclose(px, rgb8[tile.row:tile.row + 32, 32:64], atol=1 / 255)
    summary = ds.summary()
    assert list(summary.category) == ["ER", "Ki67", "histology", "total"]
    assert summary.iloc[-1]["images"] == 5


def test_16bit_tiff_keeps_precision(tmp_path):
    rgb = _write(tmp_path / "x.tif", 40, 40, dtype=np.uint16)
    img = load_image(tmp_path / "x.tif")
    assert img.dtype == np.uint16
    np.testing.assert_allclose(img.rgb, rgb, atol=1 / 65535)


def test_rgba_drops_alpha_for_study(tmp_path):
    _write(tmp_path / "a.png", 40, 40, mode="RGBA")
    img = load_image(tmp_path / "a.png")
    assert img.rgb.shape == (40, 40, 3) and img.alpha is not None and (img.alpha == 128).all()


def test_large_image_tiles_lazily(tmp_path):
    """Tiling a large image reads pixels one image at a time: the tile list is only metadata."""
    big = np.zeros((3000, 2000, 3), np.uint8)
    Image.fromarray(big).save(tmp_path / "big.png")
    for i in range(2):
        _write(tmp_path / f"s{i}.png", 256, 256, seed=i)
    ds = make_dataset(tmp_path, tile_size=256, verify=False)
    assert len(ds.tiles) >= 11 * 7
    assert ds._cache == {}  # nothing decoded yet
    n = sum(1 for _ in ds.iter_tiles(ds.split("train")[0].split))
    assert n > 0 and len(ds._cache) <= 2


# ---------- bad input ----------

BAD_CASES = {
    "zero.png": (lambda p: p.write_bytes(b""), "empty file"),
    "text.png": (lambda p: p.write_text("hello, I am not a PNG"), "cannot decode"),
    "text.tif": (lambda p: p.write_text("hello, I am not a TIFF"), "cannot decode"),
    "gray.png": (lambda p: _write(p, 64, 64, mode="L"), "grayscale"),
}


def _truncated(p):
    _write(p.with_name("full.png"), 64, 64)
    data = p.with_name("full.png").read_bytes()
    p.with_name("full.png").unlink()
    p.write_bytes(data[: len(data) // 2])


@pytest.mark.parametrize("name", list(BAD_CASES) + ["trunc.png"])
def test_bad_file_named_with_reason(tmp_path, name):
    p = tmp_path / name
    if name == "trunc.png":
        _truncated(p)
        reason = "truncated"
    else:
        make, reason = BAD_CASES[name]
        make(p)
    with pytest.raises(ImageError) as err:
        load_image(p)
    assert str(p) in str(err.value) and reason in str(err.value)


def test_image_smaller_than_tile_is_bad(tmp_path):
    _write(tmp_path / "small.png", 20, 30)
    good, bad = scan_folder(tmp_path, min_size=32)
    assert not good and "smaller than one 32x32 tile" in bad[0].reason


def test_empty_folder_and_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no image files"):
        make_dataset(tmp_path)
    with pytest.raises(DataError, match="no such folder"):
        make_dataset(tmp_path / "nope")


def test_bad_file_stops_dataset_unless_skipped(tmp_path):
    for i in range(3):
        _write(tmp_path / f"ok{i}.png", 64, 64, seed=i)
    (tmp_path / "broken.png").write_text("nope")
    with pytest.raises(ImageError, match="broken.png"):
        make_dataset(tmp_path, tile_size=32)
    ds = make_dataset(tmp_path, tile_size=32, skip_bad=True)
    assert len(ds.sources) == 3 and ds.bad_files[0].path.endswith("broken.png")


def test_single_image_too_small_for_region_split(tmp_path):
    _write(tmp_path / "one.png", 64, 64)
    with pytest.raises(DataError, match="need 3"):
        make_dataset(tmp_path, tile_size=64)


# ---------- ihclib check-data ----------

def test_check_data_default(capsys):
    assert main(["check-data", "--tile-size", "64"]) == 0
    out = capsys.readouterr().out
    assert "embedded default" in out and "train tiles" in out


def test_check_data_names_every_bad_file(tmp_path, capsys):
    for i in range(3):
        _write(tmp_path / "good" / f"ok{i}.png", 64, 64, seed=i)
    (tmp_path / "good" / "zero.png").write_bytes(b"")
    (tmp_path / "good" / "fake.jpg").write_text("text")
    assert main(["check-data", str(tmp_path), "--tile-size", "32"]) == 1
    err = capsys.readouterr().err
    assert "zero.png: empty file" in err and "fake.jpg: cannot decode" in err
    assert "Traceback" not in err
    assert main(["check-data", str(tmp_path), "--tile-size", "32", "--skip-bad"]) == 0
    assert "skipped 2 bad file(s)" in capsys.readouterr().out


def test_check_data_only_bad_files_and_empty_folder(tmp_path, capsys):
    (tmp_path / "zero.png").write_bytes(b"")
    assert main(["check-data", str(tmp_path)]) == 1
    assert "zero.png" in capsys.readouterr().err
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["check-data", str(empty)]) == 2
    assert "no image files" in capsys.readouterr().err


def test_save_image_never_overwrites(tmp_path):
    p = tmp_path / "out.png"
    p.write_bytes(b"precious")
    with pytest.raises(ImageError, match="already exists"):
        save_image(p, np.zeros((4, 4, 3), np.float32))
    assert p.read_bytes() == b"precious"
    save_image(p, np.zeros((4, 4, 3), np.float32), overwrite=True)
    assert load_image(p).shape == (4, 4)
    assert [f.name for f in tmp_path.iterdir()] == ["out.png"]  # no temp file left behind


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from ihclib.images import default_file_mode
    from ihclib.reports import report_dirs, save_table

    p = save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert stat.S_IMODE(os.stat(p).st_mode) == default_file_mode()
    t = save_table(__import__("pandas").DataFrame({"a": [1]}), report_dirs(tmp_path), "t")
    assert stat.S_IMODE(os.stat(t).st_mode) == default_file_mode() != 0o600
