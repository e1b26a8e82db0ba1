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

Only element-wise work goes to XLA, and only where fusing saves more than compiling costs
(about 0.1-0.3 s per function and tile shape): XLA over the whole model (or over the pools)
compiled for minutes and ran slower (measured). The results differ from the reference by float32 rounding only
(tests/test_fast_layers.py bounds it). :func:`ihclib.infer.bfloat16_copy` swaps them in, so
only the tool's fast path uses them, and ``make bench`` measures that path's held-out PSNR
against the float32 reference. TensorFlow only, the package's backend.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from .model import CrossChannelFill, LocalContrast, SpatialFill


def _fused(fn):
    """``fn`` (element-wise TensorFlow ops) compiled by XLA into one pass over memory."""
    return tf.function(fn, jit_compile=True)


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


@_fused
def _spatial_select(sums, counts):
    """``sums[i]``: box sums over window i of x * keep (channels 0-2), keep (3-5) and x (6-8);
    ``counts[i]``: :func:`window_counts` of window i."""
    # all values flagged: they are 0 or 1, so the rounded mean is the majority (the median)
    fill = tf.round(sums[-1][..., 6:9] / counts[-1])
    for s, count in reversed(list(zip(sums, counts))):
        num, den = s[..., 0:3], s[..., 3:6]
        # the reference tests mean(keep) > 1e-6, i.e. sum(keep) > 1e-6 * count
        fill = tf.where(den > 1e-6 * count, tf.math.divide_no_nan(num, den), fill)
    return fill


@keras.saving.register_keras_serializable(package="ihclib")
class FastSpatialFill(SpatialFill):
    """:class:`ihclib.model.SpatialFill`, fused (the same function up to float32 rounding)."""

    def call(self, inputs):
        x, flag = inputs
        keep = 1.0 - flag
        stacked = tf.concat([x * keep, keep, x], axis=-1)  # unfused: XLA's compile time would cost more
        height, width = tf.shape(x)[1], tf.shape(x)[2]
        return _spatial_select([box_sums(stacked, w) for w in self.windows],
                               [window_counts(height, width, w) for w in self.windows])


# ---------------------------------------------------------------- cross-channel fill


@_fused
def _cross_inputs(x, flag):
    clean = tf.reduce_prod(1.0 - flag, axis=-1, keepdims=True)  # 1 where all three channels are clean
    cx = clean * x
    # to be summed: clean, x_c, x_c^2, x_c x_{c+1} (over clean pixels)
    return tf.concat([clean, cx, cx * x, cx * _roll(x, 1)], axis=-1)


@_fused
def _cross_select(x, flag, fallback, sums, eps, min_clean):
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


@_fused
def _contrast_select(sums, counts):
    c = sums.shape[-1] // 2
    mean, sq = sums[..., :c] / counts, sums[..., c:] / counts
    return tf.sqrt(tf.maximum(sq - mean * mean, 0.0) + 1e-12)


@keras.saving.register_keras_serializable(package="ihclib")
class FastLocalContrast(LocalContrast):
    """:class:`ihclib.model.LocalContrast`, fused (the same function up to float32 rounding)."""

    def call(self, x):
        sums = box_sums(tf.concat([x, x * x], axis=-1), self.window)  # unfused, as in FastSpatialFill
        return _contrast_select(sums, window_counts(tf.shape(x)[1], tf.shape(x)[2], self.window))


# reference layer -> its fast variant (what ihclib.infer.bfloat16_copy swaps in)
FAST_VARIANTS: dict[type, type] = {SpatialFill: FastSpatialFill, CrossChannelFill: FastCrossChannelFill,
                                   LocalContrast: FastLocalContrast}
