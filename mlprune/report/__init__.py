"""Science outputs of an experiment: the Python API on states, series, figures and the HTML report.

- ``states``: compare states' masks and weights (`mask_similarity`, `jaccard_table`,
  `structure`, `stability`, `trajectories`, `layer_kinds`);
- ``series``: a store's states grouped by recipe, branch, round and seed (`collect`,
  `rounds_table`, `accuracy_table`);
- ``figures``: the matplotlib figures;
- ``html``: the sections and the self-contained page (`write_report`);
- ``workflow``: what a workflow run carries (`workflow_files`: plan and lineage; light);
- ``run_figures``: a recipe's figures on its workflow run, per-state weight figures;
- ``inside``: predictions, per-class impact, PIEs, churn and CKA of recipes (`predictions`,
  `class_impact`, `pies`, `churn`, `cka_record`) and their report section.

Importing this package loads nothing heavy; each name loads its module on first use.
"""

_NAMES = {
    "mask_similarity": "states", "jaccard_table": "states", "structure": "states", "pruned_structurally": "states",
    "stability": "states",
    "trajectories": "states", "layer_kinds": "states",
    "Series": "series", "Collection": "series", "collect": "series", "rounds_table": "series",
    "accuracy_table": "series",
    "write_report": "html", "ReportResult": "html", "ReportWarning": "workflow",
    "workflow_files": "workflow", "lineage_files": "workflow", "state_figures": "run_figures",
    "log_state_figures": "run_figures", "recipe_figures": "run_figures",
    "predictions": "inside", "class_impact": "inside", "pies": "inside", "churn": "inside", "cka_record": "inside",
}
__all__ = list(_NAMES)


def __getattr__(name):
    if name in _NAMES:
        import importlib

        return getattr(importlib.import_module(f".{_NAMES[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
