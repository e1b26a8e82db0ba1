"""The study's tables about the networks: Keras-style summaries, the paper's Figure 3 and Table 1,
and the cost (parameters, FLOPs) of each registry model."""

from __future__ import annotations

from importlib import resources

import keras
import pandas as pd

from ihclib.model import MODELS, build_model, count_flops, count_params
from ihclib.registry import DESCRIPTIONS


def summary_table(model: keras.Model) -> pd.DataFrame:
    """One row per layer: name, type, output shape (as Keras prints it), parameters."""
    rows = []
    for layer in model.layers:
        shape = layer.output.shape
        rows.append({
            "layer": layer.name,
            "type": type(layer).__name__,
            "output_shape": str(tuple(shape)),
            "params": int(layer.count_params()) if layer.built else 0,
        })
    return pd.DataFrame(rows, columns=["layer", "type", "output_shape", "params"])


def paper_figure3() -> pd.DataFrame:
    """The paper's Figure 3 table (layer, type, output_shape, params, connected_to)."""
    with resources.files("ihclib.study").joinpath("paper/figure3.csv").open() as f:
        return pd.read_csv(f)


def paper_table1() -> pd.DataFrame:
    """The paper's Table 1 (epoch, accuracy, loss, val_accuracy, val_loss)."""
    with resources.files("ihclib.study").joinpath("paper/table1.csv").open() as f:
        return pd.read_csv(f)


def compare_with_paper(model: keras.Model) -> pd.DataFrame:
    """Row-by-row comparison of a model's summary with Figure 3 (names are ignored: Keras numbers
    them by how many layers the session built). Column ``match`` is True where type, output
    shape and parameters all agree; a missing row on either side counts as a mismatch."""
    ours = summary_table(model).add_prefix("model_")
    paper = paper_figure3()[["layer", "type", "output_shape", "params"]].add_prefix("paper_")
    both = pd.concat([paper, ours], axis=1)
    both["match"] = (
        (both.paper_type == both.model_type)
        & (both.paper_output_shape == both.model_output_shape)
        & (both.paper_params == both.model_params)
    )
    return both


def cost_table(names: list[str] | None = None, tile_size: int = 256) -> pd.DataFrame:
    """Parameters and GFLOPs per ``tile_size`` tile of registry models (default: all)."""
    rows = []
    for name in names or list(MODELS):
        model = build_model(name, tile_size)
        rows.append({"model": name, "description": DESCRIPTIONS[name], "params": count_params(model)["total"],
                     f"GFLOPs per {tile_size}x{tile_size} tile": count_flops(model) / 1e9})
    return pd.DataFrame(rows)
