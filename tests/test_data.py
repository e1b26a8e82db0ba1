import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ihclib.study import data as data_mod
from ihclib.cli import main
from ihclib.study.data import (PROJECT_DATA, default_image, make_dataset, resolve_data_dir, scan_folder,
                         tissue_fraction)
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
    ds = make_dataset("skimage", tile_size=64, stride=16, seed=0, fractions=(0.6, 0.2, 0.2))
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
    ds = make_dataset("skimage", tile_size=256)
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
    with pytest.raises(ImageError, match="no image files"):
        make_dataset(tmp_path)
    with pytest.raises(ImageError, match="no such folder"):
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
    with pytest.raises(ImageError, match="need 3"):
        make_dataset(tmp_path, tile_size=64)


# ---------- ihclib check-data ----------

def test_check_data_default(capsys):
    assert main(["check-data", "skimage", "--tile-size", "64"]) == 0
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


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_save_image_writes_integer_pixels_at_their_own_scale(tmp_path, dtype):
    # integer pixels were taken as floats in [0, 1]: everything but 0 was written white
    top = np.iinfo(dtype).max
    pixels = np.random.default_rng(0).integers(0, top + 1, (6, 5, 3)).astype(dtype)
    same = save_image(tmp_path / "same.png", pixels, dtype=dtype)
    assert np.array_equal(from_float(load_image(same).rgb, dtype), pixels)
    as_8bit = save_image(tmp_path / "as8.png", pixels, dtype=np.uint8)
    expected = np.round(pixels.astype(np.float64) / top * 255).astype(np.uint8)
    assert np.abs(from_float(load_image(as_8bit).rgb, np.uint8).astype(int) - expected).max() <= (0 if dtype == np.uint8 else 1)


def test_from_float_refuses_other_integer_types():
    with pytest.raises(TypeError, match="int32"):
        from_float(np.zeros((2, 2, 3), np.int32), np.uint8)


def test_written_files_get_normal_permissions(tmp_path):
    import os
    import stat

    from ihclib.images import default_file_mode
    from ihclib.study.reports import report_dirs, save_table

    p = save_image(tmp_path / "x.png", np.zeros((4, 4, 3), np.float32))
    assert stat.S_IMODE(os.stat(p).st_mode) == default_file_mode()
    t = save_table(__import__("pandas").DataFrame({"a": [1]}), report_dirs(tmp_path), "t")
    assert stat.S_IMODE(os.stat(t).st_mode) == default_file_mode() != 0o600


# ---------- split by source (splits.json) ----------

def _sources(root, layout, size=64, tile=32):
    """Write ``{category: n_images}`` of size x size images under root; return the tile size."""
    seed = 0
    for cat, n in layout.items():
        for i in range(n):
            _write(root / cat / f"{cat}_{i}.png", size, size, seed=seed)
            seed += 1
    return tile


def _splits(root, content):
    (root / "splits.json").write_text(content if isinstance(content, str) else json.dumps(content))


def test_splits_json_assigns_whole_categories(tmp_path):
    _sources(tmp_path, {"a": 2, "b": 3, "c": 1, "d": 2})
    _splits(tmp_path, {"val": ["c"], "test": ["a", "d"]})
    ds = make_dataset(tmp_path, tile_size=32, stride=16)
    assert ds.split_mode == "by-source"
    table = ds.tile_table()
    assert table.groupby("category").split.agg(set).to_dict() == {"a": {"test"}, "b": {"train"}, "c": {"val"},
                                                                  "d": {"test"}}
    assert len(ds.split("train")) == 3 * 9  # stride 16 on 64 px: 3 x 3 positions per image
    assert len(ds.split("test")) == 4 * 4  # held-out tiles never overlap
    assert ds.describe()["split_mode"] == "by-source"
    assert ds.describe()["split_categories"] == {"train": ["b"], "val": ["c"], "test": ["a", "d"]}
    # seed does not matter for a split by source
    assert make_dataset(tmp_path, tile_size=32, stride=16, seed=7).tiles == ds.tiles


def test_without_splits_json_nothing_changes(tmp_path):
    _sources(tmp_path, {"a": 2, "b": 3})
    ds = make_dataset(tmp_path, tile_size=32)
    assert ds.split_mode == "by-image" and "split_categories" not in ds.describe()


@pytest.mark.parametrize("content,reason", [
    ({"test": ["nope"]}, "unknown category 'nope'"),
    ({"val": ["a"], "test": ["a"]}, "'a' is listed in both val and test"),
    ({"test": ["b", "b"]}, "'b' is listed twice in test"),
    ({"val": ["a"], "test": ["b"]}, "no category left for training"),
    ({"holdout": ["a"]}, "unknown split 'holdout'"),
    ({"test": "a"}, "must be a list of category names"),
    (["a"], "expected an object"),
    ('{"test": ["a"]', "not valid JSON"),
])
def test_bad_splits_json_is_one_line_naming_the_file(tmp_path, content, reason):
    _sources(tmp_path, {"a": 1, "b": 1})
    _splits(tmp_path, content)
    with pytest.raises(ImageError) as err:
        make_dataset(tmp_path, tile_size=32)
    msg = str(err.value)
    assert "splits.json" in msg and reason in msg and "\n" not in msg


# ---------- per-category access ----------

def test_load_by_category(tmp_path):
    _sources(tmp_path, {"a": 3, "b": 1, "c": 1, "t": 1}, size=96)
    _splits(tmp_path, {"val": ["c"], "test": ["b"]})
    ds = make_dataset(tmp_path, tile_size=32)
    train = ds.load_by_category("train")
    assert list(train) == ["a", "t"] and train["a"].shape == (27, 32, 32, 3) and train["a"].dtype == np.float32
    assert list(ds.load_by_category("test")) == ["b"] and list(ds.load_by_category("val")) == ["c"]
    _splits(tmp_path, {"val": ["c"], "test": ["b", "a"]})
    ds = make_dataset(tmp_path, tile_size=32)
    both = ds.load_by_category("test")
    assert list(both) == ["a", "b"] and len(both["a"]) == 27 and len(both["b"]) == 9
    np.testing.assert_array_equal(np.concatenate(list(both.values())), ds.load("test"))


def test_loading_a_split_keeps_no_decoded_image_alive(tmp_path):
    # the tiles held views of their images until the end, then were stacked and copied again:
    # a folder of large slides needed every decoded image plus twice its tiles at once
    import tracemalloc

    _sources(tmp_path, {"a": 8, "b": 1, "c": 1}, size=256)
    _splits(tmp_path, {"val": ["c"], "test": ["b"]})
    ds = make_dataset(tmp_path, tile_size=32)
    image_bytes = 256 * 256 * 3 * 4
    tracemalloc.start()
    try:
        train = ds.load_by_category("train")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    tiles_bytes = train["a"].nbytes
    assert tiles_bytes == 8 * image_bytes  # the tiles cover the images
    # the tiles, the two images read_source keeps, one being decoded (uint8 then float32) and
    # slack: measured 11.4 image sizes in all (the old code: 24, three copies of the folder)
    assert peak < tiles_bytes + 5 * image_bytes, (peak / image_bytes, tiles_bytes / image_bytes)
    again = make_dataset(tmp_path, tile_size=32)
    np.testing.assert_array_equal(again.load("train"), train["a"])  # one category: the same tiles


def test_a_split_over_the_limit_gives_an_even_share_per_category(tmp_path):
    _sources(tmp_path, {"a": 3, "t": 1, "b": 1, "c": 1}, size=96)
    _splits(tmp_path, {"val": ["c"], "test": ["b"]})
    ds = make_dataset(tmp_path, tile_size=32)
    tile_px = 32 * 32
    assert len(ds.split("train")) == 36 and not ds.over("train", 36 * tile_px) and ds.over("train", 35 * tile_px)
    everything = ds.load_by_category("train", max_pixels=None)
    assert ds.load_by_category("train", max_pixels=36 * tile_px).keys() == everything.keys()
    capped = ds.load_by_category("train", max_pixels=12 * tile_px, seed=1)
    # 12 tiles: 6 per category; category a's spread over its three images (2 each)
    assert {c: len(v) for c, v in capped.items()} == {"a": 6, "t": 6}
    sources = [t.source for t, _ in ds.sample_per_category("train", 6, seed=1) if t.category == "a"]
    assert sorted(sources.count(s) for s in set(sources)) == [2, 2, 2]
    # every sampled tile is one of the split's tiles, and the same seed gives the same tiles
    pool = {px.tobytes() for px in everything["a"]}
    assert all(px.tobytes() in pool for px in capped["a"])
    np.testing.assert_array_equal(ds.load_by_category("train", 12 * tile_px, seed=1)["a"], capped["a"])
    assert ds.load("train", max_pixels=12 * tile_px, seed=1).shape == (12, 32, 32, 3)
    assert len(ds.load("train", limit=5)) == 5 and len(ds.load("train", limit=0)) == 0


def test_sample_per_category_spreads_over_images(tmp_path):
    _sources(tmp_path, {"a": 3, "b": 1}, size=96)
    _splits(tmp_path, {"test": ["a", "b"], "val": []})
    (tmp_path / "train").mkdir()
    _write(tmp_path / "train" / "t.png", 64, 64)
    ds = make_dataset(tmp_path, tile_size=32)
    got = ds.sample_per_category("test", 7, seed=3)
    by_cat = {}
    for t, px in got:
        by_cat.setdefault(t.category, []).append(t)
        assert px.shape == (32, 32, 3) and t.split == "test"
    assert [t.category for t, _ in got] == sorted(t.category for t, _ in got)  # grouped by category
    counts = {}
    for t in by_cat["a"]:
        counts[t.source] = counts.get(t.source, 0) + 1
    assert sorted(counts.values()) == [2, 2, 3]  # 7 tiles over 3 images: even
    assert len(by_cat["b"]) == 7 and len({(t.row, t.col) for t in by_cat["b"]}) == 7  # one image gives all
    # pixels are the tiles' own
    t, px = got[0]
    np.testing.assert_array_equal(px, ds.read_source(t.source)[t.row:t.row + 32, t.col:t.col + 32])
    # deterministic for a seed, different for another
    again = ds.sample_per_category("test", 7, seed=3)
    assert [t for t, _ in again] == [t for t, _ in got]
    assert [t for t, _ in ds.sample_per_category("test", 7, seed=4)] != [t for t, _ in got]
    # asking for more than there is gives everything once
    everything = ds.sample_per_category("test", 100)
    assert len(everything) == 27 + 9 == len(set(t for t, _ in everything))


def test_sample_per_category_min_tissue_and_one_read_per_image(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    for i in range(2):
        img = np.full((64, 128, 3), 250, np.uint8)  # white glass ...
        img[:, :64] = rng.integers(60, 160, (64, 64, 3))  # ... with tissue in the left half
        (tmp_path / "a").mkdir(exist_ok=True)
        Image.fromarray(img).save(tmp_path / "a" / f"{i}.png")
    _write(tmp_path / "b" / "x.png", 64, 64)
    _splits(tmp_path, {"test": ["a"], "val": []})
    ds = make_dataset(tmp_path, tile_size=32, verify=False)
    reads = []
    real = data_mod.load_image
    monkeypatch.setattr(data_mod, "load_image", lambda p: reads.append(Path(p).name) or real(p))
    got = ds.sample_per_category("test", 100, min_tissue=0.5)
    assert len(got) == 8 and all(t.col < 64 for t, _ in got)  # the 8 tissue tiles, no glass
    assert all(tissue_fraction(px) == 1.0 for _, px in got)
    assert sorted(reads) == ["0.png", "1.png"]  # each image read once
    assert len(ds.sample_per_category("test", 100)) == 16  # without the filter, glass too
    assert [t for t, _ in ds.sample_per_category("test", 3, seed=1, min_tissue=0.5)] == \
           [t for t, _ in ds.sample_per_category("test", 3, seed=1, min_tissue=0.5)]


def test_tissue_fraction():
    white = np.ones((16, 16, 3), np.float32)
    assert tissue_fraction(white) == 0.0
    assert tissue_fraction(np.full((16, 16, 3), 0.86, np.float32)) == 0.0  # near-white is background
    assert tissue_fraction(np.full((16, 16, 3), 0.2, np.float32)) == 1.0
    half = white.copy()
    half[:8, :, 2] = 0.5  # one absorbing channel is enough to count as tissue
    assert tissue_fraction(half) == 0.5
    assert tissue_fraction(np.full((4, 4, 3), 255, np.uint8)) == 0.0
    assert tissue_fraction(np.zeros((4, 4, 3), np.uint8)) == 1.0


# ---------- which data by default ----------

def test_resolve_data_dir_rules(tmp_path, monkeypatch):
    monkeypatch.delenv("IHC_DATA_DIR", raising=False)
    assert resolve_data_dir(tmp_path) == tmp_path
    assert resolve_data_dir(str(tmp_path)) == tmp_path
    assert resolve_data_dir("skimage") is None
    assert resolve_data_dir("./skimage") == Path("skimage")
    # nothing given: the project data when it has images, else the embedded image
    with_images = tmp_path / "proj"
    _write(with_images / "src" / "x.png", 8, 8)
    monkeypatch.setattr(data_mod, "PROJECT_DATA", with_images)
    assert resolve_data_dir(None) == with_images and resolve_data_dir("") == with_images
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    _write(empty / ".hidden" / "x.png", 8, 8)
    (empty / "README.md").write_text("no images here")
    monkeypatch.setattr(data_mod, "PROJECT_DATA", empty)
    assert resolve_data_dir(None) is None
    monkeypatch.setattr(data_mod, "PROJECT_DATA", tmp_path / "missing")
    assert resolve_data_dir(None) is None
    # the environment variable wins over the project data, and may ask for the embedded image
    monkeypatch.setattr(data_mod, "PROJECT_DATA", with_images)
    monkeypatch.setenv("IHC_DATA_DIR", str(tmp_path / "mine"))
    assert resolve_data_dir(None) == tmp_path / "mine"
    assert resolve_data_dir(tmp_path) == tmp_path  # an explicit path still wins
    monkeypatch.setenv("IHC_DATA_DIR", "skimage")
    assert resolve_data_dir(None) is None


def test_check_data_shows_split_by_source(tmp_path, capsys):
    _sources(tmp_path, {"a": 2, "b": 1, "c": 1})
    _splits(tmp_path, {"val": ["c"], "test": ["a"]})
    assert main(["check-data", str(tmp_path), "--tile-size", "32"]) == 0
    out = capsys.readouterr().out
    assert "split by-source" in out and "  train: b" in out and "  val: c" in out and "  test: a" in out
    _splits(tmp_path, "{broken")
    assert main(["check-data", str(tmp_path), "--tile-size", "32"]) == 2
    err = capsys.readouterr().err
    assert "splits.json" in err and "not valid JSON" in err and "Traceback" not in err


# ---------- the committed project data ----------

SOURCES = {"ihc-hpa-kidney", "ihc-dab-analyzer", "ihc-kather-cd31", "ihc-borda-pyimsegm", "ki67-openslide",
           "he-openslide"}


def _project_images():
    if not PROJECT_DATA.is_dir():
        return []
    return sorted(p for p in PROJECT_DATA.rglob("*") if p.is_file() and p.suffix.lower() in (".png", ".jpg"))


@pytest.mark.skipif(not _project_images(), reason="the project's data/ holds no images (not a full checkout)")
def test_project_data_scans_with_split_by_source():
    ds = make_dataset(PROJECT_DATA, tile_size=256, verify=False)
    assert {s.category for s in ds.sources} == SOURCES
    assert ds.split_mode == "by-source"
    cats = ds.describe()["split_categories"]
    assert cats["test"] == ["ihc-dab-analyzer", "ihc-hpa-kidney"] and cats["val"] == ["ihc-kather-cd31"]
    assert cats["train"] == ["he-openslide", "ihc-borda-pyimsegm", "ki67-openslide"]
    assert all(len(ds.split(s)) > 0 for s in ("train", "val", "test"))


@pytest.mark.skipif(not _project_images(), reason="the project's data/ holds no images (not a full checkout)")
def test_project_data_matches_sha256sums():
    listed = {}
    for line in (PROJECT_DATA / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name.lstrip("*")] = digest
    present = {p.relative_to(PROJECT_DATA).as_posix() for p in _project_images()}
    assert present == set(listed), "data/SHA256SUMS and the image files differ"
    for name, digest in listed.items():
        assert hashlib.sha256((PROJECT_DATA / name).read_bytes()).hexdigest() == digest, name
    assert max((PROJECT_DATA / n).stat().st_size for n in listed) < 5_000_000  # the project's file limit


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_loaded_image_keeps_the_stored_pixels_and_makes_floats_once_when_asked(tmp_path, dtype):
    from ihclib.images import load_image, save_image, to_float

    pixels = np.random.default_rng(0).integers(0, np.iinfo(dtype).max + 1, (20, 30, 3)).astype(dtype)
    save_image(tmp_path / "p.png", pixels, dtype)
    img = load_image(tmp_path / "p.png")
    assert img.pixels.dtype == dtype and np.array_equal(img.pixels, pixels) and img.shape == (20, 30)
    assert "rgb" not in vars(img)  # not made until asked for
    assert img.rgb.dtype == np.float32 and np.array_equal(img.rgb, to_float(pixels))
    assert img.rgb is img.rgb  # made once

