"""Multi-worker data-parallel training on CPU: one process per worker, ``TF_CONFIG`` and
``tf.distribute.MultiWorkerMirroredStrategy``.

Run the same command on each machine (or twice on one, as the tests do), changing ``--index``::

    python -m ihclib.study.multiworker --cluster host1:12345,host2:12345 --index 0 --out runs/mw --profile smoke
    python -m ihclib.study.multiworker --cluster host1:12345,host2:12345 --index 1 --out runs/mw --profile smoke

The profile's batch size is the *global* batch: each of N workers computes the gradient of
batch/N tiles (the training stream is split by batch, ``AutoShardPolicy.DATA``) and the
gradients are all-reduced, so the weights follow the single-worker run of the same global
batch up to the order of floating-point sums (tests/test_multiworker.py: 2 workers against 1,
same global batch, weights equal within 1e-6). Worker 0 (the chief) writes the model to
``--out``; the others write theirs to ``--out/.worker<I>`` (TensorFlow's rule: every worker
saves, and only the chief's copy is kept), which is removed at the end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import tensorflow as tf


def tf_config(cluster: list[str], index: int) -> str:
    """The ``TF_CONFIG`` JSON for worker ``index`` of ``cluster`` (host:port of every worker)."""
    if not 0 <= index < len(cluster):
        raise ValueError(f"--index must be in [0, {len(cluster)}), got {index}")
    return json.dumps({"cluster": {"worker": cluster}, "task": {"type": "worker", "index": index}})


def multi_worker_strategy() -> "tf.distribute.Strategy":
    """``MultiWorkerMirroredStrategy`` (reads ``TF_CONFIG``) whose ``reduce`` takes what Keras
    3's ``fit`` gives it.

    Keras 3.15 trips over the collective (multi-worker) strategy twice, in ``fit`` itself:
    it reduces the first (inputs, targets) batch in one ``strategy.reduce`` call to build the
    model (MirroredStrategy accepts the tuple; this one fails with "Attempt to convert a value
    (PerReplica ...) to a Tensor"), and it averages each step's scalar loss and metrics with
    ``axis=0`` ("Invalid reduction dimension 0 for input with 0 dimensions"). Reducing element
    by element, and scalars across replicas only, is the same operation.
    """
    import tensorflow as tf

    class NestedReduce(tf.distribute.MultiWorkerMirroredStrategy):
        def reduce(self, reduce_op, value, axis):  # noqa: D102
            if isinstance(value, (tuple, list, dict)):
                return tf.nest.map_structure(lambda v: self.reduce(reduce_op, v, axis), value)
            local = value.values[0] if isinstance(value, tf.distribute.DistributedValues) else value
            if axis is not None and len(getattr(local, "shape", ())) == 0:
                axis = None  # a scalar has no axis 0: average it across replicas
            return super().reduce(reduce_op, value, axis)

    return NestedReduce()


def main(argv: list[str] | None = None) -> int:
    """One worker of a multi-worker training run; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m ihclib.study.multiworker", description=__doc__.splitlines()[0])
    p.add_argument("--cluster", required=True, help="host:port of every worker, comma-separated, same on all")
    p.add_argument("--index", type=int, required=True, help="this worker's position in --cluster (0 = chief)")
    p.add_argument("--out", required=True, help="output folder (the chief's)")
    p.add_argument("--profile", default="smoke")
    p.add_argument("--model", default="crosschannel_unet")
    p.add_argument("--data-dir", help="image folder (default: the profile's data)")
    p.add_argument("--seed", type=int, default=None)
    args = p.parse_args(argv)
    cluster = [c.strip() for c in args.cluster.split(",") if c.strip()]
    # before TensorFlow starts: the strategy reads TF_CONFIG once, when it is created
    os.environ["TF_CONFIG"] = tf_config(cluster, args.index)
    strategy = multi_worker_strategy()
    from ihclib.study.data import make_dataset
    from ihclib.study.profiles import get_profile
    from ihclib.train import train

    profile = get_profile(args.profile)
    data = args.data_dir or profile.data
    dataset = make_dataset(data, tile_size=profile.tile_size, stride=profile.stride, fractions=profile.fractions)
    out = Path(args.out) if args.index == 0 else Path(args.out) / f".worker{args.index}"
    result = train(args.model, dataset, profile, out, strategy=strategy, seed=args.seed, verbose=0)
    if args.index:
        shutil.rmtree(out, ignore_errors=True)
    else:
        print(f"{result.model_path}: {strategy.num_replicas_in_sync} replicas, "
              f"val_loss {result.history.val_loss.min():.6g}, {result.tiles_per_s:.1f} tiles/s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
