"""XLA for a model's element-wise parts, oneDNN for its convolutions: the fast inference pass.

``crosschannel_unet`` spends about 40 % of an inference pass outside its convolutions: the
impulse flags, the spatial and cross-channel fills (box sums and some 200 element-wise
operations on full-resolution tensors) before the U-Net, and the heads and the gate after it.
TensorFlow runs those operations one at a time, each streaming whole tensors through memory.
XLA fuses them into a few loops, but its CPU convolutions are about 3x slower than oneDNN's
(measured: reports/benchmarks.json, ``fused``). So :func:`fused_function` cuts the model in
three: the *prefix* (input to the U-Net's input features) and the *tail* (the U-Net's output
features to the restored image) are compiled by XLA, with their box sums computed as shifted
slices (``ihclib.model.box_sums``, ``"shifted"``), which XLA fuses too; the convolution trunk
between them runs through oneDNN, in the precision of the model it is given (the bf16 copy of
:func:`ihclib.infer.bfloat16_copy` for ``ihclib denoise``). The three parts are the model's
own layers and weights (Keras sub-models), not a second implementation.

What changes is the order of float additions in the box sums (about 1e-7 on a fill) and, with
the bf16 trunk, the trunk's rounding: ``make bench`` checks the PSNR of exactly this path
against the float32 model on held-out images. Values the model's gate leaves alone (not
exactly 0 or 1) still pass bit for bit.
"""

from __future__ import annotations

import hashlib
import os
import platform
from pathlib import Path
from typing import Any

CACHE_ENV = "IHCLIB_XLA_CACHE"  # a folder, or "off"
_CACHE_FLAG = "--tf_xla_persistent_cache_directory"


def cpu_signature(cpuinfo: str | None = None) -> str:
    """A short hash of the CPU model and its feature flags: compiled code is only reused on a
    CPU with the same instructions (a home folder shared by different cluster nodes)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = platform.processor() or platform.machine()
    keep = [line for line in cpuinfo.splitlines() if line.startswith(("model name", "flags", "Features"))][:2]
    return hashlib.sha256("\n".join(keep).encode()).hexdigest()[:12]


def compile_cache_dir(environ: dict | None = None) -> Path | None:
    """Where XLA keeps the fused path's compiled code between runs: ``$IHCLIB_XLA_CACHE``, else
    ``$XDG_CACHE_HOME`` (or ``~/.cache``)/ihclib/xla-<cpu signature>; None when turned off
    ("off") or when no folder on the way can be written."""
    environ = os.environ if environ is None else environ
    chosen = environ.get(CACHE_ENV, "").strip()
    if chosen.lower() in ("off", "0", "no", "false"):
        return None
    base = Path(environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    folder = Path(chosen) if chosen else base / "ihclib" / f"xla-{cpu_signature()}"
    existing = next((p for p in (folder, *folder.parents) if p.exists()), None)
    return folder if existing is not None and os.access(existing, os.W_OK | os.X_OK) else None


def configure_compile_cache() -> None:
    """Point XLA's persistent compilation cache at :func:`compile_cache_dir` (through
    ``TF_XLA_FLAGS``, read when TensorFlow starts: ``import ihclib`` calls this first). Compiling
    the fused parts takes about 3 s per tile shape; from the cache, well under 1 s. A user's own
    cache flag wins."""
    flags = os.environ.get("TF_XLA_FLAGS", "")
    folder = None if _CACHE_FLAG in flags else compile_cache_dir()
    if folder is not None:
        os.environ["TF_XLA_FLAGS"] = f"{flags} {_CACHE_FLAG}={folder}".strip()

# architecture -> (layer whose output is the trunk's input, layer whose input is the trunk's output)
SPLITS = {"crosschannel_unet": ("features", "mask_logit")}


def can_fuse(model: Any) -> bool:
    """Whether ``model`` is an architecture :func:`fused_function` knows how to split."""
    split = SPLITS.get(getattr(model, "name", ""))
    if split is None or not hasattr(model, "get_layer"):
        return False
    names = {layer.name for layer in model.layers}
    return set(split) <= names


def shifted_copy(model: Any) -> Any:
    """A copy of ``model`` (same weights, same dtypes) whose box sums are shifted slices."""
    import keras

    def clone(layer: Any) -> Any:
        config = layer.get_config()
        if "box" in config:
            config["box"] = "shifted"
        return layer.__class__.from_config(config)

    copy = keras.models.clone_model(model, clone_function=clone)
    copy.set_weights(model.get_weights())
    return copy


def _parts(model: Any) -> tuple[Any, Any, Any, list[bool]]:
    """(prefix, trunk, tail, which tail inputs after the trunk's output are the model's input).

    The prefix computes the trunk's input and every other tensor the tail reads; the tail
    reads the trunk's output, those tensors and the model's input, in that order.
    """
    import keras

    first, last = SPLITS[model.name]
    features, trunk_out = model.get_layer(first).output, model.get_layer(last).input
    before_trunk = _upstream(model, features)
    before_tail = _upstream(model, trunk_out)
    tail_layers = [layer for layer in model.layers if layer not in before_tail]
    read_by_tail = {id(t) for layer in tail_layers for t in _inputs_of(layer)}
    crossing = [layer.output for layer in before_trunk if id(layer.output) in read_by_tail]
    is_input = [layer.__class__.__name__ == "InputLayer" for layer in before_trunk if id(layer.output) in read_by_tail]
    made = [t for t, raw in zip(crossing, is_input) if not raw]
    prefix = keras.Model(model.input, [features] + made, name=f"{model.name}_prefix")
    trunk = keras.Model(features, trunk_out, name=f"{model.name}_trunk")
    tail = keras.Model([trunk_out] + crossing, model.output, name=f"{model.name}_tail")
    return prefix, trunk, tail, is_input


def _inputs_of(layer: Any) -> list:
    inputs = layer.input
    return list(inputs) if isinstance(inputs, (list, tuple)) else [inputs]


def _upstream(model: Any, tensor: Any) -> list:
    """The layers whose outputs ``tensor`` depends on, itself and the model's input layer included."""
    by_output = {id(layer.output): layer for layer in model.layers}
    seen: list = []
    stack = [tensor]
    while stack:
        layer = by_output.get(id(stack.pop()))
        if layer is None or layer in seen:
            continue
        seen.append(layer)
        if layer.__class__.__name__ != "InputLayer":
            stack.extend(_inputs_of(layer))
    return seen


def fused_function(model: Any, tile_size: int, batch_size: int):
    """The model's inference pass as a ``tf.function`` (fixed input ``(batch_size, tile_size,
    tile_size, 3)``) whose prefix and tail are XLA-compiled and whose trunk is not."""
    import tensorflow as tf

    if not can_fuse(model):
        raise ValueError(f"model {getattr(model, 'name', '?')!r} has no known split for XLA fusion")
    prefix, trunk, tail, is_input = _parts(shifted_copy(model))
    run_prefix = tf.function(lambda x: prefix(x, training=False), jit_compile=True)
    run_tail = tf.function(lambda *xs: tail(list(xs), training=False), jit_compile=True)
    spec = tf.TensorSpec((batch_size, tile_size, tile_size, 3), tf.float32, name="tiles")

    @tf.function(input_signature=[spec])
    def run(x):
        features, *made = run_prefix(x)
        made = iter(made)
        crossing = [x if raw else next(made) for raw in is_input]
        return run_tail(trunk(features, training=False), *crossing)

    return run
