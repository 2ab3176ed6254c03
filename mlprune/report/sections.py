"""The one interface of a report section, and the registry of sections in page order.

A section is a function ``fn(page, ctx)``: it reads what it needs from ``ctx`` (a `SectionContext`:
the experiment's states grouped into series, a loader of their tensors, a way to warn) and writes
into ``page`` (a `common.Page`): ``page.section(anchor, heading, html)``, figures with
``page.figure(...)`` (embedded in report.html, written to ``figures/``, and logged on a recipe's
workflow run under ``figures/<run_file>``), numbers for ``numbers.json`` (``page.numbers``) and
entries of ``report.json`` (``page.report``). `mlprune report` renders every entry of `SECTIONS` in
order; a recipe's workflow run renders those with ``on_workflow_run`` on that recipe's states.

Adding a section is one new module with its function and one line here::

    SECTIONS.add(Section("my_view", "mlprune.report.my_view:my_view_section", "what it shows"))
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from ..registry import Registry, load_impl


@dataclass
class SectionContext:
    """What a section reads: the states (`series.Collection`), their tensors, and where to warn."""

    collection: object  # series.Collection: runs, series, orphans, store
    load: Callable  # run id -> loaded state (weights, masks, spec) or None (warned once)
    note: Callable[[str], None]  # a warning for the page (and the caller)
    ui_url: str = "http://127.0.0.1:5000"  # links into the MLflow UI
    recipe: str | None = None  # a workflow run's recipe: the figures are that recipe's

    @property
    def store(self):
        return self.collection.store


@dataclass(frozen=True)
class Section:
    """One section of the report: ``impl`` is ``"module:function"``, ``fn(page, ctx)``."""

    name: str
    impl: str
    help: str = ""
    on_workflow_run: bool = True  # also drawn on a recipe's workflow run (figures/...)

    def load(self):
        return load_impl(self.impl)


SECTIONS: Registry[Section] = Registry("report section")


def render(page, ctx: SectionContext, *, workflow_run: bool = False) -> None:
    """Every section in page order into `page` (on a workflow run: those drawn there)."""
    for entry in SECTIONS.values():
        if workflow_run and not entry.on_workflow_run:
            continue
        page.current = entry.name
        entry.load()(page, ctx)


SECTIONS.add(
    Section(
        "answer",
        "mlprune.report.overview:answer_section",
        "the study's answer: the deepest round's accuracy per seed and mean, main beside controls",
        on_workflow_run=False,
    )
)
SECTIONS.add(
    Section("accuracy", "mlprune.report.accuracy:accuracy_section", "accuracy and early stopping vs remaining weights")
)
SECTIONS.add(Section("speedup", "mlprune.report.accuracy:speedup_section", "accuracy vs measured speedup (structured)"))
SECTIONS.add(
    Section(
        "compression",
        "mlprune.report.compression:compression_section",
        "accuracy vs compression ratio and theoretical speedup, Pareto front (ShrinkBench)",
    )
)
SECTIONS.add(
    Section(
        "claims",
        "mlprune.report.claims:claims_section",
        "each branch against its controls: paired differences, intervals, tests, verdicts",
        on_workflow_run=False,
    )
)
SECTIONS.add(Section("sanity", "mlprune.report.sanity:sanity_section", "each pruned branch beside its controls"))
SECTIONS.add(
    Section(
        "instability",
        "mlprune.report.instability:instability_section",
        "instability vs spawn point per sparsity level (interpolations of spawned copies)",
    )
)
SECTIONS.add(Section("similarity", "mlprune.report.masks:similarity_section", "mask Jaccard: rounds, seeds, states"))
SECTIONS.add(
    Section(
        "inside",
        "mlprune.report.inside:inside_section",
        "per recipe: learning curves, per-class impact, PIEs, prediction churn, CKA to the dense network",
    )
)
SECTIONS.add(Section("structure", "mlprune.report.masks:structure_section", "emergent structure vs random"))
SECTIONS.add(Section("stability", "mlprune.report.weights:stability_section", "weight stability and evolution"))
SECTIONS.add(
    Section(
        "weights",
        "mlprune.report.weights:weights_section",
        "weights of the dense and final states",
        on_workflow_run=False,
    )
)
SECTIONS.add(
    Section(
        "lineage",
        "mlprune.report.overview:lineage_section",
        "the DAG of every state (collapsed)",
        on_workflow_run=False,
    )
)
SECTIONS.add(
    Section("states", "mlprune.report.overview:states_section", "every state in a table", on_workflow_run=False)
)
