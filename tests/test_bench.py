"""benchmarks/bench.py at a tiny configuration: every measurement runs, and the numbers add up."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

BENCH = Path(__file__).resolve().parents[1] / "benchmarks" / "bench.py"


@pytest.fixture(scope="module")
def bench():
    spec = importlib.util.spec_from_file_location("ihclib_bench", BENCH)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_run(bench, tmp_path_factory):
    """One whole benchmark at 32 px tiles, Keras only, no variants (seconds, not minutes)."""
    cfg = replace(bench.QUICK, name="tiny", tile_size=32, batch_sizes=(1, 2), main_batch=2, matmul_n=128,
                  predict_tiles=4, denoise_size=96, denoise_batch=2, denoise_overlap=8, backends=("keras",))
    out = tmp_path_factory.mktemp("bench") / "benchmarks.json"
    return bench.run_benchmark(cfg, out, log=lambda _: None), out


def test_time_calls_counts_calls_and_rates(bench):
    calls = []
    t = bench.time_calls(lambda: calls.append(1), tiles_per_call=4, min_time=0.0, min_calls=3, warmup=2)
    assert len(calls) == 5 and t["calls"] == 3
    assert t["tiles_per_s"] >= t["mean_tiles_per_s"] > 0
    r = bench.rates(10.0, 2_000_000_000, peak_gflops=100.0, factor=3)
    assert r == {"tiles_per_s": 10.0, "gflops": 60.0, "pct_peak": 60.0}


def test_report_is_written_and_consistent(tiny_run, bench):
    result, out = tiny_run
    assert json.loads(out.read_text())["model"] == result["model"]
    peak = result["peak"]
    assert peak["peak_gflops"] == max(peak["numpy_gflops"], peak["tensorflow_gflops"]) > 0
    flops = result["model"]["flops_per_tile"]
    assert flops > 0
    assert [(r["backend"], r["batch"]) for r in result["inference"]] == [("keras", 1), ("keras", 2)]
    for r in result["inference"] + result["training"]:
        factor = 1 if r in result["inference"] else bench.TRAIN_FLOP_FACTOR
        assert r["tiles_per_s"] > 0
        assert r["gflops"] == pytest.approx(r["tiles_per_s"] * factor * flops / 1e9, rel=0.01, abs=0.01)
        assert r["pct_peak"] == pytest.approx(100 * r["gflops"] / peak["peak_gflops"], abs=0.1)
    ratio = result["predict_ratio"]
    assert ratio["ratio_keras_vs_predict"] == pytest.approx(ratio["keras_tiles_per_s"] / ratio["predict_tiles_per_s"],
                                                            rel=0.01)
    text = bench.format_report(result)
    assert "inference keras" in text and "ihclib denoise 96x96" in text


def test_denoise_cli_is_timed_with_its_memory(tiny_run):
    result, _ = tiny_run
    (run,) = result["denoise_cli"]["runs"]
    assert run["backend"] == "keras" and run["size"] == 96
    assert run["tiles"] == 16  # 96 px, tile 32, overlap >= 8: starts 0, 21, 43, 64 on each side
    assert 0 < run["seconds"] < run["wall_s"]
    assert run["peak_rss_mib"] > 100  # a Python process with TensorFlow loaded


def test_peak_rss_is_the_childs_own(bench):
    touch = "b = bytearray(300 * 2**20); b[::4096] = b'x' * len(b[::4096])"
    code, _, _, rss_big = bench.run_measured([sys.executable, "-c", touch])
    assert code == 0 and rss_big > 300
    ballast = bytearray(500 * 2**20)  # a big parent (as the benchmark is) must not count
    ballast[::4096] = b"x" * len(ballast[::4096])
    code, out, _, rss_small = bench.run_measured([sys.executable, "-c", "print('hi'); raise SystemExit(3)"])
    assert (code, out) == (3, "hi\n")
    assert rss_small < 100  # neither the parent's memory nor the maximum over earlier children


def test_test_image_is_noisy_ihc(bench):
    img = bench.make_test_image(600, amount=0.1)
    assert img.shape == (600, 600, 3) and img.dtype == np.uint8
    saturated = np.mean((img == 0) | (img == 255))
    assert 0.08 < saturated < 0.15
    assert bench.make_test_image(64, amount=0.0).std() > 5  # real tissue, not a flat image


def test_training_tiles_are_crops(bench):
    tiles = bench.training_tiles(32, n=5)
    assert tiles.shape == (5, 32, 32, 3) and tiles.dtype == np.float32
    assert bench.training_tiles(1024, n=1).shape == (1, 1024, 1024, 3)  # larger than the image: mirrored
