"""ShrinkBench's figures (Blalock et al. 2020): test accuracy vs compression ratio (all parameters /
nonzero parameters) and vs theoretical speedup (dense / masked multiply-adds), every series of the
experiment on one plot with the dense accuracy and the Pareto front across series."""

from __future__ import annotations

from html import escape

from .. import plots as plotting
from ..analysis import pareto_front
from .common import Page, html_table
from .sections import SectionContext
from .series import cost_table

COSTS = (
    (
        "compression_ratio_all",
        "compression ratio (all parameters / nonzero parameters, log2)",
        "accuracy_vs_compression",
    ),
    (
        "theoretical_speedup",
        "theoretical speedup (dense / masked multiply-adds, log2)",
        "accuracy_vs_theoretical_speedup",
    ),
)


def compression_section(page: Page, ctx: SectionContext) -> None:
    rows = cost_table(ctx.collection)
    page.numbers["accuracy_vs_cost"] = rows
    fronts = {key: pareto_front(rows, key) for key, _, _ in COSTS}
    page.report["pareto_front"] = {
        key: [{k: p[k] for k in ("recipe", "round", "n", key, "mean", "ci_low", "ci_high")} for p in front]
        for key, front in fronts.items()
    }
    if not any(r["round"] > 0 for r in rows):
        page.section(
            "compression",
            "Accuracy vs compression and theoretical speedup",
            "<p>No pruned state with ShrinkBench's metrics here (<code>compression_ratio_all</code>, "
            "<code>theoretical_speedup</code>: logged on every state since they were added).</p>",
        )
        return
    html = ""
    for key, label, name in COSTS:
        title = f"{ctx.recipe}: test accuracy vs {label.split(' (')[0]}" if ctx.recipe else None
        html += page.figure(
            plotting.plot_accuracy_vs_cost(rows, key, label, fronts[key], title=title),
            name,
            f"Test accuracy vs {label}, every series, mean and 95% CI over seeds (n in the legend); "
            "dashed: the dense accuracy; black: the Pareto front across series",
            name,
            run_file=f"{name}.png",
        )
        html += (
            "<h3>Pareto front: "
            + escape(label.split(" (")[0])
            + "</h3>"
            + html_table(
                ["series", "round", key, "test accuracy (mean)", "n"],
                [
                    [escape(p["recipe"]), str(p["round"]), f"{p[key]:.3g}", f"{100 * p['mean']:.2f}%", str(p["n"])]
                    for p in fronts[key]
                ],
            )
        )
    page.section(
        "compression",
        "Accuracy vs compression and theoretical speedup",
        html
        + (
            "<p>Compression ratio: all parameters / nonzero parameters (ShrinkBench's definition; "
            "<code>compression_ratio</code> counts the prunable weights only). Theoretical speedup: multiply-adds "
            "of the dense network / of the masked one, convolution and linear layers only.</p>"
        ),
    )
