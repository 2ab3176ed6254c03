"""One training per GPU on dask: workers get the GPU resource, tasks on CUDA ask for it.

The cluster tests start real dask worker processes pinned to (here: pretend) GPUs through
CUDA_VISIBLE_DEVICES; no GPU is needed, none is touched.
"""

from __future__ import annotations

import os
import time

import pytest

from mlprune.executor import gpu_workers, task_resources


def test_tasks_ask_for_a_gpu_only_on_cuda_and_only_where_workers_have_one():
    gpu, plain = [{"GPU": 1}, {"GPU": 1}], [{}, {}]
    assert task_resources("cuda", gpu) == {"GPU": 1}
    assert task_resources("cuda:1", gpu) == {"GPU": 1}
    assert task_resources("auto", gpu) == {"GPU": 1}  # auto on GPU workers is CUDA
    assert task_resources("cpu", gpu) is None
    assert task_resources("mps", gpu) is None
    assert task_resources("cuda", plain) is None  # nobody offers one: asking would wait forever


def test_local_gpu_workers_are_pinned_one_per_gpu():
    assert gpu_workers(2, 2) == [
        {"env": {"CUDA_VISIBLE_DEVICES": "0"}, "resources": {"GPU": 1}},
        {"env": {"CUDA_VISIBLE_DEVICES": "1"}, "resources": {"GPU": 1}},
    ]
    assert [w["env"]["CUDA_VISIBLE_DEVICES"] for w in gpu_workers(3, 2)] == ["0", "1", "0"]


def _visible_gpus():
    return os.environ.get("CUDA_VISIBLE_DEVICES")


def _where_and_when(seconds):
    start = time.time()
    time.sleep(seconds)
    return os.environ.get("CUDA_VISIBLE_DEVICES"), os.getpid(), start, time.time()


@pytest.mark.slow
def test_a_local_cluster_on_two_gpus_runs_one_task_per_gpu_at_a_time():
    from distributed import Client

    from mlprune.executor import local_cluster

    cluster = local_cluster(None, gpus=2)  # what --scheduler processes starts on a 2-GPU machine
    client = Client(cluster)
    try:
        workers = client.scheduler_info()["workers"]
        assert sorted(w["resources"].get("GPU") for w in workers.values()) == [1, 1]
        assert sorted(client.run(_visible_gpus).values()) == ["0", "1"]
        futures = [client.submit(_where_and_when, 0.5, pure=False, resources={"GPU": 1}) for _ in range(4)]
        results = client.gather(futures)
        assert {gpu for gpu, *_ in results} == {"0", "1"}
        for gpu in ("0", "1"):  # the tasks of one GPU never overlap
            spans = sorted((start, end) for g, _, start, end in results if g == gpu)
            assert all(earlier[1] <= later[0] for earlier, later in zip(spans, spans[1:]))
    finally:
        client.close()
        cluster.close()
