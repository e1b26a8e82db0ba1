"""Multi-worker training for real: two worker processes on 127.0.0.1 with TF_CONFIG and
MultiWorkerMirroredStrategy (ihclib.multiworker), against a one-worker run of the same global batch."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from ihclib.multiworker import tf_config

REPO = Path(__file__).resolve().parents[1]
# 2 workers average the gradients of two half batches, 1 worker takes the gradient of the whole
# batch: the same numbers summed in another order (measured: weights 1e-10 apart after 2 epochs)
WEIGHT_TOL = 1e-6
HISTORY_RTOL = 1e-5


def free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def start_workers(cluster: list[str], out: Path) -> list[subprocess.Popen]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "TF_CPP_MIN_LOG_LEVEL": "3"}
    return [subprocess.Popen([sys.executable, "-m", "ihclib.multiworker", "--cluster", ",".join(cluster),
                              "--index", str(i), "--out", str(out), "--profile", "smoke"],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
            for i in range(len(cluster))]


def finish(procs: list[subprocess.Popen]) -> list[str]:
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=600)
            assert p.returncode == 0, err[-3000:]
            outs.append(out)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    return outs


def test_tf_config():
    cfg = json.loads(tf_config(["127.0.0.1:1", "127.0.0.1:2"], 1))
    assert cfg == {"cluster": {"worker": ["127.0.0.1:1", "127.0.0.1:2"]}, "task": {"type": "worker", "index": 1}}
    with pytest.raises(ValueError, match="--index must be in"):
        tf_config(["127.0.0.1:1"], 1)


@pytest.mark.slow
def test_two_workers_train_like_one_with_the_same_global_batch(tmp_path):
    ports = free_ports(3)
    two = start_workers([f"127.0.0.1:{p}" for p in ports[:2]], tmp_path / "two")
    one = start_workers([f"127.0.0.1:{ports[2]}"], tmp_path / "one")
    chief_line = finish(two)[0]
    finish(one)
    assert "2 replicas" in chief_line
    training = json.loads((tmp_path / "two" / "crosschannel_unet.json").read_text())["training"]
    assert training["replicas"] == 2 and training["epochs_run"] == 2
    assert not (tmp_path / "two" / ".worker1").exists()  # the other worker's copy is removed

    from ihclib.model import load_model

    w2 = load_model(tmp_path / "two" / "crosschannel_unet.keras")[0].get_weights()
    w1 = load_model(tmp_path / "one" / "crosschannel_unet.keras")[0].get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(w1, w2)) < WEIGHT_TOL
    import keras

    from ihclib.model import build_model
    from ihclib.profiles import get_profile

    keras.utils.set_random_seed(get_profile("smoke").seed)  # the weights both runs started from
    w0 = build_model("crosschannel_unet", None).get_weights()
    assert max(np.abs(a - b).max() for a, b in zip(w0, w1)) > 100 * WEIGHT_TOL  # they did train
    h2, h1 = (pd.read_csv(tmp_path / d / "history.csv") for d in ("two", "one"))
    assert len(h2) == len(h1) == 2
    np.testing.assert_allclose(h2.values, h1.values, rtol=HISTORY_RTOL)
