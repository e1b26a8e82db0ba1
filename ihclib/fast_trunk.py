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


def phase_windows(kernel_hw: tuple[int, int], strides: tuple[int, int]) -> list[tuple[slice, slice, list]] | None:
    """Per output phase a * sx + b of :func:`subpixel_weights`' convolution, the rows and columns
    of its kernel that the phase uses (the others are its zeros) and the explicit padding of a
    convolution with only those taps: that convolution gives the phase's channels, computing no
    products with the zeros. None where a phase uses no tap (e.g. kernel 1, stride 2)."""
    windows = []
    axes = []
    for k, s in zip(kernel_hw, strides):
        taps, before, _ = _phase_taps(k, s)
        axes.append([(min(o for o, _ in taps[a]), max(o for o, _ in taps[a]), before) if taps[a] else None
                     for a in range(s)])
    for rows in axes[0]:
        for cols in axes[1]:
            if rows is None or cols is None:
                return None
            (r0, r1, top), (c0, c1, left) = rows, cols
            # offsets r0..r1 are contiguous (consecutive taps); a window ending before the pixel
            # (r1 < 0) or starting after it (r0 > 0) would need a crop, which 'same' kernels do not
            if r0 > 0 or r1 < 0 or c0 > 0 or c1 < 0:
                return None
            windows.append((slice(r0 + top, r1 + top + 1), slice(c0 + left, c1 + left + 1),
                            [[0, 0], [-r0, r1], [-c0, c1], [0, 0]]))
    return windows


@keras.saving.register_keras_serializable(package="ihclib")
class SubpixelConvTranspose(keras.layers.Layer):
    """A 'same' ``Conv2DTranspose`` with equal strides, and the LeakyReLU after it where
    ``negative_slope`` is given, as one convolution (bias and activation fused by oneDNN) and a
    depth-to-space (:func:`subpixel_weights`). Same results up to the order of the sums.

    ``phases_kernel`` (the transposed convolution's kernel height and width; only with
    ``depth_to_space`` False, for an :class:`UpsampleConcat`): each phase as a convolution of its
    own with only the taps it uses (:func:`phase_windows`), returned as a list of block * block
    tensors. One convolution into all phases multiplies by the zeros too: 16 taps for the 9 of a
    3x3 kernel at stride 2. In a 1056 px tile of the bundled model its two such convolutions
    took 5.0 and 10.0 ms, as four convolutions each 4.1 and 6.9 ms (oneDNN's log; 2-core Zen 5)."""

    def __init__(self, filters: int, kernel_shape: tuple[int, int, int, int], padding: list[list[int]],
                 block: int = 2, negative_slope: float | None = None, depth_to_space: bool = True,
                 phases_kernel: tuple[int, int] | None = None, **kwargs):
        super().__init__(**kwargs)
        self.filters, self.block, self.depth_to_space = int(filters), int(block), bool(depth_to_space)
        self.phases_kernel = None if phases_kernel is None else tuple(int(k) for k in phases_kernel)
        self.windows = None
        if self.phases_kernel is not None:
            if self.depth_to_space:
                raise ValueError("phases_kernel gives the phases apart: only with depth_to_space=False")
            self.windows = phase_windows(self.phases_kernel, (self.block, self.block))
            if self.windows is None:
                raise ValueError(f"a phase of kernel {self.phases_kernel} at stride {self.block} uses no tap")
        self.kernel_shape = tuple(int(d) for d in kernel_shape)
        self.padding = [[int(a), int(b)] for a, b in padding]
        self.negative_slope = None if negative_slope is None else float(negative_slope)

    def build(self, input_shape):
        self.kernel = self.add_weight(shape=self.kernel_shape, initializer="zeros", name="kernel")
        self.bias = self.add_weight(shape=(self.kernel_shape[-1],), initializer="zeros", name="bias")

    def _conv(self, x, kernel, bias, padding):
        y = tf.nn.bias_add(tf.nn.conv2d(x, tf.cast(kernel, x.dtype), 1, padding), tf.cast(bias, x.dtype))
        return y if self.negative_slope is None else tf.nn.leaky_relu(y, self.negative_slope)

    def call(self, x):
        if self.windows is not None:  # each phase's own taps, its channels of the kernel and bias
            # (TensorFlow runs the four side by side; chained by control dependencies, one after
            # another, their LeakyReLUs were no longer fused: 4.3 ms more a tile, 2-core Zen 5)
            out = self.filters
            return [self._conv(x, self.kernel[rows, cols, :, p * out : (p + 1) * out],
                               self.bias[p * out : (p + 1) * out], padding)
                    for p, (rows, cols, padding) in enumerate(self.windows)]
        y = self._conv(x, self.kernel, self.bias, self.padding)
        return tf.nn.depth_to_space(y, self.block) if self.depth_to_space else y

    def compute_output_shape(self, input_shape):
        n, h, w, _ = input_shape
        if self.windows is not None:
            return [(n, h, w, self.filters)] * len(self.windows)
        if not self.depth_to_space:  # the phases as channels, for an UpsampleConcat to put in place
            return (n, h, w, self.kernel_shape[-1])
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b, self.filters)

    def get_config(self) -> dict:
        return {**super().get_config(), "filters": self.filters, "kernel_shape": self.kernel_shape,
                "padding": self.padding, "block": self.block, "negative_slope": self.negative_slope,
                "depth_to_space": self.depth_to_space, "phases_kernel": self.phases_kernel}


@keras.saving.register_keras_serializable(package="ihclib")
class UpsampleConcat(keras.layers.Layer):
    """``concat([depth_to_space(up, block), skip])``: a :class:`SubpixelConvTranspose`'s phases
    put in place beside the U-Net's skip. ``compiled``: in one pass by :mod:`ihclib.native`
    (``trunk.c``, run as a NumPy function, the same bits) where it is built, else TensorFlow's
    two passes. On a 1056 px tile of the bundled model the two passes took 20 ms, and the
    trunk 7-8 ms less in one (2-core Zen 5, in process).

    ``conv``: the :class:`SubpixelConvTranspose` that makes ``up`` (with ``phases_kernel``: its
    phases apart, one convolution each), called here on the first input: a Keras functional
    graph gives a layer one tensor per output it had, so the phases cannot travel between two
    layers as a list."""

    def __init__(self, block: int = 2, compiled: bool = True, conv: SubpixelConvTranspose | dict | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.block, self.compiled = int(block), bool(compiled)
        self.conv = keras.saving.deserialize_keras_object(conv) if isinstance(conv, dict) else conv

    def build(self, input_shape):
        if self.conv is not None and not self.conv.built:
            self.conv.build(input_shape[0])

    def call(self, inputs):
        up, skip = inputs
        if self.conv is not None:
            up = self.conv(up)
        apart = isinstance(up, (list, tuple))  # the phases, each its own tensor
        if not (self.compiled and native.available()):
            return tf.concat([tf.nn.depth_to_space(tf.concat(up, -1) if apart else up, self.block), skip], -1)
        phases = list(up) if apart else [up]

        def run(*arrays):  # reused arrays only where no tensor still holds them (ihclib.native)
            *u, s = arrays
            return native.upsample_concat(u if apart else u[0], s, self.block, reuse=True)

        n, h, w, c = phases[0].shape
        up_shape = (n, h, w, None if c is None else c * len(phases))
        native.expect_upsample_concat(up_shape, tuple(skip.shape), self.block, phases[0].dtype.as_numpy_dtype)
        out = tf.numpy_function(run, [*phases, skip], phases[0].dtype, stateful=False)
        out.set_shape(self._output_shape(up_shape, tuple(skip.shape)))
        return out

    def _output_shape(self, up, skip):
        n, h, w, c = up
        b = self.block
        return (n, None if h is None else h * b, None if w is None else w * b,
                None if c is None else c // (b * b) + skip[-1])

    def compute_output_shape(self, input_shape):
        up, skip = input_shape
        if self.conv is not None:
            up = self.conv.compute_output_shape(up)
        if isinstance(up[0], (list, tuple)):  # the phases apart (a list of shapes)
            n, h, w, c = up[0]
            up = (n, h, w, None if c is None else c * len(up))
        return self._output_shape(tuple(up), tuple(skip))

    def get_config(self) -> dict:
        conv = None if self.conv is None else keras.saving.serialize_keras_object(self.conv)
        return {**super().get_config(), "block": self.block, "compiled": self.compiled, "conv": conv}


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
    passed: set[str] = set()  # transposed convolutions now called by the concatenation after them
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
        # joined to a compiled concatenation: each phase its own convolution, without the zero taps
        apart = joined and compiled and native.available() and phase_windows(kernel.shape[:2], layer.strides) is not None
        new = SubpixelConvTranspose(layer.filters, weights.shape, padding, block, slope, depth_to_space=not joined,
                                    phases_kernel=kernel.shape[:2] if apart else None, dtype=layer.dtype_policy,
                                    name=layer.name)
        new.build(None)
        new.set_weights([weights, bias])
        if apart:  # the concatenation calls it (its phases are several tensors); here, its input passes
            passed.add(layer.name)
            replaced[concat.name] = UpsampleConcat(block, compiled, conv=new, dtype=concat.dtype_policy,
                                                   name=concat.name)
            continue
        replaced[layer.name] = new
        if joined:
            replaced[concat.name] = UpsampleConcat(block, compiled, dtype=concat.dtype_policy, name=concat.name)
    if not replaced:
        return model

    def call(layer, *args, **kwargs):
        if layer.name in replaced:
            return replaced[layer.name](*args, **kwargs)
        if layer.name in absorbed or layer.name in passed:  # now inside the layer before / after it
            return args[0]
        return layer(*args, **kwargs)

    return keras.models.clone_model(model, clone_function=lambda layer: layer, call_function=call)
