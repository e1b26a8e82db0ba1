"""The fused classical layers compute the reference layers' functions (float32 rounding aside)."""

from __future__ import annotations

import contextlib

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")

from ihclib import infer  # noqa: E402
from ihclib import model as ref  # noqa: E402
from ihclib import fast_layers as fast  # noqa: E402
from ihclib.fast_trunk import SubpixelConvTranspose  # noqa: E402


def ihc_like(shape=(2, 45, 61), amount=0.15, seed=0) -> tuple[np.ndarray, np.ndarray]:
    """Correlated colour channels (as stains give), a saturated white patch, a patch with every
    value flagged, s&p impulses; returns (x, flag) as the model computes the flag."""
    rng = np.random.default_rng(seed)
    base = rng.random((*shape, 1))
    x = np.clip(np.concatenate([base, 0.8 * base + 0.1, 1.0 - 0.5 * base], -1)
                + 0.05 * rng.normal(size=(*shape, 3)), 0.0, 1.0)
    x[:, 5:14, 5:16] = 1.0  # clean white background: every value flagged and equal
    x[:, 20:30, 30:41] = rng.integers(0, 2, (shape[0], 10, 11, 3))  # flagged, mixed
    noise = rng.random(x.shape)
    x = np.where(noise < amount / 2, 0.0, np.where(noise > 1 - amount / 2, 1.0, x)).astype(np.float32)
    flag = ((x >= 0.999) * x + ((1 - x) >= 0.999) * (1 - x)).astype(np.float32)  # ihclib.model.impulse_hint
    return x, flag


@pytest.mark.parametrize("windows", [(3, 5, 7), (5, 7)])
def test_spatial_fill_matches_the_reference(windows):
    x, flag = ihc_like()
    want = ref.SpatialFill(windows)([x, flag]).numpy()
    got = fast.FastSpatialFill(windows)([x, flag]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-6)
    # where a 7x7 window holds flagged values only, both take its majority value exactly
    np.testing.assert_array_equal(got[:, 8:11, 8:13], want[:, 8:11, 8:13])


def test_cross_channel_fill_matches_the_reference():
    x, flag = ihc_like(amount=0.3, seed=1)
    fallback = ref.SpatialFill((3, 5, 7))([x, flag])
    want = ref.CrossChannelFill()([x, flag, fallback]).numpy()
    got = fast.FastCrossChannelFill()([x, flag, fallback]).numpy()
    np.testing.assert_allclose(got, want, atol=1e-4)
    # every branch was exercised: one guide, two guides, and the fallback
    n_flagged = (flag > 0.5).sum(-1)
    assert {0, 1, 2, 3} <= set(np.unique(n_flagged))


def test_local_contrast_matches_the_reference():
    x, _ = ihc_like(seed=2)
    want = ref.LocalContrast(5)(x).numpy()
    got = fast.FastLocalContrast(5)(x).numpy()
    # compare variances: the square root magnifies float32 cancellation where the image is flat
    np.testing.assert_allclose(got**2, want**2, atol=1e-6)


def test_window_counts_are_what_an_average_pool_divides_by():
    ones = np.ones((1, 9, 12, 1), np.float32)
    for w in (3, 5, 7):
        want = ref._box_sums(ones, w).numpy()
        np.testing.assert_array_equal(fast.window_counts(9, 12, w).numpy(), want)


@pytest.mark.parametrize("compiled", [False, True], ids=["tensorflow_prefix", "compiled_prefix"])
@pytest.mark.parametrize("build", [ref.build_crosschannel_unet, ref.build_crosschannel_s2d_unet,
                                   ref.build_crosschannel_s4d_cnn, ref.build_crosschannel_s4d_unet])
def test_inference_copy_fuses_crosschannel_unet_and_keeps_the_gate_exact(build, compiled):
    keras = pytest.importorskip("keras")
    from ihclib import native

    if compiled and not native.available():
        pytest.skip(f"no compiled prefix here: {native.unavailable_reason()}")
    keras.utils.set_random_seed(3)
    model = build(None, base=4)
    rng = np.random.default_rng(3)
    for name in ("mask_logit", "correction_in_contrast_units", "spatial_share_logit"):
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    x, _ = ihc_like((1, 64, 96), seed=4)
    # values near the extremes but not 8-bit ones: the flag passes them only above its threshold
    x[0, 40, 50:56, 1] = [0.9995, 0.999, 0.9989, 0.0005, 0.001, 0.0011]
    with native.disabled() if not compiled else contextlib.nullcontext():
        check_fused_copy(model, x)


def check_fused_copy(model, x):
    assert infer.has_hard_gate(model)  # both crosschannel architectures: tiles without 0/1 values skip it
    want = model(x).numpy()
    unflagged = (x > 0.01) & (x < 0.99)
    per_layer = infer.inference_copy(model, fused=False)
    assert {type(layer) for layer in per_layer.layers} == {type(layer) for layer in model.layers}
    whole = infer.inference_copy(model)
    kinds = {type(layer) for layer in whole.layers}
    # crosschannel_unet: the prefix and the head are one fused layer each, nothing of the reference left
    assert {fast.CrossChannelPrefix, fast.CrossChannelHead} <= kinds
    assert not (set(fast.FAST_VARIANTS) | set(fast.FAST_VARIANTS.values())) & kinds
    assert all(layer.dtype_policy.name == "float32" for layer in whole.layers)
    # the same weights, but for the transposed convolutions' zero taps (ihclib.fast_trunk)
    # (inside the concatenation after them where each phase is a convolution of its own)
    subpixel = [layer for layer in whole.layers if isinstance(layer, SubpixelConvTranspose)]
    subpixel += [layer.conv for layer in whole.layers if getattr(layer, "conv", None) is not None]
    extra = sum(layer.count_params() - model.get_layer(layer.name).count_params() for layer in subpixel)
    assert len(whole.layers) < len(model.layers) and whole.count_params() == model.count_params() + extra
    got = whole(x).numpy()
    np.testing.assert_array_equal(got[unflagged], x[unflagged])  # the gate stays exact
    np.testing.assert_allclose(got, want, atol=1e-4)
    # with a bf16 trunk: the same function as the per-layer bf16 copy, up to rounding
    bf_whole, bf_layers = infer.inference_copy(model, bfloat16=True), infer.inference_copy(model, True, fused=False)
    # (and the whole copy's merged heads in bf16: these random heads' corrections, up to ~0.5 in
    # contrast units, then differ by one more bf16 rounding, 2^-9 of themselves)
    np.testing.assert_allclose(bf_whole(x).numpy(), bf_layers(x).numpy(), atol=2e-3)
    np.testing.assert_array_equal(bf_whole(x).numpy()[unflagged], x[unflagged])


def test_denoise_uses_the_fused_layers_only_when_asked(monkeypatch):
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(5)
    model = ref.build_crosschannel_unet(None, base=4)
    monkeypatch.delenv(infer.PRECISION_ENV, raising=False)
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: False)
    x, _ = ihc_like((1, 64, 64), seed=6)
    from ihclib.backends import _model_cache

    def copies():
        return [k for k in _model_cache(model) if isinstance(k, tuple) and k[0] == "inference_copy"]

    infer.denoise(model, x[0], tile_size=64, overlap=0, multiple=4)
    assert copies() == []  # the library's default (what the study runs): the reference layers
    infer.denoise(model, x[0], tile_size=64, overlap=0, multiple=4, precision="auto")  # what `ihclib denoise` asks
    # fused layers, float32 trunk (no bf16 here), the compiled prefix allowed (no jit_compile)
    assert copies() == [("inference_copy", False, True, True)]


def test_fused_layers_serve_models_other_than_crosschannel_unet():
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(7)
    model = ref.build_switching_unet(None, base=4)
    x, _ = ihc_like((1, 64, 64), seed=8)
    copy = infer.inference_copy(model)
    kinds = {type(layer) for layer in copy.layers}
    assert fast.FastSpatialFill in kinds and ref.SpatialFill not in kinds
    np.testing.assert_allclose(copy(x).numpy(), model(x).numpy(), atol=1e-4)


def test_auto_makes_no_copy_of_a_model_without_such_layers(monkeypatch):
    keras = pytest.importorskip("keras")
    from ihclib.backends import _model_cache

    inp = keras.Input((None, None, 3))
    model = keras.Model(inp, keras.layers.Conv2D(3, 3, padding="same")(inp))
    monkeypatch.delenv(infer.PRECISION_ENV, raising=False)
    monkeypatch.setattr(infer, "cpu_has_bf16", lambda: False)
    assert not infer.has_fast_variants(model)
    infer.denoise(model, np.zeros((32, 32, 3), np.float32), tile_size=32, overlap=0, multiple=4, precision="auto")
    assert not [k for k in _model_cache(model) if isinstance(k, tuple) and k[0] == "inference_copy"]
