import numpy as np
import pandas as pd
import pytest

from ihclib.study.baselines import median3
from ihclib.study.evaluate import (CLEAN, LONG_COLUMNS, NOISY, as_method, batched, degrade, evaluate,
                             evaluate_per_image, headline_table, long_table, noise_name)
from ihclib.study.figures import plot_metric_vs_amount
from ihclib.noise import NoiseSpec

SPECS = [NoiseSpec("s&p", 0.1), NoiseSpec("s&p", 0.3), NoiseSpec("gaussian", 0.05)]


@pytest.fixture(scope="module")
def tiles(ihc_crop):
    return np.stack([ihc_crop[:32, :32], ihc_crop[32:64, 32:64], ihc_crop[64:, 64:]])


@pytest.fixture(scope="module")
def methods():
    return {"median 3x3": median3, "identity (batch)": batched(lambda b: b.copy())}


@pytest.fixture(scope="module")
def per(tiles, methods):
    return evaluate_per_image(tiles, methods, SPECS, seed=0)


def test_long_format(per, tiles):
    long = long_table(per)
    assert tuple(long.columns) == LONG_COLUMNS
    assert set(long.method) == {NOISY, CLEAN, "median 3x3", "identity (batch)"}
    assert set(long.noise) == {"s&p", "gaussian"}
    assert set(long.metric) >= {"psnr", "ssim", "accuracy", "dice_dab", "dice_nuclei", "dab_fraction_error"}
    assert "seconds" not in set(long.metric)  # timings are not results (issue 16)
    assert set(long_table(per, timings=True).metric) == {"seconds"}
    assert len(per) == 4 * len(SPECS) * len(tiles)
    psnr = long[long.metric == "psnr"].set_index(["method", "amount"])["mean"]
    assert psnr[("median 3x3", 0.1)] > psnr[(NOISY, 0.1)] > psnr[(NOISY, 0.3)]


def test_every_method_sees_the_same_noisy_tiles(per):
    cols = ["psnr", "ssim", "accuracy", "dice_dab", "dab_fraction_error"]
    noisy = per[per.method == NOISY][cols].reset_index(drop=True)
    ident = per[per.method == "identity (batch)"][cols].reset_index(drop=True)
    pd.testing.assert_frame_equal(noisy, ident)


def test_same_seed_same_table(tiles, methods, per):
    again = evaluate_per_image(tiles, methods, SPECS, seed=0).drop(columns="seconds")
    pd.testing.assert_frame_equal(per.drop(columns="seconds"), again)
    other = evaluate_per_image(tiles, methods, SPECS, seed=1).drop(columns="seconds")
    assert not per.drop(columns="seconds").equals(other)


def test_noise_does_not_depend_on_sweep_order(tiles):
    spec = NoiseSpec("s&p", 0.2)
    a = degrade(tiles, spec, seed=3)
    assert np.array_equal(a, degrade(tiles, spec, seed=3))
    same = np.stack([tiles[0], tiles[0]])
    b = degrade(same, spec, seed=3)
    assert np.array_equal(b[0], a[0]) and not np.array_equal(b[0], b[1])  # each tile its own draw
    long1 = evaluate(tiles[:1], {}, [spec, NoiseSpec("s&p", 0.05)], seed=3, include_clean=False)
    long2 = evaluate(tiles[:1], {}, [NoiseSpec("s&p", 0.05), spec], seed=3, include_clean=False)
    key = ["method", "noise", "amount", "metric"]
    a1 = long1[long1.metric != "seconds"].sort_values(key).reset_index(drop=True)
    a2 = long2[long2.metric != "seconds"].sort_values(key).reset_index(drop=True)
    pd.testing.assert_frame_equal(a1, a2)


def test_headline_table(per):
    long = long_table(per)
    t = headline_table(long, "psnr")
    assert list(t.columns) == [0.1, 0.3]
    assert list(t.index)[:2] == [NOISY, CLEAN]
    s = headline_table(long, "ssim", with_ci=True)
    assert "[" in s.loc["median 3x3", 0.1]
    with pytest.raises(ValueError):
        headline_table(long, "psnr", noise="poisson")


def test_plot(per):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ax = plot_metric_vs_amount(long_table(per), "psnr")
    labels = [l.get_label() for l in ax.get_lines()]
    assert NOISY in labels and "median 3x3" in labels and CLEAN not in labels  # inf not drawn
    plot_metric_vs_amount(long_table(per), "ssim", noise="gaussian")
    plt.close("all")


def test_method_wrappers(tiles):
    class FakeModel:
        def predict(self, batch, verbose=0):
            return batch * 2  # out of range on purpose: outputs are clipped

    m = as_method(FakeModel())
    assert m.batched
    out, seconds = m(tiles)
    assert out.max() <= 1.0 and seconds.shape == (len(tiles),)
    assert not as_method(median3).batched
    with pytest.raises(ValueError, match="reserved"):
        evaluate_per_image(tiles[:1], {NOISY: median3}, SPECS[:1])
    with pytest.raises(ValueError, match="shape"):
        batched(lambda b: b[:, :8])(tiles)


def test_noise_names():
    assert noise_name(NoiseSpec("s&p", 0.1)) == "s&p"
    assert noise_name(NoiseSpec("s&p", 0.1, per_pixel=True)) == "s&p per pixel"
    assert noise_name(NoiseSpec("gaussian", 0.1)) == "gaussian"
