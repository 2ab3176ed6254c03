"""Torch threads per state (pinned while it is computed), deterministic algorithms, the
allocator of dask workers, and the garbage collector paused while torch and MLflow are imported:
the process-wide settings a state is computed under."""

from __future__ import annotations

import gc
import os
import threading
from contextlib import contextmanager
from urllib.parse import urlparse

from .. import names
from ..errors import SpecError, shown
from ..spec.limits import MAX_THREADS

_threads_lock = threading.Lock()


_threads_users = [0, None]  # states being computed in this process, torch's thread count before


def compute_threads(workers: int = 1) -> int:
    """Torch threads each state is computed with: MLPRUNE_THREADS, else the cores split between the
    `workers` processes that compute at once (at least 1 each).

    The cores are torch's own default thread count (what PyTorch sets at import: the physical cores
    or OMP_NUM_THREADS), so a single run uses the machine and a local cluster of N workers does not
    oversubscribe it. Float sums (matmul, convolutions) are split differently with another thread
    count: a state is bitwise reproducible for a given count, and states computed with different
    counts agree up to floating-point summation order (the count is recorded as the param
    ``run.threads``, never keyed). Pin MLPRUNE_THREADS for bytes that do not depend on the machine.
    """
    return pinned_threads() or max(1, torch_default_threads() // max(1, workers))


def pinned_threads() -> int | None:
    """MLPRUNE_THREADS, checked (None when not set); needs no torch."""
    text = os.environ.get(names.ENV_THREADS, "").strip()
    if not text:
        return None
    if not (text.isascii() and text.isdigit()) or len(text) > 9 or not 1 <= int(text) <= MAX_THREADS:
        raise SpecError(f"{names.ENV_THREADS} must be an integer >= 1 and <= {MAX_THREADS}, got {shown(text)}")
    return int(text)


def settle_wait_policy(threads: int) -> None:
    """How OpenMP's threads wait in this process, set before torch loads (OpenMP reads it then).

    States computed here with several threads: where the machine has a core for each of them,
    OpenMP's default (a thread spins briefly for the next parallel region: a LeNet-300-100 training
    3.1 s, against 5.6 s waiting passively and 4.3 s at one thread); where other work running now
    leaves fewer, passive waits (a spinning thread that the other work deschedules stalls every
    parallel region: 30 s against 2.3 s on a busy 2-core machine). It changes scheduling only, never
    results. A user's OMP_WAIT_POLICY wins; once torch is imported nothing changes.
    """
    import sys

    if threads < 2 or "OMP_WAIT_POLICY" in os.environ or "torch" in sys.modules:
        return
    if others_running() + threads > machine_cores():
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"


def others_running() -> int:
    """How many other tasks run on this machine now (Linux: the runnable tasks besides this one in
    /proc/loadavg, the least of three looks; elsewhere: the 1-minute load average)."""
    try:
        counts = []
        for _ in range(3):
            with open("/proc/loadavg") as file:
                counts.append(int(file.read().split()[3].split("/")[0]))
        return max(0, min(counts) - 1)
    except (OSError, ValueError, IndexError):
        try:
            return round(os.getloadavg()[0])
        except OSError:
            return 0


def machine_cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cluster_threads(client) -> int:
    """Torch threads per state on a dask cluster: each host's cores (torch's default there) split
    between the worker threads it runs; the smallest share, so that no host is oversubscribed."""
    cores = client.run(torch_default_threads, on_error="return")  # {worker address: cores}
    per_host: dict[str, list[int]] = {}  # host -> [worker threads, cores]
    for address, info in client.scheduler_info()["workers"].items():
        found = cores.get(address)
        host = per_host.setdefault(info.get("host") or urlparse(address).hostname or address, [0, 0])
        host[0] += int(info.get("nthreads") or 1)
        host[1] = max(host[1], found if isinstance(found, int) else 1)
    return max(1, min((c // n for n, c in per_host.values()), default=1))


def torch_default_threads() -> int:
    """torch's thread count as it set it at import, even while a state is being computed (pinned)."""
    import torch

    with _threads_lock:
        if _threads_users[0] > 0 and _threads_users[1] is not None:
            return _threads_users[1]
        return torch.get_num_threads()


class PinnedThreads:
    def __init__(self, threads: int):
        self.threads = threads

    def __enter__(self):
        import torch

        with _threads_lock:
            if _threads_users[0] == 0:
                _threads_users[1] = torch.get_num_threads()
            _threads_users[0] += 1
            torch.set_num_threads(self.threads)

    def __exit__(self, *exc):
        import torch

        with _threads_lock:
            _threads_users[0] -= 1
            if _threads_users[0] == 0 and _threads_users[1] is not None:
                torch.set_num_threads(_threads_users[1])


CUBLAS_DETERMINISTIC = ":4096:8"


class Determinism:
    """torch's deterministic algorithms while a state is computed (``deterministic``), restored after.

    cuBLAS picks its workspace when a process first uses it, so CUBLAS_WORKSPACE_CONFIG is set
    here and in every task's environment (`Execution._context`) before CUDA work starts; a
    process that used cuBLAS before without it gets torch's own error on the first matmul.
    """

    def __init__(self, on: bool):
        self.on = on
        self.before = None

    def __enter__(self):
        if not self.on:
            return
        import torch

        os.environ.setdefault(names.ENV_CUBLAS_WORKSPACE, CUBLAS_DETERMINISTIC)
        with _threads_lock:
            self.before = (
                torch.are_deterministic_algorithms_enabled(),
                torch.backends.cudnn.deterministic,
                torch.backends.cudnn.benchmark,
            )
            torch.use_deterministic_algorithms(True)
            torch.backends.cudnn.deterministic = True
            torch.backends.cudnn.benchmark = False

    def __exit__(self, *exc):
        if not self.on or self.before is None:
            return
        import torch

        with _threads_lock:
            torch.use_deterministic_algorithms(self.before[0])
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = self.before[1:]


_allocator_tuned = False


def tune_allocator() -> None:
    """In a dask worker started with MALLOC_TRIM_THRESHOLD_ (see WORKER_CONFIG), let glibc keep
    tensors on the heap again: mmap threshold 32 MiB, trim threshold 64 MiB (mallopt)."""
    global _allocator_tuned
    if _allocator_tuned or "MALLOC_TRIM_THRESHOLD_" not in os.environ:
        return
    _allocator_tuned = True
    try:
        import ctypes

        libc = ctypes.CDLL("libc.so.6")
        libc.mallopt(-3, 32 << 20)  # M_MMAP_THRESHOLD
        libc.mallopt(-1, 64 << 20)  # M_TRIM_THRESHOLD
    except (OSError, AttributeError):  # not glibc: nothing to undo
        pass


@contextmanager
def collector_paused():
    """Python's garbage collector paused for a block that imports torch or MLflow (restored after).

    Their imports create about a million objects that live as long as the process, and the
    collector's passes over them while they are created cost a quarter of the imports' time
    (measured on the CI machine: torch, MLflow and its store 2.9 s -> 2.2 s). The objects are not
    garbage, so nothing is kept that a pass would have freed."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()
