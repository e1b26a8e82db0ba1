"""Trained models of a study run, kept under ``runs/<profile>/<model>/`` and reused when they fit.

Notebook 04 trains every model of the profile; notebook 05 (and a user who opens it alone)
loads them, training only what is missing or stale. A saved model is reused only when its
sidecar says it was trained with the same profile, on the same data, with the same ihclib.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from ihclib import __version__
from ihclib.study.data import TileDataset
from ihclib.study.profiles import Profile
from ihclib.study.reports import runs_dir


@dataclass
class TrainedModel:
    name: str
    model: object  # keras.Model
    sidecar: dict
    history: pd.DataFrame
    path: Path
    reused: bool  # loaded from an earlier run rather than trained now


def run_dir(runs: str | os.PathLike | None, profile: Profile, model_name: str) -> Path:
    """``<runs>/<profile>/<model>``."""
    return runs_dir(runs) / profile.name / model_name


def _fits(out: Path, sidecar: dict, model_name: str, profile: Profile, ds: TileDataset, seed: int) -> bool:
    """Whether the saved run in ``out`` was trained as asked now: the same fingerprint as
    ``ihclib.train`` records (model, data, profile, seed) and the same ihclib."""
    from ihclib.train import read_fingerprint, run_fingerprint

    said = (sidecar.get("architecture") == model_name and sidecar.get("profile") == profile.to_dict()
            and sidecar.get("data") == ds.describe() and sidecar.get("seed") == seed
            and sidecar.get("versions", {}).get("ihclib") == __version__)
    # the fingerprint also tells apart two data folders of the same name and size; it is written
    # when training starts, so the sidecar (written at the end) must agree as well. Runs saved
    # before fingerprints were recorded have only the sidecar.
    stored = read_fingerprint(out)
    return said and (stored is None or stored == run_fingerprint(model_name, ds, profile, seed))


def trained_model(model_name: str, ds: TileDataset, profile: Profile, runs: str | os.PathLike | None = None,
                  retrain: bool = False, seed: int | None = None, verbose: int = 2) -> TrainedModel:
    """The model ``model_name`` trained under ``profile`` on ``ds``: loaded if a fitting run exists
    (and ``retrain`` is false), else trained now (``verbose=2``: one line per epoch)."""
    from ihclib.model import load_model
    from ihclib.train import train

    seed = profile.seed if seed is None else seed
    out = run_dir(runs, profile, model_name)
    path = out / f"{model_name}.keras"
    if not retrain and path.exists() and (out / "history.csv").exists():
        model, sidecar = load_model(path)
        if _fits(out, sidecar, model_name, profile, ds, seed):
            history = pd.read_csv(out / "history.csv", index_col=0)
            return TrainedModel(model_name, model, sidecar, history, path, reused=True)
    result = train(model_name, ds, profile, out, seed=seed, verbose=verbose)
    return TrainedModel(model_name, result.model, result.sidecar, result.history, result.model_path, reused=False)


def trained_models(ds: TileDataset, profile: Profile, runs: str | os.PathLike | None = None,
                   retrain: bool = False, verbose: int = 2) -> dict[str, TrainedModel]:
    """``trained_model`` for every model of the profile, in the profile's order."""
    out = {}
    for name in profile.models:
        if verbose:
            print(f"--- {name}")
        out[name] = trained_model(name, ds, profile, runs, retrain=retrain, verbose=verbose)
        if verbose and out[name].reused:
            print(f"reused {out[name].path.name} from an earlier run with the same profile and data")
    return out
