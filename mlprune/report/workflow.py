"""What a recipe's workflow run carries: its plans, the lineage of its states, its figures.

`workflow_files` is what ``mlprune run`` / ``sweep`` log on their workflow run:
``plan.json`` (the plans, each node with its key, round, branch, role and the run
id it reached: what `mlprune report` groups by), ``lineage.svg`` / ``lineage.html``
(the DAG of the states reached and all their parents) and, when asked, the
recipe's figures. `state_figures` / `log_state_figures` are the opt-in per-state
weight figures (``--state-figures``).
"""

from __future__ import annotations

import json
import warnings

from .. import analysis, lineage
from ..errors import SpecError
from ..names import LINEAGE_HTML, LINEAGE_SVG, PLAN_FILE
from . import figures as plotting
from .html import ReportWarning, _arch, _biases, _default_ui, _Loader, _load_series, _png, _remaining_label, _slug
from .series import Collection, accuracy_table, series_of_plan
from .states import _model, layer_kinds, stability, structure


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


def workflow_files(store, plans, reached: list[dict[str, str]], *, figures: bool = True, ui_url: str | None = None,
                   warn=None) -> dict[str, bytes | str]:
    """Files for a workflow run: plan.json, the lineage of the states reached, and (one plan, `figures`)
    the recipe's figures. `reached`: per plan {node name: run id}."""
    warn = warn or (lambda message: warnings.warn(message, ReportWarning, stacklevel=2))
    files: dict[str, bytes | str] = {}
    recorded = []
    for plan, nodes in zip(plans, reached):
        data = plan.to_json()
        data["reached"] = dict(nodes)
        recorded.append(data)
    files[PLAN_FILE] = json.dumps({"plans": recorded}, indent=1, default=str)
    run_ids = [r for nodes in reached for r in nodes.values()]
    if not run_ids:
        return files
    names = " ".join(dict.fromkeys(p.recipe for p in plans))
    files.update(lineage_files(store, run_ids, ui_url=ui_url,
                               title=f"Lineage: {names} (experiment {store.experiment_name})",
                               subtitle=f"the states {names} reached and all their parents"))
    if figures and len(plans) == 1:
        files.update(recipe_figures(store, recorded[0], warn))
    return files


def recipe_figures(store, recorded: dict, warn) -> dict[str, bytes]:
    """The figures of one recipe run: accuracy vs remaining, instability vs spawn point, Jaccard between
    rounds, structure, stability and weight evolution (``figures/...``)."""
    files = {}
    recipe = recorded["recipe"]
    runs = {r.info.run_id: r for r in store.states() if r.info.run_id in set(recorded["reached"].values())}
    all_series = series_of_plan(recorded, runs)
    for s in all_series.values():
        s.label = recipe if s.branch == "main" else f"{recipe} / {s.branch}"
    collection = Collection(store, runs, list(all_series.values()), [], [], {})
    loaded = _Loader(store, runs, warn)
    agg = accuracy_table(collection)
    if agg:
        files["figures/accuracy_vs_remaining.png"] = _png(plotting.plot_accuracy_vs_remaining(
            agg, title=f"{recipe}: test accuracy vs remaining weights"))
    from .instability import instability_figures, instability_rows, instability_table

    for fig in instability_figures(instability_table(instability_rows(collection))).values():
        files["figures/instability_vs_spawn.png"] = _png(fig)
    main = all_series.get("main")
    states = _load_series(main, loaded) if main else []
    pruned = [(r, s) for r, s in states if r > 0]
    if len(pruned) >= 2:
        matrix, labels = analysis.jaccard_matrix([s.masks for _, s in pruned],
                                                 [_remaining_label(r, s) for r, s in pruned])
        files["figures/jaccard_rounds.png"] = _png(plotting.plot_jaccard_heatmap(
            matrix, labels, title=f"{recipe}: mask similarity between rounds"))
    if pruned:
        rnd, last = pruned[-1]
        files["figures/structure.png"] = _png(plotting.plot_structure(
            structure(last), title=f"{recipe}: emergent structure, round {rnd}"))
    if len(states) >= 2 and len({_arch(s) for _, s in states}) == 1:
        labels = [_remaining_label(r, s) for r, s in states]
        only = [s for _, s in states]
        files["figures/stability.png"] = _png(plotting.plot_stability(
            stability(only), labels, title=f"{recipe}: weight stability across rounds"))
        for param in layer_kinds(only[0].masks, _model(only[0])):
            traj = analysis.weight_trajectories([s.weights for s in only], [s.masks for s in only], param, k=20)
            files[f"figures/weight_evolution/{_slug(param)}.png"] = _png(plotting.plot_weight_evolution(
                traj, labels, title=f"{recipe}: {param}, 20 sampled weights"))
    return files


def state_figures(state) -> dict:
    """``{artifact path: Figure}`` of one state's weights: conv filters, fc weight matrices, biases."""
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
