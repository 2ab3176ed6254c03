"""The report's sanity-check section: every pruned branch beside its controls, one panel each.

Frankle et al. 2021 (their ablation figures) and Su et al. 2020 ask of a pruning method whether its
mask means more than its per-layer sparsity: if the curve of a layer-shuffled, re-initialized or
inverted mask matches the method's own, it does not. The plan records which branch a control
checks (``control_of``), so this section draws, for every branch that has controls (a recipe's
rounds, every ``one_shot`` method), test accuracy vs remaining weights of the branch and its
controls on one panel (the mean and its 95% confidence interval over seeds).
"""

from __future__ import annotations

from html import escape

from ..plots import plot_sanity_panels
from .common import Page
from .sections import SectionContext
from .series import accuracy_table


def sanity_groups(collection) -> dict[str, list[str]]:
    """{checked series label: [its label, then its controls' labels]}, in the collection's order."""
    groups: dict[str, list[str]] = {}
    labels = {s.label for s in collection.series}
    for series in collection.series:
        if not series.control_of:
            continue
        checked = series.base_label if series.control_of == "main" else f"{series.base_label} / {series.control_of}"
        if checked not in labels:
            continue
        members = groups.setdefault(checked, [checked])
        if series.label not in members:
            members.append(series.label)
    return groups


def sanity_section(page: Page, ctx: SectionContext) -> None:
    collection = ctx.collection
    groups = sanity_groups(collection)
    page.numbers["sanity_checks"] = groups
    if not groups:
        return
    rows = accuracy_table(collection)
    names = {series.label: series.branch for series in collection.series}
    html = page.figure(
        plot_sanity_panels(groups, rows, names),
        "sanity_checks",
        "Test accuracy vs remaining weights: each branch with controls beside them (layer_shuffle, "
        "reinit, invert, ...), mean and 95% CI over seeds (n in the legend)",
        "sanity_checks",
        run_file="sanity_checks.png",
    )
    items = "".join(
        f"<li><b>{escape(checked)}</b>: {escape(', '.join(members[1:]))}</li>" for checked, members in groups.items()
    )
    page.section(
        "sanity",
        "Sanity checks",
        "<p>A control whose curve matches its branch's shows the mask means no more "
        "than what the control keeps (per-layer sparsity for layer_shuffle, the mask without its "
        f"initialization for reinit).</p><ul>{items}</ul>" + html,
    )
