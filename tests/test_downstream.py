import math

import numpy as np
import pytest
from skimage.color import rgb2hed
from skimage.filters import threshold_otsu

from ihclib.study.downstream import (Thresholds, dab_area_fraction, dice, downstream_scores,
                               fit_thresholds, hed, masks)
from ihclib.noise import salt_and_pepper


def test_dice():
    a = np.zeros((4, 4), bool)
    a[:2] = True
    assert dice(a, a) == 1.0
    assert dice(a, ~a) == 0.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    b = np.zeros_like(a)
    b[0] = True
    assert dice(a, b) == pytest.approx(2 * 4 / (8 + 4))
    with pytest.raises(ValueError):
        dice(a, a[:2])


def test_dab_area_fraction():
    m = np.zeros((10, 10), bool)
    m[:3] = True
    assert dab_area_fraction(m) == pytest.approx(0.3)


def test_thresholds_are_otsu_of_the_clean_image(ihc_crop):
    t = fit_thresholds(ihc_crop)
    d = rgb2hed(ihc_crop)
    assert t.dab == pytest.approx(threshold_otsu(d[..., 2]))
    assert t.hematoxylin == pytest.approx(threshold_otsu(d[..., 0]))
    dab, nuc = masks(ihc_crop, t)
    assert 0.01 < dab.mean() < 0.99 and 0.01 < nuc.mean() < 0.99


def test_scores_use_the_clean_thresholds_unchanged(ihc_crop):
    noisy = salt_and_pepper(ihc_crop, 0.1, np.random.default_rng(0))
    s = downstream_scores(ihc_crop, noisy)
    t = fit_thresholds(ihc_crop)
    dab_c, nuc_c = masks(ihc_crop, t)
    dab_n, nuc_n = masks(noisy, t)
    assert s["dice_dab"] == pytest.approx(dice(dab_c, dab_n))
    assert s["dice_nuclei"] == pytest.approx(dice(nuc_c, nuc_n))
    assert s["dab_fraction_error"] == pytest.approx(100 * abs(dab_n.mean() - dab_c.mean()))
    assert fit_thresholds(noisy) != t  # re-fitting on the noisy image would move them
    assert s["dice_dab"] < 1 and s["dab_fraction_error"] > 0


def test_identical_images_score_perfectly(ihc_crop):
    s = downstream_scores(ihc_crop, ihc_crop)
    assert s == {"dice_dab": 1.0, "dice_nuclei": 1.0, "dab_fraction_error": 0.0}


def test_batch_thresholds_pool_the_tiles(ihc_crop):
    tiles = np.stack([ihc_crop[:48, :48], ihc_crop[48:, 48:]])
    t = fit_thresholds(tiles)
    assert t.dab == pytest.approx(threshold_otsu(np.concatenate([rgb2hed(x)[..., 2].ravel() for x in tiles])))


def test_zero_values_give_finite_densities():
    img = np.zeros((4, 4, 3), np.float32)
    img[0, 0] = 1.0
    assert np.all(np.isfinite(hed(img)))


def test_dice_is_nan_when_clean_mask_empty():
    white = np.ones((8, 8, 3), np.float32) * 0.95
    s = downstream_scores(white, white, Thresholds(dab=10.0, hematoxylin=10.0))
    assert math.isnan(s["dice_dab"]) and math.isnan(s["dice_nuclei"])
    assert s["dab_fraction_error"] == 0.0


def test_small_objects_removed(ihc_crop):
    noisy = salt_and_pepper(ihc_crop, 0.05, np.random.default_rng(0))
    t = fit_thresholds(ihc_crop)
    raw, _ = masks(noisy, t)
    cleaned, _ = masks(noisy, t, min_size=5)
    assert cleaned.sum() < raw.sum()
    assert not np.any(cleaned & ~raw)


def test_stain_densities_of_8bit_pixels_are_those_of_the_image():
    # uint8 pixels were clipped to [0, 1]: a nearly white image, almost no stain
    from skimage import data

    pixels = data.immunohistochemistry()[:48, :40]
    assert np.array_equal(hed(pixels), hed(pixels.astype(np.float32) / np.float32(255)))
