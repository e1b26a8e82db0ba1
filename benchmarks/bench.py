#!/usr/bin/env python
"""Performance of ``ihclib denoise`` and of training against this machine's peak: `make bench`.

One run measures, writes ``reports/benchmarks.json`` (atomically), prints a table and rewrites
the README's performance table from the JSON (between ``<!-- bench:start -->`` and
``<!-- bench:end -->``; ``--readme-only`` does just that from an existing JSON):

* the machine: CPU model, ISA flags (AVX2, AVX-512, AVX512_BF16, AMX), cores, clock, load;
* the peak: the theoretical float32 peak of the ISA (cores x FLOP/cycle x clock, see
  :data:`FLOP_PER_CYCLE`) and the measured one, the maximum over several sizes and repeats of
  NumPy's and TensorFlow's float32 matrix product;
* ``ihclib denoise`` with the bundled model on a noisy 4096 x 4096 image (a subprocess: MP/s,
  share of peak end to end, peak memory), and the switching median on the same image. Each
  command timing runs with an XLA cache of its own (:mod:`ihclib.xla_cache`): the first run
  fills it (``seconds_cold``: a user's first run), ``Config.cli_runs`` more start from it
  (``seconds``: the best of them, every later run, the figure the targets use; all are kept in
  ``seconds_runs``), as the switching median is the best of several processes;
* the same command with untrained models of the bundled architecture at other widths (FLOPs
  per pixel): how MP/s and the share of peak trade against each other, and whether any width
  meets issue 13's 2 MP/s, 4x the switching median's time and 60 % at once;
* in-process: the tile pipeline with and without threads, hard-gate skipping on a clean image,
  the fused classical layers and a bfloat16 trunk (:func:`ihclib.infer.bfloat16_copy`): speed and PSNR change on the
  held-out sources of ``data/splits.json``;
* inference of the paper's network per batch size, and its training four ways: as ``ihclib
  train`` runs it (op determinism, two intra-op threads and one inter-op thread,
  :mod:`ihclib.determinism`), with one thread of each (the setting before), with TensorFlow's
  default threads and no op determinism, and with op determinism alone; beside the data pipeline alone.

FLOPs are 2 x multiply-accumulates of the convolutions (``ihclib.model.count_flops``); training
is counted as 3 x forward. Timings are the best of repeated calls after a warm-up; the 1-minute
load average is recorded with each. Any share of a peak above 100 % means the accounting is
wrong (or the clock in cpuinfo is not the one the CPU runs at), so the run exits 1 naming it
instead of printing it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import re
import shutil
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
README = ROOT / "README.md"
TRAIN_FLOP_FACTOR = 3  # forward + gradient w.r.t. activations + gradient w.r.t. weights
MARK_START, MARK_END = "<!-- bench:start -->", "<!-- bench:end -->"


@dataclass(frozen=True)
class Config:
    """Sizes of one benchmark run (FULL for `make bench`, QUICK for --quick and tests)."""

    name: str = "full"
    gemm_sizes: tuple[int, ...] = (1024, 2048, 3072, 4096)
    gemm_repeats: int = 3
    tile_size: int = 256
    batch_sizes: tuple[int, ...] = (1, 8, 16)  # paper_unet inference
    main_batch: int = 8
    min_time: float = 2.0  # seconds of timed calls per measurement (after the warm-up call)
    min_calls: int = 3
    inference_rounds: int = 3  # paper_unet inference: rounds over its batch sizes, the best call of each kept
    # training as `ihclib train` runs it: fresh processes spread over the training section, the
    # best kept (one run of 4 steps took 8.99 tiles/s, and 11.2-12.9 in 8 processes by hand after)
    training_runs: int = 3
    train_batch: int = 8
    train_steps: int = 4
    train_warmup: int = 1  # the first step traces the graph and creates the optimizer's slots
    profile_steps: int = 2  # steps under TensorFlow's profiler, per training variant
    denoise_size: int = 4096
    denoise_batch: int = 8
    denoise_overlap: int = 32  # the CLI's default
    pipeline_size: int = 2048  # in-process: threads on/off, gate skipping on a clean image
    psnr_tile: int = 256  # bf16 check: centre tile of each held-out image
    psnr_amounts: tuple[float, ...] = (0.1, 0.3)
    held_out: bool = True  # False: the embedded image instead of data/'s held-out sources
    backends: tuple[str, ...] = ("keras", "openvino")  # those installed are run
    # `ihclib denoise` with untrained copies of the bundled architecture at these widths
    frontier_widths: tuple[int, ...] = (8, 16, 24, 32, 40, 48)  # 40: the profile "wide"
    # and of crosschannel_s2d_unet (its U-Net at half resolution; 32: the profile "s2d")
    s2d_widths: tuple[int, ...] = (32, 48, 64)
    # and of crosschannel_s4d_cnn (a residual CNN at quarter resolution; multiples of 16, as
    # oneDNN's AVX-512 blocks: width 120 (the profile "s4d") took 4.2-4.6 s, 112 3.5-4.2 s)
    s4d_widths: tuple[int, ...] = (96, 112, 128)
    # and of crosschannel_s4d_unet (crosschannel_unet's full-resolution level over such a CNN;
    # 96: the profile "s4du")
    s4du_widths: tuple[int, ...] = (80, 96, 112)
    # `ihclib denoise` on a folder of this many copies of the test image, with and without the
    # next file read and the last written beside the model; this many runs of each, the best kept
    folder_files: int = 3
    folder_runs: int = 2
    # runs of each timed `ihclib denoise` after the first (which fills the XLA cache), the best
    # kept: one run of the bundled model took 2.6 to 4.1 s in a row on the Zen 5 (calls of one
    # tile 121-230 ms from run to run), and the switching median it is held to is the best of 5
    cli_runs: int = 3


FULL = Config()
QUICK = Config(name="quick", gemm_sizes=(256, 512), gemm_repeats=2, tile_size=64, batch_sizes=(1, 2), main_batch=2,
               min_time=0.05, min_calls=1, train_batch=2, train_steps=1, profile_steps=1, denoise_size=256, denoise_batch=2,
               pipeline_size=256, psnr_tile=64, held_out=False,
               # OpenVINO's small calls can outrun a peak measured with matrices this small
               backends=("keras",),
               frontier_widths=(4, 8), s2d_widths=(8,), s4d_widths=(8,), s4du_widths=(8,), folder_files=2, folder_runs=1, cli_runs=1,
               inference_rounds=1, training_runs=1)


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


def rates(tiles_per_s: float, flops_per_tile: float, peak_gflops: float, factor: int = 1) -> dict:
    """tiles/s -> GFLOP/s and % of peak."""
    gflops = tiles_per_s * factor * flops_per_tile / 1e9
    return {"tiles_per_s": round(tiles_per_s, 3), "gflops": round(gflops, 2),
            "pct_peak": round(100 * gflops / peak_gflops, 1) if peak_gflops else None}


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """(fn(), seconds it took)."""
    start = time.perf_counter()
    value = fn()
    return value, time.perf_counter() - start


# ---------------------------------------------------------------- the machine and its peak

# float32 FLOP per cycle per core (2 per FMA lane x lanes x FMA units). cpuinfo lists ISA
# extensions, not how wide the units behind them are, so AMD Zen 4 (family 0x19), which runs
# AVX-512 on two 256-bit FMA units, is told apart by its family. Some Intel Xeon Bronze/Silver
# parts have one 512-bit FMA unit (32): there the theoretical peak below is twice too high.
FLOP_PER_CYCLE = {
    "avx512 (2 x 512-bit FMA: Intel Xeon Scalable, AMD Zen 5)": 64,
    "avx512 on 2 x 256-bit FMA (AMD Zen 4)": 32,
    "avx2+fma (2 x 256-bit FMA: Intel Haswell and later, AMD Zen 1-3)": 32,
    "avx (256-bit add + multiply, no FMA)": 16,
    "sse (128-bit add + multiply)": 8,
}
# issue 13: the bundled model's whole-image time at most this many times the switching median's
MEDIAN_FACTOR = 4
S2D = "crosschannel_s2d_unet"  # the other designs whose widths make bench times
S4D = "crosschannel_s4d_cnn"
S4DU = "crosschannel_s4d_unet"
# result key of each design's frontier when it is not the bundled model's ("width_frontier")
DESIGN_FRONTIERS = {"unet_frontier": "crosschannel_unet", "s2d_frontier": S2D, "s4d_frontier": S4D,
                    "s4du_frontier": S4DU}


def design_widths(cfg: Config, arch: str) -> tuple[int, ...]:
    """The widths :func:`bench_width_frontier` times for a design."""
    return {S2D: cfg.s2d_widths, S4D: cfg.s4d_widths, S4DU: cfg.s4du_widths}.get(arch, cfg.frontier_widths)
# AVX512_BF16's dot product does two bf16 products per float32 lane: twice the float32 rate
BF16_FACTOR = 2
ISA_FLAGS = ("sse4_2", "avx", "fma", "avx2", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16")


def cpu_info(cpuinfo: str | None = None) -> dict:
    """CPU model, vendor, family and model number, ISA flags, cores available to this process and
    clock (MHz). In a VM the model name can be as bare as "AMD EPYC" for a Zen 4 and a Zen 5 alike:
    the family (25: Zen 3/4, 26: Zen 5) tells them apart."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text()
        except OSError:
            cpuinfo = ""
    fields: dict[str, str] = {}
    mhz: list[float] = []
    for line in cpuinfo.splitlines():
        key, _, value = line.partition(":")
        key, value = key.strip(), value.strip()
        if key == "cpu MHz":
            mhz.append(float(value))
        fields.setdefault(key, value)
    flags = set(fields.get("flags", "").split())
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return {"model": fields.get("model name", "unknown"), "vendor": fields.get("vendor_id", ""),
            "family": int(fields.get("cpu family", "0") or 0), "model_number": int(fields.get("model", "0") or 0),
            "cores": cores,
            "mhz": max(mhz) if mhz else None, "flags": {f: f in flags for f in ISA_FLAGS}}


def flop_per_cycle(info: dict) -> tuple[str, int]:
    """The :data:`FLOP_PER_CYCLE` row for this CPU: (ISA description, float32 FLOP/cycle/core)."""
    flags = info["flags"]
    names = list(FLOP_PER_CYCLE)
    if flags.get("avx512f"):
        zen4 = info["vendor"] == "AuthenticAMD" and info["family"] == 0x19
        name = names[1] if zen4 else names[0]
    elif flags.get("avx2") and flags.get("fma"):
        name = names[2]
    elif flags.get("avx"):
        name = names[3]
    else:
        name = names[4]
    return name, FLOP_PER_CYCLE[name]


def theoretical_peak(info: dict) -> dict:
    """cores x FLOP/cycle x clock, float32 (and bf16 where AVX512_BF16 is there)."""
    isa, per_cycle = flop_per_cycle(info)
    max_mhz = max_clock_mhz()
    ghz = (max_mhz or info["mhz"] or 0) / 1000
    fp32 = info["cores"] * per_cycle * ghz
    return {"isa": isa, "flop_per_cycle_fp32": per_cycle, "ghz": round(ghz, 3), "cores": info["cores"],
            "fp32_gflops": round(fp32, 1),
            "bf16_gflops": round(BF16_FACTOR * fp32, 1) if info["flags"].get("avx512_bf16") else None,
            "clock_is_max": max_mhz is not None,
            "note": "clock = cpufreq's cpuinfo_max_freq where the kernel exposes it (a true peak: a "
                    "share above 100 % fails the run); else cpuinfo's 'cpu MHz', in a VM often the "
                    "base clock, which a boosting CPU exceeds: the figure is then a lower bound"}


def max_clock_mhz(path: str = "/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq") -> float | None:
    """The CPU's maximum (boost) clock in MHz from cpufreq, or None where it is not exposed (VMs)."""
    try:
        return float(Path(path).read_text().strip()) / 1000
    except (OSError, ValueError):
        return None


def measure_peak(sizes: tuple[int, ...], repeats: int, theoretical_gflops: float, bf16: bool = False,
                 clock_is_max: bool = True) -> dict:
    """float32 GEMM GFLOP/s of NumPy and TensorFlow per size (best of ``repeats`` after a warm-up);
    the peak is the maximum over all of them. ``bf16``: also TensorFlow's bfloat16 GEMM (oneDNN),
    whose maximum, if higher, is the peak that bf16 paths are measured against."""
    import tensorflow as tf

    rows = []
    for n in sizes:
        a = np.random.default_rng(n).random((n, n), dtype=np.float32)
        ta, tb = tf.constant(a), tf.constant(a, tf.bfloat16)
        libs = {"numpy": lambda: a @ a, "tensorflow": lambda: tf.matmul(ta, ta).numpy()}
        if bf16:
            libs["tensorflow-bf16"] = lambda: tf.matmul(tb, tb).numpy()
        for lib, fn in libs.items():
            t = time_calls(fn, 1, 0.0, repeats, warmup=1)
            rows.append({"lib": lib, "n": n, "gflops": round(t["tiles_per_s"] * 2 * n**3 / 1e9, 1),
                         "load_1min": load_average()[:1]})
    fp32 = [r for r in rows if r["lib"] != "tensorflow-bf16"]
    best = max(fp32, key=lambda r: r["gflops"])
    return {"gemm": rows, "peak_gflops": best["gflops"], "peak_source": f"{best['lib']} n={best['n']}",
            # a share of a true peak is checked (above 100 % = wrong accounting); a figure at the
            # listed (base) clock is a lower bound, so its share is recorded as the clock it implies
            **(({"pct_theoretical": round(100 * best["gflops"] / theoretical_gflops, 1)} if clock_is_max
                else {"x_listed_clock_figure": round(best["gflops"] / theoretical_gflops, 3)})
               if theoretical_gflops else {}),
            "bf16_peak_gflops": max([r["gflops"] for r in rows] if bf16 else [best["gflops"]])}


# ---------------------------------------------------------------- inference


def installed(backends: tuple[str, ...]) -> list[str]:
    """The names in ``backends`` whose packages are installed."""
    from ihclib.backends import is_available

    return [b for b in backends if is_available(b)]


def bench_inference(model, label: str, tile_size: int, batch_sizes: tuple[int, ...], backends: list[str],
                    flops_per_tile: int, peak_gflops: float, min_time: float, min_calls: int = 3,
                    rounds: int = 1) -> list[dict]:
    """tiles/s of each backend x batch size on random tiles with 10 % impulses (one row each);
    ``setup_s`` is the first call (tracing for Keras, conversion for OpenVINO).

    ``rounds``: each batch size is timed for ``min_time`` s in each of ``rounds`` rounds that
    take the batch sizes in turn, and its fastest call over all rounds counts (``round_gflops``:
    each round's), as the peak is the best over sizes and repeats spread over its run: on the
    Zen 5 the same calls ran at 343 and at 365-371 GFLOP/s minutes apart, in one process."""
    from ihclib.backends import predictor

    rows = []
    rng = np.random.default_rng(0)
    for backend in backends:
        ready = {}
        for batch in batch_sizes:
            tiles = rng.random((batch, tile_size, tile_size, 3), dtype=np.float32)
            tiles[tiles < 0.05], tiles[tiles > 0.95] = 0.0, 1.0
            predict, setup = timed(lambda: predictor(model, tile_size, batch, backend))
            setup += timed(lambda: predict(tiles))[1]
            ready[batch] = (predict, tiles, setup)
        timings: dict[int, list[dict]] = {batch: [] for batch in batch_sizes}
        for _ in range(max(1, rounds)):
            for batch, (predict, tiles, _) in ready.items():
                timings[batch].append(time_calls(lambda: predict(tiles), batch, min_time, min_calls, warmup=0))
        for batch, ts in timings.items():
            best = max(ts, key=lambda t: t["tiles_per_s"])
            rows.append({"model": label, "backend": backend, "batch": batch,
                         **rates(best["tiles_per_s"], flops_per_tile, peak_gflops),
                         "mp_per_s": round(best["tiles_per_s"] * tile_size**2 / 1e6, 3),
                         "mean_tiles_per_s": round(max(t["mean_tiles_per_s"] for t in ts), 3),
                         "round_gflops": [rates(t["tiles_per_s"], flops_per_tile, peak_gflops)["gflops"] for t in ts],
                         "setup_s": round(ready[batch][2], 2), "load_1min": load_average()[:1]})
    return rows


def peak_for(precision: str, peak: dict) -> float:
    """The measured peak a path in ``precision`` is compared with."""
    return peak["bf16_peak_gflops"] if precision == "bfloat16" else peak["peak_gflops"]


def held_out_tiles(cfg: Config) -> list[np.ndarray]:
    """Clean float32 tiles: the centre ``psnr_tile`` of every image of the sources that
    ``data/splits.json`` keeps out of training (validation and test), else the embedded image."""
    from ihclib.study.data import default_image, read_splits
    from ihclib.images import load_image, to_float

    splits = read_splits(ROOT / "data") if cfg.held_out else None
    sources = [s for part in ("val", "test") for s in (splits or {}).get(part, [])]
    paths = sorted(p for s in sources for p in (ROOT / "data" / s).iterdir()
                   if p.suffix.lower() in (".png", ".jpg", ".jpeg", ".tif", ".tiff"))
    images = [to_float(load_image(p).rgb) for p in paths] or [default_image()]
    t = cfg.psnr_tile
    tiles = []
    for img in images:
        r, c = max(0, (img.shape[0] - t) // 2), max(0, (img.shape[1] - t) // 2)
        tiles.append(np.ascontiguousarray(img[r : r + t, c : c + t], np.float32))
    return tiles


def bench_bf16(model, cfg: Config, flops_per_tile: int, peak: dict) -> dict:
    """The bundled model as ``ihclib denoise`` runs it against the study's float32 reference:
    the fused classical layers alone (``fused``: :func:`ihclib.infer.inference_copy`) and with a
    bfloat16 trunk (``bfloat16``: :func:`ihclib.infer.bfloat16_copy`); tiles/s (the variants take
    turns, best of rounds) and mean PSNR on held-out tiles."""
    from ihclib.backends import predictor
    from ihclib.infer import _cached_inference_copy, denoise
    from ihclib.study.metrics import psnr
    from ihclib.noise import salt_and_pepper

    variants = {"float32": model, "fused": _cached_inference_copy(model, bfloat16=False),
                "bfloat16": _cached_inference_copy(model, bfloat16=True)}
    t, b = cfg.tile_size, cfg.main_batch
    tiles = np.random.default_rng(3).random((b, t, t, 3), dtype=np.float32)
    tiles[tiles < 0.05], tiles[tiles > 0.95] = 0.0, 1.0
    predictors = {name: predictor(m, t, b, "keras") for name, m in variants.items()}
    for p in predictors.values():  # first call: tracing (and XLA compiling the fused layers)
        p(tiles)
    best = {name: float("inf") for name in predictors}
    for _ in range(max(2, cfg.min_calls)):
        for name, p in predictors.items():
            best[name] = min(best[name], timed(lambda: p(tiles))[1])
    clean = held_out_tiles(cfg)
    scores: dict[str, list[float]] = {name: [] for name in variants}
    for i, tile in enumerate(clean):
        for amount in cfg.psnr_amounts:
            noisy = salt_and_pepper(tile, amount, np.random.default_rng(i))
            for name, m in variants.items():  # the copies as given: float32 adds no further copy
                scores[name].append(psnr(tile, np.clip(denoise(m, noisy, tile_size=cfg.psnr_tile, overlap=0,
                                                               multiple=4, progress=False, precision="float32"), 0, 1)))
    mean = {name: float(np.mean(v)) for name, v in scores.items()}
    # bf16 against the best measured GEMM of either precision (it mixes bf16 and float32 layers)
    speed = {name: rates(b / s, flops_per_tile, peak_for("bfloat16" if name == "bfloat16" else "float32", peak))
             for name, s in best.items()}
    return {"tile": t, "batch": b, "speed": speed, "speedup": round(best["float32"] / best["bfloat16"], 3),
            "fused_speedup": round(best["float32"] / best["fused"], 3),
            "bf16_over_fused": round(best["fused"] / best["bfloat16"], 3),
            "psnr_float32": round(mean["float32"], 3), "psnr_fused": round(mean["fused"], 3),
            "psnr_bfloat16": round(mean["bfloat16"], 3),
            "psnr_delta_db": round(mean["bfloat16"] - mean["float32"], 4),
            "fused_psnr_delta_db": round(mean["fused"] - mean["float32"], 4), "psnr_tiles": len(clean),
            "psnr_amounts": list(cfg.psnr_amounts), "load_1min": load_average()[:1]}


# ---------------------------------------------------------------- training


def training_tiles(tile_size: int, n: int = 16, seed: int = 0) -> np.ndarray:
    """``n`` random crops of the embedded IHC image (mirrored out if the tile is larger)."""
    from ihclib.study.data import default_image

    img = default_image()
    if min(img.shape[:2]) < 2 * tile_size:
        reps = -(-2 * tile_size // min(img.shape[:2]))
        img = np.pad(img, ((0, img.shape[0] * (reps - 1)), (0, img.shape[1] * (reps - 1)), (0, 0)), mode="symmetric")
    rng = np.random.default_rng(seed)
    rows = rng.integers(0, img.shape[0] - tile_size + 1, n)
    cols = rng.integers(0, img.shape[1] - tile_size + 1, n)
    return np.stack([img[r : r + tile_size, c : c + tile_size] for r, c in zip(rows, cols)]).astype(np.float32)


def op_profile(step: Callable[[], Any], steps: int, top: int = 8) -> list[dict]:
    """ms per step of the ``top`` TensorFlow op types over ``steps`` calls of ``step``, from the
    TensorFlow profiler's trace (ops run in parallel, so the sum can exceed the step's time)."""
    import tensorflow as tf
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    with tempfile.TemporaryDirectory(prefix="ihclib-profile-") as logdir:
        tf.profiler.experimental.start(logdir)
        try:
            for _ in range(steps):
                step()
        finally:
            tf.profiler.experimental.stop()
        space = xplane_pb2.XSpace()
        space.ParseFromString(next(Path(logdir).rglob("*.xplane.pb")).read_bytes())
    totals: dict[str, float] = {}
    for plane in space.planes:
        names = {k: v.name for k, v in plane.event_metadata.items()}
        for line in plane.lines:
            for event in line.events:
                name = names.get(event.metadata_id, "")
                # ops are "op_name:OpType"; "Class::Method" events are the executor's own
                op = name.rsplit(":", 1)[1].strip() if ":" in name and "::" not in name else ""
                if op and not op.startswith("__"):  # not the whole function's event
                    totals[op] = totals.get(op, 0.0) + event.duration_ps / 1e9 / steps
    ranked = sorted(totals.items(), key=lambda kv: -kv[1])[:top]
    return [{"op": op, "ms_per_step": round(ms, 1)} for op, ms in ranked]


def bench_training(tile_size: int, batch_size: int, steps: int, warmup: int, flops_per_tile: int,
                   peak_gflops: float, determinism: bool = False, learning_rate: float = 1e-3,
                   profile_steps: int = 0) -> dict:
    """Training tiles/s of the paper's network with ``ihclib.train``'s compile settings (Adam,
    MSE, "accuracy"), stepped with ``train_on_batch`` (the step ``model.fit`` runs) on batches of
    ``ihclib.train.make_train_pipeline``. ``determinism``: TF op determinism, as
    ``ihclib.train.set_determinism`` sets it (process-wide: it stays on once set).
    ``profile_steps``: then that many steps under the profiler (:func:`op_profile`)."""
    import keras
    import tensorflow as tf

    from ihclib.model import build_paper_model
    from ihclib.train import make_train_pipeline

    if determinism:
        tf.config.experimental.enable_op_determinism()
    batches = iter(make_train_pipeline(training_tiles(tile_size, max(16, batch_size)), batch_size, seed=0,
                                       amount_range=(0.0, 0.3)))
    keras.utils.set_random_seed(0)
    model = build_paper_model(None)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate), loss="mse", metrics=["accuracy"])
    warm = sum(timed(lambda: model.train_on_batch(*next(batches)))[1] for _ in range(warmup))
    times, waits = [], []
    for _ in range(steps):
        batch, wait = timed(lambda: next(batches))  # time spent waiting for the input pipeline
        times.append(timed(lambda: model.train_on_batch(*batch))[1])
        waits.append(wait)
    profile = op_profile(lambda: model.train_on_batch(*next(batches)), profile_steps) if profile_steps else []
    return {"variant": "op determinism" if determinism else "no op determinism", "batch": batch_size,
            "op_profile": profile,
            "steps": steps, "seconds": round(sum(times), 2), "input_wait_s": round(sum(waits), 3),
            "warmup_s": round(warm, 2), **rates(batch_size / min(times), flops_per_tile, peak_gflops, TRAIN_FLOP_FACTOR),
            "mean_tiles_per_s": round(steps * batch_size / sum(times), 3), "load_1min": load_average()[:1]}


PINNED = "op determinism + two intra-op threads and one inter-op thread (what `ihclib train` runs)"
SERIAL = "op determinism + one intra- and one inter-op thread (the setting before, see ihclib.determinism)"


def bench_training_threads(setting: str = "pinned", **train: Any) -> dict:
    """:func:`bench_training` with op determinism under a thread setting of ``python -m
    ihclib.determinism check --threads`` (``pinned``: as ``ihclib train`` trains), in a fresh
    process, as thread counts are fixed when TensorFlow starts."""
    code = ("import json, sys\n"
            "from ihclib.determinism import set_threads\n"
            f"set_threads({setting!r})\n"
            f"sys.path.insert(0, {str(Path(__file__).resolve().parent)!r})\n"
            "import bench\n"
            "print(json.dumps(bench.bench_training(**json.loads(sys.argv[1]), determinism=True)))\n")
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    proc = subprocess.run([sys.executable, "-c", code, json.dumps(train)], capture_output=True, text=True, env=env)
    if proc.returncode:
        raise RuntimeError(f"training benchmark ({setting} threads) failed: {proc.stderr.strip()[-2000:]}")
    return {**json.loads(proc.stdout.strip().splitlines()[-1]), "variant": {"pinned": PINNED, "serial": SERIAL}[setting]}


def bench_input_pipeline(tile_size: int, batch_size: int, batches: int = 5) -> dict:
    """tiles/s of ``make_train_pipeline`` alone (noise + augmentation): is it the bottleneck?"""
    from ihclib.train import make_train_pipeline

    ds = iter(make_train_pipeline(training_tiles(tile_size, max(16, batch_size)), batch_size, 0, (0.0, 0.3)))
    next(ds)
    _, seconds = timed(lambda: [next(ds) for _ in range(batches)])
    return {"tiles_per_s": round(batches * batch_size / seconds, 1)}


# ---------------------------------------------------------------- whole images


def make_test_image(size: int, amount: float = 0.1, seed: int = 0) -> np.ndarray:
    """uint8 (size, size, 3): the embedded IHC image mirrored out to ``size``, s&p noise ``amount``."""
    from ihclib.study.data import default_image
    from ihclib.images import from_float
    from ihclib.noise import salt_and_pepper

    img = default_image()
    reps = -(-size // min(img.shape[:2]))
    big = np.pad(img, ((0, img.shape[0] * (reps - 1)), (0, img.shape[1] * (reps - 1)), (0, 0)), mode="symmetric")
    return from_float(salt_and_pepper(big[:size, :size], amount, np.random.default_rng(seed)), np.uint8)


def write_test_image(path: Path, image: np.ndarray) -> Path:
    """``image`` (uint8) as a PNG at ``path``, checked by reading it back: the command must be
    timed on these pixels (reading and writing cost depends on them), not on a blank image."""
    from ihclib.images import from_float, load_image, save_image

    save_image(path, image)
    if not np.array_equal(from_float(load_image(path).rgb, np.uint8), image):
        raise RuntimeError(f"{path}: the written test image does not read back as the one made")
    return path


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


def bench_denoise_cli(model_path: str | Path, image_path: Path, out_dir: Path, cfg: Config, multiple: int,
                      backend: str = "auto", tile: int | None = None, batch: int | None = None,
                      precision: str | None = None) -> dict:
    """``ihclib denoise`` on ``image_path`` as a subprocess, with the command's own tile and batch
    size (:func:`ihclib.infer.auto_tiling`) and runtime (``backend`` "auto") unless given: first
    with an empty XLA cache (:mod:`ihclib.xla_cache`) and OpenVINO cache
    (:mod:`ihclib.openvino_cache`; a user's first run: ``seconds_cold``), then ``cfg.cli_runs``
    times from what that run left in them (every later run). ``seconds``, the headline, is the
    best of those (all in ``seconds_runs``): what the command reports for the image (load,
    denoise with tracing and compiling, save); ``wall_s`` (of the same run) adds start-up and
    model loading; ``peak_rss_mib`` is the largest of the runs."""
    with tempfile.TemporaryDirectory(prefix="caches-", dir=out_dir) as cache:
        cold = _denoise_cli_once(model_path, image_path, out_dir, cfg, multiple, backend, tile, batch, precision,
                                 cache)
        warm = [_denoise_cli_once(model_path, image_path, out_dir, cfg, multiple, backend, tile, batch, precision,
                                  cache) for _ in range(max(1, cfg.cli_runs))]
    best = min(warm, key=lambda run: run["seconds"])
    return {**best, "seconds_runs": [run["seconds"] for run in warm],
            "peak_rss_mib": max(run["peak_rss_mib"] for run in warm),
            "seconds_cold": cold["seconds"], "wall_s_cold": cold["wall_s"]}


def _denoise_cli_once(model_path: str | Path, image_path: Path, out_dir: Path, cfg: Config, multiple: int,
                      backend: str, tile: int | None, batch: int | None, precision: str | None, cache: str,
                      env_extra: dict | None = None) -> dict:
    from ihclib.infer import auto_tiling, tile_starts
    from ihclib.openvino_cache import ENV_VAR as OPENVINO_CACHE_ENV
    from ihclib.xla_cache import ENV_VAR as XLA_CACHE_ENV

    size = cfg.denoise_size
    options = ["--tile-size", str(tile), "--batch-size", str(batch)] if tile else []
    if not tile:
        tile, batch = auto_tiling((size, size), cfg.denoise_overlap, multiple)  # what the command picks
    dst = out_dir / f"denoised_{backend}_{tile}.png"
    cmd = [sys.executable, "-m", "ihclib", "denoise", str(image_path), "-o", str(dst), "--overwrite",
           "--model", str(model_path), *options, "--overlap", str(cfg.denoise_overlap)]
    # ``cache``: the folder of this timing's caches, "0" for none
    caches = {XLA_CACHE_ENV: cache, OPENVINO_CACHE_ENV: cache} if cache == "0" else {
        XLA_CACHE_ENV: str(Path(cache) / "xla"), OPENVINO_CACHE_ENV: str(Path(cache) / "openvino")}
    env = {**os.environ, "IHCLIB_BACKEND": backend, **caches,
           **({"IHCLIB_PRECISION": precision} if precision else {}), **(env_extra or {})}
    code, output, wall, rss = run_measured(cmd, env)
    if code != 0:
        raise RuntimeError(f"ihclib denoise failed ({code}):\n{output[-2000:]}")
    found = re.search(r"\(\d+x\d+, \w+, ([\d.]+) s\)", output)
    if not found:
        raise RuntimeError(f"ihclib denoise did not report its time:\n{output[-2000:]}")
    seconds = float(found.group(1))
    if seconds <= 0:  # the command prints hundredths of a second
        raise RuntimeError(f"ihclib denoise reported {seconds} s: the image is too small to time")
    return {"backend": backend, "size": size, "tile": tile, "batch": batch, "options": " ".join(options) or "defaults",
            "tiles": len(tile_starts(max(size, tile), tile, cfg.denoise_overlap)) ** 2,
            "recompute": round(recompute(size, tile, cfg.denoise_overlap), 3),
            "seconds": seconds, "wall_s": round(wall, 2), "peak_rss_mib": round(rss, 1),
            "mp_per_s": float(f"{size * size / seconds / 1e6:.4g}"), "load_1min": load_average()[:1]}


def bench_read_beside_trace(model_path: str | Path, src: Path, out_dir: Path, cfg: Config, multiple: int) -> dict:
    """``ihclib denoise`` on the one file ``src`` with its read beside the model's trace (the
    default) and one after the other (``IHCLIB_OVERLAP=0``), alternating, ``cfg.folder_runs``
    times each after a run that fills the XLA cache they share; the best time each reports."""
    with tempfile.TemporaryDirectory(prefix="caches-", dir=out_dir) as cache:
        _denoise_cli_once(model_path, src, out_dir, cfg, multiple, "keras", None, None, None, cache)
        best: dict[str, float] = {}
        for _ in range(cfg.folder_runs):
            for mode, flag in (("one_after_the_other", "0"), ("beside", "1")):
                run = _denoise_cli_once(model_path, src, out_dir, cfg, multiple, "keras", None, None, None, cache,
                                        {"IHCLIB_OVERLAP": flag})
                best[mode] = min(best.get(mode, math.inf), run["seconds"])
    return {"runs": cfg.folder_runs, "size": cfg.denoise_size, "beside_s": best["beside"],
            "one_after_the_other_s": best["one_after_the_other"],
            "ratio": round(best["beside"] / best["one_after_the_other"], 3), "load_1min": load_average()[:1]}


def bench_denoise_files(model_path: str | Path, src: Path, out_dir: Path, cfg: Config) -> dict:
    """``ihclib denoise`` on a folder of ``cfg.folder_files`` copies of ``src``, once with the next
    file read and the last one written while an image is denoised (the default) and once one
    after another (``IHCLIB_OVERLAP=0``), alternating, ``cfg.folder_runs`` times each; the best
    wall time of each, per file (start-up shared by the files, the same in both; the XLA cache
    off in both, so that neither run fills it for the other)."""
    from ihclib.xla_cache import ENV_VAR as XLA_CACHE_ENV

    folder = out_dir / "folder"
    folder.mkdir(exist_ok=True)
    inputs = []
    for i in range(cfg.folder_files):
        inputs.append(folder / f"copy{i}.png")
        if not inputs[-1].exists():
            shutil.copyfile(src, inputs[-1])
    cmd = [sys.executable, "-m", "ihclib", "denoise", *map(str, inputs), "--out-dir", str(out_dir / "folder_out"),
           "--overwrite", "--model", str(model_path), "--overlap", str(cfg.denoise_overlap)]
    best: dict[str, float] = {}
    for _ in range(cfg.folder_runs):
        for mode, flag in (("one_after_another", "0"), ("overlapped", "1")):
            code, output, wall, _ = run_measured(cmd, {**os.environ, "IHCLIB_OVERLAP": flag, XLA_CACHE_ENV: "0"})
            if code != 0:
                raise RuntimeError(f"ihclib denoise on {cfg.folder_files} files failed ({code}):\n{output[-2000:]}")
            best[mode] = min(best.get(mode, math.inf), wall)
    per_file = {mode: round(w / cfg.folder_files, 2) for mode, w in best.items()}
    return {"files": cfg.folder_files, "runs": cfg.folder_runs, "size": cfg.denoise_size,
            "overlapped_s_per_file": per_file["overlapped"], "sequential_s_per_file": per_file["one_after_another"],
            "ratio": round(best["overlapped"] / best["one_after_another"], 3), "load_1min": load_average()[:1]}


def time_untrained(model: Any, arch: str, src: Path, out_dir: Path, cfg: Config, sidecar: dict, peak: dict,
                   precision: str | None = None, max_seconds: float | None = None, **side) -> dict:
    """``ihclib denoise`` on ``src`` with ``model`` (untrained: the time does not depend on the
    weights) saved as an ``arch`` model; its FLOPs per pixel, time, MP/s and share of the peak of
    the precision it ran in (``precision``, else the command's own choice), and whether it met
    issue 13's whole-image targets at once (``meets_all``: 2 MP/s, 60 % and, where given, at most
    ``max_seconds``: 4x the switching median's time). ``side``: sidecar fields that differ from
    ``sidecar``."""
    from ihclib.backends import resolve_backend
    from ihclib.infer import resolve_precision
    from ihclib.model import count_flops, save_model
    from ihclib.registry import INPUT_MULTIPLE

    per_px = count_flops(model, cfg.tile_size) / cfg.tile_size**2
    path = out_dir / f"{arch}_untrained_{per_px:.0f}.keras"
    save_model(model, path, {**sidecar, "architecture": arch, "input_multiple": INPUT_MULTIPLE[arch],
                             "description": f"untrained {arch}: for timing only", **side})
    run = bench_denoise_cli(path, src, out_dir, cfg, INPUT_MULTIPLE[arch], precision=precision)
    r = rates(run["mp_per_s"] * 1e6, per_px, peak_for(precision or resolve_precision(model, "auto"), peak))
    return {"flops_per_pixel": per_px, "backend": resolve_backend("auto", model), "tile": run["tile"], "seconds": run["seconds"],
            "seconds_runs": run["seconds_runs"], "seconds_cold": run["seconds_cold"], "mp_per_s": run["mp_per_s"], "gflops": r["gflops"], "pct_peak": r["pct_peak"],
            "meets_all": meets_speed(run, max_seconds) and r["pct_peak"] >= 60, "load_1min": run["load_1min"]}


def meets_speed(run: dict, max_seconds: float | None) -> bool:
    """Whether a command's run met issue 13's speed targets: 2 MP/s and, where ``max_seconds``
    is given (4x the switching median's time in the same run), at most that."""
    return bool(run["mp_per_s"] >= 2 and (max_seconds is None or run["seconds"] <= max_seconds))


def bench_width_frontier(src: Path, out_dir: Path, cfg: Config, arch: str, sidecar: dict, peak: dict,
                         max_seconds: float | None = None, widths: tuple[int, ...] | None = None,
                         dense: bool = True) -> dict:
    """``ihclib denoise`` on the same file with untrained models of the bundled architecture at
    ``cfg.frontier_widths``: what a wider (more FLOPs per pixel) or narrower model does to MP/s and
    to the share of peak, end to end. The time does not depend on the weights (dense
    convolutions; the test image has impulses in every tile, so no tile skips the network), so
    these answer whether *any* width of the design could meet issue 13's 2 MP/s, 60 % and (where
    ``max_seconds`` is given) 4x the switching median's time at once; :func:`frontier_fit` says by
    how much they miss, :func:`bench_dense_design` whether a design without classical layers would
    (``dense``). ``widths``: other widths than ``cfg.frontier_widths`` (another architecture's).
    """
    from ihclib.infer import resolve_precision
    from ihclib.model import WIDTH_MODELS, build_model

    if arch not in WIDTH_MODELS:
        return {"rows": [], "note": f"{arch} has no width setting"}
    rows = []
    for width in widths or cfg.frontier_widths:
        model = build_model(arch, None, width=width)
        run = time_untrained(model, arch, src, out_dir, cfg, sidecar, peak, max_seconds=max_seconds,
                             profile={**sidecar.get("profile", {}), "width": width})
        rows.append({"width": width, **{k: v for k, v in run.items() if k != "tile"}})
    fast = [r for r in rows if meets_speed(r, max_seconds)]
    high = [r for r in rows if r["pct_peak"] >= 60]
    precision_peak = peak_for(resolve_precision(build_model(arch, None), "auto"), peak)  # as every width ran
    return {"arch": arch, "rows": rows, "widths_meeting_all": [r["width"] for r in rows if r["meets_all"]],
            "max_seconds": max_seconds,
            "best_share_at_2mps": max(fast, key=lambda r: r["pct_peak"]) if fast else None,
            "best_mps_at_60pct": max(high, key=lambda r: r["mp_per_s"]) if high else None,
            "fit": frontier_fit(rows, cfg.denoise_size**2, precision_peak, max_seconds=max_seconds),
            "fit_cold": frontier_fit([{**r, "seconds": r["seconds_cold"]} for r in rows], cfg.denoise_size**2,
                                     precision_peak, max_seconds=max_seconds),
            "dense": bench_dense_design(src, out_dir, cfg, sidecar, peak, max_seconds) if dense else None}


def bench_dense_design(src: Path, out_dir: Path, cfg: Config, sidecar: dict, peak: dict,
                       max_seconds: float | None = None) -> dict:
    """``ihclib denoise`` on the same file with an untrained ``paper_unet``: a design with no
    classical layers (no box sums, no fused passes), only large dense convolutions, in bf16
    where the CPU has it. Whether *it* meets the targets at once says whether the
    command's own work (reading, writing, set-up, tiling) leaves room for any model to."""
    from ihclib.infer import cpu_has_bf16
    from ihclib.model import build_model

    precision = "bfloat16" if cpu_has_bf16() else "float32"
    run = time_untrained(build_model("paper_unet", None), "paper_unet", src, out_dir, cfg, sidecar, peak, precision,
                         max_seconds)
    return {"model": "paper_unet", "precision": precision, **run}


def frontier_fit(rows: list[dict], pixels: int, peak_gflops: float, mp_per_s: float = 2.0,
                 share: float = 60.0, max_seconds: float | None = None) -> dict | None:
    """Least-squares fit of the frontier's times, seconds = fixed + FLOPs of the image / rate,
    and what meeting ``mp_per_s`` (and at most ``max_seconds``, 4x the switching median's time,
    where given) and ``share`` % of ``peak_gflops`` at once would take.

    ``fixed_s`` is the work that does not grow with the width (reading, writing, set-up, the
    classical layers, small convolutions), ``rate_gflops`` what each added FLOP runs at. At
    ``mp_per_s`` the image has ``budget_s`` (less where ``max_seconds`` is less: ``budget_from``
    says which target sets it); ``share`` % of the peak in that time means at least
    ``flops_per_pixel_needed``, which at the fitted rate leaves ``fixed_s_allowed`` for the rest:
    a design of this kind meets both only if its fixed work fits in that. None: fewer than two
    widths, or a rate that does not grow with the FLOPs or runs above the peak (noise: no rate
    above the peak is ever reported)."""
    if len(rows) < 2:
        return None
    flops = np.array([r["flops_per_pixel"] * pixels for r in rows], float)
    seconds = np.array([r["seconds"] for r in rows], float)
    slope, fixed = np.polyfit(flops, seconds, 1)
    if slope <= 0:
        return None
    rate = 1 / slope / 1e9
    if rate > peak_gflops:
        return None
    budget, source = pixels / (mp_per_s * 1e6), f"{mp_per_s:g} MP/s"
    if max_seconds is not None and max_seconds < budget:  # e.g. on a Zen 5 the median does 9.8 MP/s
        budget, source = max_seconds, f"{MEDIAN_FACTOR}x the switching median's time"
    needed = share / 100 * peak_gflops * 1e9 * budget / pixels
    allowed = budget - needed * pixels / (rate * 1e9)
    return {"fixed_s": round(float(fixed), 2), "rate_gflops": round(float(rate), 1),
            "rate_pct_peak": round(float(100 * rate / peak_gflops), 1), "budget_s": round(budget, 2),
            "budget_from": source,
            "flops_per_pixel_needed": round(needed), "fixed_s_allowed": round(float(allowed), 2),
            "feasible": bool(fixed <= allowed)}


# one call of the switching median in a fresh process, on the PNG the command reads: the
# filter's time for a user's one image (allocations included, as they are in the command's)
_MEDIAN_ONCE = """
import sys, time
from ihclib.images import load_image, to_float
from ihclib.study.baselines import switching_median
rgb = load_image(sys.argv[1]).rgb
start = time.perf_counter()
switching_median(to_float(rgb))
print(time.perf_counter() - start)
"""


def bench_switching_median(image: np.ndarray, src: Path | None = None, processes: int = 5, calls: int = 3) -> dict:
    """``ihclib.study.baselines.switching_median`` on the same image (uint8 -> float, filtered).

    ``seconds`` (what issue 13's 4x limit uses): where ``src`` (the command's PNG) is given, the
    best of one call in each of ``processes`` fresh processes, as a user filters one image; a
    single call in this process moved from 1.71 to 2.65 s between two runs on one machine, and
    the best of 3 fresh processes from 0.97 (95e5626) to 1.47 s (0bdf8d9): 5 since, and the best
    of more calls can only lower the limit the network is held to.
    ``warm_s``: the best of ``calls`` calls in this process after a first one (0.93 against 2.02 s
    on the Zen 5: later calls reuse the first one's memory, which a command's one image never
    does), shown beside it."""
    from ihclib.study.baselines import switching_median
    from ihclib.images import to_float

    times = [timed(lambda: switching_median(to_float(image)))[1] for _ in range(calls + 1)]
    pixels = image.shape[0] * image.shape[1]
    if src is None:
        once = times[:1]
    else:
        once = []
        for _ in range(processes):
            proc = subprocess.run([sys.executable, "-c", _MEDIAN_ONCE, str(src)], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, check=True)
            once.append(float(proc.stdout.strip().splitlines()[-1]))
    seconds = min(once)
    return {"seconds": round(seconds, 4), "mp_per_s": float(f"{pixels / seconds / 1e6:.4g}"),
            "fresh_process_s" if src is not None else "first_call_s": [round(t, 4) for t in once],
            "warm_s": round(min(times[1:]), 4), "warm_mp_per_s": float(f"{pixels / min(times[1:]) / 1e6:.4g}"),
            "load_1min": load_average()[:1]}


def recompute(size: int, tile: int, overlap: int) -> float:
    """Pixels the model computes per pixel of a ``size`` x ``size`` image (overlapping tiles;
    an image smaller than a tile is mirrored out to it)."""
    from ihclib.infer import tile_starts

    return (len(tile_starts(max(size, tile), tile, overlap)) * tile / size) ** 2


def bench_tile_pipeline(model, cfg: Config) -> dict:
    """In-process ``infer.denoise`` on a ``pipeline_size`` image as the CLI runs it, and with one
    thing changed each: no threads, float32, tiles twice as large (a quarter of the batch); and
    on the clean image, with and without skipping unflagged tiles."""
    from ihclib.infer import _Plan, _unflagged, denoise, resolve_precision

    kwargs = dict(tile_size=cfg.tile_size, overlap=cfg.denoise_overlap, batch_size=cfg.denoise_batch,
                  multiple=4, progress=False, precision="auto")  # as `ihclib denoise` runs it
    noisy, clean = make_test_image(cfg.pipeline_size), make_test_image(cfg.pipeline_size, amount=0.0)
    out: dict[str, Any] = {"size": cfg.pipeline_size, "precision": resolve_precision(model, "auto"),
                           "big_tile": 2 * cfg.tile_size}
    big = 2 * cfg.tile_size
    runs = {"threads": (noisy, dict(threads=True)), "no_threads": (noisy, dict(threads=False)),
            "float32": (noisy, dict(precision="float32")),
            f"tile{big}": (noisy, dict(tile_size=big, batch_size=max(1, cfg.denoise_batch // 4))),
            "clean_skip": (clean, dict(skip_unflagged=True)), "clean_no_skip": (clean, dict(skip_unflagged=False))}
    results = {}
    for name, (img, extra) in runs.items():
        args = {**kwargs, **extra}
        denoise(model, img[: 2 * args["tile_size"], : 2 * args["tile_size"]], **args)  # tracing, not timed
        results[name], seconds = timed(lambda: denoise(model, img, **args))
        out[f"{name}_s"] = round(seconds, 2)
    plan = _Plan(clean.shape[:2], cfg.tile_size, cfg.denoise_overlap, cfg.denoise_batch)
    clean_f = clean.astype(np.float32) / 255
    t = cfg.tile_size
    out["clean_tiles_skipped"] = sum(_unflagged(clean_f[r : r + t, c : c + t]) for r, c in plan.starts)
    out["clean_tiles"] = len(plan.starts)
    for t_size in (cfg.tile_size, 2 * cfg.tile_size):  # pixels computed per image pixel (overlap)
        for size in (cfg.pipeline_size, cfg.denoise_size):
            out[f"recompute_tile{t_size}_{size}px"] = round(recompute(size, t_size, cfg.denoise_overlap), 3)
    out["skip_identical"] = bool(np.array_equal(results["clean_skip"], results["clean_no_skip"]))
    out["threads_identical"] = bool(np.array_equal(results["threads"], results["no_threads"]))
    out["load_1min"] = load_average()[:1]
    return out


# ---------------------------------------------------------------- the run


def keep_higher_peak(peak: dict, again: dict) -> dict:
    """``peak`` (the run's first measurement) updated in place with a second one, ``again``
    (:func:`measure_peak`'s dict): each peak becomes the higher of the two, both kept
    (``measurements``). The peak is what the hardware can do; one measurement taken while the
    shared machine ran slow made every share of that run look better (issue 13: a bf16 peak of
    805 GFLOP/s where other runs measured 888-935 put the command at 61.1 % instead of about 55)."""
    first = {k: peak[k] for k in ("peak_gflops", "peak_source", "bf16_peak_gflops")}
    second = {k: again[k] for k in ("peak_gflops", "peak_source", "bf16_peak_gflops")}
    if again["peak_gflops"] > peak["peak_gflops"]:
        peak.update({k: v for k, v in again.items() if k not in ("gemm", "bf16_peak_gflops")})
    peak["bf16_peak_gflops"] = max(first["bf16_peak_gflops"], second["bf16_peak_gflops"])
    peak["gemm_again"] = again["gemm"]
    peak["measurements"] = [first, second]
    return peak


class RatioError(RuntimeError):
    """A share of a peak above 100 %: the FLOP accounting or the peak is wrong."""


def machine_section(cfg: Config, log: Callable[[str], None]) -> dict:
    """Machine, versions, load, and the theoretical and measured peaks."""
    import tensorflow as tf

    from ihclib.study import reports

    info = cpu_info()
    theory = theoretical_peak(info)
    log(f"benchmark ({cfg.name}) on {info['model']}, {info['cores']} cores, {theory['isa']}, load {load_average()}")
    peak = measure_peak(cfg.gemm_sizes, cfg.gemm_repeats, theory["fp32_gflops"], bool(theory["bf16_gflops"]),
                        theory["clock_is_max"])
    peak.update({"theoretical_gflops": theory["fp32_gflops"], "bf16_theoretical_gflops": theory["bf16_gflops"]})
    log(f"peak: measured {peak['peak_gflops']} GFLOP/s ({peak['peak_source']}), theoretical {theory['fp32_gflops']}")
    return {"config": asdict(cfg), "cpu": info, "theoretical": theory, "peak": peak,
            "versions": reports.package_versions(), "commit": reports.git_commit(ROOT),
            "load_average_before": load_average(),
            "settings": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS"),
                         "tf_intra_op_threads": tf.config.threading.get_intra_op_parallelism_threads() or "default"},
            "notes": {"flops": "2 x multiply-accumulates of the convolutions (ihclib.model.count_flops); "
                               f"training = {TRAIN_FLOP_FACTOR} x forward; denoise: FLOPs per image pixel x pixels "
                               "(recomputed overlap not counted)",
                      "timing": "best of repeated calls after warm-up; load_1min = load average when measured"}}


def bundled_model() -> tuple[Any, Path, str, dict]:
    """The model ``ihclib denoise`` uses by default, its path, its architecture and its sidecar."""
    from ihclib.infer import bundled_model_path, load_default_model

    model, sidecar = load_default_model()
    return model, bundled_model_path(), sidecar.get("architecture", "crosschannel_unet"), sidecar


def whole_image_section(result: dict, cfg: Config, log: Callable[[str], None]) -> None:
    """``ihclib denoise`` and the switching median on one noisy image, the tile pipeline, bf16."""
    from ihclib.model import count_flops
    from ihclib.registry import INPUT_MULTIPLE

    model, path, arch, sidecar = bundled_model()
    peak = result["peak"]
    per_px = count_flops(model, cfg.tile_size) / cfg.tile_size**2  # the model as saved (its width)
    image = make_test_image(cfg.denoise_size)
    with tempfile.TemporaryDirectory(prefix="ihclib-bench-") as tmp:
        src = write_test_image(Path(tmp) / f"noisy_{cfg.denoise_size}.png", image)
        png_mb = round(src.stat().st_size / 1e6, 1)
        run = bench_denoise_cli(path, src, Path(tmp), cfg, INPUT_MULTIPLE[arch])  # as a user runs it
        theory = result["theoretical"]  # the peaks again, beside the command's runs: the higher counts
        keep_higher_peak(peak, measure_peak(cfg.gemm_sizes, cfg.gemm_repeats, theory["fp32_gflops"],
                                            bool(theory["bf16_gflops"]), theory["clock_is_max"]))
        log(f"peak measured again: {peak['measurements'][1]['peak_gflops']} GFLOP/s float32, "
            f"{peak['measurements'][1]['bf16_peak_gflops']} bf16; kept {peak['peak_gflops']}, {peak['bf16_peak_gflops']}")
        # the fixed tiling the command used before auto_tiling: more overlap recomputed
        fixed = bench_denoise_cli(path, src, Path(tmp), cfg, INPUT_MULTIPLE[arch], tile=cfg.tile_size,
                                  batch=cfg.denoise_batch)
        files = bench_denoise_files(path, src, Path(tmp), cfg)
        beside = bench_read_beside_trace(path, src, Path(tmp), cfg, INPUT_MULTIPLE[arch])
        median = bench_switching_median(image, src)  # the frontier's widths are held to 4x its time too
        frontier = bench_width_frontier(src, Path(tmp), cfg, arch, sidecar, peak, MEDIAN_FACTOR * median["seconds"],
                                        design_widths(cfg, arch))
        # the other designs, held to the same targets (the dense design is timed once, above)
        designs = {key: bench_width_frontier(src, Path(tmp), cfg, other, sidecar, peak, MEDIAN_FACTOR * median["seconds"],
                                             design_widths(cfg, other), dense=False)
                   for key, other in DESIGN_FRONTIERS.items() if other != arch}
    from ihclib.infer import resolve_precision

    precision = resolve_precision(model, "auto")  # what the command runs in
    run.update({k: v for k, v in rates(run["mp_per_s"] * 1e6, per_px, peak_for(precision, peak)).items()
                if k != "tiles_per_s"})
    run["x_median_time"] = round(run["seconds"] / median["seconds"], 2)
    log(f"ihclib denoise {cfg.denoise_size}px: {run['seconds']} s, {run['mp_per_s']} MP/s, {run['pct_peak']} % of "
        f"peak; switching median {median['seconds']} s")
    result["model"] = {"name": arch, "path": str(path.relative_to(ROOT)) if path.is_relative_to(ROOT) else path.name,
                       "flops_per_pixel": per_px, "params": int(model.count_params())}
    result["denoise_cli_fixed_tile"] = fixed
    result["denoise_cli"] = {**run, "precision": precision, "image": f"{cfg.denoise_size}x{cfg.denoise_size} uint8 PNG ({png_mb} MB), embedded "
                                             "IHC image mirrored out, s&p 0.1"}
    result["switching_median"] = median
    result["denoise_files"] = files
    result["denoise_read_beside_trace"] = beside
    log(f"ihclib denoise, read beside the trace: {beside['beside_s']} s, one after the other "
        f"{beside['one_after_the_other_s']} s (x{beside['ratio']})")
    log(f"ihclib denoise on {files['files']} files: {files['overlapped_s_per_file']} s per file, "
        f"one after another {files['sequential_s_per_file']} s (x{files['ratio']})")
    result["width_frontier"] = frontier
    log("width frontier: " + ", ".join(f"{r['width']}: {r['mp_per_s']} MP/s {r['pct_peak']} %" for r in frontier["rows"]))
    for key, other in designs.items():
        result[key] = other
        log(f"{other.get('arch', key)} frontier: " + ", ".join(f"{r['width']}: {r['mp_per_s']} MP/s {r['pct_peak']} %"
                                                for r in other["rows"]))
    result["tile_pipeline"] = bench_tile_pipeline(model, cfg)
    flops_tile = per_px * cfg.tile_size**2
    result["bundled_inference"] = bench_inference(model, f"{arch} (float32)", cfg.tile_size, (cfg.main_batch,), ["keras"], flops_tile,
                                                  peak["peak_gflops"], cfg.min_time, cfg.min_calls)
    result["bf16"] = bench_bf16(model, cfg, flops_tile, peak)
    log(f"bf16: x{result['bf16']['speedup']}, PSNR {result['bf16']['psnr_delta_db']:+.4f} dB")


def training_rows(runs: int, target: Callable[[], dict], others: list[Callable[[], dict]]) -> list[dict]:
    """The target's row (the best of ``runs`` fresh processes: one before the other variants and
    one after each of them, until there are ``runs``; each run's rate in ``runs_tiles_per_s``),
    then the others' rows in their order (op determinism last: it cannot be undone in a process)."""
    done = [target()]
    rows = []
    for other in others:
        rows.append(other())
        if len(done) < runs:
            done.append(target())
    while len(done) < runs:
        done.append(target())
    best = max(done, key=lambda r: r["tiles_per_s"])
    return [{**best, "runs_tiles_per_s": [r["tiles_per_s"] for r in done]}, *rows]


def paper_section(result: dict, cfg: Config, log: Callable[[str], None]) -> None:
    """Inference and training of the paper's network; op determinism last (it cannot be undone)."""
    from ihclib.model import build_paper_model, count_flops

    model = build_paper_model(None)
    flops = count_flops(model, cfg.tile_size)
    peak = result["peak"]["peak_gflops"]
    from ihclib.backends import resolve_backend

    # the runtime `ihclib denoise` picks for it, which issue 13's inference target is read from
    result["paper_model"] = {"name": "paper_unet", "tile_size": cfg.tile_size, "flops_per_tile": flops,
                             "backend": resolve_backend("auto", model)}
    result["inference"] = bench_inference(model, "paper_unet", cfg.tile_size, cfg.batch_sizes,
                                          installed(cfg.backends), flops, peak, cfg.min_time, cfg.min_calls,
                                          cfg.inference_rounds)
    log(f"inference: {len(result['inference'])} measurements")
    result["input_pipeline"] = bench_input_pipeline(cfg.tile_size, cfg.train_batch)
    train = dict(tile_size=cfg.tile_size, batch_size=cfg.train_batch, steps=cfg.train_steps,
                 warmup=cfg.train_warmup, flops_per_tile=flops, peak_gflops=peak, profile_steps=cfg.profile_steps)
    result["training"] = training_rows(cfg.training_runs, lambda: bench_training_threads("pinned", **train),
                                       [lambda: bench_training_threads("serial", **train), lambda: bench_training(**train),
                                        lambda: bench_training(**train, determinism=True)])
    log("training: " + ", ".join(f"{r['variant']} {r['pct_peak']} %" for r in result["training"]))


def ratio_violations(obj: Any, where: str = "") -> list[str]:
    """Every ``pct_*`` value above 100 in ``obj`` (nested dicts and lists), as 'path = value'."""
    found = []
    if isinstance(obj, dict):
        for key, value in obj.items():
            path = f"{where}.{key}" if where else key
            if key.startswith("pct_") and isinstance(value, (int, float)) and value > 100:
                found.append(f"{path} = {value} %")
            else:
                found += ratio_violations(value, path)
    elif isinstance(obj, list):
        for i, value in enumerate(obj):
            found += ratio_violations(value, f"{where}[{i}]")
    return found


def run_benchmark(cfg: Config, out_path: Path | None = DEFAULT_OUT, log: Callable[[str], None] = print) -> dict:
    """Every measurement of ``cfg``, checked, with its targets; written to ``out_path`` (if given).

    Raises
    ------
    RatioError
        When any share of a peak exceeds 100 % (nothing is written then).
    """
    from ihclib.study import reports

    start = time.perf_counter()
    result = machine_section(cfg, log)
    whole_image_section(result, cfg, log)
    paper_section(result, cfg, log)
    result["targets"] = targets(result)
    result["load_average_after"] = load_average()
    result["total_s"] = round(time.perf_counter() - start, 1)
    bad = ratio_violations(result)
    if bad:
        raise RatioError("share of peak above 100 % (FLOP count, peak or clock is wrong): " + "; ".join(bad))
    if out_path is not None:
        reports.write_json(out_path, result)
    return result


# ---------------------------------------------------------------- targets and the README table


def inference_target_row(result: dict) -> dict:
    """The paper network's inference at the main batch size on the runtime ``ihclib denoise``
    picks for it (Keras in runs before that choice was recorded, or where it is not installed)."""
    b = result["config"]["main_batch"]
    rows = [r for r in result["inference"] if r["batch"] == b]
    chosen = result["paper_model"].get("backend", "keras")
    return next((r for r in rows if r["backend"] == chosen), next(r for r in rows if r["backend"] == "keras"))


def targets(result: dict) -> list[dict]:
    """Issue 13's targets, each with its measured value and whether it is met."""
    cli, cfg = result["denoise_cli"], result["config"]
    b = cfg["main_batch"]
    inf = inference_target_row(result)
    det = next(r for r in result["training"] if r["variant"] == PINNED)
    bf16 = result["bf16"]
    rows = [(f"`ihclib denoise` {cli['size']}x{cli['size']}, bundled model: at least 2 MP/s", cli["mp_per_s"],
             "MP/s", cli["mp_per_s"] >= 2),
            (f"... at most {MEDIAN_FACTOR}x the switching median's time (same image, same run)", cli["x_median_time"],
             "x", cli["x_median_time"] <= MEDIAN_FACTOR),
            ("... at least 60 % of the measured peak, end to end", cli["pct_peak"], "%", cli["pct_peak"] >= 60),
            (f"inference (paper_unet, batch {b}, {inf['backend']}"
             + (": the runtime `ihclib denoise` picks for it" if inf["backend"] == result["paper_model"].get("backend")
                else f"; `ihclib denoise` picks {result['paper_model'].get('backend')}, not measured")
             + "): at least 75 % of the measured peak", inf["pct_peak"], "%",
             inf["pct_peak"] >= 75),
            ("training as `ihclib train` runs it (deterministic): at least 50 % of the measured peak", det["pct_peak"], "%",
             det["pct_peak"] >= 50),
            ("bf16 trunk by default (on CPUs with bf16) only if held-out PSNR changes by less than 0.05 dB "
             "(fused layers + bf16 against the float32 reference)",
             bf16["psnr_delta_db"], "dB", abs(bf16["psnr_delta_db"]) < 0.05),
            ("... and only if it is faster (fused layers with a bf16 trunk against them with a float32 one)",
             bf16.get("bf16_over_fused", bf16["speedup"]), "x", bf16.get("bf16_over_fused", bf16["speedup"]) > 1)]
    return [{"target": t, "value": v, "unit": u, "met": bool(m)} for t, v, u, m in rows]


def _theory_share(th: dict, peak: dict) -> str:
    """The measured peak against the theoretical figure, as a share of a true peak or, at the
    listed clock, as the clock the measurement implies."""
    if "pct_theoretical" in peak:
        return f"{peak['pct_theoretical']} % of theoretical"
    x = peak.get("x_listed_clock_figure")
    if x is None:
        return "no clock known"
    return (f"{x} x the figure at the listed clock, which is a base clock: the cores ran at about "
            f"{x * th['ghz']:.2f} GHz or more")


def _machine_text(result: dict) -> str:
    cpu, th, peak = result["cpu"], result["theoretical"], result["peak"]
    shown = ("avx2", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16")
    flags = [f for f in shown if cpu["flags"].get(f)] + ([] if cpu["flags"].get("amx_tile") else ["no AMX"])
    family = f"family {cpu['family']} model {cpu['model_number']}, " if "model_number" in cpu else ""
    return (f"Measured by `make bench` on **{cpu['model']}** ({family}{cpu['cores']} cores; {', '.join(flags)}), commit `{result['commit']}`, TensorFlow {result['versions'].get('tensorflow', '?')}, "
            f"load average {result['load_average_before'][:1]} before, {result['load_average_after'][:1]} after "
            f"({result['total_s']:.0f} s). Theoretical float32 peak: {th['cores']} cores x "
            f"{th['flop_per_cycle_fp32']} FLOP/cycle ({th['isa']}) x {th['ghz']} GHz "
            f"({'cpufreq maximum' if th.get('clock_is_max') else 'cpuinfo, a lower bound'}) = "
            f"**{th['fp32_gflops']} GFLOP/s**; measured peak (best float32 GEMM of NumPy and TensorFlow, "
            f"n = {', '.join(str(n) for n in result['config']['gemm_sizes'])}): **{peak['peak_gflops']} GFLOP/s** "
            f"({peak['peak_source']}, {_theory_share(th, peak)}); TensorFlow's best bfloat16 GEMM "
            f"{peak['bf16_peak_gflops']} GFLOP/s{_peak_runs(peak)}. Shares below are of the measured float32 peak, "
            "for bf16 paths of the higher of the two.")


def _peak_runs(peak: dict) -> str:
    """How the two measurements of the peaks went (:func:`keep_higher_peak`), where there were two."""
    runs = peak.get("measurements")
    if not runs:
        return ""
    return (" (each the higher of two measurements, at the start and beside the command's runs: float32 "
            + " / ".join(str(r["peak_gflops"]) for r in runs) + ", bfloat16 "
            + " / ".join(str(r["bf16_peak_gflops"]) for r in runs) + ")")


def _frontier_rows(result: dict, key: str = "width_frontier") -> list[tuple[str, str, str, str]]:
    """One row per width of :func:`bench_width_frontier` (``result[key]``), and whether any met
    the targets at once."""
    frontier = result.get(key)  # absent in results from before it was measured
    if not frontier or not frontier["rows"]:
        return []
    arch = frontier.get("arch", result["model"]["name"])
    rows = [(f"... same command, untrained {arch} of width {r['width']} ({r['flops_per_pixel']:,.0f} FLOP/pixel)",
             f"{r['seconds']} s, {r['mp_per_s']} MP/s" + _cold_text(r), f"{r['gflops']}", f"{r['pct_peak']} %")
            for r in frontier["rows"]]
    fast, high = frontier["best_share_at_2mps"], frontier["best_mps_at_60pct"]
    # .get: --readme-only renders JSON from before the median's limit (keys "..._both")
    met = ", ".join(str(w) for w in frontier.get("widths_meeting_all", frontier.get("widths_meeting_both", []))) or "none"
    speed = _speed_text(frontier)
    rows.append((f"... {arch} widths meeting {speed} and >= 60 % at once", f"{met} (highest share at {speed}: "
                 + (f"{fast['pct_peak']} %, width {fast['width']}" if fast else "no width that fast")
                 + "; fastest at >= 60 %: " + (f"{high['mp_per_s']} MP/s, width {high['width']}" if high else "no width")
                 + ")", "", ""))
    fit, cold = frontier.get("fit"), frontier.get("fit_cold")
    if fit:
        rows.append((f"... fit over the {arch} widths: seconds = fixed work + FLOPs / rate",
                     f"fixed {fit['fixed_s']} s, rate {fit['rate_gflops']} GFLOP/s ({fit['rate_pct_peak']} % of peak); "
                     f"{speed} and >= 60 % at once need >= {fit['flops_per_pixel_needed']:,} FLOP/pixel in "
                     f"{fit['budget_s']} s ({fit.get('budget_from', '2 MP/s')}), so fixed work <= {fit['fixed_s_allowed']} s: "
                     + ("within reach" if fit["feasible"] else f"{fit['fixed_s'] - fit['fixed_s_allowed']:.2f} s too much")
                     + (f" (first run, empty caches: fixed {cold['fixed_s']} s)" if cold else ""),
                     "", ""))
    dense = frontier.get("dense")
    if dense:
        rows.append((f"... same command, untrained paper_unet in {dense['precision']} "
                     + (f"on {dense['backend']} " if "backend" in dense else "") + "(no classical layers; "
                     f"{dense['flops_per_pixel']:,.0f} FLOP/pixel)",
                     f"{dense['seconds']} s, {dense['mp_per_s']} MP/s{_cold_text(dense)}; {speed} and >= 60 % at once: "
                     + ("yes" if dense.get("meets_all", dense.get("meets_both")) else "no"), f"{dense['gflops']}",
                     f"{dense['pct_peak']} %"))
    return rows


def _speed_text(frontier: dict) -> str:
    """The speed targets the frontier was held to."""
    return ">= 2 MP/s" + (f", <= {frontier['max_seconds']:.2f} s ({MEDIAN_FACTOR}x the median)"
                          if frontier.get("max_seconds") else "")


def _cold_text(run: dict) -> str:
    """The later runs a command's timing is the best of, and the first run's time (empty XLA
    cache), where they were measured."""
    runs = run.get("seconds_runs") or []  # since cli_runs: one later run before
    text = f"; best of {len(runs)} runs: {' / '.join(f'{t:g}' for t in runs)} s" if len(runs) > 1 else ""
    return text + (f"; first run (empty caches) {run['seconds_cold']} s" if "seconds_cold" in run else "")


def _files_rows(result: dict) -> list[tuple[str, str, str, str]]:
    rows = []
    if "denoise_read_beside_trace" in result:  # since 9524e03
        b = result["denoise_read_beside_trace"]
        rows.append((f"... the file read beside the model's trace / one after the other (`IHCLIB_OVERLAP=0`), "
                     f"XLA cache filled, best of {b['runs']}",
                     f"{b['beside_s']} / {b['one_after_the_other_s']} s (x{b['ratio']})", "", ""))
    if "denoise_files" in result:  # since the overlap across files
        f = result["denoise_files"]
        rows.append((f"... a folder of {f['files']} such files: the next read and the last written beside the model / "
                     f"one after another (`IHCLIB_OVERLAP=0`), wall per file, best of {f['runs']}",
                     f"{f['overlapped_s_per_file']} / {f['sequential_s_per_file']} s (x{f['ratio']})", "", ""))
    return rows


def _training_rows(training: list[dict]) -> list[tuple[str, str, str, str]]:
    rows = []
    for r in training:
        runs = r.get("runs_tiles_per_s") or []  # since training_runs: one process before
        rows.append((f"training paper_unet, batch {r['batch']}, {r['variant']}",
                     f"{r['tiles_per_s']} tiles/s (input wait {r['input_wait_s']} s)"
                     + (f"; best of {len(runs)} processes: {' / '.join(f'{t:g}' for t in runs)} tiles/s"
                        if len(runs) > 1 else ""), f"{r['gflops']}", f"{r['pct_peak']} %"))
    return rows


def _measurement_rows(result: dict) -> list[tuple[str, str, str, str]]:
    cli, med, tp, bf = result["denoise_cli"], result["switching_median"], result["tile_pipeline"], result["bf16"]
    fixed = result["denoise_cli_fixed_tile"]
    rows = [(f"`ihclib denoise` {cli['size']}x{cli['size']} ({result['model']['name']}, {cli['precision']}; its "
             f"defaults: tile {cli['tile']}, batch {cli['batch']}, overlap recomputed x{cli['recompute']})",
             f"{cli['seconds']} s, {cli['mp_per_s']} MP/s (wall {cli['wall_s']} s, "
             f"{cli['peak_rss_mib']:.0f} MiB)" + _cold_text(cli), f"{cli['gflops']}", f"{cli['pct_peak']} %"),
            (f"... `{fixed['options']}` (overlap recomputed x{fixed['recompute']})",
             f"{fixed['seconds']} s, {fixed['mp_per_s']} MP/s", "", ""),
            ("switching median, same image, same run" + (", one call in a fresh process, best of "
                                                         f"{len(med['fresh_process_s'])}" if "fresh_process_s" in med else ""),
             f"{med['seconds']} s, {med['mp_per_s']} MP/s"
             + (f" (later calls in one process: {med['warm_s']} s, {med['warm_mp_per_s']} MP/s)" if "warm_s" in med else ""),
             "", ""),
            *_files_rows(result),
            *_frontier_rows(result),
            *(row for key in DESIGN_FRONTIERS for row in _frontier_rows(result, key)),
            (f"in-process {tp['size']}px ({tp['precision']}, tile {result['config']['tile_size']}) / no threads / float32 / "
             f"tile {tp['big_tile']}", f"{tp['threads_s']} / {tp['no_threads_s']} / {tp['float32_s']} / "
             f"{tp['tile' + str(tp['big_tile']) + '_s']} s", "", ""),
            (f"clean {tp['size']}px image, skipping unflagged tiles on / off ({tp['clean_tiles_skipped']} of "
             f"{tp['clean_tiles']} skipped)", f"{tp['clean_skip_s']} / {tp['clean_no_skip_s']} s", "", "")]
    for r in result["bundled_inference"]:
        rows.append((f"inference {r['model']}, batch {r['batch']}", f"{r['mp_per_s']} MP/s", f"{r['gflops']}",
                     f"{r['pct_peak']} %"))
    f32, b16 = bf["speed"]["float32"], bf["speed"]["bfloat16"]
    if "fused" in bf["speed"]:  # results from before the fused layers have no such row
        fu = bf["speed"]["fused"]
        rows.append((f"... fused classical layers (`infer.inference_copy`), float32, batch {bf['batch']}",
                     f"x{bf['fused_speedup']} ({fu['tiles_per_s']} vs {f32['tiles_per_s']} tiles/s); held-out PSNR "
                     f"{bf['fused_psnr_delta_db']:+.4f} dB", f"{fu['gflops']}", f"{fu['pct_peak']} %"))
    rows.append((f"... fused layers + bf16 trunk (`infer.bfloat16_copy`, what `ihclib denoise` runs), batch {bf['batch']}",
                 f"x{bf['speedup']} ({b16['tiles_per_s']} vs {f32['tiles_per_s']} tiles/s); held-out PSNR "
                 f"{bf['psnr_delta_db']:+.3f} dB", f"{b16['gflops']}", f"{b16['pct_peak']} %"))
    for r in result["inference"]:
        rounds = r.get("round_gflops") or []  # since the rounds: one timing before
        rows.append((f"inference paper_unet ({r['backend']}), batch {r['batch']}", f"{r['tiles_per_s']} tiles/s"
                     + (f" (fastest call of {len(rounds)} rounds; each round's best: "
                        f"{' / '.join(f'{g:g}' for g in rounds)} GFLOP/s)" if len(rounds) > 1 else ""),
                     f"{r['gflops']}", f"{r['pct_peak']} %"))
    rows.extend(_training_rows(result["training"]))
    rows.append(("training input pipeline alone", f"{result['input_pipeline']['tiles_per_s']} tiles/s", "", ""))
    for r in result["training"]:
        if r["op_profile"]:
            ops = ", ".join(f"{p['op']} {p['ms_per_step']:.0f}" for p in r["op_profile"][:5])
            rows.append((f"where a training step goes ({r['variant']}), ms per step", ops, "", ""))
    return rows


def render_table(result: dict) -> str:
    """The README's performance block (markdown) from one benchmark result."""
    lines = [_machine_text(result), "", "| measurement | result | GFLOP/s | share of peak |", "| --- | --- | --- | --- |"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in _measurement_rows(result)]
    lines += ["", "| target (issue 13) | measured | met |", "| --- | --- | --- |"]
    lines += [f"| {t['target']} | {t['value']} {t['unit']} | {'yes' if t['met'] else '**no**'} |"
              for t in result["targets"]]
    return "\n".join(lines)


def update_readme(result: dict, readme: Path = README) -> bool:
    """Replace the block between the bench markers of ``readme``; False if it has no markers."""
    text = readme.read_text()
    start, end = text.find(MARK_START), text.find(MARK_END)
    if start < 0 or end < start:
        return False
    block = f"{MARK_START}\n{render_table(result)}\n{MARK_END}"
    readme.write_text(text[:start] + block + text[end + len(MARK_END):])
    return True


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (seconds): checks that the benchmark runs")
    p.add_argument("--out", default=None, help=f"JSON report (default {DEFAULT_OUT.relative_to(ROOT)}; "
                                               "--quick writes none unless given)")
    p.add_argument("--readme-only", action="store_true", help="only rewrite the README table from the JSON")
    p.add_argument("--readme", default=str(README), help="README whose table is rewritten (default: the project's)")
    p.add_argument("--wait-idle", type=float, default=None, metavar="LOAD",
                   help="first wait (up to 20 min) until the 1-minute load average is below LOAD")
    args = p.parse_args(argv)
    out = Path(args.out) if args.out else (None if args.quick else DEFAULT_OUT)
    if args.readme_only:
        if out is None or not out.is_file():
            print(f"bench: error: {out}: no benchmark JSON to render (run make bench)", file=sys.stderr)
            return 1
        if update_readme(json.loads(out.read_text()), Path(args.readme)):
            return 0
        print(f"bench: error: {args.readme}: no {MARK_START} ... {MARK_END} block to fill", file=sys.stderr)
        return 1
    # read when TensorFlow is first imported (all TF imports here are inside functions)
    os.environ.setdefault("TF_ENABLE_ONEDNN_OPTS", "1")
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    # in this process (OpenVINO's setup_s: a first conversion) and nothing left in the user's
    # cache; each command timing gets caches of its own (bench_denoise_cli)
    os.environ["IHCLIB_OPENVINO_CACHE"] = "0"
    if args.wait_idle is not None and not wait_for_idle(args.wait_idle):
        print(f"machine still busy (load {load_average()}); measuring anyway", file=sys.stderr)
    try:
        result = run_benchmark(QUICK if args.quick else FULL, out)
    except RatioError as exc:
        print(f"bench: error: {exc}", file=sys.stderr)
        return 1
    print("\n" + render_table(result))
    if out is not None:
        table = out == DEFAULT_OUT and update_readme(result, Path(args.readme))
        print(f"\nwrote {out}" + (f" and the table in {args.readme}" if table else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
