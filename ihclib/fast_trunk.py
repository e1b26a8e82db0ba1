"""Fast inference forms of the convolution trunk's layers: the same functions, fewer passes.

In a call of one 1056 px tile of the bundled model (32 / 32 / 64 channels, bf16, the 2-core
Zen 5), the 3x3 convolutions ran at the bf16 peak and most of the rest of the trunk's time was
memory passes around them: each stride-2 ``Conv2DTranspose`` (oneDNN's backward-data
convolution) took 4-7 ms, and its bias and LeakyReLU, which oneDNN does not fuse into it, another
pass each over the full-resolution output (together 13 ms).

:class:`SubpixelConvTranspose` computes such a layer as one ordinary convolution at the input's
resolution into four times the channels, one per output phase, followed by a depth-to-space (the
sub-pixel convolution of Shi et al. 2016, here an exact rewrite of a trained layer rather than a
design): the bias and the LeakyReLU fuse into that convolution, and the full-resolution output
is written once. :func:`rewrite_trunk` swaps it in; :func:`ihclib.infer.inference_copy` calls it
for the tool's fast path only, and the study keeps the reference layers.
"""

from __future__ import annotations

import keras
import numpy as np
import tensorflow as tf

from . import native


def _phase_taps(kernel: int, stride: int) -> tuple[dict[int, list[tuple[int, int]]], int, int]:
    """Per output phase a (0..stride-1) of a 'same' transposed convolution along one axis, the
    (input offset, kernel tap) pairs it sums: out[stride * m + a] = sum x[m + offset] * k[tap];
    with the padding before and after that the offsets need."""
    # the transposed convolution is the gradient of a 'same' convolution with this padding before
    pad = max(kernel - stride, 0) // 2
    taps = {a: [(-j, stride * j + a + pad) for j in range(-kernel, kernel + 1)
                if 0 <= stride * j + a + pad < kernel] for a in range(stride)}
    offsets = [off for pairs in taps.values() for off, _ in pairs]
    return taps, -min(offsets), max(offsets)


def subpixel_weights(kernel: np.ndarray, bias: np.ndarray | None, strides: tuple[int, int]
                     ) -> tuple[np.ndarray, np.ndarray, list[list[int]]]:
    """A 'same' ``Conv2DTranspose``'s kernel (kh, kw, out, in) and bias as one convolution's
    (kh', kw', in, sy * sx * out) and bias, and its explicit padding: the convolution's output
    channel (a * sx + b) * out + c is the transposed convolution's output channel c at pixel
    (sy * m + a, sx * n + b), as ``tf.nn.depth_to_space`` (DCR) arranges it. Kernel taps that a
    phase does not use are zeros."""
    kh, kw, out, cin = kernel.shape
    (sy, sx) = strides
    rows, top, bottom = _phase_taps(kh, sy)
    cols, left, right = _phase_taps(kw, sx)
    weights = np.zeros((top + bottom + 1, left + right + 1, cin, sy * sx * out), kernel.dtype)
    for a, row_taps in rows.items():
        for b, col_taps in cols.items():
            phase = slice((a * sx + b) * out, (a * sx + b + 1) * out)
            for dy, ty in row_taps:
                for dx, tx in col_taps:
                    weights[dy + top, dx + left, :, phase] = kernel[ty, tx].T
    full_bias = np.tile(bias if bias is not None else np.zeros(out, kernel.dtype), sy * sx)
    return weights, full_bias.astype(kernel.dtype), [[0, 0], [top, bottom], [left, right], [0, 0]]


@keras.saving.register_keras_serializable(package="ihclib")
class SubpixelConvTranspose(keras.layers.Layer):
    """A 'same' ``Conv2DTranspose`` with equal strides, and the LeakyReLU after it where
    ``negative_slope`` is given, as one convolution (bias and activation fused by oneDNN) and a
    depth-to-space (:func:`subpixel_weights`). Same results up to the order of the sums."""

    def __init__(self, filters: int, kernel_shape: tuple[int, int, int, int], padding: list[list[int]],
                 block: int = 2, negative_slope: float | None = None, depth_to_space: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.block, self.depth_to_space = int(filters), int(block), bool(depth_to_space)
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.padding = [[int(a), int(b)] for a, b in padding]
        self.negative_slope = None if negative_slope is None else float(negative_slope)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=self.kernel_shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.kernel_shape[-1],), initializer="zeros", name="bias")

    def call(self, x):
        y = tf.nn.conv2d(x, tf.cast(self.kernel, x.dtype), 1, self.padding)
        y = tf.nn.bias_add(y, tf.cast(self.bias, x.dtype))
        if self.negative_slope is not None:
            y = tf.nn.leaky_relu(y, self.negative_slope)
        return tf.nn.depth_to_space(y, self.block) if self.depth_to_space else y

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        if not self.depth_to_space:  # the phases as channels, for an UpsampleConcat to put in place
            return (n, h, w, self.kernel_shape[-1])
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_shape": self.kernel_shape,
                "padding": self.padding, "block": self.block, "negative_slope": self.negative_slope,
                "depth_to_space": self.depth_to_space}


@keras.saving.register_keras_serializable(package="ihclib")
class UpsampleConcat(keras.layers.Layer):
    """``concat([depth_to_space(up, block), skip])``: a :class:`SubpixelConvTranspose`'s phases
    put in place beside the U-Net's skip. ``compiled``: in one pass by :mod:`ihclib.native`
    (``trunk.c``, run as a NumPy function, the same bits) where it is built, else TensorFlow's
    two passes. On a 1056 px tile of the bundled model the two passes took 20 ms, and the
    trunk 7-8 ms less in one (2-core Zen 5, in process)."""

    def __init__(self, block: int = 2, compiled: bool = True, **kwargs):
        super().__init__(**kwargs)
        self.block, self.compiled = int(block), bool(compiled)

    def call(self, inputs):
        up, skip = inputs
        if not (self.compiled and native.available()):
            return tf.concat([tf.nn.depth_to_space(up, self.block), skip], -1)

        def run(u, s):  # reused arrays only where no tensor still holds them (ihclib.native)
            return native.upsample_concat(u, s, self.block, reuse=True)

        native.expect_upsample_concat(tuple(up.shape), tuple(skip.shape), self.block, up.dtype.as_numpy_dtype)
        out = tf.numpy_function(run, [up, skip], up.dtype, stateful=False)
        out.set_shape(self.compute_output_shape((tuple(up.shape), tuple(skip.shape))))
        return out

    def compute_output_shape(self, input_shape):
        (n, h, w, c), skip = input_shape
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, c // (b * b) + skip[-1])

    def get_config(self) -> dict:
        return {**super().get_config(), "block": self.block, "compiled": self.compiled}


def _rewritable(layer: keras.layers.Layer) -> bool:
    """A transposed convolution :class:`SubpixelConvTranspose` computes exactly."""
    if not isinstance(layer, keras.layers.Conv2DTranspose):
        return False
    config = layer.get_config()
    sy, sx = layer.strides
    return (sy == sx and sy > 1 and config["padding"] == "same" and config.get("output_padding") is None
            and tuple(layer.dilation_rate) == (1, 1) and config["data_format"] == "channels_last"
            and config["activation"] == "linear" and config.get("groups", 1) == 1)


def _graph(model: keras.Model) -> tuple[dict[int, list], dict[int, list], dict[int, object]] | None:
    """``model``'s own graph, walked back from its outputs: for each layer (by id) the layers that
    read its outputs, its input tensors and its output tensor (where it has one), in this model. A layer may belong to
    other models too (a clone that shares it has a node of its own in each), so its ``.input``
    and ``.output``, which are its first node's, are not used. None where a layer is called more
    than once in ``model``."""
    readers: dict[int, list] = {}
    inputs: dict[int, list] = {}
    outputs: dict[int, object] = {}
    nodes: dict[int, int] = {}
    stack = list(model.outputs)
    while stack:
        tensor = stack.pop()
        layer, node_index, _ = tensor._keras_history
        if id(layer) in nodes:
            if nodes[id(layer)] != node_index:
                return None
            continue
        nodes[id(layer)] = node_index
        node = layer._inbound_nodes[node_index]
        if len(node.output_tensors) == 1:  # (the layers rewritten have one output)
            outputs[id(layer)] = node.output_tensors[0]
        parents = list(node.input_tensors)
        inputs[id(layer)] = parents
        for parent in parents:
            readers.setdefault(id(parent._keras_history.operation), []).append(layer)
            stack.append(parent)
    return readers, inputs, outputs


def rewrite_trunk(model: keras.Model, compiled: bool = True) -> keras.Model:
    """``model`` with each rewritable ``Conv2DTranspose`` (:func:`_rewritable`) replaced by a
    :class:`SubpixelConvTranspose` in its dtype policy, which takes in the LeakyReLU after it
    where that is its only reader; where what it gives is then only the first input of a
    two-input channel concatenation (a U-Net's way up), that concatenation becomes an
    :class:`UpsampleConcat` (``compiled``: in one compiled pass where :mod:`ihclib.native` is
    built) and takes in the depth-to-space. The other layers are ``model``'s own (shared).
    ``model`` itself is left as it was; a model with nothing to rewrite comes back as it is."""
    graph = _graph(model)
    if graph is None:  # a layer called twice: not one list of readers (none of the registry's)
        return model
    consumers, inputs, outputs = graph
    replaced: dict[str, keras.layers.Layer] = {}
    absorbed: set[str] = set()
    for layer in model.layers:
        if not _rewritable(layer) or id(layer) not in outputs:  # (not on the way to the outputs)
            continue
        readers = consumers.get(id(layer), [])
        slope, output = None, outputs[id(layer)]
        if len(readers) == 1 and type(readers[0]) is keras.layers.LeakyReLU:
            slope, output = float(readers[0].get_config()["negative_slope"]), outputs[id(readers[0])]
            absorbed.add(readers[0].name)
            readers = consumers.get(id(readers[0]), [])
        block = layer.strides[0]
        concat = readers[0] if len(readers) == 1 else None
        joined = (type(concat) is keras.layers.Concatenate and concat.get_config()["axis"] in (-1, 3)
                  and len(inputs[id(concat)]) == 2 and inputs[id(concat)][0] is output)
        kernel, *rest = layer.get_weights()
        weights, bias, padding = subpixel_weights(kernel, rest[0] if rest else None, layer.strides)
        new = SubpixelConvTranspose(layer.filters, weights.shape, padding, block, slope, depth_to_space=not joined,
                                    dtype=layer.dtype_policy, name=layer.name)
        new.build(None)
        new.set_weights([weights, bias])
        replaced[layer.name] = new
        if joined:
            replaced[concat.name] = UpsampleConcat(block, compiled, dtype=concat.dtype_policy, name=concat.name)
    if not replaced:
        return model

    def call(layer, *args, **kwargs):
        if layer.name in replaced:
            return replaced[layer.name](*args, **kwargs)
        if layer.name in absorbed:  # its activation is now inside the layer before it
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
