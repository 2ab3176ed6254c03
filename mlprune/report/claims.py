"""Claims: how sure a difference between two branches of a study is, and what could confound it.

Two series labels of one recipe (the same parameters) are compared round by round on their seeds'
test accuracy. They are *paired* when, for every seed, both hang off the same dense network (the
recipe's first trained state: a control and the branch it checks, two one-shot methods): the table
then gives the mean paired difference, its 95 % interval, the paired t-test and Wilcoxon signed-rank
p-values, both Holm-adjusted across the rounds compared, and a verdict. Otherwise the comparison is
Welch's (``unpaired``). The statistics are `analysis.statistics`.

`compare --against NAME` compares, in every recipe with a branch NAME, the branch NAME checks (a
control) or every other method branch (a one-shot method) against it; the report's Claims section
compares every control with the branch it checks, and every one-shot method with its recipe's
random-pruning method (the method catalog's ``random``: ShrinkBench's baseline). Both warn when a series mixes environments
(`names.ENV_TAGS`: torch, CUDA, the device, ...) and say when every series has a single seed.
"""

from __future__ import annotations

from html import escape

from ..analysis import statistics
from ..names import ENV_TAGS, M_SPARSITY, M_TEST_ACCURACY
from .common import Page, html_table, metric
from .sections import SectionContext

ONE_SEED_LINE = (
    "1 seed: claims need several seeds (an interval, a test); run them with "
    "`mlprune sweep {recipes} --seeds 0-4 --batch 5` (the seed already computed is reused)"
)


def _by_label(collection) -> dict[str, list]:
    out: dict[str, list] = {}
    for series in collection.series:
        out.setdefault(series.label, []).append(series)
    return out


def comparison_pairs(collection, against: str | None = None) -> list[tuple[str, str]]:
    """(compared label, reference label) pairs: with ``against``, every recipe's branch of that name as the
    reference (see the module docs); without, every control against the branch it checks and every
    one-shot method against a method branch of its recipe that prunes at random."""
    labels = _by_label(collection)
    pairs = []
    for label, group in labels.items():
        series = group[0]
        if against is None:
            if series.control_of:
                checked = (
                    series.base_label if series.control_of == "main" else f"{series.base_label} / {series.control_of}"
                )
                if checked in labels:
                    pairs.append((checked, label))
            elif _prunes_at_random(collection, series):
                pairs += [(other, label) for other in _methods_beside(labels, label)]
            continue
        if series.branch != against:
            continue
        if series.control_of:
            checked = series.base_label if series.control_of == "main" else f"{series.base_label} / {series.control_of}"
            candidates = [checked] if checked in labels else []
        else:
            candidates = _methods_beside(labels, label)
        pairs += [(candidate, label) for candidate in candidates]
    return pairs


def _methods_beside(labels: dict, label: str) -> list[str]:
    """The other method branches (not main, not a control) of the recipe of ``label``."""
    base = labels[label][0].base_label
    return [
        other
        for other, members in labels.items()
        if other != label
        and members[0].base_label == base
        and not members[0].control_of
        and members[0].branch != "main"
    ]


def _prunes_at_random(collection, series) -> bool:
    """A one-shot method branch whose pruning is random (the method catalog's ``random``): the baseline
    the report compares the recipe's other methods with."""
    from ..pruning.catalog import METHODS

    if series.control_of or series.branch == "main" or not series.pruned:
        return False
    run = collection.runs.get(next(iter(series.pruned.values())))
    method = run.data.params.get("prune.method") if run is not None else None
    return method in METHODS and METHODS[method].random


def _per_seed(collection, group, rnd) -> dict[str, tuple[float, str, str | None]]:
    """{seed: (test accuracy, run id, dense run id)} of a label's series at a round."""
    out = {}
    for series in group:
        run_id = series.trained.get(rnd)
        value = metric(collection.runs.get(run_id), M_TEST_ACCURACY) if run_id else None
        if value is not None:
            out[str(series.seed)] = (value, run_id, series.trained.get(0))
    return out


def compare_series(collection, label: str, reference: str, ci: str = "t") -> list[dict]:
    """One row per round where both labels have states of their own (round 0, the shared dense network,
    is no comparison): the per-seed accuracies, the paired (or Welch) statistics, Holm-adjusted p-values
    across these rounds and the verdict of ``label`` against ``reference``."""
    labels = _by_label(collection)
    rows = []
    rounds = sorted(
        set().union(*(s.trained for s in labels[label])) & set().union(*(s.trained for s in labels[reference]))
    )
    for rnd in rounds:
        a, b = _per_seed(collection, labels[label], rnd), _per_seed(collection, labels[reference], rnd)
        shared = set(a) == set(b) and all(a[s][1] == b[s][1] for s in a)  # the same states: round 0
        if not a or not b or shared:
            continue
        seeds = sorted(set(a) & set(b), key=lambda s: (len(s), s))
        is_paired = bool(seeds) and set(a) == set(b) and all(a[s][2] is not None and a[s][2] == b[s][2] for s in seeds)
        row = {
            "series": label,
            "against": reference,
            "round": rnd,
            "remaining": _mean_remaining(collection, [a[s][1] for s in a]),
        }
        if is_paired:
            row.update(statistics.paired([a[s][0] for s in seeds], [b[s][0] for s in seeds], ci))
            row.update(
                seeds=seeds,
                values=[a[s][0] for s in seeds],
                against_values=[b[s][0] for s in seeds],
                run_ids=[a[s][1] for s in seeds],
                against_run_ids=[b[s][1] for s in seeds],
            )
        else:
            order = sorted(a, key=lambda s: (len(s), s)), sorted(b, key=lambda s: (len(s), s))
            row.update(statistics.unpaired([a[s][0] for s in order[0]], [b[s][0] for s in order[1]]))
            row.update(
                seeds=order[0],
                against_seeds=order[1],
                values=[a[s][0] for s in order[0]],
                against_values=[b[s][0] for s in order[1]],
            )
        rows.append(row)
    for test in ("p_t", "p_wilcoxon", "p_welch"):
        present = [r for r in rows if test in r]
        for r, adjusted in zip(present, statistics.holm([r[test] for r in present])):
            r[f"{test}_holm"] = adjusted
    for r in rows:
        r["verdict"] = statistics.verdict(r["n"], r["mean_difference"], r.get("p_t_holm", r.get("p_welch_holm")))
    return rows


def _mean_remaining(collection, run_ids) -> float | None:
    values = [metric(collection.runs.get(r), M_SPARSITY) for r in run_ids]
    values = [1.0 - v for v in values if v is not None]
    return sum(values) / len(values) if values else None


def claims(collection, against: str | None = None, ci: str = "t") -> list[dict]:
    """Every comparison's rows (`comparison_pairs`, `compare_series`)."""
    statistics.check_ci(ci)
    return [
        row
        for label, reference in comparison_pairs(collection, against)
        for row in compare_series(collection, label, reference, ci)
    ]


def environment_warnings(collection) -> list[str]:
    """One line per series label whose states were computed in more than one environment."""
    lines = []
    for label, group in _by_label(collection).items():
        seen: dict[str, dict[str, int]] = {}
        for series in group:
            for run_id in {*series.trained.values()}:
                run = collection.runs.get(run_id)
                for tag in ENV_TAGS:
                    value = run.data.tags.get(tag) if run is not None else None
                    if value is not None:
                        seen.setdefault(tag, {}).setdefault(value, 0)
                        seen[tag][value] += 1
        mixed = {tag: counts for tag, counts in seen.items() if len(counts) > 1}
        if mixed:
            what = "; ".join(
                f"{tag} = " + ", ".join(f"{v} ({n} states)" for v, n in sorted(counts.items()))
                for tag, counts in mixed.items()
            )
            lines.append(f"series {label!r} mixes environments (a confounder; keys do not cover it): {what}")
    return lines


def one_seed_line(collection) -> str | None:
    """The line saying claims need several seeds, naming the recipes to sweep, when no series label has
    more than one seed (None otherwise, or with no series)."""
    groups = _by_label(collection)
    if not groups or any(len({str(s.seed) for s in group}) > 1 for group in groups.values()):
        return None
    recipes = list(dict.fromkeys(s.recipe for s in collection.series))
    return ONE_SEED_LINE.format(recipes=" ".join(f"recipes/{r}.yaml" for r in recipes))


def p(value) -> str:
    return "–" if value is None else f"{value:.3g}"


def difference(row) -> str:
    return f"{100 * row['mean_difference']:+.2f}"


def interval(row) -> str:
    if row.get("ci_low") is None:
        return statistics.ONE_SEED if row["n"] < 2 else "–"
    return f"[{100 * row['ci_low']:+.2f}, {100 * row['ci_high']:+.2f}]"


def claims_section(page: Page, ctx: SectionContext) -> None:
    """Each control against the branch it checks, round by round: paired differences, intervals, tests."""
    collection = ctx.collection
    rows = claims(collection)
    page.report["claims"] = rows
    page.numbers["claims"] = rows
    notes = environment_warnings(collection)
    for line in notes:
        ctx.note(line)
    line = one_seed_line(collection)
    lead = f"<p><b>{escape(line)}</b></p>" if line else ""
    if not rows:
        page.section(
            "claims",
            "Claims",
            lead + "<p>No branch here has a control or a random-pruning method to "
            "compare it with (recipe <code>controls</code>, a one-shot method that prunes at random, or "
            "<code>mlprune compare --against NAME</code> between branches).</p>",
        )
        return
    table = html_table(
        [
            "series",
            "against",
            "round",
            "remaining",
            "n",
            "paired",
            "difference (points)",
            "95% CI",
            "p (t)",
            "p (Wilcoxon)",
            "p (Welch)",
            "Holm p (t)",
            "Holm p (Wilcoxon)",
            "Holm p (Welch)",
            "verdict",
        ],
        [
            [
                escape(r["series"]),
                escape(r["against"]),
                str(r["round"]),
                "–" if r["remaining"] is None else f"{100 * r['remaining']:.1f}%",
                str(r["n"]),
                "paired" if r["paired"] else "unpaired",
                difference(r),
                interval(r),
                p(r.get("p_t")),
                p(r.get("p_wilcoxon")),
                p(r.get("p_welch")),
                p(r.get("p_t_holm")),
                p(r.get("p_wilcoxon_holm")),
                p(r.get("p_welch_holm")),
                escape(r["verdict"]),
            ]
            for r in rows
        ],
    )
    page.section(
        "claims",
        "Claims",
        lead
        + (
            "<p>Test accuracy of each branch minus its control's (or a method's minus random pruning's), per round. Paired: the same seeds, each pair "
            "off the same dense network; the mean paired difference with its 95% Student-t interval, the "
            "paired t-test and the Wilcoxon signed-rank test, p-values Holm-Bonferroni adjusted across the "
            "rounds of one comparison. Unpaired: Welch's test. Verdict at adjusted p &lt; 0.05 (paired t or "
            f"Welch); fewer than {statistics.MIN_SEEDS} seeds give none.</p>"
        )
        + table,
    )
