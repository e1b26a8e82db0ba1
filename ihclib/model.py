"""The paper's network (Figure 3) and the study's modifications, as Keras models.

* ``paper_unet``: the encoder-decoder of Figure 3, layer by layer (17,764,878 parameters).
* ``dncnn_residual``: a small full-resolution CNN that predicts the noise (DnCNN-style residual
  learning, output = input - residual) on top of a classical prior. Salt-and-pepper is a local
  corruption, so a 17x17 receptive field at full resolution is enough.
* ``switching_unet``: a small U-Net with a *switching* head, the CNN version of a switching
  median filter: it predicts per value an impulse probability ``m`` (sigmoid) and a fill value
  ``f``; output = m * f + (1 - m) * input, so values it judges clean pass through untouched.
* ``crosschannel_unet``: the same U-Net body refining the *cross-channel* filter of
  ``ihclib.study.baselines`` (each impulse value predicted from the clean channels of its own pixel);
  unflagged values pass exactly, and it learns which 0/1 values are clean saturation.

``dncnn_residual`` and ``switching_unet`` see :func:`impulse_features` (the input, a flag for
exactly saturated values, masked local means) and are initialised to reproduce a classical
*switching mean filter*; ``crosschannel_unet`` starts as the cross-channel filter. Their learned
parts then refine that start: without it they need thousands of steps to learn the sharp
switch, far beyond a CPU budget. The evaluation therefore includes those classical filters, or
the comparison would flatter the CNNs.

Only built-in layers plus registered custom layers (:class:`SpatialFill`,
:class:`CrossChannelFill`, :class:`SameExtreme`, :class:`LocalContrast`) are used, no Lambda, so
saved models load with ``safe_mode=True`` once ``ihclib.model`` is imported.
Builders take ``tile_size``; ``None`` gives a fully convolutional model that accepts any
height and width that is a multiple of ``INPUT_MULTIPLE[name]``.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Callable

import keras
import numpy as np
from keras import layers

from .images import atomic_write, atomic_write_text
from .registry import INPUT_MULTIPLE, MODEL_NAMES

# ---------------------------------------------------------------- the paper's network


def build_paper_model(tile_size: int | None = 256) -> keras.Model:
    """Figure 3 of the paper: five stride-2 convolutions, five mirrored transposed ones.

    Encoder Conv2D 64/128/256/512/512 (3x3, the fifth 5x5, padding same), BatchNormalization
    after the third to fifth, LeakyReLU after each; decoder Conv2DTranspose 512 (5x5) then
    256/128/64/3 (3x3), each followed by LeakyReLU and concatenated with the mirrored encoder
    activation (the last with the input); a 2x2 Conv2D gives 3 channels. The final activation
    is not stated in the paper, so the last convolution stays linear as the table shows.
    LeakyReLU keeps Keras' default slope (0.3), which the paper most likely used.
    """
    inp = keras.Input(shape=(tile_size, tile_size, 3))
    skips = []
    x = inp
    for i, (filters, kernel) in enumerate([(64, 3), (128, 3), (256, 3), (512, 3), (512, 5)]):
        x = layers.Conv2D(filters, kernel, strides=2, padding="same")(x)
        if i >= 2:
            x = layers.BatchNormalization()(x)
        x = layers.LeakyReLU()(x)
        skips.append(x)
    # decoder: skips[-2::-1] are the 16, 32, 64, 128 px activations, then the input
    for filters, kernel, skip in zip([512, 256, 128, 64, 3], [5, 3, 3, 3, 3], skips[-2::-1] + [inp]):
        x = layers.Conv2DTranspose(filters, kernel, strides=2, padding="same")(x)
        x = layers.LeakyReLU()(x)
        x = layers.Concatenate()([x, skip])
    out = layers.Conv2D(3, 2, padding="same")(x)
    return keras.Model(inp, out, name="paper_unet")


# ---------------------------------------------------------------- modifications


def impulse_hint(x):
    """Per-value flag (0 or 1) for values that are exactly saturated: 1 (salt) or 0 (pepper).

    What a switching median filter tests first, given to the network as extra input channels
    (it still learns which flagged values are real impulses). Built from ReLU(threshold) and
    Rescaling layers: ReLU(threshold=t) passes values >= t and zeroes the rest; 0.999 lies
    between 254/255 and 1, so only exact extremes of 8-bit data are flagged.
    """
    salt = layers.ReLU(threshold=0.999, name="salt_flag")(x)
    pepper = layers.ReLU(threshold=0.999, name="pepper_flag")(layers.Rescaling(-1.0, offset=1.0, name="one_minus_input")(x))
    return layers.Add(name="impulse_hint")([salt, pepper])


@keras.saving.register_keras_serializable(package="ihclib")
class SpatialFill(layers.Layer):
    """Fill for every value from its own channel's unflagged neighbours, never from flagged ones.

    Inputs ``[x, flag]``. The mean of the unflagged values of the same channel in the smallest
    window (3, 5, 7) that holds one (a switching mean filter); where even the 7x7 window holds
    only flagged values (a saturated background: every value there is exactly 0 or 1), the
    majority value of that window, i.e. its median. The older "0 where nothing is unflagged"
    turned white backgrounds black (issue 10); this is what ``baselines.switching_mean`` does
    up to the last fallback.
    """

    def __init__(self, windows: tuple[int, ...] = (3, 5, 7), **kwargs):
        super().__init__(**kwargs)
        self.windows = tuple(int(w) for w in windows)

    def call(self, inputs):
        x, flag = inputs
        keep = 1.0 - flag
        k = self.windows[-1]
        # all values flagged: they are 0 or 1, so rounding their mean gives the median
        fill = keras.ops.round(keras.ops.average_pool(x, k, strides=1, padding="same"))
        for w in reversed(self.windows):
            num = keras.ops.average_pool(x * keep, w, strides=1, padding="same")
            den = keras.ops.average_pool(keep, w, strides=1, padding="same")
            fill = keras.ops.where(den > 1e-6, keras.ops.divide_no_nan(num, den), fill)
        return fill

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "windows": list(self.windows)}


def _box_sums(x, window: int):
    """Per-channel sums over ``window`` x ``window`` neighbourhoods (zero padding, exact counts)."""
    channels = x.shape[-1]
    kernel = keras.ops.ones((window, window, channels, 1), dtype=x.dtype)
    return keras.ops.depthwise_conv(x, kernel, strides=1, padding="same")


@keras.saving.register_keras_serializable(package="ihclib")
class CrossChannelFill(layers.Layer):
    """The cross-channel switching filter as a layer: ``baselines.cross_channel`` in Keras ops.

    Inputs ``[x, flag]``. IHC colours mix two or three stains, so the channels of a pixel are
    strongly correlated, and per-channel impulses leave most hit pixels with clean channels.
    Each flagged value is predicted from the clean channels of the same pixel by a linear
    regression fitted on the fully clean pixels of its ``window`` x ``window`` neighbourhood
    (one guide: a = cov / (var + eps); two guides: the 2x2 ridge solution). Values with no clean
    channel, or fewer than ``min_clean`` clean neighbours, keep the :class:`SpatialFill`
    value, which is passed in as the third input. Returns the fill for every value (the caller
    switches it in only where flagged).
    """

    def __init__(self, window: int = 5, eps: float = 1e-3, min_clean: int = 3, **kwargs):
        super().__init__(**kwargs)
        self.window, self.eps, self.min_clean = int(window), float(eps), int(min_clean)

    def call(self, inputs):
        x, flag, fallback = inputs
        ops = keras.ops
        clean = ops.prod(1.0 - flag, axis=-1, keepdims=True)  # 1 where all three channels are clean
        ch = [x[..., i:i + 1] for i in range(3)]
        pairs = [(0, 0), (1, 1), (2, 2), (0, 1), (0, 2), (1, 2)]
        stacked = ops.concatenate([clean] + [clean * c for c in ch] + [clean * ch[a] * ch[b] for a, b in pairs], axis=-1)
        sums = _box_sums(stacked, self.window)
        n = sums[..., 0:1]
        enough = n >= self.min_clean - 0.5
        safe = ops.where(enough, n, ops.ones_like(n))
        mu = [sums[..., 1 + i:2 + i] / safe for i in range(3)]
        cov = {}
        for j, (a, b) in enumerate(pairs):
            cov[a, b] = cov[b, a] = sums[..., 4 + j:5 + j] / safe - mu[a] * mu[b]
        f = [flag[..., i:i + 1] > 0.5 for i in range(3)]
        out = []
        for c in range(3):
            d, e = [k for k in range(3) if k != c]
            one_d = mu[c] + cov[c, d] / (cov[d, d] + self.eps) * (ch[d] - mu[d])
            one_e = mu[c] + cov[c, e] / (cov[e, e] + self.eps) * (ch[e] - mu[e])
            a11, a22, a12 = cov[d, d] + self.eps, cov[e, e] + self.eps, cov[d, e]
            det = a11 * a22 - a12 * a12  # > 0: a covariance matrix plus eps on the diagonal
            bd = (a22 * cov[c, d] - a12 * cov[c, e]) / det
            be = (a11 * cov[c, e] - a12 * cov[c, d]) / det
            two = mu[c] + bd * (ch[d] - mu[d]) + be * (ch[e] - mu[e])
            fill = fallback[..., c:c + 1]
            fill = ops.where(enough & ops.logical_not(f[d]) & f[e], one_d, fill)
            fill = ops.where(enough & f[d] & ops.logical_not(f[e]), one_e, fill)
            fill = ops.where(enough & ops.logical_not(f[d]) & ops.logical_not(f[e]), two, fill)
            out.append(fill)
        return ops.clip(ops.concatenate(out, axis=-1), 0.0, 1.0)

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self) -> dict:
        return {**super().get_config(), "window": self.window, "eps": self.eps, "min_clean": self.min_clean}


def impulse_features(x):
    """(features, hint, mean3): input, impulse hint and masked local means (3x3, 5x5), concatenated."""
    hint = impulse_hint(x)
    mean3 = SpatialFill((3, 5, 7), name="masked_mean_3")([x, hint])
    mean5 = SpatialFill((5, 7), name="masked_mean_5")([x, hint])
    return layers.Concatenate(name="impulse_features")([x, hint, mean3, mean5]), hint, mean3


def build_dncnn_residual(tile_size: int | None = 64, depth: int = 8, filters: int = 32) -> keras.Model:
    """DnCNN-style residual CNN at full resolution over a classical prior: output = input - residual.

    residual = hint * (input - masked 3x3 mean) [the switching mean filter's correction]
    + a learned residual from ``depth`` 3x3 convolutions over :func:`impulse_features`
    (receptive field 2*depth+1, no down-sampling, ~60k parameters). The last convolution is
    zero-initialised, so training starts from the classical filter and learns what it misses;
    a plain DnCNN needs thousands of steps to learn the sharp switch that the prior supplies.
    """
    inp = keras.Input(shape=(tile_size, tile_size, 3))
    x, hint, mean3 = impulse_features(inp)
    prior = layers.Multiply(name="prior_residual")([hint, layers.Subtract()([inp, mean3])])
    for _ in range(depth - 1):
        x = layers.Conv2D(filters, 3, padding="same")(x)
        x = layers.LeakyReLU(negative_slope=0.1)(x)
    learned = layers.Conv2D(3, 3, padding="same", kernel_initializer="zeros", name="learned_residual")(x)
    residual = layers.Add(name="noise")([prior, learned])
    out = layers.Subtract(name="restored")([inp, residual])
    return keras.Model(inp, out, name="dncnn_residual")


def _conv_block(x, filters: int, strides: int = 1):
    x = layers.Conv2D(filters, 3, strides=strides, padding="same")(x)
    return layers.LeakyReLU(negative_slope=0.1)(x)


def _unet_trunk(x, base: int, lower_widths: tuple[int, int] | None = None):
    """Two-level U-Net body at full, 1/2 and 1/4 resolution; returns full-resolution features.
    ``lower_widths``: the channels at 1/2 and 1/4 resolution (None: 2 and 4 times ``base``)."""
    half, quarter = lower_widths or (2 * base, 4 * base)
    e1 = _conv_block(_conv_block(x, base), base)  # full resolution
    e2 = _conv_block(_conv_block(e1, half, strides=2), half)  # 1/2
    e3 = _conv_block(_conv_block(e2, quarter, strides=2), quarter)  # 1/4
    u2 = layers.LeakyReLU(negative_slope=0.1)(layers.Conv2DTranspose(half, 3, strides=2, padding="same")(e3))
    u2 = _conv_block(layers.Concatenate()([u2, e2]), half)
    u1 = layers.LeakyReLU(negative_slope=0.1)(layers.Conv2DTranspose(base, 3, strides=2, padding="same")(u2))
    return _conv_block(layers.Concatenate()([u1, e1]), base)


def build_switching_unet(tile_size: int | None = 64, base: int = 24, features: bool = True) -> keras.Model:
    """Small two-level U-Net with a switching head (~0.27M parameters at ``base`` 24).

    Heads (1x1 convolutions): impulse mask ``m`` = sigmoid(12 * hint - 6 + learned term) and
    fill ``f`` = masked 3x3 mean + a learned correction; the learned terms are zero-initialised,
    so training starts from the classical switching mean filter and refines it (Adam moves a
    weight by about the learning rate per step: a sharp switch would take thousands of steps to
    learn from scratch). One mask and fill per channel, since the study's noise hits
    channels independently. Output = input + m * (f - input), i.e. m * f + (1 - m) * input,
    built from Subtract/Multiply/Add layers. ``features`` False gives the plain-input variant
    (mask from U-Net features only, fill = sigmoid head).
    """
    inp = keras.Input(shape=(tile_size, tile_size, 3))
    if features:
        x, hint, mean3 = impulse_features(inp)
    else:
        x = inp
    u1 = _unet_trunk(x, base)
    if features:
        # mask logit = 12 * hint - 6 + learned term (zero at start): the classical switch, to refine
        from_hint = layers.DepthwiseConv2D(1, depthwise_initializer=keras.initializers.Constant(12.0),
                                           bias_initializer=keras.initializers.Constant(-6.0), name="mask_from_hint")(hint)
        from_features = layers.Conv2D(3, 1, kernel_initializer="zeros", name="mask_from_features")(u1)
        mask = layers.Activation("sigmoid", name="impulse_mask")(layers.Add()([from_hint, from_features]))
        correction = layers.Conv2D(3, 1, kernel_initializer="zeros", name="fill_correction")(u1)
        fill = layers.Add(name="fill")([mean3, correction])
    else:
        mask = layers.Conv2D(3, 1, activation="sigmoid", name="impulse_mask")(u1)
        fill = layers.Conv2D(3, 1, activation="sigmoid", name="fill")(u1)
    delta = layers.Subtract(name="fill_minus_input")([fill, inp])
    out = layers.Add(name="restored")([inp, layers.Multiply(name="switch")([mask, delta])])
    return keras.Model(inp, out, name="switching_unet")


@keras.saving.register_keras_serializable(package="ihclib")
class SameExtreme(layers.Layer):
    """1 where all three channels of a pixel are flagged *and* equal (pure white or pure black).

    Per-channel impulses rarely hit all three channels of a pixel with the same value (0.05**3
    at 10 % s&p), whereas saturated background is exactly that; the network gets it as a
    feature so that it can learn to keep clean saturated pixels (issue 10)."""

    def call(self, inputs):
        x, flag = inputs
        r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]
        all_flagged = keras.ops.prod(flag, axis=-1, keepdims=True)
        # flagged values are exactly 0 or 1, so |difference| is 0 (equal) or 1
        return all_flagged * (1.0 - keras.ops.abs(r - g)) * (1.0 - keras.ops.abs(g - b))

    def compute_output_shape(self, input_shape):
        return (*input_shape[0][:-1], 1)


@keras.saving.register_keras_serializable(package="ihclib")
class LocalContrast(layers.Layer):
    """Per-channel standard deviation over ``window`` x ``window`` neighbourhoods.

    The learned fill correction of ``crosschannel_unet`` is scaled by it: where the image is
    flat (background, the inside of a nucleus) the cross-channel prior is already near exact
    and a learned correction could only add a noise floor; measured on near-white background
    tiles, an unscaled correction cost 8-12 dB against the prior (issue 10)."""

    def __init__(self, window: int = 5, **kwargs):
        super().__init__(**kwargs)
        self.window = int(window)

    def call(self, x):
        mean = keras.ops.average_pool(x, self.window, strides=1, padding="same")
        sq = keras.ops.average_pool(x * x, self.window, strides=1, padding="same")
        return keras.ops.sqrt(keras.ops.maximum(sq - mean * mean, 0.0) + 1e-12)

    def get_config(self) -> dict:
        return {**super().get_config(), "window": self.window}


def _crosschannel_features(tile_size: int | None):
    """crosschannel_unet's classical part: (input, flags, spatial fill, cross-channel fill,
    cross-channel prior, the 13 feature channels its trunk sees)."""
    inp = keras.Input(shape=(tile_size, tile_size, 3))
    hint = impulse_hint(inp)
    spatial = SpatialFill((3, 5, 7), name="spatial_fill")([inp, hint])
    xc = CrossChannelFill(name="cross_channel_fill")([inp, hint, spatial])
    same = SameExtreme(name="same_extreme")([inp, hint])
    # the classical results as images (flagged values replaced), so the convolutions see
    # impulse-free pictures rather than having to learn to ignore the impulses first
    prior = layers.Add(name="cross_channel_prior")([inp, layers.Multiply()([hint, layers.Subtract()([xc, inp])])])
    spatial_prior = layers.Add(name="spatial_prior")([inp, layers.Multiply()([hint, layers.Subtract()([spatial, inp])])])
    features = layers.Concatenate(name="features")([prior, spatial_prior, hint, same, inp])
    return inp, hint, spatial, xc, prior, features


def _crosschannel_output(inp, hint, spatial, xc, prior, logit, correction_units, share_logit):
    """crosschannel_unet's output from its classical part and its three heads (3 channels each,
    full resolution): input + flag * sigmoid(logit) * (fill - input)."""
    mask = layers.Multiply(name="impulse_mask")([hint, layers.Activation("sigmoid")(logit)])
    # the correction is in units of the local contrast of the prior: none where it is flat
    contrast = LocalContrast(5, name="local_contrast")(prior)
    correction = layers.Multiply(name="fill_correction")([correction_units, contrast])
    # where the channels are weakly correlated (measured: a camera source), the spatial fill is
    # the better estimate: a learned per-value blend towards it, starting at 1.8 %
    blend = layers.Activation("sigmoid", name="spatial_share")(share_logit)
    towards_spatial = layers.Multiply()([blend, layers.Subtract()([spatial, xc])])
    fill = layers.Add(name="fill")([xc, towards_spatial, correction])
    delta = layers.Subtract(name="fill_minus_input")([fill, inp])
    return layers.Add(name="restored")([inp, layers.Multiply(name="switch")([mask, delta])])


# the heads' names and initial biases: mask logit (mask_bias), correction, spatial share logit
def _head_biases(mask_bias: float) -> dict[str, float]:
    return {"mask_logit": mask_bias, "correction_in_contrast_units": 0.0, "spatial_share_logit": -4.0}


def build_crosschannel_unet(tile_size: int | None = 64, base: int = 24, mask_bias: float = 8.0,
                            lower_widths: tuple[int, int] | None = None) -> keras.Model:
    """A U-Net that refines the cross-channel switching filter; exact on every unflagged value.

    Features: the input, the impulse flags, the cross-channel fill (:class:`CrossChannelFill`),
    the spatial fill (:class:`SpatialFill`) and :class:`SameExtreme`. Heads (zero-initialised
    1x1 convolutions over the :func:`_unet_trunk` features): a fill correction, in units of the
    local contrast of the prior (:class:`LocalContrast`), a per-value share of the spatial fill
    (sigmoid, 1.8 % at the start), and a mask logit added to ``mask_bias``.
    Output = input + flag * sigmoid(logit) * (fill - input), fill = cross-channel fill + share *
    (spatial fill - cross-channel fill) + correction: a value that is not exactly 0 or 1 cannot be an s&p impulse, so it passes through unchanged
    (hard gate); a flagged value is replaced unless the network judges it a clean saturated
    value (white background, saturated stain) from its context. At initialisation the model is
    the cross-channel filter, 1.8 % of the way to the spatial fill, and leaving 1 -
    sigmoid(mask_bias) = 0.03 % of each replacement undone.
    """
    inp, hint, spatial, xc, prior, features = _crosschannel_features(tile_size)
    u1 = _unet_trunk(features, base, lower_widths)
    heads = [layers.Conv2D(3, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(bias),
                           name=name)(u1) for name, bias in _head_biases(mask_bias).items()]
    return keras.Model(inp, _crosschannel_output(inp, hint, spatial, xc, prior, *heads), name="crosschannel_unet")


class _BlockLayer(layers.Layer):
    def __init__(self, block: int = 2, **kwargs):
        super().__init__(**kwargs)
        self.block = int(block)

    def get_config(self) -> dict:
        return {**super().get_config(), "block": self.block}


@keras.saving.register_keras_serializable(package="ihclib")
class SpaceToDepth(_BlockLayer):
    """Each ``block`` x ``block`` patch of pixels as one pixel with block**2 times the channels
    (channel (i * block + j) * C + c holds channel c of the patch's pixel (i, j), as
    ``tf.nn.space_to_depth``); height and width must be multiples of ``block``."""

    def call(self, x):
        b, c = self.block, x.shape[-1]
        n, h, w = keras.ops.shape(x)[0], keras.ops.shape(x)[1], keras.ops.shape(x)[2]
        x = keras.ops.reshape(x, (n, h // b, b, w // b, b, c))
        return keras.ops.reshape(keras.ops.transpose(x, (0, 1, 3, 2, 4, 5)), (n, h // b, w // b, b * b * c))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h // b, None if w is None else w // b, c * b * b)


@keras.saving.register_keras_serializable(package="ihclib")
class DepthToSpace(_BlockLayer):
    """The inverse of :class:`SpaceToDepth`: channels C * block**2 to a block x block patch of
    C channels each (as ``tf.nn.depth_to_space``)."""

    def call(self, x):
        b, c = self.block, x.shape[-1] // (self.block * self.block)
        n, h, w = keras.ops.shape(x)[0], keras.ops.shape(x)[1], keras.ops.shape(x)[2]
        x = keras.ops.reshape(x, (n, h, w, b, b, c))
        return keras.ops.reshape(keras.ops.transpose(x, (0, 1, 3, 2, 4, 5)), (n, h * b, w * b, c))

    def compute_output_shape(self, input_shape):
        n, h, w, c = input_shape
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, c // (b * b))


def build_crosschannel_s2d_unet(tile_size: int | None = 64, base: int = 32, mask_bias: float = 8.0) -> keras.Model:
    """:func:`build_crosschannel_unet` with its U-Net at half resolution (issue 13).

    The 13 feature channels of each 2 x 2 patch become one pixel of 52 (:class:`SpaceToDepth`,
    the down-sampling of FFDNet, Zhang et al. 2018); the U-Net (``base`` channels at half
    resolution, 2 * base at 1/4, 4 * base at 1/8) sees them, and each head predicts its 3
    channels for all four pixels of the patch (12 channels, :class:`DepthToSpace` back). The
    classical fills, the hard gate and the output formula are crosschannel_unet's, at full
    resolution. Why: at the same FLOPs per pixel the convolutions have 4 times the channels on a
    quarter of the pixels, so far fewer passes over memory per FLOP (bias, activation,
    concatenation) and wider matrix products; the receptive field doubles. At ``base`` 32 it has
    about the FLOPs per pixel of crosschannel_unet at 16 (49,536 against 45,504).
    """
    inp, hint, spatial, xc, prior, features = _crosschannel_features(tile_size)
    half = _unet_trunk(SpaceToDepth(2, name="to_half_resolution")(features), base)
    heads = _patch_heads(half, 2, mask_bias)
    return keras.Model(inp, _crosschannel_output(inp, hint, spatial, xc, prior, *heads), name="crosschannel_s2d_unet")


def _patch_heads(x, block: int, mask_bias: float) -> list:
    """The three heads of a space-to-depth design: each a zero-initialised 1x1 convolution
    predicting its 3 channels for the ``block`` x ``block`` pixels of a patch, then
    :class:`DepthToSpace` back to full resolution."""
    return [DepthToSpace(block, name=f"{name}_full_resolution")(
                layers.Conv2D(3 * block * block, 1, kernel_initializer="zeros",
                              bias_initializer=keras.initializers.Constant(bias), name=name)(x))
            for name, bias in _head_biases(mask_bias).items()]


# each residual branch of crosschannel_s4d_cnn scaled by this before the sum (as EDSR, Lim et al.
# 2017, for wide residual networks): without it the training diverged at long's learning rate
RESIDUAL_SCALE = 0.1


def _quarter_resolution_cnn(x, base: int, blocks: int):
    """The quarter-resolution designs' network: each 4 x 4 patch of ``x`` as one pixel
    (:class:`SpaceToDepth`), a 3x3 convolution to ``base`` channels, then ``blocks`` residual
    blocks (x + :data:`RESIDUAL_SCALE` times two 3x3 convolutions, LeakyReLU after each)."""
    x = _conv_block(SpaceToDepth(4, name="to_quarter_resolution")(x), base)
    for i in range(blocks):  # named: ihclib.infer.inference_copy runs these in bf16 with the convolutions
        branch = layers.Rescaling(RESIDUAL_SCALE, name=f"residual_{i + 1}_scale")(_conv_block(_conv_block(x, base), base))
        x = layers.Add(name=f"residual_{i + 1}")([x, branch])
    return x


def build_crosschannel_s4d_cnn(tile_size: int | None = 64, base: int = 120, mask_bias: float = 8.0,
                               blocks: int = 3) -> keras.Model:
    """:func:`build_crosschannel_unet` with its network at quarter resolution (issue 13): the 13
    feature channels of each 4 x 4 patch as one pixel of 208 (:class:`SpaceToDepth`), a 3x3
    convolution to ``base`` channels, then ``blocks`` residual blocks (x + :data:`RESIDUAL_SCALE`
    times two 3x3 convolutions of ``base`` channels, LeakyReLU after each), and each head
    predicting its 3 channels for the 16 pixels of the patch (48 channels, :class:`DepthToSpace`
    back). The classical fills, the
    hard gate and the output formula are crosschannel_unet's, at full resolution; the receptive
    field reaches 4 * (2 * blocks + 2) pixels from the patch.

    Why: ``ihclib denoise`` reaches 60 % of the CPU's peak end to end only with a model of many
    FLOPs per pixel (about 120,000 on the 2-core Zen 5) whose every other cost is small. Here
    every convolution is one large matrix product (1,872 or 1,080 deep, ``base`` wide) and the
    passes over memory between them (bias, activation, the residual sums) touch a sixteenth of
    the pixels. No U-Net: its coarser levels would hold most of the weights (a U-Net of this
    design at width 100 has 5.4 M, 21 MB) for a few per cent of the FLOPs. Residual: the same
    depth without them (8 plain convolutions of 112) did not train (the loss stayed at its
    starting value at a learning rate of 5e-4 and diverged at 2e-3); with them but unscaled it
    diverged at 2e-3 too, and at 5e-4 it learned too slowly (docs/performance.md). Scaled, it
    trains at long's 2e-3 but stays 2.5 dB below crosschannel_unet on the held-out sources
    (reports/s4d), so it is not bundled. At ``base`` 120 and 3
    blocks: 127,440 FLOP per pixel (2.8 times crosschannel_unet's at 16) from 1.0 M weights.
    """
    inp, hint, spatial, xc, prior, features = _crosschannel_features(tile_size)
    x = _quarter_resolution_cnn(features, base, blocks)
    heads = _patch_heads(x, 4, mask_bias)
    return keras.Model(inp, _crosschannel_output(inp, hint, spatial, xc, prior, *heads), name="crosschannel_s4d_cnn")


# the layers of crosschannel_s4d_unet's quarter-resolution part that carry its features back to
# full resolution: a 1x1 convolution and its DepthToSpace (ihclib.infer.inference_copy runs them
# in bf16 with the convolutions, though other 1x1 convolutions, the heads, stay float32)
CONTEXT_LAYERS = ("quarter_context", "quarter_context_full_resolution")


def build_crosschannel_s4d_unet(tile_size: int | None = 64, base: int = 96, mask_bias: float = 8.0,
                                blocks: int = 4, full: int = 16, context: int = 8) -> keras.Model:
    """A U-Net of two levels (issue 13): crosschannel_unet's full-resolution level (two 3x3
    convolutions of ``full`` channels over the 13 features, and one after the skip), with
    :func:`build_crosschannel_s4d_cnn`'s wide residual network at quarter resolution as its
    bottom: the full-resolution features of each 4 x 4 patch as one pixel (16 * ``full``
    channels, :class:`SpaceToDepth`), a 3x3 convolution to ``base`` channels, ``blocks``
    residual blocks, and a 1x1 convolution to ``context`` channels for each of the patch's 16
    pixels (:class:`DepthToSpace` back), concatenated with the skip. Heads, classical fills,
    hard gate and output formula: crosschannel_unet's.

    Why: crosschannel_s4d_cnn puts nearly all its FLOPs in large matrix products (what issue 13's
    60 % needs) but learned little (reports/s4d): its only path to full resolution was a linear
    head. In 400-step trials on the embedded image (batch 16 of 64 px, s&p 0-50 %, validation
    MSE from 1.18e-4) this design reached 8.36e-5 (8.25e-5 at ``base`` 112 with 3 blocks) against
    crosschannel_unet's 8.49e-5 (width 16) and crosschannel_s4d_cnn's 1.06e-4; with only the last
    full-resolution convolution (no encoder level) 1.06e-4. At ``base`` 96 and 4 blocks: 127,680
    FLOP per pixel, 88 % of them at quarter resolution, from 0.9 M weights. With long's data and
    budget (reports/s4du) it restores the held-out sources +2.10 / +2.55 dB above the
    cross-channel filter at 10 / 30 % s&p (issue 10's +1.0 met), 0.6 / 0.4 dB below
    crosschannel_unet at 16; through ``ihclib denoise`` it takes 1.5 times as long (make bench on
    262f885: 4.6 s for 4096 x 4096, 52 % of the bf16 peak, over 4x the switching median), so it is
    not bundled.
    """
    inp, hint, spatial, xc, prior, features = _crosschannel_features(tile_size)
    skip = _conv_block(_conv_block(features, full), full)  # full resolution
    x = _quarter_resolution_cnn(skip, base, blocks)
    up = DepthToSpace(4, name=CONTEXT_LAYERS[1])(layers.Conv2D(16 * context, 1, name=CONTEXT_LAYERS[0])(x))
    u1 = _conv_block(layers.Concatenate()([skip, up]), full)
    heads = [layers.Conv2D(3, 1, kernel_initializer="zeros", bias_initializer=keras.initializers.Constant(bias),
                           name=name)(u1) for name, bias in _head_biases(mask_bias).items()]
    return keras.Model(inp, _crosschannel_output(inp, hint, spatial, xc, prior, *heads), name="crosschannel_s4d_unet")


# ---------------------------------------------------------------- registry

MODELS: dict[str, Callable[..., keras.Model]] = {
    "paper_unet": build_paper_model,
    "dncnn_residual": build_dncnn_residual,
    "switching_unet": build_switching_unet,
    "crosschannel_unet": build_crosschannel_unet,
    "crosschannel_s2d_unet": build_crosschannel_s2d_unet,
    "crosschannel_s4d_cnn": build_crosschannel_s4d_cnn,
    "crosschannel_s4d_unet": build_crosschannel_s4d_unet,
}

if tuple(MODELS) != MODEL_NAMES:  # the light registry (ihclib.registry) must list the builders here
    raise ImportError(f"ihclib.registry.MODEL_NAMES {MODEL_NAMES} != ihclib.model.MODELS {tuple(MODELS)}")


# the models whose U-Net width (channels at full resolution, doubled at each level) can be chosen
WIDTH_MODELS = ("switching_unet", "crosschannel_unet", "crosschannel_s2d_unet", "crosschannel_s4d_cnn",
                "crosschannel_s4d_unet")


def build_model(name: str, tile_size: int | None = 256, width: int | None = None,
                lower_widths: tuple[int, int] | None = None) -> keras.Model:
    """Build a registry model by name (ValueError naming the choices for an unknown one).

    ``width``: the U-Net width of :data:`WIDTH_MODELS` (None: the builder's default, 24; 32 for
    crosschannel_s2d_unet, whose width counts half-resolution channels, 120 for
    crosschannel_s4d_cnn, quarter-resolution ones); other
    models have no such setting and ignore it. ``lower_widths``: crosschannel_unet's channels
    at half and quarter resolution (None: 2 and 4 times the width; ValueError for other models)."""
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose from {', '.join(MODELS)}")
    mult = INPUT_MULTIPLE[name]
    if tile_size is not None and tile_size % mult:
        raise ValueError(f"model {name!r} needs a tile size that is a multiple of {mult}, got {tile_size}")
    extra = {}
    if lower_widths is not None:
        if name != "crosschannel_unet":
            raise ValueError(f"lower_widths is a setting of crosschannel_unet, not of {name!r}")
        if len(lower_widths) != 2 or min(lower_widths) < 1:
            raise ValueError(f"lower_widths must be two positive channel counts, got {lower_widths}")
        extra["lower_widths"] = tuple(int(w) for w in lower_widths)
    if width is not None and name in WIDTH_MODELS:
        if width < 1:
            raise ValueError(f"width must be positive, got {width}")
        return MODELS[name](tile_size, base=width, **extra)
    return MODELS[name](tile_size, **extra)


def count_params(model: keras.Model) -> dict[str, int]:
    """Total, trainable and non-trainable parameter counts."""
    trainable = sum(int(w.numpy().size) for w in model.trainable_weights)
    non_trainable = sum(int(w.numpy().size) for w in model.non_trainable_weights)
    return {"total": trainable + non_trainable, "trainable": trainable, "non_trainable": non_trainable}


def _with_tile_size(model: keras.Model, tile_size: int) -> keras.Model:
    """A copy of a fully convolutional model whose input is fixed to ``tile_size``."""
    return keras.models.clone_model(model, input_tensors=keras.Input(shape=(tile_size, tile_size, model.input.shape[-1])))


def count_flops(model: keras.Model | str, tile_size: int | None = None) -> int:
    """FLOPs of one forward pass on one tile.

    Convention: FLOPs = 2 x multiply-accumulates of Conv2D, Conv2DTranspose, DepthwiseConv2D
    and Dense layers, from their shapes: Conv2D = H_out*W_out*kh*kw*C_in/groups*C_out;
    Conv2DTranspose = H_in*W_in*kh*kw*C_in*C_out (every input value is scattered over a kernel
    window); DepthwiseConv2D = H_out*W_out*kh*kw*C_in*depth_multiplier; Dense =
    positions*in*out. Biases, batch norm, activations, pooling (the masked means),
    concatenations and element-wise layers are ignored (a few FLOPs per value).

    ``model`` is a model or a registry name; ``tile_size`` is required for a name or for a model
    whose input size is not fixed.
    """
    if isinstance(model, str):
        model = build_model(model, tile_size or 256)
    elif model.input.shape[1] is None or (tile_size is not None and model.input.shape[1] != tile_size):
        if tile_size is None:
            raise ValueError("the model's input size is not fixed; pass tile_size")
        model = _with_tile_size(model, tile_size)
    macs = 0
    for layer in model.layers:
        if isinstance(layer, layers.Conv2DTranspose):
            _, h, w, c_in = layer.input.shape
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * c_in * layer.filters
        elif isinstance(layer, layers.DepthwiseConv2D):
            _, h, w, _ = layer.output.shape
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * layer.input.shape[-1] * layer.depth_multiplier
        elif isinstance(layer, layers.Conv2D):
            _, h, w, _ = layer.output.shape
            c_in = layer.input.shape[-1]
            kh, kw = layer.kernel_size
            macs += h * w * kh * kw * (c_in // layer.groups) * layer.filters
        elif isinstance(layer, layers.Dense):
            shape = layer.input.shape
            positions = 1
            for d in shape[1:-1]:
                positions *= d
            macs += positions * shape[-1] * layer.units
    return int(2 * macs)


# ---------------------------------------------------------------- model files (.keras + JSON sidecar)


def versions() -> dict[str, str]:
    """Versions of the libraries a saved model depends on."""
    import tensorflow as tf  # already loaded: Keras runs on it

    from ihclib import __version__

    return {"tensorflow": tf.__version__, "keras": keras.__version__, "numpy": np.__version__, "ihclib": __version__}


def save_model(model: keras.Model, path: str | os.PathLike, sidecar: dict) -> dict:
    """Write ``path`` (.keras, weights without optimizer state) and its JSON sidecar (same stem),
    each via a temp file + os.replace.

    The sidecar gets ``params`` (total/trainable/non-trainable), ``versions`` and ``file`` added;
    the completed sidecar is returned.
    """
    path = Path(path)
    if path.suffix != ".keras":
        raise ValueError(f"{path}: a model file must end in .keras")
    path.parent.mkdir(parents=True, exist_ok=True)
    full = {**sidecar, "params": count_params(model), "versions": versions(), "file": path.name}
    # an uncompiled copy: the file holds architecture + weights only, not Adam's two extra copies
    # of every weight (213 MB instead of 71 MB for the paper's network)
    # (rebuilt from get_config, which has no compile_config: clone_model and model_from_json
    # would compile the copy and build the optimizer again)
    bare = type(model).from_config(model.get_config())
    bare.set_weights(model.get_weights())
    atomic_write(path, bare.save, suffix=".tmp.keras")  # Keras insists on the suffix
    atomic_write_text(path.with_suffix(".json"), json.dumps(full, indent=2, default=str) + "\n")
    return full


def load_model(path: str | os.PathLike) -> tuple[keras.Model, dict]:
    """Load a .keras model with ``safe_mode=True`` (uncompiled) and its sidecar ({} if none)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such model file")
    if not zipfile.is_zipfile(path):  # Keras would say "File not found" for a file that is there
        raise ValueError(f"{path}: not a Keras model file (a .keras file is a zip archive; this one is not)")
    try:
        model = keras.saving.load_model(path, safe_mode=True, compile=False)
    except Exception as exc:  # zip, JSON or deserialisation errors: one line naming the file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ValueError(f"{path}: not a loadable Keras model ({reason})") from None
    side = path.with_suffix(".json")
    try:
        sidecar = json.loads(side.read_text()) if side.is_file() else {}
    except ValueError as exc:  # JSONDecodeError and UnicodeDecodeError both are
        raise ValueError(f"{side}: the model's sidecar is not valid JSON ({exc}); fix or delete it") from None
    if not isinstance(sidecar, dict):
        raise ValueError(f"{side}: the model's sidecar is not a JSON object; fix or delete it")
    return model, sidecar
