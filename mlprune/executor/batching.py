"""Which missing states train together as one batch (run option ``batch``). Pure Python.

Two states are *siblings* when their nodes end with the same training of the same architecture
on the same data: one train step, last, whose options are equal except the data-order seed (its
key name ``seed``), after any number of steps that are not trainings (a rewind, a random reinit,
a mask shuffle: run per sibling before the batch trains). Their parents, weights, masks and
initial weights may differ. Which plans give siblings (`docs/performance.md`):

- seeds of a sweep: each seed's round-r training (``--seeds 0-7``: 8 siblings per round);
- controls of a level: the main branch's ``reinit+train`` and each control's (``random``,
  ``shuffle``, ``layer_shuffle``, ``invert``...) hang off the same pruned state with the same train
  step: siblings (a control that reinitializes differently is still a sibling);
- spawned copies: they differ only in ``data_order_seed``;
- one-shot sparsities and pruning at initialization: one train step after each sparsity's prune;
- not: roots, prune-only states, analyses, a checkpoint another training emits on its way, nodes
  with two train steps, fp16 trainings (`training.UNBATCHABLE_PRECISIONS`), dynamic sparse training
  and the BatchNorm L1 penalty (`training.UNBATCHED_OPTIONS`) and models whose
  registry entry is not ``batchable`` (torchvision models).

Grouping (`sibling_groups`): siblings are grouped per *depth* in the graph of missing states (the
longest chain of missing dependencies below a node), then split into groups of at most ``batch``
as even as can be. Every dependency edge goes to a strictly greater depth, so tasks that stand for
a group of one depth keep the graph acyclic: `batched_graph` turns each group into one dask task
that reaches all its keys (`task.reach_batch`) and each of its keys into a task that picks its run
id (`task.batch_member`), so whatever depends on a key still depends on that key: the graph stays a
dask graph for every scheduler.
"""

from __future__ import annotations

import hashlib
import json

from ..spec.keys import canonical_json
from ..spec.steps import TRAIN_SCHEMA, kind_of

__all__ = ["sibling_signature", "sibling_groups", "batched_graph", "GROUP_PREFIX"]

GROUP_PREFIX = "batch-"  # dask keys of group tasks (never a state's key: those are hex digests)
_ORDER = TRAIN_SCHEMA["data_order_seed"].key_name


def sibling_signature(node: dict, root: dict | None, data_dir: str | None) -> str | None:
    """What a node's batchable training shares with its siblings (canonical JSON), or None when it is not
    trained batched. `root`: the resolved root spec of its lineage; `data_dir`: where its data is read."""
    from ..models import model_entry
    from ..training import UNBATCHABLE_PRECISIONS, UNBATCHED_OPTIONS

    steps = node.get("steps") or []
    if root is None or node.get("root") is not None or node.get("emitted_by") or not steps:
        return None
    kinds = [kind_of(step) for step in steps]
    if not kinds[-1][0].trains or any(kind.trains for kind, _ in kinds[:-1]):
        return None
    train = dict(kinds[-1][1])
    if train.get("precision", TRAIN_SCHEMA["precision"].default) in UNBATCHABLE_PRECISIONS:
        return None
    if any(train.get(option) for option in UNBATCHED_OPTIONS):
        return None
    if not model_entry(root["model"], check_torchvision=False).batchable:
        return None
    train.pop(_ORDER, None)
    return canonical_json(
        {
            "model": root["model"],
            "model_options": root.get("model_options"),
            "dataset": root["dataset"],
            "data": root.get("data"),
            "data_dir": data_dir,
            "train": train,
        }
    )


def sibling_groups(tasks: dict[str, dict], signatures: dict[str, str | None], batch: int) -> list[list[str]]:
    """Groups (of 2 to `batch` keys) of sibling tasks; `tasks` in dependency order, each with its ``deps``
    among the missing keys."""
    depth: dict[str, int] = {}
    for key, task in tasks.items():
        depth[key] = 1 + max((depth[d] for d in task["deps"] if d in depth), default=-1)
    buckets: dict[tuple, list[str]] = {}
    for key in tasks:
        if signatures.get(key) is not None:
            buckets.setdefault((depth[key], signatures[key]), []).append(key)
    groups = []
    for members in buckets.values():
        count = -(-len(members) // batch)  # as few groups as `batch` allows, as even as can be
        size, extra = divmod(len(members), count)
        start = 0
        for index in range(count):
            stop = start + size + (1 if index < extra else 0)
            if stop - start >= 2:
                groups.append(members[start:stop])
            start = stop
    return groups


def batched_graph(
    graph: dict, tasks: dict[str, dict], groups: list[list[str]], context_text: str, reach_batch, batch_member
) -> dict:
    """`graph` with each group's keys reached by one task (`reach_batch(group json, context, *deps)` -> per
    key its run id or exception) and picked from it (`batch_member(results, index)`)."""
    out = dict(graph)
    for members in groups:
        deps = list(dict.fromkeys(d for key in members for d in tasks[key]["deps"]))
        group = {"tasks": [tasks[key] for key in members], "deps": deps}
        group_key = GROUP_PREFIX + hashlib.sha256(json.dumps(members).encode()).hexdigest()[:16]
        out[group_key] = (reach_batch, json.dumps(group), context_text, *deps)
        for index, key in enumerate(members):
            out[key] = (batch_member, group_key, index)
    return out
