"""Small files that the tests make: random RGB images and tiny saved Keras models."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest


def rgb(h: int = 40, w: int = 48, seed: int = 0) -> np.ndarray:
    """A random float32 RGB image in [0.05, 0.95] (no value is 0 or 1, so none looks like an impulse)."""
    return np.random.default_rng(seed).uniform(0.05, 0.95, (h, w, 3)).astype(np.float32)


def keras_model(path: Path, channels_in: int = 3, weight: float = 1.0, sidecar: dict | None = None) -> str:
    """A saved 1x1-convolution model: identity for weight 1, NaN everywhere for weight NaN."""
    keras = pytest.importorskip("keras")
    inp = keras.Input((None, None, channels_in))
    conv = keras.layers.Conv2D(3, 1, use_bias=False)
    model = keras.Model(inp, conv(inp))
    w = np.zeros((1, 1, channels_in, 3), np.float32)
    for c in range(min(3, channels_in)):
        w[0, 0, c, c] = weight
    conv.set_weights([w])
    model.save(path)
    if sidecar is not None:
        path.with_suffix(".json").write_text(json.dumps(sidecar))
    return str(path)
