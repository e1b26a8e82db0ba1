"""The rewritten trunk layers compute the reference layers' functions (the order of sums aside)."""

from __future__ import annotations

import numpy as np
import pytest

tf = pytest.importorskip("tensorflow")
keras = pytest.importorskip("keras")

from ihclib import infer  # noqa: E402
from ihclib import model as ref  # noqa: E402
from ihclib import native  # noqa: E402
from ihclib.fast_trunk import (SubpixelConvTranspose, UpsampleConcat, phase_windows, rewrite_trunk,  # noqa: E402
                               subpixel_weights)


def random_weights(model, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in model.get_weights()])


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("strides", [2, 3])
@pytest.mark.parametrize("use_bias", [True, False])
def test_a_transposed_convolution_is_one_convolution_and_a_depth_to_space(kernel, strides, use_bias):
    inp = keras.Input((None, None, 6))
    layer = keras.layers.Conv2DTranspose(5, kernel, strides=strides, padding="same", use_bias=use_bias)
    model = keras.Model(inp, layer(inp))
    random_weights(model, kernel * 10 + strides)
    x = np.random.default_rng(1).normal(size=(2, 7, 9, 6)).astype(np.float32)
    rewritten = rewrite_trunk(model)
    assert [type(l) for l in rewritten.layers][1:] == [SubpixelConvTranspose]
    assert rewritten.output.shape[-1] == 5
    np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), atol=1e-5)


@pytest.mark.parametrize("kernel", [1, 2, 3, 4, 5])
@pytest.mark.parametrize("strides", [2, 3])
def test_a_transposed_convolution_before_a_concatenation_is_a_convolution_per_phase(kernel, strides):
    inp, skip_in = keras.Input((None, None, 6)), keras.Input((None, None, 4))
    up = keras.layers.Conv2DTranspose(5, kernel, strides=strides, padding="same", name="up")(inp)
    model = keras.Model([inp, skip_in], keras.layers.Concatenate()([up, skip_in]))
    random_weights(model, kernel * 10 + strides)
    rng = np.random.default_rng(3)
    x = [rng.normal(size=(2, 7, 9, 6)).astype(np.float32),
         rng.normal(size=(2, 7 * strides, 9 * strides, 4)).astype(np.float32)]
    rewritten = rewrite_trunk(model)
    (joined,) = [l for l in rewritten.layers if isinstance(l, UpsampleConcat)]
    windows = phase_windows((kernel, kernel), (strides, strides))
    # a phase without a tap (kernel 1: only phase 0 has one) keeps the one convolution
    assert (windows is None) == (kernel < strides)
    assert (joined.conv is None) == (windows is None)
    if windows is not None:
        assert joined.conv.phases_kernel == (kernel, kernel)
    if windows is not None:  # the taps of all phases are the kernel's, each once
        assert sum((w[0].stop - w[0].start) * (w[1].stop - w[1].start) for w in windows) == kernel * kernel
    np.testing.assert_allclose(tf.function(rewritten)(x).numpy(), model(x).numpy(), atol=1e-5)


def test_phase_windows_of_the_bundled_models_upsampling():
    # 3x3 at stride 2: phase (0, 0) sums 2 x 2 taps, (0, 1) and (1, 0) 2 x 1 and 1 x 2, (1, 1) one
    windows = phase_windows((3, 3), (2, 2))
    sizes = [(w[0].stop - w[0].start, w[1].stop - w[1].start) for w in windows]
    assert sizes == [(2, 2), (2, 1), (1, 2), (1, 1)]
    assert [w[2] for w in windows] == [[[0, 0], [1, 0], [1, 0], [0, 0]], [[0, 0], [1, 0], [0, 0], [0, 0]],
                                       [[0, 0], [0, 0], [1, 0], [0, 0]], [[0, 0]] * 4]
    with pytest.raises(ValueError, match="only with depth_to_space=False"):
        SubpixelConvTranspose(5, (2, 2, 6, 20), [[0, 0]] * 4, phases_kernel=(3, 3))


def test_subpixel_weights_put_each_tap_in_its_phase():
    kernel = np.arange(9, dtype=np.float32).reshape(3, 3, 1, 1)  # taps numbered 0..8
    weights, bias, padding = subpixel_weights(kernel, np.array([0.5], np.float32), (2, 2))
    assert weights.shape == (2, 2, 1, 4) and padding == [[0, 0], [1, 0], [1, 0], [0, 0]]
    np.testing.assert_array_equal(bias, [0.5] * 4)
    # output pixel (2m, 2n) sums x[m-1, n-1] k[2, 2], x[m-1, n] k[2, 0], x[m, n-1] k[0, 2], x[m, n] k[0, 0]
    np.testing.assert_array_equal(weights[..., 0, 0], [[8, 6], [2, 0]])
    np.testing.assert_array_equal(weights[..., 0, 3], [[0, 0], [0, 4]])  # (2m+1, 2n+1): x[m, n] k[1, 1]


def test_the_leaky_relu_goes_inside_only_when_it_is_the_one_reader():
    inp = keras.Input((None, None, 4))
    up = keras.layers.Conv2DTranspose(3, 3, strides=2, padding="same", name="up")(inp)
    alone = keras.Model(inp, keras.layers.LeakyReLU(negative_slope=0.2)(up))
    shared = keras.Model(inp, keras.layers.Add()([keras.layers.LeakyReLU(negative_slope=0.2)(up), up]))
    random_weights(alone)
    x = np.random.default_rng(2).normal(size=(1, 6, 5, 4)).astype(np.float32)
    for model, slope in ((alone, 0.2), (shared, None)):
        rewritten = rewrite_trunk(model)
        assert rewritten.get_layer("up").negative_slope == slope
        assert any(isinstance(l, keras.layers.LeakyReLU) for l in rewritten.layers) == (slope is None)
        np.testing.assert_allclose(rewritten(x).numpy(), model(x).numpy(), atol=1e-5)
    assert isinstance(alone.get_layer("up"), keras.layers.Conv2DTranspose)  # the model is left as it was


@pytest.mark.parametrize("options", [dict(padding="valid"), dict(padding="same", activation="relu"),
                                     dict(padding="same", output_padding=1), dict(padding="same", strides=1)])
def test_layers_it_cannot_compute_exactly_are_left_alone(options):
    options = {"strides": 2, **options}
    inp = keras.Input((None, None, 4))
    model = keras.Model(inp, keras.layers.Conv2DTranspose(3, 3, **options)(inp))
    assert rewrite_trunk(model) is model


@pytest.mark.parametrize("bfloat16", [False, True])
def test_the_bundled_architectures_copy_has_no_transposed_convolution_and_the_same_output(bfloat16):
    keras.utils.set_random_seed(4)
    model = ref.build_crosschannel_unet(None, base=8, lower_widths=(8, 16))
    rng = np.random.default_rng(4)
    for name in ("mask_logit", "correction_in_contrast_units", "spatial_share_logit"):  # else zero: no trunk in the output
        layer = model.get_layer(name)
        layer.set_weights([rng.normal(0, 0.5, w.shape).astype(np.float32) for w in layer.get_weights()])
    rng = np.random.default_rng(5)
    x = rng.random((1, 64, 64, 3)).astype(np.float32)
    x[x < 0.08], x[x > 0.92] = 0.0, 1.0
    copy = infer.inference_copy(model, bfloat16=bfloat16)
    kinds = [type(layer) for layer in copy.layers]
    # each transposed convolution is in the concatenation with its skip after it, as a convolution
    # per output phase (no products with the zero taps) whose phases are put in place there
    assert keras.layers.Conv2DTranspose not in kinds and SubpixelConvTranspose not in kinds
    assert kinds.count(UpsampleConcat) == 2 and keras.layers.Concatenate not in kinds
    convs = [layer.conv for layer in copy.layers if isinstance(layer, UpsampleConcat)]
    assert all(isinstance(conv, SubpixelConvTranspose) and conv.phases_kernel == (3, 3) for conv in convs)
    # each LeakyReLU after a transposed convolution is inside it: 8 of the trunk's 10 are left
    assert kinds.count(keras.layers.LeakyReLU) == 8
    heads = copy.get_layer("merged_heads").dtype_policy.name
    assert heads == ("mixed_bfloat16" if bfloat16 else "float32")  # after a bf16 trunk, bf16 heads
    # the per-layer copy keeps the reference trunk; the two differ by rounding only
    per_layer = infer.inference_copy(model, bfloat16=bfloat16, fused=False)
    assert keras.layers.Conv2DTranspose in {type(layer) for layer in per_layer.layers}
    got = copy(x).numpy()
    want = per_layer(x).numpy()
    assert not np.allclose(want, x, atol=1e-3)  # the network does change the image
    np.testing.assert_allclose(got, want, atol=1e-3 if bfloat16 else 1e-5)
    unflagged = (x > 0.01) & (x < 0.99)
    np.testing.assert_array_equal(got[unflagged], x[unflagged])  # the hard gate stays exact


def test_the_upsampling_concatenation_is_the_same_compiled_or_not():
    inp, skip_in = keras.Input((None, None, 6)), keras.Input((None, None, 4))
    up = keras.layers.LeakyReLU(negative_slope=0.1)(keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same")(inp))
    model = keras.Model([inp, skip_in], keras.layers.Concatenate()([up, skip_in]))
    random_weights(model, 6)
    rng = np.random.default_rng(7)
    x = [rng.normal(size=(2, 7, 9, 6)).astype(np.float32), rng.normal(size=(2, 14, 18, 4)).astype(np.float32)]
    compiled, plain = rewrite_trunk(model), rewrite_trunk(model, compiled=False)
    # compiled: the convolution per phase inside the concatenation; plain: one into all phases
    assert [type(l) for l in compiled.layers if not isinstance(l, keras.layers.InputLayer)] == [UpsampleConcat]
    assert [type(l) for l in plain.layers if not isinstance(l, keras.layers.InputLayer)] == [
        SubpixelConvTranspose, UpsampleConcat]
    want = model(x).numpy()
    np.testing.assert_allclose(plain(x).numpy(), want, atol=1e-5)
    run = tf.function(lambda a, b: compiled([a, b]))  # in a graph, as the command runs it
    np.testing.assert_allclose(run(*x).numpy(), want, atol=1e-5)
    with native.disabled():  # the same phases put in place by TensorFlow's two passes: the same bits
        np.testing.assert_array_equal(compiled(x).numpy(), run(*x).numpy())


def test_a_concatenation_with_the_upsampling_second_keeps_its_depth_to_space():
    inp, skip_in = keras.Input((None, None, 6)), keras.Input((None, None, 4))
    up = keras.layers.Conv2DTranspose(5, 3, strides=2, padding="same", name="up")(inp)
    model = keras.Model([inp, skip_in], keras.layers.Concatenate()([skip_in, up]))
    rewritten = rewrite_trunk(model)
    assert rewritten.get_layer("up").depth_to_space
    assert not any(isinstance(l, UpsampleConcat) for l in rewritten.layers)


def test_a_reader_in_a_second_call_of_a_layer_is_seen():
    """A layer's ``.input`` is its first call's: a reader of the transposed convolution in another
    call must still count, or the LeakyReLU would be taken in and that reader given its output
    (the first version read ``.input`` and got this model wrong)."""
    inp, other = keras.Input((None, None, 4)), keras.Input((None, None, 4))
    up = keras.layers.Conv2DTranspose(4, 3, strides=2, padding="same", name="up")(inp)
    mix = keras.layers.Conv2D(4, 1, name="mix")
    first = mix(other)  # mix's first call reads the other input
    out = keras.layers.Add()([keras.layers.LeakyReLU(negative_slope=0.1)(up), mix(up)])
    model = keras.Model([inp, other], [out, first])
    random_weights(model, 8)
    rng = np.random.default_rng(9)
    x = [rng.normal(size=(1, 5, 6, 4)).astype(np.float32), rng.normal(size=(1, 3, 3, 4)).astype(np.float32)]
    rewritten = rewrite_trunk(model)
    for got, want in zip(rewritten(x), model(x)):
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), atol=1e-5)
