#!/usr/bin/env python
"""Performance benchmark of the paper's network on this machine: `make bench` (or --quick).

One run measures, writes ``reports/benchmarks.json`` (atomically) and prints a table:

* peak: the faster of NumPy's BLAS and TensorFlow's float32 matmul, timed here and now;
* inference tiles/s of ``ihclib.model.build_paper_model`` per backend (Keras ``tf.function``,
  OpenVINO, ONNX Runtime, whichever are installed) and batch size, as GFLOP/s and % of peak,
  FLOPs per tile from ``ihclib.model.count_flops`` (2 x multiply-accumulates of the convolutions);
* the project's inference path against plain ``model.predict`` on the same tiles (the ratio);
* training tiles/s of a short ``model.fit`` with ``ihclib.train``'s compile settings and data
  pipeline; training FLOPs are counted as 3 x forward (forward + two backward products);
* ``ihclib denoise`` on a synthetic noisy 4096 x 4096 IHC image, run as a subprocess: seconds
  and peak resident memory;
* the settings that did not help (XLA, oneDNN off, op determinism, ...) with their numbers, so
  the choice is on record. oneDNN is a switch read when TensorFlow is imported, so its "off"
  numbers come from a child process.

Timings are the best of repeated calls (training: steps) after a warm-up call (graph tracing,
conversion), which is robust to other processes briefly taking a core; the 1-minute load
average is recorded with every measurement and before and after the run. ``--wait-idle LOAD``
first waits (up to 20 minutes) for the 1-minute load to drop below LOAD.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_OUT = ROOT / "reports" / "benchmarks.json"
TRAIN_FLOP_FACTOR = 3  # forward + gradient w.r.t. activations + gradient w.r.t. weights


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run (FULL for `make bench`, QUICK for --quick and tests)."""

    name: str = "full"
    tile_size: int = 256
    batch_sizes: tuple[int, ...] = (1, 4, 8, 16)
    main_batch: int = 8  # batch of the comparisons (predict ratio, oneDNN off, XLA)
    min_time: float = 1.5  # seconds of timed calls per measurement (after the warm-up call)
    min_calls: int = 3
    matmul_n: int = 2048
    predict_tiles: int = 32
    train_batch: int = 8
    train_steps: int = 4  # timed steps (per variant, taking turns) after train_warmup steps
    train_warmup: int = 1  # the first step traces the graph and creates the optimizer's slots
    denoise_size: int = 4096
    denoise_batch: int = 8
    denoise_overlap: int = 32  # the CLI's default
    backends: tuple[str, ...] = ("keras", "openvino", "onnxruntime")  # those installed are run
    variant_backends: tuple[str, ...] = ("keras+xla", "openvino-1stream", "openvino-2streams")
    variants: bool = True  # XLA, oneDNN off, OpenVINO streams, op determinism: the alternatives


FULL = Config()
QUICK = Config(name="quick", tile_size=64, batch_sizes=(1, 2), main_batch=2, min_time=0.05, min_calls=1,
               matmul_n=256, predict_tiles=4, train_batch=2, train_steps=1, train_warmup=1,
               denoise_size=256, denoise_batch=2, backends=("keras", "openvino"), variants=False)


# ---------------------------------------------------------------- helpers


def load_average() -> list[float]:
    """1, 5 and 15-minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def wait_for_idle(max_load: float, timeout_s: float = 1200, poll_s: float = 60, log=print) -> bool:
    """Wait until the 1-minute load average is below ``max_load``; False if it never was."""
    deadline = time.monotonic() + timeout_s
    while True:
        load = load_average()
        if not load or load[0] < max_load:
            return True
        if time.monotonic() >= deadline:
            return False
        log(f"waiting for an idle machine: load {load[0]} >= {max_load}")
        time.sleep(poll_s)


def time_calls(fn: Callable[[], Any], tiles_per_call: int, min_time: float, min_calls: int = 3,
               warmup: int = 1) -> dict:
    """Call ``fn`` ``warmup`` times untimed, then until ``min_time`` s and ``min_calls`` calls passed.

    Returns tiles/s from the fastest call (``tiles_per_s``) and from the total (``mean_tiles_per_s``).
    """
    for _ in range(warmup):
        fn()
    times: list[float] = []
    start = time.perf_counter()
    while len(times) < min_calls or time.perf_counter() - start < min_time:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return {"tiles_per_s": tiles_per_call / min(times), "mean_tiles_per_s": tiles_per_call * len(times) / sum(times),
            "calls": len(times)}


def rates(tiles_per_s: float, flops_per_tile: int, peak_gflops: float, factor: int = 1) -> dict:
    """tiles/s -> GFLOP/s and % of peak."""
    gflops = tiles_per_s * factor * flops_per_tile / 1e9
    return {"tiles_per_s": round(tiles_per_s, 3), "gflops": round(gflops, 2),
            "pct_peak": round(100 * gflops / peak_gflops, 1) if peak_gflops else None}


# ---------------------------------------------------------------- peak


def measure_peak(n: int = 2048, min_time: float = 1.0) -> dict:
    """float32 matmul GFLOP/s of NumPy's BLAS and of TensorFlow, and the faster as the peak."""
    import tensorflow as tf

    a = np.random.default_rng(0).random((n, n), dtype=np.float32)
    flops = 2 * n**3
    numpy_rate = time_calls(lambda: a @ a, 1, min_time, 3)["tiles_per_s"] * flops / 1e9
    ta = tf.constant(a)
    matmul = tf.function(lambda: tf.matmul(ta, ta))
    tf_rate = time_calls(lambda: matmul().numpy(), 1, min_time, 3)["tiles_per_s"] * flops / 1e9
    peak, source = max((numpy_rate, "numpy"), (tf_rate, "tensorflow"))
    return {"n": n, "numpy_gflops": round(numpy_rate, 1), "tensorflow_gflops": round(tf_rate, 1),
            "peak_gflops": round(peak, 1), "peak_source": source}


# ---------------------------------------------------------------- inference


def _factories() -> dict[str, Callable]:
    """Backend name -> (model, tile_size, batch_size) -> predictor, including the variants."""
    from ihclib import backends

    return {
        "keras": lambda m, t, b: backends.predictor(m, t, b, "keras"),
        "keras+xla": lambda m, t, b: backends.predictor(m, t, b, "keras", jit_compile=True),
        "openvino": lambda m, t, b: backends.predictor(m, t, b, "openvino"),
        "openvino-1stream": lambda m, t, b: backends.openvino_predictor(m, t, b, streams=1),
        "openvino-2streams": lambda m, t, b: backends.openvino_predictor(m, t, b, streams=2),
        "onnxruntime": lambda m, t, b: backends.predictor(m, t, b, "onnxruntime"),
    }


def installed(backends: tuple[str, ...]) -> list[str]:
    """The names in ``backends`` whose packages are installed."""
    from ihclib.backends import is_available

    return [b for b in backends if is_available(b.split("+")[0].split("-")[0])]


def bench_inference(model, tile_size: int, batch_sizes: tuple[int, ...], backends: list[str], flops_per_tile: int,
                    peak_gflops: float, min_time: float, min_calls: int = 3) -> list[dict]:
    """tiles/s of each backend x batch size on random tiles (one row each).

    ``setup_s`` is the first call: tracing for Keras, conversion + compilation for the others.
    """
    factories = _factories()
    rows = []
    rng = np.random.default_rng(0)
    for backend in backends:
        for batch in batch_sizes:
            tiles = rng.random((batch, tile_size, tile_size, 3), dtype=np.float32)
            start = time.perf_counter()
            predict = factories[backend](model, tile_size, batch)
            predict(tiles)
            setup = time.perf_counter() - start
            t = time_calls(lambda: predict(tiles), batch, min_time, min_calls, warmup=0)
            rows.append({"backend": backend, "batch": batch, **rates(t["tiles_per_s"], flops_per_tile, peak_gflops),
                         "mean_tiles_per_s": round(t["mean_tiles_per_s"], 3), "setup_s": round(setup, 2),
                         "load_1min": load_average()[:1]})
    return rows


def bench_predict_ratio(model, tile_size: int, n_tiles: int, batch_size: int, backends: list[str],
                        rounds: int = 3) -> dict:
    """tiles/s on the same ``n_tiles`` tiles: ``model.predict`` against the project's path per
    backend (``ihclib.backends.predictor``, what ``ihclib.infer.denoise`` calls), and the ratios.

    After one warm-up pass each, the methods take turns for ``rounds`` rounds (best pass counts),
    so a busier moment of a shared machine does not favour one of them.
    """
    from ihclib.backends import predictor

    tiles = np.random.default_rng(1).random((n_tiles, tile_size, tile_size, 3), dtype=np.float32)

    def through(predict):
        def run_all():
            for i in range(0, n_tiles, batch_size):
                predict(tiles[i : i + batch_size])
        return run_all

    methods = {"predict": lambda: model.predict(tiles, batch_size=batch_size, verbose=0)}
    methods.update({b: through(predictor(model, tile_size, batch_size, b)) for b in backends})
    best = {}
    for name, fn in methods.items():
        fn()  # warm-up: tracing, conversion
        best[name] = float("inf")
    for _ in range(rounds):
        for name, fn in methods.items():
            start = time.perf_counter()
            fn()
            best[name] = min(best[name], time.perf_counter() - start)
    out = {"tiles": n_tiles, "batch": batch_size, "rounds": rounds,
           "predict_tiles_per_s": round(n_tiles / best["predict"], 3)}
    for b in backends:
        out[f"{b}_tiles_per_s"] = round(n_tiles / best[b], 3)
        out[f"ratio_{b}_vs_predict"] = round(best["predict"] / best[b], 2)
    return out


def check_agreement(model, tile_size: int, backends: list[str]) -> dict:
    """Largest absolute difference of each backend from Keras on two random tiles."""
    from ihclib.backends import predictor

    tiles = np.random.default_rng(2).random((2, tile_size, tile_size, 3), dtype=np.float32)
    ref = predictor(model, tile_size, 2, "keras")(tiles)
    return {b: float(np.abs(predictor(model, tile_size, 2, b)(tiles) - ref).max()) for b in backends if b != "keras"}


# ---------------------------------------------------------------- training


def training_tiles(tile_size: int, n: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` random crops of the embedded IHC image (mirrored out if the tile is larger)."""
    from ihclib.data import default_image

    img = default_image()
    if min(img.shape[:2]) < 2 * tile_size:
        reps = -(-2 * tile_size // min(img.shape[:2]))
        img = np.pad(img, ((0, img.shape[0] * (reps - 1)), (0, img.shape[1] * (reps - 1)), (0, 0)), mode="symmetric")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, img.shape[0] - tile_size + 1, n)
    cols = rng.integers(0, img.shape[1] - tile_size + 1, n)
    return np.stack([img[r : r + tile_size, c : c + tile_size] for r, c in zip(rows, cols)]).astype(np.float32)


def bench_training(tile_size: int, batch_size: int, steps: int, warmup: int, flops_per_tile: int,
                   peak_gflops: float, jit_compile: tuple[bool, ...] = (False,), determinism: bool = False,
                   learning_rate: float = 1e-3) -> list[dict]:
    """Training tiles/s of the paper's network with ``ihclib.train``'s compile settings (Adam, MSE,
    "accuracy"), one row per ``jit_compile`` (XLA) setting.

    Each variant is its own compiled model, stepped with ``train_on_batch`` (the train step that
    ``model.fit`` runs) on batches from ``ihclib.train.make_train_pipeline`` (noise made on the
    fly, prefetched, as in training; :func:`bench_pipeline` shows it alone is far faster). After
    ``warmup`` steps each (tracing, optimizer slots), the variants take turns, one step at a
    time, so a slower period of a shared machine hits all of them alike.
    ``determinism``: TF op determinism, as ``ihclib.train.train`` sets it (process-wide: it
    stays on once set). On a GPU the mixed_float16 policy is used.
    """
    import keras
    import tensorflow as tf

    from ihclib.model import build_paper_model
    from ihclib.train import make_train_pipeline

    if determinism:
        tf.config.experimental.enable_op_determinism()
    gpu = bool(tf.config.list_physical_devices("GPU"))
    keras.mixed_precision.set_global_policy("mixed_float16" if gpu else "float32")
    batches = iter(make_train_pipeline(training_tiles(tile_size, max(16, batch_size)), batch_size, seed=0,
                                       amount_range=(0.0, 0.3)))
    models, warm = [], []
    try:
        for jit in jit_compile:
            keras.utils.set_random_seed(0)
            model = build_paper_model(None)
            model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["accuracy"],
                          jit_compile=jit)
            start = time.perf_counter()
            for _ in range(warmup):
                model.train_on_batch(*next(batches))
            warm.append(time.perf_counter() - start)
            models.append(model)
        step_s: list[list[float]] = [[] for _ in models]
        for _ in range(steps):
            for model, times in zip(models, step_s):
                noisy, clean = next(batches)
                start = time.perf_counter()
                model.train_on_batch(noisy, clean)
                times.append(time.perf_counter() - start)
    finally:
        keras.mixed_precision.set_global_policy("float32")
    rows = []
    for jit, w, times in zip(jit_compile, warm, step_s):
        variant = ("XLA" if jit else "default") + (" + op determinism" if determinism else "")
        rows.append({"variant": variant, "batch": batch_size, "steps": steps, "seconds": round(sum(times), 2),
                     "warmup_s": round(w, 2), "mixed_precision": gpu,
                     **rates(batch_size / min(times), flops_per_tile, peak_gflops, TRAIN_FLOP_FACTOR),
                     "mean_tiles_per_s": round(steps * batch_size / sum(times), 3), "load_1min": load_average()[:1]})
    return rows


def bench_pipeline(tile_size: int, batch_size: int, batches: int = 5) -> dict:
    """tiles/s of ``make_train_pipeline`` alone (noise + augmentation), to show it is not the
    bottleneck of training."""
    from ihclib.train import make_train_pipeline

    ds = iter(make_train_pipeline(training_tiles(tile_size, max(16, batch_size)), batch_size, 0, (0.0, 0.3)))
    next(ds)
    start = time.perf_counter()
    for _ in range(batches):
        next(ds)
    return {"tiles_per_s": round(batches * batch_size / (time.perf_counter() - start), 1)}


# ---------------------------------------------------------------- ihclib denoise


def make_test_image(size: int, amount: float = 0.1, seed: int = 0) -> np.ndarray:
    """uint8 (size, size, 3): the embedded IHC image mirrored out to ``size``, s&p noise ``amount``."""
    from ihclib.data import default_image
    from ihclib.images import from_float
    from ihclib.noise import salt_and_pepper

    img = default_image()
    reps = -(-size // min(img.shape[:2]))
    big = np.pad(img, ((0, img.shape[0] * (reps - 1)), (0, img.shape[1] * (reps - 1)), (0, 0)), mode="symmetric")
    return from_float(salt_and_pepper(big[:size, :size], amount, np.random.default_rng(seed)), np.uint8)


# A child's peak RSS includes its parent's resident memory at the fork: Linux records the
# high-water mark of the address space that exec() replaces, and with vfork that is the parent's
# (here gigabytes of TensorFlow and models). So the command is started by a small launcher
# process, whose fork is what the command inherits, and which reports the command's own peak.
_LAUNCHER = """import os, sys
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[2], sys.argv[2:])
_, status, usage = os.wait4(pid, 0)
with open(sys.argv[1], "w") as f:
    f.write(str(usage.ru_maxrss))
sys.exit(os.waitstatus_to_exitcode(status))
"""


def run_measured(cmd: list[str], env: dict | None = None) -> tuple[int, str, float, float]:
    """Run ``cmd``; (exit status, output, wall seconds, peak RSS of the command in MiB)."""
    with tempfile.TemporaryDirectory() as tmp:
        rss_file = Path(tmp) / "maxrss"
        start = time.perf_counter()
        proc = subprocess.run([sys.executable, "-c", _LAUNCHER, str(rss_file), *cmd], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        wall = time.perf_counter() - start
        maxrss = int(rss_file.read_text()) if rss_file.exists() else 0
    rss_mib = maxrss / 1024 if sys.platform != "darwin" else maxrss / 2**20  # KiB on Linux, bytes on macOS
    return proc.returncode, proc.stdout, wall, rss_mib


def bench_denoise_cli(model_path: str | Path, size: int, workdir: str | Path, backend: str = "keras",
                      batch_size: int = 8, tile_size: int = 256, overlap: int = 32) -> dict:
    """``ihclib denoise`` on a synthetic ``size`` x ``size`` noisy PNG, as a subprocess.

    ``seconds`` is what the command reports for the image (load, denoise, save); ``wall_s`` adds
    start-up (imports, model loading, conversion for OpenVINO / ONNX Runtime).
    """
    from ihclib.images import save_image
    from ihclib.infer import tile_starts

    workdir = Path(workdir)
    src = workdir / f"noisy_{size}.png"
    if not src.exists():
        save_image(src, make_test_image(size))
    dst = workdir / f"denoised_{size}_{backend}.png"
    cmd = [sys.executable, "-m", "ihclib", "denoise", str(src), "-o", str(dst), "--overwrite",
           "--model", str(model_path), "--batch-size", str(batch_size), "--tile-size", str(tile_size),
           "--overlap", str(overlap)]
    env = {**os.environ, "IHCLIB_BACKEND": backend}
    code, output, wall, rss = run_measured(cmd, env)
    if code != 0:
        raise RuntimeError(f"ihclib denoise failed ({code}):\n{output[-2000:]}")
    found = re.search(r"\(\d+x\d+, \w+, ([\d.]+) s\)", output)
    n_tiles = len(tile_starts(size, tile_size, overlap)) ** 2
    seconds = float(found.group(1)) if found else None
    return {"backend": backend, "size": size, "tiles": n_tiles, "seconds": seconds, "wall_s": round(wall, 2),
            "peak_rss_mib": round(rss, 1),
            "tiles_per_s": round(n_tiles / seconds, 3) if seconds else None}


# ---------------------------------------------------------------- child process (oneDNN off)


def child_measurements(cfg: Config, peak_gflops: float) -> dict:
    """What the parent compares in a process with other import-time settings."""
    from ihclib.model import build_paper_model, count_flops

    model = build_paper_model(None)
    flops = count_flops(model, cfg.tile_size)
    out = {"inference": bench_inference(model, cfg.tile_size, (cfg.main_batch,), ["keras"], flops, peak_gflops,
                                        cfg.min_time, cfg.min_calls)}
    out["training"] = bench_training(cfg.tile_size, cfg.train_batch, cfg.train_steps, cfg.train_warmup, flops,
                                     peak_gflops)[0]
    return out


def run_child(cfg: Config, peak_gflops: float, env_update: dict) -> dict:
    """:func:`child_measurements` in a child process with ``env_update`` in its environment."""
    env = {**os.environ, **env_update}
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", json.dumps(asdict(cfg)),
           "--peak", str(peak_gflops)]
    code, output, _, _ = run_measured(cmd, env)
    lines = [ln for ln in output.splitlines() if ln.startswith("{")]
    if code != 0 or not lines:
        raise RuntimeError(f"benchmark child failed ({code}):\n{output[-2000:]}")
    return json.loads(lines[-1])


# ---------------------------------------------------------------- the run


def run_benchmark(cfg: Config, out_path: Path | None = DEFAULT_OUT, log: Callable[[str], None] = print) -> dict:
    """Every measurement of ``cfg``; the result dict is also written to ``out_path`` (if given)."""
    import tensorflow as tf

    from ihclib import reports
    from ihclib.model import MODELS, build_paper_model, count_flops

    t0 = time.perf_counter()
    result: dict[str, Any] = {
        "config": asdict(cfg), "machine": reports.machine_info(), "versions": reports.package_versions(),
        "commit": reports.git_commit(ROOT), "load_average_before": load_average(),
        "settings": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                     "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default",
                     "tf_inter_op_threads": tf.config.threading.get_inter_op_parallelism_threads() or "default"},
        "notes": {"flops": "FLOPs per tile = ihclib.model.count_flops (2 x MACs of the convolutions); "
                           f"training = {TRAIN_FLOP_FACTOR} x forward",
                  "timing": "tiles/s of the fastest timed call (inference) or step (training) after warm-up; "
                            "mean_tiles_per_s over all timed calls; load_1min = load average when measured"},
    }
    log(f"benchmark ({cfg.name}) on {result['machine']['cpu']}, {result['machine']['cores']} cores, "
        f"load {result['load_average_before']}")

    peak = measure_peak(cfg.matmul_n, 4 * cfg.min_time)
    result["peak"] = peak
    log(f"peak: numpy {peak['numpy_gflops']} GFLOP/s, tensorflow {peak['tensorflow_gflops']} GFLOP/s")
    peak_gflops = peak["peak_gflops"]

    model = build_paper_model(None)
    flops = count_flops(model, cfg.tile_size)
    result["model"] = {"name": "paper_unet", "tile_size": cfg.tile_size, "flops_per_tile": flops,
                       "params": int(model.count_params())}
    backends = installed(cfg.backends)
    result["backends"] = backends

    rows = bench_inference(model, cfg.tile_size, cfg.batch_sizes, backends, flops, peak_gflops, cfg.min_time,
                           cfg.min_calls)
    result["inference"] = rows
    log(f"inference: {len(rows)} measurements done ({time.perf_counter() - t0:.0f} s)")
    result["agreement_max_abs_diff_vs_keras"] = check_agreement(model, cfg.tile_size, backends)
    result["predict_ratio"] = bench_predict_ratio(model, cfg.tile_size, cfg.predict_tiles, cfg.main_batch, backends,
                                                  max(1, cfg.min_calls))

    # ihclib denoise on the big image: Keras and the fastest other backend at the CLI's batch size
    others = [r for r in rows if r["batch"] == cfg.denoise_batch and r["backend"] != "keras"]
    cli_backends = ["keras"] + ([max(others, key=lambda r: r["tiles_per_s"])["backend"]] if others else [])
    denoise_rows = []
    with tempfile.TemporaryDirectory(prefix="ihclib-bench-") as tmp:
        from ihclib.infer import bundled_model_path
        from ihclib.train import save_model

        bundled = bundled_model_path()
        if bundled.is_file():
            side = bundled.with_suffix(".json")
            arch = json.loads(side.read_text()).get("architecture", "?") if side.is_file() else "?"
            model_path, which = bundled, f"bundled model ihclib/models/default.keras ({arch})"
        else:
            arch, model_path = "paper_unet", Path(tmp) / "paper_unet.keras"
            which = "paper_unet, random weights (no bundled model)"
            save_model(model, model_path, {"architecture": "paper_unet"})
        cli_flops = count_flops(arch, cfg.tile_size) if arch in MODELS else None
        for backend in cli_backends:
            run = bench_denoise_cli(model_path, cfg.denoise_size, tmp, backend, cfg.denoise_batch, cfg.tile_size,
                                    cfg.denoise_overlap)
            if cli_flops and run["tiles_per_s"]:
                run.update({k: v for k, v in rates(run["tiles_per_s"], cli_flops, peak_gflops).items()
                            if k != "tiles_per_s"})
            denoise_rows.append(run)
            log(f"ihclib denoise {cfg.denoise_size}px ({backend}): {denoise_rows[-1]['seconds']} s")
    result["denoise_cli"] = {"model": which, "flops_per_tile": cli_flops, "image": f"{cfg.denoise_size}x{cfg.denoise_size} uint8 PNG, embedded IHC "
                             "image mirrored out, s&p 0.1", "runs": denoise_rows}

    train = dict(tile_size=cfg.tile_size, batch_size=cfg.train_batch, steps=cfg.train_steps,
                 warmup=cfg.train_warmup, flops_per_tile=flops, peak_gflops=peak_gflops)
    train_rows = bench_training(**train, jit_compile=(False, True) if cfg.variants else (False,))
    log(f"training: {train_rows[0]['tiles_per_s']} tiles/s ({time.perf_counter() - t0:.0f} s)")
    result["pipeline"] = bench_pipeline(cfg.tile_size, cfg.train_batch)

    variants: dict[str, Any] = {}
    if cfg.variants:
        others = installed(cfg.variant_backends)
        variants["inference"] = bench_inference(model, cfg.tile_size, (cfg.main_batch,), others, flops,
                                                peak_gflops, cfg.min_time, cfg.min_calls)
        log(f"variants: inference done ({time.perf_counter() - t0:.0f} s)")
        variants["onednn_off"] = run_child(cfg, peak_gflops, {"TF_ENABLE_ONEDNN_OPTS": "0"})
        log(f"variants: oneDNN off done ({time.perf_counter() - t0:.0f} s)")
        # last: op determinism (ihclib.train sets it) cannot be switched off again in this process
        train_rows += bench_training(**train, jit_compile=(False, True), determinism=True)
    result["training"] = train_rows
    result["variants"] = variants
    result["load_average_after"] = load_average()
    result["total_s"] = round(time.perf_counter() - t0, 1)
    if out_path is not None:
        reports.write_json(out_path, result)
    return result


def format_report(result: dict) -> str:
    """The printed table: one line per measurement."""
    peak = result["peak"]
    lines = [f"machine: {result['machine']['cpu']}, {result['machine']['cores']} cores; load before/after "
             f"{result['load_average_before']} / {result.get('load_average_after')}",
             f"peak float32 matmul: numpy {peak['numpy_gflops']}, tensorflow {peak['tensorflow_gflops']} GFLOP/s "
             f"-> peak {peak['peak_gflops']} ({peak['peak_source']})",
             f"paper_unet at {result['model']['tile_size']}px: {result['model']['flops_per_tile'] / 1e9:.2f} GFLOP "
             "per tile forward (training = 3x)", "",
             f"{'what':<34}{'batch':>6}{'tiles/s':>10}{'GFLOP/s':>10}{'% peak':>8}"]

    def row(what, r):
        lines.append(f"{what:<34}{r['batch']:>6}{r['tiles_per_s']:>10.2f}{r['gflops']:>10.1f}{r['pct_peak']:>8.1f}")

    for r in result["inference"]:
        row(f"inference {r['backend']}", r)
    for r in result["variants"].get("inference", []):
        row(f"inference {r['backend']}", r)
    off = result["variants"].get("onednn_off")
    if off:
        for r in off["inference"]:
            row("inference keras, oneDNN off", r)
    for r in result["training"]:
        row(f"training ({r['variant']})", r)
    if off:
        row("training (default, oneDNN off)", off["training"])
    lines.append(f"training data pipeline alone: {result['pipeline']['tiles_per_s']} tiles/s")
    pr = result["predict_ratio"]
    lines.append("")
    lines.append(f"model.predict on {pr['tiles']} tiles (batch {pr['batch']}): {pr['predict_tiles_per_s']} tiles/s; "
                 + ", ".join(f"{b}: x{pr[f'ratio_{b}_vs_predict']}" for b in result["backends"]))
    lines.append("max |difference| from keras: " + ", ".join(
        f"{b} {d:.1e}" for b, d in result["agreement_max_abs_diff_vs_keras"].items()))
    den = result["denoise_cli"]
    for r in den["runs"]:
        lines.append(f"ihclib denoise {r['size']}x{r['size']} ({r['tiles']} tiles, {r['backend']}): {r['seconds']} s "
                     f"(wall {r['wall_s']} s with start-up), peak RSS {r['peak_rss_mib']:.0f} MiB"
                     + (f", {r['gflops']} GFLOP/s = {r['pct_peak']}% of peak" if "gflops" in r else ""))
    lines.append(f"  model: {den['model']}")
    lines.append(f"total {result['total_s']} s")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds, not minutes): checks the benchmark runs")
    p.add_argument("--out", default=None, help=f"JSON report (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                               "--quick writes none unless given)")
    p.add_argument("--wait-idle", type=float, default=None, metavar="LOAD",
                   help="first wait (up to 20 min) until the 1-minute load average is below LOAD")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--peak", type=float, default=0.0, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    # read when TensorFlow is first imported (all TF imports here are inside functions): the CPU
    # wheel's oneDNN kernels are JIT-compiled for the CPU found at run time (AVX2/FMA), unlike its
    # Eigen kernels; the "0" numbers come from a child process
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    if args.child:
        cfg = Config(**{k: tuple(v) if isinstance(v, list) else v for k, v in json.loads(args.child).items()})
        print(json.dumps(child_measurements(cfg, args.peak)))
        return 0
    cfg = QUICK if args.quick else FULL
    out = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)
    if args.wait_idle is not None and not wait_for_idle(args.wait_idle):
        print(f"machine still busy (load {load_average()}); measuring anyway", file=sys.stderr)
    result = run_benchmark(cfg, out)
    print()
    print(format_report(result))
    if out is not None:
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
