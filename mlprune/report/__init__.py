"""Science outputs of an experiment: the Python API on states, series, figures and the HTML report.

- ``states``: compare states' masks and weights (`mask_similarity`, `jaccard_table`,
  `structure`, `stability`, `trajectories`, `layer_kinds`);
- ``series``: a store's states grouped by recipe, branch, round and seed (`collect`,
  `rounds_table`, `accuracy_table`, `cost_table`, `study_answer`: the deepest round per branch and seed);
- ``claims``: branches against their controls (or `--against NAME`): paired statistics over seeds,
  mixed-environment warnings, the one-seed line;
- ``sections``: the one interface of a report section and their registry in page order; one module per
  group of sections (``overview``, ``accuracy``, ``compression``, ``claims``, ``sanity``, ``instability``, ``masks``, ``inside``,
  ``weights``), helpers they share in ``common``; the figures are drawn by `mlprune.plots`;
- ``html``: the self-contained page (`write_report`: report.html, report.json, numbers.json);
- ``workflow``: what a workflow run carries (`workflow_files`: plan and lineage, light; `recipe_figures`:
  the sections on one recipe's states);
- ``weights``: also the opt-in per-state weight figures (`state_figures`, `log_state_figures`);
- ``inside``: predictions, per-class impact, PIEs, churn and CKA of recipes (`predictions`,
  `class_impact`, `pies`, `churn`, `cka_record`) and their report section.

Importing this package loads nothing heavy; each name loads its module on first use.
"""

_NAMES = {
    "mask_similarity": "states",
    "jaccard_table": "states",
    "structure": "states",
    "pruned_structurally": "states",
    "stability": "states",
    "trajectories": "states",
    "layer_kinds": "states",
    "Series": "series",
    "Collection": "series",
    "collect": "series",
    "rounds_table": "series",
    "accuracy_table": "series",
    "cost_table": "series",
    "study_answer": "series",
    "answer_lines": "series",
    "plans_collection": "series",
    "write_report": "html",
    "ReportResult": "html",
    "ReportWarning": "common",
    "SECTIONS": "sections",
    "Section": "sections",
    "workflow_files": "workflow",
    "lineage_files": "workflow",
    "plan_json": "workflow",
    "state_figures": "weights",
    "log_state_figures": "weights",
    "recipe_figures": "workflow",
    "predictions": "inside",
    "class_impact": "inside",
    "pies": "inside",
    "churn": "inside",
    "cka_record": "inside",
}
__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
