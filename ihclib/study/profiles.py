"""Run sizes of the study: one frozen Profile per name ("smoke", "quick", "paper").

A profile fixes everything that decides how long a run takes and what it computes: tile size,
tiling stride, split, batch, epochs, steps, learning rate, the noise seen in training (s&p
amount drawn per tile from ``train_amount_range``, so one model serves a whole noise sweep),
the fixed validation/evaluation noise, the models trained and the evaluation sweep.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace

from typing import TYPE_CHECKING

from ihclib.noise import SP_AMOUNTS, NoiseSpec
from ihclib.registry import INPUT_MULTIPLE
from ihclib.study import EMBEDDED

if TYPE_CHECKING:  # data imports pandas: not for `ihclib --help`, which lists the profiles
    from ihclib.study.data import TileDataset



@dataclass(frozen=True)
class Profile:
    """One run size. ``steps_per_epoch`` None = one pass over the training tiles per epoch."""

    name: str
    tile_size: int
    stride: int  # stride of training tiles (overlap = augmentation); held-out tiles never overlap
    batch_size: int
    epochs: int
    steps_per_epoch: int | None
    learning_rate: float = 1e-3
    # validation (and default evaluation) noise: s&p 10% per channel, drawn once with the seed
    noise: NoiseSpec = field(default_factory=lambda: NoiseSpec("s&p", 0.1))
    # training noise: same kind as ``noise``, amount ~ U(train_amount_range) per tile
    train_amount_range: tuple[float, float] = (0.0, 0.5)
    models: tuple[str, ...] = ("paper_unet", "dncnn_residual", "switching_unet")
    seed: int = 0
    eval_amounts: tuple[float, ...] = SP_AMOUNTS  # s&p sweep of notebook 05
    max_eval_tiles: int | None = None  # None = every test tile
    fractions: tuple[float, float, float] = (0.6, 0.2, 0.2)
    early_stopping_patience: int = 3
    # which data: None = $IHC_DATA_DIR, else the project's data/ (else the embedded image);
    # "skimage" = the embedded image (see ihclib.study.data.resolve_data_dir)
    data: str | None = None
    augment: bool = True  # the real-slide augmentation of ihclib.train.Augmentation (False: flips only)
    eval_tile_size: int | None = None  # tiles of the held-out evaluation (None: tile_size)
    eval_min_tissue: float = 0.25  # held-out tiles hold at least this share of tissue
    train_on_test: bool = False  # True: the test sources train too (the bundled model, not the study)
    # U-Net width of switching_unet / crosschannel_unet (ihclib.model.WIDTH_MODELS); None: 24
    width: int | None = None
    # crosschannel_unet's channels at half and quarter resolution; None: 2 and 4 times the width
    # (left out of to_dict then, so the fingerprints of the profiles without it stay as they were)
    lower_widths: tuple[int, int] | None = None
    # tile pixels held in memory for training and for validation: a larger folder gives an even
    # share of tiles per category, spread over its images (seeded). Training peaks at about 30
    # bytes per tile pixel (measured: 125 KB per 64 px tile, in numpy and in TensorFlow's
    # pipeline), so 100 MP is about 3 GB; the project's data/ is below both (bundle: 81 MP)
    max_train_pixels: int | None = 100_000_000
    max_val_pixels: int | None = 10_000_000
    description: str = ""

    def __post_init__(self) -> None:
        lo, hi = self.train_amount_range
        if not 0.0 <= lo <= hi <= 1.0:
            raise ValueError(f"train_amount_range must satisfy 0 <= low <= high <= 1, got {self.train_amount_range}")
        for name in self.models:
            if name not in INPUT_MULTIPLE:
                raise ValueError(f"unknown model {name!r}; choose from {', '.join(INPUT_MULTIPLE)}")
            if self.tile_size % INPUT_MULTIPLE[name]:
                raise ValueError(f"model {name!r} needs a tile_size that is a multiple of "
                                 f"{INPUT_MULTIPLE[name]}, got {self.tile_size}")
        if self.batch_size < 1 or self.epochs < 1 or (self.steps_per_epoch is not None and self.steps_per_epoch < 1):
            raise ValueError("batch_size, epochs and steps_per_epoch must be positive")
        if self.lower_widths is not None and set(self.models) != {"crosschannel_unet"}:
            raise ValueError(f"lower_widths is a setting of crosschannel_unet, not of {', '.join(self.models)}")

    def dataset(self, data_dir: str | None = None, tile_size: int | None = None, skip_bad: bool = False) -> "TileDataset":
        """The profile's data cut into its training tiles (or ``tile_size`` tiles).

        ``data_dir`` None takes the profile's ``data``; with ``train_on_test`` the sources that
        ``splits.json`` holds out for testing are trained on as well."""
        from ihclib.study.data import make_dataset, read_splits, resolve_data_dir

        chosen = self.data if data_dir is None else data_dir
        size = tile_size or self.tile_size
        splits = read_splits(resolve_data_dir(chosen)) if self.train_on_test else None
        if splits is not None:
            splits = {k: v for k, v in splits.items() if k != "test"}
        return make_dataset(chosen, tile_size=size, stride=self.stride if size == self.tile_size else size,
                            seed=self.seed, fractions=self.fractions, splits=splits, skip_bad=skip_bad)

    def eval_dataset(self, data_dir: str | None = None) -> "TileDataset":
        """The same data cut into non-overlapping evaluation tiles (``eval_tile_size``)."""
        return self.dataset(data_dir, self.eval_tile_size or self.tile_size)

    def to_dict(self) -> dict:
        """Plain JSON-ready dict (noise as a dict, tuples as lists)."""
        d = asdict(self)
        d["noise"] = self.noise.to_dict()
        if d["lower_widths"] is None:
            del d["lower_widths"]
        return {k: list(v) if isinstance(v, tuple) else v for k, v in d.items()}

    @classmethod
    def from_dict(cls, d: dict) -> "Profile":
        d = dict(d)
        d["noise"] = NoiseSpec.from_dict(d["noise"])
        for k in ("train_amount_range", "models", "eval_amounts", "fractions", "lower_widths"):
            if d.get(k) is not None:
                d[k] = tuple(d[k])
        return cls(**d)

    def with_overrides(self, **changes) -> "Profile":
        """A copy with some fields changed (e.g. ``epochs`` from the command line)."""
        return replace(self, **changes)


# the sweep of the profiles judged on held-out sources (1 % is left out: every method is near clean)
HELD_OUT_AMOUNTS = SP_AMOUNTS[1:]

# long: the designs judged on the held-out sources at one budget; the profiles made from it change
# only what their names say (their comparison with reports/long is that change alone)
_LONG = Profile(
    name="long", tile_size=64, stride=64, batch_size=16, epochs=30, steps_per_epoch=200,
    learning_rate=2e-3, models=("crosschannel_unet",), width=16,
    eval_tile_size=256, max_eval_tiles=12, eval_amounts=HELD_OUT_AMOUNTS,
    description="the best design at width 16 (the bundle's until d5e42ea) and the bundle's "
                "budget, judged on the held-out sources as quick is; about 13 minutes on a 2-core "
                "Zen 5",
)


def _long_with(name: str, description: str, **changes) -> Profile:
    """``long`` under another name with ``changes`` (its design, or what it trains on)."""
    return replace(_LONG, name=name, description=description, **changes)


PROFILES: dict[str, Profile] = {
    "smoke": Profile(
        name="smoke", tile_size=32, stride=32, batch_size=4, epochs=2, steps_per_epoch=2,
        models=("paper_unet", "switching_unet", "crosschannel_unet"), data=EMBEDDED,
        eval_amounts=(0.1, 0.3), max_eval_tiles=4, eval_min_tissue=0.0,
        description="seconds: CI and notebook tests, on the embedded image; numbers are meaningless",
    ),
    "quick": Profile(
        name="quick", tile_size=64, stride=64, batch_size=16, epochs=10, steps_per_epoch=150,
        learning_rate=2e-3, models=("paper_unet", "switching_unet", "crosschannel_unet"),
        eval_tile_size=256, max_eval_tiles=12, eval_amounts=HELD_OUT_AMOUNTS,
        description="default of `make reproduce`: the project's six sources, two held out; "
                    "about 30 minutes on 2 CPU cores",
    ),
    "long": _LONG,
    "wide": _long_with(
        "wide", width=40,
        description="long at width 40 (269,280 FLOP per pixel, 6 times width 16's): what a wider "
                    "bundle would gain on the held-out sources and cost in time (issue 13); about 20 "
                    "minutes on a 2-core Zen 5, 40 on a Zen 4",
    ),
    "w24": _long_with(
        "w24", width=24,
        description="long at width 24 (99,360 FLOP per pixel): between the bundle's width and wide's, "
                    "what its full-resolution channels gain on the held-out sources (issue 13); about "
                    "13 minutes on a 2-core Zen 5",
    ),
    "lower64": _long_with(
        "lower64", lower_widths=(64, 128),
        description="long with the bundle's 16 channels at full resolution but 64 and 128 at half and "
                    "quarter resolution (119,232 FLOP per pixel): the FLOPs that run near the peak, "
                    "added where they are cheap (issue 13); about 13 minutes on a 2-core Zen 5",
    ),
    "full32": _long_with(
        "full32", width=32, lower_widths=(32, 64),
        description="long with 32 channels at full and half resolution, 64 at quarter (95,616 FLOP "
                    "per pixel): oneDNN's 16-channel blocks run width 24 as 32, so this is what those "
                    "channels could hold (issue 13); about 14 minutes on a 2-core Zen 5",
    ),
    "s2d": _long_with(
        "s2d", models=("crosschannel_s2d_unet",), width=32,
        description="long with crosschannel_s2d_unet (its U-Net at half resolution, width 32: about "
                    "the FLOPs per pixel of long's width 16) instead of crosschannel_unet: the same "
                    "budget, a design with fewer passes over memory (issue 13)",
    ),
    "s4d": _long_with(
        "s4d", models=("crosschannel_s4d_cnn",), width=120,
        description="long with crosschannel_s4d_cnn (a residual CNN of width 120 at quarter "
                    "resolution: 127,440 FLOP per pixel, 2.8 times long's) instead of "
                    "crosschannel_unet: the same budget and held-out sources, a design whose "
                    "convolutions run near the CPU's peak (issue 13)",
    ),
    "s4du": _long_with(
        "s4du", models=("crosschannel_s4d_unet",), width=96,
        description="long with crosschannel_s4d_unet (crosschannel_unet's full-resolution level over "
                    "a residual CNN of width 96 at quarter resolution: 127,680 FLOP per pixel) "
                    "instead of crosschannel_unet: the same budget and held-out sources (issue 13)",
    ),
    "bundle": _long_with(
        "bundle", train_on_test=True, width=32, lower_widths=(32, 64),
        description="the bundled default model: crosschannel_unet as full32 (32 channels at full and "
                    "half resolution, 64 at quarter: issue 13) on every source (none held out), "
                    "longer; about 15 minutes on a 2-core Zen 5",
    ),
    "paper": Profile(
        name="paper", tile_size=256, stride=256, batch_size=16, epochs=5, steps_per_epoch=None,
        models=("paper_unet",), eval_tile_size=256, max_eval_tiles=12, eval_amounts=HELD_OUT_AMOUNTS,
        fractions=(0.7, 0.15, 0.15),
        description="the paper's scale: 256 px tiles, 5 epochs of one pass (Table 1), the paper's network",
    ),
}


def get_profile(name: str) -> Profile:
    """The profile called ``name`` (ValueError listing the choices if there is none)."""
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"unknown profile {name!r}; choose from {', '.join(PROFILES)}") from None
