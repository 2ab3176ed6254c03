"""Figures on workflow runs and states: a recipe's figures, and the opt-in per-state weight figures.

`recipe_figures` draws what ``mlprune run`` logs under ``figures/`` on the workflow run
that computed a recipe's states; `state_figures` / `log_state_figures` are the per-state
weight figures of ``--state-figures``.
"""

from __future__ import annotations

from .. import analysis
from . import figures as plotting
from .html import _arch, _biases, _Builder, _Loader, _load_series, _png, _remaining_label, _slug
from .inside import inside_section
from .sanity import plot_sanity_panels, sanity_groups
from .series import Collection, accuracy_table, series_of_plan
from .states import _model, layer_kinds, stability, structure


def recipe_figures(store, recorded: dict, warn) -> dict[str, bytes]:
    """The figures of one recipe run: accuracy vs remaining, sanity checks, instability vs spawn
    point, Jaccard between rounds, structure, stability and weight evolution (``figures/...``),
    and inside the network: learning curves, per-class impact, PIEs, churn and CKA
    (``figures/inside/...``)."""
    files = {}
    recipe = recorded["recipe"]
    runs = {r.info.run_id: r for r in store.states() if r.info.run_id in set(recorded["reached"].values())}
    all_series = series_of_plan(recorded, runs)
    for s in all_series.values():
        s.label = recipe if s.branch == "main" else f"{recipe} / {s.branch}"
        s.base_label = recipe
    collection = Collection(store, runs, list(all_series.values()), [], [], {})
    loaded = _Loader(store, runs, warn)
    agg = accuracy_table(collection)
    if agg:
        files["figures/accuracy_vs_remaining.png"] = _png(plotting.plot_accuracy_vs_remaining(
            agg, title=f"{recipe}: test accuracy vs remaining weights"))
        groups = sanity_groups(collection)
        if groups:
            files["figures/sanity_checks.png"] = _png(plot_sanity_panels(
                groups, agg, {s.label: s.branch for s in all_series.values()}))
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
            structure(last, store), title=f"{recipe}: emergent structure, round {rnd}"))
    if len(states) >= 2 and len({_arch(s) for _, s in states}) == 1:
        labels = [_remaining_label(r, s) for r, s in states]
        only = [s for _, s in states]
        files["figures/stability.png"] = _png(plotting.plot_stability(
            stability(only), labels, title=f"{recipe}: weight stability across rounds"))
        for param in layer_kinds(only[0].masks, _model(only[0])):
            traj = analysis.weight_trajectories([s.weights for s in only], [s.masks for s in only], param, k=20)
            files[f"figures/weight_evolution/{_slug(param)}.png"] = _png(plotting.plot_weight_evolution(
                traj, labels, title=f"{recipe}: {param}, 20 sampled weights"))
    inside = _Builder(None)  # the report's inside section on this run's states: curves, churn, CKA, ...
    inside_section(inside, collection, loaded, warn)
    for figure in inside.figures:
        files[f"figures/inside/{figure['file']}"] = figure["png"]
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
