import numpy as np
import pytest

from ihclib import noise
from ihclib.noise import NoiseSpec, apply_noise, impulse_share, salt_and_pepper


@pytest.fixture
def clean(rng):
    # values strictly inside (0, 1) so every 0/1 afterwards is an impulse
    return rng.uniform(0.05, 0.95, size=(128, 128, 3)).astype(np.float32)


@pytest.mark.parametrize("amount", [0.01, 0.1, 0.3, 0.5])
@pytest.mark.parametrize("per_pixel", [False, True])
def test_impulse_share_matches_amount(clean, amount, per_pixel):
    noisy = salt_and_pepper(clean, amount, np.random.default_rng(0), per_pixel=per_pixel)
    measured = impulse_share(noisy, clean, per_pixel=per_pixel)
    n = clean[..., 0].size if per_pixel else clean.size
    tol = 4 * np.sqrt(amount * (1 - amount) / n) + 1e-4
    assert abs(measured - amount) < tol


def test_per_pixel_turns_whole_pixels_black_or_white(clean):
    noisy = salt_and_pepper(clean, 0.2, np.random.default_rng(0), per_pixel=True)
    hit = (noisy != clean).any(axis=-1)
    px = noisy[hit]
    assert np.all((px == 0).all(axis=-1) | (px == 1).all(axis=-1))
    # per channel: a hit pixel usually has only some channels changed
    noisy_c = salt_and_pepper(clean, 0.2, np.random.default_rng(0), per_pixel=False)
    changed = (noisy_c != clean).sum(axis=-1)
    assert (changed == 1).mean() > 0.1


@pytest.mark.parametrize("per_pixel", [False, True])
def test_salt_vs_pepper(clean, per_pixel):
    noisy = salt_and_pepper(clean, 0.4, np.random.default_rng(3), salt_vs_pepper=0.8, per_pixel=per_pixel)
    salt, pepper = (noisy == 1).sum(), (noisy == 0).sum()
    assert abs(salt / (salt + pepper) - 0.8) < 0.03


def test_same_seed_same_noise_other_seed_other_noise(clean):
    for spec in [NoiseSpec("s&p", 0.1), NoiseSpec("s&p", 0.1, per_pixel=True), NoiseSpec("gaussian", 0.05),
                 NoiseSpec("poisson", 50), NoiseSpec("speckle", 0.01)]:
        a = apply_noise(clean, spec, np.random.default_rng(7))
        b = apply_noise(clean, spec, np.random.default_rng(7))
        c = apply_noise(clean, spec, np.random.default_rng(8))
        np.testing.assert_array_equal(a, b)
        assert not np.array_equal(a, c)
        assert a.dtype == clean.dtype and a.min() >= 0 and a.max() <= 1


def test_gaussian_sigma_measured(clean):
    mid = np.full((256, 256, 3), 0.5, np.float32)
    noisy = noise.gaussian(mid, 0.05, np.random.default_rng(0))
    assert abs((noisy - mid).std() - 0.05) < 0.002


def test_poisson_peak_noisier_when_lower():
    mid = np.full((128, 128, 3), 0.5, np.float32)
    low = noise.poisson(mid, np.random.default_rng(0), peak=10)
    high = noise.poisson(mid, np.random.default_rng(0), peak=1000)
    assert (low - mid).std() > 3 * (high - mid).std()


def test_contrast_brightness():
    img = np.array([[[0.25, 0.5, 0.75]]], np.float32)
    out = noise.adjust_contrast_brightness(img, contrast=2.0, brightness=0.1)
    np.testing.assert_allclose(out, [[[0.1, 0.6, 1.0]]], atol=1e-6)


def test_bad_arguments(clean):
    with pytest.raises(ValueError):
        salt_and_pepper(clean, 1.5, np.random.default_rng(0))
    with pytest.raises(ValueError):
        NoiseSpec("blur", 0.1)
    with pytest.raises(TypeError):
        salt_and_pepper((clean * 255).astype(np.uint8), 0.1, np.random.default_rng(0))


def test_spec_roundtrip_and_label():
    spec = NoiseSpec("s&p", 0.3, per_pixel=True)
    assert NoiseSpec.from_dict(spec.to_dict()) == spec
    assert spec.label() == "s&p 30% (per pixel)"


def test_noise_statistics_keys(clean):
    stats = noise.noise_statistics(clean, NoiseSpec("s&p", 0.1), np.random.default_rng(0))
    assert abs(stats["impulse_share_values"] - 0.1) < 0.01
    assert stats["rmse"] > 0
