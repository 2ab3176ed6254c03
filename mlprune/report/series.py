"""From a store to series: which states a recipe reached, by round, branch and seed.

Every workflow run (a recipe's or a sweep's) records ``plan.json``: its plans,
each node with its key, round, branch and role (``trained``, ``pruned``, ...) and
the run id it reached. A *series* is one recipe branch with one parameter set and
one seed; series that differ only in their seed share a label and aggregate
(mean ± std over seeds). Nothing is parsed out of node names or labels.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field

from .. import analysis, lineage
from ..errors import SpecError
from ..names import (
    M_COMPRESSION,
    M_COMPRESSION_ALL,
    M_EARLY_STOP_EPOCH,
    M_EARLY_STOP_ITERATION,
    M_EARLY_STOP_TEST_ACCURACY,
    M_FLOPS_COMPACT,
    M_FLOPS_MASKED,
    M_LATENCY,
    M_LATENCY_DENSE,
    M_PARAMS_COMPACT,
    M_SPARSITY,
    M_SPEEDUP,
    M_TEST_ACCURACY,
    M_TEST_LOSS,
    M_THEORETICAL_SPEEDUP,
    PLAN_FILE,
    TAG_INVALID,
    TAG_KEY,
    TAG_KIND,
    TAG_RECIPE,
)

# parameters that do not make another series: seeds aggregate; more rounds extend a series
_SIGNATURE_SKIP = {"seed", "rounds", "data_dir"}


@dataclass
class Series:
    """One recipe branch with one parameter set and one seed: its states by round.

    ``trained[r]`` is the run id of the trained state of round r (0 = the first
    training, dense), ``pruned[r]`` the prune state of round r.
    """

    label: str
    recipe: str
    branch: str
    seed: object
    params: dict
    trained: dict = field(default_factory=dict)
    pruned: dict = field(default_factory=dict)
    nodes: dict = field(default_factory=dict)  # run id -> plan node (dict), for what the sections need
    control_of: str | None = None  # a control: the branch it checks
    base_label: str = ""  # the label of the recipe's main branch (same parameters)
    analyses: dict = field(default_factory=dict)  # run id -> plan node of the branch's analysis states

    @property
    def rounds(self) -> list[int]:
        return sorted(self.trained)


@dataclass
class Collection:
    """What the report draws: the experiment's states, series and the warnings on the way."""

    store: object
    runs: dict  # run id -> FINISHED state run
    series: list[Series]
    orphans: list[str]  # state run ids no workflow reached
    warnings: list[str]
    skipped: dict  # reason -> [run ids]


def recorded_plans(store, workflow_run, warn) -> list[dict]:
    """The plans a workflow run recorded (each with ``reached``: node -> run id); [] (warned) if none."""
    run_id = workflow_run.info.run_id
    recipe = workflow_run.data.tags.get(TAG_RECIPE, "?")
    try:
        recorded = json.loads(store.read_artifact(run_id, PLAN_FILE))
    except (SpecError, ValueError) as error:
        warn(
            f"workflow run {run_id[:8]} ({recipe}, {workflow_run.info.status}) has no readable {PLAN_FILE} "
            f"({error}); its states are in the lineage but not in the per-recipe figures"
        )
        return []
    if not isinstance(recorded, dict) or not isinstance(recorded.get("plans"), list):
        warn(
            f"workflow run {run_id[:8]} ({recipe}) was recorded by an older mlprune; run its recipe again "
            f"(nothing is recomputed) to have it in the per-recipe figures"
        )
        return []
    return recorded["plans"]


def series_of_plan(plan: dict, states: dict) -> dict[str, Series]:
    """{branch: Series} of one recorded plan (label set by the caller)."""
    reached = plan.get("reached") or {}
    nodes = [dict(n, run_id=reached.get(n["name"])) for n in plan["nodes"]]
    nodes = [n for n in nodes if n["run_id"] in states]
    seed = next((n["root"]["seed"] for n in nodes if n.get("root")), plan.get("params", {}).get("seed"))
    out: dict[str, Series] = {}

    def series(branch):
        return out.setdefault(branch, Series("", plan["recipe"], branch, seed, plan.get("overrides") or {}))

    for node in nodes:
        if node.get("kind") == "analysis":  # interpolations, comparisons: for the sections that read them
            series(node.get("branch") or "main").analyses[node["run_id"]] = node
            continue
        if node.get("role") not in ("trained", "pruned") or node.get("round") is None:
            continue
        target = series(node.get("branch") or "main")
        target.nodes[node["run_id"]] = node
        target.control_of = target.control_of or node.get("control_of")
        (target.trained if node["role"] == "trained" else target.pruned)[node["round"]] = node["run_id"]
    main = out.get("main")
    for branch, other in out.items():
        if branch == "main" or main is None:
            continue
        if 0 in main.trained:
            other.trained.setdefault(0, main.trained[0])
        other.pruned = {**main.pruned, **other.pruned}
    return out


def group_series(plans, states: dict) -> tuple[list[Series], set[str]]:
    """The series of recorded plans (each with ``reached``: node -> run id) over the FINISHED ``states``
    {run id: run}, labelled and in order (recipe, main branch first); and the run ids they cover. Series
    that differ only in their seed share a label; a recipe run with several parameter sets names them."""
    groups: dict[tuple, Series] = {}
    signatures: dict[str, set] = {}
    covered: set[str] = set()
    for plan in plans:
        overrides = plan.get("overrides") or {}
        signature = tuple(
            sorted((k, str(v)) for k, v in overrides.items() if k not in _SIGNATURE_SKIP and v not in (None, ""))
        )
        for branch, series in series_of_plan(plan, states).items():
            covered.update(series.trained.values())
            covered.update(series.pruned.values())
            signatures.setdefault(series.recipe, set()).add(signature)
            key = (series.recipe, branch, signature, str(series.seed))
            if key in groups:  # the same series again (a re-run, more rounds): merge
                for attr in ("trained", "pruned", "nodes", "analyses"):
                    merged = getattr(groups[key], attr)
                    for r, run_id in getattr(series, attr).items():
                        merged.setdefault(r, run_id)
                groups[key].control_of = groups[key].control_of or series.control_of
            else:
                groups[key] = series
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "main", kv[0][1], kv[0][2], kv[0][3]))
    for (recipe, branch, signature, _seed), series in ordered:
        label = recipe
        if len(signatures[recipe]) > 1:  # the same recipe with several parameter sets
            common = set.intersection(*[set(sig) for sig in signatures[recipe]])
            label += " (" + (", ".join(f"{k}={v}" for k, v in signature if (k, v) not in common) or "defaults") + ")"
        series.base_label = label
        if branch != "main":
            label += f" / {branch}"
        series.label = label
    return [series for _, series in ordered], covered


def collect(store, warn=None) -> Collection:
    """Read an experiment's runs and group its states into series (see module docs).

    Waits first for the workflow records and figures still being written in the background
    (`mlprune.background`): a report right after a run sees its workflow run."""
    from ..background import wait_pending

    messages: list[str] = []

    def note(message):
        messages.append(message)
        if warn is not None:
            warn(message)

    if not wait_pending(store.tracking_uri):
        note(
            "workflow records or figures still being written in the background after "
            "15 minutes: the report shows what is stored now"
        )
    states, workflows, other, unfinished = {}, [], [], []
    for run in store.runs():
        if lineage.is_state(run):
            if run.info.status == "FINISHED" and not run.data.tags.get(TAG_INVALID):
                states[run.info.run_id] = run
            else:
                unfinished.append(run)
        elif TAG_RECIPE in run.data.tags:
            workflows.append(run)
        else:
            other.append(run)
    if other:
        names = ", ".join(f"{r.info.run_name or '?'} ({r.info.run_id[:8]})" for r in other[:5])
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        note(f"skipped {len(other)} run(s) that are not mlprune states (no mlprune.key tag): {names}{more}")
    # a failed or lost attempt whose key has since been finished is history, not a problem to report
    done = {r.data.tags.get(TAG_KEY) for r in states.values()}
    superseded = [r for r in unfinished if r.data.tags.get(TAG_KEY) in done]
    unfinished = [r for r in unfinished if r.data.tags.get(TAG_KEY) not in done]
    if unfinished:
        names = ", ".join(f"{r.info.run_id[:8]} {r.info.status}" for r in unfinished[:5])
        note(
            f"skipped {len(unfinished)} state run(s) that are not FINISHED and whose state never finished "
            f"since: {names}"
        )

    plans = (plan for workflow in workflows for plan in recorded_plans(store, workflow, note))
    ordered, covered = group_series(plans, states)
    # analyses (compare, cka) hold results, not networks: the sections that read them find them by their parents
    orphans = [
        run_id for run_id in states if run_id not in covered and states[run_id].data.tags.get(TAG_KIND) != "analysis"
    ]
    skipped = {
        "not mlprune states": [r.info.run_id for r in other],
        "not FINISHED": [r.info.run_id for r in unfinished],
        "superseded": [r.info.run_id for r in superseded],
    }
    return Collection(store, states, ordered, orphans, messages, skipped)


def _metric(run, name):
    value = run.data.metrics.get(name) if run is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def rounds_table(collection: Collection) -> list[dict]:
    """One row per series and round: remaining fraction, test accuracy and loss, seed, run id."""
    rows = []
    for series in collection.series:
        for rnd, run_id in sorted(series.trained.items()):
            run = collection.runs.get(run_id)
            acc, sp = _metric(run, M_TEST_ACCURACY), _metric(run, M_SPARSITY)
            if acc is None or sp is None:
                continue
            row = {
                "recipe": series.label,
                "series": series.label,
                "round": rnd,
                "remaining": 1.0 - sp,
                "test_accuracy": acc,
                "test_loss": _metric(run, M_TEST_LOSS),
                "seed": series.seed,
                "run_id": run_id,
            }
            stop = _metric(run, M_EARLY_STOP_ITERATION)
            if stop is not None:
                row["early_stop_iteration"] = stop
                row["early_stop_epoch"] = _metric(run, M_EARLY_STOP_EPOCH)
                at_stop = _metric(run, M_EARLY_STOP_TEST_ACCURACY)
                if at_stop is not None:
                    row["early_stop_test_accuracy"] = at_stop
            rows.append(row)
    return rows


def accuracy_table(collection: Collection, ci: str = "t") -> list[dict]:
    """Accuracy vs remaining weights per series label and round, mean ± std and a 95% CI over seeds (n)."""
    rows = rounds_table(collection)
    return analysis.accuracy_vs_remaining(rows, ci) if rows else []


def study_answer(collection: Collection) -> list[dict]:
    """What a study answers, per recipe (parameter set): the main branch's deepest round, and there the test
    accuracy of the main branch and of each control, per seed and as `accuracy_table` aggregates it (the
    numbers `mlprune compare` prints). Rows: ``{"recipe", "branch", "label", "round", "remaining",
    "seeds": {seed: accuracy}, "mean", "std", "n"}``, main first."""
    table = {(row["recipe"], row["round"]): row for row in accuracy_table(collection)}
    per_seed: dict[tuple, dict] = {}
    for row in rounds_table(collection):
        per_seed.setdefault((row["recipe"], row["round"]), {})[row["seed"]] = row["test_accuracy"]
    deepest: dict[str, int] = {}
    for series in collection.series:
        if series.branch == "main" and series.rounds:
            deepest[series.base_label] = max(deepest.get(series.base_label, 0), max(series.rounds))
    out, seen = [], set()
    for series in collection.series:
        rnd = deepest.get(series.base_label)
        row = table.get((series.label, rnd))
        if rnd is None or row is None or series.label in seen:
            continue
        seen.add(series.label)
        out.append(
            {
                "recipe": series.base_label,
                "branch": series.branch,
                "label": series.label,
                "round": rnd,
                "remaining": row["remaining"],
                "seeds": per_seed.get((series.label, rnd), {}),
                "mean": row["mean"],
                "std": row["std"],
                "n": row["n"],
            }
        )
    return out


def answer_lines(rows: list[dict], max_seeds: int = 8) -> list[str]:
    """`study_answer` as a short text table: per recipe its deepest round, a line per branch with the test
    accuracy of each seed (the first `max_seeds`) and mean ± std (n) over seeds."""
    lines = []
    for recipe in dict.fromkeys(row["recipe"] for row in rows):
        group = [row for row in rows if row["recipe"] == recipe]
        seeds = list(dict.fromkeys(seed for row in group for seed in row["seeds"]))
        shown = seeds[:max_seeds]
        lines.append(
            f"{recipe}: test accuracy at round {group[0]['round']} ({100 * group[0]['remaining']:.2f}% of "
            f"weights remaining), per seed and mean ± std over seeds"
        )
        width = max(len("branch"), *(len(row["branch"]) for row in group))
        head = "".join(f"{'s' + str(seed):>9}" for seed in shown) + ("      …" if len(seeds) > len(shown) else "")
        lines.append(f"  {'branch':<{width}}{head}   mean ± std (n)")
        for row in group:
            cells = "".join(
                f"{100 * row['seeds'][seed]:>8.2f}%" if seed in row["seeds"] else f"{'–':>9}" for seed in shown
            ) + ("      …" if len(seeds) > len(shown) else "")
            lines.append(
                f"  {row['branch']:<{width}}{cells}   {100 * row['mean']:.2f}% ± {100 * row['std']:.2f} ({row['n']})"
            )
    return lines


def plans_collection(store, plans: list[dict]) -> Collection:
    """The series of plans just run (``Plan.to_json()`` with ``reached``), their trained states read from the
    store: what a sweep answers without reading the experiment's other workflow runs."""
    wanted = {
        run_id
        for plan in plans
        for node in plan["nodes"]
        if node.get("role") in ("trained", "pruned")
        for run_id in [(plan.get("reached") or {}).get(node["name"])]
        if run_id
    }
    runs = {run_id: store.run(run_id) for run_id in wanted}
    states = {run_id: run for run_id, run in runs.items() if run is not None and run.info.status == "FINISHED"}
    series, _ = group_series(plans, states)
    return Collection(store, states, series, [], [], {})


def structured_recipes(collection: Collection) -> set[str]:
    """The series base labels whose prune steps remove whole channels (a structured method): the others'
    measured speedups come from units that happen to lose every weight, not from their method."""
    from ..pruning.catalog import METHODS

    out = set()
    for series in collection.series:
        for node in series.nodes.values():
            for step in node.get("steps") or []:
                options = step.get("prune") if isinstance(step, dict) else None
                method = options.get("method") if isinstance(options, dict) else None
                if method in METHODS and METHODS[method].structured:
                    out.add(series.base_label)
    return out


def speedup_table(collection: Collection) -> tuple[list[dict], list[str]]:
    """(rows, unstructured labels): accuracy vs measured speedup per series label and round.

    A series is structured when one of its trained states has a measured ``speedup`` (its compact
    network is smaller: `runners.evaluations.evaluate_compact`); round 0 (dense) is speedup 1 by definition.
    Rows aggregate over seeds: ``{"recipe", "round", "n", "remaining", "speedup", "speedup_std",
    "mean", "std", "ci_low", "ci_high" (95% t interval of the accuracy), "params_compact", "flops_compact", "latency_ms", "latency_ms_dense"}``. The
    other pruned series are listed by label: their sparsity gives no dense speedup.
    """
    groups: dict[tuple, list] = {}
    order: dict[str, int] = {}
    unstructured: list[str] = []
    structured = structured_recipes(collection)
    for series in collection.series:
        runs = {rnd: collection.runs.get(run_id) for rnd, run_id in sorted(series.trained.items())}
        if series.base_label not in structured or not any(_metric(run, M_SPEEDUP) is not None for run in runs.values()):
            if any(rnd > 0 for rnd in runs) and series.label not in unstructured:
                unstructured.append(series.label)
            continue
        order.setdefault(series.label, len(order))
        for rnd, run in runs.items():
            acc, sp = _metric(run, M_TEST_ACCURACY), _metric(run, M_SPARSITY)
            speedup = 1.0 if rnd == 0 else _metric(run, M_SPEEDUP)
            if acc is None or sp is None or speedup is None:
                continue
            groups.setdefault((series.label, rnd), []).append(
                {
                    "accuracy": acc,
                    "remaining": 1.0 - sp,
                    "speedup": speedup,
                    "params_compact": _metric(run, M_PARAMS_COMPACT),
                    "flops_compact": _metric(run, M_FLOPS_COMPACT),
                    "flops_masked": _metric(run, M_FLOPS_MASKED),
                    "latency_ms": _metric(run, M_LATENCY),
                    "latency_ms_dense": _metric(run, M_LATENCY_DENSE),
                }
            )
    rows = []
    for label, rnd in sorted(groups, key=lambda g: (order[g[0]], g[1])):
        points = groups[(label, rnd)]

        def mean(key, points=points):
            values = [p[key] for p in points if p[key] is not None]
            return sum(values) / len(values) if values else None

        def std(key, points=points):
            values = [p[key] for p in points if p[key] is not None]
            if len(values) < 2:
                return 0.0
            m = sum(values) / len(values)
            return math.sqrt(sum((v - m) ** 2 for v in values) / (len(values) - 1))

        accuracy = analysis.statistics.summarize([p["accuracy"] for p in points])
        rows.append(
            {
                "recipe": label,
                "round": rnd,
                "n": len(points),
                "remaining": mean("remaining"),
                "speedup": mean("speedup"),
                "speedup_std": std("speedup"),
                "mean": mean("accuracy"),
                "std": std("accuracy"),
                "ci_low": accuracy["ci_low"],
                "ci_high": accuracy["ci_high"],
                "params_compact": mean("params_compact"),
                "flops_compact": mean("flops_compact"),
                "latency_ms": mean("latency_ms"),
                "latency_ms_dense": mean("latency_ms_dense"),
            }
        )
    return rows, unstructured


def cost_table(collection: Collection, ci: str = "t") -> list[dict]:
    """Accuracy vs ShrinkBench's costs per series label and round, over seeds: ``{"recipe", "round", "n",
    "seeds", "remaining", "compression_ratio_all", "compression_ratio", "theoretical_speedup" (means over
    seeds), "mean", "std", "se", "ci_low", "ci_high", "ci"}`` (`analysis.statistics.summarize` of the
    test accuracy). States without the cost metrics (computed by an older mlprune) are left out."""
    groups: dict[tuple, list] = {}
    order: dict[str, int] = {}
    for series in collection.series:
        for rnd, run_id in sorted(series.trained.items()):
            run = collection.runs.get(run_id)
            point = {
                key: _metric(run, name)
                for key, name in (
                    ("accuracy", M_TEST_ACCURACY),
                    ("sparsity", M_SPARSITY),
                    ("compression_ratio_all", M_COMPRESSION_ALL),
                    ("compression_ratio", M_COMPRESSION),
                    ("theoretical_speedup", M_THEORETICAL_SPEEDUP),
                )
            }
            if point["accuracy"] is None or point["compression_ratio_all"] is None:
                continue
            order.setdefault(series.label, len(order))
            groups.setdefault((series.label, rnd), []).append(dict(point, seed=series.seed))
    rows = []
    for label, rnd in sorted(groups, key=lambda g: (order[g[0]], g[1])):
        points = groups[(label, rnd)]

        def mean(key, points=points):
            values = [p[key] for p in points if p[key] is not None]
            return sum(values) / len(values) if values else None

        summary = analysis.statistics.summarize([p["accuracy"] for p in points], ci)
        rows.append(
            {
                "recipe": label,
                "round": rnd,
                "n": len(points),
                "seeds": [p["seed"] for p in points],
                "remaining": None if mean("sparsity") is None else 1.0 - mean("sparsity"),
                "compression_ratio_all": mean("compression_ratio_all"),
                "compression_ratio": mean("compression_ratio"),
                "theoretical_speedup": mean("theoretical_speedup"),
                **summary,
            }
        )
    return rows
