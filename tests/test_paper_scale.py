"""The GPU paper-scale run (ihclib.study.paper_scale): its numpy training pairs and its merge with
the CPU run's table. Training itself runs on the GPU machine; here only what CI can check fast."""

import numpy as np
import pandas as pd
import pytest

from ihclib.noise import NoiseSpec
from ihclib.study.evaluate import NOISY
from ihclib.study.paper_scale import augment_numpy, jpeg_roundtrip, make_pairs, merge_with_cpu


def _clean(n=3, size=32, seed=0):
    rng = np.random.default_rng(seed)
    return rng.uniform(0.2, 0.9, (n, size, size, 3)).astype(np.float32)


def test_pairs_are_a_pure_function_of_seed_epoch_and_index():
    clean = _clean()
    a = make_pairs(clean, 4, (0.0, 0.5), NoiseSpec(), seed=1, epoch=2, index=3)
    b = make_pairs(clean, 4, (0.0, 0.5), NoiseSpec(), seed=1, epoch=2, index=3)
    c = make_pairs(clean, 4, (0.0, 0.5), NoiseSpec(), seed=1, epoch=3, index=3)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[1], c[1])  # a new epoch draws new tiles and variations


def test_noise_only_sets_impulses_and_amount_follows_the_range():
    clean = _clean(n=2, size=64)
    noisy, target = make_pairs(clean, 8, (0.3, 0.3), NoiseSpec(), seed=0, epoch=0, index=0)
    assert noisy.dtype == target.dtype == np.float32 and noisy.shape == target.shape == (8, 64, 64, 3)
    changed = noisy != target
    assert np.isin(noisy[changed], (0.0, 1.0)).all()
    hit = changed | ((target == noisy) & np.isin(noisy, (0.0, 1.0)))
    assert 0.25 < hit.mean() < 0.35  # 30 % per value (a hit that draws its own value is invisible)
    clean_pairs = make_pairs(clean, 8, (0.0, 0.0), NoiseSpec(), seed=0, epoch=0, index=0)
    assert np.array_equal(clean_pairs[0], clean_pairs[1])


def test_augmented_tiles_stay_8_bit_images_and_vary():
    tile = _clean(n=1, size=48)[0]
    outs = [augment_numpy(tile, np.random.default_rng(s)) for s in range(8)]
    for out in outs:
        assert out.shape == tile.shape and out.dtype == np.float32
        assert out.min() >= 0.0 and out.max() <= 1.0
        assert np.allclose(out * 255, np.round(out * 255), atol=1e-3)
    assert len({o.tobytes() for o in outs}) == len(outs)
    # the variations are moderate: the tile's mean moves, it is not replaced
    assert max(abs(o.mean() - tile.mean()) for o in outs) < 0.3


def test_numpy_augmentation_uses_the_training_ranges():
    # paper_scale copies ihclib.train.Augmentation's defaults (it must run without TensorFlow)
    from dataclasses import asdict

    from ihclib.study.paper_scale import AUGMENT
    from ihclib.train import Augmentation

    defaults = {k: v for k, v in asdict(Augmentation()).items() if k != "enabled"}
    assert AUGMENT == defaults


def test_jpeg_roundtrip_keeps_the_image_close():
    ramp = np.linspace(0.2, 0.8, 64, dtype=np.float32)
    tile = np.stack([np.add.outer(ramp, ramp) / 2] * 3, axis=-1)  # smooth, as tissue mostly is
    out = jpeg_roundtrip(tile, 90)
    assert out.shape == tile.shape and np.abs(out - tile).mean() < 0.02


def _long(method, psnr, noisy_psnr=10.0):
    rows = []
    for m, v in ((NOISY, noisy_psnr), (method, psnr)):
        for amount in (0.1, 0.3):
            rows.append({"method": m, "noise": "s&p", "amount": amount, "metric": "psnr", "mean": v,
                         "ci_low": v - 1, "ci_high": v + 1, "n": 24})
    return pd.DataFrame(rows)


def test_merge_puts_the_gpu_model_beside_the_cpu_methods():
    table = merge_with_cpu(_long("gpu", 30.0), _long("switching median", 40.0),
                           [NOISY, "gpu", "switching median"], metrics=("psnr",))
    assert list(table.index) == [NOISY, "gpu", "switching median"]
    assert list(table.columns) == ["psnr 10%", "psnr 30%"]
    assert table.loc["gpu", "psnr 10%"].startswith("30 [29, 31]")
    assert table.loc["switching median", "psnr 30%"].startswith("40")


def test_merge_refuses_runs_on_other_tiles_or_noise():
    with pytest.raises(ValueError, match="noisy input"):
        merge_with_cpu(_long("gpu", 30.0, noisy_psnr=10.0), _long("switching median", 40.0, noisy_psnr=11.0),
                       [NOISY, "gpu"], metrics=("psnr",))


def test_tables_put_runs_beside_the_cpu_report(tmp_path):
    import json

    from ihclib.study.paper_scale import write_tables

    runs = []
    for seed, psnr in ((0, 30.0), (1, 31.0)):
        run = tmp_path / f"seed{seed}"
        run.mkdir()
        label = f"paper_unet (100 steps, jax, seed {seed})"
        _long(label, psnr).to_csv(run / "comparison.csv", index=False)
        pd.DataFrame({"epoch": [0, 1], "accuracy": [0.5, 0.6], "loss": [0.1, 0.05], "val_accuracy": [0.7, 0.8],
                      "val_loss": [0.08, 0.04]}).to_csv(run / "history.csv", index=False)
        (run / "run.json").write_text(json.dumps({
            "label": label, "devices": ["NVIDIA H100 80GB HBM3"], "backend": "jax", "seed": seed, "steps": 100,
            "tiles_seen": 1600, "epochs": 2, "train_wall_s": 60.0, "tiles_per_s": 26.7, "best_epoch": 1,
            "profile": "paper", "train_tiles": 216}))
        runs.append(run)
    cpu = tmp_path / "cpu" / "tables"
    cpu.mkdir(parents=True)
    _long("paper_unet", 15.0).to_csv(cpu / "comparison.csv", index=False)
    pd.DataFrame({"epoch": [0], "accuracy": [0.3], "loss": [0.5], "val_accuracy": [0.6],
                  "val_loss": [0.3]}).to_csv(cpu / "history_paper_unet.csv", index=False)
    scores = write_tables(runs, tmp_path / "cpu", tmp_path / "out")
    assert list(scores.index) == [NOISY, "paper_unet (H100, 100 steps, seed 0)", "paper_unet (H100, 100 steps, seed 1)",
                                  "paper_unet (CPU, paper profile, 1 epochs)", "median 3x3", "switching median",
                                  "cross-channel"]
    assert scores.loc["paper_unet (H100, 100 steps, seed 1)", "psnr 10%"].startswith("31")
    assert scores.loc["paper_unet (CPU, paper profile, 1 epochs)", "psnr 30%"].startswith("15")
    training = pd.read_csv(tmp_path / "out" / "tables" / "paper_scale_training.csv")
    assert list(training["best val_loss"]) == [0.04, 0.04, 0.3, 0.008107]
    assert (tmp_path / "out" / "figures" / "paper_scale_learning_curves.png").stat().st_size > 0


def _repeat_run(tmp_path, name, *, psnr=30.0, val_loss=0.04, sha="a" * 64, seed=0, epochs=2, flags=""):
    import json

    run = tmp_path / name
    run.mkdir()
    label = f"paper_unet ({epochs * 50} steps, jax, seed {seed})"
    pd.DataFrame({"method": [label, label, NOISY], "psnr": [psnr, psnr + 1, 14.0], "ssim": [0.8, 0.9, 0.2]}).to_csv(
        run / "per_tile.csv", index=False)
    pd.DataFrame({"epoch": range(epochs), "accuracy": [0.5] * epochs, "loss": [0.1] * epochs,
                  "val_accuracy": [0.7] * epochs, "val_loss": [0.08] * (epochs - 1) + [val_loss]}).to_csv(
        run / "history.csv", index=False)
    (run / "run.json").write_text(json.dumps({
        "label": label, "devices": ["NVIDIA H100 80GB HBM3"], "backend": "jax", "seed": seed, "epochs": epochs,
        "steps_per_epoch": 50, "steps": epochs * 50, "profile": "paper", "weights_sha256": sha, "xla_flags": flags}))
    return run


def test_compare_says_whether_runs_of_one_seed_repeat_each_other(tmp_path):
    from ihclib.study.paper_scale import compare_runs

    a = _repeat_run(tmp_path, "a")
    same = _repeat_run(tmp_path, "same")
    other = _repeat_run(tmp_path, "other", psnr=30.25, val_loss=0.05, sha="b" * 64)
    det = _repeat_run(tmp_path, "det", psnr=31.0, sha="c" * 64, flags="--xla_gpu_deterministic_ops=true")
    det_again = _repeat_run(tmp_path, "det_again", psnr=31.0, sha="c" * 64, flags="--xla_gpu_deterministic_ops=true")
    table = compare_runs([a, same, other, det, det_again]).set_index("run")
    assert list(table["against"]) == ["a", "a", "a", "det", "det"]  # a repeat is of the same settings
    assert list(table["weights identical"]) == [True, True, False, True, True]
    assert table.loc["det_again", "max |d psnr| per tile"] == 0
    assert table.loc["same", "max |d val_loss|"] == 0 and table.loc["same", "max |d psnr| per tile"] == 0
    assert table.loc["other", "max |d val_loss|"] == pytest.approx(0.01)
    assert table.loc["other", "max |d psnr| per tile"] == pytest.approx(0.25)
    assert table.loc["other", "max |d ssim| per tile"] == 0


def test_compare_refuses_runs_that_are_not_repeats(tmp_path):
    from ihclib.study.paper_scale import compare_runs

    a = _repeat_run(tmp_path, "a")
    with pytest.raises(ValueError, match="seed 1 differs"):
        compare_runs([a, _repeat_run(tmp_path, "b", seed=1)])
    with pytest.raises(ValueError, match="epochs 3 differs"):
        compare_runs([a, _repeat_run(tmp_path, "c", epochs=3)])
    with pytest.raises(ValueError, match="at least two"):
        compare_runs([a])


def test_the_weights_digest_changes_with_any_weight():
    import keras

    from ihclib.study.paper_scale import weights_digest

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((8, 8, 3)), keras.layers.Conv2D(4, 3, padding="same")])
    before = weights_digest(model)
    assert before == weights_digest(model) and len(before) == 64
    kernel = model.weights[0]
    kernel.assign(kernel.numpy() + np.float32(1e-7) * (np.arange(kernel.numpy().size).reshape(kernel.shape) == 5))
    assert weights_digest(model) != before


def test_gpu_training_turns_on_xla_deterministic_ops_unless_asked_not_to():
    from ihclib.study.paper_scale import with_deterministic_ops

    assert with_deterministic_ops("") == "--xla_gpu_deterministic_ops=true"
    assert with_deterministic_ops("--xla_dump_to=x") == "--xla_dump_to=x --xla_gpu_deterministic_ops=true"
    assert with_deterministic_ops("--xla_gpu_deterministic_ops=false") == "--xla_gpu_deterministic_ops=false"
    assert with_deterministic_ops("--xla_dump_to=x", deterministic=False) == "--xla_dump_to=x"
