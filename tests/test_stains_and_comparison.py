import numpy as np
import pandas as pd
import pytest

from ihclib import comparison
from ihclib.data import make_dataset
from ihclib.evaluate import NOISY
from ihclib.stains import most_stained, stain_statistics


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


def test_quality_target_picks_best_on_each_side(long_df):
    t = comparison.quality_target(long_df, ["m1", "m2"], ["filt"], amounts=(0.1, 0.3))
    assert list(t["best model"]) == ["m1", "m2"]
    assert list(t.met) == [True, False]
    assert t.margin.tolist() == [2.0, -1.0]
    assert list(t["clear (CIs disjoint)"]) == [True, False]
    text = comparison.conclusion(long_df, t, paper_model="m2")
    assert "not met" in text and "falls short of it by 1.00 dB" in text and "below the strongest classical filter" in text


def test_headline_formats_ci(long_df):
    h = comparison.headline(long_df, amounts=(0.1,), metrics={"psnr": "PSNR"})
    assert h.loc["m1", "PSNR @10%"] == "40.00 [39.50, 40.50]"


def test_conclusion_names_where_each_side_leads(long_df):
    t = comparison.quality_target(long_df, ["m1", "m2"], ["filt"], amounts=(0.1,))
    text = comparison.conclusion(long_df, t, paper_model="m1", model_names=["m1", "m2"], baseline_names=["filt"])
    assert "leads the classical filters in PSNR at 10%; a filter leads at 30% (filt, -1.00 dB)" in text
    assert "**met**" in text
