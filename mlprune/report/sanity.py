"""The report's sanity-check section: every pruned branch beside its controls, one panel each.

Frankle et al. 2021 (their ablation figures) and Su et al. 2020 ask of a pruning method whether its
mask means more than its per-layer sparsity: if the curve of a layer-shuffled, re-initialized or
inverted mask matches the method's own, it does not. The plan records which branch a control
checks (``control_of``), so this section draws, for every branch that has controls (a recipe's
rounds, every ``one_shot`` method), test accuracy vs remaining weights of the branch and its
controls on one panel (mean ± std over seeds).
"""

from __future__ import annotations

import math
from html import escape

import numpy as np

from .figures import _figure, _remaining_axis
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


def plot_sanity_panels(groups: dict[str, list[str]], rows: list[dict], names: dict[str, str] | None = None):
    """One panel per checked branch: its accuracy-vs-remaining curve (solid) and its controls' (dashed);
    `names`: the legend's name of a series label (its branch)."""
    names = names or {}
    by_label: dict[str, list[dict]] = {}
    for row in rows:
        by_label.setdefault(row["recipe"], []).append(row)
    n = len(groups)
    columns = min(3, n)
    lines = math.ceil(n / columns)
    fig = _figure(4.6 * columns, 3.6 * lines + 0.4)
    axes = fig.subplots(lines, columns, squeeze=False)
    for ax in axes.flat[n:]:
        ax.set_visible(False)
    for ax, (checked, members) in zip(axes.flat, groups.items()):
        xs_all = []
        for i, label in enumerate(members):
            points = sorted(by_label.get(label, []), key=lambda a: -a["remaining"])
            x = np.array([100.0 * a["remaining"] for a in points])
            y = np.array([100.0 * a["mean"] for a in points])
            e = np.array([100.0 * a["std"] for a in points])
            ok = x > 0
            name = names.get(label, label)
            ax.errorbar(x[ok], y[ok], yerr=e[ok], marker="o", markersize=3.5, capsize=2,
                        linewidth=2.0 if i == 0 else 1.2, linestyle="-" if i == 0 else "--",
                        color="black" if i == 0 else f"C{(i - 1) % 10}", label=name)
            xs_all.extend(x[ok].tolist())
        ax.set_xscale("log")
        if xs_all:
            _remaining_axis(ax, xs_all)
        ax.set_title(checked, fontsize=9)
        ax.set_xlabel("remaining weights (%, log scale)", fontsize=8)
        ax.set_ylabel("test accuracy (%)", fontsize=8)
        ax.grid(True, which="major", alpha=0.3)
        ax.legend(fontsize=7, loc="best")
    fig.suptitle("Sanity checks: each pruned branch (solid) and its controls (dashed)")
    return fig


def sanity_section(b, collection, load=None, note=None) -> None:
    groups = sanity_groups(collection)
    b.numbers["sanity_checks"] = groups
    if not groups:
        return
    rows = accuracy_table(collection)
    names = {series.label: series.branch for series in collection.series}
    html = b.figure(plot_sanity_panels(groups, rows, names), "sanity_checks",
                    "Test accuracy vs remaining weights: each branch with controls beside them (layer_shuffle, "
                    "reinit, invert, ...), mean ± std over seeds", "sanity_checks")
    items = "".join(f"<li><b>{escape(checked)}</b>: {escape(', '.join(members[1:]))}</li>"
                    for checked, members in groups.items())
    b.section("sanity", "Sanity checks", "<p>A control whose curve matches its branch's shows the mask means no more "
              "than what the control keeps (per-layer sparsity for layer_shuffle, the mask without its "
              f"initialization for reinit).</p><ul>{items}</ul>" + html)
