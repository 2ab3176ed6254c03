"""What every report section shares: the page it writes into (`Page`: figures, sections, groups,
numbers), the loader of states' tensors (`StateLoader`), HTML tables and number formats, and the
small questions about states and series that several sections ask. No matplotlib, no torch at
import (a figure is written by the caller's `Figure.savefig`)."""

from __future__ import annotations

import base64
import io
import math
import re
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import SpecError

if TYPE_CHECKING:
    from .series import Collection, Series


class ReportWarning(UserWarning):
    """Something in the store was skipped; the rest of the report went on."""


def default_ui(tracking_uri: str) -> str:
    return tracking_uri if tracking_uri.startswith(("http://", "https://")) else "http://127.0.0.1:5000"


def model_name(state) -> str:
    spec = getattr(state, "spec", None) or {}
    return str(spec.get("root", {}).get("model", "?"))


def png(fig) -> bytes:
    from ..plots.style import fit_titles

    fit_titles(fig)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()


def jsonable(value):
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, np.ndarray):
        return jsonable(value.tolist())
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


def slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", text).strip("_")[:80] or "figure"


def fmt(value, pct=False) -> str:
    if value is None or (isinstance(value, float) and not math.isfinite(value)):
        return "–" if value is None or math.isnan(value) else ("∞" if value > 0 else "-∞")
    return f"{100 * value:.1f}%" if pct else f"{value:.3g}"


def metric(run, name):
    value = run.data.metrics.get(name) if run is not None else None
    return None if value is None or not math.isfinite(value) else float(value)


def html_table(head: list[str], rows: list[list[str]]) -> str:
    """An HTML table; one of more than 12 rows is folded (a click opens it) so figures stay in view."""
    th = "".join(f"<th>{escape(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    table = f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"
    if len(rows) > 12:
        return f'<details class="table"><summary>table: {len(rows)} rows</summary>{table}</details>'
    return table


class StateLoader:
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


def architecture(state) -> tuple:
    return tuple(sorted((n, tuple(m.shape)) for n, m in state.masks.items()))


class Page:
    """What sections write into: sections (HTML), figures (PNG files + embedded copies), numbers, and
    entries of report.json. ``out_dir`` None: nothing is written to disk (a workflow run's figures)."""

    def __init__(self, out_dir: Path | None):
        self.out_dir = out_dir
        self.sections: list[tuple[str, str, str, list]] = []  # (anchor, heading, html, [(group anchor, title)])
        self.figures: list[dict] = []
        self.numbers: dict = {}
        self._groups: list[tuple[str, str]] = []  # groups made since the last section: its table of contents
        self.report: dict = {}  # what sections add to report.json beside the series
        self.closed: set[str] = set()  # anchors of the sections that start collapsed
        self.current = "figures"  # the section being rendered (names workflow-run files)

    def figure(self, fig, name: str, caption: str, kind: str, *, run_file: str | None = None) -> str:
        """Add a figure; returns its HTML. ``run_file``: its path under ``figures/`` on a workflow run
        (default ``<section>/<name>.png``): the recipe's main figures keep stable names there."""
        data = png(fig)
        file = f"{len(self.figures) + 1:02d}_{slug(name)}.png"
        if self.out_dir is not None:
            (self.out_dir / "figures").mkdir(parents=True, exist_ok=True)
            (self.out_dir / "figures" / file).write_bytes(data)
        self.figures.append(
            {
                "file": file,
                "kind": kind,
                "caption": caption,
                "png": data,
                "run_file": run_file or f"{self.current}/{slug(name)}.png",
            }
        )
        encoded = base64.b64encode(data).decode()
        return (
            f'<figure data-kind="{escape(kind)}"><img src="data:image/png;base64,{encoded}" '
            f'alt="{escape(caption)}" title="{escape(caption)}"><figcaption>{escape(caption)}</figcaption>'
            "</figure>"
        )

    def section(self, anchor: str, heading: str, html: str, *, open: bool = True) -> None:
        """A section of the page (collapsible; `open`: shown at first); the groups made since the last one are
        its contents."""
        if not open:
            self.closed.add(anchor)
        self.sections.append((anchor, heading, html, self._groups))
        self._groups = []

    def group(self, title: str, html: str, *, open: bool | None = None, anchor: str | None = None) -> str:
        """A collapsible group (one recipe's figures, one layer's) inside the next section, listed in the
        table of contents. Closed by default once a section has more than four."""
        anchor = anchor or f"g{len(self.figures)}-{slug(title)}"
        self._groups.append((anchor, title))
        opened = open if open is not None else len(self._groups) <= 4
        return (
            f'<details class="group" id="{escape(anchor)}"{" open" if opened else ""}>'
            f"<summary>{escape(title)}</summary>{html}</details>"
        )


def load_series(series: Series, load) -> list[tuple[int, object]]:
    out = []
    for rnd in series.rounds:
        state = load(series.trained[rnd])
        if state is not None:
            out.append((rnd, state))
    return out


def remaining_label(rnd: int, state) -> str:
    from ..analysis import remaining_fraction

    return f"r{rnd} ({100 * remaining_fraction(state.masks):.3g}%)"


def first_seed(collection: Collection) -> list[Series]:
    seen, out = set(), []
    for series in collection.series:
        if series.label not in seen:
            seen.add(series.label)
            out.append(series)
    return out


def biases_of(state, kinds) -> dict:
    """{bias name: tensor} of the masked layers, in layer order."""
    out = {}
    for param in kinds:
        bias = param[: -len("weight")] + "bias" if param.endswith("weight") else None
        if bias and bias in state.weights:
            out[bias] = state.weights[bias]
    return out
