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

from .clusters import WORKER_CONFIG, gpu_workers, local_cluster, task_resources
from .graph import SCHEDULERS, Execution, Result, parse_scheduler, run_plan, run_plans
from .options import RunOptions, parse_switch
from .task import reach, register_store
from .threads import cluster_threads, compute_threads, pinned_threads, torch_default_threads

__all__ = ["WORKER_CONFIG", "gpu_workers", "local_cluster", "task_resources", "SCHEDULERS", "Execution", "Result",
           "parse_scheduler", "run_plan", "run_plans", "RunOptions", "parse_switch", "reach", "register_store",
           "cluster_threads", "compute_threads", "pinned_threads", "torch_default_threads"]
