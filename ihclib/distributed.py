"""Dask (``dask.distributed``) for denoising at scale: a cluster to run on, and an ordered map.

The default cluster is a :class:`distributed.LocalCluster` on this machine's cores: one
single-threaded worker process per core, each with TensorFlow limited to one thread (several
TensorFlow thread pools on the same cores only fight). ``scheduler="tcp://host:8786"`` uses an
existing cluster instead (from ``dask scheduler`` / ``dask worker``, dask-jobqueue on
Slurm/PBS, or dask-kubernetes); its workers must see the same files (slide and model paths).

:func:`ordered_map` submits tasks a few rows ahead of the one being consumed and hands results
back row by row in order, so the caller can write them once, sequentially, with memory bounded
by the rows in flight. A task whose worker dies is run again elsewhere by the scheduler (up to
``distributed.scheduler.allowed-failures`` times), a task that raises is retried ``retries``
times, and then the error reaches the caller.
"""

from __future__ import annotations

import os
from contextlib import contextmanager
from typing import Any, Callable, Iterator, Sequence

CONNECT_TIMEOUT = "10s"  # to reach an existing scheduler


def default_workers() -> int:
    """The number of cores this process may use."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def local_cluster(workers: int | None = None, processes: bool = True, threads_per_worker: int = 1) -> Any:
    """A LocalCluster of ``workers`` (default: one per core), TensorFlow held to the cores each
    worker owns; no dashboard (its port may be taken, and nothing here serves it)."""
    from distributed import LocalCluster

    workers = workers or default_workers()
    tf_threads = str(max(1, default_workers() // workers))
    env = {"TF_NUM_INTRAOP_THREADS": tf_threads, "TF_NUM_INTEROP_THREADS": "1", "OMP_NUM_THREADS": tf_threads,
           "TF_CPP_MIN_LOG_LEVEL": os.environ.get("TF_CPP_MIN_LOG_LEVEL", "3")}
    # threads (processes=False) talk in-process: no host, no environment of their own
    kwargs: dict = {"env": env, "host": "127.0.0.1"} if processes else {}
    if not processes:
        os.environ.update({k: v for k, v in env.items() if k not in os.environ})
    return LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=processes,
                        dashboard_address=None, silence_logs=40, **kwargs)


@contextmanager
def dask_client(scheduler: str | None = None, workers: int | None = None, processes: bool = True) -> Iterator[Any]:
    """A ``distributed.Client``: to ``scheduler`` if given, else to a new :func:`local_cluster`
    (closed on leaving)."""
    from distributed import Client

    if scheduler:
        try:
            client = Client(scheduler, timeout=CONNECT_TIMEOUT)
        except OSError as exc:
            raise ValueError(f"cannot reach the Dask scheduler at {scheduler} ({exc})") from None
        try:
            yield client
        finally:
            client.close()
        return
    cluster = local_cluster(workers, processes=processes)
    try:
        with Client(cluster) as client:
            yield client
    finally:
        cluster.close()


def load_on_workers(client: Any, model: str) -> None:
    """Load ``model`` on every worker now: a worker that cannot see the file fails here, before
    any block, and the first blocks do not pay for TensorFlow's start."""
    client.run(_load_model, model)


def _load_model(path: str) -> None:
    from .slides import _model

    _model(path)  # cached in the worker; returns nothing (a Keras model does not serialise back)


def peak_rss() -> int:
    """Peak resident memory of this process in bytes.

    ``VmHWM`` from /proc (the peak of this program's own address space) where there is one:
    ``getrusage``'s ``ru_maxrss`` survives ``exec``, so a command started by a large process
    would report its parent's size at the fork.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux


def worker_peak_rss(client: Any) -> int:
    """Largest peak resident memory (bytes) of any worker process so far."""
    return max(client.run(peak_rss).values(), default=0)


def ordered_map(
    client: Any | None,
    fn: Callable[..., Any],
    rows: Sequence[Sequence[tuple]],
    ahead: int = 2,
    retries: int = 1,
) -> Iterator[list[Any]]:
    """``[fn(*args) for args in row]`` for each row, yielded in order.

    With a client, tasks run on its workers: rows are submitted ``ahead`` rows ahead of the
    one being yielded (at least enough tasks to keep every worker thread busy), so results
    wait in memory for a few rows at most. Without one (``None``), in this process.
    """
    if client is None:
        for row in rows:
            yield [fn(*args) for args in row]
        return
    threads = max(1, sum(client.nthreads().values()))
    per_row = max(1, max((len(r) for r in rows), default=1))
    ahead = max(ahead, -(-2 * threads // per_row))
    pending: list[list[Any]] = []
    submitted = 0
    try:
        for i in range(len(rows)):
            while submitted < len(rows) and submitted <= i + ahead:
                pending.append([client.submit(fn, *args, pure=False, retries=retries) for args in rows[submitted]])
                submitted += 1
            futures = pending.pop(0)
            box = [client.gather(futures)]
            for f in futures:
                f.release()  # the workers may drop their copies now
            del futures
            yield box.pop()  # not kept in this frame while the caller writes it
    finally:
        for futures in pending:  # an error or an interrupt: stop what is still queued
            client.cancel(futures)
