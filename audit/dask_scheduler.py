"""Where a stage's Dask computations run: threads, processes, a local cluster or an existing one.

The setting (config ``dask.scheduler``, speed-only: it never changes a result):

* ``threads`` (default): Dask's threaded scheduler with the job's threads.
* ``processes``: Dask's multiprocessing scheduler with as many processes, one pool for the whole job (Dask's own
  starts a fresh pool, each process importing the libraries anew, for every ``compute``).
* ``local-cluster``: a ``distributed.LocalCluster`` started for the job, one
  single-threaded worker process per job thread; its dashboard link is logged.
* an address (``tcp://host:8786``, ``tls://…``): a client of that running
  ``distributed`` scheduler; the cluster's workers must see the same files.
"""
from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor

import dask

log = logging.getLogger(__name__)

LOCAL_SCHEDULERS = ("threads", "processes")
ADDRESS = re.compile(r"^(tcp|tls|inproc|ucx)://\S+$")


def check_scheduler(setting: str) -> None:
    """``ValueError`` naming the accepted forms when ``setting`` is none of them."""
    if setting not in (*LOCAL_SCHEDULERS, "local-cluster") and not ADDRESS.match(setting):
        raise ValueError(f"dask.scheduler {setting!r}: expected threads, processes, local-cluster or a scheduler address such as tcp://host:8786")


@contextlib.contextmanager
def _process_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """One pool of ``workers`` processes, set up as Dask sets up the pool it would start per ``compute`` (its
    multiprocessing context and worker initialiser, and a fixed ``PYTHONHASHSEED`` so that every process hashes
    alike)."""
    from dask.multiprocessing import get_context, initialize_worker_process

    if os.environ.get("PYTHONHASHSEED") in (None, "0"):
        os.environ["PYTHONHASHSEED"] = "6640"  # Dask's own choice for its pools
    with ProcessPoolExecutor(workers, mp_context=get_context(), initializer=initialize_worker_process) as pool:
        yield pool


@contextlib.contextmanager
def dask_scheduler(setting: str, workers: int) -> Iterator[int]:
    """Within the block, Dask computes with ``setting`` (module docstring) and ``workers`` workers; yields ``workers``.

    A cluster started here is closed on exit; a client of an existing scheduler is
    closed, the scheduler left running.
    """
    check_scheduler(setting)
    workers = max(1, int(workers))
    if setting == "threads":
        with dask.config.set(scheduler=setting, num_workers=workers):
            log.info("dask: %s scheduler, %d workers", setting, workers)
            yield workers
        return
    if setting == "processes":
        with _process_pool(workers) as pool, dask.config.set(scheduler=setting, num_workers=workers, pool=pool):
            log.info("dask: %s scheduler, %d workers", setting, workers)
            yield workers
        return
    from distributed import Client, LocalCluster

    if setting == "local-cluster":
        with LocalCluster(n_workers=workers, threads_per_worker=1, processes=True, dashboard_address=":0") as cluster, Client(cluster) as client:
            log.info("dask: local cluster of %d workers, dashboard %s", workers, client.dashboard_link)
            yield workers
        return
    with Client(setting) as client:
        count = len(client.scheduler_info()["workers"])
        log.info("dask: scheduler %s with %d workers, dashboard %s", setting, count, client.dashboard_link)
        yield max(1, count)
