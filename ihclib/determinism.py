"""Bit-identical training on CPU: the thread setting it needs, a reproducer and what it costs.

Why training was not reproducible (issue 16): with oneDNN, TensorFlow hands each op its
intra-op thread pool through ``MklDnnThreadPool``, whose ``get_in_parallel()`` is true when the
op happens to run on a thread of that pool; oneDNN then runs the op on one thread, otherwise on
all of them. Which thread an op lands on is up to the scheduler, and some of the paper
network's gradients are summed in a different order on one thread than on two: the weight
gradients of its layers with 3 input or output channels (the first convolution, the last
transposed one, the 2x2 output convolution) and the bias gradients of its half-resolution
layers (measured layer by layer at 64 px, 1 against 2 threads; every forward output matched).
So runs drifted apart in the last bit after a few steps. Op determinism does not cover this.
One intra-op thread makes every op run on one thread whatever the scheduler does, and the
result no longer depends on the machine's core count either.

One intra-op thread was not enough (issue 13): two ops still ran at once on TensorFlow's
inter-op threads, and then, rarely on a quiet machine and often on a busy one, a training step
came out different in the last bit (paper_unet, 64 px, batch 16, 3 x 20 steps per process:
3 of 17 processes quiet, 12 of 26 beside a busy loop on one core; the first differing loss
fell at a random step, 9 to 14, so it is a race while running, not a different kernel:
oneDNN's verbose log listed the same primitives in every run). The op that races was not
found. With one inter-op thread (no two ops at once) it never happened.

So training runs one op at a time, on two intra-op threads (``TRAINING_THREADS``). One op at a
time also ended the issue-16 lottery in every run measured (our reading, not traced inside
TensorFlow: ops are then started by the inter-op thread, never on an intra-op one, so oneDNN
runs each on both intra-op threads). Measured (``check --threads
pinned``, paper_unet, 3 x 20 steps per fresh process): every run of every process gave the same
weights, quiet and beside a busy loop (counts in the README, "Reproducibility"), and so did
crosschannel_unet. The number is fixed at two, not one per core: the bits follow the number of
threads, not the cores under them (the same weights on one core, ``taskset -c 0``, as on two;
oneDNN's kernels still differ between CPU families). Two threads, because the machine the study is made
on has two cores: one intra-op thread (``serial``, the setting until this change) left the
second core idle and trained at 0.7x the speed; it gives other bits, so every committed result
was regenerated with two. The tool's inference (``ihclib denoise``) is not pinned, for speed;
the study's notebooks are, evaluation included (:func:`ihclib.study.setup.pin_study_threads`):
a quick-profile rerun once differed in the last bits of one model's scores while every
training history matched.

``python -m ihclib.determinism check`` trains a model a few steps several times in one
process and compares the weights bit for bit (``--threads`` picks the setting, ``--busy``
keeps a core busy meanwhile, which makes the race of ``intra1`` frequent; ``serial`` is one thread of each); ``speed`` measures
training tiles/s with and without the pinned setting, each in a fresh process (thread settings
are process-wide).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
import warnings

import numpy as np

TRAINING_THREADS = {"intra_op": 2, "inter_op": 1}


def pin_training_threads() -> dict:
    """Give TensorFlow two intra-op threads and one inter-op thread (``TRAINING_THREADS``), if it
    has not started yet; say what is in effect.

    Returns ``{"intra_op": n, "inter_op": m, "deterministic": bool}`` (0 = TensorFlow's default,
    one thread per core). Fixed numbers, not the core count: oneDNN splits an op's work by the
    threads it has, so the bits depend on the number of threads, not on the cores under them.
    Once TensorFlow has run an op the setting is fixed for the process: then a warning says
    training may not be bit-reproducible, and the result says so.
    """
    import tensorflow as tf

    threading = tf.config.threading
    try:
        threading.set_intra_op_parallelism_threads(TRAINING_THREADS["intra_op"])
        threading.set_inter_op_parallelism_threads(TRAINING_THREADS["inter_op"])
    except RuntimeError:  # the runtime is up: the setting can no longer change
        pass
    now = {"intra_op": threading.get_intra_op_parallelism_threads(),
           "inter_op": threading.get_inter_op_parallelism_threads()}
    deterministic = now == TRAINING_THREADS
    if not deterministic:
        warnings.warn(f"TensorFlow already runs with {now['intra_op'] or 'one per core'} intra-op and "
                      f"{now['inter_op'] or 'one per core'} inter-op threads, not "
                      f"{TRAINING_THREADS['intra_op']} and {TRAINING_THREADS['inter_op']}: this training run may not be "
                      "bit-reproducible (train in a fresh process, or call "
                      "ihclib.determinism.pin_training_threads() before anything else uses TensorFlow)",
                      stacklevel=2)
    return {**now, "deterministic": deterministic}


def weights_digest(model) -> str:
    """SHA-256 of every weight of ``model``, in order (equal digests = bit-identical weights)."""
    h = hashlib.sha256()
    for w in model.get_weights():
        h.update(np.ascontiguousarray(w).tobytes())
    return h.hexdigest()


def train_steps(model_name: str, steps: int, tile_size: int, batch_size: int, seed: int = 0) -> tuple[str, float]:
    """Train ``model_name`` ``steps`` steps on fixed random tiles as ``ihclib.train`` does
    (seeded, op determinism, Adam, MSE); returns the weights' digest and the tiles/s of the
    steps after the first (which traces the graph)."""
    import keras
    import tensorflow as tf

    from .model import build_model

    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    rng = np.random.default_rng(seed)
    x = rng.random((steps * batch_size, tile_size, tile_size, 3), dtype=np.float32)
    y = np.clip(x + 0.1, 0.0, 1.0).astype(np.float32)
    model = build_model(model_name, None)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse", metrics=["accuracy"])
    model.train_on_batch(x[:batch_size], y[:batch_size])
    start = time.perf_counter()
    for i in range(1, steps):
        model.train_on_batch(x[i * batch_size:(i + 1) * batch_size], y[i * batch_size:(i + 1) * batch_size])
    rate = (steps - 1) * batch_size / max(time.perf_counter() - start, 1e-9)
    return weights_digest(model), rate


def speed(model_name: str = "paper_unet", tile_size: int = 64, batch_size: int = 16, steps: int = 12,
          rounds: int = 2) -> dict:
    """Training tiles/s with the pinned threads and with TensorFlow's default, each run in a
    fresh process, alternating ``rounds`` times (the machine may be shared: compare the best).

    Returns ``{"pinned": [...], "default": [...], "cost": 1 - best pinned / best default,
    "load_1min": ...}``; what the benchmark (``benchmarks/bench.py``) can report.
    """
    out: dict = {"model": model_name, "tile_size": tile_size, "batch_size": batch_size, "steps": steps,
                 "pinned": [], "default": []}
    for _ in range(rounds):
        for mode in ("pinned", "default"):
            res = _run_self(["check", "--model", model_name, "--steps", str(steps), "--tile", str(tile_size),
                             "--batch", str(batch_size), "--runs", "1", "--threads", mode])
            out[mode].append(round(res["tiles_per_s"][0], 3))
    out["cost"] = round(1.0 - max(out["pinned"]) / max(out["default"]), 3)
    out["load_1min"] = round(os.getloadavg()[0], 2)
    return out


def _run_self(args: list[str]) -> dict:
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    proc = subprocess.run([sys.executable, "-m", "ihclib.determinism", *args], capture_output=True, text=True,
                          env=env, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def set_threads(setting: str) -> dict:
    """Apply a ``check --threads`` setting before TensorFlow starts; the threads in effect."""
    if setting == "pinned":
        return pin_training_threads()
    import tensorflow as tf

    if setting in ("intra1", "serial"):
        tf.config.threading.set_intra_op_parallelism_threads(1)
    if setting == "serial":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    if setting == "inter1":
        tf.config.threading.set_inter_op_parallelism_threads(1)
    return {"setting": setting, "intra_op": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter_op": tf.config.threading.get_inter_op_parallelism_threads()}


def main(argv: list[str] | None = None) -> int:
    """``check``: train ``--runs`` times, print the digests as JSON (exit 1 if they differ);
    ``speed``: the cost of the pinned threads, as JSON."""
    p = argparse.ArgumentParser(prog="python -m ihclib.determinism", description=__doc__.splitlines()[0])
    p.add_argument("what", choices=["check", "speed"])
    p.add_argument("--model", default="paper_unet")
    p.add_argument("--steps", type=int, default=12)
    p.add_argument("--tile", type=int, default=64)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--runs", type=int, default=2)
    p.add_argument("--threads", choices=["pinned", "serial", "intra1", "inter1", "default"], default="pinned",
                   help="pinned: two intra-op threads and one inter-op thread, as ihclib.train trains; serial: one "
                        "of each (the setting before); intra1: one intra-op thread only (it races); inter1: one "
                        "inter-op thread, default intra-op threads (one per core); default: TensorFlow's")
    p.add_argument("--busy", action="store_true",
                   help="keep one core busy with another process meanwhile (a shared machine: races show up)")
    a = p.parse_args(argv)
    if a.what == "speed":
        print(json.dumps(speed(a.model, a.tile, a.batch, a.steps)))
        return 0
    threads = set_threads(a.threads)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if a.busy else None
    try:
        runs = [train_steps(a.model, a.steps, a.tile, a.batch) for _ in range(a.runs)]
    finally:
        if busy is not None:
            busy.kill()
            busy.wait()
    digests = [d for d, _ in runs]
    print(json.dumps({"model": a.model, "threads": threads, "busy": a.busy, "digests": digests,
                      "tiles_per_s": [r for _, r in runs], "identical": len(set(digests)) == 1}))
    return 0 if len(set(digests)) == 1 else 1


if __name__ == "__main__":
    sys.exit(main())
