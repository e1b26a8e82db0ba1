"""Inference backends: choice by name, and agreement with Keras within 1e-4 (when installed)."""

from __future__ import annotations

import numpy as np
import pytest

from ihclib import backends
from ihclib.backends import predictor, resolve_backend
from ihclib.infer import denoise

TOL = 1e-4
OPTIONAL = [
    pytest.param("openvino", marks=pytest.mark.skipif(not backends.is_available("openvino"),
                                                      reason="openvino not installed")),
]


@pytest.fixture(scope="module")
def mini_unet():
    """The paper's layer types at a tiny size: strided Conv2D, BatchNormalization with non-trivial
    statistics (the runtimes fold it into the convolution), LeakyReLU, Conv2DTranspose, skips."""
    keras = pytest.importorskip("keras")
    keras.utils.set_random_seed(0)
    layers = keras.layers
    inp = keras.Input((None, None, 3))
    e1 = layers.LeakyReLU()(layers.Conv2D(8, 3, strides=2, padding="same")(inp))
    e2 = layers.Conv2D(16, 5, strides=2, padding="same")(e1)
    bn = layers.BatchNormalization()
    e2 = layers.LeakyReLU()(bn(e2))
    d1 = layers.LeakyReLU()(layers.Conv2DTranspose(8, 3, strides=2, padding="same")(e2))
    d1 = layers.Concatenate()([d1, e1])
    d0 = layers.LeakyReLU()(layers.Conv2DTranspose(3, 3, strides=2, padding="same")(d1))
    out = layers.Conv2D(3, 2, padding="same")(layers.Concatenate()([d0, inp]))
    model = keras.Model(inp, out)
    rng = np.random.default_rng(0)
    gamma, beta, mean, var = bn.get_weights()
    bn.set_weights([rng.uniform(0.5, 2, gamma.shape), rng.normal(0, 0.1, beta.shape),
                    rng.normal(0, 0.5, mean.shape), rng.uniform(0.5, 3, var.shape)])
    return model


def test_default_is_keras_and_env_var_chooses(monkeypatch):
    monkeypatch.delenv(backends.ENV_VAR, raising=False)
    assert resolve_backend(None) == "keras"
    monkeypatch.setenv(backends.ENV_VAR, "Keras ")
    assert resolve_backend(None) == "keras"


def test_auto_is_keras_with_onednn_else_the_fastest_installed(monkeypatch):
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "1")
    monkeypatch.setattr(backends, "is_available", lambda name: True)
    assert resolve_backend("auto") == "keras"
    monkeypatch.setenv("TF_ENABLE_ONEDNN_OPTS", "0")
    assert resolve_backend("auto") == "openvino"
    monkeypatch.setattr(backends, "is_available", lambda name: name == "keras")
    assert resolve_backend("auto") == "keras"


def test_unknown_or_missing_backend_is_refused(monkeypatch):
    with pytest.raises(ValueError, match="unknown backend 'tensorrt'; choose from auto, keras"):
        resolve_backend("tensorrt")
    monkeypatch.setattr(backends, "is_available", lambda name: name == "keras")
    with pytest.raises(ValueError, match="unknown backend 'onnxruntime'"):  # removed (issue 12)
        resolve_backend("onnxruntime")
    with pytest.raises(ValueError, match=r"pip install 'ihclib\[openvino\]'"):
        resolve_backend("openvino")


def test_bad_backend_env_var_fails_denoise(monkeypatch, mini_unet):
    monkeypatch.setenv(backends.ENV_VAR, "nope")
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        denoise(mini_unet, np.zeros((32, 32, 3), np.float32), tile_size=32, overlap=8)


@pytest.mark.parametrize("name", OPTIONAL)
def test_backend_matches_keras_on_tiles(name, mini_unet):
    tiles = np.random.default_rng(1).random((3, 64, 64, 3), dtype=np.float32)
    ref = predictor(mini_unet, 64, 3, "keras")(tiles)
    got = predictor(mini_unet, 64, 3, name)(tiles)
    assert got.shape == ref.shape and got.dtype == np.float32
    assert np.abs(got - ref).max() < TOL
    assert np.abs(ref).max() > 0.1  # a model that outputs ~0 would agree trivially
    assert predictor(mini_unet, 64, 3, name) is predictor(mini_unet, 64, 3, name)  # converted once


@pytest.mark.parametrize("name", OPTIONAL)
def test_denoise_with_backend_matches_keras(name, mini_unet, monkeypatch):
    img = np.random.default_rng(2).random((150, 101, 3), dtype=np.float32)
    ref = denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=4, backend="keras")
    got = denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=4, backend=name)
    np.testing.assert_allclose(got, ref, atol=TOL)
    monkeypatch.setenv(backends.ENV_VAR, name)  # what `IHCLIB_BACKEND=... ihclib denoise` does
    np.testing.assert_allclose(denoise(mini_unet, img, tile_size=64, overlap=16, batch_size=4), ref, atol=TOL)


@pytest.mark.skipif(not backends.is_available("openvino"), reason="openvino not installed")
def test_openvino_matches_keras_on_the_paper_model():
    keras = pytest.importorskip("keras")
    from ihclib.model import build_paper_model

    keras.utils.set_random_seed(3)
    model = build_paper_model(None)
    tiles = np.random.default_rng(3).random((2, 32, 32, 3), dtype=np.float32)
    ref = predictor(model, 32, 2, "keras")(tiles)
    assert np.abs(predictor(model, 32, 2, "openvino")(tiles) - ref).max() < TOL


@pytest.mark.skipif(not backends.is_available("openvino"), reason="openvino not installed")
def test_openvino_streams_split_and_pad_the_batch(mini_unet):
    tiles = np.random.default_rng(4).random((3, 64, 64, 3), dtype=np.float32)  # 3 tiles, 2 streams: padded
    ref = predictor(mini_unet, 64, 3, "keras")(tiles)
    got = backends.openvino_predictor(mini_unet, 64, 3, threads=2, streams=2)(tiles)
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < TOL
