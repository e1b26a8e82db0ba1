"""The fast inference path (``ihclib.fusion``): the model's own layers, its element-wise parts by XLA."""

from __future__ import annotations

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from ihclib import fusion  # noqa: E402
from ihclib.infer import denoise  # noqa: E402
from ihclib.model import box_means, box_sums, build_crosschannel_unet, build_model  # noqa: E402


def noisy(shape, seed=0):
    x = np.random.default_rng(seed).random(shape, dtype=np.float32)
    x[x < 0.1], x[x > 0.9] = 0.0, 1.0
    return x


def random_model(seed=0):
    """A small crosschannel_unet with every weight random: its zero-initialised heads would
    otherwise hide the tail."""
    model = build_crosschannel_unet(None, base=4)
    rng = np.random.default_rng(seed)
    model.set_weights([rng.normal(0.0, 0.2, w.shape).astype(np.float32) for w in model.get_weights()])
    return model


@pytest.mark.parametrize("window", [3, 5, 7])
def test_shifted_box_sums_equal_the_pooled_ones_borders_included(window):
    x = noisy((2, 13, 17, 3))  # odd, unequal sides: the borders of both axes
    np.testing.assert_allclose(box_sums(x, window, "shifted"), box_sums(x, window, "pool"), atol=1e-5)
    np.testing.assert_allclose(box_means(x, window, "shifted"),
                               keras.ops.average_pool(x, window, strides=1, padding="same"), atol=1e-6)


def test_unknown_box_method_is_named():
    with pytest.raises(ValueError, match="unknown box method 'fft'"):
        box_sums(noisy((1, 8, 8, 3)), 3, "fft")


def test_fused_function_matches_the_model_and_passes_unflagged_values_exactly():
    model = random_model()
    x = noisy((2, 32, 32, 3))
    reference = np.asarray(model(x))
    fused = np.asarray(fusion.fused_function(model, 32, 2)(x))
    assert np.abs(fused - reference).max() < 1e-4
    assert np.abs(reference - x).max() > 0.05  # the comparison is not between two identities
    unflagged = (x > 0.002) & (x < 0.998)
    assert np.array_equal(fused[unflagged], x[unflagged])


def test_parts_cover_the_model():
    prefix, trunk, tail, is_input = fusion._parts(build_crosschannel_unet(None, base=4))
    assert sum(is_input) == 1  # the tail reads the raw input once (the gate)
    assert len(tail.inputs) == 1 + len(is_input)
    assert len(prefix.outputs) == 1 + len(is_input) - 1
    n_layers = len(prefix.layers) + len(trunk.layers) + len(tail.layers)
    assert n_layers >= len(build_crosschannel_unet(None, base=4).layers)


def test_only_a_known_split_is_fused():
    assert fusion.can_fuse(build_crosschannel_unet(None, base=4))
    assert not fusion.can_fuse(build_model("switching_unet", None))
    with pytest.raises(ValueError, match="no known split"):
        fusion.fused_function(build_model("switching_unet", None), 32, 1)


def test_bfloat16_denoise_runs_the_fused_path_and_stays_close_to_float32():
    model = random_model(1)
    image = noisy((80, 72, 3), seed=2)
    kwargs = dict(tile_size=32, overlap=8, batch_size=2, multiple=4, progress=False)
    exact = denoise(model, image, precision="float32", **kwargs)
    fast = denoise(model, image, precision="bfloat16", **kwargs)
    copy = model._ihclib_predictors["bfloat16_copy"]
    assert (32, 2, "elementwise") in copy._ihclib_predictors  # the predictor denoise used
    assert np.abs(fast - exact).max() < 0.05
    unflagged = (image > 0.002) & (image < 0.998)  # blended alike in both: equal bit for bit
    assert np.array_equal(fast[unflagged], exact[unflagged])
