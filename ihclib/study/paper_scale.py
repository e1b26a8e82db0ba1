"""The paper's network trained at a GPU's scale, on any Keras backend, and scored as notebook 05 scores.

The CPU study's ``paper`` profile trains ``paper_unet`` (17.8 M parameters) for 5 x 14 steps of 16
tiles of 256 px: far too few to say what the paper's network can do. The GPU machines lent to this
project have JAX but no TensorFlow (its wheel is too large to carry there), so this module trains
the same network (``ihclib.model``, pure Keras) on the JAX backend with the ``paper`` profile's data
split, validation pairs, loss, optimiser, learning rate, batch and metric, for as many steps as a
time budget allows, and scores it on the same held-out tiles with the same seeded noise as
notebook 05. Its tables therefore sit beside ``reports/paper/tables/comparison.csv``: the noisy
input's rows must agree exactly (checked by :func:`merge_with_cpu`), and the classical filters are
taken from there.

What differs from ``ihclib.train`` (say it, do not hide it): the training pairs are made by
:func:`pair_batches` in numpy, since ``ihclib.train``'s pipeline is a tf.data graph. It draws the
same kinds of variation (flips, rotations, stain, gamma, contrast, brightness, over-exposure, JPEG,
8-bit quantisation; :class:`ihclib.train.Augmentation`'s ranges) and the same salt-and-pepper
noise (amount ~ U(train_amount_range) per tile), from other random streams, and sources are drawn
in proportion to their tiles rather than equally often. GPU kernels differ from the CPU's, so a
GPU run does not repeat a CPU run. On one GPU it repeats itself bit for bit only with XLA's
deterministic ops (measured on an H100: ``reports/gpu_repeat/``), so ``train`` turns them on
(:func:`with_deterministic_ops`) unless ``--no-deterministic``, at about 1.35 times the time per
step there.

Run it (on the GPU machine: ``KERAS_BACKEND=jax``)::

    python -m ihclib.study.paper_scale train --out DIR --minutes 6 --commit $(git rev-parse HEAD)
    python -m ihclib.study.paper_scale table DIR [DIR ...] --cpu reports/paper --reports reports/paper_gpu

Does a GPU run repeat itself? Train twice with one seed and a fixed number of epochs
(``--max-epochs``), then ``compare`` says whether the histories, the held-out scores and the
weights (``weights_sha256`` in ``run.json``) are identical, and by how much they differ if not::

    python -m ihclib.study.paper_scale compare DIR_A DIR_B [--reports reports/gpu_repeat]
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

from ihclib.noise import NoiseSpec, noisy_copies, salt_and_pepper
from ihclib.study.evaluate import NOISY, batched, evaluate_per_image, long_table, noise_sweep
from ihclib.study.profiles import Profile, get_profile

# ihclib.train.Augmentation's defaults (that module imports TensorFlow, which this one must not)
AUGMENT = {"stain": 0.15, "gamma": 0.25, "contrast": 0.15, "brightness": 0.06, "p_saturate": 0.25,
           "p_jpeg": 0.5, "jpeg_quality": (40, 95)}
MODEL = "paper_unet"
HISTORY_COLUMNS = ["accuracy", "loss", "val_accuracy", "val_loss"]


def jpeg_roundtrip(x: np.ndarray, quality: int) -> np.ndarray:
    """``x`` (h, w, 3 in [0, 1]) through JPEG at ``quality`` (Pillow), back to float."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.round(x * 255).astype(np.uint8)).save(buf, format="JPEG", quality=int(quality))
    return np.asarray(Image.open(io.BytesIO(buf.getvalue())).convert("RGB"), np.float32) / 255.0


def augment_numpy(x: np.ndarray, rng: np.random.Generator, aug: dict = AUGMENT) -> np.ndarray:
    """One clean tile varied as :func:`ihclib.train.augment_tile` varies it, in numpy."""
    x = x[:, ::-1] if rng.random() < 0.5 else x
    x = np.rot90(x, int(rng.integers(0, 4)))
    od = -np.log(np.maximum(x, 1.0 / 255.0))  # optical density per channel (Beer-Lambert)
    x = np.exp(-od * rng.uniform(1 - aug["stain"], 1 + aug["stain"], 3))
    x = x ** np.exp(rng.uniform(-aug["gamma"], aug["gamma"]))
    x = (x - 0.5) * rng.uniform(1 - aug["contrast"], 1 + aug["contrast"]) + 0.5
    x = np.clip(x + rng.uniform(-aug["brightness"], aug["brightness"]), 0.0, 1.0)
    if rng.random() < aug["p_saturate"]:
        x = np.clip(x * (1.05 + 0.3 * rng.random()) + 0.08 * rng.random(), 0.0, 1.0)
    if rng.random() < aug["p_jpeg"]:
        x = jpeg_roundtrip(x, rng.integers(aug["jpeg_quality"][0], aug["jpeg_quality"][1] + 1))
    return (np.round(x * 255.0) / 255.0).astype(np.float32)


def make_pairs(clean: np.ndarray, batch_size: int, amount_range: tuple[float, float], noise: NoiseSpec,
               seed: int, epoch: int, index: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch ``index`` of ``epoch``: (noisy, clean) pairs, a pure function of its arguments."""
    rng = np.random.default_rng([seed, epoch, index])
    picks = rng.integers(0, len(clean), batch_size)
    ys = np.stack([augment_numpy(clean[i], rng) for i in picks])
    xs = np.stack([salt_and_pepper(y, rng.uniform(*amount_range), rng, noise.salt_vs_pepper, noise.per_pixel)
                   for y in ys])
    return xs.astype(np.float32), ys


def pair_batches(clean: np.ndarray, profile: Profile, steps: int, seed: int, epoch: int, workers: int):
    """One epoch of :func:`make_pairs` batches as a ``keras.utils.PyDataset`` (threads: numpy and
    Pillow release the GIL, and the dataset must not fork a process that holds the GPU)."""
    import keras

    class PairBatches(keras.utils.PyDataset):
        def __len__(self) -> int:
            return steps

        def __getitem__(self, index: int):
            return make_pairs(clean, profile.batch_size, profile.train_amount_range, profile.noise, seed, epoch,
                              index)

    return PairBatches(workers=workers, use_multiprocessing=False, max_queue_size=4 * workers)


def train(profile: Profile, data_dir: str | None, out: Path, work: Path, minutes: float, steps_per_epoch: int,
          max_epochs: int, seed: int, workers: int, log=print):
    """Train ``paper_unet`` until ``minutes`` are spent (whole epochs) or ``max_epochs``; keep the
    weights of the lowest val_loss (checkpoint in ``work``: 71 MB); ``out/history.csv`` is
    rewritten after every epoch. Returns (model, history, facts)."""
    import keras

    from ihclib.model import build_model

    keras.utils.set_random_seed(seed)
    ds = profile.dataset(data_dir)
    clean = ds.load("train").astype(np.float32)
    val_clean = ds.load("val").astype(np.float32)
    val_noisy = noisy_copies(val_clean, profile.noise, profile.seed)
    model = build_model(MODEL, None)
    model.compile(optimizer=keras.optimizers.Adam(profile.learning_rate), loss="mse", metrics=["accuracy"])
    best_path = work / "best.weights.h5"
    checkpoint = keras.callbacks.ModelCheckpoint(str(best_path), monitor="val_loss", mode="min",
                                                 save_best_only=True, save_weights_only=True)
    rows, start, epoch = [], time.perf_counter(), 0
    while epoch < max_epochs and (time.perf_counter() - start) < minutes * 60:
        h = model.fit(pair_batches(clean, profile, steps_per_epoch, seed, epoch, workers),
                      validation_data=(val_noisy, val_clean), batch_size=profile.batch_size, epochs=epoch + 1,
                      initial_epoch=epoch, callbacks=[checkpoint], verbose=0)
        rows.append({"epoch": epoch, **{k: float(h.history[k][-1]) for k in HISTORY_COLUMNS},
                     "elapsed_s": round(time.perf_counter() - start, 1)})
        pd.DataFrame(rows).set_index("epoch")[HISTORY_COLUMNS].to_csv(out / "history.csv")
        log(f"epoch {epoch}: " + ", ".join(f"{k} {rows[-1][k]:.5g}" for k in (*HISTORY_COLUMNS, "elapsed_s")))
        epoch += 1
    wall = time.perf_counter() - start
    model.load_weights(best_path)
    history = pd.DataFrame(rows).set_index("epoch")
    facts = {"train_tiles": int(len(clean)), "val_tiles": int(len(val_clean)), "epochs": epoch,
             "steps_per_epoch": steps_per_epoch, "steps": epoch * steps_per_epoch,
             "tiles_seen": epoch * steps_per_epoch * profile.batch_size, "train_wall_s": round(wall, 1),
             "tiles_per_s": round(epoch * steps_per_epoch * profile.batch_size / wall, 1),
             "best_epoch": int(history.val_loss.idxmin())}
    return model, history, facts


DETERMINISTIC_XLA_FLAG = "--xla_gpu_deterministic_ops=true"


def with_deterministic_ops(xla_flags: str, deterministic: bool = True) -> str:
    """``XLA_FLAGS`` with XLA's deterministic GPU ops on (or as given when ``deterministic`` is
    False). Without them two runs of one seed on the same H100 differed by up to 1.5 dB per held-out
    tile after 200 steps (``reports/gpu_repeat/``): XLA's GPU reductions and autotuned kernels are
    not bit-stable. It must be set before JAX starts its GPU backend."""
    flags = xla_flags.split()
    if not deterministic or any(f.startswith("--xla_gpu_deterministic_ops") for f in flags):
        return xla_flags
    return " ".join([*flags, DETERMINISTIC_XLA_FLAG])


def weights_digest(model) -> str:
    """SHA-256 of the model's weights in order (values and shapes): equal only for equal weights."""
    digest = hashlib.sha256()
    for w in model.weights:
        value = np.ascontiguousarray(np.asarray(w))
        digest.update(str((value.dtype.str, value.shape)).encode())
        digest.update(value.tobytes())
    return digest.hexdigest()


def compare_runs(run_dirs: list[str | os.PathLike]) -> pd.DataFrame:
    """Each run against the first run with the same ``XLA_FLAGS`` (a repeat of the same settings):
    the largest absolute difference per history column and in the held-out tiles' PSNR and SSIM,
    and whether the weights are identical. The runs must share a seed and a number of epochs
    (else there is nothing to repeat)."""
    runs = [(json.loads((Path(d) / "run.json").read_text()), Path(d)) for d in run_dirs]
    if len(runs) < 2:
        raise ValueError("compare needs at least two runs")
    first, first_dir = runs[0]
    for run, d in runs[1:]:
        for key in ("seed", "epochs", "steps_per_epoch", "profile"):
            if run.get(key) != first.get(key):
                raise ValueError(f"{d}: {key} {run.get(key)!r} differs from {first_dir}'s {first.get(key)!r}: "
                                 "not a repeat of the same run")
    references: dict[str, tuple[dict, Path]] = {}
    rows = []
    for run, d in runs:
        ref, ref_dir = references.setdefault(run.get("xla_flags", ""), (run, d))
        history, ref_history = (pd.read_csv(x / "history.csv").set_index("epoch") for x in (d, ref_dir))
        tiles, ref_tiles = (pd.read_csv(x / "per_tile.csv") for x in (d, ref_dir))
        row = {"run": d.name, "against": ref_dir.name, "device": ", ".join(run["devices"]) or run["backend"],
               "seed": run["seed"], "epochs": run["epochs"], "steps": run["steps"],
               "xla_flags": run.get("xla_flags", ""),
               "weights identical": run.get("weights_sha256") is not None
               and run.get("weights_sha256") == ref.get("weights_sha256")}
        for column in HISTORY_COLUMNS:
            row[f"max |d {column}|"] = float(np.max(np.abs(history[column].to_numpy() - ref_history[column].to_numpy())))
        for metric in ("psnr", "ssim"):
            scores = tiles[tiles.method == run["label"]][metric].to_numpy()
            ref_scores = ref_tiles[ref_tiles.method == ref["label"]][metric].to_numpy()
            if scores.shape != ref_scores.shape:
                raise ValueError(f"{d}: {len(scores)} scored tiles against {len(ref_scores)} in {ref_dir}")
            row[f"max |d {metric}| per tile"] = float(np.max(np.abs(scores - ref_scores)))
        rows.append(row)
    return pd.DataFrame(rows)


def score(model, profile: Profile, data_dir: str | None, label: str,
          per_pixel_amounts=(0.1, 0.3)) -> pd.DataFrame:
    """Per-tile scores of the model and the noisy input on notebook 05's held-out tiles and noise."""
    from ihclib.study.comparison import held_out_tiles

    tiles, sources = held_out_tiles(profile.eval_dataset(data_dir), profile.max_eval_tiles, seed=profile.seed,
                                    min_tissue=profile.eval_min_tissue)
    method = batched(lambda x: np.clip(np.asarray(model.predict(x, batch_size=profile.batch_size, verbose=0)),
                                       0.0, 1.0).astype(np.float32))
    sweep = noise_sweep(profile.eval_amounts, per_pixel_amounts, None)
    return evaluate_per_image(tiles, {label: method}, sweep, seed=profile.seed, sources=sources)


def merge_with_cpu(gpu_long: pd.DataFrame, cpu_long: pd.DataFrame, methods: list[str],
                   amounts=(0.1, 0.3), metrics=("psnr", "ssim", "accuracy", "dice_dab")) -> pd.DataFrame:
    """The GPU model beside the CPU run's methods, s&p per channel at ``amounts``; raises if the
    noisy input's scores differ (then the tiles or the noise were not the same)."""
    key = ["method", "noise", "amount", "metric"]
    gpu_noisy = gpu_long[gpu_long.method == NOISY].set_index(key)["mean"]
    cpu_noisy = cpu_long[cpu_long.method == NOISY].set_index(key)["mean"].reindex(gpu_noisy.index)
    if not np.allclose(gpu_noisy.to_numpy(float), cpu_noisy.to_numpy(float), rtol=1e-4, atol=1e-6):
        raise ValueError("the noisy input scores differently from the CPU run: not the same held-out tiles/noise")
    both = pd.concat([gpu_long[~gpu_long.method.isin([NOISY, "clean"])], cpu_long])
    sel = both[(both.noise == "s&p") & both.amount.isin(amounts) & both.metric.isin(metrics)
               & both.method.isin(methods)]
    table = sel.assign(value=[f"{m:.4g} [{lo:.4g}, {hi:.4g}]" for m, lo, hi in zip(sel["mean"], sel.ci_low,
                                                                                      sel.ci_high)])
    table = table.pivot_table(index=["method"], columns=["metric", "amount"], values="value", aggfunc="first")
    table = table.reindex(methods)[[(m, a) for m in metrics for a in amounts if (m, a) in table.columns]]
    table.columns = [f"{m} {a:.0%}" for m, a in table.columns]
    return table


TABLE_METHODS = ("median 3x3", "switching median", "cross-channel")


def _sanitise_command(argv: list[str]) -> str:
    """The command line with the values of --out and --work as placeholders (no machine's paths)."""
    out, hide = [], False
    for arg in argv:
        out.append("DIR" if hide else arg)
        hide = arg in ("--out", "--work")
    return "python -m ihclib.study.paper_scale train " + " ".join(out)


def _manifest_commit(reports: Path) -> str | None:
    path = reports / "manifest.json"
    return json.loads(path.read_text()).get("git_commit") if path.exists() else None


def run_label(run: dict) -> str:
    """A run's name in the tables: model, device, steps, seed."""
    device = ", ".join(d.replace("NVIDIA ", "").split()[0] for d in run["devices"]) or run["backend"]
    return f"{MODEL} ({device}, {run['steps']} steps, seed {run['seed']})"


def write_tables(run_dirs: list[str | os.PathLike], cpu_reports: str | os.PathLike, reports: str | os.PathLike) -> pd.DataFrame:
    """The GPU runs beside the CPU paper profile (``cpu_reports``: its reports folder) in
    ``reports``: tables ``paper_scale`` (held-out scores) and ``paper_scale_training``, figure
    ``paper_scale_learning_curves``. Returns the scores table."""
    from ihclib.study import figures
    from ihclib.study.architectures import paper_table1
    from ihclib.study.reports import git_commit, report_dirs, save_figure, save_table, write_json

    cpu = Path(cpu_reports) / "tables"
    cpu_long = pd.read_csv(cpu / "comparison.csv")
    cpu_history = pd.read_csv(cpu / f"history_{MODEL}.csv").set_index("epoch")
    runs = [(json.loads((Path(d) / "run.json").read_text()), Path(d)) for d in run_dirs]
    histories = [pd.read_csv(d / "history.csv").set_index("epoch") for _, d in runs]
    paper_last = paper_table1().iloc[-1]
    labels = [run_label(r) for r, _ in runs]
    gpu_long = pd.concat([pd.read_csv(d / "comparison.csv").replace({"method": {r["label"]: label}})
                          for (r, d), label in zip(runs, labels)])
    gpu_long = gpu_long[~gpu_long.duplicated(["method", "noise", "amount", "metric"])]
    cpu_label = f"{MODEL} (CPU, paper profile, {len(cpu_history)} epochs)"
    cpu_long = cpu_long.replace({"method": {MODEL: cpu_label}})
    scores = merge_with_cpu(gpu_long, cpu_long, [NOISY, *labels, cpu_label, *TABLE_METHODS])
    dirs = report_dirs(reports)
    save_table(scores, dirs, "paper_scale", index=True)
    rows = []
    for (r, _), h in zip(runs, histories):
        rows.append({"run": run_label(r), "device": ", ".join(r["devices"]) or "cpu", "seed": r["seed"],
                     "steps": r["steps"], "tiles seen": r["tiles_seen"], "minutes": round(r["train_wall_s"] / 60, 1),
                     "tiles/s": r["tiles_per_s"], "last loss": h["loss"].iloc[-1],
                     "best val_loss": h["val_loss"].min(), "val_accuracy at best": h.loc[r["best_epoch"], "val_accuracy"]})
    best = cpu_history["val_loss"].idxmin()
    rows.append({"run": cpu_label, "device": "cpu", "seed": 0, "steps": None, "tiles seen": None, "minutes": None,
                 "tiles/s": None, "last loss": cpu_history["loss"].iloc[-1], "best val_loss": cpu_history["val_loss"].min(),
                 "val_accuracy at best": cpu_history.loc[best, "val_accuracy"]})
    rows.append({"run": "the paper (Table 1, last epoch)", "device": None, "seed": None, "steps": None,
                 "tiles seen": None, "minutes": None, "tiles/s": None, "last loss": paper_last["loss"],
                 "best val_loss": paper_last["val_loss"], "val_accuracy at best": None})
    training = pd.DataFrame(rows).astype({"seed": "Int64", "steps": "Int64", "tiles seen": "Int64"}).astype(object)
    training = training.where(training.notna(), "")
    save_table(training, dirs, "paper_scale_training")
    curves = {label: (h, r["tiles_seen"] // r["epochs"]) for (r, _), label, h in zip(runs, labels, histories)}
    batch = get_profile(runs[0][0]["profile"]).batch_size  # the CPU profile: one pass over the training tiles
    curves[cpu_label] = (cpu_history, math.ceil(runs[0][0]["train_tiles"] / batch) * batch)
    fig = figures.plot_history_by_tiles(curves, {"the paper's last val_loss": paper_last["val_loss"]})
    save_figure(fig, dirs, "paper_scale_learning_curves")
    write_json(dirs.root / "manifest.json", {
        "what": "paper_unet trained at a GPU's scale (ihclib.study.paper_scale) beside the CPU paper profile",
        "git_commit": git_commit(), "cpu_report_commit": _manifest_commit(Path(cpu_reports)),
        "runs": [{"folder": d.name, "commit": r.get("commit"), "devices": r["devices"], "backend": r["backend"],
                  "seed": r["seed"], "steps": r["steps"], "command": r.get("command")} for r, d in runs]})
    return scores


def write_repeat_report(table: pd.DataFrame, run_dirs: list[str | os.PathLike], reports: str | os.PathLike) -> None:
    """``compare``'s table as ``tables/gpu_repeat`` in ``reports``, with a manifest naming the runs."""
    from ihclib.study.reports import git_commit, report_dirs, save_table, write_json

    dirs = report_dirs(reports)
    save_table(table, dirs, "gpu_repeat")
    runs = [json.loads((Path(d) / "run.json").read_text()) for d in run_dirs]
    write_json(dirs.root / "manifest.json", {
        "what": "paper_unet trained twice or more with one seed (ihclib.study.paper_scale compare)",
        "git_commit": git_commit(),
        "runs": [{"folder": Path(d).name, "commit": r.get("commit"), "devices": r["devices"], "backend": r["backend"],
                  "seed": r["seed"], "epochs": r["epochs"], "xla_flags": r.get("xla_flags", ""),
                  "command": r.get("command")} for d, r in zip(run_dirs, runs)]})


def main(argv: list[str] | None = None) -> int:
    """``train``: train and score on this machine's Keras backend; ``table``: put runs beside the CPU
    report; ``compare``: whether runs of one seed repeat each other."""
    argv = sys.argv[1:] if argv is None else list(argv)
    p = argparse.ArgumentParser(prog="python -m ihclib.study.paper_scale", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    t = sub.add_parser("train", help="train paper_unet for a time budget and score it on the held-out tiles")
    t.add_argument("--out", required=True, help="folder for history.csv, per_tile.csv, comparison.csv, run.json")
    t.add_argument("--work", default=None, help="folder for the best-weights checkpoint (default: --out)")
    t.add_argument("--profile", default="paper", help="data split, noise, batch and learning rate (default paper)")
    t.add_argument("--data-dir", default=None)
    t.add_argument("--minutes", type=float, default=6.0, help="training budget (whole epochs; checked after each)")
    t.add_argument("--steps-per-epoch", type=int, default=250)
    t.add_argument("--max-epochs", type=int, default=1000)
    t.add_argument("--workers", type=int, default=max(1, (os.cpu_count() or 2) - 2))
    t.add_argument("--seed", type=int, default=0)
    t.add_argument("--commit", default=None, help="the commit this runs (the device copy has no .git)")
    t.add_argument("--deterministic", action=argparse.BooleanOptionalAction, default=True,
                   help="XLA's deterministic GPU ops, so a rerun of one seed repeats itself (default: on)")
    c = sub.add_parser("compare", help="whether runs of one seed repeat each other (history, scores, weights)")
    c.add_argument("runs", nargs="+", help="folders written by train with the same seed and --max-epochs")
    c.add_argument("--reports", default=None, help="also write tables/gpu_repeat.{csv,md} and a manifest here")
    m = sub.add_parser("table", help="the runs' scores beside the CPU paper profile's report")
    m.add_argument("runs", nargs="+", help="folders written by train")
    m.add_argument("--cpu", default="reports/paper", help="the CPU paper profile's reports folder")
    m.add_argument("--reports", required=True, help="where tables/ and figures/ go")
    a = p.parse_args(argv)
    if a.what == "table":
        print(write_tables(a.runs, a.cpu, a.reports).to_string())
        return 0
    if a.what == "compare":
        table = compare_runs(a.runs)
        print(table.to_string())
        if a.reports:
            write_repeat_report(table, a.runs, a.reports)
        return 0
    os.environ["XLA_FLAGS"] = with_deterministic_ops(os.environ.get("XLA_FLAGS", ""), a.deterministic)
    import keras  # after XLA_FLAGS: the JAX backend reads them when it starts

    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(a.work or a.out)
    work.mkdir(parents=True, exist_ok=True)
    profile = get_profile(a.profile)
    model, history, facts = train(profile, a.data_dir, out, work, a.minutes, a.steps_per_epoch, a.max_epochs, a.seed,
                                  a.workers)
    t0 = time.perf_counter()
    label = f"{MODEL} ({facts['steps']} steps, {keras.backend.backend()}, seed {a.seed})"
    per_tile = score(model, profile, a.data_dir, label)
    per_tile.to_csv(out / "per_tile.csv", index=False)
    long_table(per_tile).to_csv(out / "comparison.csv", index=False)
    devices = []
    if keras.backend.backend() == "jax":
        import jax

        devices = [str(d.device_kind) for d in jax.devices()]
    run = {"profile": profile.name, "model": MODEL, "params": int(model.count_params()), "seed": a.seed,
           "commit": a.commit, "backend": keras.backend.backend(), "keras": keras.__version__,
           "devices": devices, "cpu_count": os.cpu_count(), "python": platform.python_version(),
           "minutes": a.minutes, "weights_sha256": weights_digest(model),
           "xla_flags": os.environ.get("XLA_FLAGS", ""), "score_wall_s": round(time.perf_counter() - t0, 1), "label": label, **facts,
           "command": _sanitise_command(argv[1:])}
    (out / "run.json").write_text(json.dumps(run, indent=1) + "\n")
    print(json.dumps(run))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
