import importlib.util

import numpy as np
import pytest

from ihclib.study.baselines import (BASELINES, adaptive_median, get_baselines, impulse_mask, median3,
                                    switching_median)
from ihclib.study.metrics import psnr
from ihclib.noise import gaussian, salt_and_pepper

MEDIANS = ("median 3x3", "median 5x5", "adaptive median", "switching median")
IMPULSE_ONLY = ("switching mean", "cross-channel")  # leaves every non-impulse value as it is: no use on Gaussian noise
GENERIC = [n for n in list(BASELINES) if n not in MEDIANS + IMPULSE_ONLY]


@pytest.fixture(scope="module")
def sp10(ihc_crop):
    return salt_and_pepper(ihc_crop, 0.1, np.random.default_rng(7))


def test_registry():
    names = list(BASELINES)
    assert set(MEDIANS) | {"tv"} <= set(names)
    assert "bm3d" not in names  # opt-in only
    has_bm3d = importlib.util.find_spec("bm3d") is not None and importlib.util.find_spec("pywt") is not None
    assert ("bm3d" in list(get_baselines(extras=True))) == has_bm3d
    assert set(BASELINES) <= set(get_baselines(extras=True))
    assert ("wavelet" in names) == (importlib.util.find_spec("pywt") is not None)


@pytest.mark.parametrize("name", list(BASELINES))
def test_filter_output_contract(name, sp10):
    out = BASELINES[name](sp10)
    assert out.shape == sp10.shape and out.dtype == np.float32
    assert out.min() >= 0.0 and out.max() <= 1.0
    assert not np.array_equal(out, sp10)


@pytest.mark.parametrize("name", MEDIANS)
def test_medians_remove_impulse_noise(name, ihc_crop, sp10):
    assert psnr(ihc_crop, BASELINES[name](sp10)) > psnr(ihc_crop, sp10) + 8


@pytest.mark.parametrize("name", GENERIC)
def test_generic_filters_reduce_gaussian_noise(name, ihc_crop):
    noisy = gaussian(ihc_crop, 0.1, np.random.default_rng(3))
    assert psnr(ihc_crop, BASELINES[name](noisy)) > psnr(ihc_crop, noisy) + 1


def test_switching_median_touches_only_impulses(sp10):
    out = switching_median(sp10)
    keep = ~impulse_mask(sp10)
    assert np.array_equal(out[keep], sp10[keep])
    assert impulse_mask(out).mean() < 0.2 * impulse_mask(sp10).mean()


def test_switching_median_handles_per_pixel_noise(ihc_crop):
    noisy = salt_and_pepper(ihc_crop, 0.1, np.random.default_rng(2), per_pixel=True)
    assert psnr(ihc_crop, switching_median(noisy)) > psnr(ihc_crop, noisy) + 15


def test_switching_median_uses_non_impulse_neighbours():
    img = np.full((9, 9, 3), 0.4, np.float32)
    img[4, 4, 0] = 1.0
    img[3:6, 3:6, 1] = 0.0  # a 3x3 block of pepper: needs the 5x5 window
    img[2, 2, 1] = 0.7
    out = switching_median(img)
    assert out[4, 4, 0] == pytest.approx(0.4)
    assert out[4, 4, 1] == pytest.approx(0.4)  # median of 15x0.4 and one 0.7
    assert np.all(out[..., 2] == 0.4)


def test_adaptive_median_beats_median3_at_half_noise(ihc_crop):
    noisy = salt_and_pepper(ihc_crop, 0.5, np.random.default_rng(1))
    assert psnr(ihc_crop, adaptive_median(noisy)) > psnr(ihc_crop, median3(noisy)) + 5


def test_adaptive_median_keeps_non_extreme_values():
    rng = np.random.default_rng(0)
    img = rng.uniform(0.2, 0.8, (16, 16, 3)).astype(np.float32)
    out = adaptive_median(img)
    # a value strictly between its window's min and max is kept (level B)
    assert np.mean(out == img) > 0.5


def test_filters_refuse_bad_input():
    with pytest.raises(ValueError, match="RGB"):
        median3(np.zeros((8, 8), np.float32))
    with pytest.raises(TypeError, match="float"):
        switching_median(np.zeros((8, 8, 3), np.uint8))


def test_switching_mean_only_touches_impulses_and_beats_noisy(ihc_crop):
    from ihclib.study.baselines import impulse_mask, switching_mean
    from ihclib.study.metrics import psnr
    from ihclib.noise import salt_and_pepper

    clean = np.clip(ihc_crop, 0.01, 0.99)
    noisy = salt_and_pepper(clean, 0.3, np.random.default_rng(0))
    out = switching_mean(noisy)
    keep = ~impulse_mask(noisy)
    np.testing.assert_array_equal(out[keep], noisy[keep])
    assert psnr(clean, out) > psnr(clean, noisy) + 15
    # an isolated impulse becomes the mean of its 8 neighbours
    img = np.full((5, 5, 3), 0.4, np.float32)
    img[1:4, 1:4, 0] = [[0.1, 0.2, 0.3], [0.4, 1.0, 0.6], [0.7, 0.8, 0.9]]
    assert switching_mean(img)[2, 2, 0] == pytest.approx(0.5)


def test_cross_channel_predicts_an_impulse_from_the_pixels_clean_channels():
    from ihclib.study.baselines import cross_channel

    # red = 0.2 + 0.5 * green everywhere (a stain mixture): a hit red value is read off green
    rng = np.random.default_rng(0)
    green = rng.uniform(0.2, 0.8, (9, 9)).astype(np.float32)
    img = np.stack([0.2 + 0.5 * green, green, np.full_like(green, 0.5)], axis=-1)
    noisy = img.copy()
    noisy[4, 4, 0] = 1.0
    out = cross_channel(noisy)
    assert out[4, 4, 0] == pytest.approx(img[4, 4, 0], abs=2e-3)
    keep = ~impulse_mask(noisy)
    np.testing.assert_array_equal(out[keep], noisy[keep])  # only impulses change
    # the switching median can only guess from the neighbours
    assert abs(switching_median(noisy)[4, 4, 0] - img[4, 4, 0]) > 10 * abs(out[4, 4, 0] - img[4, 4, 0])


def test_cross_channel_beats_switching_median_on_real_ihc(ihc_crop):
    from ihclib.study.baselines import cross_channel

    clean = np.clip(ihc_crop, 0.01, 0.99)
    for amount in (0.1, 0.3):
        noisy = salt_and_pepper(clean, amount, np.random.default_rng(4))
        assert psnr(clean, cross_channel(noisy)) > psnr(clean, switching_median(noisy)) + 1


def test_cross_channel_keeps_a_clean_saturated_background():
    from ihclib.study.baselines import cross_channel

    img = np.ones((24, 24, 3), np.float32)
    img[8:16, 8:16] = [0.6, 0.4, 0.3]
    out = cross_channel(img)
    np.testing.assert_array_equal(out[img < 1], img[img < 1])
    # white more than 3 px from tissue stays white; nearer, the (switching median) fallback takes
    # the tissue's colour: what a learned model has to do better (crosschannel_unet's SameExtreme)
    np.testing.assert_array_equal(out[:5, :5], img[:5, :5])
    assert (out[7, 8:16] < 1).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.uint16])
def test_impulse_mask_of_integer_pixels_flags_zero_and_full_scale(dtype):
    # 1 of 255 was flagged and 255 was not
    top = np.iinfo(dtype).max
    pixels = np.array([[[0, 1, top], [top - 1, top, 0]]], dtype)
    assert impulse_mask(pixels).tolist() == [[[True, False, True], [False, True, True]]]
