"""The executor: plans of keyed nodes -> one dask graph of the missing states -> a scheduler -> the store.

- `graph`: `Execution` (merge plans by key, find and verify existing states, build the graph, run it
  on a scheduler), `run_plans`, `run_plan`, `Result`;
- `task`: one task of the graph (`reach`): claim, compute (through `mlprune.runners`), store;
- `options`: `RunOptions`, how states are computed (never in a key);
- `threads`: torch threads per state, determinism, worker allocator settings;
- `clusters`: local dask clusters (CPU, one worker per GPU), remote schedulers, worker checks;
- `batching`: which missing states train together as one batch (run option ``batch``), the group tasks;
- `siblings`: a group's claims, heartbeats and stored states (computed through `mlprune.runners.siblings`).
"""

from __future__ import annotations

import importlib

# name -> the module that defines it: loaded on first use, so the command line reads the run options'
# declarations (`options`) without importing the graph, dask or the store
_EXPORTS = {
    "clusters": ("WORKER_CONFIG", "gpu_workers", "local_cluster", "task_resources"),
    "graph": ("SCHEDULERS", "Execution", "Result", "parse_scheduler", "run_plan", "run_plans"),
    "options": ("RUN_OPTIONS", "RunOptions", "parse_switch"),
    "task": ("reach", "register_store"),
    "threads": ("cluster_threads", "compute_threads", "pinned_threads", "torch_default_threads"),
}
_HOME = {name: module for module, names in _EXPORTS.items() for name in names}

__all__ = list(_HOME)


def __getattr__(name):
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
