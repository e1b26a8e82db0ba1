"""`ihclib train`: train the study's models (or one) under a profile and save them with sidecars."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ihclib.registry import MODEL_NAMES  # not ihclib.model: `ihclib --help` must not import Keras


class _ProfileNames:
    """The profiles' names for argparse's ``choices``, read from the study only when argparse
    asks (this command's arguments or --help): registering the command imports nothing."""

    def __iter__(self):
        from ihclib.study.profiles import PROFILES

        return iter(PROFILES)

    def __contains__(self, name: object) -> bool:
        return name in list(self)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("train", help="train denoising models (the paper's and the modified ones)",
                       description="Train registry models on clean tiles with salt-and-pepper noise made on the fly. "
                                   "Each model is written to OUT_DIR/<model>/: <model>.keras + .json sidecar, "
                                   "history.csv (Table 1 format), log.csv. Rerun the same command "
                                   "after an interruption to resume.")
    p.add_argument("--profile", default="quick", choices=_ProfileNames(), metavar="PROFILE",
                   help="run size: %(choices)s (default: %(default)s)")
    p.add_argument("--model", action="append", choices=["all", *MODEL_NAMES], default=None,
                   help="model to train; repeat for several (default: all of the profile's models)")
    p.add_argument("--data-dir", default=None, help="folder of IHC images, or 'skimage' for the embedded image "
                        "(default: $IHC_DATA_DIR, else the project's data/, else the embedded image)")
    p.add_argument("--out-dir", default=None, help="where runs go (default: runs/<profile>)")
    p.add_argument("--seed", type=int, default=None, help="training seed (default: the profile's)")
    p.add_argument("--epochs", type=int, default=None, help="override the profile's epochs")
    p.add_argument("--width", type=int, default=None,
                   help="override the profile's width (switching_unet and the crosschannel_* models; for the "
                        "s2d/s4d designs the channels at half or quarter resolution), e.g. 40 for the profile "
                        "'wide' trade-off: better held-out quality, about twice the denoising time")
    p.add_argument("--lower-widths", default=None, metavar="HALF,QUARTER",
                   help="crosschannel_unet's channels at half and quarter resolution (default: the profile's; "
                        "with --width, 2 and 4 times that width), e.g. --width 16 --lower-widths 32,64 for "
                        "the width-16 bundle of earlier versions")
    p.add_argument("--early-stopping", action="store_true", help="stop when val_loss stops improving")
    p.add_argument("--skip-bad", action="store_true", help="skip unreadable images in the data folder")
    p.add_argument("--bundle", action="store_true",
                   help="also install the trained model as the default denoiser of `ihclib denoise` "
                        "(default.keras + default.json in $IHCLIB_MODELS_DIR, else ~/.local/share/ihclib/models); "
                        "needs exactly one --model")
    p.add_argument("--quiet", action="store_true", help="no per-epoch output")
    p.set_defaults(func=run, needs_tensorflow=True)


def run(args: argparse.Namespace) -> int:
    """Train the chosen models; with --bundle also install the one as the user's default model."""
    from ihclib.study.profiles import get_profile

    profile = get_profile(args.profile)
    if args.epochs is not None:
        if args.epochs < 1:
            raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
        profile = profile.with_overrides(epochs=args.epochs)
    if args.width is not None:
        if args.width < 1:
            raise ValueError(f"--width must be at least 1, got {args.width}")
        # the profile's lower widths belong to its own width: --width alone gives the plain U-Net
        profile = profile.with_overrides(width=args.width, lower_widths=None)
    if args.lower_widths is not None:
        profile = profile.with_overrides(lower_widths=_lower_widths(args.lower_widths))
    names = list(profile.models) if not args.model or "all" in args.model else list(dict.fromkeys(args.model))
    if args.bundle and len(names) != 1:
        raise ValueError("--bundle installs one model: pass exactly one --model")
    # another width is another model: never resumed from (or written over) the profile's own runs
    default_dir = profile.name + (f"_width{args.width}" if args.width is not None else "") + (
        "_lower{}x{}".format(*profile.lower_widths) if args.lower_widths is not None else "")
    out_root = Path(args.out_dir) if args.out_dir else Path("runs") / default_dir

    from ihclib.model import save_model
    from ihclib.train import train  # TensorFlow loads here, after the arguments are checked

    dataset = profile.dataset(args.data_dir, skip_bad=args.skip_bad)
    counts = {s: len(dataset.split(s)) for s in ("train", "val", "test")}
    print(f"profile {profile.name}: {profile.tile_size}px tiles, {profile.epochs} epochs x "
          f"{profile.steps_per_epoch or 'all'} steps x batch {profile.batch_size}; tiles {counts}")
    for split, limit in (("train", profile.max_train_pixels), ("val", profile.max_val_pixels)):
        if dataset.over(split, limit):
            print(f"{split}: {counts[split]:,} tiles hold more than {limit / 1e6:g} megapixels (the profile's "
                  f"max_{split}_pixels): an even share per category is used, spread over the images")
    for name in names:
        res = train(name, dataset, profile, out_root / name, seed=args.seed, early_stopping=args.early_stopping,
                    verbose=0 if args.quiet else (1 if sys.stdout.isatty() else 2))
        best = res.best
        print(f"{name}: best val_loss {best.val_loss:.3g} (epoch {int(best.name)}), val_accuracy "
              f"{best.val_accuracy:.4f}; {res.wall_time_s:.0f} s, {res.tiles_per_s:.1f} tiles/s -> {res.model_path}")
        if args.bundle:
            from ihclib.infer import DEFAULT_MODEL_FILE, user_models_dir

            target = user_models_dir() / DEFAULT_MODEL_FILE
            save_model(res.model, target, {k: v for k, v in res.sidecar.items() if k not in ("params", "versions", "file")})
            print(f"bundled as {target}")
    return 0


def _lower_widths(text: str) -> tuple[int, int]:
    """``HALF,QUARTER`` as two positive channel counts (ValueError naming the option otherwise)."""
    try:
        half, quarter = (int(v) for v in text.split(","))
    except ValueError:
        raise ValueError(f"--lower-widths takes two channel counts, HALF,QUARTER, got {text!r}") from None
    if min(half, quarter) < 1:
        raise ValueError(f"--lower-widths must be positive, got {text!r}")
    return half, quarter
