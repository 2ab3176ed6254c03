"""Where the graph runs besides this process: local dask clusters (CPU workers, one per GPU), a
running dask scheduler, and the checks that its workers can compute mlprune states."""

from __future__ import annotations

import os
import time
from urllib.parse import urlparse

from ..errors import SpecError

CONNECT_TIMEOUT_S = 5


def is_loopback(address: str) -> bool:
    host = urlparse(address).hostname or ""
    return host in ("localhost", "::1") or host.startswith("127.")


# dask's nanny starts workers with MALLOC_TRIM_THRESHOLD_=65536, which also pins glibc's mmap
# threshold: every tensor above 128 KiB is then mmap'ed and unmapped again, and training runs
# 2-3x slower in a worker than in a plain process. Our local clusters drop the setting; in
# workers started otherwise (`dask worker`), reach raises both thresholds (tune_allocator).
WORKER_CONFIG = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}


GPU_RESOURCE = "GPU"


def task_resources(device_name: str, worker_resources: list[dict]) -> dict | None:
    """What each task asks of a dask worker: one GPU when states are computed on CUDA (``cuda``,
    ``cuda:N``, or ``auto`` on workers that have one) and some worker advertises the ``GPU``
    resource; else nothing (a task that asked for a resource no worker has would wait forever)."""
    if not (device_name == "auto" or device_name.startswith("cuda")):
        return None
    if not any(resources.get(GPU_RESOURCE, 0) >= 1 for resources in worker_resources):
        return None
    return {GPU_RESOURCE: 1}


def gpu_workers(n_workers: int, gpus: int) -> list[dict]:
    """Per-worker options of a local cluster on `gpus` GPUs: worker i sees GPU i mod gpus only (its
    ``cuda`` is that GPU) and offers one ``GPU`` resource, so each GPU trains one state at a time."""
    return [{"env": {"CUDA_VISIBLE_DEVICES": str(i % gpus)}, "resources": {GPU_RESOURCE: 1}} for i in range(n_workers)]


def local_gpus(device_name: str) -> int:
    """GPUs a local cluster spreads its workers over: all of them for ``auto`` / ``cuda``, none for a
    chosen ``cuda:N`` (every worker uses that one) or another device."""
    if device_name not in ("auto", "cuda"):
        return 0
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def local_cluster(n_workers: int | None, gpus: int = 0):
    """A dask cluster of single-threaded worker processes on this machine, set up for training.

    With `gpus`, one worker per GPU by default, each pinned to its GPU and offering the ``GPU``
    resource (`gpu_workers`); `n_workers` defaults to the cores without GPUs.
    """
    import logging

    import dask
    from distributed import LocalCluster, Nanny, Scheduler, SpecCluster

    # the workers share the cores: their threads wait passively (`threads.settle_wait_policy`)
    wait_policy = {"distributed.nanny.pre-spawn-environ.OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE")}
    with dask.config.set({**WORKER_CONFIG, **wait_policy}):
        if not gpus:
            return LocalCluster(
                n_workers=n_workers or os.cpu_count() or 1,
                threads_per_worker=1,
                processes=True,
                dashboard_address=None,
                silence_logs=logging.ERROR,
            )
        scheduler = {"cls": Scheduler, "options": {"host": "127.0.0.1", "dashboard_address": None}}
        workers = {
            f"gpu-worker-{i}": {
                "cls": Nanny,
                "options": {"nthreads": 1, "host": "127.0.0.1", "silence_logs": logging.ERROR, **extra},
            }
            for i, extra in enumerate(gpu_workers(n_workers or gpus, gpus))
        }
        return SpecCluster(workers=workers, scheduler=scheduler, silence_logs=logging.ERROR)


def connect(scheduler: str, workers: int | None, device_name: str = "cpu"):
    """(client, cluster or None) for 'processes' or a scheduler address; one-line errors."""
    from distributed import Client

    if scheduler == "processes":
        cluster = local_cluster(workers, local_gpus(device_name))
        return Client(cluster), cluster
    started = time.monotonic()
    try:
        client = Client(scheduler, timeout=f"{CONNECT_TIMEOUT_S}s")
    except (OSError, TimeoutError, ValueError) as error:
        raise SpecError(
            f"cannot reach the dask scheduler {scheduler} within "
            f"{time.monotonic() - started:.0f} s: {' '.join(str(error).split())[:200]}"
        ) from None
    return client, None


def check_worker_plugins(client, used: dict) -> None:
    """A one-line SpecError if a worker cannot find a plugin the plan uses, or has other code of it."""
    from ..plugins import identities_here

    if not used:
        return
    found = client.run(identities_here, sorted(used), on_error="return")
    for worker, identities in sorted(found.items()):
        if isinstance(identities, BaseException):
            raise SpecError(f"dask worker {worker} cannot look up plugins: {type(identities).__name__}: {identities}")
        for name, identity in identities.items():
            if isinstance(identity, str):
                raise SpecError(
                    f"dask worker {worker}: {identity} (install the plugin there, or make the module "
                    f"that registers it importable there)"
                )
            if identity != used[name]:
                raise SpecError(
                    f"dask worker {worker} has plugin {name} {identity}, this process {used[name]}: "
                    f"install the same code everywhere"
                )


def check_workers(client, scheduler: str) -> None:
    """A one-line SpecError if a worker cannot import mlprune (or runs another version)."""
    import importlib.metadata
    import importlib.util

    from ..version import __version__

    deadline = time.monotonic() + 60
    while not client.scheduler_info().get("workers"):
        if time.monotonic() > deadline:
            raise SpecError(
                f"the dask scheduler {scheduler} has no workers (start them with `dask worker {scheduler}`)"
            )
        time.sleep(0.2)
    found = client.run(importlib.util.find_spec, "mlprune", on_error="return")
    missing = sorted(worker for worker, spec in found.items() if spec is None or isinstance(spec, BaseException))
    if missing:
        raise SpecError(
            f"dask worker {missing[0]} ({len(missing)} of {len(found)}) cannot import mlprune: "
            f"install it there (pip install mlprune) in the Python that runs `dask worker`"
        )
    versions = client.run(importlib.metadata.version, "mlprune", on_error="return")
    other = sorted((w, v) for w, v in versions.items() if isinstance(v, str) and v != __version__)
    if other:
        raise SpecError(
            f"dask worker {other[0][0]} runs mlprune {other[0][1]}, this process {__version__}: "
            f"install the same version everywhere"
        )
