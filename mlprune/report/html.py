"""The HTML report of one experiment: sections of figures and tables, one self-contained page.

`write_report` reads every state of one experiment through ``store.Store``,
groups the states recipes reached into series (`series.collect`), and writes
``report.html`` (figures embedded as base64 PNG, the DAG as inline SVG: it works
offline), ``figures/*.png``, ``report.json`` (per series and round: remaining
fraction, test accuracy and loss, state run id) and ``numbers.json`` (the
numbers behind every figure).

Bad input never ends in a traceback: runs that are not mlprune states, states
that are not FINISHED and states with missing artifacts are skipped with a
warning; states of different architectures are never compared (one matrix per
architecture).
"""

from __future__ import annotations

import base64
import io
import itertools
import json
import math
import re
import time
import warnings
from dataclasses import dataclass
from html import escape
from pathlib import Path

import numpy as np

from .. import __version__, analysis, lineage
from ..errors import SpecError
from ..names import TAG_KIND
from ..registry import Registry, load_impl
from . import figures as plotting
from .series import Collection, Series, accuracy_table, collect, rounds_table, speedup_table
from .workflow import ReportWarning, _default_ui
from .states import _model, layer_kinds, stability, structure


@dataclass(frozen=True)
class Section:
    """One section of the report, in page order: ``impl(builder, collection, load, note)`` adds
    figures and HTML with ``builder.section``; ``load(run_id)`` gives a state's tensors (None if
    broken, warned once), ``note(message)`` a warning for the page."""

    name: str
    impl: str
    help: str = ""

    def load(self):
        return load_impl(self.impl)


SECTIONS: Registry[Section] = Registry("report section")


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def _jsonable(value):
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return _jsonable(value.tolist())
    if isinstance(value, (np.floating, float)):
        value = float(value)
        if math.isnan(value):
            return None
        if math.isinf(value):
            return "inf" if value > 0 else "-inf"
        return value
    if isinstance(value, np.integer):
        return int(value)
    return value


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "figure"


def _fmt(value, pct=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    return f"{100 * value:.1f}%" if pct else f"{value:.3g}"


class _Loader:
    """Loads states' tensors once; a state with missing artifacts is warned about once and skipped."""

    def __init__(self, store, runs, note):
        self.store, self.runs, self.note = store, runs, note
        self.cache: dict[str, object] = {}
        self.bad: set[str] = set()

    def __call__(self, run_id):
        if run_id in self.bad:
            return None
        if run_id not in self.cache:
            try:
                self.cache[run_id] = self.store.load(run_id)
            except SpecError as error:
                self.bad.add(run_id)
                self.note(f"state {run_id[:8]} left out of the mask and weight figures: {error}")
                return None
        return self.cache[run_id]


def _arch(state) -> tuple:
    return tuple(sorted((n, tuple(m.shape)) for n, m in state.masks.items()))


class _Builder:
    """Accumulates sections (HTML) and figures (PNG files + embedded copies)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.sections: list[tuple[str, str, str, list]] = []  # (anchor, heading, html, [(group anchor, title)])
        self.figures: list[dict] = []
        self.numbers: dict = {}
        self._groups: list[tuple[str, str]] = []  # groups made since the last section: its table of contents
        self.report: dict = {}      # what sections add to report.json beside the series

    def figure(self, fig, name: str, caption: str, kind: str) -> str:
        data = _png(fig)
        file = f"{len(self.figures) + 1:02d}_{_slug(name)}.png"
        if self.out_dir is not None:
            (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
            (self.out_dir / "figures" / file).write_bytes(data)
        self.figures.append({"file": file, "kind": kind, "caption": caption, "png": data})
        encoded = base64.b64encode(data).decode()
        return (f'<figure data-kind="{escape(kind)}"><img src="data:image/png;base64,{encoded}" '
                f'alt="{escape(caption)}" title="{escape(caption)}"><figcaption>{escape(caption)}</figcaption>'
                "</figure>")

    def section(self, anchor: str, heading: str, html: str) -> None:
        """A section of the page (collapsible); the groups made since the last one are its contents."""
        self.sections.append((anchor, heading, html, self._groups))
        self._groups = []

    def group(self, title: str, html: str, *, open: bool | None = None, anchor: str | None = None) -> str:
        """A collapsible group (one recipe's figures, one layer's) inside the next section, listed in the
        table of contents. Closed by default once a section has more than four."""
        anchor = anchor or f"g{len(self.figures)}-{_slug(title)}"
        self._groups.append((anchor, title))
        opened = open if open is not None else len(self._groups) <= 4
        return (f'<details class="group" id="{escape(anchor)}"{" open" if opened else ""}>'
                f"<summary>{escape(title)}</summary>{html}</details>")


def _table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; one of more than 12 rows is folded (a click opens it) so figures stay in view."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
    if len(rows) > 12:
        return f'<details class="table"><summary>table: {len(rows)} rows</summary>{table}</details>'
    return table


def _metric(run, name):
    value = run.data.metrics.get(name) if run is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def accuracy_section(b: _Builder, collection: Collection, load=None, note=None, what: str = "recipes") -> list[dict]:
    agg = accuracy_table(collection)
    b.numbers["accuracy_vs_remaining"] = agg
    if not agg:
        b.section("accuracy", "Accuracy vs remaining weights",
                  "<p>No recipe rounds here (states made outside recipes are in the lineage and the "
                  "state table).</p>")
        return agg
    html = b.figure(plotting.plot_accuracy_vs_remaining(agg), "accuracy_vs_remaining",
                    f"Test accuracy vs remaining weights, {what}, mean ± std over seeds (n = seeds)",
                    "accuracy_vs_remaining")
    table = _table(["series", "round", "remaining", "test accuracy (mean ± std)", "n", "seeds"],
                   [[escape(a["recipe"]), str(a["round"]), _fmt(a["remaining"], True),
                     f"{100 * a['mean']:.2f}%" + (f" ± {100 * a['std']:.2f}" if a["n"] >= 2 else ""), str(a["n"]),
                     escape(", ".join(map(str, a["seeds"])))] for a in agg])
    b.section("accuracy", "Accuracy vs remaining weights", html + table)
    if any("early_stop_iteration" in a for a in agg):
        html = b.figure(plotting.plot_early_stop_vs_remaining(agg), "early_stop_vs_remaining",
                        "Learning speed: early-stopping iteration (lowest validation loss) and the test accuracy "
                        "then vs remaining weights, mean ± std", "early_stop")
        table = _table(["series", "round", "remaining", "early-stopping iteration (mean ± std)",
                        "test accuracy then (mean ± std)", "n"],
                       [[escape(a["recipe"]), str(a["round"]), _fmt(a["remaining"], True),
                         f"{a['early_stop_iteration']:.0f}"
                         + (f" ± {a['early_stop_iteration_std']:.0f}" if a["early_stop_n"] >= 2 else ""),
                         (f"{100 * a['early_stop_test_accuracy']:.2f}%"
                          + (f" ± {100 * a['early_stop_test_accuracy_std']:.2f}" if a["early_stop_n"] >= 2 else "")
                          if "early_stop_test_accuracy" in a else "–"),
                         str(a["early_stop_n"])] for a in agg if "early_stop_iteration" in a])
        b.section("early-stop", "Early stopping vs remaining weights", html + table)
    else:
        b.section("early-stop", "Early stopping vs remaining weights",
                  "<p>No state has an early-stopping iteration: it is the iteration of the lowest validation loss "
                  "(measured at epoch ends), logged as <code>early_stop_iteration</code> when the root has a "
                  "validation split "
                  "(<code>val_size</code> &gt; 0).</p>")
    return agg


def speedup_section(b: _Builder, collection: Collection, load=None, note=None) -> list[dict]:
    """Accuracy vs measured speedup of the structured recipes; unstructured ones said plainly to have none."""
    rows, unstructured = speedup_table(collection)
    b.numbers["accuracy_vs_speedup"] = rows
    plain = ""
    if unstructured:
        plain = (f"<p>No measured speedup for {escape(', '.join(unstructured))}: no channel is removed, and sparse "
                 "weights run as dense tensors, so these networks are as slow as the dense one. Their "
                 "<code>flops_masked</code> is a theoretical count (multiply-adds a sparse kernel could skip).</p>")
    if not rows:
        b.section("speedup", "Accuracy vs measured speedup",
                  "<p>No structured recipe here: a state gets a measured speedup when whole channels are removed "
                  "(structured pruning; <code>coupled: true</code> removes them with everything they feed).</p>" + plain)
        return rows
    html = b.figure(plotting.plot_accuracy_vs_speedup(rows), "accuracy_vs_speedup",
                    "Test accuracy vs measured speedup of the compact network (dense / compact latency at batch 64, "
                    "on the device each state ran on), structured recipes, mean ± std over seeds", "accuracy_vs_speedup")
    table = _table(["series", "round", "remaining", "parameters (compact)", "FLOPs (compact)",
                    "latency ms, dense → compact", "speedup", "test accuracy (mean ± std)", "n"],
                   [[escape(r["recipe"]), str(r["round"]), _fmt(r["remaining"], True),
                     _fmt(r["params_compact"]), _fmt(r["flops_compact"]),
                     (f"{r['latency_ms_dense']:.3g} → {r['latency_ms']:.3g}"
                      if r["latency_ms"] is not None and r["latency_ms_dense"] is not None else "–"),
                     f"{r['speedup']:.2f}×", f"{100 * r['mean']:.2f}% ± {100 * r['std']:.2f}", str(r["n"])]
                    for r in rows])
    b.section("speedup", "Accuracy vs measured speedup", html + table + plain)
    return rows


def _load_series(series: Series, load) -> list[tuple[int, object]]:
    out = []
    for rnd in series.rounds:
        state = load(series.trained[rnd])
        if state is not None:
            out.append((rnd, state))
    return out


def _remaining_label(rnd: int, state) -> str:
    return f"r{rnd} ({100 * analysis.remaining_fraction(state.masks):.3g}%)"


def similarity_section(b: _Builder, collection: Collection, load, note) -> None:
    html = []
    numbers = []
    # methods x rounds: every series' pruned rounds, per seed and architecture
    by_seed: dict[str, list] = {}
    for series in collection.series:
        for rnd, state in _load_series(series, load):
            if rnd == 0:
                continue
            by_seed.setdefault(str(series.seed), []).append((f"{series.label} r{rnd}", state, series))
    for seed, entries in by_seed.items():
        groups: dict[tuple, list] = {}
        for entry in entries:
            groups.setdefault(_arch(entry[1]), []).append(entry)
        if len(groups) > 1:
            note(f"seed {seed}: states of {len(groups)} different architectures: one Jaccard matrix per "
                 "architecture (masks of different architectures are never compared)")
        for entries_g in groups.values():
            if len(entries_g) < 2:
                continue
            model = _model(entries_g[0][1])
            labels = [e[0] for e in entries_g]
            matrix, labels = analysis.jaccard_matrix([e[1].masks for e in entries_g], labels)
            numbers.append({"what": "series x rounds", "seed": seed, "model": model, "labels": labels,
                            "matrix": matrix})
            chunk = [b.figure(
                plotting.plot_jaccard_heatmap(matrix, labels,
                                              title=f"Mask similarity, recipes × rounds ({model}, seed {seed})"),
                f"jaccard_rounds_{model}_seed{seed}",
                f"Jaccard of kept weights between the rounds of every recipe ({model}, seed {seed})",
                "jaccard")]
            finals = {}
            for label, state, series in entries_g:
                finals[series.label] = (label, state)  # the last round of each series (rounds ascend)
            pairs = list(itertools.combinations(finals.values(), 2))
            if len(finals) > 6:
                chunk.append(f"<p>Per-layer Jaccard of the last rounds: {len(pairs)} pairs of series, too many "
                             "for a table; see <code>mlprune compare RUN_A RUN_B</code>.</p>")
            elif pairs:
                layers = list(layer_kinds(pairs[0][0][1].masks, model))
                rows = []
                for (la, sa), (lb, sb) in pairs:
                    jac = analysis.jaccard(sa.masks, sb.masks)
                    rows.append([escape(la), escape(lb), _fmt(jac["overall"])]
                                + [_fmt(jac["per_layer"][n]) for n in layers])
                    numbers.append({"what": "final rounds pair", "a": la, "b": lb, **jac})
                chunk.append("<p>Jaccard per layer between the last rounds of each pair of series:</p>"
                             + _table(["state A", "state B", "overall", *layers], rows))
            html.append(b.group(f"recipes × rounds ({model}, seed {seed})", "".join(chunk), open=not html))
    # seeds: the last round of each series across seeds
    by_label: dict[str, list] = {}
    for series in collection.series:
        loaded = _load_series(series, load)
        if loaded and loaded[-1][0] > 0:
            by_label.setdefault(series.label, []).append((f"seed {series.seed}", loaded[-1][1]))
    for label, entries in by_label.items():
        if len(entries) < 2:
            continue
        groups = {}
        for entry in entries:
            groups.setdefault(_arch(entry[1]), []).append(entry)
        for entries_g in groups.values():
            if len(entries_g) < 2:
                continue
            matrix, labels = analysis.jaccard_matrix([e[1].masks for e in entries_g], [e[0] for e in entries_g])
            numbers.append({"what": "seeds", "series": label, "labels": labels, "matrix": matrix})
            html.append(b.group(f"across seeds: {label}", b.figure(
                plotting.plot_jaccard_heatmap(matrix, labels, title=f"Mask similarity across seeds: {label}"),
                f"jaccard_seeds_{label}", f"Jaccard of the last round's masks across seeds: {label}", "jaccard"),
                open=False))
    # states no recipe reached (e.g. built with the Python API): all masked ones
    orphans = [s for s in (load(r) for r in collection.orphans) if s is not None
               and analysis.remaining_fraction(s.masks) < 1.0]
    groups = {}
    for state in orphans:
        groups.setdefault(_arch(state), []).append(state)
    if len(groups) > 1:
        models = ", ".join(sorted({_model(g[0]) for g in groups.values()}))
        note(f"pruned states of {len(groups)} different architectures ({models}): one Jaccard matrix per "
             "architecture (masks of different architectures are never compared)")
    for states in groups.values():
        if len(states) < 2:
            continue
        labels = [f"{collection.runs[s.run_id].data.tags.get(TAG_KIND, '?')} {s.run_id[:6]}"
                  for s in states]
        matrix, labels = analysis.jaccard_matrix([s.masks for s in states], labels)
        numbers.append({"what": "other states", "labels": labels, "matrix": matrix,
                        "run_ids": [s.run_id for s in states]})
        html.append(b.group(f"states made outside recipes ({_model(states[0])})", b.figure(
            plotting.plot_jaccard_heatmap(matrix, labels, title=f"Mask similarity, pruned states ({_model(states[0])})"),
            f"jaccard_states_{_model(states[0])}", "Jaccard of kept weights between pruned states made outside recipes",
            "jaccard"), open=not html))
    b.numbers["jaccard"] = numbers
    b.section("similarity", "Mask similarity (Jaccard)",
              "".join(html) or "<p>Fewer than two pruned states of one architecture: nothing to compare.</p>")


def _first_seed(collection: Collection) -> list[Series]:
    seen, out = set(), []
    for series in collection.series:
        if series.label not in seen:
            seen.add(series.label)
            out.append(series)
    return out


def structure_section(b: _Builder, collection: Collection, load, note=None) -> None:
    html, numbers = [], {}
    targets = [(s.label, s.seed, _load_series(s, load)) for s in _first_seed(collection)]
    targets = [(label, seed, loaded[-1]) for label, seed, loaded in targets if loaded and loaded[-1][0] > 0]
    for run_id in collection.orphans:
        state = load(run_id)
        if state is not None and analysis.remaining_fraction(state.masks) < 1.0 and len(targets) < 40:
            kind = collection.runs[run_id].data.tags.get(TAG_KIND, "?")
            targets.append((f"{kind} {run_id[:8]}", None, (None, state)))
    for label, seed, (rnd, state) in targets:
        emergent = structure(state, load.store)
        numbers[label] = {"run_id": state.run_id, "round": rnd, "seed": seed, "layers": emergent}
        where = f"round {rnd}, seed {seed}" if rnd is not None else state.run_id[:8]
        figure = b.figure(plotting.plot_structure(emergent, title=f"Emergent structure: {label} ({where})"),
                          f"structure_{label}", f"Entirely pruned units vs random pruning of the same structure: "
                          f"{label} ({where})", "structure")
        rows = []
        for name, e in emergent.items():
            for dim in ("dim0", "dim1"):
                if dim in e:
                    d = e[dim]
                    rows.append([escape(name), escape(d["unit"]), _fmt(e["sparsity"], True),
                                 escape(e.get("baseline", "")), f"{d['pruned_units']}/{d['units']}",
                                 _fmt(d["observed"], True), _fmt(d["expected"], True), _fmt(d["ratio"])])
        html.append(b.group(f"{label} ({where})", figure + _table(
            ["layer", "unit", "sparsity", "baseline", "pruned units", "observed", "expected", "observed / expected"],
            rows)))
    b.numbers["structure"] = numbers
    b.section("structure", "Emergent structure",
              "<p>A unit (filter, input channel, neuron, input feature) is <em>entirely pruned</em> when all its "
              "weights are masked. <em>Expected</em> is the fraction of such units that random pruning of the "
              "same structure would give at the same per-layer sparsity: for unstructured masks the exact "
              "probability under random unstructured pruning (hypergeometric); for masks of whole slices, random "
              "structured pruning of as many slices (units along the pruned dim are pruned by construction: "
              "ratio 1; the ratio says how much structure emerged beyond the method's own granularity).</p>"
              + ("".join(html) or "<p>No pruned state.</p>"))


def stability_section(b: _Builder, collection: Collection, load, note=None) -> None:
    stab_html, evo_html, numbers = [], [], {}
    for series in _first_seed(collection):
        loaded = _load_series(series, load)
        if len(loaded) < 2:
            continue
        groups = {}
        for entry in loaded:
            groups.setdefault(_arch(entry[1]), []).append(entry)
        loaded = max(groups.values(), key=len)
        states = [s for _, s in loaded]
        labels = [_remaining_label(r, s) for r, s in loaded]
        result = stability(states)
        numbers[series.label] = {"seed": series.seed, "rounds": [r for r, _ in loaded], **result}
        title = f"{series.label} (seed {series.seed})"
        figure = b.figure(plotting.plot_stability(result, labels, title=f"Weight stability across rounds: {title}"),
                          f"stability_{series.label}", f"Weight stability across rounds: {title}", "stability")
        rows = [[escape(f"{labels[t]} → {labels[t + 1]}"), _fmt(result["jaccard"]["overall"][t]),
                 _fmt(result["cosine"]["overall"][t]), _fmt(result["relative_l2"]["overall"][t]),
                 str(result["n_common"]["overall"][t])] for t in range(len(result["transitions"]))]
        stab_html.append((title, figure + _table(["rounds", "mask Jaccard", "cosine (common weights)",
                                                  "relative L2 change", "common weights"], rows)))
        kinds = layer_kinds(states[0].masks, _model(states[0]))
        figures = []
        for param in kinds:
            traj = analysis.weight_trajectories([s.weights for s in states], [s.masks for s in states], param, k=20)
            figures.append(b.figure(
                plotting.plot_weight_evolution(traj, labels, title=f"{series.label}: {param}, 20 sampled weights "
                                                                   "(a line ends where its weight is pruned)"),
                f"evolution_{series.label}_{param}", f"Weight evolution across rounds: {series.label}, {param}",
                "evolution"))
        evo_html.append((title, "".join(figures)))
    b.numbers["stability"] = numbers
    stab = "".join(b.group(title, html) for title, html in stab_html)
    b.section("stability", "Weight stability",
              "<p>Between consecutive rounds: the Jaccard of the masks, and on the weights kept in both the "
              "cosine similarity and the relative L2 change of the trained weights.</p>"
              + (stab or "<p>No recipe with two or more rounds.</p>"))
    evo = "".join(b.group(title, html, open=False) for title, html in evo_html)
    b.section("evolution", "Weight evolution", evo or "<p>No recipe with two or more rounds.</p>")


def _weight_figures(b: _Builder, state, heading: str) -> str:
    html = []
    kinds = layer_kinds(state.masks, _model(state))
    for param, kind in kinds.items():
        w, m = state.weights.get(param), state.masks[param]
        if w is None:
            continue
        if kind == "conv" and w.dim() == 4:
            html.append(b.figure(plotting.plot_conv_filters(w, m, title=f"{heading}\n{param}"),
                                 f"weights_{heading}_{param}", f"{heading}: {param} filters", "weights_conv"))
            if w.shape[1] > 1:  # input-channel pruning shows as grey column blocks here
                html.append(b.figure(
                    plotting.plot_fc_weights(w, m, title=f"{heading}\n{param} (filters × in-channel·kh·kw)"),
                    f"weights_matrix_{heading}_{param}", f"{heading}: {param} as a matrix, one row per filter",
                    "weights_conv"))
        else:
            html.append(b.figure(plotting.plot_fc_weights(w, m, title=f"{heading}\n{param}"),
                                 f"weights_{heading}_{param}", f"{heading}: {param}", "weights_fc"))
    biases = _biases(state, kinds)
    if biases:
        html.append(b.figure(plotting.plot_bias_panels(biases, title=f"{heading}: biases"),
                             f"biases_{heading}", f"{heading}: biases of every layer", "biases"))
    return "".join(html)


def _biases(state, kinds) -> dict:
    """{bias name: tensor} of the masked layers, in layer order."""
    out = {}
    for param in kinds:
        bias = param[: -len("weight")] + "bias" if param.endswith("weight") else None
        if bias and bias in state.weights:
            out[bias] = state.weights[bias]
    return out


def weights_section(b: _Builder, collection: Collection, load, note=None) -> None:
    html = []
    done = set()
    for series in _first_seed(collection):
        loaded = _load_series(series, load)
        if not loaded:
            continue
        first_round, first = loaded[0]
        if first_round == 0 and first.run_id not in done:
            done.add(first.run_id)
            heading = f"trained, dense (seed {series.seed}, {first.run_id[:8]})"
            html.append(b.group(heading, _weight_figures(b, first, heading), open=False))
        last_round, last = loaded[-1]
        if last_round > 0 and last.run_id not in done:
            done.add(last.run_id)
            heading = f"{series.label} round {last_round} (seed {series.seed})"
            html.append(b.group(heading, _weight_figures(b, last, heading), open=False))
    b.section("weights", "Weights of the dense and the final states",
              "<p>Pruned weights are grey; kept weights on a diverging scale, white at 0.</p>"
              + ("".join(html) or "<p>No recipe states.</p>"))


def states_section(b: _Builder, collection: Collection, load=None, note=None) -> None:
    rows = []
    in_series = {}
    for series in collection.series:
        for rnd, run_id in series.trained.items():
            in_series.setdefault(run_id, f"{series.label} r{rnd}")
        for rnd, run_id in series.pruned.items():
            in_series.setdefault(run_id, f"{series.label} prune r{rnd}")
    for run_id, run in collection.runs.items():
        rows.append([f"<code>{run_id[:12]}</code>", escape(run.info.run_name or ""),
                     escape(run.data.tags.get(TAG_KIND, "?")), escape(in_series.get(run_id, "–")),
                     _fmt(_metric(run, "test_accuracy"), True), _fmt(_metric(run, "sparsity"), True)])
    b.section("states", "States", _table(["run", "name", "kind", "series / round", "test accuracy", "sparsity"],
                                         rows))


_REPORT_CSS = """
body{font-family:Helvetica,Arial,sans-serif;margin:20px 32px;color:#212121;max-width:1500px}
h1{font-size:24px;margin-bottom:4px} h2{margin-top:36px;border-bottom:2px solid #e0e0e0;padding-bottom:4px}
h3{margin:22px 0 6px;font-size:15px}
.meta{color:#555;font-size:13px}
nav{font-size:13.5px;columns:3 260px;background:#fafafa;border:1px solid #eee;border-radius:6px;
 padding:8px 14px} nav ol{margin:0;padding-left:18px} nav ul{margin:0 0 4px;padding-left:16px;font-size:12.5px}
nav li{break-inside:avoid}
section > details > summary{cursor:pointer;list-style:none} section > details > summary h2{display:inline}
section > details > summary::before{content:"▸ ";color:#9e9e9e} section > details[open] > summary::before{content:"▾ "}
details.group{margin:6px 0 6px 6px;border-left:3px solid #e0e0e0;padding-left:10px}
details.group > summary{cursor:pointer;font-weight:bold;font-size:15px;margin:8px 0}
details.table > summary{cursor:pointer;font-size:13px;color:#1565c0;margin:4px 0}
figure{margin:10px 0 18px} figure img{max-width:100%;border:1px solid #eee}
figcaption{font-size:12px;color:#555}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0 16px}
th,td{border-bottom:1px solid #e0e0e0;padding:3px 9px;text-align:left}
th{background:#f5f5f5}
.warnings{background:#fff8e1;border:1px solid #ffcc80;border-radius:6px;padding:8px 14px;font-size:13px}
.dag{overflow:auto;border:1px solid #ddd;border-radius:6px;max-height:720px}
"""


@dataclass
class ReportResult:
    path: Path
    figures: list[dict]
    warnings: list[str]
    numbers: dict
    n_states: int


def write_report(experiment: str, out_dir, *, tracking_uri: str | None = None, ui_url: str | None = None,
                 warn=None) -> ReportResult:
    """Write ``report.html``, ``figures/*.png``, ``report.json`` and ``numbers.json`` into ``out_dir``.

    ``experiment`` is a name or an id. Warnings (skipped runs / states) go to
    ``warn(message)`` (default: ``warnings.warn``) and into the report. Links go
    to the MLflow UI at ``ui_url`` (default: the tracking server, or ``mlflow
    ui``'s http://127.0.0.1:5000 for a local store).
    """
    from ..store import open_experiment

    store = open_experiment(experiment, tracking_uri=tracking_uri)
    if warn is None:
        def warn(message):
            warnings.warn(message, ReportWarning, stacklevel=3)
    started = time.perf_counter()
    collection = collect(store, warn)
    if not collection.runs:
        raise SpecError(f"experiment {store.experiment_name!r} holds no finished mlprune states "
                        f"({len(collection.skipped['not mlprune states'])} other runs); nothing to report")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    b = _Builder(out)
    note = _note_into(collection, warn)
    loaded = _Loader(store, collection.runs, note)

    ui = (ui_url or _default_ui(store.tracking_uri)).rstrip("/")
    nodes, edges = lineage.lineage_graph(collection.runs.values())
    svg = lineage.lineage_svg(nodes, edges, base=ui)
    b.section("lineage", "Lineage",
              f'<p class="meta">Every state of the experiment; solid arrows: primary parent, dashed: weights / '
              f"mask sources. Nodes link to their runs in the MLflow UI at {escape(ui)}.</p>"
              f'<div class="dag" data-kind="dag">{svg}</div>')
    b.numbers["lineage"] = {"nodes": nodes, "edges": edges}
    for entry in SECTIONS.values():
        entry.load()(b, collection, loaded, note)

    warn_html = ""
    if collection.warnings:
        warn_html = ('<div class="warnings"><b>Skipped</b><ul>'
                     + "".join(f"<li>{escape(w)}</li>" for w in collection.warnings) + "</ul></div>")
    nav = "<nav><b>Contents</b><ol>" + "".join(
        f'<li><a href="#{a}">{escape(h)}</a>'
        + (("<ul>" + "".join(f'<li><a href="#{escape(ga)}">{escape(gt)}</a></li>' for ga, gt in groups[:40])
            + (f"<li>… {len(groups) - 40} more</li>" if len(groups) > 40 else "") + "</ul>") if groups else "")
        + "</li>" for a, h, _, groups in b.sections) + "</ol></nav>"
    body = "".join(f'<section id="{a}"><details open><summary><h2>{escape(h)}</h2></summary>{html}</details>'
                   f"</section>" for a, h, html, _ in b.sections)
    n_series = len({s.label for s in collection.series})
    title = f"mlprune report: {store.experiment_name}"
    page = (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>{escape(title)}</title><style>{_REPORT_CSS}</style></head><body>"
        f"<h1>{escape(title)}</h1>"
        f'<p class="meta">experiment id {escape(store.experiment_id)} · tracking store '
        f"{escape(store.tracking_uri)} · {len(collection.runs)} states · {n_series} recipe series · "
        f"{len(b.figures)} figures · mlprune {escape(__version__)} · {time.strftime('%Y-%m-%d %H:%M')}</p>"
        f"<nav>{nav}</nav>{warn_html}{body}</body></html>\n")
    path = out / "report.html"
    path.write_text(page, encoding="utf-8")
    b.numbers["warnings"] = collection.warnings
    b.numbers["seconds"] = time.perf_counter() - started
    (out / "numbers.json").write_text(json.dumps(_jsonable(b.numbers), indent=1, allow_nan=False))
    (out / "report.json").write_text(json.dumps(_jsonable({**report_json(store, collection), **b.report}), indent=1,
                                                allow_nan=False))
    return ReportResult(path, [{k: v for k, v in f.items() if k != "png"} for f in b.figures],
                        collection.warnings, b.numbers, len(collection.runs))


def report_json(store, collection: Collection) -> dict:
    """The numbers people plot themselves: per series (recipe, branch, seed), per round: remaining
    fraction, test accuracy, test loss and the state's run id."""
    series = []
    for s in collection.series:
        rounds = []
        for rnd in s.rounds:
            run = collection.runs.get(s.trained[rnd])
            if run is None:
                continue
            metrics = run.data.metrics
            sparsity = metrics.get("sparsity")
            rounds.append({"round": rnd, "remaining": None if sparsity is None else 1.0 - sparsity,
                           "test_accuracy": metrics.get("test_accuracy"), "test_loss": metrics.get("test_loss"),
                           "run_id": s.trained[rnd], "pruned_run_id": s.pruned.get(rnd)})
        series.append({"label": s.label, "recipe": s.recipe, "branch": s.branch, "seed": s.seed,
                       "params": s.params, "rounds": rounds})
    return {"experiment": store.experiment_name, "experiment_id": store.experiment_id,
            "tracking_uri": store.tracking_uri, "mlprune_version": __version__, "series": series}


def _note_into(collection: Collection, warn):
    def note(message):
        if message not in collection.warnings:
            collection.warnings.append(message)
            warn(message)
    return note




SECTIONS.add(Section("accuracy", "mlprune.report.html:accuracy_section", "accuracy and early stopping vs remaining"))
SECTIONS.add(Section("speedup", "mlprune.report.html:speedup_section", "accuracy vs measured speedup (structured)"))
SECTIONS.add(Section("sanity", "mlprune.report.sanity:sanity_section", "each pruned branch beside its controls"))
SECTIONS.add(Section("instability", "mlprune.report.instability:instability_section",
                     "instability vs spawn point per sparsity level (interpolations of spawned copies)"))
SECTIONS.add(Section("similarity", "mlprune.report.html:similarity_section", "mask Jaccard: rounds, seeds, states"))
SECTIONS.add(Section("inside", "mlprune.report.inside:inside_section",
                     "per recipe: learning curves, per-class impact, PIEs, prediction churn, CKA to the dense network"))
SECTIONS.add(Section("structure", "mlprune.report.html:structure_section", "emergent structure vs random"))
SECTIONS.add(Section("stability", "mlprune.report.html:stability_section", "weight stability and evolution"))
SECTIONS.add(Section("weights", "mlprune.report.html:weights_section", "weights of the dense and final states"))
SECTIONS.add(Section("states", "mlprune.report.html:states_section", "every state in a table"))
