"""The dask executor: speedup of 2 local workers over sync, and tracking overhead per state.

A. Speedup. Four independent compute-bound branches (four seeds of a recipe that
   initializes LeNet on digits and trains it) are reached twice against one real
   `mlflow server` on a loopback port (sqlite backend, artifacts proxied by the
   server): with ``scheduler="sync"`` (one after another in this process) and on a
   local dask cluster of 2 worker processes (started and warmed up beforehand:
   ``cluster_start_s`` reports what starting it costs; ``--scheduler processes``
   pays it on every call). Both runs must give the same keys and bitwise the same
   weights. ``speedup = sync_s / parallel_s``; on 2 free cores expect close to 2x.

B. Tracking overhead per state. A chain of states whose compute is next to nothing
   (``train`` with 0 epochs: evaluation only, weights written) is reached in this
   process against the same server and against a local sqlite file. Per state:
   ``wall`` (init/apply as the user sees it), ``compute`` (the state's own
   ``duration_s`` metric: steps + evaluation), and ``overhead = wall - compute``:
   the claim, the run, metrics, artifacts, the FINISHED checks and loading the
   parent. ``hit_ms`` is a cache hit (the chain reached again by a new process-local
   Experiment: a look-up by key and the spec read).

    python benchmarks/bench_parallel.py [--quick]

``measure(quick)`` returns the figures as a dict for a benchmark runner.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
# sync and the workers must compute bitwise the same weights: one thread count on both sides
# (mlprune's default gives sync all cores and each of 2 workers half of them)
os.environ.setdefault("MLPRUNE_THREADS", "1")

RECIPE = """\
params: {seed: 0, epochs: 8}
root: {model: lenet, dataset: digits, seed: $seed}
train: {epochs: $epochs, lr: 0.01, momentum: 0.9}
rounds: 0
"""


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class _Server:
    """A real `mlflow server` (sqlite backend, proxied artifacts) on a loopback port."""

    def __init__(self, folder: Path):
        port = _free_port()
        self.uri = f"http://127.0.0.1:{port}"
        self.log = open(folder / "server.log", "w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "mlflow",
                "server",
                "--backend-store-uri",
                f"sqlite:///{folder}/server.db",
                "--artifacts-destination",
                str(folder / "artifacts"),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--workers",
                "1",
            ],
            stdout=self.log,
            stderr=subprocess.STDOUT,
            cwd=folder,
        )
        deadline = time.monotonic() + 300
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mlflow server died: {(folder / 'server.log').read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(f"{self.uri}/health", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    raise RuntimeError("mlflow server did not start in 300 s") from None
                time.sleep(0.5)

    def close(self):
        self.process.terminate()
        try:
            self.process.wait(30)
        except subprocess.TimeoutExpired:
            self.process.kill()
        self.log.close()


def _hashes(uri: str, result) -> dict[str, str]:
    from mlprune import Experiment

    experiment = Experiment(tracking_uri=uri, experiment_id=result.experiment_id)
    out = {}
    for states in result.states:
        for run_id in states.values():
            state = experiment.state(run_id)
            digest = hashlib.sha256()
            for name in sorted(state.weights):
                digest.update(state.weights[name].contiguous().numpy().tobytes())
            out[state.key] = digest.hexdigest()
    return out


def _warm_up() -> None:
    """One short training outside any store: the first training of a process pays torch's start-up."""
    import torch

    from mlprune import models
    from mlprune.data import load_data
    from mlprune.spec.steps import resolve_train
    from mlprune.training.loop import train

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    data = load_data("digits", image_size=28)
    model = models.build_model("lenet", num_classes=10, input_shape=tuple(data.input_shape), seed=99)
    train(model, {}, data, resolve_train({"epochs": 1}).options, seed=99)
    torch.set_num_threads(threads)


class _CpuShare:
    """Cores busy over a stretch of wall time: all processes (/proc/stat) and ours (this process and
    its descendants: the mlflow server, the dask workers). The difference is other people's work."""

    def __enter__(self):
        self.started, self.busy, self.ours = time.perf_counter(), self._busy(), self._ours()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.started
        self.all_cores = round((self._busy() - self.busy) / wall, 2)
        self.our_cores = round((self._ours() - self.ours) / wall, 2)
        self.other_cores = round(max(0.0, self.all_cores - self.our_cores), 2)

    @staticmethod
    def _busy() -> float:
        try:
            fields = [float(x) for x in Path("/proc/stat").read_text().split("\n")[0].split()[1:]]
        except OSError:
            return 0.0
        idle = fields[3] + (fields[4] if len(fields) > 4 else 0)
        return (sum(fields[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _ours() -> float:
        import psutil

        total = 0.0
        me = psutil.Process()
        for process in [me, *me.children(recursive=True)]:
            try:
                times = process.cpu_times()
                total += times.user + times.system
            except psutil.Error:
                pass
        return total


def _speedup(folder: Path, uri: str, quick: bool) -> dict:
    import cloudpickle
    from distributed import Client

    from mlprune.executor import local_cluster, run_plans
    from mlprune.recipes import compile_recipe
    from mlprune.store import Store

    recipe = folder / "branches.yaml"
    recipe.write_text(RECIPE)
    epochs = 4 if quick else 10
    load_before = round(os.getloadavg()[0], 2)
    plans = [compile_recipe(recipe, {"seed": seed, "epochs": epochs}) for seed in range(4)]
    _warm_up()
    started = time.perf_counter()
    with _CpuShare() as sync_cpu:
        sync = run_plans(plans, Store("bench-sync", tracking_uri=uri), "sync")
    sync_s = time.perf_counter() - started

    started = time.perf_counter()
    cluster = local_cluster(2)  # what --scheduler processes --workers 2 starts
    client = Client(cluster)
    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # _warm_up runs on the workers
    # as in this process: imports and torch's first training, in the thread that runs the tasks
    client.gather(
        [client.submit(_warm_up, pure=False, workers=[worker]) for worker in client.scheduler_info()["workers"]]
    )
    cluster_start_s = time.perf_counter() - started
    try:
        started = time.perf_counter()
        with _CpuShare() as parallel_cpu:
            parallel = run_plans(plans, Store("bench-parallel", tracking_uri=uri), cluster.scheduler_address)
        parallel_s = time.perf_counter() - started
    finally:
        client.close()
        cluster.close()
    same = _hashes(uri, sync) == _hashes(uri, parallel)
    return {
        "branches": 4,
        "epochs_per_branch": epochs,
        "states": sync.computed,
        "sync_s": round(sync_s, 2),
        "parallel_s": round(parallel_s, 2),
        "speedup": round(sync_s / parallel_s, 2),
        "cluster_start_s": round(cluster_start_s, 2),
        "same_keys_and_weights": same,
        "cores": os.cpu_count(),
        "load_average_1min_before": load_before,
        "cores_used_sync": {"ours": sync_cpu.our_cores, "others": sync_cpu.other_cores},
        "cores_used_parallel": {"ours": parallel_cpu.our_cores, "others": parallel_cpu.other_cores},
    }


def _overhead(uri: str, n: int, name: str) -> dict:
    from mlflow.tracking import MlflowClient

    from mlprune import Experiment, Recipe

    experiment = Experiment(name, tracking_uri=uri)
    state = experiment.init(model="lenet_300_100", dataset="digits", seed=0)
    step = Recipe.train(steps="1it")  # one step: the overhead of a state, next to nothing computed
    walls, chain = [], []
    for _ in range(n):
        started = time.perf_counter()
        state = state.apply(step)
        walls.append(time.perf_counter() - started)
        chain.append(state.run_id)
    client = MlflowClient(tracking_uri=uri)
    computes = [client.get_run(run_id).data.metrics["duration_s"] for run_id in chain]
    again = Experiment(name, tracking_uri=uri)
    state = again.init(model="lenet_300_100", dataset="digits", seed=0)
    hits = []
    for _ in range(n):
        started = time.perf_counter()
        state = state.apply(step)
        hits.append(time.perf_counter() - started)
    wall, compute = statistics.median(walls), statistics.median(computes)
    return {
        "states": n,
        "wall_ms": round(wall * 1000, 1),
        "compute_ms": round(compute * 1000, 1),
        "overhead_ms": round((wall - compute) * 1000, 1),
        "hit_ms": round(statistics.median(hits) * 1000, 1),
    }


def measure(quick: bool = False) -> dict:
    """{'speedup': {...}, 'overhead_server': {...}, 'overhead_sqlite': {...}}."""
    with tempfile.TemporaryDirectory(prefix="bench-parallel-") as tmp:
        folder = Path(tmp)
        server = _Server(folder)
        try:
            result = {"speedup": _speedup(folder, server.uri, quick)}
            n = 8 if quick else 30
            result["overhead_server"] = _overhead(server.uri, n, "bench-overhead")
        finally:
            server.close()
        result["overhead_sqlite"] = _overhead(f"sqlite:///{folder}/local.db", n, "bench-overhead")
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer epochs and states (a smoke run)")
    parser.add_argument("--json", action="store_true", help="print the dict as JSON")
    args = parser.parse_args()
    result = measure(args.quick)
    if args.json:
        print(json.dumps(result, indent=1))
        return
    s = result["speedup"]
    print(
        f"A. {s['branches']} independent branches (lenet on digits, {s['epochs_per_branch']} epochs each), "
        f"{s['cores']} cores"
    )
    print(f"   {'sync':<28}{s['sync_s']:>8.2f} s")
    print(
        f"   {'2 local dask workers':<28}{s['parallel_s']:>8.2f} s   speedup {s['speedup']:.2f}x  "
        f"(cluster start {s['cluster_start_s']:.1f} s, not included)"
    )
    print(f"   same keys and weights: {s['same_keys_and_weights']}")
    print(
        f"   cores busy, ours / other processes': sync {s['cores_used_sync']['ours']:.2f} / "
        f"{s['cores_used_sync']['others']:.2f}, parallel {s['cores_used_parallel']['ours']:.2f} / "
        f"{s['cores_used_parallel']['others']:.2f} (of {s['cores']}; the speedup needs the cores free)"
    )
    print("B. tracking overhead per state (median; compute = the state's steps + evaluation)")
    print(f"   {'store':<28}{'wall ms':>9}{'compute ms':>12}{'overhead ms':>13}{'cache hit ms':>14}")
    for label, key in (("mlflow server (http)", "overhead_server"), ("local sqlite file", "overhead_sqlite")):
        o = result[key]
        print(
            f"   {label:<28}{o['wall_ms']:>9.1f}{o['compute_ms']:>12.1f}{o['overhead_ms']:>13.1f}{o['hit_ms']:>14.1f}"
        )


if __name__ == "__main__":
    main()
