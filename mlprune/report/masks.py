"""What the masks show: their similarity (Jaccard) across rounds, seeds and states, and the structure
that emerged in them compared with random pruning of the same granularity."""

from __future__ import annotations

import itertools
from html import escape

from .. import analysis
from .. import plots as plotting
from ..names import TAG_KIND
from .common import Page, architecture, first_seed, fmt, html_table, load_series, model_name
from .sections import SectionContext
from .states import layer_kinds, structure

MAX_SEEDS_DRAWN = 3  # seeds whose recipes x rounds heatmap is drawn (a study of many seeds: the first ones)


def similarity_section(page: Page, ctx: SectionContext) -> None:
    html: list[str] = []
    numbers: list[dict] = []
    _recipes_by_rounds(page, ctx, html, numbers)
    _across_seeds(page, ctx, html, numbers)
    _outside_recipes(page, ctx, html, numbers)
    page.numbers["jaccard"] = numbers
    page.section(
        "similarity",
        "Mask similarity (Jaccard)",
        "".join(html) or "<p>Fewer than two pruned states of one architecture: nothing to compare.</p>",
    )


def _recipes_by_rounds(page: Page, ctx: SectionContext, html: list, numbers: list) -> None:
    """Methods x rounds: every series' pruned rounds, per seed and architecture."""
    collection, load, note = ctx.collection, ctx.load, ctx.note
    by_seed: dict[str, list] = {}
    for series in collection.series:
        for rnd, state in load_series(series, load):
            if rnd == 0:
                continue
            by_seed.setdefault(str(series.seed), []).append((f"{series.label} r{rnd}", state, series))
    drawn_seeds = list(by_seed)[:MAX_SEEDS_DRAWN]
    for seed, entries in by_seed.items():
        groups: dict[tuple, list] = {}
        for entry in entries:
            groups.setdefault(architecture(entry[1]), []).append(entry)
        if len(groups) > 1:
            note(
                f"seed {seed}: states of {len(groups)} different architectures: one Jaccard matrix per "
                "architecture (masks of different architectures are never compared)"
            )
        for entries_g in groups.values():
            if len(entries_g) < 2:
                continue
            model = model_name(entries_g[0][1])
            labels = [e[0] for e in entries_g]
            matrix, labels = analysis.jaccard_matrix([e[1].masks for e in entries_g], labels)
            numbers.append(
                {"what": "series x rounds", "seed": seed, "model": model, "labels": labels, "matrix": matrix}
            )
            if seed not in drawn_seeds:  # its matrix is in report.json; a heatmap per seed of 200 helps nobody
                continue
            chunk = [
                page.figure(
                    plotting.plot_jaccard_heatmap(
                        matrix, labels, title=f"Mask similarity, recipes × rounds ({model}, seed {seed})"
                    ),
                    f"jaccard_rounds_{model}_seed{seed}",
                    f"Jaccard of kept weights between the rounds of every recipe ({model}, seed {seed})",
                    "jaccard",
                    run_file=None if html else "jaccard_rounds.png",
                )
            ]
            finals = {}
            for label, state, series in entries_g:
                finals[series.label] = (label, state)  # the last round of each series (rounds ascend)
            chunk += _last_rounds_table(finals, model, numbers)
            html.append(page.group(f"recipes × rounds ({model}, seed {seed})", "".join(chunk), open=not html))
    if len(by_seed) > MAX_SEEDS_DRAWN:
        html.append(
            f"<p>Recipes × rounds heatmaps are drawn for the first {MAX_SEEDS_DRAWN} of {len(by_seed)} "
            f"seeds ({', '.join(escape(s) for s in drawn_seeds)}); report.json holds every seed's "
            "matrix.</p>"
        )


def _last_rounds_table(finals: dict, model: str, numbers: list) -> list[str]:
    """The per-layer Jaccard of every pair of series' last rounds (`finals`: series -> (label, state))."""
    pairs = list(itertools.combinations(finals.values(), 2))
    if len(finals) > 6:
        return [
            f"<p>Per-layer Jaccard of the last rounds: {len(pairs)} pairs of series, too many "
            "for a table; see <code>mlprune compare RUN_A RUN_B</code>.</p>"
        ]
    if not pairs:
        return []
    layers = list(layer_kinds(pairs[0][0][1].masks, model))
    rows = []
    for (la, sa), (lb, sb) in pairs:
        jac = analysis.jaccard(sa.masks, sb.masks)
        rows.append([escape(la), escape(lb), fmt(jac["overall"])] + [fmt(jac["per_layer"][n]) for n in layers])
        numbers.append({"what": "final rounds pair", "a": la, "b": lb, **jac})
    return [
        "<p>Jaccard per layer between the last rounds of each pair of series:</p>"
        + html_table(["state A", "state B", "overall", *layers], rows)
    ]


def _across_seeds(page: Page, ctx: SectionContext, html: list, numbers: list) -> None:
    """The last round of each series across seeds."""
    collection, load = ctx.collection, ctx.load
    by_label: dict[str, list] = {}
    for series in collection.series:
        loaded = load_series(series, load)
        if loaded and loaded[-1][0] > 0:
            by_label.setdefault(series.label, []).append((f"seed {series.seed}", loaded[-1][1]))
    for label, entries in by_label.items():
        if len(entries) < 2:
            continue
        groups = {}
        for entry in entries:
            groups.setdefault(architecture(entry[1]), []).append(entry)
        for entries_g in groups.values():
            if len(entries_g) < 2:
                continue
            matrix, labels = analysis.jaccard_matrix([e[1].masks for e in entries_g], [e[0] for e in entries_g])
            numbers.append({"what": "seeds", "series": label, "labels": labels, "matrix": matrix})
            html.append(
                page.group(
                    f"across seeds: {label}",
                    page.figure(
                        plotting.plot_jaccard_heatmap(matrix, labels, title=f"Mask similarity across seeds: {label}"),
                        f"jaccard_seeds_{label}",
                        f"Jaccard of the last round's masks across seeds: {label}",
                        "jaccard",
                    ),
                    open=False,
                )
            )


def _outside_recipes(page: Page, ctx: SectionContext, html: list, numbers: list) -> None:
    """States no recipe reached (e.g. built with the Python API): all masked ones."""
    collection, load, note = ctx.collection, ctx.load, ctx.note
    orphans = [
        s for s in (load(r) for r in collection.orphans) if s is not None and analysis.remaining_fraction(s.masks) < 1.0
    ]
    groups = {}
    for state in orphans:
        groups.setdefault(architecture(state), []).append(state)
    if len(groups) > 1:
        models = ", ".join(sorted({model_name(g[0]) for g in groups.values()}))
        note(
            f"pruned states of {len(groups)} different architectures ({models}): one Jaccard matrix per "
            "architecture (masks of different architectures are never compared)"
        )
    for states in groups.values():
        if len(states) < 2:
            continue
        labels = [f"{collection.runs[s.run_id].data.tags.get(TAG_KIND, '?')} {s.run_id[:6]}" for s in states]
        matrix, labels = analysis.jaccard_matrix([s.masks for s in states], labels)
        numbers.append(
            {"what": "other states", "labels": labels, "matrix": matrix, "run_ids": [s.run_id for s in states]}
        )
        html.append(
            page.group(
                f"states made outside recipes ({model_name(states[0])})",
                page.figure(
                    plotting.plot_jaccard_heatmap(
                        matrix, labels, title=f"Mask similarity, pruned states ({model_name(states[0])})"
                    ),
                    f"jaccard_states_{model_name(states[0])}",
                    "Jaccard of kept weights between pruned states made outside recipes",
                    "jaccard",
                ),
                open=not html,
            )
        )


def structure_section(page: Page, ctx: SectionContext) -> None:
    collection, load = ctx.collection, ctx.load
    html, numbers = [], {}
    targets = [(s.label, s.seed, load_series(s, load)) for s in first_seed(collection)]
    targets = [(label, seed, loaded[-1]) for label, seed, loaded in targets if loaded and loaded[-1][0] > 0]
    for run_id in collection.orphans:
        state = load(run_id)
        if state is not None and analysis.remaining_fraction(state.masks) < 1.0 and len(targets) < 40:
            kind = collection.runs[run_id].data.tags.get(TAG_KIND, "?")
            targets.append((f"{kind} {run_id[:8]}", None, (None, state)))
    for position, (label, seed, (rnd, state)) in enumerate(targets):
        emergent = structure(state, ctx.store)
        numbers[label] = {"run_id": state.run_id, "round": rnd, "seed": seed, "layers": emergent}
        where = f"round {rnd}, seed {seed}" if rnd is not None else state.run_id[:8]
        figure = page.figure(
            plotting.plot_structure(emergent, title=f"Emergent structure: {label} ({where})"),
            f"structure_{label}",
            f"Entirely pruned units vs random pruning of the same structure: {label} ({where})",
            "structure",
            run_file=None if position else "structure.png",
        )
        rows = []
        for name, e in emergent.items():
            for dim in ("dim0", "dim1"):
                if dim in e:
                    d = e[dim]
                    rows.append(
                        [
                            escape(name),
                            escape(d["unit"]),
                            fmt(e["sparsity"], True),
                            escape(e.get("baseline", "")),
                            f"{d['pruned_units']}/{d['units']}",
                            fmt(d["observed"], True),
                            fmt(d["expected"], True),
                            fmt(d["ratio"]),
                        ]
                    )
        pattern = analysis.nm_pattern(state.masks)
        numbers[label]["nm_2_4"] = pattern
        nm_note = ""
        if analysis.follows_nm(state.masks):
            nm_note = (
                f"<p>2:4 pattern kept: every group of 4 consecutive inputs keeps at most 2 weights in "
                f"{escape(', '.join(pattern))} ({sum(v['groups'] for v in pattern.values())} groups).</p>"
            )
        html.append(
            page.group(
                f"{label} ({where})",
                figure
                + nm_note
                + html_table(
                    [
                        "layer",
                        "unit",
                        "sparsity",
                        "baseline",
                        "pruned units",
                        "observed",
                        "expected",
                        "observed / expected",
                    ],
                    rows,
                ),
            )
        )
    page.numbers["structure"] = numbers
    page.section(
        "structure",
        "Emergent structure",
        "<p>A unit (filter, input channel, neuron, input feature) is <em>entirely pruned</em> when all its "
        "weights are masked. <em>Expected</em> is the fraction of such units that random pruning of the "
        "same structure would give at the same per-layer sparsity: for unstructured masks the exact "
        "probability under random unstructured pruning (hypergeometric); for masks of whole slices, random "
        "structured pruning of as many slices (units along the pruned dim are pruned by construction: "
        "ratio 1; the ratio says how much structure emerged beyond the method's own granularity).</p>"
        + ("".join(html) or "<p>No pruned state.</p>"),
    )
