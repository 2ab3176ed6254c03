"""What the weights show: their stability and evolution across rounds, the dense and final states'
weights (report sections), and the opt-in per-state weight figures (``mlprune run --state-figures``)."""

from __future__ import annotations

from html import escape

from .. import analysis
from .. import plots as plotting
from .common import (
    Page,
    architecture,
    biases_of,
    first_seed,
    fmt,
    html_table,
    load_series,
    model_name,
    remaining_label,
    slug,
)
from .sections import SectionContext
from .states import layer_kinds, stability


def stability_section(page: Page, ctx: SectionContext) -> None:
    collection, load = ctx.collection, ctx.load
    stab_html, evo_html, numbers = [], [], {}
    for series in first_seed(collection):
        loaded = load_series(series, load)
        if len(loaded) < 2:
            continue
        groups = {}
        for entry in loaded:
            groups.setdefault(architecture(entry[1]), []).append(entry)
        loaded = max(groups.values(), key=len)
        states = [s for _, s in loaded]
        labels = [remaining_label(r, s) for r, s in loaded]
        result = stability(states)
        numbers[series.label] = {"seed": series.seed, "rounds": [r for r, _ in loaded], **result}
        title = f"{series.label} (seed {series.seed})"
        first = not stab_html  # the first series' figures keep stable names on a workflow run
        figure = page.figure(
            plotting.plot_stability(result, labels, title=f"Weight stability across rounds: {title}"),
            f"stability_{series.label}",
            f"Weight stability across rounds: {title}",
            "stability",
            run_file="stability.png" if first else None,
        )
        rows = [
            [
                escape(f"{labels[t]} → {labels[t + 1]}"),
                fmt(result["jaccard"]["overall"][t]),
                fmt(result["cosine"]["overall"][t]),
                fmt(result["relative_l2"]["overall"][t]),
                str(result["n_common"]["overall"][t]),
            ]
            for t in range(len(result["transitions"]))
        ]
        stab_html.append(
            (
                title,
                figure
                + html_table(
                    ["rounds", "mask Jaccard", "cosine (common weights)", "relative L2 change", "common weights"], rows
                ),
            )
        )
        kinds = layer_kinds(states[0].masks, model_name(states[0]))
        figures = []
        for param in kinds:
            traj = analysis.weight_trajectories([s.weights for s in states], [s.masks for s in states], param, k=20)
            figures.append(
                page.figure(
                    plotting.plot_weight_evolution(
                        traj,
                        labels,
                        title=f"{series.label}: {param}, 20 sampled weights (a line ends where its weight is pruned)",
                    ),
                    f"evolution_{series.label}_{param}",
                    f"Weight evolution across rounds: {series.label}, {param}",
                    "evolution",
                    run_file=f"weight_evolution/{slug(param)}.png" if first else None,
                )
            )
        evo_html.append((title, "".join(figures)))
    page.numbers["stability"] = numbers
    stab = "".join(page.group(title, html) for title, html in stab_html)
    page.section(
        "stability",
        "Weight stability",
        "<p>Between consecutive rounds: the Jaccard of the masks, and on the weights kept in both the "
        "cosine similarity and the relative L2 change of the trained weights.</p>"
        + (stab or "<p>No recipe with two or more rounds.</p>"),
    )
    evo = "".join(page.group(title, html, open=False) for title, html in evo_html)
    page.section("evolution", "Weight evolution", evo or "<p>No recipe with two or more rounds.</p>")


def weight_figures(page: Page, state, heading: str) -> str:
    html = []
    kinds = layer_kinds(state.masks, model_name(state))
    for param, kind in kinds.items():
        w, m = state.weights.get(param), state.masks[param]
        if w is None:
            continue
        if kind == "conv" and w.dim() == 4:
            html.append(
                page.figure(
                    plotting.plot_conv_filters(w, m, title=f"{heading}\n{param}"),
                    f"weights_{heading}_{param}",
                    f"{heading}: {param} filters",
                    "weights_conv",
                )
            )
            if w.shape[1] > 1:  # input-channel pruning shows as grey column blocks here
                html.append(
                    page.figure(
                        plotting.plot_fc_weights(w, m, title=f"{heading}\n{param} (filters × in-channel·kh·kw)"),
                        f"weights_matrix_{heading}_{param}",
                        f"{heading}: {param} as a matrix, one row per filter",
                        "weights_conv",
                    )
                )
        else:
            html.append(
                page.figure(
                    plotting.plot_fc_weights(w, m, title=f"{heading}\n{param}"),
                    f"weights_{heading}_{param}",
                    f"{heading}: {param}",
                    "weights_fc",
                )
            )
    biases = biases_of(state, kinds)
    if biases:
        html.append(
            page.figure(
                plotting.plot_bias_panels(biases, title=f"{heading}: biases"),
                f"biases_{heading}",
                f"{heading}: biases of every layer",
                "biases",
            )
        )
    return "".join(html)


def weights_section(page: Page, ctx: SectionContext) -> None:
    collection, load = ctx.collection, ctx.load
    html = []
    done = set()
    for series in first_seed(collection):
        loaded = load_series(series, load)
        if not loaded:
            continue
        first_round, first = loaded[0]
        if first_round == 0 and first.run_id not in done:
            done.add(first.run_id)
            heading = f"trained, dense (seed {series.seed}, {first.run_id[:8]})"
            html.append(page.group(heading, weight_figures(page, first, heading), open=False))
        last_round, last = loaded[-1]
        if last_round > 0 and last.run_id not in done:
            done.add(last.run_id)
            heading = f"{series.label} round {last_round} (seed {series.seed})"
            html.append(page.group(heading, weight_figures(page, last, heading), open=False))
    page.section(
        "weights",
        "Weights of the dense and the final states",
        "<p>Pruned weights are grey; kept weights on a diverging scale, white at 0.</p>"
        + ("".join(html) or "<p>No recipe states.</p>"),
    )


def state_figures(state) -> dict:
    """``{artifact path: Figure}`` of one state's weights: conv filters, fc weight matrices, biases."""
    out = {}
    for param, kind in layer_kinds(state.masks, model_name(state)).items():
        w = state.weights.get(param)
        if w is None:
            continue
        if kind == "conv" and w.dim() == 4:
            out[f"figures/weights/{slug(param)}.png"] = plotting.plot_conv_filters(w, state.masks[param], title=param)
            if w.shape[1] > 1:
                out[f"figures/weights/{slug(param)}_matrix.png"] = plotting.plot_fc_weights(
                    w, state.masks[param], title=f"{param} (filters × in-channel·kh·kw)"
                )
        else:
            out[f"figures/weights/{slug(param)}.png"] = plotting.plot_fc_weights(w, state.masks[param], title=param)
    biases = biases_of(state, layer_kinds(state.masks, model_name(state)))
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
