import math

import numpy as np
import pytest

from ihclib.study.metrics import mean_ci, paper_accuracy, psnr, ssim, summarise
from ihclib.noise import salt_and_pepper


def test_identical_images_are_perfect(ihc_crop):
    assert psnr(ihc_crop, ihc_crop) == math.inf
    assert ssim(ihc_crop, ihc_crop) == pytest.approx(1.0)
    assert paper_accuracy(ihc_crop, ihc_crop) == 1.0


def test_noisier_scores_lower(ihc_crop):
    light = salt_and_pepper(ihc_crop, 0.05, np.random.default_rng(0))
    heavy = salt_and_pepper(ihc_crop, 0.2, np.random.default_rng(0))
    assert psnr(ihc_crop, heavy) < psnr(ihc_crop, light) < 40
    assert ssim(ihc_crop, heavy) < ssim(ihc_crop, light) < 1


def test_ssim_on_small_tiles(ihc_crop):
    tile = ihc_crop[:32, :32]
    noisy = salt_and_pepper(tile, 0.1, np.random.default_rng(0))
    assert 0 < ssim(tile, noisy) < 1
    assert 0 < ssim(ihc_crop[:6, :6], noisy[:6, :6]) <= 1  # window shrinks to 5


def test_shape_mismatch_is_an_error(ihc_crop):
    with pytest.raises(ValueError, match="shape"):
        psnr(ihc_crop, ihc_crop[:10])


def _keras_categorical_accuracy(y_true, y_pred):
    keras = pytest.importorskip("keras")
    m = keras.metrics.CategoricalAccuracy()
    m.update_state(y_true, y_pred)
    return float(m.result())


@pytest.mark.parametrize("quantised", [False, True])
def test_paper_accuracy_is_keras_categorical_accuracy(rng, quantised):
    y_true = rng.random((4, 16, 16, 3)).astype(np.float32)
    y_pred = np.clip(y_true + rng.normal(0, 0.2, y_true.shape), 0, 1).astype(np.float32)
    if quantised:  # many ties between channels, as in 8-bit images: ties go to the first channel
        y_true, y_pred = np.round(y_true * 2) / 2, np.round(y_pred * 2) / 2
    ours = paper_accuracy(y_true, y_pred)
    assert 0.2 < ours < 1.0
    assert ours == pytest.approx(_keras_categorical_accuracy(y_true, y_pred), abs=1e-6)


def test_keras_accuracy_string_resolves_to_categorical_accuracy(rng):
    """What the paper wrote (metrics=["accuracy"] on a 3-channel regression) is our paper_accuracy."""
    keras = pytest.importorskip("keras")
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(3, 1)])
    model.compile(loss="mse", metrics=["accuracy"])
    x = rng.random((2, 8, 8, 3)).astype(np.float32)
    y = rng.random((2, 8, 8, 3)).astype(np.float32)
    reported = model.evaluate(x, y, verbose=0, return_dict=True)["accuracy"]
    assert reported == pytest.approx(paper_accuracy(y, model.predict(x, verbose=0)), abs=1e-6)


def test_ci_contains_mean_and_narrows(rng):
    small = rng.normal(5, 1, 10)
    large = rng.normal(5, 1, 1000)
    m_s, lo_s, hi_s = mean_ci(small)
    m_l, lo_l, hi_l = mean_ci(large)
    assert lo_s < m_s < hi_s and lo_l < m_l < hi_l
    assert hi_l - lo_l < (hi_s - lo_s) / 5
    assert m_s == pytest.approx(small.mean())


def test_ci_edge_cases():
    assert mean_ci([2.0, 2.0, 2.0]) == (2.0, 2.0, 2.0)
    assert mean_ci([math.inf, math.inf]) == (math.inf, math.inf, math.inf)
    m, lo, hi = mean_ci([1.0, math.nan, 3.0])
    assert m == 2.0 and lo < 2 < hi
    assert all(math.isnan(v) for v in mean_ci([]))
    _, lo, hi = mean_ci([0.0, 1.0, 1.0], bounds=(0.0, 1.0))
    assert lo >= 0.0 and hi == 1.0


def test_summarise_long_format(rng):
    import pandas as pd

    df = pd.DataFrame({"method": ["a"] * 5 + ["b"] * 5, "psnr": rng.normal(30, 1, 10),
                       "dice_dab": [1.0, 0.9, math.nan, 0.8, 0.7] + [0.5] * 5})
    out = summarise(df, by=("method",))
    assert list(out.columns) == ["method", "metric", "mean", "ci_low", "ci_high", "n"]
    assert len(out) == 4
    row = out[(out.method == "a") & (out.metric == "dice_dab")].iloc[0]
    assert row.n == 4 and row["mean"] == pytest.approx(0.85) and row.ci_high <= 1.0


@pytest.mark.parametrize("dtype, top", [(np.uint8, 255), (np.uint16, 65535)])
def test_integer_pixels_are_scored_at_their_own_scale(rng, dtype, top):
    # they were taken as floats against data_range=1: PSNR near -48 dB for 8-bit images
    clean = rng.integers(0, top + 1, (16, 16, 3)).astype(dtype)
    noisy = np.clip(clean.astype(np.int64) + rng.integers(-top // 20, top // 20 + 1, clean.shape), 0, top).astype(dtype)
    as_float = clean / float(top), noisy / float(top)
    assert psnr(clean, noisy) == pytest.approx(psnr(*as_float), abs=1e-4)
    assert ssim(clean, noisy) == pytest.approx(ssim(*as_float), abs=1e-5)
    assert psnr(clean, as_float[1]) == pytest.approx(psnr(*as_float), abs=1e-4)  # mixed: each at its own scale
    with pytest.raises(TypeError, match="int32"):
        psnr(clean.astype(np.int32), noisy)
