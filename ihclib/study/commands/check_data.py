"""`ihclib check-data [DIR]`: what the study would see in a data folder, and what is wrong."""

from __future__ import annotations

import argparse
import sys


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check-data", help="summarise a data folder (default: $IHC_DATA_DIR, else the project's data/)",
                       description="Print images, categories, sizes, the split and tiles per split, "
                                   "and one line per bad file.")
    p.add_argument("data_dir", nargs="?", default=None,
                   help="folder of PNG/JPEG/TIFF images, or 'skimage' for the embedded image "
                        "(default: $IHC_DATA_DIR, else the project's data/, else the embedded image)")
    p.add_argument("--tile-size", type=int, default=256)
    p.add_argument("--stride", type=int, default=None, help="default: the tile size")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--skip-bad", action="store_true", help="report bad files and go on (exit 0 if any image is usable)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Summarise the data folder; 1 if it has bad files (unless --skip-bad) or no usable image."""
    # pandas: not for --help
    from ihclib.study.data import (EMBEDDED, PROJECT_DATA, SPLITS, data_label, make_dataset, read_splits, resolve_data_dir,
                        scan_folder, tile_sources)

    # checked here because a folder goes to scan_folder/tile_sources, which trust their arguments
    if args.tile_size < 8:
        raise ValueError(f"--tile-size must be at least 8 pixels, got {args.tile_size}")
    if args.stride is not None and args.stride < 1:
        raise ValueError(f"--stride must be a positive number of pixels, got {args.stride}")
    root = resolve_data_dir(args.data_dir)
    if root is None:
        ds = make_dataset(EMBEDDED, tile_size=args.tile_size, stride=args.stride, seed=args.seed)
    else:
        splits = read_splits(root)  # a broken splits.json is reported before the (slow) scan
        sources, bad = scan_folder(root, min_size=args.tile_size)
        for b in bad:
            print(f"bad file: {b.path}: {b.reason}", file=sys.stderr)
        if not sources:
            print(f"{root}: no usable image ({len(bad)} bad file(s))", file=sys.stderr)
            return 1
        ds = tile_sources(sources, args.tile_size, args.stride or args.tile_size, args.seed, root=root, bad=bad,
                          splits=splits)
    bad = ds.bad_files
    print(f"data: {data_label(args.data_dir) if root is None else root}"
          + (" (the project's data/)" if root is not None and root.resolve() == PROJECT_DATA else ""))
    print(f"tiles of {ds.tile_size}px, stride {ds.stride}, split {ds.split_mode}, seed {ds.seed}")
    if ds.split_categories:
        for split in SPLITS:
            print(f"  {split}: {', '.join(ds.split_categories.get(split, [])) or '(none)'}")
    print(ds.summary().to_string(index=False))
    if bad and not args.skip_bad:
        print(f"{len(bad)} bad file(s): fix or remove them, or pass --skip-bad", file=sys.stderr)
        return 1
    if bad:
        print(f"skipped {len(bad)} bad file(s)")
    return 0
