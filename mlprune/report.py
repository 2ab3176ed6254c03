"""Science outputs of an experiment, and the self-contained HTML report (`mlprune report`).

Python API on states (``ExperimentState`` objects, or anything with ``run_id``,
``masks``, ``weights`` and ``spec``):

- :func:`mask_similarity` -- Jaccard of the kept weights of two states, per layer and overall;
- :func:`jaccard_table` -- the Jaccard matrix of several states (methods x rounds, seeds);
- :func:`structure` -- entirely pruned units per layer vs random pruning at the same sparsity;
- :func:`stability` / :func:`trajectories` -- how masks and weights move across rounds.

The report (:func:`write_report`) reads every state of one experiment through
``store.Store``, groups the states that recipes reached (each workflow run records
``plan.json`` / ``states.json``: recipe, round, branch) into *series* (one recipe,
branch and parameter set; one line per series, seeds aggregated), and writes
``report.html`` (figures embedded as base64 PNG, the DAG as inline SVG: it works
offline), ``figures/*.png`` and ``numbers.json`` (the numbers behind the figures).

Bad input never ends in a traceback: runs that are not mlprune states, states
that are not FINISHED and states with missing artifacts are skipped with a
warning; states of different architectures are never compared (the report draws
one matrix per architecture; the Python API raises a one-line ``SpecError``).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import re
import time
import warnings
from dataclasses import dataclass, field
from html import escape
from pathlib import Path

import numpy as np

from . import __version__, analysis, lineage
from .errors import SpecError

__all__ = [
    "mask_similarity", "jaccard_table", "structure", "stability", "trajectories", "layer_kinds",
    "Series", "collect", "write_report", "workflow_artifacts", "state_figures", "log_state_figures", "ReportWarning",
]


class ReportWarning(UserWarning):
    """Something in the store was skipped; the rest of the report went on."""


# ------------------------------------------------------------------ Python API on states


def _name(state) -> str:
    return str(getattr(state, "run_id", state))[:8]


def _model(state) -> str:
    spec = getattr(state, "spec", None) or {}
    return str(spec.get("root", {}).get("model", "?"))


def mask_similarity(a, b) -> dict:
    """Jaccard of the kept weights of two states: ``{"overall": J, "per_layer": {param: J}}``.

    States of different architectures raise a one-line ``SpecError`` naming both.
    """
    try:
        return analysis.jaccard(a.masks, b.masks)
    except SpecError as error:
        raise SpecError(f"cannot compare state {_name(a)} ({_model(a)}) with state {_name(b)} "
                        f"({_model(b)}): {error}") from None


def jaccard_table(states, labels=None, layer: str | None = None) -> tuple[np.ndarray, list[str]]:
    """Pairwise Jaccard matrix of several states (``layer``: one parameter, default overall)."""
    states = list(states)
    _check_compatible(states)
    labels = [_name(s) for s in states] if labels is None else list(labels)
    return analysis.jaccard_matrix([s.masks for s in states], labels, layer=layer)


def _check_compatible(states) -> None:
    for other in states[1:]:
        a, b = states[0].masks, other.masks
        if set(a) != set(b) or any(tuple(a[n].shape) != tuple(b[n].shape) for n in a):
            mask_similarity(states[0], other)  # raises the one-line architecture message


_KINDS_CACHE: dict[str, dict[str, str]] = {}


def layer_kinds(masks, model: str | None = None) -> dict[str, str]:
    """Ordered ``{param: "conv" | "linear"}`` of the masked parameters, in the model's layer order.

    Taken from ``models.prunable`` of the named architecture when it can be built,
    else inferred from the mask shapes (>= 3 dims: conv) in name order.
    """
    order: dict[str, str] = {}
    if model:
        if model not in _KINDS_CACHE:
            try:
                from . import models

                channels, size = models.model_input(model)
                side = max(size or 32, 32)
                built = models.build_model(model, num_classes=10, input_shape=(channels or 3, side, side))
                _KINDS_CACHE[model] = models.prunable(built)
            except Exception:  # unknown or unbuildable here: fall back to the shapes
                _KINDS_CACHE[model] = {}
        order = _KINDS_CACHE[model]
    kinds = {n: k for n, k in order.items() if n in masks}
    for name in sorted(masks):
        if name not in kinds:
            kinds[name] = "conv" if masks[name].dim() >= 3 else "linear"
    return kinds


def structure(state) -> dict:
    """``analysis.emergent_structure`` of a state's masks, layers in the model's order."""
    return analysis.emergent_structure(state.masks, layer_kinds(state.masks, _model(state)))


def stability(states) -> dict:
    """``analysis.weight_stability`` across states (rounds), e.g. ``[trained, round 1, round 2]``."""
    states = list(states)
    _check_compatible(states)
    return analysis.weight_stability([s.weights for s in states], [s.masks for s in states])


def trajectories(states, param: str, k: int = 20):
    """``analysis.weight_trajectories``: k sampled weights of ``param`` across the states, NaN once pruned."""
    states = list(states)
    _check_compatible(states)
    return analysis.weight_trajectories([s.weights for s in states], [s.masks for s in states], param, k=k)


# ------------------------------------------------------------------- series from a store

WORKFLOW_TAG = "mlprune.recipe"
_NODE = re.compile(r"^(?:(?P<train>train)|prune(?P<prune>\d+)|round(?P<round>\d+)(?:\.(?P<branch>[^@]+))?)$")
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

    @property
    def rounds(self) -> list[int]:
        return sorted(self.trained)


def _parse_override(text: str):
    try:
        import yaml

        return yaml.safe_load(text)
    except Exception:  # noqa: BLE001 - keep the text
        return text


def _workflow_records(store, workflow_run, warn) -> list[tuple[str, dict, list[dict]]] | None:
    """[(recipe, overrides, [{name, run_id}])] of one workflow run, or None (warned).

    A ``mlprune run`` workflow records ``plan.json`` (recipe, the -P overrides, plan
    nodes); a ``mlprune sweep`` workflow records ``states.json`` keyed
    ``"<recipe> k=v ... /<node>"``, one plan per label.
    """
    run_id = workflow_run.info.run_id
    recipe = workflow_run.data.tags.get(WORKFLOW_TAG, "?")
    try:
        reached = json.loads(store.read_artifact(run_id, "states.json"))
    except (SpecError, ValueError) as error:
        warn(f"workflow run {run_id[:8]} ({recipe}, {workflow_run.info.status}) has no readable states.json "
             f"({error}); its states are in the lineage but not in the per-recipe figures")
        return None
    try:
        plan = json.loads(store.read_artifact(run_id, "plan.json"))
    except (SpecError, ValueError):
        plan = None
    if plan is not None and isinstance(plan.get("nodes"), list):
        nodes = [{"name": n["name"], "run_id": reached[n["name"]]} for n in plan["nodes"]
                 if n.get("name") in reached]
        return [(plan.get("recipe", recipe), dict(plan.get("overrides") or {}), nodes)]
    records: dict[str, tuple[str, dict, list]] = {}
    for key, state_id in reached.items():
        label, _, name = key.rpartition("/")
        if label not in records:
            words = label.split() if label else [recipe]
            overrides = {}
            for word in words[1:]:
                k, eq, v = word.partition("=")
                if eq:
                    overrides[k] = _parse_override(v)
            records[label] = (words[0], overrides, [])
        records[label][2].append({"name": name, "run_id": state_id})
    return list(records.values())


def _series_from_nodes(recipe: str, nodes: list[dict], params: dict, seed) -> dict[str, Series]:
    # nodes: [{"name": plan node name, "run_id": ...}]; names say the round and branch
    """{branch: Series} of one workflow's plan nodes (label set later)."""
    out: dict[str, Series] = {}
    by_name = {n["name"]: n for n in nodes}
    for node in nodes:
        name = node["name"]
        if "@" in name:  # early-mask checkpoints (mask_epoch) are side states
            continue
        match = _NODE.match(name)
        if not match:
            continue
        branch = match.group("branch") or node.get("branch") or "main"
        series = out.setdefault(branch, Series("", recipe, branch, seed, params))
        if match.group("train"):
            series.trained[0] = node["run_id"]
        elif match.group("prune"):
            series.pruned[int(match.group("prune"))] = node["run_id"]
        else:
            series.trained[int(match.group("round"))] = node["run_id"]
    if "train" in by_name:
        for branch, series in out.items():
            series.trained.setdefault(0, by_name["train"]["run_id"])
            if branch != "main" and "main" in out:
                series.pruned = dict(out["main"].pruned)
    return out


@dataclass
class Collection:
    """What the report draws: the experiment's states, series and the warnings on the way."""

    store: object
    runs: dict                      # run id -> FINISHED state run
    series: list[Series]
    orphans: list[str]              # state run ids no workflow reached
    warnings: list[str]
    skipped: dict                   # reason -> [run ids]


def collect(store, warn=None) -> Collection:
    """Read an experiment's runs and group its states into series (see module docs)."""
    messages: list[str] = []

    def note(message):
        messages.append(message)
        if warn is not None:
            warn(message)

    all_runs = store.runs()
    states, workflows, other, unfinished = {}, [], [], []
    for run in all_runs:
        if lineage.is_state(run):
            if run.info.status == "FINISHED":
                states[run.info.run_id] = run
            else:
                unfinished.append(run)
        elif WORKFLOW_TAG in run.data.tags:
            workflows.append(run)
        else:
            other.append(run)
    if other:
        names = ", ".join(f"{r.info.run_name or '?'} ({r.info.run_id[:8]})" for r in other[:5])
        more = f" and {len(other) - 5} more" if len(other) > 5 else ""
        note(f"skipped {len(other)} run(s) that are not mlprune states (no mlprune.key tag): {names}{more}")
    if unfinished:
        names = ", ".join(f"{r.info.run_id[:8]} {r.info.status}" for r in unfinished[:5])
        note(f"skipped {len(unfinished)} state run(s) that are not FINISHED: {names}")

    groups: dict[tuple, Series] = {}
    signatures: dict[str, set] = {}
    covered: set[str] = set()
    for workflow in workflows:
        records = _workflow_records(store, workflow, note)
        for recipe, overrides, nodes in records or []:
            nodes = [n for n in nodes if n["run_id"] in states]
            if not nodes:
                continue
            covered.update(n["run_id"] for n in nodes)
            root = next((n["run_id"] for n in nodes if n["name"] == "root"), None)
            seed = overrides.get("seed")
            if root is not None:
                try:
                    seed = store.spec(root)["root"].get("seed", seed)
                except SpecError as error:
                    note(f"state {root[:8]}: {error}")
            # series = recipe + the parameters it was run with, but seeds aggregate and more
            # rounds extend the same series (rounds 1-3 of rounds=5 are those of rounds=3)
            signature = tuple(sorted((k, str(v)) for k, v in overrides.items()
                                     if k not in _SIGNATURE_SKIP and v not in (None, "")))
            signatures.setdefault(recipe, set()).add(signature)
            for branch, series in _series_from_nodes(recipe, nodes, overrides, seed).items():
                key = (recipe, branch, signature, str(seed))
                if key in groups:
                    for attr in ("trained", "pruned"):
                        merged = getattr(groups[key], attr)
                        for r, run_id in getattr(series, attr).items():
                            merged.setdefault(r, run_id)
                else:
                    groups[key] = series
    ordered = sorted(groups.items(), key=lambda kv: (kv[0][0], kv[0][1] != "main", kv[0][1], kv[0][2],
                                                     kv[0][3]))
    for (recipe, branch, signature, _seed), series in ordered:
        label = recipe
        if len(signatures[recipe]) > 1:  # the same recipe with several parameter sets
            common = set.intersection(*[set(sig) for sig in signatures[recipe]])
            label += " (" + (", ".join(f"{k}={v}" for k, v in signature if (k, v) not in common)
                             or "defaults") + ")"
        if branch != "main":
            label += f" / {branch}"
        series.label = label
    orphans = [run_id for run_id in states if run_id not in covered]
    skipped = {"not mlprune states": [r.info.run_id for r in other],
               "not FINISHED": [r.info.run_id for r in unfinished]}
    return Collection(store, states, [s for _, s in ordered], orphans, messages, skipped)


# ------------------------------------------------------------------------ rendering


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "figure"


def _fmt(value, pct=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    return f"{100 * value:.1f}%" if pct else f"{value:.3g}"


class _Loader:
    """Loads states' tensors once; a state with missing artifacts is warned about once and skipped."""

    def __init__(self, store, runs, note):
        self.store, self.runs, self.note = store, runs, note
        self.cache: dict[str, object] = {}
        self.bad: set[str] = set()

    def __call__(self, run_id):
        if run_id in self.bad:
            return None
        if run_id not in self.cache:
            try:
                self.cache[run_id] = self.store.load(run_id)
            except SpecError as error:
                self.bad.add(run_id)
                self.note(f"state {run_id[:8]} left out of the mask and weight figures: {error}")
                return None
        return self.cache[run_id]


def _arch(state) -> tuple:
    return tuple(sorted((n, tuple(m.shape)) for n, m in state.masks.items()))


class _Builder:
    """Accumulates sections (HTML) and figures (PNG files + embedded copies)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.sections: list[tuple[str, str, str]] = []  # (anchor, heading, html)
        self.figures: list[dict] = []
        self.numbers: dict = {}

    def figure(self, fig, name: str, caption: str, kind: str) -> str:
        data = _png(fig)
        file = f"{len(self.figures) + 1:02d}_{_slug(name)}.png"
        if self.out_dir is not None:
            (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
            (self.out_dir / "figures" / file).write_bytes(data)
        self.figures.append({"file": file, "kind": kind, "caption": caption, "png": data})
        encoded = base64.b64encode(data).decode()
        return (f'<figure data-kind="{escape(kind)}"><img src="data:image/png;base64,{encoded}" '
                f'alt="{escape(caption)}" title="{escape(caption)}"><figcaption>{escape(caption)}</figcaption>'
                "</figure>")

    def section(self, anchor: str, heading: str, html: str) -> None:
        self.sections.append((anchor, heading, html))


def _table(head: list[str], rows: list[list[str]]) -> str:
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def _metric(run, name):
    value = run.data.metrics.get(name) if run is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def _rows(collection: Collection) -> list[dict]:
    rows = []
    for series in collection.series:
        for rnd, run_id in sorted(series.trained.items()):
            run = collection.runs.get(run_id)
            acc, sp = _metric(run, "test_accuracy"), _metric(run, "sparsity")
            if acc is None or sp is None:
                continue
            row = {"recipe": series.label, "round": rnd, "remaining": 1.0 - sp, "test_accuracy": acc,
                   "seed": series.seed, "run_id": run_id}
            es = _metric(run, "early_stop_epoch")
            if es is not None:
                row["early_stop_iteration"] = es
            rows.append(row)
    return rows


def _accuracy_section(b: _Builder, collection: Collection, what: str = "recipes") -> list[dict]:
    from . import plotting

    rows = _rows(collection)
    agg = analysis.accuracy_vs_remaining(rows) if rows else []
    b.numbers["accuracy_vs_remaining"] = agg
    if not agg:
        b.section("accuracy", "Accuracy vs remaining weights",
                  "<p>No recipe rounds here (states made outside recipes are in the lineage and the "
                  "state table).</p>")
        return agg
    html = b.figure(plotting.plot_accuracy_vs_remaining(agg), "accuracy_vs_remaining",
                    f"Test accuracy vs remaining weights, {what}, mean ± std over seeds (n = seeds)",
                    "accuracy_vs_remaining")
    table = _table(["series", "round", "remaining", "test accuracy (mean ± std)", "n", "seeds"],
                   [[escape(a["recipe"]), str(a["round"]), _fmt(a["remaining"], True),
                     f"{100 * a['mean']:.2f}% ± {100 * a['std']:.2f}", str(a["n"]),
                     escape(", ".join(map(str, a["seeds"])))] for a in agg])
    b.section("accuracy", "Accuracy vs remaining weights", html + table)
    if any("early_stop_iteration" in a for a in agg):
        html = b.figure(plotting.plot_early_stop_vs_remaining(agg), "early_stop_vs_remaining",
                        "Early-stopping epoch (lowest validation loss) vs remaining weights, mean ± std",
                        "early_stop")
        table = _table(["series", "round", "remaining", "early-stopping epoch (mean ± std)", "n"],
                       [[escape(a["recipe"]), str(a["round"]), _fmt(a["remaining"], True),
                         f"{a['early_stop_iteration']:.2f} ± {a['early_stop_iteration_std']:.2f}",
                         str(a["early_stop_n"])] for a in agg if "early_stop_iteration" in a])
        b.section("early-stop", "Early stopping vs remaining weights", html + table)
    else:
        b.section("early-stop", "Early stopping vs remaining weights",
                  "<p>No state has an early-stopping epoch: it is the epoch of the lowest validation loss, "
                  "logged as <code>early_stop_epoch</code> when the root has a validation split "
                  "(<code>val_size</code> &gt; 0).</p>")
    return agg


def _load_series(series: Series, load) -> list[tuple[int, object]]:
    out = []
    for rnd in series.rounds:
        state = load(series.trained[rnd])
        if state is not None:
            out.append((rnd, state))
    return out


def _remaining_label(rnd: int, state) -> str:
    return f"r{rnd} ({100 * analysis.remaining_fraction(state.masks):.3g}%)"


def _similarity_section(b: _Builder, collection: Collection, load, note) -> None:
    from . import plotting

    html = []
    numbers = []
    # methods x rounds: every series' pruned rounds, per seed and architecture
    by_seed: dict[str, list] = {}
    for series in collection.series:
        for rnd, state in _load_series(series, load):
            if rnd == 0:
                continue
            by_seed.setdefault(str(series.seed), []).append((f"{series.label} r{rnd}", state, series))
    for seed, entries in by_seed.items():
        groups: dict[tuple, list] = {}
        for entry in entries:
            groups.setdefault(_arch(entry[1]), []).append(entry)
        if len(groups) > 1:
            note(f"seed {seed}: states of {len(groups)} different architectures: one Jaccard matrix per "
                 "architecture (masks of different architectures are never compared)")
        for entries_g in groups.values():
            if len(entries_g) < 2:
                continue
            model = _model(entries_g[0][1])
            labels = [e[0] for e in entries_g]
            matrix, labels = analysis.jaccard_matrix([e[1].masks for e in entries_g], labels)
            numbers.append({"what": "series x rounds", "seed": seed, "model": model, "labels": labels,
                            "matrix": matrix})
            html.append(b.figure(
                plotting.plot_jaccard_heatmap(matrix, labels,
                                              title=f"Mask similarity, recipes × rounds ({model}, seed {seed})"),
                f"jaccard_rounds_{model}_seed{seed}",
                f"Jaccard of kept weights between the rounds of every recipe ({model}, seed {seed})",
                "jaccard"))
            finals = {}
            for label, state, series in entries_g:
                finals[series.label] = (label, state)  # the last round of each series (rounds ascend)
            pairs = list(itertools.combinations(finals.values(), 2))
            if len(finals) > 6:
                html.append(f"<p>Per-layer Jaccard of the last rounds: {len(pairs)} pairs of series, too many "
                            "for a table; see <code>mlprune compare RUN_A RUN_B</code>.</p>")
            elif pairs:
                layers = list(layer_kinds(pairs[0][0][1].masks, model))
                rows = []
                for (la, sa), (lb, sb) in pairs:
                    jac = analysis.jaccard(sa.masks, sb.masks)
                    rows.append([escape(la), escape(lb), _fmt(jac["overall"])]
                                + [_fmt(jac["per_layer"][n]) for n in layers])
                    numbers.append({"what": "final rounds pair", "a": la, "b": lb, **jac})
                html.append("<p>Jaccard per layer between the last rounds of each pair of series:</p>"
                            + _table(["state A", "state B", "overall", *layers], rows))
    # seeds: the last round of each series across seeds
    by_label: dict[str, list] = {}
    for series in collection.series:
        loaded = _load_series(series, load)
        if loaded and loaded[-1][0] > 0:
            by_label.setdefault(series.label, []).append((f"seed {series.seed}", loaded[-1][1]))
    for label, entries in by_label.items():
        if len(entries) < 2:
            continue
        groups = {}
        for entry in entries:
            groups.setdefault(_arch(entry[1]), []).append(entry)
        for entries_g in groups.values():
            if len(entries_g) < 2:
                continue
            matrix, labels = analysis.jaccard_matrix([e[1].masks for e in entries_g], [e[0] for e in entries_g])
            numbers.append({"what": "seeds", "series": label, "labels": labels, "matrix": matrix})
            html.append(b.figure(plotting.plot_jaccard_heatmap(matrix, labels,
                                                               title=f"Mask similarity across seeds: {label}"),
                                 f"jaccard_seeds_{label}", f"Jaccard of the last round's masks across seeds: {label}",
                                 "jaccard"))
    # states no recipe reached (e.g. built with the Python API): all masked ones
    orphans = [s for s in (load(r) for r in collection.orphans) if s is not None
               and analysis.remaining_fraction(s.masks) < 1.0]
    groups = {}
    for state in orphans:
        groups.setdefault(_arch(state), []).append(state)
    if len(groups) > 1:
        models = ", ".join(sorted({_model(g[0]) for g in groups.values()}))
        note(f"pruned states of {len(groups)} different architectures ({models}): one Jaccard matrix per "
             "architecture (masks of different architectures are never compared)")
    for states in groups.values():
        if len(states) < 2:
            continue
        labels = [f"{collection.runs[s.run_id].data.tags.get('mlprune.kind', '?')} {s.run_id[:6]}"
                  for s in states]
        matrix, labels = analysis.jaccard_matrix([s.masks for s in states], labels)
        numbers.append({"what": "other states", "labels": labels, "matrix": matrix,
                        "run_ids": [s.run_id for s in states]})
        html.append(b.figure(plotting.plot_jaccard_heatmap(matrix, labels,
                                                           title=f"Mask similarity, pruned states ({_model(states[0])})"),
                             f"jaccard_states_{_model(states[0])}",
                             "Jaccard of kept weights between pruned states made outside recipes", "jaccard"))
    b.numbers["jaccard"] = numbers
    b.section("similarity", "Mask similarity (Jaccard)",
              "".join(html) or "<p>Fewer than two pruned states of one architecture: nothing to compare.</p>")


def _first_seed(collection: Collection) -> list[Series]:
    seen, out = set(), []
    for series in collection.series:
        if series.label not in seen:
            seen.add(series.label)
            out.append(series)
    return out


def _structure_section(b: _Builder, collection: Collection, load) -> None:
    from . import plotting

    html, numbers = [], {}
    targets = [(s.label, s.seed, _load_series(s, load)) for s in _first_seed(collection)]
    targets = [(label, seed, loaded[-1]) for label, seed, loaded in targets if loaded and loaded[-1][0] > 0]
    for run_id in collection.orphans:
        state = load(run_id)
        if state is not None and analysis.remaining_fraction(state.masks) < 1.0 and len(targets) < 40:
            kind = collection.runs[run_id].data.tags.get("mlprune.kind", "?")
            targets.append((f"{kind} {run_id[:8]}", None, (None, state)))
    for label, seed, (rnd, state) in targets:
        emergent = structure(state)
        numbers[label] = {"run_id": state.run_id, "round": rnd, "seed": seed, "layers": emergent}
        where = f"round {rnd}, seed {seed}" if rnd is not None else state.run_id[:8]
        html.append(f"<h3>{escape(label)} ({escape(where)})</h3>")
        html.append(b.figure(plotting.plot_structure(emergent, title=f"Emergent structure: {label} ({where})"),
                             f"structure_{label}", f"Entirely pruned units vs random pruning: {label} ({where})",
                             "structure"))
        rows = []
        for name, e in emergent.items():
            for dim in ("dim0", "dim1"):
                if dim in e:
                    d = e[dim]
                    rows.append([escape(name), escape(d["unit"]), _fmt(e["sparsity"], True),
                                 f"{d['pruned_units']}/{d['units']}", _fmt(d["observed"], True),
                                 _fmt(d["expected"], True), _fmt(d["ratio"])])
        html.append(_table(["layer", "unit", "sparsity", "pruned units", "observed", "expected (random)",
                            "observed / expected"], rows))
    b.numbers["structure"] = numbers
    b.section("structure", "Emergent structure",
              "<p>A unit (filter, input channel, neuron, input feature) is <em>entirely pruned</em> when all its "
              "weights are masked. <em>Expected</em> is the exact probability of that under random unstructured "
              "pruning at the same per-layer sparsity (hypergeometric), i.e. the expected fraction of such units."
              "</p>" + ("".join(html) or "<p>No pruned state.</p>"))


def _stability_section(b: _Builder, collection: Collection, load) -> None:
    from . import plotting

    stab_html, evo_html, numbers = [], [], {}
    for series in _first_seed(collection):
        loaded = _load_series(series, load)
        if len(loaded) < 2:
            continue
        groups = {}
        for entry in loaded:
            groups.setdefault(_arch(entry[1]), []).append(entry)
        loaded = max(groups.values(), key=len)
        states = [s for _, s in loaded]
        labels = [_remaining_label(r, s) for r, s in loaded]
        result = stability(states)
        numbers[series.label] = {"seed": series.seed, "rounds": [r for r, _ in loaded], **result}
        stab_html.append(b.figure(
            plotting.plot_stability(result, labels, title=f"Weight stability across rounds: {series.label} "
                                                          f"(seed {series.seed})"),
            f"stability_{series.label}", f"Weight stability across rounds: {series.label} (seed {series.seed})",
            "stability"))
        rows = [[escape(f"{labels[t]} → {labels[t + 1]}"), _fmt(result["jaccard"]["overall"][t]),
                 _fmt(result["cosine"]["overall"][t]), _fmt(result["relative_l2"]["overall"][t]),
                 str(result["n_common"]["overall"][t])] for t in range(len(result["transitions"]))]
        stab_html.append(_table(["rounds", "mask Jaccard", "cosine (common weights)", "relative L2 change",
                                 "common weights"], rows))
        kinds = layer_kinds(states[0].masks, _model(states[0]))
        evo_html.append(f"<h3>{escape(series.label)} (seed {escape(str(series.seed))})</h3>")
        for param in kinds:
            traj = analysis.weight_trajectories([s.weights for s in states], [s.masks for s in states], param, k=20)
            evo_html.append(b.figure(
                plotting.plot_weight_evolution(traj, labels, title=f"{series.label}: {param}, 20 sampled weights "
                                                                   "(a line ends where its weight is pruned)"),
                f"evolution_{series.label}_{param}", f"Weight evolution across rounds: {series.label}, {param}",
                "evolution"))
    b.numbers["stability"] = numbers
    b.section("stability", "Weight stability",
              "<p>Between consecutive rounds: the Jaccard of the masks, and on the weights kept in both the "
              "cosine similarity and the relative L2 change of the trained weights.</p>"
              + ("".join(stab_html) or "<p>No recipe with two or more rounds.</p>"))
    b.section("evolution", "Weight evolution", "".join(evo_html) or "<p>No recipe with two or more rounds.</p>")


def _weight_figures(b: _Builder, state, heading: str) -> str:
    from . import plotting

    html = [f"<h3>{escape(heading)}</h3>"]
    kinds = layer_kinds(state.masks, _model(state))
    for param, kind in kinds.items():
        w, m = state.weights.get(param), state.masks[param]
        if w is None:
            continue
        if kind == "conv" and w.dim() == 4:
            html.append(b.figure(plotting.plot_conv_filters(w, m, title=f"{heading}\n{param}"),
                                 f"weights_{heading}_{param}", f"{heading}: {param} filters", "weights_conv"))
            if w.shape[1] > 1:  # input-channel pruning shows as grey column blocks here
                html.append(b.figure(
                    plotting.plot_fc_weights(w, m, title=f"{heading}\n{param} (filters × in-channel·kh·kw)"),
                    f"weights_matrix_{heading}_{param}", f"{heading}: {param} as a matrix, one row per filter",
                    "weights_conv"))
        else:
            html.append(b.figure(plotting.plot_fc_weights(w, m, title=f"{heading}\n{param}"),
                                 f"weights_{heading}_{param}", f"{heading}: {param}", "weights_fc"))
    biases = _biases(state, kinds)
    if biases:
        html.append(b.figure(plotting.plot_bias_panels(biases, title=f"{heading}: biases"),
                             f"biases_{heading}", f"{heading}: biases of every layer", "biases"))
    return "".join(html)


def _biases(state, kinds) -> dict:
    """{bias name: tensor} of the masked layers, in layer order."""
    out = {}
    for param in kinds:
        bias = param[: -len("weight")] + "bias" if param.endswith("weight") else None
        if bias and bias in state.weights:
            out[bias] = state.weights[bias]
    return out


def _weights_section(b: _Builder, collection: Collection, load) -> None:
    html = []
    done = set()
    for series in _first_seed(collection):
        loaded = _load_series(series, load)
        if not loaded:
            continue
        first_round, first = loaded[0]
        if first_round == 0 and first.run_id not in done:
            done.add(first.run_id)
            html.append(_weight_figures(b, first, f"trained, dense (seed {series.seed}, {first.run_id[:8]})"))
        last_round, last = loaded[-1]
        if last_round > 0 and last.run_id not in done:
            done.add(last.run_id)
            html.append(_weight_figures(b, last, f"{series.label} round {last_round} (seed {series.seed})"))
    b.section("weights", "Weights of the dense and the final states",
              "<p>Pruned weights are grey; kept weights on a diverging scale, white at 0.</p>"
              + ("".join(html) or "<p>No recipe states.</p>"))


def _states_section(b: _Builder, collection: Collection) -> None:
    rows = []
    in_series = {}
    for series in collection.series:
        for rnd, run_id in series.trained.items():
            in_series.setdefault(run_id, f"{series.label} r{rnd}")
        for rnd, run_id in series.pruned.items():
            in_series.setdefault(run_id, f"{series.label} prune r{rnd}")
    for run_id, run in collection.runs.items():
        rows.append([f"<code>{run_id[:12]}</code>", escape(run.info.run_name or ""),
                     escape(run.data.tags.get("mlprune.kind", "?")), escape(in_series.get(run_id, "–")),
                     _fmt(_metric(run, "test_accuracy"), True), _fmt(_metric(run, "sparsity"), True)])
    b.section("states", "States", _table(["run", "name", "kind", "series / round", "test accuracy", "sparsity"],
                                         rows))


_REPORT_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:20px 32px;color:#212121;max-width:1500px}
h1{font-size:24px;margin-bottom:4px} h2{margin-top:36px;border-bottom:2px solid #e0e0e0;padding-bottom:4px}
h3{margin:22px 0 6px;font-size:15px}
.meta{color:#555;font-size:13px}
nav a{margin-right:14px;font-size:14px}
figure{margin:10px 0 18px} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 16px}
th,td{border-bottom:1px solid #e0e0e0;padding:3px 9px;text-align:left}
th{background:#f5f5f5}
.warnings{background:#fff8e1;border:1px solid #ffcc80;border-radius:6px;padding:8px 14px;font-size:13px}
.dag{overflow:auto;border:1px solid #ddd;border-radius:6px}
"""


@dataclass
class ReportResult:
    path: Path
    figures: list[dict]
    warnings: list[str]
    numbers: dict
    n_states: int


def _default_ui(tracking_uri: str) -> str:
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def write_report(experiment: str, out_dir, *, tracking_uri: str | None = None, ui_url: str | None = None,
                 warn=None) -> ReportResult:
    """Write ``report.html``, ``figures/*.png`` and ``numbers.json`` for one experiment into ``out_dir``.

    ``experiment`` is a name or an id. Warnings (skipped runs / states) go to
    ``warn(message)`` (default: ``warnings.warn``) and into the report. Links go
    to the MLflow UI at ``ui_url`` (default: the tracking server, or ``mlflow
    ui``'s http://127.0.0.1:5000 for a local store).
    """
    from .store import open_experiment

    store = open_experiment(experiment, tracking_uri=tracking_uri)
    if warn is None:
        def warn(message):
            warnings.warn(message, ReportWarning, stacklevel=3)
    started = time.perf_counter()
    collection = collect(store, warn)
    if not collection.runs:
        raise SpecError(f"experiment {store.experiment_name!r} holds no finished mlprune states "
                        f"({len(collection.skipped['not mlprune states'])} other runs); nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = _Builder(out)
    note = _note_into(collection, warn)
    loaded = _Loader(store, collection.runs, note)

    ui = (ui_url or _default_ui(store.tracking_uri)).rstrip("/")
    nodes, edges = lineage.lineage_graph(collection.runs.values())
    svg = lineage.lineage_svg(nodes, edges, base=ui)
    b.section("lineage", "Lineage",
              f'<p class="meta">Every state of the experiment; solid arrows: primary parent, dashed: weights / '
              f"mask sources. Nodes link to their runs in the MLflow UI at {escape(ui)}.</p>"
              f'<div class="dag" data-kind="dag">{svg}</div>')
    b.numbers["lineage"] = {"nodes": nodes, "edges": edges}
    _accuracy_section(b, collection)
    _similarity_section(b, collection, loaded, note)
    _structure_section(b, collection, loaded)
    _stability_section(b, collection, loaded)
    _weights_section(b, collection, loaded)
    _states_section(b, collection)

    warn_html = ""
    if collection.warnings:
        warn_html = ('<div class="warnings"><b>Skipped</b><ul>'
                     + "".join(f"<li>{escape(w)}</li>" for w in collection.warnings) + "</ul></div>")
    nav = "".join(f'<a href="#{a}">{escape(h)}</a>' for a, h, _ in b.sections)
    body = "".join(f'<section id="{a}"><h2>{escape(h)}</h2>{html}</section>' for a, h, html in b.sections)
    n_series = len({s.label for s in collection.series})
    title = f"mlprune report: {store.experiment_name}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_REPORT_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">experiment id {escape(store.experiment_id)} · tracking store '
        f"{escape(store.tracking_uri)} · {len(collection.runs)} states · {n_series} recipe series · "
        f"{len(b.figures)} figures · mlprune {escape(__version__)} · {time.strftime('%Y-%m-%d %H:%M')}</p>"
        f"<nav>{nav}</nav>{warn_html}{body}</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    b.numbers["warnings"] = collection.warnings
    b.numbers["seconds"] = time.perf_counter() - started
    (out / "numbers.json").write_text(json.dumps(_jsonable(b.numbers), indent=1, allow_nan=False))
    return ReportResult(path, [{k: v for k, v in f.items() if k != "png"} for f in b.figures],
                        collection.warnings, b.numbers, len(collection.runs))


def _note_into(collection: Collection, warn):
    def note(message):
        if message not in collection.warnings:
            collection.warnings.append(message)
            warn(message)
    return note


# ------------------------------------------------------------ workflow runs and states


def lineage_files(store, run_ids, *, title: str, subtitle: str = "", ui_url: str | None = None) -> dict:
    """``lineage.svg`` and ``lineage.html`` of the given states and all their parents.

    Nodes link to their runs at ``/#/experiments/<id>/runs/<run>`` (the tracking
    server that shows the artifact); opened as a file, ``lineage.html`` links to
    ``ui_url`` (default: the tracking server, else ``mlflow ui``'s address).
    Returns ``{}`` when there is no state.
    """
    run_ids = [r for r in run_ids if r]
    if not run_ids:
        return {}
    known = {r.info.run_id: r for r in store.states()}

    def fetch(run_id):
        try:
            return store.run(run_id)
        except SpecError:
            return None

    runs = lineage.ancestors(run_ids, known, fetch)
    nodes, edges = lineage.lineage_graph(runs.values())
    return {
        "lineage.svg": lineage.lineage_svg(nodes, edges, base="/", title=title),
        "lineage.html": lineage.lineage_html(nodes, edges, title=title, base="/",
                                             file_base=(ui_url or _default_ui(store.tracking_uri)),
                                             subtitle=subtitle),
    }


def workflow_artifacts(store, plan, reached: dict[str, str], *, overrides: dict | None = None,
                       figures: bool = True, ui_url: str | None = None, warn=None) -> dict[str, bytes | str]:
    """Files for a workflow run (the run `mlprune run` works in): plan, lineage and figures.

    - ``plan.json``: recipe, the -P overrides, plan nodes (name, parent, round, branch,
      label) with the state run id each reached (``mlprune report`` groups by it);
    - ``lineage.svg`` / ``lineage.html``: the DAG of the states reached and all their
      parents (:func:`lineage_files`);
    - with ``figures``: ``figures/accuracy_vs_remaining.png``, ``figures/jaccard_rounds.png``,
      ``figures/structure.png`` (last round), ``figures/stability.png`` and
      ``figures/weight_evolution/<param>.png`` for this recipe's rounds.
    """
    warn = warn or (lambda message: warnings.warn(message, ReportWarning, stacklevel=2))
    files: dict[str, bytes | str] = {}
    plan_nodes = [{"name": n.name, "parent": n.parent, "round": n.round, "branch": n.branch, "label": n.label,
                   "run_id": reached.get(n.name)} for n in plan.nodes]
    overrides = {k: v for k, v in (overrides or {}).items() if v not in (None, "")}
    files["plan.json"] = json.dumps({"recipe": plan.recipe, "overrides": overrides, "nodes": plan_nodes},
                                    indent=1, default=str)
    if not reached:
        return files
    files.update(lineage_files(store, reached.values(), ui_url=ui_url,
                               title=f"Lineage: {plan.recipe} (experiment {store.experiment_name})",
                               subtitle=f"the states recipe {plan.recipe} reached and all their parents"))
    if not figures:
        return files
    from . import plotting

    runs = {r.info.run_id: r for r in store.states() if r.info.run_id in set(reached.values())}

    nodes_by_name = [{"name": n["name"], "round": n["round"], "branch": n["branch"], "run_id": n["run_id"]}
                     for n in plan_nodes if n["run_id"]]
    all_series = _series_from_nodes(plan.recipe, nodes_by_name, plan.params, plan.params.get("seed"))
    for s in all_series.values():
        s.label = plan.recipe if s.branch == "main" else f"{plan.recipe} / {s.branch}"
    collection = Collection(store, runs, list(all_series.values()), [], [], {})
    loaded = _Loader(store, runs, warn)

    rows = _rows(collection)
    if rows:
        agg = analysis.accuracy_vs_remaining(rows)
        files["figures/accuracy_vs_remaining.png"] = _png(plotting.plot_accuracy_vs_remaining(
            agg, title=f"{plan.recipe}: test accuracy vs remaining weights"))
    main = all_series.get("main")
    states = _load_series(main, loaded) if main else []
    pruned = [(r, s) for r, s in states if r > 0]
    if len(pruned) >= 2:
        matrix, labels = analysis.jaccard_matrix([s.masks for _, s in pruned], [_remaining_label(r, s)
                                                                                 for r, s in pruned])
        files["figures/jaccard_rounds.png"] = _png(plotting.plot_jaccard_heatmap(
            matrix, labels, title=f"{plan.recipe}: mask similarity between rounds"))
    if pruned:
        rnd, last = pruned[-1]
        files["figures/structure.png"] = _png(plotting.plot_structure(
            structure(last), title=f"{plan.recipe}: emergent structure, round {rnd}"))
    if len(states) >= 2 and len({_arch(s) for _, s in states}) == 1:
        labels = [_remaining_label(r, s) for r, s in states]
        only = [s for _, s in states]
        files["figures/stability.png"] = _png(plotting.plot_stability(
            stability(only), labels, title=f"{plan.recipe}: weight stability across rounds"))
        for param in layer_kinds(only[0].masks, _model(only[0])):
            traj = analysis.weight_trajectories([s.weights for s in only], [s.masks for s in only], param, k=20)
            files[f"figures/weight_evolution/{_slug(param)}.png"] = _png(plotting.plot_weight_evolution(
                traj, labels, title=f"{plan.recipe}: {param}, 20 sampled weights"))
    return files


def state_figures(state) -> dict:
    """``{artifact path: Figure}`` of one state's weights: conv filters, fc weight matrices, biases."""
    from . import plotting

    out = {}
    for param, kind in layer_kinds(state.masks, _model(state)).items():
        w = state.weights.get(param)
        if w is None:
            continue
        if kind == "conv" and w.dim() == 4:
            out[f"figures/weights/{_slug(param)}.png"] = plotting.plot_conv_filters(w, state.masks[param],
                                                                                    title=param)
            if w.shape[1] > 1:
                out[f"figures/weights/{_slug(param)}_matrix.png"] = plotting.plot_fc_weights(
                    w, state.masks[param], title=f"{param} (filters × in-channel·kh·kw)")
        else:
            out[f"figures/weights/{_slug(param)}.png"] = plotting.plot_fc_weights(w, state.masks[param],
                                                                                  title=param)
    biases = _biases(state, layer_kinds(state.masks, _model(state)))
    if biases:
        out["figures/weights/biases.png"] = plotting.plot_bias_panels(biases)
    return out


def log_state_figures(store, run_ids, *, since_ms: int = 0) -> int:
    """Log :func:`state_figures` on each state run started at or after ``since_ms`` (computed now).

    Returns how many states got figures. Opt-in (``mlprune run --state-figures``):
    matplotlib costs ~0.1-0.3 s a figure, far above the per-state budget.
    """
    count = 0
    for run_id in dict.fromkeys(run_ids):
        run = store.run(run_id)
        if (run.info.start_time or 0) < since_ms:
            continue
        store.log_figures(run_id, state_figures(store.load(run_id)))
        count += 1
    return count
