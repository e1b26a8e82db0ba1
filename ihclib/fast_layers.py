"""Fast inference versions of the model's classical layers: the fills and the local contrast.

The layers of :mod:`ihclib.model` are the study's reference: training and every committed
report use them, bit for bit. At inference they took about half of a 1056 px tile's time
(measured on the 2-core EPYC, issue 13: flags and fills 0.19 s, the width-16 convolution trunk
0.16 s), because each of their ~100 element-wise ops reads and writes the whole tile (about a
millisecond apiece) and square average pools cost w**2 adds per value. The variants here
compute the same functions in three steps:

1. the values to be summed, stacked as channels;
2. the box sums as depthwise convolutions with ones, one per window over all the stacked
   channels (the cost hardly depends on the channel count; sums of 0/1 values, such as flags
   and counts, are exact);
3. all the per-pixel algebra, vectorised over the channels, in one XLA-fused pass.

For ``crosschannel_unet`` (the bundled architecture), :func:`fuse_crosschannel` goes further:
everything before its convolution trunk and everything after it become two layers
(:class:`CrossChannelPrefix`, :class:`CrossChannelHead`). A 1056 px tile then takes 0.24-0.26 s
instead of 0.40 s (bf16 trunk).

Where a C compiler is found, :class:`CrossChannelPrefix` runs the compiled version of the same
functions instead (:mod:`ihclib.native`: one cache-blocked pass, no depthwise convolutions).

Only element-wise work goes to XLA: about 0.35 s of compiling per tile shape, once per
process. XLA over the whole model (or over the pools) compiled for minutes and ran slower
(measured). The results differ from the reference by float32 rounding only
(tests/test_fast_layers.py bounds it). :func:`ihclib.infer.inference_copy` swaps them in, so
only the tool's fast path (``ihclib denoise``, ``denoise(..., precision="auto")``) uses them,
and ``make bench`` measures that path's held-out PSNR against the float32 reference.
TensorFlow only, the package's backend.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from . import native
from .model import CrossChannelFill, DepthToSpace, LocalContrast, SpatialFill
from .registry import CROSSCHANNEL_MODELS


def _fused(fn):
    """``fn`` (element-wise TensorFlow ops) compiled by XLA into one pass over memory."""
    return tf.function(fn, jit_compile=True, autograph=False)  # plain Python loops: nothing to convert


def box_sums(x: tf.Tensor, window: int) -> tf.Tensor:
    """Sums over ``window`` x ``window`` neighbourhoods (zero padding) of every channel of ``x``,
    as one depthwise convolution with ones (exact for small integers: flags, counts)."""
    kernel = tf.ones((window, window, x.shape[-1], 1), dtype=x.dtype)
    return tf.nn.depthwise_conv2d(x, kernel, [1, 1, 1, 1], "SAME")


def window_counts(height, width, window: int) -> tf.Tensor:
    """How many values of each ``window`` x ``window`` neighbourhood lie inside an image of
    ``height`` x ``width``, shape (1, H, W, 1): what an average pool with ``padding="same"``
    divides by."""
    r = window // 2

    def along(n):
        i = tf.range(n)
        return tf.cast(tf.minimum(i + r, n - 1) - tf.maximum(i - r, 0) + 1, tf.float32)

    return (along(height)[:, None] * along(width)[None, :])[None, :, :, None]


def _roll(x: tf.Tensor, shift: int) -> tf.Tensor:
    """Channel c of the result is channel (c + shift) % C of ``x`` (a gather: inside XLA it
    compiles faster than slices and a concatenation)."""
    channels = x.shape[-1]
    return tf.gather(x, [(c + shift) % channels for c in range(channels)], axis=-1)


# ---------------------------------------------------------------- spatial fill


def spatial_fill_from_sums(sums, counts):
    """:class:`ihclib.model.SpatialFill` from ``sums[i]``, the box sums over window i of x * keep
    (channels 0-2), keep (3-5) and x (6-8), and ``counts[i]``, :func:`window_counts` of window i."""
    # all values flagged: they are 0 or 1, so the rounded mean is the majority (the median)
    fill = tf.round(sums[-1][..., 6:9] / counts[-1])
    for s, count in reversed(list(zip(sums, counts))):
        num, den = s[..., 0:3], s[..., 3:6]
        # the reference tests mean(keep) > 1e-6, i.e. sum(keep) > 1e-6 * count
        fill = tf.where(den > 1e-6 * count, tf.math.divide_no_nan(num, den), fill)
    return fill


def spatial_terms(x, flag):
    """What :func:`spatial_fill_from_sums` sums: x * keep, keep and x (9 channels)."""
    keep = 1.0 - flag
    return tf.concat([x * keep, keep, x], axis=-1)


_spatial_select = _fused(spatial_fill_from_sums)


@keras.saving.register_keras_serializable(package="ihclib")
class FastSpatialFill(SpatialFill):
    """:class:`ihclib.model.SpatialFill`, fused (the same function up to float32 rounding)."""

    def call(self, inputs):
        x, flag = inputs
        stacked = spatial_terms(x, flag)  # unfused: compiling it would cost more than it saves
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        return _spatial_select([box_sums(stacked, w) for w in self.windows],
                               [window_counts(height, width, w) for w in self.windows])


# ---------------------------------------------------------------- cross-channel fill


def cross_terms(x, flag):
    """What :func:`cross_fill_from_sums` sums (10 channels)."""
    keep = 1.0 - flag
    # 1 where all three channels are clean (a product of slices: XLA compiles a reduction slower)
    clean = keep[..., 0:1] * keep[..., 1:2] * keep[..., 2:3]
    cx = clean * x
    # to be summed: clean, x_c, x_c^2, x_c x_{c+1} (over clean pixels)
    return tf.concat([clean, cx, cx * x, cx * _roll(x, 1)], axis=-1)


def cross_fill_from_sums(x, flag, fallback, sums, eps, min_clean):
    """:class:`ihclib.model.CrossChannelFill` from the box sums of :func:`cross_terms`."""
    n = sums[..., 0:1]
    enough = n >= min_clean - 0.5
    inv = 1.0 / tf.where(enough, n, tf.ones_like(n))
    mu = sums[..., 1:4] * inv
    var = sums[..., 4:7] * inv - mu * mu
    cross = sums[..., 7:10] * inv - mu * _roll(mu, 1)  # cov(c, c + 1)
    # target channel c, guides d = c + 1 and e = c + 2 (mod 3)
    c_cd, c_ce, c_de = cross, _roll(cross, 2), _roll(cross, 1)
    a11, a22 = _roll(var, 1) + eps, _roll(var, 2) + eps
    dd, de = _roll(x, 1) - _roll(mu, 1), _roll(x, 2) - _roll(mu, 2)
    one_d = mu + c_cd / a11 * dd
    one_e = mu + c_ce / a22 * de
    det = a11 * a22 - c_de * c_de  # > 0: a covariance matrix plus eps on the diagonal
    two = mu + ((a22 * c_cd - c_de * c_ce) * dd + (a11 * c_ce - c_de * c_cd) * de) / det
    f = flag > 0.5
    fd, fe = _roll(f, 1), _roll(f, 2)
    fill = tf.where(enough & ~fd & fe, one_d, fallback)
    fill = tf.where(enough & fd & ~fe, one_e, fill)
    fill = tf.where(enough & ~(fd | fe), two, fill)
    return tf.clip_by_value(fill, 0.0, 1.0)


_cross_inputs, _cross_select = _fused(cross_terms), _fused(cross_fill_from_sums)


@keras.saving.register_keras_serializable(package="ihclib")
class FastCrossChannelFill(CrossChannelFill):
    """:class:`ihclib.model.CrossChannelFill`, fused (the same function up to float32 rounding).

    The reference takes, for target channel c, the other two in ascending order as guides d and
    e; this takes d = c + 1 and e = c + 2 (mod 3), rotations of whole tensors. The one- and
    two-guide formulas and their conditions are symmetric in d and e, so the result is the same."""

    def call(self, inputs):
        x, flag, fallback = inputs
        sums = box_sums(_cross_inputs(x, flag), self.window)
        return _cross_select(x, flag, fallback, sums, self.eps, self.min_clean)


# ---------------------------------------------------------------- local contrast


def contrast_from_sums(sums, counts):
    """:class:`ihclib.model.LocalContrast` from the box sums of [x, x^2]."""
    c = sums.shape[-1] // 2
    mean, sq = sums[..., :c] / counts, sums[..., c:] / counts
    return tf.sqrt(tf.maximum(sq - mean * mean, 0.0) + 1e-12)


_contrast_select = _fused(contrast_from_sums)


@keras.saving.register_keras_serializable(package="ihclib")
class FastLocalContrast(LocalContrast):
    """:class:`ihclib.model.LocalContrast`, fused (the same function up to float32 rounding)."""

    def call(self, x):
        sums = box_sums(tf.concat([x, x * x], axis=-1), self.window)  # unfused, as in FastSpatialFill
        return _contrast_select(sums, window_counts(tf.shape(x)[1], tf.shape(x)[2], self.window))


# ---------------------------------------------------------------- crosschannel_unet, fused whole
#
# With the layers above swapped in, a 1056 px tile of the bundled model still spent about
# 0.12 s outside its convolution trunk (0.16 s): the impulse flags, the two priors, the
# 13-channel feature stack and its cast to bf16, and the heads are some 40 more Keras layers,
# each a pass over the tile. For crosschannel_unet (the bundled architecture) these become two
# layers: the prefix (flags to features: two fused passes around the box sums) and the head
# (the gate and the fill, one fused pass); the trunk and the 1x1 convolutions are the model's own.


def impulse_flags(x):
    """:func:`ihclib.model.impulse_hint`: Keras' ReLU(threshold=0.999) passes values above it."""
    y = 1.0 - x
    return tf.where(x > 0.999, x, 0.0) + tf.where(y > 0.999, y, 0.0)


@_fused
def _prefix_terms(x):
    flag = impulse_flags(x)
    return flag, spatial_terms(x, flag), cross_terms(x, flag)


@_fused
def _prefix_features(x, flag, spatial, xc, features_dtype):
    # a pass of its own: fused with the fills, XLA recomputed them for each of its outputs
    r, g, b = x[..., 0:1], x[..., 1:2], x[..., 2:3]  # ihclib.model.SameExtreme
    same = flag[..., 0:1] * flag[..., 1:2] * flag[..., 2:3] * (1.0 - tf.abs(r - g)) * (1.0 - tf.abs(g - b))
    prior = x + flag * (xc - x)
    spatial_prior = x + flag * (spatial - x)
    features = tf.cast(tf.concat([prior, spatial_prior, flag, same, x], axis=-1), features_dtype)
    return features, tf.concat([prior, prior * prior], axis=-1)


@keras.saving.register_keras_serializable(package="ihclib")
class CrossChannelPrefix(keras.layers.Layer):
    """crosschannel_unet from its input to its trunk's features, fused: returns
    ``[features, flag, spatial fill, cross-channel fill, box sums of [prior, prior^2]]``."""

    def __init__(self, windows=(3, 5, 7), window: int = 5, eps: float = 1e-3, min_clean: int = 3,
                 contrast_window: int = 5, features_dtype: str = "float32", compiled: bool = True, **kwargs):
        super().__init__(**kwargs)
        # compiled: use ihclib.native where it is available (not inside an XLA-compiled function,
        # which cannot call the NumPy function it runs as)
        self.compiled = bool(compiled)
        self.windows, self.window, self.eps, self.min_clean = tuple(windows), int(window), float(eps), int(min_clean)
        self.contrast_window, self.features_dtype = int(contrast_window), str(features_dtype)

    def call(self, x):
        if self.compiled and native.supports(self.windows, self.window, self.contrast_window) and native.available():
            return self._compiled(x)
        flag, spatial_terms_, cross_terms_ = _prefix_terms(x)
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        spatial = _spatial_select([box_sums(spatial_terms_, w) for w in self.windows],
                                  [window_counts(height, width, w) for w in self.windows])
        # a pass of its own: fused with the spatial fill, XLA compiled longer (it inlines the
        # spatial fill into each of its uses) and the tile ran no faster
        xc = _cross_select(x, flag, spatial, box_sums(cross_terms_, self.window), self.eps, self.min_clean)
        features, contrast_terms = _prefix_features(x, flag, spatial, xc, tf.as_dtype(self.features_dtype))
        return [features, flag, spatial, xc, box_sums(contrast_terms, self.contrast_window)]

    def _compiled(self, x):
        """The same outputs from the compiled prefix (:mod:`ihclib.native`), run by TensorFlow as
        a NumPy function (the C code runs in threads of its own, without the GIL)."""
        features_dtype = tf.as_dtype(self.features_dtype)
        compiled_dtype = features_dtype if features_dtype in (tf.float32, tf.bfloat16) else tf.float32

        def run(tile):  # reused arrays only where no tensor still holds them (ihclib.native.prefix)
            return native.prefix(tile, self.windows, self.eps, self.min_clean, compiled_dtype.name, reuse=True)

        native.expect_prefix(tuple(x.shape), compiled_dtype.name)
        outs = tf.numpy_function(run, [tf.cast(x, tf.float32)], [compiled_dtype] + [tf.float32] * 4, stateful=False)
        for out, shape in zip(outs, self.compute_output_shape(tuple(x.shape))):
            out.set_shape(shape)
        return [tf.cast(outs[0], features_dtype), *outs[1:]]

    def compute_output_shape(self, input_shape):
        *lead, _ = input_shape
        return [(*lead, 13), tuple(input_shape), tuple(input_shape), tuple(input_shape), (*lead, 6)]

    def get_config(self) -> dict:
        return {**super().get_config(), "windows": list(self.windows), "window": self.window, "eps": self.eps,
                "min_clean": self.min_clean, "contrast_window": self.contrast_window,
                "features_dtype": self.features_dtype, "compiled": self.compiled}


@_fused
def _head(x, flag, spatial, xc, contrast_sums, counts, heads):
    channels = x.shape[-1]  # heads: the mask logit, the correction and the share logit, stacked
    logit, correction_units = heads[..., :channels], heads[..., channels : 2 * channels]
    share_logit = heads[..., 2 * channels :]
    mask = flag * tf.sigmoid(logit)
    correction = correction_units * contrast_from_sums(contrast_sums, counts)
    fill = xc + tf.sigmoid(share_logit) * (spatial - xc) + correction
    return x + mask * (fill - x)


@keras.saving.register_keras_serializable(package="ihclib")
class CrossChannelHead(keras.layers.Layer):
    """crosschannel_unet's output from its prefix and its three 1x1 heads (stacked as channels
    by :func:`merged_heads`), fused: input + flag * sigmoid(mask logit) * (fill - input) (see
    :func:`ihclib.model.build_crosschannel_unet`). ``compiled``: by :mod:`ihclib.native`
    (``head.c``, run as a NumPy function) where it is built, else as one XLA cluster. Both take
    about 3.5 ms of a 1056 px tile of the bundled model, but XLA's first call in a process spent
    about 30 ms more of a core converting the cluster and loading its code (2-core Zen 5)."""

    def __init__(self, contrast_window: int = 5, compiled: bool = False, **kwargs):
        # its inputs as they come (Keras would cast a bf16 trunk's heads to float32 first, a pass
        # of 2 ms over a 1056 px tile's 40 MB; both paths read them as they are)
        super().__init__(**{"autocast": False, **kwargs})
        self.contrast_window, self.compiled = int(contrast_window), bool(compiled)

    def call(self, inputs):
        x, flag, spatial, xc, contrast_sums, heads = inputs
        if self.compiled and heads.dtype in (tf.float32, tf.bfloat16) and native.available():
            def run(*arrays):  # reused arrays only where no tensor still holds them (ihclib.native)
                return native.head(*arrays, window=self.contrast_window, reuse=True)

            out = tf.numpy_function(run, [x, flag, spatial, xc, contrast_sums, heads], tf.float32, stateful=False)
            out.set_shape(x.shape)
            return out
        counts = window_counts(tf.shape(x)[1], tf.shape(x)[2], self.contrast_window)
        return _head(x, flag, spatial, xc, contrast_sums, counts, tf.cast(heads, tf.float32))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0])

    def get_config(self) -> dict:
        return {**super().get_config(), "contrast_window": self.contrast_window, "compiled": self.compiled}


HEAD_CONVOLUTIONS = ("mask_logit", "correction_in_contrast_units", "spatial_share_logit")
# crosschannel_s2d_unet: each head's 12 half-resolution channels as 3 at full resolution
FULL_RESOLUTION_HEADS = tuple(f"{name}_full_resolution" for name in HEAD_CONVOLUTIONS)


def merged_heads(model: keras.Model, block: int = 1, dtype=None) -> keras.layers.Conv2D:
    """One 1x1 convolution computing ``model``'s three head convolutions
    (:data:`HEAD_CONVOLUTIONS`, in that order) as its output channels: the same dot products,
    read from the trunk's features once instead of three times (and cast once). On a 1056 px
    tile of the bundled model: 10-15 ms instead of 21-28 ms (measured on the 2-core EPYC).

    ``block`` > 1 (the space-to-depth designs, whose heads each predict ``block`` x ``block``
    pixels of 3 channels): the output channels are ordered so that one depth-to-space of the
    whole gives the three heads' full-resolution channels side by side, instead of three slices,
    three depth-to-space passes and a concatenation (measured on the 2-core Zen 5: StridedSlice,
    ConcatV2 and transposes 16 ms of a 188 ms 1056 px tile of crosschannel_s4d_cnn).
    ``dtype``: its dtype policy (default: the first head's)."""
    convs = [model.get_layer(name) for name in HEAD_CONVOLUTIONS]
    kernels, biases = zip(*(conv.get_weights() for conv in convs))
    kernel, bias = np.concatenate(kernels, axis=-1), np.concatenate(biases, axis=-1)
    if block > 1:  # head h's channel (i * block + j) * 3 + c -> (i * block + j) * 9 + h * 3 + c
        heads, cells, channels = len(convs), block * block, kernels[0].shape[-1] // (block * block)
        order = np.arange(kernel.shape[-1]).reshape(heads, cells, channels).transpose(1, 0, 2).ravel()
        kernel, bias = kernel[..., order], bias[order]
    merged = keras.layers.Conv2D(kernel.shape[-1], 1, dtype=dtype or convs[0].dtype_policy, name="merged_heads")
    merged.build((None, None, None, kernel.shape[-2]))
    merged.set_weights([kernel, bias])
    return merged


def fuse_crosschannel(model: keras.Model, compiled_prefix: bool = True) -> keras.Model:
    """``model`` (a crosschannel_unet, or a copy with other dtype policies) with its prefix and
    head replaced by :class:`CrossChannelPrefix` and :class:`CrossChannelHead` and its three
    1x1 head convolutions by one (:func:`merged_heads`); the trunk is ``model``'s own layers
    (shared, not copied). ``compiled_prefix``: the prefix may use :mod:`ihclib.native`."""
    spatial, cross = model.get_layer("spatial_fill"), model.get_layer("cross_channel_fill")
    contrast = model.get_layer("local_contrast")
    channels = model.get_layer(HEAD_CONVOLUTIONS[0]).filters
    names = {layer.name for layer in model.layers}
    # the space-to-depth designs: their heads' patch side (each head's own DepthToSpace)
    block = model.get_layer(FULL_RESOLUTION_HEADS[0]).block if FULL_RESOLUTION_HEADS[0] in names else 1
    seen: dict = {}

    def call(layer, *args, **kwargs):
        if layer.name == "salt_flag":  # the first layer on the model's input
            seen["x"] = args[0]
        if layer.name == "features":
            outputs = CrossChannelPrefix(spatial.windows, cross.window, cross.eps, cross.min_clean, contrast.window,
                                         layer.compute_dtype, compiled_prefix, name="fused_prefix")(seen["x"])
            seen["prefix"] = outputs
            return outputs[0]
        if layer.name in HEAD_CONVOLUTIONS:
            if "heads" not in seen:
                # after a bf16 trunk, the heads too: their 9 channels are cast to float32 for the
                # fused head instead of the trunk's 32 before them (on a 1056 px tile of the bundled
                # model the float32 1x1 convolution and that cast took 14 ms; the trunk took 6.6 ms
                # less in bf16, and the held-out PSNR changed by +0.0002 dB, make bench's check)
                bf16_trunk = getattr(args[0], "dtype", None) == "bfloat16"
                seen["heads"] = merged_heads(model, block, "mixed_bfloat16" if bf16_trunk else None)(*args, **kwargs)
            i = HEAD_CONVOLUTIONS.index(layer.name)
            # what the reference layers after it see, of the right shape (they drop out of the
            # result below, so its values do not matter where the channels are reordered)
            return seen["heads"][..., i * channels : (i + 1) * channels]
        if layer.name == "restored":  # the output: the fused head instead
            x = seen["x"]
            _, flag, spatial_fill, xc, contrast_sums = seen["prefix"]
            heads = seen["heads"]
            if block > 1:
                heads = DepthToSpace(block, name="full_resolution_heads")(heads)
            return CrossChannelHead(contrast.window, compiled_prefix, name="fused_head")(
                [x, flag, spatial_fill, xc, contrast_sums, heads])
        return layer(*args, **kwargs)

    # layers the new output no longer depends on (the reference prefix and head) drop out
    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)


def can_fuse_whole(model: keras.Model) -> bool:
    """Whether ``model`` is a crosschannel_unet (or crosschannel_s2d_unet) that
    :func:`fuse_crosschannel` can rebuild."""
    names = {layer.name for layer in model.layers}
    return getattr(model, "name", "") in CROSSCHANNEL_MODELS and {
        "salt_flag", "features", "restored", "spatial_fill", "cross_channel_fill", "local_contrast",
        *HEAD_CONVOLUTIONS} <= names


# reference layer -> its fast variant (what ihclib.infer.inference_copy swaps in)
FAST_VARIANTS: dict[type, type] = {SpatialFill: FastSpatialFill, CrossChannelFill: FastCrossChannelFill,
                                   LocalContrast: FastLocalContrast}
