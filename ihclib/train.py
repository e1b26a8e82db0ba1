"""Training: noisy/clean pairs made on the fly, Keras fit with the paper's loss and metric, saving.

The training pipeline is a tf.data graph over the clean training tiles: every epoch draws fresh
augmentation (flips, 90-degree rotations) and fresh salt-and-pepper noise whose amount is drawn
per tile from the profile's ``train_amount_range``. All randomness is stateless and keyed by
(seed, element index), so a run is a pure function of its seed. Validation pairs are made once
with ``ihclib.noise`` (numpy, the profile's fixed noise), so every epoch and every model is
scored on the same noisy tiles.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Mapping, Protocol, Sequence

import keras
import numpy as np
import pandas as pd
import tensorflow as tf

from .determinism import pin_training_threads
from .images import atomic_write_text
from .model import MODELS, build_model, count_flops, save_model
from .noise import NoiseSpec, noisy_copies
from .registry import DESCRIPTIONS, INPUT_MULTIPLE


class TileDataset(Protocol):
    """What :func:`train` reads of a tile set (the study's ``ihclib.study.data.TileDataset`` is
    one): the tool defines the shape it needs, so it never imports the study."""

    tile_size: int
    sources: Sequence[Any]  # each with .name, .height, .width: tells two folders apart

    def load(self, split: str, max_pixels: float | None = None, seed: int = 0) -> np.ndarray: ...

    def load_by_category(self, split: str, max_pixels: float | None = None, seed: int = 0) -> Mapping[str, np.ndarray]: ...

    def over(self, split: str, max_pixels: float | None) -> bool: ...

    def describe(self) -> dict: ...


class Profile(Protocol):
    """What :func:`train` reads of a run size (the study's ``ihclib.study.profiles.Profile`` is one)."""

    name: str
    tile_size: int
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    learning_rate: float
    noise: NoiseSpec
    train_amount_range: tuple[float, float]
    seed: int
    augment: bool
    early_stopping_patience: int
    width: int | None  # U-Net width of the models that have one (ihclib.model.WIDTH_MODELS); None: 24
    max_train_pixels: int | None  # tile pixels held in memory for training / validation (None: all)
    max_val_pixels: int | None

    def to_dict(self) -> dict: ...


HISTORY_COLUMNS = ["accuracy", "loss", "val_accuracy", "val_loss"]


# ---------------------------------------------------------------- noise and pipeline


def salt_and_pepper_tf(
    image: tf.Tensor,
    amount: tf.Tensor | float,
    seed: tf.Tensor,
    salt_vs_pepper: float = 0.5,
    per_pixel: bool = False,
) -> tf.Tensor:
    """Salt-and-pepper with ihclib.noise semantics, as TF ops (it runs inside the tf.data graph).

    Per channel (default) every value is hit with probability ``amount``; a hit becomes 1 with
    probability ``salt_vs_pepper``, else 0, as ``skimage.util.random_noise(mode="s&p")`` does.
    ``per_pixel`` hits whole pixels instead. ``seed`` is a shape-[2] integer tensor: the draws
    are stateless, so the same seed gives the same noise in any order and on any thread, which
    numpy noise called through ``tf.py_function`` would not guarantee (and would hold the GIL).
    """
    image = tf.convert_to_tensor(image)
    shape = tf.shape(image)
    if per_pixel:
        shape = tf.concat([shape[:-1], [1]], axis=0)
    s_hit, s_salt = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    hit = tf.random.stateless_uniform(shape, s_hit) < tf.cast(amount, tf.float32)
    salt = tf.random.stateless_uniform(shape, s_salt) < salt_vs_pepper
    impulse = tf.cast(salt, image.dtype)
    return tf.where(hit, impulse, image)


@dataclass(frozen=True)
class Augmentation:
    """How clean training tiles are varied before the noise: the ways real slides differ.

    Applied in this order, each draw stateless (keyed by seed and element index):
    flips and 90-degree rotations; stain jitter (each channel's optical density scaled by
    U(1 - stain, 1 + stain), which changes the amount of hematoxylin/DAB colour); gamma
    exp(U(-gamma, gamma)); contrast U(1 - contrast, 1 + contrast) around mid-grey and
    brightness U(-brightness, brightness); with probability ``p_saturate`` an over-exposure
    that clips the bright background to pure white (gain U(1.05, 1.35) plus U(0, 0.08)); with
    probability ``p_jpeg`` a JPEG re-compression at quality U(jpeg_quality); finally
    quantisation to 8 bits, as every real scan is. ``enabled`` False keeps only flips/rotations.
    """

    enabled: bool = True
    stain: float = 0.15
    gamma: float = 0.25
    contrast: float = 0.15
    brightness: float = 0.06
    p_saturate: float = 0.25
    p_jpeg: float = 0.5
    jpeg_quality: tuple[int, int] = (40, 95)

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


def augment_tile(x: tf.Tensor, key: tf.Tensor, aug: Augmentation) -> tf.Tensor:
    """One clean tile varied as ``aug`` says (see :class:`Augmentation`); ``key`` a shape-[2] seed."""
    s = tf.unstack(tf.random.experimental.stateless_split(key, 10))
    x = tf.image.stateless_random_flip_left_right(x, s[0])
    x = tf.image.rot90(x, tf.random.stateless_uniform([], s[1], 0, 4, dtype=tf.int32))
    if not aug.enabled:
        return x
    uniform = lambda seed, lo, hi, shape=(): tf.random.stateless_uniform(shape, seed, lo, hi)  # noqa: E731
    od = -tf.math.log(tf.maximum(x, 1.0 / 255.0))  # optical density per channel (Beer-Lambert)
    x = tf.exp(-od * uniform(s[2], 1.0 - aug.stain, 1.0 + aug.stain, [3]))
    x = tf.pow(x, tf.exp(uniform(s[3], -aug.gamma, aug.gamma)))
    x = (x - 0.5) * uniform(s[4], 1.0 - aug.contrast, 1.0 + aug.contrast) + 0.5
    x = tf.clip_by_value(x + uniform(s[5], -aug.brightness, aug.brightness), 0.0, 1.0)
    saturate = uniform(s[6], 0.0, 1.0) < aug.p_saturate
    gain, lift = tf.unstack(uniform(s[7], 0.0, 1.0, [2]))
    x = tf.where(saturate, tf.clip_by_value(x * (1.05 + 0.3 * gain) + 0.08 * lift, 0.0, 1.0), x)
    lo, hi = aug.jpeg_quality
    jpeg = tf.image.stateless_random_jpeg_quality(x, lo, hi, s[8])
    x = tf.where(uniform(s[9], 0.0, 1.0) < aug.p_jpeg, tf.reshape(jpeg, tf.shape(x)), x)
    return tf.round(x * 255.0) / 255.0


def make_train_pipeline(
    tiles: np.ndarray | Mapping[str, np.ndarray],
    batch_size: int,
    seed: int,
    amount_range: tuple[float, float],
    noise: NoiseSpec = NoiseSpec(),
    augment: Augmentation | bool = True,
) -> tf.data.Dataset:
    """Endless batches of (noisy, clean) float32 tiles from clean tiles (N, t, t, 3).

    ``tiles`` may be a mapping source -> tiles: each source is then drawn equally often
    (``sample_from_datasets``, seeded), however many tiles it has, so one large slide does not
    drown the others. Each source's tiles are shuffled each pass (seeded), varied as
    :class:`Augmentation` says (``True`` = the default augmentation, ``False`` = none), and
    noised with an amount ~ U(amount_range) per tile. Element ``k`` of the stream uses the
    stateless seed (seed, k), so noise is fresh every epoch and identical between runs with
    the same seed.
    """
    if noise.kind != "s&p":
        raise ValueError(f"training noise must be salt-and-pepper, got {noise.kind!r}")
    groups = dict(tiles) if isinstance(tiles, Mapping) else {"all": tiles}
    groups = {k: v for k, v in groups.items() if len(v)}
    if not groups:
        raise ValueError("no training tiles")
    aug = augment if isinstance(augment, Augmentation) else Augmentation(enabled=bool(augment))
    lo, hi = amount_range
    streams = [
        tf.data.Dataset.from_tensor_slices(np.asarray(t, np.float32))
        .shuffle(len(t), seed=seed + i, reshuffle_each_iteration=True).repeat()
        for i, t in enumerate(groups.values())
    ]
    clean = streams[0] if len(streams) == 1 else tf.data.Dataset.sample_from_datasets(streams, seed=seed)
    stream = tf.data.Dataset.zip((clean, tf.data.Dataset.counter()))

    def make_pair(x, k):
        key = tf.stack([tf.constant(seed, tf.int64), k])
        s_aug, s_amount, s_noise = tf.unstack(tf.random.experimental.stateless_split(key, 3))
        if augment is not False:
            x = augment_tile(x, s_aug, aug)
        amount = tf.random.stateless_uniform([], s_amount, lo, hi) if hi > lo else tf.constant(lo, tf.float32)
        noisy = salt_and_pepper_tf(x, amount, s_noise, noise.salt_vs_pepper, noise.per_pixel)
        return noisy, x

    ds = stream.map(make_pair, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(_data_options())


def make_val_pairs(clean: np.ndarray, noise: NoiseSpec, seed: int) -> np.ndarray:
    """Noisy copies of the validation tiles, drawn once with ``ihclib.noise`` (seeded)."""
    return noisy_copies(clean, noise, seed)


def _data_options() -> tf.data.Options:
    opts = tf.data.Options()
    opts.deterministic = True
    # the tiles are in memory on one worker: split batches, not files, across replicas
    opts.experimental_distribute.auto_shard_policy = tf.data.experimental.AutoShardPolicy.DATA
    return opts


# ---------------------------------------------------------------- training


def default_strategy() -> tf.distribute.Strategy:
    """MirroredStrategy over all GPUs when there are several, else the default (one device)."""
    gpus = tf.config.list_logical_devices("GPU")
    return tf.distribute.MirroredStrategy() if len(gpus) > 1 else tf.distribute.get_strategy()


def set_determinism(seed: int) -> dict:
    """Seed Python, numpy, TF and Keras, make TF ops deterministic and pin TensorFlow to one
    intra- and one inter-op thread (process-wide; see :mod:`ihclib.determinism`); returns the
    thread settings in effect."""
    keras.utils.set_random_seed(seed)
    tf.config.experimental.enable_op_determinism()
    return pin_training_threads()


FINGERPRINT_FILE = "fingerprint.json"


def run_fingerprint(model_name: str, dataset: TileDataset, profile: Profile, seed: int) -> dict:
    """What decides a training run's outcome: model, data, profile and seed, as plain JSON values.

    Stored as ``fingerprint.json`` in the run folder; an interrupted run is resumed, and a
    finished one reused (:mod:`ihclib.study.runs`), only when the fingerprint is the same.
    ``dataset.describe()`` names the folder and counts; the source list (name and size of
    every image) tells two folders of the same name apart.
    """
    fp = {
        "model": model_name,
        "data": dataset.describe(),
        "sources": [[s.name, s.height, s.width] for s in dataset.sources],
        "profile": profile.to_dict(),
        "seed": int(seed),
    }
    return json.loads(json.dumps(fp, default=str))  # tuples as lists: compares equal to the stored copy


def read_fingerprint(out_dir: str | os.PathLike) -> dict | None:
    """The fingerprint stored in a run folder, or None (none, or unreadable)."""
    try:
        fp = json.loads((Path(out_dir) / FINGERPRINT_FILE).read_text())
    except (OSError, ValueError):
        return None
    return fp if isinstance(fp, dict) else None


def _discard_other_run(out: Path, fingerprint: dict) -> None:
    """Remove the resume state (backup/, log.csv, best weights) of a run with another fingerprint.

    BackupAndRestore would otherwise continue the other run's weights and epoch count, and the
    sidecar would describe this run's data and seed for them.
    """
    backup = out / "backup"
    if backup.exists() and any(backup.iterdir()) and read_fingerprint(out) != fingerprint:
        print(f"{out}: the interrupted run there had other data, profile, model or seed; "
              "discarding it and starting afresh")
        shutil.rmtree(backup)
        for name in ("log.csv", "best.weights.h5"):
            (out / name).unlink(missing_ok=True)
    atomic_write_text(out / FINGERPRINT_FILE, json.dumps(fingerprint, indent=2) + "\n")


@dataclass
class TrainResult:
    """What a training run produced (the model holds the best-val_loss weights)."""

    model_name: str
    model: keras.Model
    history: pd.DataFrame  # index epoch; columns accuracy, loss, val_accuracy, val_loss
    out_dir: Path
    model_path: Path
    sidecar_path: Path
    history_path: Path
    log_path: Path
    wall_time_s: float  # time in model.fit (includes graph tracing)
    tiles_per_s: float  # training tiles per second of wall time
    sidecar: dict = field(default_factory=dict)

    @property
    def best(self) -> pd.Series:
        """The history row with the lowest val_loss."""
        return self.history.loc[self.history.val_loss.idxmin()]


@dataclass
class _Data:
    """The tf.data inputs of one run and what the sidecar says about them."""

    train: tf.data.Dataset
    val: tf.data.Dataset
    steps: int
    augmentation: Augmentation
    sources: dict[str, int]  # training tiles per source
    val_tiles: int
    sampled: dict[str, bool]  # whether a split held more than the profile's limit (an even share used)


@dataclass
class _Resume:
    """Where the run's callbacks write, and how far an interrupted run had come."""

    log_path: Path
    best_path: Path
    backup_dir: Path
    resuming: bool
    epochs_before: int
    threshold: float | None  # best val_loss before the interruption


def train(
    model_name: str,
    dataset: TileDataset,
    profile: Profile,
    out_dir: str | os.PathLike,
    strategy: tf.distribute.Strategy | None = None,
    seed: int | None = None,
    early_stopping: bool = False,
    verbose: int = 1,
    callbacks: list[keras.callbacks.Callback] | None = None,
) -> TrainResult:
    """Train one registry model on ``dataset``'s training tiles and save it in ``out_dir``.

    Parameters
    ----------
    model_name, dataset : a key of ``ihclib.model.MODELS``; tiles of ``profile.tile_size``.
    profile : batch, epochs, steps, learning rate, noise and augmentation.
    out_dir : gets ``<model>.keras`` + ``<model>.json`` (best weights, sidecar), ``history.csv``
        (Table 1 format), ``log.csv``, ``fingerprint.json``; an earlier run there is replaced.
    strategy : places the model (default :func:`default_strategy`); ``profile.batch_size`` is
        the global batch, split across replicas.
    seed : seeds everything (default ``profile.seed``); the validation noise always uses
        ``profile.seed``, the same for every model and seed.
    early_stopping, verbose : stop after ``profile.early_stopping_patience`` epochs without
        progress; Keras progress output.
    callbacks : run after the project's own: BackupAndRestore (``backup/``: the same call after
        an interruption resumes at the last finished epoch), CSVLogger, best-weights checkpoint.

    Returns
    -------
    TrainResult : the model with its lowest-val_loss weights, the history, the paths written.

    Notes
    -----
    Loss MSE, Adam, and the paper's Keras "accuracy" (Table 1). Same seed, same CPU model:
    bit-identical weights (op determinism, two intra-op threads and one inter-op thread: :mod:`ihclib.determinism`;
    the sidecar's ``training.threads`` says whether it held; a resumed run is not).
    """
    _check_arguments(model_name, dataset, profile)
    seed, out = profile.seed if seed is None else int(seed), Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _discard_other_run(out, run_fingerprint(model_name, dataset, profile, seed))
    threads = set_determinism(seed)
    strategy = strategy or default_strategy()
    data = _make_inputs(dataset, profile, seed)
    model = _compiled_model(model_name, profile, strategy)
    resume = _resume_state(out)
    wall = _fit(model, data, profile, _callbacks(resume, profile, early_stopping, callbacks), verbose)
    history = _finish_history(model, resume, out)
    tiles_per_s = max(1, len(history) - resume.epochs_before) * data.steps * profile.batch_size / wall
    sidecar = training_sidecar(model_name, dataset, profile, seed, history, data, {
        "early_stopping": early_stopping, "resumed": resume.resuming, "wall_time_s": round(wall, 2),
        "tiles_per_s": round(tiles_per_s, 2), "replicas": strategy.num_replicas_in_sync,
        "flops_per_tile": count_flops(model, dataset.tile_size), "threads": threads})
    model_path = out / f"{model_name}.keras"
    sidecar = save_model(model, model_path, sidecar)
    resume.best_path.unlink(missing_ok=True)  # its weights are in the saved model now
    return TrainResult(model_name, model, history, out, model_path, model_path.with_suffix(".json"),
                       out / "history.csv", resume.log_path, wall, tiles_per_s, sidecar)


def _compiled_model(model_name: str, profile: Profile, strategy: tf.distribute.Strategy) -> keras.Model:
    """The registry model, built for any input size (the saved model tiles freely) under
    ``strategy`` and compiled as the paper did: MSE, Adam, Keras "accuracy"."""
    with strategy.scope():
        # lower_widths is crosschannel_unet's alone (another --model on such a profile goes without)
        lower = profile.lower_widths if model_name == "crosschannel_unet" else None
        model = build_model(model_name, None, width=profile.width, lower_widths=lower)
        model.compile(optimizer=keras.optimizers.Adam(profile.learning_rate), loss="mse", metrics=["accuracy"])
    return model


def _check_arguments(model_name: str, dataset: TileDataset, profile: Profile) -> None:
    if model_name not in MODELS:
        raise ValueError(f"unknown model {model_name!r}; choose from {', '.join(MODELS)}")
    if dataset.tile_size != profile.tile_size:
        raise ValueError(f"dataset tiles are {dataset.tile_size}px but profile {profile.name!r} wants {profile.tile_size}px")


def _make_inputs(dataset: TileDataset, profile: Profile, seed: int) -> _Data:
    """The endless training stream (sources drawn equally often) and the fixed validation pairs."""
    # a folder larger than the profile's limits trains on an even share of its tiles (seeded)
    train_groups = dataset.load_by_category("train", profile.max_train_pixels, seed=profile.seed)
    n_train = sum(len(t) for t in train_groups.values())
    val_clean = dataset.load("val", max_pixels=profile.max_val_pixels, seed=profile.seed)
    if n_train == 0 or len(val_clean) == 0:
        raise ValueError(f"need training and validation tiles, got {n_train} / {len(val_clean)}")
    augmentation = Augmentation(enabled=profile.augment)
    train_ds = make_train_pipeline(train_groups, profile.batch_size, seed, profile.train_amount_range, profile.noise,
                                   augment=augmentation)
    val_noisy = make_val_pairs(val_clean, profile.noise, profile.seed)
    val_ds = (tf.data.Dataset.from_tensor_slices((val_noisy, val_clean)).batch(profile.batch_size)
              .with_options(_data_options()))
    steps = profile.steps_per_epoch or math.ceil(n_train / profile.batch_size)
    sampled = {"train": dataset.over("train", profile.max_train_pixels),
               "val": dataset.over("val", profile.max_val_pixels)}
    return _Data(train_ds, val_ds, steps, augmentation, {k: len(v) for k, v in train_groups.items()},
                 len(val_clean), sampled)


def _resume_state(out: Path) -> _Resume:
    """An interrupted run (``backup/`` not empty) resumes; a finished one's log starts afresh."""
    log_path, best_path, backup_dir = out / "log.csv", out / "best.weights.h5", out / "backup"
    resuming = backup_dir.exists() and any(backup_dir.iterdir())
    threshold, epochs_before = None, 0
    if resuming and log_path.exists():
        done = pd.read_csv(log_path)
        epochs_before = len(done)
        threshold = float(done.val_loss.min()) if len(done) else None
    elif log_path.exists():
        log_path.unlink()
    return _Resume(log_path, best_path, backup_dir, resuming, epochs_before, threshold)


def _callbacks(resume: _Resume, profile: Profile, early_stopping: bool,
               extra: list[keras.callbacks.Callback] | None) -> list[keras.callbacks.Callback]:
    """Backup for resuming, the CSV log, the best-weights checkpoint, early stopping if asked, then ``extra``."""
    callbacks = [
        keras.callbacks.BackupAndRestore(str(resume.backup_dir)),
        keras.callbacks.CSVLogger(str(resume.log_path), append=resume.resuming),
        keras.callbacks.ModelCheckpoint(str(resume.best_path), monitor="val_loss", mode="min", save_best_only=True,
                                        save_weights_only=True, initial_value_threshold=resume.threshold),
    ]
    if early_stopping:
        callbacks.append(keras.callbacks.EarlyStopping(monitor="val_loss", patience=profile.early_stopping_patience))
    return callbacks + list(extra or [])


def _fit(model: keras.Model, data: _Data, profile: Profile, callbacks: list, verbose: int) -> float:
    """``model.fit``; returns its wall time in seconds."""
    start = time.perf_counter()
    model.fit(data.train, validation_data=data.val, epochs=profile.epochs, steps_per_epoch=data.steps,
              callbacks=callbacks, verbose=verbose, shuffle=False)  # the pipeline shuffles
    return time.perf_counter() - start


def _finish_history(model: keras.Model, resume: _Resume, out: Path) -> pd.DataFrame:
    """Load the best weights and write ``history.csv`` from the CSV log, which holds every epoch,
    also those before a resume (fit's History would not)."""
    history = pd.read_csv(resume.log_path).set_index("epoch")[HISTORY_COLUMNS]
    if resume.best_path.exists():
        model.load_weights(resume.best_path)
    atomic_write_text(out / "history.csv", history.to_csv())
    return history


def training_sidecar(model_name: str, dataset: TileDataset, profile: Profile, seed: int, history: pd.DataFrame,
                     data: _Data, training: dict) -> dict:
    """What a saved model's JSON sidecar says about its training: architecture, profile, noise,
    augmentation, data, seed, the best and last epochs' metrics and ``training`` (how it ran:
    budget, wall time, tiles/s, replicas, threads)."""
    best = history.loc[history.val_loss.idxmin()]
    return {
        "architecture": model_name,
        "description": DESCRIPTIONS[model_name],
        "input_multiple": INPUT_MULTIPLE[model_name],
        "tile_size": dataset.tile_size,
        "profile": profile.to_dict(),
        "noise": {
            "train": {**profile.noise.to_dict(), "amount_range": list(profile.train_amount_range),
                      "note": "amount drawn per tile, fresh every epoch",
                      "augmentation": data.augmentation.to_dict(), "sources": data.sources},
            "validation": profile.noise.to_dict(),
        },
        "data": dataset.describe(),
        "seed": seed,
        "final_metrics": {
            "best_epoch": int(best.name),
            **{k: float(best[k]) for k in HISTORY_COLUMNS},
            "last_epoch": {k: float(history.iloc[-1][k]) for k in HISTORY_COLUMNS},
        },
        "training": {"epochs_run": len(history), "steps_per_epoch": data.steps, "batch_size": profile.batch_size,
                     # the tiles held in memory (all of the data's tiles unless "sampled" says otherwise)
                     "tiles_used": {"train": sum(data.sources.values()), "val": data.val_tiles, "sampled": data.sampled},
                     **training},
    }
