"""Matplotlib figures for pruning experiments: drawing only (no store, no torch), used by the report,
the workflow runs and the interpolation step.

Every ``plot_*`` function builds and returns its own ``matplotlib.figure.Figure``
(Agg canvas attached, constrained layout); nothing goes through ``pyplot``, so no
global figure state leaks between calls and nothing needs closing. Callers log a
figure with ``mlflow.log_figure(fig, "name.png")`` or ``fig.savefig(path)``.

Conventions: weights and masks are tensors (or arrays) of one parameter,
``True`` in a mask = kept. Pruned weights are drawn in grey (``PRUNED_COLOR``),
which a diverging colormap (white at 0) never produces, so a pruned weight is
never confused with a kept weight that is zero. Accuracies and remaining
fractions come in as fractions (0..1) and are shown in percent.
"""

from __future__ import annotations

from .accuracy import (
    plot_accuracy_vs_cost,
    plot_accuracy_vs_remaining,
    plot_accuracy_vs_speedup,
    plot_early_stop_vs_remaining,
    plot_jaccard_heatmap,
    plot_sanity_panels,
    plot_structure,
)
from .dag import plot_dag
from .inside import plot_class_impact, plot_learning_curves, plot_pie_fraction, plot_pie_gallery, plot_value_heatmap
from .instability import STABLE_BELOW, plot_instability_vs_spawn, plot_interpolation
from .style import PRUNED_COLOR
from .weights import (
    plot_bias_panels,
    plot_biases,
    plot_conv_filters,
    plot_fc_weights,
    plot_stability,
    plot_weight_evolution,
)

__all__ = [
    "PRUNED_COLOR",
    "STABLE_BELOW",
    "plot_conv_filters",
    "plot_fc_weights",
    "plot_biases",
    "plot_bias_panels",
    "plot_weight_evolution",
    "plot_stability",
    "plot_jaccard_heatmap",
    "plot_accuracy_vs_remaining",
    "plot_accuracy_vs_speedup",
    "plot_accuracy_vs_cost",
    "plot_structure",
    "plot_early_stop_vs_remaining",
    "plot_sanity_panels",
    "plot_dag",
    "plot_class_impact",
    "plot_pie_fraction",
    "plot_pie_gallery",
    "plot_value_heatmap",
    "plot_learning_curves",
    "plot_interpolation",
    "plot_instability_vs_spawn",
]
