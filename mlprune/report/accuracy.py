"""The study's headline sections: test accuracy (and early stopping) vs remaining weights, and
accuracy vs the measured speedup of structured recipes."""

from __future__ import annotations

from html import escape

from .. import analysis
from .. import plots as plotting
from .common import Page, fmt, html_table
from .sections import SectionContext
from .series import accuracy_table, rounds_table, speedup_table


def accuracy_section(page: Page, ctx: SectionContext) -> list[dict]:
    """Test accuracy (and early stopping) vs remaining weights of every series, mean ± std and 95% CI over seeds."""
    collection = ctx.collection
    what = f"{ctx.recipe}" if ctx.recipe else "recipes"
    agg = accuracy_table(collection)
    page.numbers["accuracy_vs_remaining"] = agg
    page.report["accuracy_vs_remaining"] = agg  # over seeds: n, mean, std, se, the 95% CI, per-seed values
    if not agg:
        page.section(
            "accuracy",
            "Accuracy vs remaining weights",
            "<p>No recipe rounds here (states made outside recipes are in the lineage and the state table).</p>",
        )
        return agg
    title = f"{ctx.recipe}: test accuracy vs remaining weights" if ctx.recipe else None
    html = page.figure(
        plotting.plot_accuracy_vs_remaining(agg, title=title),
        "accuracy_vs_remaining",
        f"Test accuracy vs remaining weights, {what}, mean and 95% CI over seeds (band; n = seeds in the legend; "
        "one seed: no interval)",
        "accuracy_vs_remaining",
        run_file="accuracy_vs_remaining.png",
    )
    table = html_table(
        ["series", "round", "remaining", "test accuracy (mean ± std)", "95% CI", "n", "seeds"],
        [
            [
                escape(a["recipe"]),
                str(a["round"]),
                fmt(a["remaining"], True),
                f"{100 * a['mean']:.2f}%" + (f" ± {100 * a['std']:.2f}" if a["n"] >= 2 else ""),
                (
                    f"[{100 * a['ci_low']:.2f}, {100 * a['ci_high']:.2f}]"
                    if a["ci_low"] is not None
                    else "1 seed: no interval"
                ),
                str(a["n"]),
                escape(", ".join(map(str, a["seeds"]))),
            ]
            for a in agg
        ],
    )
    page.section("accuracy", "Accuracy vs remaining weights", html + table)
    stops = [row["early_stop_epoch"] for row in rounds_table(collection) if row.get("early_stop_epoch") is not None]
    if stops and max(stops) <= 1:
        page.section(
            "early-stop",
            "Early stopping vs remaining weights",
            "<p>Every training here stopped early in its first epoch or ran one epoch or less: the "
            "validation loss is measured at epoch ends, so the early-stopping iteration is the same "
            "everywhere and says nothing about learning speed. Train for several epochs to see it "
            "(<code>early_stop_iteration</code> is still logged on every trained state).</p>",
        )
    elif any("early_stop_iteration" in a for a in agg):
        html = page.figure(
            plotting.plot_early_stop_vs_remaining(agg),
            "early_stop_vs_remaining",
            "Learning speed: early-stopping iteration (lowest validation loss) and the test accuracy "
            "then vs remaining weights, mean and 95% CI over seeds",
            "early_stop",
            run_file="early_stop_vs_remaining.png",
        )
        table = html_table(
            [
                "series",
                "round",
                "remaining",
                "early-stopping iteration (mean ± std)",
                "test accuracy then (mean ± std)",
                "n",
            ],
            [
                [
                    escape(a["recipe"]),
                    str(a["round"]),
                    fmt(a["remaining"], True),
                    f"{a['early_stop_iteration']:.0f}"
                    + (f" ± {a['early_stop_iteration_std']:.0f}" if a["early_stop_n"] >= 2 else ""),
                    (
                        f"{100 * a['early_stop_test_accuracy']:.2f}%"
                        + (f" ± {100 * a['early_stop_test_accuracy_std']:.2f}" if a["early_stop_n"] >= 2 else "")
                        if "early_stop_test_accuracy" in a
                        else "–"
                    ),
                    str(a["early_stop_n"]),
                ]
                for a in agg
                if "early_stop_iteration" in a
            ],
        )
        page.section("early-stop", "Early stopping vs remaining weights", html + table)
    else:
        page.section(
            "early-stop",
            "Early stopping vs remaining weights",
            "<p>No state has an early-stopping iteration: it is the iteration of the lowest validation loss "
            "(measured at epoch ends), logged as <code>early_stop_iteration</code> when the root has a "
            "validation split "
            "(<code>val_size</code> &gt; 0).</p>",
        )
    return agg


NM_NOT_MEASURED = "not measured: needs CUDA"


def nm_series(ctx: SectionContext, labels: list[str]) -> list[str]:
    """The labels among `labels` whose last trained state follows the 2:4 pattern (the first seed's)."""
    found = []
    for series in ctx.collection.series:
        if series.label in labels and series.label not in found and series.trained:
            state = ctx.load(series.trained[max(series.trained)])
            if state is not None and analysis.follows_nm(state.masks):
                found.append(series.label)
    return found


def speedup_section(page: Page, ctx: SectionContext) -> list[dict]:
    """Accuracy vs measured speedup of the structured recipes; unstructured ones said plainly to have none."""
    collection = ctx.collection
    rows, unstructured = speedup_table(collection)
    page.numbers["accuracy_vs_speedup"] = rows
    plain = ""
    semi = nm_series(ctx, unstructured)
    unstructured = [label for label in unstructured if label not in semi]
    if unstructured:
        plain = (
            f"<p>No measured speedup for {escape(', '.join(unstructured))}: no channel is removed, and sparse "
            "weights run as dense tensors, so these networks are as slow as the dense one. Their "
            "<code>flops_masked</code> is a theoretical count (multiply-adds a sparse kernel could skip).</p>"
        )
    if semi:
        page.numbers["speedup_nm"] = {label: NM_NOT_MEASURED for label in semi}
        plain += (
            f"<p>2:4 semi-structured states ({escape(', '.join(semi))}): speedup {NM_NOT_MEASURED} (sparse "
            "tensor cores run <code>torch.sparse.to_sparse_semi_structured</code> weights; on the CPU they run "
            "as dense tensors).</p>"
        )
    if not rows:
        page.section(
            "speedup",
            "Accuracy vs measured speedup",
            "<p>No structured recipe here: a state gets a measured speedup when whole channels are removed "
            "(structured pruning; <code>coupled: true</code> removes them with everything they feed).</p>" + plain,
        )
        return rows
    html = page.figure(
        plotting.plot_accuracy_vs_speedup(rows),
        "accuracy_vs_speedup",
        "Test accuracy vs measured speedup of the compact network (dense / compact latency at batch 64, "
        "on the device each state ran on), structured recipes, mean and 95% CI of the accuracy over seeds",
        "accuracy_vs_speedup",
        run_file="accuracy_vs_speedup.png",
    )
    table = html_table(
        [
            "series",
            "round",
            "remaining",
            "parameters (compact)",
            "FLOPs (compact)",
            "latency ms, dense → compact",
            "speedup",
            "test accuracy (mean ± std)",
            "n",
        ],
        [
            [
                escape(r["recipe"]),
                str(r["round"]),
                fmt(r["remaining"], True),
                fmt(r["params_compact"]),
                fmt(r["flops_compact"]),
                (
                    f"{r['latency_ms_dense']:.3g} → {r['latency_ms']:.3g}"
                    if r["latency_ms"] is not None and r["latency_ms_dense"] is not None
                    else "–"
                ),
                f"{r['speedup']:.2f}×",
                f"{100 * r['mean']:.2f}% ± {100 * r['std']:.2f}",
                str(r["n"]),
            ]
            for r in rows
        ],
    )
    page.section("speedup", "Accuracy vs measured speedup", html + table + plain)
    return rows
