import numpy as np
import pandas as pd
import pytest

from ihclib.study import comparison
from ihclib.study.data import make_dataset
from ihclib.study.evaluate import NOISY
from ihclib.study.stains import most_stained, stain_statistics


def test_stain_statistics_per_split():
    ds = make_dataset("skimage", tile_size=128, seed=0)
    stats = stain_statistics(ds)
    assert list(stats.split) == ["train", "val", "test"]
    assert (stats.tiles == [len(ds.split(s)) for s in ("train", "val", "test")]).all()
    assert (stats["DAB mean"] > 0).all() and (stats["hematoxylin p95"] >= stats["hematoxylin mean"]).all()


def test_most_stained_picks_the_darkest_tile():
    tiles = np.ones((3, 8, 8, 3), np.float32) * 0.95
    tiles[1] = [0.45, 0.3, 0.2]  # brown: DAB
    assert most_stained(tiles) == 1


def test_region_is_the_held_out_band():
    ds = make_dataset("skimage", tile_size=64, stride=16, fractions=(0.6, 0.2, 0.2))
    region = ds.region("test")
    assert region.shape == (128, 512, 3)
    np.testing.assert_array_equal(region, ds.read_source(ds.sources[0].name)[384:512])


def _long(rows):
    return pd.DataFrame(rows, columns=["method", "noise", "amount", "metric", "mean", "ci_low", "ci_high", "n"])


@pytest.fixture
def long_df():
    rows = []
    for amount, vals in {0.1: {"m1": 40.0, "m2": 35.0, "filt": 38.0, NOISY: 15.0},
                         0.3: {"m1": 30.0, "m2": 33.0, "filt": 34.0, NOISY: 10.0}}.items():
        for method, v in vals.items():
            rows.append([method, "s&p", amount, "psnr", v, v - 0.5, v + 0.5, 16])
            rows.append([method, "s&p", amount, "accuracy", 0.9, 0.89, 0.91, 16])
    return _long(rows)


def _per_tile(values: dict) -> pd.DataFrame:
    """A per-tile table: {(source, amount): {method: [psnr per tile]}}; SSIM = PSNR / 100."""
    rows = []
    for (source, amount), methods in values.items():
        for method, psnrs in methods.items():
            for i, v in enumerate(psnrs):
                rows.append({"method": method, "noise": "s&p", "amount": amount, "tile": i, "source": source,
                             "psnr": v, "ssim": v / 100})
    return pd.DataFrame(rows)


@pytest.fixture
def per_tile():
    return _per_tile({
        ("a", 0.1): {"m1": [41, 43], "m2": [35, 35], "filt": [39, 39], NOISY: [15, 15]},
        ("b", 0.1): {"m1": [39, 39], "m2": [35, 35], "filt": [38, 38], NOISY: [15, 15]},
        ("a", 0.3): {"m1": [30, 30], "m2": [33, 33], "filt": [34, 34], NOISY: [10, 10]},
        ("b", 0.3): {"m1": [30, 30], "m2": [35, 35], "filt": [34, 34], NOISY: [10, 10]},
    })


def test_quality_target_pooled_and_per_source(per_tile):
    t = comparison.quality_target(per_tile, ["m1", "m2"], ["filt"], amounts=(0.1, 0.3))
    assert list(t.scope) == ["all held-out"] * 2 + ["a", "a", "b", "b"]
    assert list(t["best model"]) == ["m1", "m2", "m1", "m2", "m1", "m2"]
    assert t.margin.tolist() == [2.0, 0.0, 3.0, -1.0, 1.0, 1.0]
    # pooled needs +1.0 dB, a source +0.0 dB; SSIM must not be lower
    assert list(t.met) == [True, False, True, False, True, True]
    text = comparison.conclusion(per_tile.pipe(comparison_long), t, paper_model="m2")
    assert "**not met**" in text and "falls short of it by -0.00 dB" not in text
    assert "a at 30% (m2 -1.00 dB against filt" in text


def comparison_long(per_tile: pd.DataFrame) -> pd.DataFrame:
    from ihclib.study.evaluate import summarise

    return summarise(per_tile.drop(columns="source"), metrics=["psnr", "ssim"])


def test_per_source_table(per_tile):
    t = comparison.per_source_table(per_tile, ["m1", "filt"], amounts=(0.1,))
    assert list(t.source) == ["all held-out", "all held-out", "a", "a", "b", "b"]
    assert t.loc[(t.source == "b") & (t.method == "m1"), "PSNR @10%"].item() == "39.00 [39.00, 39.00]"
    assert t.loc[(t.source == "a") & (t.method == "m1"), "PSNR @10%"].item().startswith("42.00 [")


def test_clean_input_table_scores_output_against_input():
    tiles = np.full((2, 16, 16, 3), 0.9, np.float32)
    tiles[:, 4:12, 4:12] = [0.5, 0.3, 0.2]

    def darken_white(img):
        return np.where(img >= 1.0, 0.0, img)

    t = comparison.clean_input_table(tiles, {"identity": lambda img: img, "darken": darken_white})
    assert np.isinf(t.loc[0, "PSNR vs input, clean input"]) and np.isinf(t.loc[1, "PSNR vs input, clean input"])
    bright = "PSNR vs input, clean, brightened +60/255"
    assert np.isinf(t.loc[0, bright]) and t.loc[1, bright] < 10  # the brightened background is pure white
    assert t.loc[0, "saturated pixels, clean, brightened +60/255"] == "75.0%"


def test_held_out_tiles_one_array_and_a_source_per_tile():
    ds = make_dataset("skimage", tile_size=64, seed=0)
    tiles, sources = comparison.held_out_tiles(ds, 3, seed=0)
    assert tiles.shape == (3, 64, 64, 3) and sources == ["ihc"] * 3


def test_headline_formats_ci(long_df):
    h = comparison.headline(long_df, amounts=(0.1,), metrics={"psnr": "PSNR"})
    assert h.loc["m1", "PSNR @10%"] == "40.00 [39.50, 40.50]"


def test_score_sources_two_tiles_per_image(tmp_path):
    from ihclib.images import save_image

    rng = np.random.default_rng(0)
    for source, n in (("s1", 2), ("s2", 1)):
        (tmp_path / source).mkdir()
        for i in range(n):
            save_image(tmp_path / source / f"im{i}.png", rng.uniform(0.2, 0.8, (48, 40, 3)).astype(np.float32), np.uint8)
    scores = comparison.score_sources(tmp_path, {"identity": lambda x: x}, amounts=(0.1,), tile=32)
    assert len(scores) == 6 and set(scores.tile) == {"centre", "top-left"}
    table = comparison.source_scores_table(scores)
    assert table.loc[("s1", 0.1), "tiles"] == 4 and table.loc[("s2", 0.1), "tiles"] == 2
    assert 14 < table.loc[("s1", 0.1), "identity PSNR"] < 18  # the noisy input itself at 10 %


def test_saturated_case_is_a_third_white():
    from ihclib.study.baselines import switching_median

    t = comparison.saturated_case({"identity": lambda x: x, "switching median": switching_median})
    assert float(t.loc[0, "pure-white pixels"].rstrip("%")) > 30
    assert np.isinf(t.loc[0, "PSNR clean"]) and t.loc[1, "PSNR s&p 10%"] > t.loc[0, "PSNR s&p 10%"] + 10
